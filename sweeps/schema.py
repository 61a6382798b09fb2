"""Study specs: YAML → frozen dataclasses, refusing bad input before any work is done.

Why so strict: a typo in a sweep spec silently falls back to a default and costs GPU-days. Every
refusal is one line naming the file, the field path, the bad value and what is allowed (the CLI
turns it into exit code 2). The rules live on the config classes themselves (`vtp_core.cfg`); this
module maps the YAML sections onto them, fills the study-wide data into the stage configs, and adds
the checks that need files (weights, reference batches). The planner adds the per-cell checks.

A study file:

    name: demo                       # defaults to the file stem
    description: ...
    grid:                            # the cells are the product of these lists
      recipe: [ae, clip_ssl_ae]
      encoder: [tiny]
      data_size: [0]                 # tokenizer training images; 0 = the whole set
      budget_flops: [2.0e12, 4.0e12] # tokenizer FLOPs per cell, or budget_samples: samples seen per cell
      seed: [0, 1]
    tokenizer: {batch_size: 64, ...} # vtp_core.config.TokenizerConfig fields, fixed for the study
    data:      {dataset: fashion_mnist, image_size: 32}   # tokenizer pre-training data
    eval_data: {...}                 # DiT training set, probes, reference stats (default: data)
    anchors:                         # released tokenizers beside the curves (pretrain skipped; docs/anchors.md)
      - {name: vtp-l, checkpoint: /path/VTP-Large-f16d64/model.safetensors, sha256: <64 hex>, size: L}
    probe / extractor / refstats / latents / dit / sample / fid: their config fields
    estimate:  {device: h100, flops_per_s: {h100: 4.0e14}}   # what the dry-run's times assume
    resources: {default: {...}, pretrain: {...}}             # per-stage scheduler resources
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dit_eval.config import (EXTRACTOR_DIMS, INCEPTION_METRICS, SFID_DIM, DiTSpec, ExtractorConfig, FIDConfig,
                             LatentsConfig, RefStatsConfig, SampleConfig)
from sweeps.errors import SpecError
from vtp_core.cfg import load, problems, spec
from vtp_core.config import RECIPES, AnchorConfig, DataConfig, ProbeConfig, TokenizerConfig

BUDGET_KINDS = ("flops", "samples")
STAGE_KINDS = ("extractor", "refstats", "pretrain", "probe", "latents", "dit", "sample", "fid", "anchor")
TRAINER_STAGES = ("pretrain", "dit")  # every task of a multi-GPU job trains; other stages run on rank 0
SET_BY_GRID_OR_PLANNER = ("recipe", "encoder", "seed", "steps", "data")

# Achieved FLOP/s per device assumed when a study does not say: 40 % of the dense bf16 peak (the MFU a
# tuned ViT/DiT step reaches), and what the tiny demo models reach on a CPU.
DEFAULT_FLOPS_PER_S = {"h100": 4.0e14, "h200": 4.0e14, "a100": 1.25e14, "l40s": 1.45e14, "cpu": 3.0e10}


def _encoders():
    from vtp_core import registry

    return registry.list_sizes("encoder")


@dataclass(frozen=True)
class Grid:
    """The study's axes; cells are their product. Exactly one of budget_flops / budget_samples."""

    recipe: tuple[str, ...] = spec(("ae", "clip_ssl_ae"), choices=RECIPES, source="paper §4.3", doc="recipes")
    encoder: tuple[str, ...] = spec(("L",), choices=_encoders, source="paper §4.1", doc="encoder sizes")
    data_size: tuple[int, ...] = spec((0,), ge=0, source="paper §4.5", doc="pre-training images; 0 = all")
    budget_flops: tuple[float, ...] = spec((), gt=0, source="paper §4.3 (tokenizer FLOPs)",
                                           doc="tokenizer FLOPs per cell; steps = floor(budget / FLOPs per step)")
    budget_samples: tuple[float, ...] = spec((), gt=0, source="paper §4.5 (1.1B samples seen)",
                                             doc="samples seen per cell; steps = floor(budget / images per step)")
    seed: tuple[int, ...] = spec((0,), source="ours", doc="seeds")

    AXES = ("recipe", "encoder", "data_size", "budget", "seed")

    @property
    def budget_kind(self) -> str:
        return "samples" if self.budget_samples else "flops"

    @property
    def budget(self) -> tuple[float, ...]:
        return self.budget_samples or self.budget_flops

    def problems(self):
        if self.budget_flops and self.budget_samples:
            yield "budget_samples", "give budget_flops or budget_samples, not both"
        elif not (self.budget_flops or self.budget_samples):
            yield "budget_flops", ("no budget: give budget_flops (tokenizer FLOPs per cell) or budget_samples "
                                   "(samples seen per cell)")
        for axis in ("recipe", "encoder", "data_size", "seed"):
            vals = getattr(self, axis)
            if not vals:
                yield axis, "empty list (give at least one value)"
        for axis in ("recipe", "encoder", "data_size", "budget_flops", "budget_samples", "seed"):
            vals = getattr(self, axis)
            if len(set(vals)) != len(vals):
                yield axis, f"duplicate values in {list(vals)}"


