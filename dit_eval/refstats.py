"""`refstats` stage: Gaussian statistics (mu, sigma) of real images under one extractor.

Why a stage: reference statistics are computed once per (data, split, n, extractor) and shared by
every gFID and rFID of a study; the metrics name the extractor and its checksum so a FID is never
computed against statistics from another network or preprocessing (USER_NEEDS B#7). External
ADM-style `.npz` references (mu/sigma) can be read with `load_reference_npz`, pinned by checksum.
"""
from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import numpy as np

from dit_eval.frechet import feature_stats
from vtp_core.cfg import versioned_dict
from vtp_core.data import take
from vtp_core.runtime import StageError, atomic_write_bytes


def save_stats(path: Path, mu: np.ndarray, sigma: np.ndarray, n: int) -> None:
    buf = io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma, n=np.int64(n))
    atomic_write_bytes(path, buf.getvalue())


def load_stats_npz(path: Path) -> dict:
    """{"mu", "sigma", "n"} from a refstats `stats.npz`."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"reference statistics missing: {path}")
    with np.load(path) as f:
        return {"mu": f["mu"].astype(np.float64), "sigma": f["sigma"].astype(np.float64),
                "n": int(f["n"]) if "n" in f else 0}


def load_reference_npz(path: Path, sha256: str = "") -> dict:
    """An ADM-style reference batch (e.g. VIRTUAL_imagenet256_labeled.npz) with `mu`/`sigma` arrays;
    when `sha256` is given (full or a prefix) the file must match it."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"reference npz not found: {path}")
    if sha256:
        h = hashlib.sha256(path.read_bytes()).hexdigest()
        if not h.startswith(sha256.lower()):
            raise StageError(f"reference npz {path}: sha256 {h[:16]}... does not match {sha256}")
    with np.load(path) as f:
        if "mu" not in f or "sigma" not in f:
            raise StageError(f"reference npz {path} has keys {sorted(f.keys())}; needs 'mu' and 'sigma'")
        return {"mu": f["mu"].astype(np.float64), "sigma": f["sigma"].astype(np.float64), "n": 0}


def compute_refstats(cfg, out: Path, extractor, images: np.ndarray) -> dict:
    """The stage body: features of the first cfg.n_images images (0 = all), saved as stats.npz."""
    t0 = time.time()
    n = len(images) if cfg.n_images == 0 else cfg.n_images
    if len(images) < n:
        raise StageError(f"refstats: asked for n_images={n} but split '{cfg.split}' has {len(images)}")
    if n < 2:
        raise StageError("refstats: need at least 2 images")
    mu, sigma = feature_stats(extractor(take(images, slice(0, n))))  # lazy user data: decoded batch by batch
    save_stats(Path(out) / "stats.npz", mu, sigma, n)
    return {"extractor": extractor.name, "extractor_sha": extractor.sha, "dim": extractor.dim,
            "data": versioned_dict(cfg.data), "split": cfg.split, "n": n, "wall_s": round(time.time() - t0, 3)}


def run(cfg, ctx) -> dict:
    """Stage entry: images from vtp_core.data.load_split(cfg.data, cfg.split), extractor upstream."""
    from dit_eval.extractors import load_extractor
    from vtp_core.data import load_split

    images, _ = load_split(cfg.data, cfg.split)
    return compute_refstats(cfg, ctx.out, load_extractor(ctx.input("extractor"), ctx.device), images)
