"""The transformer pieces (`vtp_core.models.layers`) are timm's and torch's functions: RoPE is timm's
`apply_rot_embed_cat` on timm's tables (DINOv3 rotate-half with the CLS prefix unrotated; LightningDiT's
interleaved `RotaryEmbeddingCat`), attention is SDPA on the qkv projection with the documented bias and
QKNorm variants, RMSNorm is `F.rms_norm` in float32, and DINOv2's sample drop scales and draws as documented.
Attention's FLOPs are counted alike whichever kernel runs it."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from timm.layers import RotaryEmbeddingCat, RotaryEmbeddingDinoV3, apply_rot_embed_cat

from vtp_core.models import layers
from vtp_core.models.layers import Attention, Block, RmsNorm, dinov3_rope, eva_rope, sample_drop_add
import small_configs as small

CPU = torch.device("cpu")


def test_dinov3_rope_is_timms_rotate_half_with_the_cls_token_unrotated():
    hd, hw = 16, (3, 4)
    x = torch.randn(2, 3, 1 + hw[0] * hw[1], hd)
    emb = RotaryEmbeddingDinoV3(hd, temperature=100.0, rotate_half=True).get_embed(list(hw))
    ref = torch.cat([x[:, :, :1], apply_rot_embed_cat(x[:, :, 1:], emb, half=True)], 2)  # as timm's Eva: CLS skipped
    ours = apply_rot_embed_cat(x, dinov3_rope(hd, hw, 100.0, 1, CPU), half=True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert torch.equal(ours[:, :, 0], x[:, :, 0])  # sin 0, cos 1: the CLS row is exactly unchanged
    assert dinov3_rope(hd, hw, 100.0, 1, CPU) is dinov3_rope(hd, hw, 100.0, 1, CPU)  # built once per grid


def test_eva_rope_is_timms_interleaved_table():
    hd, grid = 16, 4
    emb = RotaryEmbeddingCat(dim=hd, in_pixels=False, feat_shape=[grid, grid]).get_embed()
    torch.testing.assert_close(eva_rope(hd, grid, CPU), emb.float(), rtol=0, atol=0)


def _reference_attention(attn: Attention, x: torch.Tensor, rope: torch.Tensor | None, half: bool) -> torch.Tensor:
    """The textbook form: separate q/k/v projections, explicit softmax(q k^T / sqrt(hd)) v."""
    b, n, d = x.shape
    h = attn.heads
    w, bias = attn.qkv.weight.chunk(3), attn.qkv.bias
    if attn.q_bias is not None:
        bias = torch.cat([attn.q_bias, torch.zeros_like(attn.q_bias), attn.v_bias])
    bias = bias.chunk(3) if bias is not None else (None,) * 3
    q, k, v = (F.linear(x, wi, bi).view(b, n, h, -1).transpose(1, 2) for wi, bi in zip(w, bias))
    if attn.q_norm is not None:
        q = F.rms_norm(q, (d // h,), attn.q_norm.weight, 1e-5)
        k = F.rms_norm(k, (d // h,), attn.k_norm.weight, 1e-5)
    if rope is not None:
        q, k = apply_rot_embed_cat(q, rope, half=half), apply_rot_embed_cat(k, rope, half=half)
    a = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1) @ v
    return attn.proj(a.transpose(1, 2).reshape(b, n, d))


@pytest.mark.parametrize("qkv_bias", ["qkv", "qv", "none"])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_variants_equal_the_textbook_form(qkv_bias, qk_norm):
    torch.manual_seed(0)
    d, h, hw = 32, 2, (3, 3)
    attn = Attention(d, h, qkv_bias=qkv_bias, qk_norm=qk_norm)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 1 + hw[0] * hw[1], d)
    rope = dinov3_rope(d // h, hw, 100.0, 1, CPU)
    torch.testing.assert_close(attn(x, rope), _reference_attention(attn, x, rope, True), rtol=1e-5, atol=1e-5)
    names = {n for n, _ in attn.named_parameters()}
    assert ("qkv.bias" in names) == (qkv_bias == "qkv")
    assert ({"q_bias", "v_bias"} <= names) == (qkv_bias == "qv") and "k_bias" not in attn.state_dict()
    assert ({"q_norm.weight", "k_norm.weight"} <= names) == qk_norm
    if qkv_bias == "qv":  # the k bias stays zero: no parameter, no gradient to move it
        attn(x, rope).sum().backward()
        assert torch.equal(attn.k_bias, torch.zeros(d)) and attn.q_bias.grad.abs().sum() > 0


def test_dit_attention_uses_interleaved_pairs():
    torch.manual_seed(0)
    attn = Attention(32, 2, rotate_half=False)
    x = torch.randn(2, 16, 32)
    rope = eva_rope(16, 4, CPU)
    torch.testing.assert_close(attn(x, rope), _reference_attention(attn, x, rope, False), rtol=1e-5, atol=1e-5)


def test_rms_norm_is_f_rms_norm_in_float32_with_a_learned_weight():
    norm = RmsNorm(32, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(4, 7, 32)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (32,), norm.weight, 1e-5), rtol=0, atol=0)
    xb = x.bfloat16()
    out = norm(xb)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, F.rms_norm(xb.float(), (32,), norm.weight, 1e-5).bfloat16(), rtol=0, atol=0)


def test_sample_drop_scales_the_kept_samples_and_draws_from_the_global_generator():
    x = torch.randn(8, 5, 4)
    branch = lambda s: torch.ones_like(s)  # noqa: E731
    torch.manual_seed(3)
    out = sample_drop_add(x, branch, 0.3)  # keep = int(8 * 0.7) = 5, each kept sample gets + 8/5
    changed = ~torch.isclose(out, x).all(-1).all(-1)
    assert changed.sum() == 5
    torch.testing.assert_close(out[changed], x[changed] + 8 / 5)
    assert torch.equal(out[~changed], x[~changed])
    torch.manual_seed(3)
    assert torch.equal(sample_drop_add(x, branch, 0.3), out)  # the same draw from the same generator state
    assert torch.equal(sample_drop_add(x[:1], branch, 0.99), x[:1] + 1)  # at least one sample kept


def test_block_drops_samples_only_while_training():
    torch.manual_seed(0)
    blk = Block(32, 2, 96, functools.partial(RmsNorm, eps=1e-5))
    x = torch.randn(6, 10, 32)
    rope = dinov3_rope(16, (3, 3), 100.0, 1, CPU)
    full = blk(x, rope)
    torch.manual_seed(1)
    dropped = blk(x, rope, drop_rate=0.5)
    assert not torch.allclose(dropped, full)
    blk.eval()
    torch.testing.assert_close(blk(x, rope, drop_rate=0.5), full, rtol=0, atol=0)


def test_no_custom_autograd_or_compile_branches_in_the_model_code():
    """One code path for eager and compiled: standard modules and ops only, no custom autograd."""
    import inspect

    import dit_eval.models
    import vtp_core.models.heads
    import vtp_core.models.text
    import vtp_core.models.vit

    for mod in (layers, vtp_core.models.vit, vtp_core.models.heads, vtp_core.models.text, dit_eval.models):
        src = inspect.getsource(mod)
        assert "autograd.Function" not in src and "is_compiling" not in src and "torch.ops." not in src, mod


def test_bf16_autocast_step_matches_float32():
    """The GPU path's dtype handling (bf16 q/k/v through RoPE, fp32 RMSNorm), exercised with CPU autocast: the
    same step in bf16 gives the float32 loss and gradient direction."""
    from vtp_core.tokenizer import build_tokenizer

    torch.manual_seed(0)
    model = build_tokenizer(small.tokenizer(recipe="ae", encoder="tiny", decoder="tiny", patch=4, latent_channels=8,
                                            qk_norm=True, data=small.data(image_size=32)))
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