@dataclass(frozen=True)
class Estimate:
    """What the dry run's times assume: the device kind the stages run on, the FLOP/s one such device
    achieves on the training and inference steps, and the images per second its data loader decodes."""

    device: str = spec("h100", source="yours", doc="device kind (a key of flops_per_s)")
    flops_per_s: dict[str, float] = spec(default_factory=lambda: dict(DEFAULT_FLOPS_PER_S), gt=0, source="ours",
                                         doc="achieved FLOP/s per device, by device kind")
    decode_images_per_s: float = spec(2000.0, gt=0, source="ours", doc="images one device's loader decodes per second")

    @property
    def throughput(self) -> float:
        return self.flops_per_s[self.device]

    def problems(self):
        if self.device not in self.flops_per_s:
            yield "device", (f"{self.device!r} has no throughput in estimate.flops_per_s "
                             f"(kinds: {', '.join(self.flops_per_s)})")


@dataclass(frozen=True)
class Resources:
    """Scheduler resources of one stage kind (EXECUTOR=slurm / ray); unset fields inherit `default`."""

    partition: str | None = spec(None, doc="SLURM partition")
    gpus_per_node: int | None = spec(None, ge=0, doc="GPUs per node")
    cpus_per_task: int | None = spec(None, ge=1, doc="CPUs per task")
    mem_gb: float | None = spec(None, gt=0, doc="memory per node (GB)")
    gpu_mem_gb: float | None = spec(None, gt=0, source="yours (80 for an H100)",
                                    doc="memory of one GPU, for the memory plan")
    timeout_min: int | None = spec(None, ge=1, doc="time limit (minutes)")
    nodes: int | None = spec(None, ge=1, doc="nodes")
    tasks_per_node: int | None = spec(None, ge=1, doc="tasks per node (one per GPU for the trainers)")
    array_parallelism: int | None = spec(None, ge=1, doc="concurrent array tasks")
    additional_parameters: dict[str, Any] = spec(default_factory=dict, doc="extra sbatch parameters")

    def set_fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None and f.name != "additional_parameters"}


RESOURCE_KEYS = ("default", *STAGE_KINDS)
DEFAULT_RESOURCES = Resources(cpus_per_task=1, timeout_min=60, nodes=1, tasks_per_node=1, array_parallelism=256)


def resources_for(resources: dict[str, Resources], kind: str) -> dict[str, Any]:
    """DEFAULT_RESOURCES <- resources['default'] <- resources[kind] (set fields only); additional_parameters merged."""
    layers = [DEFAULT_RESOURCES, resources.get("default", Resources()), resources.get(kind, Resources())]
    out: dict[str, Any] = {}
    for r in layers:
        out.update(r.set_fields())
    out["additional_parameters"] = {k: v for r in layers for k, v in r.additional_parameters.items()}
    return out


def devices_for(resources: dict[str, Resources], kind: str) -> tuple[int, int]:
    """(devices allocated to a stage's job, devices that work on it). Trainers run one task per GPU, so all
    of their tasks work; every other stage runs on rank 0 of its job. Without GPUs (gpus_per_node unset or
    0) a task is one device: the CPU demo counts device-hours the same way."""
    r = resources_for(resources, kind)
    nodes, tasks, gpus = r.get("nodes", 1), r.get("tasks_per_node", 1), r.get("gpus_per_node") or 0
    allocated = nodes * (gpus if gpus else tasks)
    working = nodes * tasks if kind in TRAINER_STAGES else 1
    return max(1, allocated), max(1, min(working, max(1, allocated)))


