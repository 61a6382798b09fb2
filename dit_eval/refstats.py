"""`refstats` stage: Gaussian statistics (mu, sigma) of real images under one extractor.

Why a stage: reference statistics are computed once per (data, split, n, seed, extractor) and shared
by every gFID and rFID of a study; the metrics name the extractor and its checksum so a FID is never
computed against statistics from another network or preprocessing (docs/protocol.md#reference-statistics).

Which images (`balanced_indices`): the DiT samples span every class, so the reference must too. An
ImageFolder split is class-sorted, and its first 50k images would be ~39 of ImageNet's 1000 classes:
a large, tokenizer-independent floor under every gFID. The reference is a seeded, class-balanced
subset instead. The rule, for n images over the K classes present in the split (class order = label
order, i.e. sorted class-folder names):
  1. water-filling: while some class has no more images than the even share (images left // classes
     left), each such class gives all it has and leaves the share computation ("short" classes:
     those that end below the others' share);
  2. every other class gets the share q = r // m of the r images left over its m classes; the
     r - q·m leftover images go one each to classes picked by the seeded generator, so the counts
     differ by at most 1 (short classes aside);
  3. within each class, that many images are drawn without replacement by the same generator
     (numpy `default_rng(seed)`, classes visited in label order);
  4. the chosen positions are returned sorted (ascending position in the split).
Same (labels, n, seed) -> same subset; `n = 0` -> the whole split. When labels are unknown (any
label is -1, e.g. tar shards without `.cls`), a seeded uniform subset is drawn instead, and the
metrics say so (`selection: "uniform"`, `n_unlabelled`).

What the fid stage's metrics need from the reference, all from the one pass over its images:
- `stats.npz`: `mu`/`sigma` of the FD features, and for an extractor with sFID features (the Inception)
  `mu_s`/`sigma_s` of those (ADM's key names);
- `pr_features.npy`: the FD features of a class-balanced subset of `pr_n_images` of the chosen images
  (the same rule and seed, applied to the chosen images' labels): the reference manifold of
  precision/recall, bounded because its k-NN radii cost N² distances.

ADM-style reference batches (`RefStatsConfig.npz` + `sha256`, e.g. VIRTUAL_imagenet256_labeled.npz):
the stage checks the file's sha256, reads `mu`/`sigma` (and `mu_s`/`sigma_s` when present; never the
`arr_0` images) and writes them as its stats.npz, so the fid stage reads them like computed
statistics. No images are read, so there are no precision/recall features in this mode.
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
from vtp_core.runtime import StageError, atomic_write_bytes, file_hash

PR_FEATURES = "pr_features.npy"


def save_stats(path: Path, mu: np.ndarray, sigma: np.ndarray, n: int, **extra: np.ndarray) -> None:
    """stats.npz: mu, sigma, n, and `extra` arrays (mu_s, sigma_s: the sFID statistics)."""
    buf = io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma, n=np.int64(n), **extra)
    atomic_write_bytes(path, buf.getvalue())


def load_stats_npz(path: Path) -> dict:
    """{"mu", "sigma", "n"} from a refstats `stats.npz` (n = 0: unknown, e.g. from an ADM batch), plus
    "mu_s"/"sigma_s" when stored, and "pr_features" when the stage folder holds them."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"reference statistics missing: {path}")
    with np.load(path) as f:
        out = {"mu": f["mu"].astype(np.float64), "sigma": f["sigma"].astype(np.float64),
               "n": int(f["n"]) if "n" in f else 0}
        out.update({k: f[k].astype(np.float64) for k in ("mu_s", "sigma_s") if k in f})
    pr = path.parent / PR_FEATURES
    if pr.is_file():
        out["pr_features"] = np.load(pr)
    return out


