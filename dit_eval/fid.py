"""`fid` stage: the sample metrics that `FIDConfig.metrics` asks for, against cached reference statistics.

Which metrics (docs/protocol.md#sample-metrics), all from ONE pass of the study's extractor over the samples:
`fid` (FD of the FD features; for the Inception pool3: gFID), `sfid` (FD of the Inception's mixed_6/conv
features), `is` (Inception Score of its logits), `precision` / `recall` (k-NN manifolds of the FD features
against the reference's precision/recall subset); `fd_dinov2` adds one pass of the DINOv2 extractor
(its own extractor and refstats stages, upstream names `extractor_dinov2`, `refstats_dinov2`).

Why the protocol dict: a number is only comparable to another made the same way (sample count,
extractor + checksum, reference, sampler settings, CFG, EMA, and the metric's own settings). Every
value carries those fields and a short hash of them; analysis never puts numbers with different hashes
on one curve (docs/protocol.md#gfid). Low-N Fréchet distances (fewer samples than feature dims) are refused unless allowed,
and then labelled.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from dit_eval.frechet import FrechetError, check_n, feature_stats, frechet_distance
from dit_eval.metrics import IS_SHUFFLE_SEED, inception_score, precision_recall
from dit_eval.refstats import load_stats_npz
from dit_eval.sample import load_samples, read_protocol
from vtp_core.runtime import StageError


def protocol_hash(d: dict) -> str:
    """Short sha256 of a metric's protocol: every key except `value` and `protocol_hash`."""
    proto = {k: v for k, v in d.items() if k not in ("value", "protocol_hash")}
    return hashlib.sha256(json.dumps(proto, sort_keys=True, default=str).encode()).hexdigest()[:12]


def sample_settings(sample_dir: Path) -> dict:
    """Sampler protocol as the sample stage recorded it (`dit_eval.sample.protocol`)."""
    return read_protocol(sample_dir)


def _fd(feats, mu, sigma, dim: int, allow_low_n: bool, proto: dict) -> dict:
    """A Fréchet distance with its protocol (low-N label included) and protocol hash."""
    try:
        low_n = check_n(len(feats), dim, allow_low_n)
        value = frechet_distance(*feature_stats(feats), mu, sigma)
    except FrechetError as e:
        where = f"fid: {proto['metric']}" if "metric" in proto else "fid"
        raise StageError(f"{where}: {e}") from None
    return _hashed({"value": value, **proto, "low_n": bool(low_n)})


def _hashed(d: dict) -> dict:
    d["protocol_hash"] = protocol_hash(d)
    return d


def compute_metrics(cfg, sample_dir: Path, extractor, ref: dict, reference: str, settings: dict,
                    dino: tuple | None = None, device: str = "cpu") -> dict:
    """The stage body, with the extractor(s) and reference stats injected. `dino` = (DINOv2 extractor, its
    reference stats, that reference's name) when fd_dinov2 is asked; `device` runs the P/R distances."""
    t0 = time.time()
    want = set(cfg.metrics)
    images, _ = load_samples(sample_dir)
    keys = ("features", *(("spatial",) if "sfid" in want else ()), *(("logits",) if "is" in want else ()))
    missing = [k for k in keys if k not in extractor.outputs]
    if missing:
        raise StageError(f"fid: metrics {sorted(want)} need the {', '.join(missing)} output of extractor "
                         f"{extractor.name}, which has only {', '.join(extractor.outputs)}")
    feats = extractor.features(images, keys)  # one pass for every metric of this extractor
    if ref["mu"].shape != (extractor.dim,):
        raise StageError(f"fid: reference has dim {ref['mu'].shape}, extractor {extractor.name} has {extractor.dim}")
    n = len(feats["features"])
    base = {"n_samples": int(n), "extractor": extractor.name, "extractor_sha": extractor.sha, "reference": reference,
            **settings}
    out = {}
    if "fid" in want:  # the gFID protocol dict as it always was: its hash stays comparable
        out["gfid"] = _fd(feats["features"], ref["mu"], ref["sigma"], extractor.dim, cfg.allow_low_n, base)
    if "sfid" in want:
        if "mu_s" not in ref:
            raise StageError(f"fid: sfid needs sFID statistics (mu_s, sigma_s) in reference {reference}; an ADM "
                             f"reference batch without them cannot give sFID")
        out["sfid"] = _fd(feats["spatial"], ref["mu_s"], ref["sigma_s"], feats["spatial"].shape[1], cfg.allow_low_n,
                          {"metric": "sfid", **base, "features": "mixed_6/conv[:7]"})
    if "is" in want:
        try:
            mean, std = inception_score(feats["logits"], cfg.is_splits)
        except ValueError as e:
            raise StageError(f"fid: is: {e}") from None
        proto = {k: v for k, v in base.items() if k != "reference"}  # IS reads no reference
        out["inception_score"] = _hashed({"value": mean, "std": std, "metric": "is", **proto,
                                          "splits": cfg.is_splits, "shuffle_seed": IS_SHUFFLE_SEED})
    if want & {"precision", "recall"}:
        if "pr_features" not in ref:
            raise StageError(f"fid: precision/recall need reference features; reference {reference} holds statistics "
                             f"only (an ADM reference batch): use a computed reference")
        try:
            p, r = precision_recall(feats["features"], ref["pr_features"], cfg.pr_k, device=device)
        except ValueError as e:
            raise StageError(f"fid: {e}") from None
        for name, value in (("precision", p), ("recall", r)):
            if name in want:
                out[name] = _hashed({"value": value, "metric": name, **base, "k": cfg.pr_k,
                                     "n_reference": len(ref["pr_features"])})
    if "fd_dinov2" in want:
        if dino is None:
            raise StageError("fid: fd_dinov2 asked but no DINOv2 extractor/reference was given")
        d_ext, d_ref, d_name = dino
        if d_ref["mu"].shape != (d_ext.dim,):
            raise StageError(f"fid: fd_dinov2 reference has dim {d_ref['mu'].shape}, DINOv2 has {d_ext.dim}")
        out["fd_dinov2"] = _fd(d_ext(images), d_ref["mu"], d_ref["sigma"], d_ext.dim, cfg.allow_low_n,
                               {"metric": "fd_dinov2", **base, "extractor": d_ext.name, "extractor_sha": d_ext.sha,
                                "reference": d_name})
    return {**out, "metrics": list(cfg.metrics), "wall_s": round(time.time() - t0, 3)}


def run(cfg, ctx) -> dict:
    """Stage entry: samples from `sample`, extractor from `extractor`, stats from `refstats` (and with
    fd_dinov2 the DINOv2 ones from `extractor_dinov2`, `refstats_dinov2`)."""
    from dit_eval.extractors import load_extractor

    ref_dir = ctx.input("refstats")
    sample_dir = ctx.input("sample")
    dino = None
    if "fd_dinov2" in cfg.metrics:
        d_dir = ctx.input("refstats_dinov2")
        dino = (load_extractor(ctx.input("extractor_dinov2"), ctx.device), load_stats_npz(d_dir / "stats.npz"),
                d_dir.name)
    return compute_metrics(cfg, sample_dir, load_extractor(ctx.input("extractor"), ctx.device),
                           load_stats_npz(ref_dir / "stats.npz"), ref_dir.name, sample_settings(sample_dir), dino,
                           ctx.device)