@dataclass(frozen=True)
class Study:
    name: str = spec("", doc="study name (default: the file stem)")
    description: str = spec("", doc="one line")
    grid: Grid = spec(Grid())
    tokenizer: TokenizerConfig = spec(TokenizerConfig(), forbid=SET_BY_GRID_OR_PLANNER)
    data: DataConfig = spec(DataConfig())
    eval_data: DataConfig | None = spec(None, doc="evaluation data (default: data)")
    probe: ProbeConfig = spec(ProbeConfig(), forbid=("data",))
    extractor: ExtractorConfig = spec(ExtractorConfig())
    refstats: RefStatsConfig = spec(RefStatsConfig(), forbid=("data",))
    latents: LatentsConfig = spec(LatentsConfig(), forbid=("data",))
    dit: DiTSpec = spec(DiTSpec())
    sample: SampleConfig = spec(SampleConfig())
    fid: FIDConfig = spec(FIDConfig())
    anchors: tuple[AnchorConfig, ...] = spec((), doc="released tokenizers run through the same downstream "
                                                      "stages, plotted as labelled points (docs/anchors.md)")
    estimate: Estimate = spec(Estimate())
    resources: dict[str, Resources] = spec(default_factory=dict, choices=RESOURCE_KEYS)
    path: str = spec("", doc="the study file (set by load_study)")

    @property
    def n_cells(self) -> int:
        return math.prod(len(getattr(self.grid, a)) for a in Grid.AXES)

    def problems(self):
        """Rules across sections (each section's own rules run first, in `vtp_core.cfg.check`)."""
        if not self.name.replace("-", "").replace("_", "").isalnum():
            yield "name", f"{self.name!r} must be letters, digits, '-' or '_'"
        for sec in ("data", "eval_data"):
            d = getattr(self, sec)
            if d.image_size % self.tokenizer.patch:
                yield f"{sec}.image_size", f"{d.image_size} is not a multiple of tokenizer.patch={self.tokenizer.patch}"
        e = self.eval_data
        if e.dataset == "tar" and "{" in e.path:
            yield "eval_data.path", (f"a shard pattern ({e.path}) has no test split for the probes; give a folder "
                                     f"with train/ and val/ (e.g. ImageNet as imagefolder)")
        yield from self._metric_problems()
        if self.sample.cfg_scale != 1.0 and not self.dit.class_dropout > 0:
            yield "sample.cfg_scale", (f"{self.sample.cfg_scale} needs the null label, which a DiT learns only with "
                                       f"class dropout; dit.class_dropout is {self.dit.class_dropout} (use cfg_scale 1 "
                                       f"or class_dropout > 0)")
        if self.refstats.npz and self.extractor.name != "inception":
            yield "refstats.npz", (f"an ADM reference batch holds Inception pool3 statistics; extractor.name is "
                                   f"{self.extractor.name!r} (allowed with npz: inception)")
        if self.extractor.name == "fmnist_cnn" and self.eval_data.dataset != "fashion_mnist":
            yield "extractor.name", ("fmnist_cnn is trained on Fashion-MNIST; for other data use inception "
                                     "(or random_cnn in a rehearsal)")
        yield from self._anchor_problems()
        yield from self._file_problems()

    def _anchor_problems(self):
        """Each anchor's own rules, unique names, the image size its patch needs, then its file: present, the
        sha256 it is pinned to, and the released layout at its size (names and shapes read, not the weights)."""
        names = [a.name for a in self.anchors]
        for i, a in enumerate(self.anchors):
            for name, msg in problems(a):
                yield f"anchors[{i}].{name}", msg
                return
            if a.name in names[:i]:
                yield f"anchors[{i}].name", f"{a.name!r} is already the name of anchors[{names.index(a.name)}]"
                return
        for i, a in enumerate(self.anchors):
            at = f"anchors[{i}]"
            p = Path(a.checkpoint)
            if not p.is_file():
                yield f"{at}.checkpoint", f"{a.checkpoint}: no such file"
                return
            if _sha256(str(p)) != a.sha256:
                yield f"{at}.sha256", f"{a.checkpoint} has sha256 {_sha256(str(p))}, not {a.sha256!r}"
                return
            from vtp_core.released import check_layout, infer_shape
            from vtp_core.runtime import StageError

            try:
                check_layout(p, a)
                patch = infer_shape(p)[0]
            except StageError as exc:
                yield f"{at}.checkpoint", str(exc)
                return
            if self.eval_data.image_size % patch:
                yield "eval_data.image_size", (f"{self.eval_data.image_size} is not a multiple of the patch {patch} "
                                               f"of anchor {a.name}")
    def _metric_problems(self):
        """What each metric of fid.metrics needs from the extractor, the reference and the sample count."""
        m, ext = self.fid.metrics, self.extractor.name
        for name in INCEPTION_METRICS:
            if name in m and ext != "inception":
                layer = "mixed_6/conv features" if name == "sfid" else "logits"
                yield "fid.metrics", (f"{name!r} reads the Inception's {layer}; extractor.name is {ext!r} (sfid and is "
                                      f"need extractor.name: inception; fid, precision, recall work with any)")
        if "is" in m and ext == "inception" and not self.extractor.path.endswith(".pth"):
            yield "fid.metrics", ("'is' needs the Inception's 1008-way softmax layer, which the bundled TorchScript "
                                  "lacks; set extractor.path to pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
        if self.refstats.npz and {"precision", "recall"} & set(m):
            yield "fid.metrics", ("precision/recall need reference features; refstats.npz gives statistics only "
                                  "(drop refstats.npz to compute the reference from eval_data)")
        n = self.sample.n_samples
        dims = {"fid": (EXTRACTOR_DIMS[ext], f"extractor {ext}"), "sfid": (SFID_DIM, "sFID (mixed_6/conv[:7])"),
                "fd_dinov2": (EXTRACTOR_DIMS["dinov2"], "DINOv2 ViT-L/14")}
        low = [(name, *dims[name]) for name in m if name in dims and n < dims[name][0]]
        if low and not self.fid.allow_low_n:
            name, dim, what = max(low, key=lambda t: t[1])
            yield "sample.n_samples", (f"{n} samples are fewer than the {dim} features of {what} ({name}): the "
                                       f"covariance is rank-deficient; sample more or set fid.allow_low_n: true "
                                       f"(the Fréchet distance is then labelled low-N)")

    def _file_problems(self):
        """Files a study names must exist and match their checksums (hashed once per process)."""
        t = self.tokenizer
        if t.rec_loss == "l1_lpips" and t.lpips_weights:
            p = Path(t.lpips_weights)
            if not p.is_file():
                yield "tokenizer.lpips_weights", f"{t.lpips_weights}: no such file"
            elif _sha256(str(p)) != t.lpips_sha256:
                yield "tokenizer.lpips_sha256", f"{t.lpips_weights} has sha256 {_sha256(str(p))}, not {t.lpips_sha256!r}"
        r = self.refstats
        if r.npz and len(r.sha256) == 64:
            p = Path(r.npz)
            if not p.is_file():
                yield "refstats.npz", f"{r.npz}: no such file"
            elif _sha256(str(p)) != r.sha256:
                yield "refstats.sha256", f"{r.npz} has sha256 {_sha256(str(p))}, not {r.sha256!r}"
        if self.extractor.path and not Path(self.extractor.path).is_file():
            yield "extractor.path", f"{self.extractor.path}: no such file"
        d = self.fid.dinov2
        if "fd_dinov2" in self.fid.metrics and d.path and len(d.sha256) == 64:
            if not Path(d.path).is_file():
                yield "fid.dinov2.path", f"{d.path}: no such file (the DINOv2 weights are never downloaded)"
            elif _sha256(d.path) != d.sha256.lower():
                yield "fid.dinov2.sha256", f"{d.path} has sha256 {_sha256(d.path)}, not {d.sha256!r}"
        if "sfid" in self.fid.metrics and r.npz and Path(r.npz).is_file():
            import numpy as np

            with np.load(r.npz) as f:  # the member list only: no array is read
                keys = set(f.files)
            if not {"mu_s", "sigma_s"} <= keys:
                yield "fid.metrics", f"'sfid' needs mu_s/sigma_s in refstats.npz {r.npz}, which has {sorted(keys)}"


_SHA_CACHE: dict[tuple, str] = {}


def _sha256(path: str) -> str:
    st = Path(path).stat()
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        from vtp_core.runtime import file_hash

        _SHA_CACHE[key] = file_hash(path)
    return _SHA_CACHE[key]


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise SpecError(f"line {key_node.start_mark.line + 1}: a key must be a plain name, not a list or mapping")
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise SpecError(f"line {key_node.start_mark.line + 1}: key {key!r} given twice "
                            f"(first on line {seen[key] + 1}); keep one")
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(path: Path) -> Any:
    """Parse a study file: UTF-8 text, valid YAML, no duplicate keys (one-line SpecError otherwise)."""
    where = str(path)
    raw_bytes = path.read_bytes()
    try:
        text = raw_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{where}: not UTF-8 text (byte 0x{raw_bytes[exc.start]:02x} at offset {exc.start}); "
                        f"save the file as UTF-8") from None
    if "\x00" in text:
        raise SpecError(f"{where}: contains NUL bytes; a study is a UTF-8 YAML text file")
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise SpecError(f"{where}:{loc} not valid YAML ({problem})") from None


