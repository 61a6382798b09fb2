"""Shared fixtures: tiny configs and a throw-away StageContext (CPU, no progress bars)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.linalg
import torch

from vtp_core.config import TokenizerConfig
from vtp_core.runtime import StageContext
import small_configs as small

torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg() -> TokenizerConfig:
    return small.tokenizer(batch_size=16, steps=4, warmup_steps=2, ckpt_every=2, log_every=2)


@pytest.fixture
def make_ctx(tmp_path):
    def make(name: str = "stage", **kw) -> StageContext:
        return StageContext(out=tmp_path / name, progress=False, log=logging.getLogger("vtp.test"), **kw)
    return make


def _numpy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.fixture
def fid_services() -> dict:
    """Stand-ins for the cluster-injected services: flatten + fixed random projection, numpy Fréchet."""
    proj = np.random.default_rng(0).standard_normal((32 * 32 * 3, 8))
    feats = lambda u: (u.reshape(len(u), -1).astype(np.float64) / 255.0) @ proj  # noqa: E731
    return {"fid_features": feats, "frechet": _numpy_frechet, "extractor_name": "randproj8"}


class StopAfter:
    """stop_requested() turns true once the trainer has asked `n` times (= after n steps)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.n


@pytest.fixture
def stop_after():
    """`StopAfter`, the class: `ctx.stop_requested = stop_after(n)`."""
    return StopAfter
