import dataclasses
import math

import numpy as np
import pytest
import torch
from dit_fakes import FakeTokenizer, fake_to_uint8

from dit_eval.latents import stats_hash
from dit_eval.models import create_dit
from dit_eval.sample import (balanced_labels, dopri5_sample, euler_sample, generate_shards, load_nfe, load_samples,
                             noise_and_labels, time_grid)
from vtp_core.cfg import ConfigError, load, to_dict
from vtp_core.runtime import Preempted, StageError
import small_configs as small


def _dit_ckpt(std: float = 0.05):
    torch.manual_seed(0)
    m = create_dit("tiny", 8, 8, 10)
    for p in m.parameters():  # non-zero output layers so samples depend on the model
        torch.nn.init.normal_(p, std=std)
    mean, std = torch.zeros(8), torch.ones(8)
    stats = {"mean": mean, "std": std, "n": 1, "hash": stats_hash(mean, std)}
    sd = m.state_dict()
    return {"spec": to_dict(small.dit()), "model": sd, "ema": sd, "stats_hash": stats["hash"],
            "latent_shape": [8, 8, 8]}, stats


CFG = small.sample(n_samples=10, steps=4, shard_size=4, batch_size=3, cfg_scale=2.0, cfg_interval_start=0.3)


def test_time_grid_shift():
    assert torch.equal(time_grid(5, 1.0), torch.linspace(0, 1, 5, dtype=torch.float64))
    g = time_grid(5, 0.3)
    assert g[0] == 0 and float(g[-1]) == pytest.approx(1.0) and (g.diff() > 0).all() and g[2] < 0.5  # packed near the noise end


def test_euler_integrates_constant_velocity():
    class Const(torch.nn.Module):
        def forward(self, x, t, y):
            return torch.ones_like(x)

    x = euler_sample(Const(), torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long), time_grid(7, 0.3))
    assert torch.allclose(x, torch.ones_like(x))


def test_deterministic_and_resume_identical(tmp_path):
    ck, stats = _dit_ckpt()
    tok = FakeTokenizer()
    m = generate_shards(CFG, tmp_path / "a", ck, stats, tok.decode, fake_to_uint8)
    assert m["n_samples"] == 10 and m["n_shards"] == 3 and m["nfe_min"] == m["nfe_max"] == CFG.steps - 1
    generate_shards(CFG, tmp_path / "b", ck, stats, tok.decode, fake_to_uint8)
    a_img, a_lab = load_samples(tmp_path / "a")
    b_img, b_lab = load_samples(tmp_path / "b")
    assert a_img.shape == (10, 32, 32, 3) and a_img.dtype == np.uint8
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert len(set(a_lab.tolist())) > 1
    (tmp_path / "a" / "samples" / "shard-00000004.npz").unlink()  # an interrupted run
    m2 = generate_shards(CFG, tmp_path / "a", ck, stats, tok.decode, fake_to_uint8)
    assert m2["n_shards_generated"] == 1
    c_img, c_lab = load_samples(tmp_path / "a")
    assert np.array_equal(a_img, c_img) and np.array_equal(a_lab, c_lab)


def test_labels_independent_of_shard_size(tmp_path):
    ck, stats = _dit_ckpt()
    tok = FakeTokenizer()
    generate_shards(CFG, tmp_path / "a", ck, stats, tok.decode, fake_to_uint8)
    other = small.sample(**{**to_dict(CFG), "shard_size": 10, "batch_size": 10})
    generate_shards(other, tmp_path / "b", ck, stats, tok.decode, fake_to_uint8)
    a_img, a_lab = load_samples(tmp_path / "a")
    b_img, b_lab = load_samples(tmp_path / "b")
    assert np.array_equal(a_lab, b_lab)
    assert np.abs(a_img.astype(int) - b_img.astype(int)).max() <= 1  # only float round-off of batched matmuls


def test_stop_request_and_stats_mismatch(tmp_path):
    ck, stats = _dit_ckpt()
    tok = FakeTokenizer()
    with pytest.raises(Preempted):
        generate_shards(CFG, tmp_path, ck, stats, tok.decode, fake_to_uint8, stop_requested=lambda: True)
    other = {**stats, "hash": "0" * 16}
    with pytest.raises(StageError, match="refusing to un-standardise"):
        generate_shards(CFG, tmp_path, ck, other, tok.decode, fake_to_uint8)
    with pytest.raises(ConfigError, match="sampler: unknown value 'heun' .allowed: euler, dopri5"):
        load(type(CFG), {"sampler": "heun"})