def load_study(path: str | Path) -> Study:
    """Read, validate and return a study. Raises SpecError with a one-line message."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise SpecError(f"{where}: no such study file")
    return study_from_doc(read_yaml(path), path)


def study_from_doc(raw: Any, path: str | Path, validate: bool = True) -> Study:
    """A study from its parsed YAML (`path` names it in errors and gives the default name). `validate=False`
    checks types only (the rehearsal reads a shipped study before filling in the files a user supplies)."""
    path = Path(path)
    where = str(path)
    if not isinstance(raw, dict):
        names = [f.name for f in dataclasses.fields(Study) if f.name != "path"]
        raise SpecError(f"{where}: expected a mapping with keys {', '.join(names)}")
    raw = _resolve_lr_from(dict(raw), path)
    raw.setdefault("name", path.stem)
    study = load(Study, raw, where, forbid=("path",), validate=False)
    study = dataclasses.replace(_fill_in(study, "eval_data" in raw, where), path=where)
    if validate:
        for name, msg in problems(study):
            raise SpecError(f"{where}: {_user_path(name)}: {msg}")
    return study


# the study's data sections are copied into the stage configs; an error names the section the user wrote
_COPIES = (("tokenizer.data", "data"), ("probe.data", "eval_data"), ("refstats.data", "eval_data"),
           ("latents.data", "eval_data"))


def _user_path(name: str) -> str:
    for copy, section in _COPIES:
        if name == copy or name.startswith(copy + "."):
            return section + name[len(copy):]
    return name


def _fill_in(s: Study, has_eval: bool, where: str) -> Study:
    """One dataset for pre-training and evaluation unless `eval_data:` is given; the study's data in every
    stage config; the tokenizer's recipe/encoder set to the grid's (its rules depend on them)."""
    e = s.eval_data if has_eval else dataclasses.replace(s.data, n_train=0)
    if e is None:
        raise SpecError(f"{where}: eval_data: expected a mapping of DataConfig fields, got None")
    g = s.grid
    recipe = next((r for r in g.recipe if r in RECIPES and RECIPES[r][1]), g.recipe[0] if g.recipe else "ae")
    tok = dataclasses.replace(s.tokenizer, data=s.data, recipe=recipe if recipe in RECIPES else "ae",
                              encoder=g.encoder[0] if g.encoder else s.tokenizer.encoder)
    return dataclasses.replace(s, eval_data=e, tokenizer=tok, refstats=dataclasses.replace(s.refstats, data=e),
                               latents=dataclasses.replace(s.latents, data=e), probe=dataclasses.replace(s.probe, data=e))


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
    except (yaml.YAMLError, TypeError, KeyError, UnicodeDecodeError):
        raise SpecError(f"{where}: {src} has no top-level 'lr' (expected the file written by `make tune`)") from None
    try:
        ok = float(lr) > 0 and math.isfinite(float(lr)) and not isinstance(lr, bool)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise SpecError(f"{where}: {src} has lr {lr!r}; expected a positive number")
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
