"""Study specs: YAML → frozen dataclasses, refusing bad input before any work is done.

Why so strict: a typo in a sweep spec silently falls back to a default and costs GPU-days. Every
refusal is one line naming the file, the field path, the bad value and what is allowed (the CLI
turns it into exit code 2). The per-stage config classes live with their stages (vtp_core,
dit_eval); this module only maps YAML sections onto them and validates.

A study file:

    name: demo                       # defaults to the file stem
    description: ...
    grid:                            # the cells are the product of these lists
      recipe: [ae, clip_ssl_ae]
      encoder: [tiny]
      data_size: [0]                 # tokenizer training images; 0 = the whole set
      budget_flops: [2.0e12, 4.0e12] # tokenizer pre-training FLOPs per cell
      seed: [0, 1]
    tokenizer: {batch_size: 64, ...} # vtp_core.config.TokenizerConfig fields, fixed for the study
    data:      {dataset: fashion_mnist, image_size: 32}   # tokenizer pre-training data
    eval_data: {...}                 # DiT training set, probes, reference stats (default: data)
    probe / extractor / refstats / latents / dit / sample / fid: their config fields
    estimate:  {throughput_flops: 5.0e9}   # FLOP/s assumed by the dry-run time column
    resources: {default: {...}, pretrain: {...}}   # per-stage scheduler resources (cluster/)
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dit_eval.config import DiTSpec, ExtractorConfig, FIDConfig, LatentsConfig, RefStatsConfig, SampleConfig
from sweeps.errors import SpecError
from vtp_core.config import RECIPES, ZERO_SHOT_RESIZES, DataConfig, ProbeConfig, TokenizerConfig

GRID_AXES = ("recipe", "encoder", "data_size", "budget_flops", "seed")


@dataclass(frozen=True)
class Grid:
    recipe: tuple[str, ...] = ("clip_ssl_ae",)
    encoder: tuple[str, ...] = ("tiny",)
    data_size: tuple[int, ...] = (0,)
    budget_flops: tuple[float, ...] = (1.0e12,)
    seed: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class Estimate:
    """Assumptions behind the dry-run time column (FLOP/s actually achieved per device)."""

    throughput_flops: float = 5.0e9


@dataclass(frozen=True)
class Study:
    name: str
    path: str
    description: str = ""
    grid: Grid = Grid()
    tokenizer: TokenizerConfig = TokenizerConfig()
    data: DataConfig = DataConfig()
    eval_data: DataConfig = DataConfig()
    probe: ProbeConfig = ProbeConfig()
    extractor: ExtractorConfig = ExtractorConfig()
    refstats: RefStatsConfig = RefStatsConfig()
    latents: LatentsConfig = LatentsConfig()
    dit: DiTSpec = DiTSpec()
    sample: SampleConfig = SampleConfig()
    fid: FIDConfig = FIDConfig()
    estimate: Estimate = Estimate()
    resources: dict = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        return math.prod(len(getattr(self.grid, a)) for a in GRID_AXES)


# Sections of the YAML and the dataclass each maps to. Grid/tokenizer fields set per cell are
# not allowed in `tokenizer:` (they come from the grid).
SECTIONS: dict[str, type] = {
    "grid": Grid, "tokenizer": TokenizerConfig, "data": DataConfig, "eval_data": DataConfig, "probe": ProbeConfig,
    "extractor": ExtractorConfig, "refstats": RefStatsConfig, "latents": LatentsConfig,
    "dit": DiTSpec, "sample": SampleConfig, "fid": FIDConfig, "estimate": Estimate,
}
TOP_LEVEL = ("name", "description", "resources", *SECTIONS)
SET_BY_GRID_OR_PLANNER = {"recipe", "encoder", "seed", "steps", "data"}
NESTED_DATA_SECTIONS = {"refstats", "latents", "probe"}  # their `data` comes from the study's `eval_data:`


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check one scalar against its annotated type; numeric strings like '2e12' are floats."""
    origin = typing.get_origin(typ)
    if origin is tuple:
        args = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{where}: expected a list, got {_fmt(value)}")
        inner = args[0]
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise SpecError(f"{where}: expected true/false, got {_fmt(value)}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise SpecError(f"{where}: expected an integer, got {_fmt(value)}")
        try:
            f = float(value)
        except ValueError:
            raise SpecError(f"{where}: expected an integer, got {_fmt(value)}") from None
        if not math.isfinite(f) or f != int(f):
            raise SpecError(f"{where}: expected an integer, got {_fmt(value)}")
        return int(f)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise SpecError(f"{where}: expected a number, got {_fmt(value)}")
        try:
            f = float(value)
        except ValueError:
            raise SpecError(f"{where}: expected a number, got {_fmt(value)}") from None
        if not math.isfinite(f):
            raise SpecError(f"{where}: expected a finite number, got {_fmt(value)}")
        return f
    if typ is str:
        if not isinstance(value, str):
            raise SpecError(f"{where}: expected a string, got {_fmt(value)}")
        return value
    return value


def build(cls: type, data: Any, where: str, forbid: set[str] = frozenset()) -> Any:
    """Validate a mapping against dataclass `cls` (unknown keys and wrong types refused)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping of {cls.__name__} fields, got {_fmt(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in forbid]
    kw = {}
    for key, value in data.items():
        if key in forbid:
            raise SpecError(f"{where}.{key}: set by the grid/planner, not here (allowed: {', '.join(names)})")
        if key not in names:
            raise SpecError(f"{where}: unknown key {_fmt(key)} (allowed: {', '.join(names)})")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kw[key] = build(typ, value, f"{where}.{key}")
        else:
            kw[key] = _coerce(value, typ, f"{where}.{key}")
    return cls(**kw)


def _check_choice(value: Any, allowed: typing.Iterable[Any], where: str) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise SpecError(f"{where}: unknown value {_fmt(value)} (allowed: {', '.join(map(str, allowed))})")


def _check_positive(obj: Any, fields: typing.Iterable[str], where: str, zero_ok: tuple = ()) -> None:
    for name in fields:
        v = getattr(obj, name)
        if v < 0 or (v == 0 and name not in zero_ok):
            raise SpecError(f"{where}.{name}: must be {'>= 0' if name in zero_ok else '> 0'}, got {v}")


def validate(study: Study, where: str) -> None:
    """Semantic checks beyond types: names in registries, non-empty grid, sane ranges."""
    from dit_eval import sizes as dit_sizes
    from vtp_core import registry

    g = study.grid
    for axis in GRID_AXES:
        if len(getattr(g, axis)) == 0:
            raise SpecError(f"{where}: grid.{axis}: empty list (give at least one value)")
        vals = getattr(g, axis)
        if len(set(vals)) != len(vals):
            raise SpecError(f"{where}: grid.{axis}: duplicate values in {list(vals)}")
    for i, r in enumerate(g.recipe):
        _check_choice(r, RECIPES, f"{where}: grid.recipe[{i}]")
    enc_sizes = registry.list_sizes("encoder")
    for i, e in enumerate(g.encoder):
        _check_choice(e, enc_sizes, f"{where}: grid.encoder[{i}]")
    for i, b in enumerate(g.budget_flops):
        if b <= 0:
            raise SpecError(f"{where}: grid.budget_flops[{i}]: must be > 0, got {b}")
    for i, d in enumerate(g.data_size):
        if d < 0:
            raise SpecError(f"{where}: grid.data_size[{i}]: must be >= 0 (0 = whole set), got {d}")
    t = study.tokenizer
    _check_choice(t.decoder, registry.list_sizes("decoder"), f"{where}: tokenizer.decoder")
    _check_choice(t.text, registry.list_sizes("text"), f"{where}: tokenizer.text")
    _check_choice(t.heads_read, ("pre_bottleneck", "bottleneck"), f"{where}: tokenizer.heads_read")
    _check_positive(t, ("patch", "latent_channels", "batch_size", "lr"), f"{where}: tokenizer")
    for frac in ("ssl_fraction", "rec_fraction"):
        v = getattr(t, frac)
        if not 0 < v <= 1:
            raise SpecError(f"{where}: tokenizer.{frac}: must be in (0, 1], got {v}")
    for sec in ("data", "eval_data"):
        d = getattr(study, sec)
        _check_choice(d.dataset, ("fashion_mnist", "imagefolder", "tar"), f"{where}: {sec}.dataset")
        if d.dataset != "fashion_mnist" and not d.path:
            raise SpecError(f"{where}: {sec}.path: required for dataset {d.dataset!r} (a folder or shard pattern you supply)")
        _check_choice(d.storage, ("auto", "memory", "lazy"), f"{where}: {sec}.storage")
        if sec == "eval_data" and d.dataset == "tar" and "{" in d.path:
            raise SpecError(f"{where}: eval_data.path: a shard pattern ({d.path}) has no test split for the "
                            f"probes; give a folder with train/ and val/ (e.g. ImageNet as imagefolder)")
        if d.image_size % t.patch:
            raise SpecError(f"{where}: {sec}.image_size: {d.image_size} is not a multiple of tokenizer.patch={t.patch}")
    _check_choice(study.probe.zero_shot_resize, ZERO_SHOT_RESIZES, f"{where}: probe.zero_shot_resize")
    _check_choice(study.dit.size, dit_sizes.list_sizes(), f"{where}: dit.size")
    _check_positive(study.dit, ("steps", "batch_size", "lr"), f"{where}: dit")
    _check_choice(study.extractor.name, ("fmnist_cnn", "inception"), f"{where}: extractor.name")
    _check_choice(study.sample.sampler, ("euler",), f"{where}: sample.sampler")
    _check_positive(study.sample, ("n_samples", "steps"), f"{where}: sample")
    _check_positive(study.latents, ("n_images",), f"{where}: latents", zero_ok=("n_images",))
    _check_positive(study.estimate, ("throughput_flops",), f"{where}: estimate")


def load_study(path: str | Path) -> Study:
    """Read, validate and return a study. Raises SpecError with a one-line message."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise SpecError(f"{where}: no such study file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{where}:{loc} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: expected a mapping with keys {', '.join(TOP_LEVEL)}")
    for key in raw:
        if key not in TOP_LEVEL:
            raise SpecError(f"{where}: unknown key {_fmt(key)} (allowed: {', '.join(TOP_LEVEL)})")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise SpecError(f"{where}: name: {_fmt(name)} must be letters, digits, '-' or '_'")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise SpecError(f"{where}: description: expected a string, got {_fmt(description)}")
    resources = raw.get("resources") or {}
    if not isinstance(resources, dict):
        raise SpecError(f"{where}: resources: expected a mapping of stage -> settings, got {_fmt(resources)}")
    raw = _resolve_lr_from(raw, path)
    kw: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        forbid = set()
        if section == "tokenizer":
            forbid = SET_BY_GRID_OR_PLANNER
        elif section in NESTED_DATA_SECTIONS:
            forbid = {"data"}
        kw[section] = build(cls, raw.get(section), f"{where}: {section}", forbid)
    data = kw["data"]
    if "eval_data" not in raw:  # the embedded default: one dataset for pre-training and evaluation
        kw["eval_data"] = dataclasses.replace(data, n_train=0)
    kw["tokenizer"] = dataclasses.replace(kw["tokenizer"], data=data)
    kw["refstats"] = dataclasses.replace(kw["refstats"], data=kw["eval_data"])
    kw["latents"] = dataclasses.replace(kw["latents"], data=kw["eval_data"])
    kw["probe"] = dataclasses.replace(kw["probe"], data=kw["eval_data"])
    study = Study(name=name, path=str(path), description=description, resources=resources, **kw)
    validate(study, where)
    return study


def _resolve_lr_from(raw: dict, path: Path) -> dict:
    """`tokenizer: {lr_from: results/tune/lr-clip_ssl_ae-S.yaml}` takes the LR chosen by `make tune`."""
    tok = raw.get("tokenizer")
    if not isinstance(tok, dict) or "lr_from" not in tok:
        return raw
    src = Path(str(tok["lr_from"]))
    if not src.is_absolute() and not src.exists():
        src = path.parent / src
    where = f"{path}: tokenizer.lr_from"
    if "lr" in tok:
        raise SpecError(f"{where}: give either lr or lr_from, not both")
    if not src.is_file():
        raise SpecError(f"{where}: no such file {tok['lr_from']!r} (write it with `make tune SIZE=...`)")
    try:
        lr = yaml.safe_load(src.read_text())["lr"]
    except (yaml.YAMLError, TypeError, KeyError):
        raise SpecError(f"{where}: {src} has no top-level 'lr' (expected the file written by `make tune`)") from None
    tok = {k: v for k, v in tok.items() if k != "lr_from"}
    tok["lr"] = lr
    return {**raw, "tokenizer": tok}


def study_path(scale: str, root: str | Path = "sweeps") -> Path:
    """`make sweep SCALE=params` → sweeps/params.yaml (a path is accepted as is)."""
    p = Path(scale)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    cand = Path(root) / f"{scale}.yaml"
    if not cand.exists():
        known = sorted(x.stem for x in Path(root).glob("*.yaml"))
        raise SpecError(f"SCALE={scale}: no study file {cand} (studies: {', '.join(known)})")
    return cand
