"""The planner: a study → cells → a deduplicated chain of content-addressed stages, with costs.

Why a separate, pure step: the same plan drives every executor (local, SLURM, Ray), the dry-run
table, `make status` and result collection, so all of them agree on which stage ids a cell needs.

What it decides, and refuses before any work (SpecError, one line):
- data identity: the study's data and eval data are read (their cached indexes) and their checksum
  becomes part of every stage config, so other data never reuses a finished stage;
- steps: floor(budget / FLOPs per step) for `budget_flops`, floor(budget / images per step) for
  `budget_samples`; a budget below one step, or a schedule that would not reach its peak LR, is refused;
- cost: every stage's time is its own work (its FLOPs, measured on its modules, and the images it
  decodes) over the study's declared throughput per device (`estimate:`) times the devices that work
  on it (`resources:`); device-hours are that time times the devices its job holds;
- memory: when `resources.<trainer>.gpu_mem_gb` is set (pretrain, dit), the per-GPU peak of a training step
  (`vtp_core.memory.predict` / `dit_eval.memory.predict` at the per-GPU batch: global batch / the GPUs that
  train) and the cheapest strategy that fits it (none, activation checkpointing, then checkpointing with the
  fewest micro-batches), recorded on the stage (`mem_gb`, `strategy`, `mem`); a cell that fits with none is
  refused with its numbers. Without gpu_mem_gb (the CPU demo) nothing is predicted or refused.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from dit_eval.config import EXTRACTOR_DIMS
from sweeps import costs
from sweeps.errors import SpecError
from sweeps.ids import fmt_num, stage_id
from sweeps.schema import STAGE_KINDS, Grid, Study, devices_for, resources_for
from vtp_core.batches import images_per_step, objective_batches
from vtp_core.cfg import ConfigError, check
from vtp_core.config import DataConfig, warmup_steps
from vtp_core.runtime import StageError

CELL_STAGES = ("pretrain", "probe", "latents", "dit", "sample", "fid")  # one chain per cell (an anchor cell's
# tokenizer slot "pretrain" holds its `anchor` stage: the released weights converted, nothing trained)
SHARED_STAGES = STAGE_KINDS[:2]  # extractor, refstats: one per study


@dataclass(frozen=True)
class Stage:
    kind: str
    id: str
    cfg: Any
    upstream: tuple[tuple[str, str], ...] = ()  # (kind, stage id)
    flops: float = 0.0  # FLOPs of the stage's work (training stages: the exact convention)
    images: int = 0  # images it decodes from files
    seconds: float = 0.0  # estimated wall time: work / (throughput × working devices)
    devices: int = 1  # devices its job holds (GPUs; tasks on a CPU)
    # memory plan (trainer stages whose resources give gpu_mem_gb; else 0 / ""): never part of the stage id
    mem_gb: float = 0.0  # predicted per-GPU peak (GB = 2^30 bytes) with `strategy`
    strategy: str = ""  # vtp_core.memory strategy: none | checkpoint | checkpoint+microbatch:k
    mem: tuple[tuple[str, float], ...] = ()  # that prediction by component (GB), 'total' last

    @property
    def upstream_ids(self) -> tuple[str, ...]:
        return tuple(i for _, i in self.upstream)

    @property
    def device_hours(self) -> float:
        return self.seconds * self.devices / 3600


@dataclass(frozen=True)
class Cell:
    id: str
    recipe: str
    encoder: str
    data_size: int
    budget_kind: str  # "flops" | "samples"
    budget: float
    seed: int
    steps: int
    encoder_params: int
    tokenizer_flops: float
    dit_flops: float
    samples_seen: int  # steps × images drawn per step (what the recipe trains on)
    samples: dict[str, int]  # per objective: clip, ssl, rec (0 when off)
    stages: dict[str, str]  # kind -> stage id ("pretrain": an anchor cell's `anchor` stage)
    anchor: str = ""  # a released tokenizer's name (`anchors:` of the study); "" for a trained cell

    @property
    def budget_flops(self) -> float:
        """The FLOPs budget asked for, or the FLOPs a samples budget comes to."""
        return self.budget if self.budget_kind == "flops" else self.tokenizer_flops


@dataclass
class Plan:
    study: Study
    cells: list[Cell] = field(default_factory=list)
    stages: dict[str, Stage] = field(default_factory=dict)  # insertion order is a topological order

    def add(self, stage: Stage) -> str:
        self.stages.setdefault(stage.id, stage)
        return stage.id

    def cell_stages(self, cell: Cell) -> list[Stage]:
        return [self.stages[cell.stages[k]] for k in (*SHARED_STAGES, *CELL_STAGES)]

    def cell_device_hours(self, cell: Cell) -> float:
        """Device-hours of a cell's own stages (shared stages are counted once, in `device_hours`)."""
        return sum(self.stages[cell.stages[k]].device_hours for k in CELL_STAGES)

    @property
    def device_hours(self) -> float:
        return sum(st.device_hours for st in self.stages.values())


