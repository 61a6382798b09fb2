import numpy as np
import pytest
from scipy import linalg

from dit_eval.frechet import FrechetError, feature_stats, frechet_distance, frechet_from_features


def _pytorch_fid(mu1, s1, mu2, s2):
    """pytorch-fid's calculate_frechet_distance (scipy sqrtm)."""
    covmean = linalg.sqrtm(s1.dot(s2))
    covmean = covmean.real
    diff = mu1 - mu2
    return diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_identical_sets_give_zero():
    a = np.random.default_rng(0).normal(size=(300, 16))
    assert frechet_from_features(a, a) == pytest.approx(0.0, abs=1e-8)


def test_symmetric():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 8)), rng.normal(1.0, 2.0, size=(200, 8))
    assert frechet_from_features(a, b) == pytest.approx(frechet_from_features(b, a), rel=1e-10)


def test_closed_form_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)


def test_matches_scipy_sqrtm_formula():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(400, 64)) @ rng.normal(size=(64, 64))
    b = rng.normal(0.3, 1.0, size=(400, 64)) @ rng.normal(size=(64, 64))
    m1, s1 = feature_stats(a)
    m2, s2 = feature_stats(b)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(_pytorch_fid(m1, s1, m2, s2), rel=1e-6)


def test_nan_and_low_n_refused():
    a = np.random.default_rng(3).normal(size=(50, 8))
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(FrechetError, match="non-finite"):
        frechet_from_features(a, bad)
    few = np.random.default_rng(4).normal(size=(5, 8))
    with pytest.raises(FrechetError, match="allow_low_n"):
        frechet_from_features(few, a)
    assert frechet_from_features(few, a, allow_low_n=True) > 0


def test_inconsistent_covariance_raises():
    with pytest.raises(FrechetError, match="negative"):
        frechet_distance(np.zeros(2), -np.eye(2) * 5, np.zeros(2), np.zeros((2, 2)))
