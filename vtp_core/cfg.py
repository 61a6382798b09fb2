"""Config conventions shared by every stage config (frozen dataclasses).

Why: a stage id is a hash of the fields that change results ("versioned") plus its upstream ids.
Fields that only affect logging, paths or speed-without-changing-numbers are declared with
`unversioned(...)` so that changing them never invalidates finished work (marin's executor idea).
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any


def unversioned(default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A dataclass field that does not enter the stage hash (logging, paths, checkpoint cadence)."""
    md = {"versioned": False}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=md, **kw)
    return dataclasses.field(default=default, metadata=md, **kw)


def versioned_dict(cfg: Any) -> dict:
    """The versioned fields of a (nested) frozen dataclass, as plain JSON-able data."""
    if dataclasses.is_dataclass(cfg):
        out = {}
        for f in dataclasses.fields(cfg):
            if f.metadata.get("versioned", True):
                out[f.name] = versioned_dict(getattr(cfg, f.name))
        return out
    if isinstance(cfg, (list, tuple)):
        return [versioned_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): versioned_dict(v) for k, v in sorted(cfg.items())}
    return cfg


def to_dict(cfg: Any) -> dict:
    """All fields (versioned or not), for config.yaml."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild a (nested) frozen dataclass from `to_dict` output (trusted input: our own files)."""
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        v = data[f.name]
        t = hints.get(f.name)
        if dataclasses.is_dataclass(t) and isinstance(v, dict):
            v = from_dict(t, v)
        elif isinstance(v, list):
            v = tuple(v)
        kw[f.name] = v
    return cls(**kw)