def _estimate(study: Study, kind: str, flops: float, images: int) -> tuple[float, int]:
    """(seconds, devices held) of a stage: compute and decoding overlap, so the slower of the two."""
    allocated, working = devices_for(study.resources, kind)
    est = study.estimate
    seconds = max(flops / (est.throughput * working), images / (est.decode_images_per_s * working))
    return seconds, allocated


def _stage(study: Study, kind: str, tag: str, cfg: Any, upstream: tuple = (), flops: float = 0.0,
           images: int = 0) -> Stage:
    seconds, devices = _estimate(study, kind, flops, images)
    return Stage(kind, stage_id(kind, tag, cfg, [i for _, i in upstream]), cfg, upstream, flops, int(images),
                 seconds, devices)


def memory_plan(study: Study, kind: str, cell_name: str, strategies: list[str], predict) -> dict:
    """{'mem_gb', 'strategy', 'mem'} of a cell's trainer stage `kind` when `resources.<kind>.gpu_mem_gb` is set
    (else {}): the first of `strategies` (cheapest first) whose `predict(strategy)` total fits. A cell that fits
    with none is refused (SpecError) naming the cell, its predicted GB per component with the strategy that
    needs the least, and the GPU's memory."""
    from vtp_core import memory

    gpu = resources_for(study.resources, kind).get("gpu_mem_gb")
    if not gpu:
        return {}
    chosen = memory.choose_from(strategies, predict, gpu)
    if chosen is None:
        best, parts = min(((st, predict(st)) for st in strategies), key=lambda sp: sp[1]["total"])
        world = devices_for(study.resources, kind)[1]
        raise SpecError(
            f"{study.path}: resources.{kind}.gpu_mem_gb: cell {cell_name} does not fit {fmt_num(gpu)} GB per GPU in "
            f"{kind} even with {best} over {world} GPU(s): {memory.describe(parts)} per GPU (give GPUs with more "
            f"memory, more GPUs, or a smaller batch_size)")
    parts = predict(chosen)
    return {"mem_gb": parts["total"], "strategy": chosen, "mem": tuple(parts.items())}


def pretrain_memory(study: Study, tok, cell_name: str) -> dict:
    """`memory_plan` of a cell's pretrain stage (`vtp_core.memory`, the per-GPU batch = batch / GPUs training)."""
    if not resources_for(study.resources, "pretrain").get("gpu_mem_gb"):
        return {}
    from vtp_core import memory

    world = devices_for(study.resources, "pretrain")[1]
    model = costs.tokenizer_memory(tok)
    # a strategy the study sets itself (tokenizer.checkpoint_blocks / micro_batches) is checked, not replaced
    own = memory.strategy_name(tok.checkpoint_blocks, tok.micro_batches)
    return memory_plan(study, "pretrain", cell_name, [own] if own != "none" else memory.strategies(tok, world),
                       lambda st: memory.predict(tok, world, st, model))


