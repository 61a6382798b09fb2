"""The one configuration system: frozen dataclasses, one loader, one validator, one hash.

Why: a stage id is a hash of the fields that change results ("versioned") plus its upstream ids.
Fields that only affect logging, paths or speed without changing a number are declared
`unversioned(...)`, so changing them never invalidates finished work (marin's executor idea); a
test flips each of them and compares the outputs (tests/test_unversioned_fields.py).

Every rule about a field lives on the field itself, as metadata of `spec(...)`:

    lr: float = spec(5e-4, gt=0, source="prior: OpenCLIP", doc="peak learning rate")
    recipe: str = spec("clip_ssl_ae", choices=RECIPES)

`choices` is the one place a choice list is kept (a tuple, a mapping's keys, or a callable for
registries that can grow); `gt/ge/lt/le` are ranges (checked per element for tuples); `forbid`
on a nested config names the keys a study may not set there; `source` and `doc` feed
docs/method.md (`python -m vtp_core.method_table`). Rules that span several fields are a
`problems()` method on the class yielding (field, message) pairs.

`load(cls, mapping, where)` turns YAML/JSON data into the dataclass, refusing unknown keys, wrong
types and bad values with one line naming the file, the field path, the value and what is allowed
(`ConfigError`; the CLI turns it into exit code 2). `check(obj, where)` applies the same rules to an
object built in code. Our own files (config.yaml, tokenizer.pt) are read back with the same loader.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable, Iterable, Iterator


class ConfigError(ValueError):
    """Bad configuration. `str(err)` is the whole one-line message (file, field, value, what is allowed)."""


def spec(default: Any = dataclasses.MISSING, *, choices: Iterable | Callable[[], Iterable] | None = None,
         gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None,
         versioned: bool = True, forbid: Iterable[str] = (), source: str = "", doc: str = "",
         default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its rules (see the module docstring)."""
    md = {"versioned": versioned, "choices": choices, "gt": gt, "ge": ge, "lt": lt, "le": le,
          "forbid": tuple(forbid), "source": source, "doc": doc}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=md)
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=md)
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return dataclasses.field(default_factory=lambda: default, metadata=md)
    return dataclasses.field(default=default, metadata=md)


def unversioned(default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A field that does not enter the stage hash (logging, paths, checkpoint cadence, speed)."""
    return spec(default, versioned=False, **kw)


def choices_of(cls: type, name: str) -> tuple:
    """The allowed values of field `name` of `cls` (resolving a callable)."""
    ch = _meta(cls, name).get("choices")
    return _resolve(ch)


# ---------------------------------------------------------------------------- hashing and dumping
def versioned_dict(cfg: Any) -> Any:
    """The versioned fields of a (nested) frozen dataclass, as plain JSON-able data."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: versioned_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                if f.metadata.get("versioned", True)}
    if isinstance(cfg, (list, tuple)):
        return [versioned_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): versioned_dict(v) for k, v in sorted(cfg.items())}
    return cfg


def to_dict(cfg: Any) -> dict:
    """All fields (versioned or not), for config.yaml and checkpoints."""
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------- loading
def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _at(where: str, path: str) -> str:
    return f"{where}: {path}" if where and path else (where or path)


def _meta(cls: type, name: str) -> dict:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return dict(f.metadata)
    return {}


def _resolve(ch: Any) -> tuple:
    if ch is None:
        return ()
    if callable(ch):
        ch = ch()
    return tuple(ch)


def _union_args(typ: Any) -> tuple | None:
    origin = typing.get_origin(typ)
    if origin is typing.Union or origin is types.UnionType:
        return typing.get_args(typ)
    return None