def load_reference_npz(path: Path, sha256: str = "", full: bool = False) -> dict:
    """An ADM-style reference batch (e.g. VIRTUAL_imagenet256_labeled.npz) with `mu`/`sigma` arrays;
    when `sha256` is given (a prefix, or with `full` the whole 64-hex digest) the file must match it.
    The `arr_0` images of those files are never loaded (npz members are read on access)."""
    path = Path(path)
    if not path.is_file():
        want = f" (expected sha256 {sha256})" if sha256 else ""
        raise StageError(f"reference npz not found: {path}{want}")
    if full and len(sha256) != 64:
        raise StageError(f"reference npz {path}: sha256 {sha256!r} is not a full 64-hex-digit sha256")
    if sha256:
        h = file_hash(path)
        if not (h == sha256.lower() if full else h.startswith(sha256.lower())):
            raise StageError(f"reference npz {path}: sha256 {h} does not match expected {sha256}")
    try:
        f = np.load(path)
    except Exception as exc:  # noqa: BLE001 - a corrupt/non-npz file, named in one line
        raise StageError(f"reference npz {path}: unreadable ({type(exc).__name__}: {exc})".replace("\n", " ")) from None
    if not hasattr(f, "files"):
        raise StageError(f"reference npz {path}: a single array, not an .npz with 'mu' and 'sigma'")
    with f:
        keys = sorted(f.files)
        if "mu" not in keys or "sigma" not in keys:
            raise StageError(f"reference npz {path} has keys {keys}; needs 'mu' and 'sigma'")
        out = {"mu": f["mu"].astype(np.float64), "sigma": f["sigma"].astype(np.float64), "n": 0}
        if "mu_s" in keys and "sigma_s" in keys:  # ADM's sFID statistics
            out.update(mu_s=f["mu_s"].astype(np.float64), sigma_s=f["sigma_s"].astype(np.float64))
        return out