def with_strategy(tok, strategy: str) -> tuple[Any, float]:
    """The pretrain config that runs `strategy` (`checkpoint_blocks`, `micro_batches`: what the trainer reads)
    and the factor its recomputation puts on the stage's time: activation checkpointing runs every block's
    forward again in backward (forward + backward ~ 3 forwards, so x4/3); micro-batches with gradient caching
    run the towers that feed CLIP and KoLeo forward once more (at most another x4/3)."""
    from vtp_core import memory

    if not strategy:
        return tok, 1.0
    ckpt, k = memory.parse_strategy(strategy)
    return dataclasses.replace(tok, checkpoint_blocks=ckpt, micro_batches=k), 1 + ckpt / 3 + (k > 1) / 3


def dit_memory(study: Study, latent_shape: tuple[int, int, int], cell_name: str) -> dict:
    """`memory_plan` of a cell's dit stage (`dit_eval.memory`)."""
    if not resources_for(study.resources, "dit").get("gpu_mem_gb"):
        return {}
    from dit_eval import memory

    world = devices_for(study.resources, "dit")[1]
    model = costs.dit_memory(study.dit, tuple(latent_shape))
    return memory_plan(study, "dit", cell_name, memory.strategies(study.dit, world),
                       lambda st: memory.predict(study.dit, world, st, model))


def pin_data(d: DataConfig, where: str) -> DataConfig:
    """`d` with its checksum: read from the data (indexes are built once and cached); a pinned value must
    match. Missing or unreadable data is refused here, before any stage runs."""
    try:
        from vtp_core.data.datasets import dataset_checksum

        now = dataset_checksum(d)
    except StageError as exc:
        raise SpecError(f"{where}.path: {str(exc).removeprefix('DataConfig.path: ')}") from None
    if d.checksum and d.checksum != now:
        raise SpecError(f"{where}.checksum: the data at {d.path or d.dataset} has manifest sha256 {now}, the study "
                        f"pins {d.checksum!r}")
    return dataclasses.replace(d, checksum=now)


def _split_size(d: DataConfig, split: str, where: str) -> int:
    try:
        from vtp_core.data.datasets import split_size

        return split_size(d, split)
    except StageError as exc:
        raise SpecError(f"{where}.path: {str(exc).removeprefix('DataConfig.path: ')}") from None


def _check_counts(s: Study) -> None:
    """Counts a stage would take from data that has fewer: refused now, not after the stages before it ran."""
    where = s.path
    train = _split_size(s.data, "train", f"{where}: data")
    ev_train = _split_size(s.eval_data, "train", f"{where}: eval_data")
    ev_test = _split_size(s.eval_data, "test", f"{where}: eval_data")
    asks = [("grid.data_size", max(s.grid.data_size), train, "data's train split"),
            ("probe.n_train", s.probe.n_train, ev_train, "eval_data's train split"),
            ("probe.n_test", s.probe.n_test, ev_test, "eval_data's test split"),
            ("latents.n_images", s.latents.n_images, ev_train, "eval_data's train split")]
    if not s.refstats.npz or "fd_dinov2" in s.fid.metrics:  # FD-DINOv2's reference is always computed
        n_ref = ev_train if s.refstats.split == "train" else ev_test
        asks.append(("refstats.n_images", s.refstats.n_images, n_ref, f"eval_data's {s.refstats.split} split"))
    for field_, asked, have, what in asks:
        if asked > have:
            raise SpecError(f"{where}: {field_}: {asked} is more than the {have} images of the {what}")
    try:
        from vtp_core.data import class_names

        n_cls = len(class_names(s.eval_data))
    except StageError as exc:
        raise SpecError(f"{where}: eval_data.path: {str(exc).removeprefix('DataConfig.path: ')}") from None
    if n_cls > s.dit.num_classes:
        raise SpecError(f"{where}: dit.num_classes: {s.dit.num_classes} is fewer than the {n_cls} classes of eval_data")