# ------------------------------------------------------------------------------------------- label policies
@pytest.mark.parametrize("n,classes", [(10, 10), (1000, 10), (1003, 10), (50, 1000), (10000, 1000)])
def test_balanced_labels_are_balanced_and_independent_of_chunking(n, classes):
    """Every class gets n // C or n // C + 1 samples; any chunking of the index range (shards, batches,
    resumes) gives the same labels as one pass; another seed gives another assignment."""
    whole = balanced_labels(0, 0, n, n, classes)
    counts = np.bincount(whole.numpy(), minlength=classes)
    assert counts.max() - counts.min() <= 1 and counts.sum() == n and counts.max() == math.ceil(n / classes)
    for chunk in (1, 3, 7, 250):
        parts = [balanced_labels(0, s, min(chunk, n - s), n, classes) for s in range(0, n, chunk)]
        assert torch.equal(torch.cat(parts), whole)
    if n > 10:
        assert not torch.equal(balanced_labels(1, 0, n, n, classes), whole)


def test_label_policy_leaves_the_noise_alone():
    """Sample i's noise is the same under both policies (only the label differs), and uniform is today's draw."""
    xu, yu = noise_and_labels(3, 5, 20, (2, 4, 4), 10, "uniform", 40)
    xb, yb = noise_and_labels(3, 5, 20, (2, 4, 4), 10, "balanced", 40)
    assert torch.equal(xu, xb) and torch.equal(yb, balanced_labels(3, 5, 20, 40, 10))
    x0, y0 = noise_and_labels(3, 5, 20, (2, 4, 4), 10)
    assert torch.equal(x0, xu) and torch.equal(y0, yu)


def test_balanced_labels_through_the_stage(tmp_path):
    """The stage's labels are balanced and the same with shard/batch 4/3 as with 10/10."""
    ck, stats = _dit_ckpt()
    tok = FakeTokenizer()
    a = dataclasses.replace(CFG, labels="balanced")
    b = dataclasses.replace(a, shard_size=10, batch_size=10)
    generate_shards(a, tmp_path / "a", ck, stats, tok.decode, fake_to_uint8)
    generate_shards(b, tmp_path / "b", ck, stats, tok.decode, fake_to_uint8)
    la, lb = load_samples(tmp_path / "a")[1], load_samples(tmp_path / "b")[1]
    assert np.array_equal(la, lb) and sorted(la.tolist()) == list(range(10))  # 10 samples, 10 classes: one each


# ------------------------------------------------------------------------------------------------ dopri5
class _Linear(torch.nn.Module):
    """v(x, t) = -k x, the toy flow with the analytic solution x(1) = x(0) e^{-k}; records the times asked."""

    def __init__(self, k: float):
        super().__init__()
        self.k, self.ts = k, []

    def forward(self, x, t, y):
        self.ts += t.tolist()
        return -self.k * x


@pytest.mark.parametrize("rtol", [1e-3, 1e-6])
def test_dopri5_matches_the_analytic_solution(rtol):
    """Bound from the step control: an accepted step's error estimate is <= rtol * max(|y0|, |y1|) (atol is
    negligible here, and every element has the same relative error, so torchdiffeq's RMS norm is the
    per-element ratio). Relative to the solution after the step, which is e^{-k dt} <= 1 times smaller, that is
    <= rtol * e^{k}; for this linear scalar flow a relative error is carried unchanged to t = 1, so the global
    relative error is at most (accepted steps) * rtol * e^{k}, and accepted steps <= NFE."""
    k = 2.0
    model = _Linear(k)
    x0 = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    x1, nfe = dopri5_sample(model, x0, torch.zeros(4, dtype=torch.long), rtol, 1e-12)
    exact = x0 * math.exp(-k)
    rel = ((x1 - exact).abs() / exact.abs()).max().item()
    assert rel <= nfe * rtol * math.exp(k)
    assert nfe == len(model.ts) // 4 and 6 < nfe < 200  # counted once per drift evaluation of the batch
    assert max(model.ts) <= 1.0 and min(model.ts) == 0.0  # the last step is cut at t = 1: the DiT never sees t > 1


def test_dopri5_guidance_interval_is_a_declared_jump():
    """Guided evaluations (a doubled batch) happen only at t >= cfg_interval_start and unguided ones only below;
    the solver steps onto the jump, so both sides are evaluated right at it."""
    calls = []

    class Probe(torch.nn.Module):
        def forward(self, x, t, y):
            calls.append((float(t[0]), len(x)))
            return -x

    x = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    _, nfe = dopri5_sample(Probe(), x, torch.zeros(2, dtype=torch.long), 1e-3, 1e-6, 3.0, 0.4, 10)
    assert nfe == len(calls)
    assert all((n == 4) == (t >= 0.4) for t, n in calls)
    at_jump = {n for t, n in calls if abs(t - 0.4) < 1e-6}
    assert at_jump == {2, 4}


