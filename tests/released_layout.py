"""The released VTP (`VTPModel`, MiniMax-AI/VTP) state-dict layout at any width/depth, and a reference forward
written from the released code's math, independent of the converter and of the project's modules.

`layout(...)` transcribes the released key table (names and shapes; at VTP-L they are the published ones:
`test_layout_at_L_is_the_released_one` pins its total). `random_state_dict` fills it with weights scaled so
that activations are O(1) and attention is far from uniform (a wrong RoPE pairing or a swapped SwiGLU then
moves the outputs by O(1), not by rounding). The reference encoder/decoder follow DINOv3: ImageNet-normalised
pixels in and out, RoPE with rotate-half pairing on the [h periods | w periods] x 2 layout, CLS not rotated,
RMSNorm (eps 1e-5) in the encoder, LayerNorm (eps 1e-6) in the decoder, SwiGLU w3(silu(w1 x) * w2 x); the text
tower is OpenCLIP's (torch `nn.MultiheadAttention` with a full in-projection bias, causal, GELU MLP).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from vtp_core.registry import TextSize, ViTSize, swiglu_hidden

MEAN = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float64)
STD = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float64)


def periods(head_dim: int, base: float = 100.0) -> torch.Tensor:
    """DINOv3 `RopePositionEmbedding.periods`: base^(2i/(hd/2)), i < hd/4, stored in bfloat16."""
    return (base ** (2 * torch.arange(head_dim // 4, dtype=torch.float64) / (head_dim // 2))).to(torch.bfloat16)


def layout(vit: ViTSize, text: TextSize, patch: int = 16, channels: int = 64) -> dict[str, tuple[int, ...]]:
    d, hd, h = vit.width, vit.width // vit.heads, swiglu_hidden(vit.width, vit.mlp_ratio)
    w, hid = text.width, int(text.width * text.mlp_ratio)
    keys: dict[str, tuple[int, ...]] = {
        "positional_embedding": (text.context_length, w), "text_projection": (w, text.embed_dim), "logit_scale": (),
        "trunk.cls_token": (1, 1, d), "trunk.mask_token": (1, d), "trunk.patch_embed.proj.weight": (d, 3, patch, patch),
        "trunk.patch_embed.proj.bias": (d,), "trunk.rope_embed.periods": (hd // 4,)}
    block = {"norm1.weight": (d,), "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,),
             "attn.proj.weight": (d, d), "attn.proj.bias": (d,), "norm2.weight": (d,), "mlp.w1.weight": (h, d),
             "mlp.w1.bias": (h,), "mlp.w2.weight": (h, d), "mlp.w2.bias": (h,), "mlp.w3.weight": (d, h),
             "mlp.w3.bias": (d,)}
    for i in range(vit.depth):
        keys.update({f"trunk.blocks.{i}.{k}": s for k, s in block.items()})
    keys.update({"trunk.norm.weight": (d,), "trunk.feature_bottleneck.weight": (channels, d),
                 "visual_proj.weight": (text.embed_dim, d), "pixel_decoder.proj_in.weight": (d, channels, 1, 1),
                 "pixel_decoder.proj_in.bias": (d,), "pixel_decoder.rope_embed.periods": (hd // 4,)})
    for i in range(vit.depth):
        keys.update({f"pixel_decoder.blocks.{i}.{k}": s for k, s in block.items()})
        keys.update({f"pixel_decoder.blocks.{i}.norm1.bias": (d,), f"pixel_decoder.blocks.{i}.norm2.bias": (d,)})
    keys.update({"pixel_decoder.norm.weight": (d,), "pixel_decoder.norm.bias": (d,),
                 "pixel_decoder.proj_out.weight": (3 * patch * patch, d, 1, 1),
                 "pixel_decoder.proj_out.bias": (3 * patch * patch,)})
    tb = {"ln_1.weight": (w,), "ln_1.bias": (w,), "attn.in_proj_weight": (3 * w, w), "attn.in_proj_bias": (3 * w,),
          "attn.out_proj.weight": (w, w), "attn.out_proj.bias": (w,), "ln_2.weight": (w,), "ln_2.bias": (w,),
          "mlp.c_fc.weight": (hid, w), "mlp.c_fc.bias": (hid,), "mlp.c_proj.weight": (w, hid),
          "mlp.c_proj.bias": (w,)}
    for i in range(text.depth):
        keys.update({f"text_transformer.resblocks.{i}.{k}": s for k, s in tb.items()})
    keys.update({"token_embedding.weight": (text.vocab_size, w), "ln_final.weight": (w,), "ln_final.bias": (w,)})
    return keys


def random_state_dict(vit: ViTSize, text: TextSize, seed: int = 0, patch: int = 16,
                      channels: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in layout(vit, text, patch, channels).items():
        if k.endswith("periods"):
            sd[k] = periods(vit.width // vit.heads)
        elif k == "logit_scale":
            sd[k] = torch.tensor(math.log(1 / 0.07))
        elif _is_norm(k):  # norm weights ~1, biases ~0
            base = 1.0 if k.endswith("weight") else 0.0
            sd[k] = base + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:]) if k.endswith("weight") else shape[-1]
            sd[k] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        else:
            sd[k] = 0.1 * torch.randn(shape, generator=g)
    return sd


def _is_norm(key: str) -> bool:
    parts = key.split(".")
    return len(parts) > 1 and ("norm" in parts[-2] or parts[-2].startswith("ln")) and "bottleneck" not in parts[-2]


def save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(sd, path)
    return path


# ------------------------------------------------------------------------------------ reference forward
def _rope(hd: int, h: int, w: int, per: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ch = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    cw = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    coords = torch.stack(torch.meshgrid(ch, cw, indexing="ij"), -1).flatten(0, 1) * 2 - 1  # (HW, 2)
    angles = (2 * math.pi * coords[:, :, None] / per.double()[None, None, :]).flatten(1, 2).tile(2)  # (HW, hd)
    return angles.sin(), angles.cos()


def _rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, interleaved: bool) -> torch.Tensor:
    if interleaved:  # the other convention, for the negative control: pairs (2i, 2i+1)
        rot = torch.stack([-x[..., 1::2], x[..., ::2]], -1).flatten(-2)
        half = sin.shape[-1] // 2
        return x * cos[..., :half].repeat_interleave(2, -1) + rot * sin[..., :half].repeat_interleave(2, -1)
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _rope_bf16(hd: int, h: int, w: int, per: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The released code's own RoPE evaluation: coordinates, angles, sin and cos in bfloat16."""
    bf = torch.bfloat16
    ch = torch.arange(0.5, h, dtype=bf) / h
    cw = torch.arange(0.5, w, dtype=bf) / w
    coords = 2.0 * torch.stack(torch.meshgrid(ch, cw, indexing="ij"), -1).flatten(0, 1) - 1.0
    angles = (2 * math.pi * coords[:, :, None] / per.to(bf)[None, None, :]).flatten(1, 2).tile(2)
    return angles.sin(), angles.cos()


