"""Content-addressed stage ids: `<stage>-<readable tag>-<sha256(versioned config, upstream ids)[:10]>`.

Why: two cells that share a tokenizer must share its `pretrain`/`probe`/`latents` stages, a finished
stage must be found again from its config alone, and fields that only affect logging or paths
(declared `unversioned`) must never change an id. `CODE_VERSION` is bumped when a stage's code
changes its numbers, so old results are not silently reused.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from typing import Any, Iterable

from vtp_core.cfg import versioned_dict

CODE_VERSION: dict[str, int] = {
    "pretrain": 5, "probe": 2, "extractor": 1, "refstats": 2,
    "latents": 2, "dit": 2, "sample": 2, "fid": 1, "anchor": 1,
}


@functools.lru_cache(maxsize=65536)
def _canonical(cfg: Any) -> str:
    return json.dumps(versioned_dict(cfg), sort_keys=True, separators=(",", ":"), default=str)


def spec_hash(cfg: Any) -> str:
    """Short hash of a config's versioned fields alone (e.g. the study's one DiT spec, recorded per cell)."""
    return hashlib.sha256(_canonical(cfg).encode()).hexdigest()[:10]


def stage_hash(kind: str, cfg: Any, upstream_ids: Iterable[str]) -> str:
    payload = "|".join([kind, str(CODE_VERSION[kind]), _canonical(cfg), *sorted(upstream_ids)])
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


# every character but str.isalnum() ones and "-_." (the same set over all of Unicode: `\w` is isalnum plus "_");
# one regex pass instead of a Python loop per character (planning 10k cells calls this 60k times)
_UNSAFE = re.compile(r"[^\w.-]")


def stage_id(kind: str, tag: str, cfg: Any, upstream_ids: Iterable[str] = ()) -> str:
    safe = _UNSAFE.sub("_", tag)[:60]
    return f"{kind}-{safe}-{stage_hash(kind, cfg, upstream_ids)}"


def fmt_num(x: float) -> str:
    """2000000000000.0 → '2e12', 1500 → '1500', 0 → '0' (for tags and cell names)."""
    x = float(x)
    if x == 0:
        return "0"
    if x == int(x) and abs(x) < 1e5:
        return str(int(x))
    mant, exp = f"{x:.3g}".split("e") if "e" in f"{x:.3g}" else (f"{x:.3g}", "0")
    return f"{mant}e{int(exp)}"