def _coerce(value: Any, typ: Any, where: str, path: str, strict: bool) -> Any:
    """One value against its annotated type; numeric strings like '2e12' are numbers."""
    union = _union_args(typ)
    if union is not None:
        if value is None and type(None) in union:
            return None
        inner = [t for t in union if t is not type(None)]
        return _coerce(value, inner[0], where, path, strict)
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        return _build(typ, value, where, path, (), strict)
    if origin is tuple:
        args = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_at(where, path)}: expected a list, got {_fmt(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where, f"{path}[{i}]", strict) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{_at(where, path)}: expected a list of {len(args)} values, got {_fmt(list(value))}")
        return tuple(_coerce(v, t, where, f"{path}[{i}]", strict) for i, (v, t) in enumerate(zip(value, args)))
    if origin is dict:
        _, vt = typing.get_args(typ)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{_at(where, path)}: expected a mapping, got {_fmt(value)}")
        return {str(k): _coerce(v, vt, where, f"{path}.{k}", strict) for k, v in value.items()}
    if typ is Any or typ is dict:
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{_at(where, path)}: expected true/false, got {_fmt(value)}")
    if typ in (int, float):
        word = "an integer" if typ is int else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{_at(where, path)}: expected {word}, got {_fmt(value)}")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(f"{_at(where, path)}: expected {word}, got {_fmt(value)}") from None
        if not math.isfinite(f):
            raise ConfigError(f"{_at(where, path)}: expected a finite number, got {_fmt(value)}")
        if typ is int:
            if f != int(f) or isinstance(value, str) and not value.strip().lstrip("+-").replace("e", "").replace(
                    "E", "").replace(".", "").isdigit():
                raise ConfigError(f"{_at(where, path)}: expected an integer, got {_fmt(value)}")
            return int(f)
        return f
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{_at(where, path)}: expected a string, got {_fmt(value)}")
        return value
    return value


def _build(cls: type, data: Any, where: str, path: str, forbid: Iterable[str], strict: bool) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{_at(where, path)}: expected a mapping of {cls.__name__} fields, got {_fmt(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    forbid = set(forbid)
    allowed = [n for n in fields if n not in forbid]
    kw = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if key in forbid:
            raise ConfigError(f"{_at(where, sub)}: set by the grid/planner, not here "
                              f"(allowed: {', '.join(allowed)})")
        if key not in fields:
            if not strict:
                continue
            raise ConfigError(f"{_at(where, path)}: unknown key {_fmt(key)} (allowed: {', '.join(allowed)})")
        f = fields[key]
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kw[key] = _build(typ, value, where, sub, f.metadata.get("forbid", ()), strict)
        else:
            kw[key] = _coerce(value, typ, where, sub, strict)
    try:
        return cls(**kw)
    except ConfigError as exc:
        raise ConfigError(f"{_at(where, path)}: {exc}") from None


def load(cls: type, data: Any, where: str = "", *, path: str = "", forbid: Iterable[str] = (),
         strict: bool = True, validate: bool = True) -> Any:
    """The dataclass `cls` from a mapping (YAML/JSON data), checked field by field and as a whole.

    `strict=False` ignores unknown keys (reading back an older file of our own); `validate=False`
    skips the value rules (types are always checked)."""
    obj = _build(cls, data, where, path, forbid, strict)
    if validate:
        check(obj, where, path)
    return obj


# ---------------------------------------------------------------------------- validation
def _range_error(v: float, md: dict) -> str | None:
    gt, ge, lt, le = md.get("gt"), md.get("ge"), md.get("lt"), md.get("le")
    lo_ok = (gt is None or v > gt) and (ge is None or v >= ge)
    hi_ok = (lt is None or v < lt) and (le is None or v <= le)
    if lo_ok and hi_ok:
        return None
    lo = f"({gt}" if gt is not None else f"[{ge}" if ge is not None else None
    hi = f"{lt})" if lt is not None else f"{le}]" if le is not None else None
    if lo and hi:
        return f"must be in {lo}, {hi}, got {v}"
    if lo:
        return f"must be {'>' if gt is not None else '>='} {gt if gt is not None else ge}, got {v}"
    return f"must be {'<' if lt is not None else '<='} {lt if lt is not None else le}, got {v}"


def _value_problem(v: Any, md: dict, path: str) -> tuple[str, str] | None:
    """(path, message) when `v` breaks its field's choices or range; tuples are checked per element."""
    if isinstance(v, tuple):
        for i, x in enumerate(v):
            bad = _value_problem(x, md, f"{path}[{i}]")
            if bad:
                return bad
        return None
    ch = _resolve(md.get("choices"))
    if ch and v not in ch:
        return path, f"unknown value {_fmt(v)} (allowed: {', '.join(map(str, ch))})"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        err = _range_error(v, md)
        if err:
            return path, err
    return None


def problems(obj: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every (field path, message) of `obj` and its nested configs: field rules first, then the class's
    cross-field `problems()`. A dict field's `choices` are its allowed keys."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        sub = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(v):
            yield from problems(v, sub)
        elif isinstance(v, dict):
            keys = _resolve(f.metadata.get("choices"))
            for k, x in v.items():
                if keys and k not in keys:
                    yield sub, f"unknown key {_fmt(k)} (allowed: {', '.join(map(str, keys))})"
                elif dataclasses.is_dataclass(x):
                    yield from problems(x, f"{sub}.{k}")
                else:
                    bad = _value_problem(x, {**f.metadata, "choices": None}, f"{sub}.{k}")
                    if bad:
                        yield bad
        else:
            bad = _value_problem(v, f.metadata, sub)
            if bad:
                yield bad
    hook = getattr(obj, "problems", None)
    if callable(hook):
        for name, msg in hook():
            yield (f"{path}.{name}" if path and name else path or name), msg


def check(obj: Any, where: str = "", path: str = "") -> None:
    """Raise ConfigError for the first problem of `obj` (see `problems`)."""
    for name, msg in problems(obj, path):
        raise ConfigError(f"{_at(where, name)}: {msg}")


def field_docs(cls: type, prefix: str = "") -> Iterator[tuple[str, Any, dict]]:
    """(dotted name, default, metadata) of every field, nested configs expanded (docs/method.md)."""
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if dataclasses.is_dataclass(default):
            yield from field_docs(type(default), f"{name}.")
        else:
            yield name, default, dict(f.metadata)
