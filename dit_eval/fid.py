"""`fid` stage: gFID of a sample stage against cached reference statistics.

Why the protocol dict: a FID is only comparable to another FID made the same way (sample count,
extractor + checksum, reference, sampler settings, CFG, EMA). Every value carries those fields and a
short hash of them; analysis never puts numbers with different hashes on one curve (docs/protocol.md#gfid).
Low-N FIDs (fewer samples than feature dims) are refused unless allowed, and then labelled.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from dit_eval.frechet import FrechetError, check_n, feature_stats, frechet_distance
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


def compute_gfid(cfg, sample_dir: Path, extractor, ref: dict, reference: str, settings: dict) -> dict:
    """The stage body, with the extractor and reference stats injected."""
    t0 = time.time()
    images, _ = load_samples(sample_dir)
    feats = extractor(images)
    if ref["mu"].shape != (extractor.dim,):
        raise StageError(f"fid: reference has dim {ref['mu'].shape}, extractor {extractor.name} has {extractor.dim}")
    try:
        low_n = check_n(len(feats), extractor.dim, cfg.allow_low_n)
        value = frechet_distance(*feature_stats(feats), ref["mu"], ref["sigma"])
    except FrechetError as e:
        raise StageError(f"fid: {e}") from None
    gfid = {"value": value, "n_samples": int(len(feats)), "extractor": extractor.name,
            "extractor_sha": extractor.sha, "reference": reference, **settings, "low_n": bool(low_n)}
    gfid["protocol_hash"] = protocol_hash(gfid)
    return {"gfid": gfid, "wall_s": round(time.time() - t0, 3)}


def run(cfg, ctx) -> dict:
    """Stage entry: samples from `sample`, extractor from `extractor`, stats from `refstats`."""
    from dit_eval.extractors import load_extractor

    ref_dir = ctx.input("refstats")
    sample_dir = ctx.input("sample")
    return compute_gfid(cfg, sample_dir, load_extractor(ctx.input("extractor"), ctx.device),
                        load_stats_npz(ref_dir / "stats.npz"), ref_dir.name, sample_settings(sample_dir))
