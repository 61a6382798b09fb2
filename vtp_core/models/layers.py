"""Transformer pieces shared by the ViT tokenizer and the DiT: 2D RoPE tables, attention, SwiGLU, block.

Why our own and not timm's `EvaBlock` / `SwiGLU` / `RmsNorm` / `apply_rot_embed_cat`: the math is the
same, but on CPU (no fused kernels there) their elementwise glue made a small model's step slower than
a plain ViT's: RoPE built from slice/cat/neg/mul/add, RMSNorm's composite backward, gradients stacked
and then copied back to the qkv layout. Here RoPE is one complex multiply over q and k together, token-major,
with a table cached per (grid, heads, device); RMSNorm has a closed-form backward and, before Linears at
training shapes, its scale folded into their weights; the q/k/v gradients are written straight into the
qkv layout: the same numbers with fewer passes over memory (bench/ measures the step against timm and
diffusers references; docs/benchmarks.md has the figures). Every Linear is `vtp_core.models.linear`'s:
`F.linear`'s function, its CPU GEMMs in oneDNN where torch's MKL would take its slower path.

Under `torch.compile` (`torch.compiler.is_compiling()`) the same functions take plain tensor ops instead:
the eager tricks (complex views, in-place rotation, hand-written backwards, lru-cached tables built with
timm) are what inductor cannot trace or fuse, and the elementwise passes they save are what it fuses
anyway. RoPE is then a real rotation (`_rotate_real`) against a (cos, sin) table built in the graph
(`rope_table`), so a whole stack compiles as one graph (tests: `fullgraph=True`).
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import RotaryEmbeddingCat, RotaryEmbeddingDinoV3

from vtp_core.config import QKV_BIAS
from vtp_core.models.linear import Linear, linear


def _cos_sin(emb: torch.Tensor, half: bool, n_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's [sin | cos] table (N, 2*hd) -> cos, sin of one angle per channel pair, (n_prefix + N, hd/2)
    each; prefix tokens get angle 0 (not rotated)."""
    sin, cos = emb.float().chunk(2, -1)
    hd = sin.shape[-1]
    sin, cos = (sin[:, : hd // 2], cos[:, : hd // 2]) if half else (sin[:, 0::2], cos[:, 0::2])
    if n_prefix:
        cos = torch.cat([torch.ones(n_prefix, hd // 2, dtype=cos.dtype, device=cos.device), cos])
        sin = torch.cat([torch.zeros(n_prefix, hd // 2, dtype=sin.dtype, device=sin.device), sin])
    return cos, sin


def _layout(cos: torch.Tensor, sin: torch.Tensor, heads: int | None, real: bool = False) -> torch.Tensor:
    """One unit complex per channel pair, (N, hd/2), or with `heads` given (N, 2, heads, hd/2) contiguous:
    the table laid out like the q and k of one token in the qkv projection. A complex multiply that
    broadcasts only over the batch runs over matching contiguous rows: about 2.5x faster on CPU than
    broadcasting the small table over q/k and heads too. `real`: the same as (..., 2) = (cos, sin)."""
    table = torch.stack([cos, sin], -1) if real else torch.complex(cos, sin)
    return table if heads is None else table[:, None, None].expand(-1, 2, heads, *table.shape[1:]).contiguous()


def _dinov3_cos_sin(head_dim: int, hw: tuple[int, int], base: float, n_prefix: int):
    emb = RotaryEmbeddingDinoV3(head_dim, temperature=base, rotate_half=True).get_embed(list(hw))
    return _cos_sin(emb, half=True, n_prefix=n_prefix)


def _eva_cos_sin(head_dim: int, grid: int):
    emb = RotaryEmbeddingCat(dim=head_dim, in_pixels=False, feat_shape=[grid, grid]).get_embed()
    return _cos_sin(emb, half=False, n_prefix=0)


@functools.lru_cache(maxsize=64)
def dinov3_rope(head_dim: int, hw: tuple[int, int], base: float, n_prefix: int, device: torch.device,
                heads: int | None = None) -> torch.Tensor:
    """Axial 2D RoPE of timm's `RotaryEmbeddingDinoV3(rotate_half=True)` (DINOv3 coordinates, periods
    base^(4i/hd)) for an (h, w) grid after `n_prefix` unrotated tokens, as a complex (n_prefix+h*w, hd/2)
    table, or laid out for `Attention` with `heads` given: (N, 2, heads, hd/2).

    rotate_half pairs q/k channel i with i + hd/2. `Attention` stores those channels interleaved instead
    (pair i = channels 2i, 2i+1): a fixed relabelling of the q/k rows of the qkv projection, so the same
    function family and the same i.i.d. init, which lets each pair be rotated by one complex multiply.
    """
    with torch.device("cpu"):  # built once on CPU (also under a `meta` default device), then moved
        return _layout(*_dinov3_cos_sin(head_dim, hw, base, n_prefix), heads).to(device)


@functools.lru_cache(maxsize=64)
def eva_rope(head_dim: int, grid: int, device: torch.device, heads: int | None = None) -> torch.Tensor:
    """LightningDiT's 2D RoPE (timm `RotaryEmbeddingCat`, interleaved pairs) on a grid x grid token map,
    as a complex (grid*grid, hd/2) table, or (N, 2, heads, hd/2) for `Attention` with `heads` given."""
    with torch.device("cpu"):
        return _layout(*_eva_cos_sin(head_dim, grid), heads).to(device)


TABLES = {"dinov3": (dinov3_rope, _dinov3_cos_sin), "eva": (eva_rope, _eva_cos_sin)}


def rope_table(kind: str, *args) -> torch.Tensor:
    """The RoPE table `dinov3_rope(*args)` / `eva_rope(*args)` (`kind`, args ending in device, heads): the
    cached complex table in eager mode; under torch.compile the same angles as a real (..., hd/2, 2) =
    (cos, sin) table built inside the graph from timm's module (inductor folds it to a constant; no
    complex dtype, no cache for dynamo to trip on)."""
    cached, cos_sin = TABLES[kind]
    if not torch.compiler.is_compiling():
        return cached(*args)
    *grid, device, heads = args
    return _layout(*cos_sin(*grid), heads, real=True).to(device)


def _rotate_real(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The traced form of `apply_rope`: pairs (2i, 2i+1) of x (..., hd) rotated by `table` (..., hd/2, 2)
    = (cos, sin), which broadcasts against x's pairs; float32 out. Plain ops, fused by inductor."""
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = table.unbind(-1)
    return torch.stack([a * c - b * s, a * s + b * c], -1).flatten(-2)


def split_heads(qkv: torch.Tensor, rope: torch.Tensor | None, in_place: bool = False):
    """qkv (B, N, 3, H, hd) -> q, k (RoPE-rotated by `rope` if given), v as (B, H, N, hd): `_SplitHeads`
    in eager mode, plain ops (`_rotate_real` against a real table) under torch.compile."""
    if not torch.compiler.is_compiling():
        return _SplitHeads.apply(qkv, rope, in_place)
    if rope is None:
        q, k, v = qkv.unbind(2)
    else:
        q, k = _rotate_real(qkv[:, :, :2], rope).to(qkv.dtype).unbind(2)
        v = qkv[:, :, 2]
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def _pairs(x: torch.Tensor) -> torch.Tensor:
    """(..., hd) real -> (..., hd/2) complex view (a copy only if the channel dim is not unit-stride)."""
    return torch.view_as_complex((x if x.stride(-1) == 1 else x.contiguous()).unflatten(-1, (-1, 2)))


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (..., hd) by the complex table `rope`, which broadcasts against
    x's pairs: (N, hd/2) for x (..., N, hd); float32 out."""
    return torch.view_as_real(_pairs(x.float()) * rope).flatten(-2)


class _SplitHeads(torch.autograd.Function):
    """qkv (B, N, 3, H, hd) -> q, k (RoPE-rotated if `rope`, a (N, 2, H, hd/2) table, is given) and v as
    (B, H, N, hd) views of token-major (B, N, H, hd) memory.

    Token-major on purpose: torch's CPU flash attention writes its output (and its input gradients) in
    the layout of q, so token-major q/k make the output's (B, N, D) reshape for `proj` a free view and
    let backward write each gradient into the qkv layout with matching strides. q and k are rotated in
    one complex multiply; backward writes the three gradients straight into one buffer in the qkv
    layout, where autograd would stack them and copy the stack back (two full passes).

    `in_place=True` rotates q and k inside `qkv` itself (float32): for a caller whose qkv is a fresh
    projection output that nothing else holds (`Attention`: a Linear's backward keeps its input and
    weight, not its output). No second buffer to write and keep alive until backward; same numbers."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, rope: torch.Tensor | None, in_place: bool = False):
        ctx.rope = rope
        if rope is not None and in_place and qkv.dtype == torch.float32:
            b, n, _, h, hd = qkv.shape
            torch.view_as_complex(qkv.view(b, n, 3, h, hd // 2, 2))[:, :, :2].mul_(rope)  # `view`: errors, never copies
        elif rope is not None:  # q and k (B, N, 2, H, hd) in one complex multiply
            rot = apply_rope(qkv[:, :, :2], rope).to(qkv.dtype)
            return rot[:, :, 0].transpose(1, 2), rot[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, hd) views, token-major memory

    @staticmethod
    def backward(ctx, gq: torch.Tensor, gk: torch.Tensor, gv: torch.Tensor):
        like = gv if gv is not None else gq if gq is not None else gk
        b, h, n, hd = like.shape
        g = torch.empty((b, n, 3, h, hd), dtype=like.dtype, device=like.device)
        rope, fp32 = ctx.rope, like.dtype == torch.float32
        if rope is not None and fp32:  # the inverse rotations written in place, matching strides
            pairs = torch.view_as_complex(g.view(b, n, 3, h, hd // 2, 2))
            conj = _conj(rope)
        for i, grad in enumerate((gq, gk, gv)):
            if grad is None:
                g[:, :, i].zero_()
            elif rope is None or i == 2:  # v is not rotated
                g[:, :, i].copy_(grad.transpose(1, 2))
            elif fp32:
                torch.mul(_pairs(grad.transpose(1, 2)), conj[i], out=pairs[:, :, i])
            else:
                g[:, :, i].copy_(apply_rope(grad.transpose(1, 2), _conj(rope)[i]))
        return g, None, None


class _RmsNorm(torch.autograd.Function):
    """y = x * rsqrt(mean(x^2) + eps) (* weight) with the closed-form backward
    dx = r * (w*g - y * mean(w*g * y)), dw = sum(g * y). Full-size passes and temporaries kept to a minimum:
    the norm is one reduction (`vector_norm`, no x^2 temporary) and g*y, which dw needs, is reused in place
    for mean(w*g * y); about 2x faster than the plain composite on CPU at small widths. Bit-reproducible:
    no BLAS mat-vec, whose rounding depends on memory alignment (resume must be exact)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
        n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        r = torch.addcmul(_scalar(eps, x.device), n, n, value=1.0 / x.shape[-1]).rsqrt_()  # 1/sqrt(eps + n²/D)
        y = x * r
        ctx.save_for_backward(y, r, weight)
        return y if weight is None else y * weight

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        y, r, weight = ctx.saved_tensors
        d = y.shape[-1]  # sum * (1/D) inside addcmul: `mean` costs a division and a scalar-tensor copy
        if weight is None:
            return torch.addcmul(g, y, (g * y).sum(-1, keepdim=True), value=-1 / d).mul_(r), None, None
        gy = g * y
        gw = gy.flatten(0, -2).sum(0)
        m = gy.mul_(weight).sum(-1, keepdim=True)  # not a mat-vec: BLAS gemv rounds by memory alignment
        return (g * weight).addcmul_(y, m, value=-1 / d).mul_(r), gw, None


@functools.lru_cache(maxsize=16)
def _scalar(value: float, device: torch.device) -> torch.Tensor:
    """A cached 0-dim float32 tensor: a Python scalar operand costs a tensor conversion per call."""
    return torch.tensor(value, dtype=torch.float32, device=device)


@functools.lru_cache(maxsize=16)
def _zeros(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A cached zero vector (the masked k bias): no allocation and fill per forward."""
    return torch.zeros(n, device=device, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _conj(rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The conjugate table for q and for k ((N, H, hd/2) each), materialised once per cached RoPE table (the
    cache holds the table, so its id cannot be reused while cached); a lazy `conj()` operand is cloned by
    every multiply."""
    conj = rope.conj().resolve_conj()
    return conj[:, 0], conj[:, 1]


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, computed in float32 (timm `RmsNormFp32` numerics), cast back to x's dtype."""
    if torch.compiler.is_compiling():  # the composite: inductor fuses it into one pass each way
        xf = x.float()
        y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
        return (y if weight is None else y * weight.float()).to(x.dtype)
    if x.dtype == torch.float32 and (weight is None or weight.dtype == torch.float32):
        return _RmsNorm.apply(x, weight, eps)  # no casts to dispatch
    return _RmsNorm.apply(x.float(), None if weight is None else weight.float(), eps).to(x.dtype)


class RmsNorm(nn.Module):
    """RMSNorm with a learned scale (`rms_norm`)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class SwiGLU(nn.Module):
    """timm's SwiGLU (fc2(silu(fc1_g x) * fc1_x x), no dropout/norm); two (H, D) projections, not one
    packed (2H, D): packed measured slower on CPU (strided halves, a cat)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1_g, self.fc1_x, self.fc2 = Linear(dim, hidden), Linear(dim, hidden), Linear(hidden, dim)

    def forward(self, x: torch.Tensor, in_scale: torch.Tensor | None = None) -> torch.Tensor:
        """`in_scale` (D,): a per-input-channel scale folded into fc1's weights (`Block`)."""
        g = linear(x, _scaled(self.fc1_g.weight, in_scale), self.fc1_g.bias)
        return self.fc2(F.silu(g) * linear(x, _scaled(self.fc1_x.weight, in_scale), self.fc1_x.bias))


class Attention(nn.Module):
    """Multi-head self-attention via SDPA on views of the qkv projection, RoPE on q and k (`_SplitHeads`).
    `qkv_bias`: "qkv" biases on q, k and v (the released VTP/DINOv3 blocks); "qv" the EVA variant with the k
    bias masked out; "none". `qk_norm`: RMSNorm over the head dim on q and k (a learned scale each), before
    RoPE, as the VTP paper's QKNorm."""

    def __init__(self, dim: int, heads: int, qkv_bias: str = "qkv", qk_norm: bool = False):
        super().__init__()
        if qkv_bias not in QKV_BIAS:
            raise ValueError(f"qkv_bias={qkv_bias!r}; valid: {', '.join(QKV_BIAS)}")
        self.heads = heads
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias == "qkv")
        if qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        if qk_norm:
            self.q_norm = RmsNorm(dim // heads, eps=1e-5)
            self.k_norm = RmsNorm(dim // heads, eps=1e-5)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, is_causal: bool = False,
                in_scale: torch.Tensor | None = None) -> torch.Tensor:
        """`in_scale` (D,): a per-input-channel scale folded into the qkv weight (`Block`)."""
        b, n, d = x.shape
        bias = self.qkv.bias
        if bias is None and hasattr(self, "q_bias"):
            q_bias = self.q_bias  # the masked k bias: a cached zero vector, or a traced one under torch.compile
            zeros = torch.zeros_like(q_bias) if torch.compiler.is_compiling() else _zeros(d, q_bias.device, q_bias.dtype)
            bias = torch.cat([q_bias, zeros, self.v_bias])
        qkv = linear(x, _scaled(self.qkv.weight, in_scale), bias).view(b, n, 3, self.heads, d // self.heads)
        if hasattr(self, "q_norm"):  # a fresh stacked tensor: `split_heads` may still rotate it in place
            qkv = torch.stack([self.q_norm(qkv[:, :, 0]), self.k_norm(qkv[:, :, 1]), qkv[:, :, 2]], dim=2)
        q, k, v = split_heads(qkv, rope, True)
        x = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm block x + attn(norm1(x)), x + mlp(norm2(x)) as timm's EvaBlock with SwiGLU (no layer
    scale), with DINOv2's sample-drop stochastic depth: while training with `drop_rate` r > 0, each residual
    branch runs on a random subset of keep = max(1, int(B·(1-r))) samples and is added back scaled by B/keep
    (the others skip it). The subset comes from torch's global generator, which checkpoints save."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, norm_layer, qkv_bias: str = "qkv",
                 qk_norm: bool = False):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, heads, qkv_bias=qkv_bias, qk_norm=qk_norm)
        self.norm2 = norm_layer(dim)
        self.mlp = SwiGLU(dim, mlp_hidden)

    def _attn(self, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        h, scale = _norm_for(self.norm1, x, self.attn.qkv.out_features)
        return self.attn(h, rope, in_scale=scale)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        h, scale = _norm_for(self.norm2, x, 2 * self.mlp.fc1_g.out_features)
        return self.mlp(h, in_scale=scale)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None, drop_rate: float = 0.0) -> torch.Tensor:
        if self.training and drop_rate > 0 and x.shape[0] > 1:
            x = sample_drop_add(x, lambda s: self._attn(s, rope), drop_rate)
            return sample_drop_add(x, self._mlp, drop_rate)
        x = x + self._attn(x, rope)
        return x + self._mlp(x)


def sample_drop_add(x: torch.Tensor, branch, rate: float) -> torch.Tensor:
    """x + branch(x) for a random keep = max(1, int(B·(1-rate))) of the B samples, scaled by B/keep; the
    others pass unchanged (DINOv2 `drop_add_residual_stochastic_depth`)."""
    b = x.shape[0]
    keep = max(1, int(b * (1 - rate)))
    idx = torch.randperm(b, device=x.device)[:keep]
    out = branch(x[idx])
    return torch.index_add(x.flatten(1), 0, idx, out.flatten(1).to(x.dtype), alpha=b / keep).view_as(x)


def _scaled(weight: torch.Tensor, in_scale: torch.Tensor | None) -> torch.Tensor:
    """W diag(s): a Linear (out, in) weight with its input channels scaled."""
    return weight if in_scale is None else weight * in_scale


def _norm_for(norm: nn.Module, x: torch.Tensor, out_features: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """norm(x) for Linears with `out_features` output rows in all, as (input, scale to fold into their
    weights). An RMSNorm's learned scale w is folded (Linear(y*w) = Linear_{W diag(w)}(y)) when there are
    at least twice as many tokens as those rows: the scale's passes then run over the weights instead of
    over the activations (y*w forward, g*w and sum(g*y) backward). Same function, float rounding aside;
    the choice depends only on shapes, so a run stays bit-reproducible."""
    if torch.compiler.is_compiling():  # inductor fuses the scale into the norm's pass
        return norm(x), None
    if isinstance(norm, RmsNorm) and x.numel() // x.shape[-1] >= 2 * out_features:
        return rms_norm(x, None, norm.eps), norm.weight
    return norm(x), None
