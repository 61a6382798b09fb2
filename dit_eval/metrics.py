"""The arithmetic of the sample metrics besides the Fréchet distance (dit_eval.frechet): Inception Score
and precision/recall. Inputs are feature arrays; which network made them is the caller's protocol.

- Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) on each of `splits` equal parts of
  the samples, reported as the mean and std over the parts. The samples are first put in a seeded order
  (numpy RandomState(2020), torch-fidelity's default): sample files are in label order for some label
  policies, and an unshuffled part would then see few classes and a much lower score. Softmax in float64.
- Precision / recall (Kynkäänniemi et al. 2019, k = 3 as in ADM's evaluator): each set's manifold is
  the union of balls around its points with radius = distance to the k-th nearest other point of the set;
  precision = the fraction of samples inside the reference manifold, recall = the fraction of reference
  points inside the sample manifold (a point on a radius counts as inside). Euclidean distances with
  `torch.cdist` in float64, in row blocks so memory stays at block x N.
"""
from __future__ import annotations

import numpy as np
import torch

IS_SHUFFLE_SEED = 2020


def inception_score(logits, splits: int = 10, seed: int = IS_SHUFFLE_SEED) -> tuple[float, float]:
    """(mean, std) of the Inception Score of (N, classes) logits over `splits` parts."""
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    n = len(x)
    if x.ndim != 2 or n < splits:
        raise ValueError(f"inception score: need (N >= splits={splits}, classes) logits, got {tuple(x.shape)}")
    x = x[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    p, log_p = x.softmax(1), x.log_softmax(1)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        q = p[lo:hi].mean(0, keepdim=True)
        scores.append(float((p[lo:hi] * (log_p[lo:hi] - q.log())).sum(1).mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


def _kth_radius(f: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row (the k+1-th smallest, itself at 0 included)."""
    return torch.cat([torch.cdist(f[i:i + block], f).kthvalue(k + 1, dim=1).values for i in range(0, len(f), block)])


def _inside(points: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, block: int) -> torch.Tensor:
    """Per point: is it within the radius of any center?"""
    return torch.cat([(torch.cdist(points[i:i + block], centers) <= radii).any(1)
                      for i in range(0, len(points), block)])


def precision_recall(samples, reference, k: int = 3, block: int = 4096, device: str = "cpu") -> tuple[float, float]:
    """(precision, recall) of sample features against reference features, both (N, D), computed on `device`."""
    s = torch.as_tensor(np.asarray(samples), dtype=torch.float64, device=device)
    r = torch.as_tensor(np.asarray(reference), dtype=torch.float64, device=device)
    if s.ndim != 2 or r.ndim != 2 or s.shape[1] != r.shape[1]:
        raise ValueError(f"precision/recall: features {tuple(s.shape)} and {tuple(r.shape)} do not match")
    if min(len(s), len(r)) <= k:
        raise ValueError(f"precision/recall: need more than k={k} points in each set, got {len(s)} and {len(r)}")
    precision = _inside(s, r, _kth_radius(r, k, block), block).double().mean().item()
    recall = _inside(r, s, _kth_radius(s, k, block), block).double().mean().item()
    return float(precision), float(recall)
