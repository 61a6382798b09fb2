"""The models' Linear (`vtp_core.models.linear`): oneDNN GEMMs on CPU, the same function as `F.linear`."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vtp_core.flops import flop_counter_mode
from vtp_core.models import linear as lin

needs_onednn = pytest.mark.skipif(not lin._has_onednn(), reason="this torch has no oneDNN")


@pytest.fixture
def gemm(monkeypatch):
    """Set VTP_CPU_GEMM for one test (the choice is cached per process: cleared before and after)."""
    def choose(value: str | None) -> str:
        if value is None:
            monkeypatch.delenv(lin.ENV, raising=False)
        else:
            monkeypatch.setenv(lin.ENV, value)
        lin.cpu_gemm.cache_clear()
        return lin.cpu_gemm()
    yield choose
    lin.cpu_gemm.cache_clear()


def _grads(fn, x, w, b, g):
    y = fn(x, w, b)
    wanted = [t for t in (x, w, b) if t is not None and t.requires_grad]
    return y, torch.autograd.grad(y, wanted, g)


@needs_onednn
@pytest.mark.parametrize("shape, out, path", [
    ((2, 257, 384), 1024, "all three GEMMs in oneDNN"),  # a ViT-S MLP at 256 px
    ((4160, 64), 176, "weight gradient, the other orientation"),  # a tiny model's fc1
    ((4160, 176), 64, "weight gradient, g^T x"),  # a tiny model's fc2
    ((4160, 64), 64, "weight gradient in MKL"),  # a tiny model's proj
    ((3, 70, 100), 300, "odd sizes"),
])
def test_linear_equals_f_linear(gemm, shape, out, path):
    assert gemm("onednn") == "onednn"
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    w, b = torch.randn(out, shape[-1], requires_grad=True), torch.randn(out, requires_grad=True)
    g = torch.randn(*shape[:-1], out)
    y, grads = _grads(lin.linear, x, w, b, g)
    assert type(y.grad_fn).__name__ == "_OneDnnLinearBackward"
    y_ref, grads_ref = _grads(F.linear, x, w, b, g)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-4)  # float32 GEMMs, a different summation order
    for a, r in zip(grads, grads_ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-3)


@needs_onednn
def test_strided_input_no_bias_and_frozen_weight(gemm):
    """A transposed input, no bias, and a frozen weight (stage 2's encoder): only the input gradient."""
    gemm("onednn")
    torch.manual_seed(1)
    x = torch.randn(384, 514).t().requires_grad_()
    w = torch.randn(1024, 384)
    g = torch.randn(514, 1024)
    y, (gx,) = _grads(lin.linear, x, w, None, g)
    y_ref, (gx_ref,) = _grads(F.linear, x, w, None, g)
    assert type(y.grad_fn).__name__ == "_OneDnnLinearBackward"
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-3)


@needs_onednn
def test_bit_reproducible(gemm):
    """Shapes alone pick the kernels, so the same step gives the same bits (what exact resume rests on)."""
    gemm("onednn")
    torch.manual_seed(2)
    x, w = torch.randn(2, 257, 384), torch.randn(1152, 384, requires_grad=True)
    runs = [torch.autograd.grad(lin.linear(x, w).square().sum(), w)[0] for _ in range(2)]
    assert torch.equal(*runs)


@pytest.mark.parametrize("case", ["small", "float64", "meta", "autocast", "torch"])
def test_falls_back_to_f_linear(gemm, case):
    gemm("torch" if case == "torch" else "onednn" if lin._has_onednn() else "torch")
    m = 64 if case == "small" else 514  # (64 x 384) @ (384 x 64): under the size where oneDNN pays
    dtype = torch.float64 if case == "float64" else torch.float32
    device = "meta" if case == "meta" else "cpu"
    x = torch.randn(m, 384, dtype=dtype, device=device)
    w = torch.randn(64 if case == "small" else 1024, 384, dtype=dtype, device=device, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        y = lin.linear(x, w)
    assert type(y.grad_fn).__name__ != "_OneDnnLinearBackward"
    if case == "autocast":
        assert y.dtype == torch.bfloat16  # autocast applied, as F.linear does


def test_choice_by_env_and_cpu(gemm, monkeypatch):
    assert gemm("torch") == "torch"
    with pytest.raises(ValueError, match=r"VTP_CPU_GEMM='fast': expected one of auto, onednn, torch"):
        gemm("fast")
    if not (lin._has_onednn() and torch.backends.mkl.is_available()):
        pytest.skip("the auto rule needs torch with MKL and oneDNN")
    monkeypatch.setattr(lin, "_vendor", lambda: "GenuineIntel")  # MKL takes its AVX-512 kernels there
    assert gemm(None) == "torch"
    monkeypatch.setattr(lin, "_vendor", lambda: "AuthenticAMD")  # MKL runs its AVX2 kernels there
    assert gemm("auto") == "onednn"
    assert gemm("onednn") == "onednn"


@needs_onednn
def test_double_backward_is_an_error(gemm):
    gemm("onednn")
    x = torch.randn(514, 384, requires_grad=True)
    w = torch.randn(1024, 384, requires_grad=True)
    (gx,) = torch.autograd.grad(lin.linear(x, w).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|not differentiable"):
        gx.sum().backward()


@needs_onednn
def test_flop_counter_counts_onednn_like_addmm(gemm):
    gemm("onednn")
    x = torch.randn(2, 257, 384, requires_grad=True)
    w, b = torch.randn(1024, 384, requires_grad=True), torch.randn(1024, requires_grad=True)
    counts = []
    for fn in (lin.linear, F.linear):
        with flop_counter_mode() as counter:
            fn(x, w, b).sum().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 3 * 2 * 514 * 384 * 1024


@needs_onednn
def test_route_linears_keeps_parameters_and_function(gemm):
    gemm("onednn")
    torch.manual_seed(3)
    tower = nn.Sequential(nn.Linear(384, 1024), nn.GELU(), nn.Linear(1024, 384))
    x = torch.randn(2, 257, 384)
    before, keys = tower(x), list(tower.state_dict())
    assert lin.route_linears(tower) is tower
    assert all(type(m) is lin.Linear for m in (tower[0], tower[2])) and list(tower.state_dict()) == keys
    y = tower(x)
    assert type(y.grad_fn).__name__ == "_OneDnnLinearBackward"
    torch.testing.assert_close(y, before, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_bit_reproducible_across_processes():
    """A resumed run is a new process: oneDNN must pick the same kernels there and give the same bits."""
    import hashlib
    import os
    import subprocess
    import sys

    script = (
        "import hashlib, torch\n"
        "from vtp_core.models.linear import cpu_gemm, linear\n"
        "assert cpu_gemm() == 'onednn'\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = torch.randn(1040, 64, generator=g, requires_grad=True)\n"
        "w = torch.randn(176, 64, generator=g, requires_grad=True)\n"
        "w2 = torch.randn(384, 176, generator=g, requires_grad=True)\n"
        "y = linear(linear(x, w), w2)\n"
        "grads = torch.autograd.grad(y.square().sum(), (x, w, w2))\n"
        "print(hashlib.sha256(b''.join(t.detach().numpy().tobytes() for t in (y, *grads))).hexdigest())\n")
    env = {**os.environ, "VTP_CPU_GEMM": "onednn"}
    digests = {subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                              check=True).stdout.strip() for _ in range(2)}
    assert len(digests) == 1 and len(next(iter(digests))) == len(hashlib.sha256().hexdigest())
