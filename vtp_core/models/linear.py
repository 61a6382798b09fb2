"""The models' Linear layer: on a CPU whose torch BLAS is MKL but whose maker is not Intel, its GEMMs run in oneDNN.

Why: torch does a float32 `addmm` / `mm` on the CPU in MKL, and MKL takes its AVX-512 kernels only on Intel
processors. On an AMD EPYC with AVX-512 (the development VM, a Zen 5, and CI's machines) it runs the AVX2
ones: 94 GFLOP/s per core at a ViT-S shape, (514 x 384) @ (384 x 1024). oneDNN, which torch also ships
(`torch.ops.mkldnn._linear_pointwise`, the kernel inductor's CPU code calls), reaches 205 GFLOP/s per core
at that shape, with float32 arithmetic and accumulation throughout. Matmuls are ~75 % of a tokenizer step
on a CPU, so a ViT-S `ae` step at 256 px runs ~1.6x faster this way (docs/benchmarks.md, session 9).

`linear(x, w, b)` is `F.linear` with that routing: forward and input gradient in oneDNN; the weight
gradient too unless both weight dims are under `_WGRAD_MIN` (a 64 x 64 layer: MKL is faster there). oneDNN
copies its first operand to contiguous memory, so a weight gradient with one dim under `_WGRAD_MIN` is
computed in the orientation whose copy is smaller (`_weight_grad`). A GEMM under `_MIN_MACS` multiply-adds
stays in MKL (oneDNN's fixed cost is higher). Every choice depends on shapes only, so a run is
bit-reproducible and a resumed run repeats an uninterrupted one.
Anything else (CUDA, meta, float64/bf16, CPU autocast, under torch.compile, which has its own oneDNN path)
takes `F.linear` unchanged. Double backward through it is not supported (an explicit error).

`VTP_CPU_GEMM` chooses: `auto` (the rule above, the default), `onednn` (whenever torch has oneDNN) or
`torch` (never: torch's own path). The choice is made once per process.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

ENV = "VTP_CPU_GEMM"
CHOICES = ("auto", "onednn", "torch")
_MIN_MACS = 1 << 22  # ~4M multiply-adds: (64 x 384) @ (384 x 64) is faster in MKL, (512 x 64) @ (64 x 384) in oneDNN
_WGRAD_MIN = 128  # weight-gradient GEMM: its orientation by this (`_weight_grad`; measured, docs/benchmarks.md)


def _vendor() -> str:
    """The CPU's vendor string from /proc/cpuinfo ("GenuineIntel", "AuthenticAMD", ...); "" where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _has_onednn() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def cpu_gemm() -> str:
    """"onednn" or "torch": where this process's CPU float32 Linears run their GEMMs (`VTP_CPU_GEMM`)."""
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r}: expected one of {', '.join(CHOICES)}")
    if choice == "torch" or not _has_onednn():
        return "torch"
    if choice == "onednn":
        return "onednn"
    mkl_off_intel = torch.backends.mkl.is_available() and _vendor() not in ("", "GenuineIntel")
    return "onednn" if mkl_off_intel else "torch"


def _dnn(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """a @ b.T (+ bias) in oneDNN, float32 throughout; a (M, K), b (N, K), either may be a strided view."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


def _weight_grad(g2: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """g2^T x2, (N, K), for g2 (M, N) and x2 (M, K). On the 2-core EPYC, 2 threads, M = 4160 (a tiny model's
    batch): N = K = 64 in MKL 310 us, oneDNN 446-477; (N, K) = (176, 64) as oneDNN(x2^T, g2^T)^T 617 us
    (oneDNN(g2^T, x2^T) 957, MKL 694); (N, K) = (64, 176) as oneDNN(g2^T, x2^T) 611 (the other 1063, MKL
    722); with both dims >= 128 oneDNN(g2^T, x2^T) is the fastest: (N, K) = (384, 1024), M = 514, 1119 us
    against MKL's 2186."""
    n, k = g2.shape[1], x2.shape[1]
    if max(n, k) < _WGRAD_MIN:
        return g2.t().mm(x2)
    if min(n, k) >= _WGRAD_MIN or n <= k:
        return _dnn(g2.t(), x2.t(), None)  # copies g2^T (M x N) to contiguous memory
    return _dnn(x2.t(), g2.t(), None).t().contiguous()  # copies x2^T (M x K), the smaller, and the (K, N) result


class _OneDnnLinear(torch.autograd.Function):
    """y = x W^T + b with its GEMMs in oneDNN (see the module docstring for which ones)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, weight)
        ctx.shape, ctx.has_bias = x.shape, bias is not None
        return _dnn(x2, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x2, weight = ctx.saved_tensors  # `linear` sent only GEMMs of at least _MIN_MACS here
        g2 = grad.reshape(-1, grad.shape[-1])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _dnn(g2, weight.t(), None).view(ctx.shape)
        if ctx.needs_input_grad[1]:
            gw = _weight_grad(g2, x2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, its GEMMs in oneDNN where `cpu_gemm()` says so (module docstring)."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32
            or (bias is not None and bias.dtype != torch.float32) or torch.compiler.is_compiling()
            or torch.is_autocast_enabled("cpu") or cpu_gemm() != "onednn"
            or x.numel() * weight.shape[0] < _MIN_MACS):  # M·K·N multiply-adds
        return F.linear(x, weight, bias)
    return _OneDnnLinear.apply(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, init and state dict) whose forward is `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def route_linears(module: nn.Module) -> nn.Module:
    """Every plain `nn.Linear` inside `module` (a timm-built tower) becomes a `Linear`: the same object,
    parameters and state dict; only its forward changes. Returns `module`."""
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = Linear
    return module