def plan(study: Study) -> Plan:
    s = _pinned(study)
    _check_counts(s)
    p = Plan(s)
    where = s.path
    ext_fwd = costs.extractor_forward_flops(s.extractor.name)
    ext_flops = 3 * ext_fwd * 64 * s.extractor.train_steps if s.extractor.name == "fmnist_cnn" else 0.0
    ext = _stage(s, "extractor", s.extractor.name, s.extractor, flops=ext_flops)
    p.add(ext)
    if s.refstats.npz:
        n_ref = 0
    else:
        n_ref = s.refstats.n_images or _split_size(s.refstats.data, s.refstats.split, f"{where}: eval_data")
    ref = _stage(s, "refstats", f"{s.refstats.data.dataset}-{s.refstats.split}", s.refstats, (("extractor", ext.id),),
                 flops=n_ref * ext_fwd, images=n_ref)
    p.add(ref)
    dino_up, dino_fwd = _dinov2_stages(s, p, n_ref)
    # the fid stage: one pass of the extractor for all its metrics, one DINOv2 pass for fd_dinov2, and the k-NN
    # distances of precision/recall
    fid_per_sample = ext_fwd + dino_fwd
    n_pr = min(s.refstats.pr_n_images, n_ref)
    pr_flops = (costs.precision_recall_flops(s.sample.n_samples, n_pr, EXTRACTOR_DIMS[s.extractor.name])
                if {"precision", "recall"} & set(s.fid.metrics) else 0.0)
    g = s.grid
    n_lat = s.latents.n_images or _split_size(s.latents.data, "train", f"{where}: eval_data")
    per_arch = {}  # (recipe, encoder) -> costs that ignore seed, data size and steps (`costs._strip`), looked up once
    ctx = {"ext": ext, "ref": ref, "ext_fwd": ext_fwd, "n_lat": n_lat, "per_arch": per_arch, "dino_up": dino_up,
           "fid_flops": s.sample.n_samples * fid_per_sample + pr_flops}
    for recipe, encoder, data_size, budget, seed in itertools.product(g.recipe, g.encoder, g.data_size, g.budget,
                                                                      g.seed):
        base = dataclasses.replace(s.tokenizer, recipe=recipe, encoder=encoder, seed=seed,
                                   data=dataclasses.replace(s.tokenizer.data, n_train=data_size))
        if (recipe, encoder) not in per_arch:
            try:
                check(dataclasses.replace(base, steps=1), where, "tokenizer")
            except ConfigError as exc:
                raise SpecError(f"{exc} (recipe {recipe}, encoder {encoder})") from None
            per_arch[recipe, encoder] = (costs.tokenizer_step_flops(base), costs.encoder_params(base),
                                         costs.encoder_forward_flops(base), costs.decoder_forward_flops(base),
                                         costs.latent_shape(base))
        step_flops, enc_params, enc_flops, dec_flops, shape = per_arch[recipe, encoder]
        draw = images_per_step(base)
        tag = f"f{fmt_num(budget)}" if g.budget_kind == "flops" else f"n{fmt_num(budget)}"
        cell_name = f"{recipe}-{encoder}-d{fmt_num(data_size)}-{tag}-s{seed}"
        per_step = step_flops if g.budget_kind == "flops" else draw
        steps = math.floor(budget / per_step)
        if steps < 1:
            unit = f"{fmt_num(step_flops)} FLOPs" if g.budget_kind == "flops" else f"{draw} images"
            raise SpecError(
                f"{where}: grid.budget_{g.budget_kind}: {fmt_num(budget)} is less than one training step ({unit}) "
                f"for cell {cell_name} (raise the budget or shrink tokenizer.batch_size)")
        tok = dataclasses.replace(base, steps=steps)
        warm = warmup_steps(tok)
        if warm > steps:
            raise SpecError(f"{where}: tokenizer.warmup_fraction: cell {cell_name} has {steps} steps and {warm} of "
                            f"warm-up; it would never reach its peak LR")
        tok_flops = steps * step_flops
        if (recipe, encoder, "memory") not in per_arch:  # depends on the architecture and batch, not the budget
            per_arch[recipe, encoder, "memory"] = pretrain_memory(s, base, cell_name)
        mem = per_arch[recipe, encoder, "memory"]
        tok, slower = with_strategy(tok, mem.get("strategy", ""))  # micro_batches is versioned: into the id
        pre = _stage(s, "pretrain", f"{recipe}-{encoder}-d{fmt_num(data_size)}-n{steps}-s{seed}", tok,
                     flops=tok_flops, images=steps * draw)
        pre = dataclasses.replace(pre, seconds=pre.seconds * slower, **mem)
        p.add(pre)
        short = pre.id.split("-", 1)[1].rsplit("-", 1)[0]
        down = _downstream(p, pre.id, short, enc_flops, dec_flops, shape, cell_name, ctx)
        p.cells.append(Cell(
            id=cell_name, recipe=recipe, encoder=encoder, data_size=data_size, budget_kind=g.budget_kind,
            budget=float(budget), seed=seed, steps=steps, encoder_params=enc_params, tokenizer_flops=tok_flops,
            dit_flops=down.pop("dit_flops"), samples_seen=steps * draw,
            samples={k: steps * b for k, b in objective_batches(tok).items()},
            stages={"extractor": ext.id, "refstats": ref.id, "pretrain": pre.id, **down}))
    for a in s.anchors:
        _anchor_cell(p, a, ctx)
    return p


