"""The fid stage's metrics: every asked metric from one extractor pass, each with its own protocol hash,
the numbers equal to dit_eval.metrics / frechet on the same features, and clear refusals when the
extractor or the reference lacks what a metric needs."""
import numpy as np
import pytest
import torch

from dit_eval import fid
from dit_eval.config import FIDConfig
from dit_eval.extractors import Extractor
from dit_eval.frechet import feature_stats, frechet_distance
from dit_eval.metrics import inception_score, precision_recall
from vtp_core.runtime import StageError

SETTINGS = {"sampler": "euler", "steps": 5, "shift": 0.3, "cfg": 1.0, "ema": True, "cfg_interval_start": 0.0}


class Passes:
    """Counts forward passes of a fake Inception-like net: features = a fixed projection of the pixels."""

    def __init__(self, dims=(8, 12, 20)):
        g = torch.Generator().manual_seed(0)
        self.w = {k: torch.randn(48, d, generator=g) for k, d in zip(("features", "spatial", "logits"), dims)}
        self.calls = 0

    def __call__(self, x, keys):
        self.calls += 1
        return {k: x.flatten(1)[:, :48] @ self.w[k] for k in keys}


def fake_inception(net, outputs=("features", "spatial", "logits")):
    return Extractor("inception", "abc", 8, net, _prep, "cpu", batch_size=1000, outputs=outputs)


def _prep(imgs, dev):
    return torch.from_numpy(np.asarray(imgs, np.float32)) / 255


@pytest.fixture
def setup(monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 4, 4, 3), dtype=np.uint8)
    ref_images = rng.integers(0, 256, (200, 4, 4, 3), dtype=np.uint8)
    monkeypatch.setattr(fid, "load_samples", lambda d: (images, None))
    net = Passes()
    rf = fake_inception(net).features(ref_images, ("features", "spatial"))
    mu, sigma = feature_stats(rf["features"])
    mu_s, sigma_s = feature_stats(rf["spatial"])
    ref = {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s, "pr_features": rf["features"][:150]}
    net.calls = 0
    return images, ref, net


def test_all_metrics_from_one_pass(setup):
    images, ref, net = setup
    ext = fake_inception(net)
    cfg = FIDConfig(metrics=("fid", "sfid", "is", "precision", "recall"))
    out = fid.compute_metrics(cfg, None, ext, ref, "refstats-x", SETTINGS)
    assert net.calls == 1  # batch 1000 > 300 images: one pass gave every metric
    f = fake_inception(Passes()).features(images, ("features", "spatial", "logits"))
    assert out["gfid"]["value"] == frechet_distance(*feature_stats(f["features"]), ref["mu"], ref["sigma"])
    assert out["sfid"]["value"] == frechet_distance(*feature_stats(f["spatial"]), ref["mu_s"], ref["sigma_s"])
    assert (out["inception_score"]["value"], out["inception_score"]["std"]) == inception_score(f["logits"], 10)
    p, r = precision_recall(f["features"], ref["pr_features"], 3)
    assert (out["precision"]["value"], out["recall"]["value"]) == (p, r)
    assert out["precision"]["n_reference"] == 150 and out["precision"]["k"] == 3
    hashes = {k: out[k]["protocol_hash"] for k in ("gfid", "sfid", "inception_score", "precision", "recall")}
    assert len(set(hashes.values())) == 5
    alone = fid.compute_metrics(FIDConfig(), None, ext, ref, "refstats-x", SETTINGS)
    assert set(alone) == {"gfid", "metrics", "wall_s"}
    assert alone["gfid"] == out["gfid"]  # gFID's protocol (and hash) do not depend on what else is computed
    assert "reference" not in out["inception_score"] and out["sfid"]["features"] == "mixed_6/conv[:7]"
    other = fid.compute_metrics(FIDConfig(metrics=("precision",), pr_k=5), None, ext, ref, "refstats-x", SETTINGS)
    assert other["precision"]["protocol_hash"] != hashes["precision"] and "recall" not in other


def test_refusals(setup):
    _, ref, net = setup
    with pytest.raises(StageError, match="need the logits output of extractor inception"):
        fid.compute_metrics(FIDConfig(metrics=("is",)), None, fake_inception(net, ("features", "spatial")), ref,
                            "r", SETTINGS)
    adm = {k: ref[k] for k in ("mu", "sigma")}
    with pytest.raises(StageError, match="sfid needs sFID statistics"):
        fid.compute_metrics(FIDConfig(metrics=("sfid",)), None, fake_inception(net), adm, "r", SETTINGS)
    with pytest.raises(StageError, match="precision/recall need reference features"):
        fid.compute_metrics(FIDConfig(metrics=("recall",)), None, fake_inception(net), adm, "r", SETTINGS)


def test_fd_dinov2_uses_its_own_extractor_and_reference(setup):
    images, ref, net = setup
    d_net = Passes(dims=(6, 1, 1))
    d_ext = Extractor("dinov2", "f" * 64, 6, lambda x: d_net(x, ("features",))["features"],
                      lambda imgs, dev: torch.from_numpy(np.asarray(imgs, np.float32)) / 255, "cpu")
    d_ref = dict(zip(("mu", "sigma"), feature_stats(d_ext(images[::-1][:200]))))
    out = fid.compute_metrics(FIDConfig(metrics=("fid", "fd_dinov2")), None, fake_inception(net), ref, "r", SETTINGS,
                              (d_ext, d_ref, "refstats-dino"))
    d = out["fd_dinov2"]
    assert d["value"] == frechet_distance(*feature_stats(d_ext(images)), d_ref["mu"], d_ref["sigma"])
    assert (d["extractor"], d["extractor_sha"], d["reference"]) == ("dinov2", "f" * 64, "refstats-dino")
    assert d["protocol_hash"] != out["gfid"]["protocol_hash"]
