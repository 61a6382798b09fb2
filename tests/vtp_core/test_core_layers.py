"""The lean transformer pieces (`vtp_core.models.layers`) compute timm's functions exactly: RoPE against
timm's `apply_rot_embed_cat` (DINOv3 rotate-half up to the documented channel relabelling, and
LightningDiT's interleaved `RotaryEmbeddingCat`), RMSNorm and its hand-written backward against
`F.rms_norm` under autograd, the q/k/v split's backward against autograd's; and attention's FLOPs
counted alike whichever kernel runs it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import RotaryEmbeddingCat, RotaryEmbeddingDinoV3, apply_rot_embed_cat

from vtp_core.models.layers import _SplitHeads, apply_rope, dinov3_rope, eva_rope, rms_norm
import small_configs as small

CPU = torch.device("cpu")


def test_dinov3_rope_equals_timm_rotate_half_up_to_channel_order():
    hd, hw = 16, (3, 4)
    x = torch.randn(2, 3, 1 + hw[0] * hw[1], hd)
    emb = RotaryEmbeddingDinoV3(hd, temperature=100.0, rotate_half=True).get_embed(list(hw))
    ref = torch.cat([x[:, :, :1], apply_rot_embed_cat(x[:, :, 1:], emb, half=True)], 2)  # CLS not rotated
    pairs = torch.stack([torch.arange(hd // 2), torch.arange(hd // 2) + hd // 2], 1).flatten()  # i, i+hd/2
    torch.testing.assert_close(apply_rope(x[..., pairs], dinov3_rope(hd, hw, 100.0, 1, CPU)), ref[..., pairs],
                               rtol=0, atol=1e-6)


def test_eva_rope_equals_timm_interleaved():
    hd, grid = 16, 4
    x = torch.randn(2, 3, grid * grid, hd)
    emb = RotaryEmbeddingCat(dim=hd, in_pixels=False, feat_shape=[grid, grid]).get_embed()
    torch.testing.assert_close(apply_rope(x, eva_rope(hd, grid, CPU)), apply_rot_embed_cat(x, emb), rtol=0, atol=1e-6)


def test_rms_norm_forward_and_backward_match_autograd():
    x = torch.randn(4, 7, 32, requires_grad=True)
    w = torch.randn(32, requires_grad=True)
    dy = torch.randn(4, 7, 32)
    ours = rms_norm(x, w, 1e-5)
    (gx, gw) = torch.autograd.grad(ours, (x, w), dy)
    ref = F.rms_norm(x, (32,), w, 1e-5)
    (rx, rw) = torch.autograd.grad(ref, (x, w), dy)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    # without a weight (the DiT folds it into the adaLN scale)
    (gx,) = torch.autograd.grad(rms_norm(x, None, 1e-5), x, dy)
    (rx,) = torch.autograd.grad(F.rms_norm(x, (32,), None, 1e-5), x, dy)
    torch.testing.assert_close(gx, rx)


def test_split_heads_backward_matches_autograd():
    b, n, h, hd = 2, 5, 3, 8
    qkv = torch.randn(b, n, 3, h, hd, requires_grad=True)
    rope = dinov3_rope(hd, (1, n), 100.0, 0, CPU)
    grads = [torch.randn(b, h, n, hd) for _ in range(3)]
    ours = _SplitHeads.apply(qkv, dinov3_rope(hd, (1, n), 100.0, 0, CPU, h))
    g1 = torch.autograd.grad(ours, qkv, grads)[0]
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    ref = (apply_rope(q, rope), apply_rope(k, rope), v)
    g2 = torch.autograd.grad(ref, qkv, grads)[0]
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r)
    torch.testing.assert_close(g1, g2)


def test_bf16_autocast_step_matches_float32():
    """The GPU path's dtype handling (bf16 q/k/v through the RoPE split, fp32 RMSNorm), exercised with CPU
    autocast: the same step in bf16 gives the float32 loss and gradient direction."""
    from vtp_core.tokenizer import build_tokenizer

    torch.manual_seed(0)
    model = build_tokenizer(small.tokenizer(recipe="ae", encoder="tiny", decoder="tiny", patch=4, latent_channels=8,
                                            data=small.data(image_size=32)))
    x = torch.randn(4, 3, 32, 32)

    def step(bf16: bool):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = model.decode(model.encode(x))
        assert y.dtype == (torch.bfloat16 if bf16 else torch.float32)
        loss = F.l1_loss(y.float(), x)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    (l32, g32), (l16, g16) = step(False), step(True)
    assert torch.isfinite(g16).all()
    assert abs(l16 - l32) < 1e-2 * l32
    assert F.cosine_similarity(g32, g16, 0) > 0.99


def test_block_folds_rms_scale_into_the_next_linears_without_changing_the_function(monkeypatch):
    """With many tokens the encoder block folds each RMSNorm's learned scale into the following qkv / fc1
    weights; outputs and every gradient equal the unfolded block's to float32 rounding."""
    import functools

    from vtp_core.models import layers

    torch.manual_seed(0)
    d, h, hidden = 32, 2, 96
    blk = layers.Block(d, h, hidden, functools.partial(layers.RmsNorm, eps=1e-5))
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.3)
    rope = dinov3_rope(d // h, (8, 8), 100.0, 1, CPU, h)
    x = torch.randn(8, 65, d, requires_grad=True)  # 520 tokens: at least twice the qkv and fc1 rows
    dy = torch.randn(8, 65, d)
    params = [x] + list(blk.parameters())
    real, scales = layers._norm_for, []
    monkeypatch.setattr(layers, "_norm_for", lambda *a: (lambda r: scales.append(r[1]) or r)(real(*a)))
    folded = torch.autograd.grad(blk(x, rope), params, dy)
    assert scales[0] is blk.norm1.weight and scales[1] is blk.norm2.weight  # both folded
    monkeypatch.setattr(layers, "_norm_for", lambda norm, t, n: (norm(t), None))
    plain = torch.autograd.grad(blk(x, rope), params, dy)
    for (name, _), a, b in zip([("x", None)] + list(blk.named_parameters()), folded, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item(), msg=name)
    # few tokens (e.g. one image): nothing folded
    scales.clear()
    monkeypatch.setattr(layers, "_norm_for", lambda *a: (lambda r: scales.append(r[1]) or r)(real(*a)))
    blk(x[:1], rope)
    assert scales == [None, None]


def test_split_heads_in_place_rotation_equals_the_copying_one():
    """`Attention` lets RoPE rotate q/k inside its fresh qkv projection output: same q, k, v and the
    same gradient reaching the projection's input as the copying path."""
    b, n, h, hd = 2, 5, 3, 8
    x = torch.randn(b, n, 16, requires_grad=True)
    w = torch.randn(3 * h * hd, 16)
    rope = dinov3_rope(hd, (1, n), 100.0, 0, CPU, h)
    grads = [torch.randn(b, h, n, hd) for _ in range(3)]
    results = []
    for in_place in (False, True):
        qkv = F.linear(x, w).view(b, n, 3, h, hd)
        out = _SplitHeads.apply(qkv, rope, in_place)
        results.append((out, torch.autograd.grad(out, x, grads)[0]))
    (ref, g_ref), (ours, g_ours) = results
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=0, atol=0)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=0)


@pytest.mark.parametrize("n", [17, 129])
def test_attention_flops_count_alike_whichever_kernel_runs(n):
    """torch's own table counts its CPU flash kernel as 0 and a flash backward with the scores recomputed;
    `flop_counter_mode` counts SDPA as the explicit form computes it: 2 matmuls forward, 4 backward."""
    from torch.utils.flop_counter import sdpa_flop_count

    from vtp_core.flops import flop_counter_mode

    qkv = torch.randn(2, n, 3, 3, 16, requires_grad=True)
    counts = []
    for fn in (_explicit_attention, F.scaled_dot_product_attention):
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        with flop_counter_mode() as counter:
            fn(q, k, v).sum().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 3 * sdpa_flop_count((2, 3, n, 16), (2, 3, n, 16), (2, 3, n, 16))


def _explicit_attention(q, k, v):
    return torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2)).softmax(-1) @ v
