import numpy as np
import pytest
import torch
from dit_fakes import FakeTokenizer, fake_to_uint8

from dit_eval.latents import stats_hash
from dit_eval.models import create_dit
from dit_eval.sample import euler_sample, generate_shards, load_samples, time_grid
from vtp_core.cfg import to_dict
from vtp_core.runtime import Preempted, StageError
import small_configs as small


def _dit_ckpt():
    torch.manual_seed(0)
    m = create_dit("tiny", 8, 8, 10)
    for p in m.parameters():  # non-zero output layers so samples depend on the model
        torch.nn.init.normal_(p, std=0.05)
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
    assert m["n_samples"] == 10 and m["n_shards"] == 3
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
    from vtp_core.cfg import ConfigError, load

    with pytest.raises(ConfigError, match="sampler: unknown value 'heun' .allowed: euler"):
        load(type(CFG), {"sampler": "heun"})
