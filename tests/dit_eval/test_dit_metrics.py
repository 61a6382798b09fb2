"""The metrics' arithmetic against independent implementations on the same features: pytorch-fid and
torch-fidelity (test-only dependencies), so only the arithmetic is compared, never a network."""
import numpy as np
import pytest
import torch

from dit_eval.frechet import feature_stats, frechet_distance
from dit_eval.metrics import inception_score, precision_recall


def _features(n, d, seed, shift=0.0):
    """Correlated, well-conditioned features (n >> d): a random mixing of standard normals."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    return rng.normal(size=(n, d)) @ mix + shift


def test_frechet_matches_pytorch_fid_and_torch_fidelity():
    """1e-6 relative (the issue's bound). Both sides are float64; pytorch-fid's scipy `sqrtm` and this
    eigh-based trace agree to ~1e-12 relative on covariances with condition number ~1e2, so a failure
    means different arithmetic, not round-off."""
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torch_fidelity.metric_fid import (
        fid_features_to_statistics,
        fid_statistics_to_metric,
    )

    a, b = _features(2000, 48, 0), _features(1500, 48, 1, shift=0.3)
    ours = frechet_distance(*feature_stats(a), *feature_stats(b))
    ref = calculate_frechet_distance(*feature_stats(a), *feature_stats(b))
    assert ours == pytest.approx(ref, rel=1e-6)
    tf = fid_statistics_to_metric(fid_features_to_statistics(torch.from_numpy(a)),
                                  fid_features_to_statistics(torch.from_numpy(b)), verbose=False)
    assert ours == pytest.approx(tf["frechet_inception_distance"], rel=1e-6)


def test_inception_score_matches_torch_fidelity():
    """Same seeded order (RandomState(2020)) and float64 softmax as torch-fidelity's isc: the same
    operations in the same order, so 1e-9 relative only leaves room for BLAS-free reductions' ordering."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = np.random.default_rng(2).normal(scale=3.0, size=(1000, 1008))
    mean, std = inception_score(logits, splits=10)
    ref = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True, rng_seed=2020)
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-9)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-9)
    assert mean > 1


@pytest.mark.parametrize("shift", [0.0, 0.8])
def test_precision_recall_matches_torch_fidelity(shift):
    """torch-fidelity's full-matrix P/R (features_1 = generated, features_2 = real, k = 3) on the same float64
    features. Each value is a fraction of N points, so a distance tie on a radius could move it by 1/N: the
    tolerance; the block size of our row blocks must not matter."""
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    gen, real = _features(600, 32, 3, shift), _features(400, 32, 4)
    p, r = precision_recall(gen, real, k=3)
    p2, r2 = precision_recall(gen, real, k=3, block=97)
    rp, rr = calculate_precision_recall_full(torch.from_numpy(gen), torch.from_numpy(real), neighborhood=3)
    assert abs(p - rp) <= 1 / len(gen) and abs(r - rr) <= 1 / len(real)
    assert (p, r) == (p2, r2)
    assert 0 < p <= 1 and 0 < r <= 1


def test_metric_inputs_refused():
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.zeros((5, 10)), splits=10)
    with pytest.raises(ValueError, match="do not match"):
        precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="more than k"):
        precision_recall(np.zeros((3, 3)), np.zeros((10, 3)))
