"""Fréchet distance between Gaussians fitted to feature sets (FID), numerically safe.

Why not `scipy.linalg.sqrtm(S1 @ S2)` (pytorch-fid): on near-singular covariances it returns
complex values, NaN, or hangs (docs/protocol.md#fid-computation). Here tr sqrt(S1·S2) is computed from symmetric
matrices only: tr sqrt(S1 S2) = tr sqrt(A S2 A) with A = sqrt(S1), and A·S2·A is symmetric PSD, so
`numpy.linalg.eigh` gives real eigenvalues; tiny negative ones (round-off) are clamped to 0.
All in float64. A non-finite or clearly negative result raises: an evaluation fails, it never
reports a wrong number. Fewer samples than feature dimensions gives a rank-deficient covariance
(biased, noisy FID), so it is refused unless the caller accepts and labels it as low-N.
"""
from __future__ import annotations

import numpy as np


class FrechetError(ValueError):
    """The distance could not be computed reliably (non-finite input/result, too few samples...)."""


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 − mu2||² + tr(S1) + tr(S2) − 2·tr sqrt(S1·S2), float64."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise FrechetError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise FrechetError(f"{name} has non-finite entries")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    a = _psd_sqrt(s1)
    m = a @ s2 @ a
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    scale = float(np.trace(s1) + np.trace(s2) + diff @ diff) or 1.0
    if not np.isfinite(value):
        raise FrechetError(f"Fréchet distance is not finite ({value})")
    if value < 0:
        if value < -1e-6 * scale:
            raise FrechetError(f"Fréchet distance is negative ({value:.3e}): covariances are inconsistent")
        value = 0.0  # round-off of two (near-)identical distributions
    return value


def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of an (N, D) feature array, float64."""
    f = np.asarray(feats, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise FrechetError(f"features must be (N>=2, D), got {f.shape}")
    if not np.isfinite(f).all():
        raise FrechetError("features contain non-finite values")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def check_n(n: int, dim: int, allow_low_n: bool) -> bool:
    """True when n < dim (low-N); raises unless allowed."""
    low = n < dim
    if low and not allow_low_n:
        raise FrechetError(f"{n} samples < feature dim {dim}: covariance is rank-deficient; "
                           "use more samples or allow_low_n=True (the metric is then labelled low-N)")
    return low


def frechet_from_features(a, b, allow_low_n: bool = False) -> float:
    """Fréchet distance between two (N, D) feature sets."""
    a, b = np.asarray(a), np.asarray(b)
    for f in (a, b):
        check_n(len(f), f.shape[1], allow_low_n)
    return frechet_distance(*feature_stats(a), *feature_stats(b))