def _downstream(p: Plan, pre_id: str, short: str, enc_flops: float, dec_flops: float, shape: tuple,
                cell_name: str, ctx: dict) -> dict:
    """The stages after a tokenizer (`pre_id`: a pretrain or an anchor stage, the `pretrain` input of what
    follows): probe, latents, dit, sample, fid. Returns their ids by kind and the DiT's FLOPs ('dit_flops')."""
    s, ext, ref, ext_fwd, per_arch = p.study, ctx["ext"], ctx["ref"], ctx["ext_fwd"], ctx["per_arch"]
    pr = s.probe
    probe = _stage(s, "probe", short, pr, (("pretrain", pre_id), ("extractor", ext.id), ("refstats", ref.id)),
                   flops=enc_flops * (pr.n_train + 2 * pr.n_test) + (dec_flops + 2 * ext_fwd) * pr.n_test,
                   images=pr.n_train + 2 * pr.n_test)
    p.add(probe)
    n_lat = ctx["n_lat"]
    n_enc = n_lat * (2 if s.latents.flip else 1)
    lat = _stage(s, "latents", short, s.latents, (("pretrain", pre_id),), flops=enc_flops * n_enc, images=n_lat)
    p.add(lat)
    dit_flops = costs.dit_step_flops(s.dit, shape) * s.dit.steps
    if ("dit-memory", shape) not in per_arch:
        per_arch["dit-memory", shape] = dit_memory(s, shape, cell_name)
    dit = dataclasses.replace(_stage(s, "dit", f"{s.dit.size}-n{s.dit.steps}", s.dit, (("latents", lat.id),),
                                     flops=dit_flops), **per_arch["dit-memory", shape])
    p.add(dit)
    n = s.sample.n_samples
    samp_flops = n * (costs.sample_model_passes(s.sample) * costs.dit_forward_flops(s.dit, shape) + dec_flops)
    solver = f"euler{s.sample.steps}" if s.sample.sampler == "euler" else s.sample.sampler
    samp = _stage(s, "sample", f"n{n}-{solver}", s.sample,
                  (("dit", dit.id), ("latents", lat.id), ("pretrain", pre_id)), flops=samp_flops)
    p.add(samp)
    fid = _stage(s, "fid", f"n{n}-{s.extractor.name}", s.fid, (("sample", samp.id), ("extractor", ext.id),
                                                               ("refstats", ref.id), *ctx["dino_up"]),
                 flops=ctx["fid_flops"])
    p.add(fid)
    return {"probe": probe.id, "latents": lat.id, "dit": dit.id, "sample": samp.id, "fid": fid.id,
            "dit_flops": dit_flops}