def _blocks(x, sd, prefix, depth, heads, n_prefix, hw, norm, interleaved=False, swap_swiglu=False, bf16_rope=False):
    d = x.shape[-1]
    hd = d // heads
    sin, cos = _rope_bf16(hd, *hw, periods(hd)) if bf16_rope else _rope(hd, *hw, _exact(hd))
    for i in range(depth):
        p = lambda k, i=i: sd[f"{prefix}.{i}.{k}"].double()
        y = norm(x, p, "norm1")
        b, n, _ = y.shape
        qkv = (y @ p("attn.qkv.weight").T + p("attn.qkv.bias")).view(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if bf16_rope:  # q and k rotated in bfloat16, as the released attention does, then back
            q, k = q.to(torch.bfloat16), k.to(torch.bfloat16)
        q = torch.cat([q[:, :, :n_prefix], _rotate(q[:, :, n_prefix:], sin, cos, interleaved)], 2).double()
        k = torch.cat([k[:, :, :n_prefix], _rotate(k[:, :, n_prefix:], sin, cos, interleaved)], 2).double()
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v
        x = x + a.transpose(1, 2).reshape(b, n, d) @ p("attn.proj.weight").T + p("attn.proj.bias")
        y = norm(x, p, "norm2")
        g, u = ("w2", "w1") if swap_swiglu else ("w1", "w2")
        hidden = F.silu(y @ p(f"mlp.{g}.weight").T + p(f"mlp.{g}.bias")) * (y @ p(f"mlp.{u}.weight").T + p(f"mlp.{u}.bias"))
        x = x + hidden @ p("mlp.w3.weight").T + p("mlp.w3.bias")
    return x


def _exact(hd: int) -> torch.Tensor:
    """The periods the released code means (base^(4i/hd)), in float64: the comparison isolates the layout;
    the released code's bfloat16 evaluation of them is a separate, documented difference."""
    return 100.0 ** (2 * torch.arange(hd // 4, dtype=torch.float64) / (hd // 2))


def _rms(x, p, name):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * p(f"{name}.weight")


def _ln(x, p, name):
    return F.layer_norm(x, x.shape[-1:], p(f"{name}.weight"), p(f"{name}.bias"), 1e-6)


def ref_encode(sd, vit: ViTSize, x: torch.Tensor, **variant) -> torch.Tensor:
    """Images in [-1, 1] (B,3,H,W) -> latent (B,c,h,w), as the released encoder computes it (float64)."""
    xn = (((x.double() + 1) / 2) - MEAN[:, None, None]) / STD[:, None, None]
    pw = sd["trunk.patch_embed.proj.weight"].double()
    t = F.conv2d(xn, pw, sd["trunk.patch_embed.proj.bias"].double(), stride=pw.shape[-1])
    hw = t.shape[-2:]
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["trunk.cls_token"].double().expand(t.shape[0], -1, -1), t], 1)
    t = _blocks(t, sd, "trunk.blocks", vit.depth, vit.heads, 1, hw, _rms, **variant)
    t = _rms(t, lambda k: sd[f"trunk.{k}"].double(), "norm")
    z = t[:, 1:] @ sd["trunk.feature_bottleneck.weight"].double().T
    return z.transpose(1, 2).reshape(z.shape[0], -1, *hw)


def ref_decode(sd, vit: ViTSize, z: torch.Tensor, **variant) -> torch.Tensor:
    """Latent (B,c,h,w) -> images in [-1, 1], as the released decoder computes them (float64)."""
    hw = z.shape[-2:]
    t = F.conv2d(z.double(), sd["pixel_decoder.proj_in.weight"].double(), sd["pixel_decoder.proj_in.bias"].double())
    t = t.flatten(2).transpose(1, 2)
    t = _blocks(t, sd, "pixel_decoder.blocks", vit.depth, vit.heads, 0, hw, _ln, **variant)
    t = _ln(t, lambda k: sd[f"pixel_decoder.{k}"].double(), "norm")
    y = F.conv2d(t.transpose(1, 2).reshape(t.shape[0], -1, *hw), sd["pixel_decoder.proj_out.weight"].double(),
                 sd["pixel_decoder.proj_out.bias"].double())
    p = math.isqrt(y.shape[1] // 3)
    yn = F.pixel_shuffle(y, p)
    return 2 * (yn * STD[:, None, None] + MEAN[:, None, None]) - 1


def ref_text(sd, text: TextSize, ids: torch.Tensor) -> torch.Tensor:
    """OpenCLIP's text tower (unnormalised embedding), float64, with torch's nn.MultiheadAttention."""
    x = sd["token_embedding.weight"].double()[ids] + sd["positional_embedding"].double()[: ids.shape[1]]
    n = ids.shape[1]
    mask = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(text.depth):
        p = lambda k, i=i: sd[f"text_transformer.resblocks.{i}.{k}"].double()
        mha = torch.nn.MultiheadAttention(text.width, text.heads, batch_first=True, dtype=torch.float64)
        mha.load_state_dict({"in_proj_weight": p("attn.in_proj_weight"), "in_proj_bias": p("attn.in_proj_bias"),
                             "out_proj.weight": p("attn.out_proj.weight"), "out_proj.bias": p("attn.out_proj.bias")})
        y = F.layer_norm(x, x.shape[-1:], p("ln_1.weight"), p("ln_1.bias"), 1e-5)
        x = x + mha(y, y, y, need_weights=False, attn_mask=mask)[0]
        y = F.layer_norm(x, x.shape[-1:], p("ln_2.weight"), p("ln_2.bias"), 1e-5)
        x = x + F.gelu(y @ p("mlp.c_fc.weight").T + p("mlp.c_fc.bias")) @ p("mlp.c_proj.weight").T + p("mlp.c_proj.bias")
    x = F.layer_norm(x, x.shape[-1:], sd["ln_final.weight"].double(), sd["ln_final.bias"].double(), 1e-5)
    return x[torch.arange(x.shape[0]), ids.argmax(-1)] @ sd["text_projection"].double()
