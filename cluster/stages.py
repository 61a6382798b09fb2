"""Stage kind → entry function, and the services a lower layer may not import itself.

Entry functions are imported lazily so `make status` / dry runs never load torch models.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

ENTRY = {
    "pretrain": "vtp_core.pretrain:run",
    "probe": "vtp_core.probe:run",
    "extractor": "dit_eval.extractors:run",
    "refstats": "dit_eval.refstats:run",
    "latents": "dit_eval.latents:run",
    "dit": "dit_eval.train:run",
    "sample": "dit_eval.sample:run",
    "fid": "dit_eval.fid:run",
    "anchor": "vtp_core.released:run",
}


def entry(kind: str) -> Callable[..., dict]:
    mod, fn = ENTRY[kind].split(":")
    return getattr(importlib.import_module(mod), fn)


def services(kind: str, inputs: dict[str, Path], device: str) -> dict[str, Any]:
    """The probe's rFID uses the same extractor and Fréchet code as gFID (dit_eval), injected here."""
    if kind != "probe":
        return {}
    from dit_eval.extractors import load_extractor
    from dit_eval.frechet import frechet_from_features

    ext = load_extractor(inputs["extractor"], device)
    # small probe sets (n < feature dim) are allowed but the metric says so (low_n in its protocol)
    return {"fid_features": ext, "frechet": lambda a, b: frechet_from_features(a, b, allow_low_n=True),
            "extractor_name": ext.name,
            "extractor_sha": ext.sha, "refstats": inputs.get("refstats")}