def _anchor_cell(p: Plan, a, ctx: dict) -> None:
    """A released tokenizer as a cell: an `anchor` stage (convert the file into tokenizer.pt) in place of
    pretrain, then the same downstream stages. Its tokenizer FLOPs are what the study attributes to it
    (`tokenizer_flops`, a plot position only) or unknown (NaN): anchors are points beside the fitted curves,
    never inside a fit."""
    from vtp_core.released import infer_shape, tokenizer_config

    s = p.study
    patch, channels = infer_shape(a.checkpoint)
    tok = dataclasses.replace(tokenizer_config(a, patch, channels), data=s.tokenizer.data)
    stage = _stage(s, "anchor", f"{a.size}-{a.sha256[:8]}", a)
    p.add(stage)
    short = f"anchor-{a.size}-{a.sha256[:8]}"
    shape = costs.latent_shape(tok)
    down = _downstream(p, stage.id, short, costs.encoder_forward_flops(tok), costs.decoder_forward_flops(tok),
                       shape, f"anchor {a.name}", ctx)
    p.cells.append(Cell(
        id=f"anchor-{a.name}", recipe="anchor", encoder=a.size, data_size=0, budget_kind="", budget=math.nan,
        seed=0, steps=0, encoder_params=costs.encoder_params(tok), tokenizer_flops=a.tokenizer_flops or math.nan,
        dit_flops=down.pop("dit_flops"), samples_seen=0, samples={}, anchor=a.name,
        stages={"extractor": ctx["ext"].id, "refstats": ctx["ref"].id, "pretrain": stage.id, **down}))
def _dinov2_stages(s: Study, p: Plan, n_ref: int) -> tuple[tuple, float]:
    """With fd_dinov2: the DINOv2 extractor stage and its reference stage (the study's reference images, always
    computed: an ADM batch holds Inception statistics only). Returns the fid stage's extra upstream entries and
    the DINOv2 FLOPs per image."""
    if "fd_dinov2" not in s.fid.metrics:
        return (), 0.0
    fwd = costs.extractor_forward_flops("dinov2")
    ext = p.stages[p.add(_stage(s, "extractor", "dinov2", s.fid.dinov2))]
    rcfg = dataclasses.replace(s.refstats, npz="", sha256="")
    if s.refstats.npz:
        n_ref = rcfg.n_images or _split_size(rcfg.data, rcfg.split, f"{s.path}: eval_data")
    ref = _stage(s, "refstats", f"{rcfg.data.dataset}-{rcfg.split}-dinov2", rcfg, (("extractor", ext.id),),
                 flops=n_ref * fwd, images=n_ref)
    p.add(ref)
    return (("extractor_dinov2", ext.id), ("refstats_dinov2", ref.id)), fwd


def _pinned(s: Study) -> Study:
    """The study with its data's checksums filled in everywhere the data is named."""
    data = pin_data(s.data, f"{s.path}: data")
    ev = s.eval_data
    ev = pin_data(ev, f"{s.path}: eval_data") if ev != s.data else dataclasses.replace(ev, checksum=data.checksum)
    if dataclasses.replace(s.eval_data, n_train=0) == dataclasses.replace(s.data, n_train=0):
        ev = dataclasses.replace(ev, checksum=data.checksum)
    return dataclasses.replace(
        s, data=data, eval_data=ev, tokenizer=dataclasses.replace(s.tokenizer, data=data),
        refstats=dataclasses.replace(s.refstats, data=ev), latents=dataclasses.replace(s.latents, data=ev),
        probe=dataclasses.replace(s.probe, data=ev))


GRID_AXES = Grid.AXES