@pytest.mark.parametrize("cfg_scale,start", [(1.0, 0.0), (2.0, 0.25)])
def test_euler_converges_to_dopri5_on_a_tiny_dit(cfg_scale, start):
    """Euler is first order: with error e(h) = C h + O(h^2), the Euler run on 2N steps is off the exact
    solution by about |x_N - x_2N| (Richardson); we allow twice that for the O(h^2) terms. The reference
    is dopri5 at rtol 1e-6, whose own error is far below this bound, and the default dopri5 (rtol 1e-3)
    must sit within the same bound. N = 32 puts the guidance jump (t = 0.25) on the Euler grid. The DiT's
    weights are drawn with std 0.3 so its flow is curved (Euler error ~5e-2 on a state that moves ~17,
    far above float32 round-off)."""
    ck, _ = _dit_ckpt(std=0.3)
    m = create_dit("tiny", 8, 8, 10)
    m.load_state_dict(ck["model"])
    m.eval()
    x = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(2)
    ref, nfe_ref = dopri5_sample(m, x, y, 1e-6, 1e-8, cfg_scale, start, 10)
    fast, nfe = dopri5_sample(m, x, y, 1e-3, 1e-6, cfg_scale, start, 10)
    e_n = euler_sample(m, x, y, time_grid(33, 0), cfg_scale, start, 10)
    e_2n = euler_sample(m, x, y, time_grid(65, 0), cfg_scale, start, 10)
    bound = 2 * (e_n - e_2n).abs().max().item()
    print(f"bound {bound:.3g}, euler-2N {(e_2n - ref).abs().max().item():.3g}, dopri5 rtol 1e-3 "
          f"{(fast - ref).abs().max().item():.3g}, moved {(ref - x).abs().max().item():.3g}, NFE {nfe} / {nfe_ref}")
    assert (e_2n - ref).abs().max().item() <= bound
    assert (fast - ref).abs().max().item() <= bound
    assert (ref - x).abs().max().item() > 50 * bound  # the flow moves the state far more than the bound
    assert nfe < nfe_ref < 1000


def test_dopri5_stage_resumes_and_ignores_batch_size(tmp_path):
    """dopri5 + balanced labels + CFG through the stage: deterministic, an interrupted run regenerates only its
    missing shard bit-identically, NFE is stored per sample, and batch_size (unused: ode_batch runs) changes
    nothing."""
    ck, stats = _dit_ckpt()
    tok = FakeTokenizer()
    cfg = dataclasses.replace(CFG, sampler="dopri5", ode_batch=4, labels="balanced", n_samples=8)
    m = generate_shards(cfg, tmp_path / "a", ck, stats, tok.decode, fake_to_uint8)
    assert m["protocol"] == {"sampler": "dopri5", "labels": "balanced", "cfg": 2.0, "cfg_interval_start": 0.3,
                             "ema": True, "rtol": 1e-3, "atol": 1e-6, "ode_batch": 4}
    assert 6 < m["nfe_min"] <= m["nfe_mean"] <= m["nfe_max"] and len(load_nfe(tmp_path / "a")) == 8
    a_img, a_lab = load_samples(tmp_path / "a")
    (tmp_path / "a" / "samples" / "shard-00000004.npz").unlink()
    m2 = generate_shards(cfg, tmp_path / "a", ck, stats, tok.decode, fake_to_uint8)
    assert m2["n_shards_generated"] == 1 and m2["nfe_mean"] == m["nfe_mean"]
    c_img, c_lab = load_samples(tmp_path / "a")
    assert np.array_equal(a_img, c_img) and np.array_equal(a_lab, c_lab)
    generate_shards(dataclasses.replace(cfg, batch_size=7), tmp_path / "b", ck, stats, tok.decode, fake_to_uint8)
    b_img, b_lab = load_samples(tmp_path / "b")
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)


def test_guidance_needs_a_dit_trained_with_class_dropout(tmp_path):
    ck, stats = _dit_ckpt()
    ck = {**ck, "spec": {**ck["spec"], "class_dropout": 0.0}}
    with pytest.raises(StageError, match="cfg_scale 2.0 needs the null label.*class_dropout 0.0"):
        generate_shards(CFG, tmp_path, ck, stats, FakeTokenizer().decode, fake_to_uint8)
    generate_shards(dataclasses.replace(CFG, cfg_scale=1.0, n_samples=2), tmp_path, ck, stats,
                    FakeTokenizer().decode, fake_to_uint8)  # unguided sampling never uses the null label


def test_dopri5_shards_hold_whole_runs():
    with pytest.raises(ConfigError, match="shard_size: 1000 is not a multiple of ode_batch=300"):
        load(type(CFG), {"sampler": "dopri5", "ode_batch": 300})
    load(type(CFG), {"sampler": "euler", "ode_batch": 300})  # euler does not read ode_batch