# ---------------------------------------------------------------------------- which images
def class_quotas(counts: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Images per class (water-filling, see the module doc): sum n, each <= counts, as even as the
    counts allow; which classes get the +1 of the remainder is drawn by `rng`. Also returns how many
    classes are short (gave all their images and still fewer than the others' share)."""
    counts = np.asarray(counts, dtype=np.int64)
    if not 0 <= n <= counts.sum():
        raise StageError(f"refstats: {n} images asked of a split with {int(counts.sum())}")
    quota = np.zeros(len(counts), dtype=np.int64)
    open_ = np.ones(len(counts), dtype=bool)
    left = n
    while open_.any():
        share = left // int(open_.sum())
        short = open_ & (counts <= share)
        if not short.any():
            break
        quota[short] = counts[short]
        left -= int(counts[short].sum())
        open_ &= ~short
    if not open_.any():  # n == counts.sum(): everything
        return quota, 0
    idx = np.flatnonzero(open_)  # every open class has > share images, so each can take share + 1
    share, extra = divmod(left, len(idx))
    quota[idx] = share
    quota[rng.permutation(idx)[:extra]] += 1
    return quota, int((quota < share).sum())


def balanced_indices(labels, n: int, seed: int) -> tuple[np.ndarray, dict]:
    """Positions (sorted) of the seeded class-balanced subset of n images (0 = all) and what to log:
    {"selection", "classes", "per_class", "n_unlabelled"}. Unknown labels (-1): seeded uniform subset."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    total = len(labels)
    n = total if n == 0 else n
    if n > total:
        raise StageError(f"refstats: asked for n_images={n} but the split has {total} images")
    rng = np.random.default_rng(seed)
    unlabelled = int((labels < 0).sum())
    if unlabelled:
        idx = np.sort(rng.permutation(total)[:n])
        return idx, {"selection": "uniform", "classes": None, "per_class": None, "n_unlabelled": unlabelled}
    classes, counts = np.unique(labels, return_counts=True)
    if n == total:
        idx, quota, short = np.arange(total, dtype=np.int64), counts, 0
    else:
        quota, short = class_quotas(counts, n, rng)
        order = np.argsort(labels, kind="stable")  # positions grouped by class, ascending within a class
        starts = np.concatenate([[0], np.cumsum(counts)])
        idx = np.sort(np.concatenate([rng.choice(order[starts[k]:starts[k + 1]], int(q), replace=False)
                                      for k, q in enumerate(quota)]))
    info = {"selection": "class_balanced" if n < total else "all",
            "classes": {"n_classes": len(classes), "min_per_class": int(quota.min()),
                        "max_per_class": int(quota.max()), "short_classes": short},
            "per_class": [int(q) for q in quota], "n_unlabelled": 0}
    return idx.astype(np.int64), info


def subset_sha(idx: np.ndarray) -> str:
    """Short sha256 of the chosen positions: two reference sets are the same images iff it matches."""
    return hashlib.sha256(np.ascontiguousarray(idx, dtype="<i8").tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------- stage bodies
def compute_refstats(cfg, out: Path, extractor, images, labels=None) -> dict:
    """The stage body: features of the seeded class-balanced subset (`balanced_indices`) of
    cfg.n_images images (0 = all), saved as stats.npz. `labels=None`: unknown (uniform subset)."""
    t0 = time.time()
    if labels is None:
        labels = np.full(len(images), -1, dtype=np.int64)
    if len(labels) != len(images):
        raise StageError(f"refstats: split '{cfg.split}' has {len(images)} images but {len(labels)} labels")
    n = len(images) if cfg.n_images == 0 else cfg.n_images
    if len(images) < n:
        raise StageError(f"refstats: asked for n_images={n} but split '{cfg.split}' has {len(images)}")
    if n < 2:
        raise StageError("refstats: need at least 2 images")
    idx, info = balanced_indices(labels, cfg.n_images, cfg.seed)
    sel = images if len(idx) == len(images) else take(images, idx)  # lazy user data: decoded batch by batch
    keys = ("features", "spatial") if "spatial" in extractor.outputs else ("features",)
    feats = extractor.features(sel, keys)  # one pass: FD features (+ the Inception's sFID features)
    mu, sigma = feature_stats(feats["features"])
    extra = dict(zip(("mu_s", "sigma_s"), feature_stats(feats.pop("spatial")))) if "spatial" in feats else {}
    # the precision/recall reference: a class-balanced subset of the chosen images (positions into idx)
    pr_pos, _ = balanced_indices(np.asarray(labels)[idx], min(cfg.pr_n_images, len(idx)), cfg.seed)
    buf = io.BytesIO()
    np.save(buf, feats["features"][pr_pos])
    atomic_write_bytes(Path(out) / PR_FEATURES, buf.getvalue())
    save_stats(Path(out) / "stats.npz", mu, sigma, n, **extra)
    return {"reference": "computed", "extractor": extractor.name, "extractor_sha": extractor.sha,
            "dim": extractor.dim, "data": versioned_dict(cfg.data), "split": cfg.split, "n": n,
            "seed": cfg.seed, **info, "subset_sha": subset_sha(idx), "sfid_stats": bool(extra),
            "pr_n": len(pr_pos), "pr_subset_sha": subset_sha(idx[pr_pos]), "wall_s": round(time.time() - t0, 3)}


def reference_from_npz(cfg, out: Path, extractor) -> dict:
    """The stage body in ADM mode: checked mu/sigma of `cfg.npz` written as stats.npz; no images read."""
    t0 = time.time()
    if not cfg.sha256:
        raise StageError(f"refstats: npz {cfg.npz} needs its full sha256 (RefStatsConfig.sha256)")
    ref = load_reference_npz(Path(cfg.npz), cfg.sha256, full=True)
    mu, sigma = ref["mu"], ref["sigma"]
    if mu.shape != (extractor.dim,) or sigma.shape != (extractor.dim, extractor.dim):
        raise StageError(f"refstats: {cfg.npz} holds mu {mu.shape} / sigma {sigma.shape}; extractor "
                         f"{extractor.name} has dim {extractor.dim}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise StageError(f"refstats: {cfg.npz} holds non-finite mu/sigma")
    extra = {k: ref[k] for k in ("mu_s", "sigma_s") if k in ref}
    save_stats(Path(out) / "stats.npz", mu, sigma, 0, **extra)
    return {"reference": "npz", "npz_file": Path(cfg.npz).name, "npz_sha256": cfg.sha256.lower(),
            "extractor": extractor.name, "extractor_sha": extractor.sha, "dim": extractor.dim, "n": 0,
            "sfid_stats": bool(extra), "wall_s": round(time.time() - t0, 3)}


def run(cfg, ctx) -> dict:
    """Stage entry: extractor upstream; images + labels from vtp_core.data.load_split(cfg.data,
    cfg.split), or with `cfg.npz` the ADM reference batch (no images)."""
    from dit_eval.extractors import load_extractor

    extractor = load_extractor(ctx.input("extractor"), ctx.device)
    if cfg.npz or cfg.sha256:
        if not cfg.npz:
            raise StageError("refstats: sha256 is set but no npz file names the reference batch")
        return reference_from_npz(cfg, ctx.out, extractor)
    from vtp_core.data import load_split

    images, labels = load_split(cfg.data, cfg.split)
    return compute_refstats(cfg, ctx.out, extractor, images, labels)
