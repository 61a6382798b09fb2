"""The planner: a study → cells → a deduplicated chain of content-addressed stages, with costs.

Why a separate, pure step: the same plan drives every executor (local, SLURM, Ray), the dry-run
table, `make status` and result collection, so all of them agree on which stage ids a cell needs.
Budgets become steps here: steps = floor(budget / measured FLOPs per training step); a budget
below one step is refused (SpecError) before any work.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from sweeps import costs
from sweeps.errors import SpecError
from sweeps.ids import fmt_num, stage_id
from sweeps.schema import GRID_AXES, Study

CELL_STAGES = ("pretrain", "probe", "latents", "dit", "sample", "fid")
SHARED_STAGES = ("extractor", "refstats")


@dataclass(frozen=True)
class Stage:
    kind: str
    id: str
    cfg: Any
    upstream: tuple[tuple[str, str], ...] = ()  # (kind, stage id)
    flops: float = 0.0  # estimated FLOPs of the stage (training stages: exact convention)
    seconds: float = 0.0  # dry-run estimate = flops / study.estimate.throughput_flops

    @property
    def upstream_ids(self) -> tuple[str, ...]:
        return tuple(i for _, i in self.upstream)


@dataclass(frozen=True)
class Cell:
    id: str
    recipe: str
    encoder: str
    data_size: int
    budget_flops: float
    seed: int
    steps: int
    encoder_params: int
    tokenizer_flops: float
    dit_flops: float
    stages: dict[str, str]  # kind -> stage id


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


def _seconds(study: Study, flops: float) -> float:
    return flops / study.estimate.throughput_flops


def plan(study: Study) -> Plan:
    p = Plan(study)
    s = study
    ext = Stage("extractor", stage_id("extractor", s.extractor.name, s.extractor), s.extractor,
                flops=0.0, seconds=20.0 if s.extractor.name == "fmnist_cnn" else 1.0)
    p.add(ext)
    ref = Stage("refstats", stage_id("refstats", f"{s.refstats.data.dataset}-{s.refstats.split}", s.refstats, [ext.id]),
                s.refstats, (("extractor", ext.id),), seconds=2.0)
    p.add(ref)
    grid = s.grid
    per_arch = {}  # (recipe, encoder) -> costs that ignore seed, data size and steps (`costs._strip`), looked up once
    for recipe, encoder, data_size, budget, seed in itertools.product(*(getattr(grid, a) for a in GRID_AXES)):
        base = dataclasses.replace(s.tokenizer, recipe=recipe, encoder=encoder, seed=seed,
                                   data=dataclasses.replace(s.tokenizer.data, n_train=data_size))
        if (recipe, encoder) not in per_arch:
            per_arch[recipe, encoder] = (costs.tokenizer_step_flops(base), costs.encoder_params(base),
                                         costs.encoder_forward_flops(base), costs.latent_shape(base))
        step_flops, enc_params, enc_flops, shape = per_arch[recipe, encoder]
        steps = math.floor(budget / step_flops)
        cell_name = f"{recipe}-{encoder}-d{fmt_num(data_size)}-f{fmt_num(budget)}-s{seed}"
        if steps < 1:
            raise SpecError(
                f"{s.path}: grid.budget_flops: {fmt_num(budget)} is less than one training step "
                f"({fmt_num(step_flops)} FLOPs) for cell {cell_name} (raise the budget or shrink tokenizer.batch_size)")
        tok = dataclasses.replace(base, steps=steps)
        tok_flops = steps * step_flops
        pre = Stage("pretrain", stage_id("pretrain", f"{recipe}-{encoder}-d{fmt_num(data_size)}-n{steps}-s{seed}", tok),
                    tok, flops=tok_flops, seconds=_seconds(s, tok_flops))
        p.add(pre)
        probe = Stage("probe", stage_id("probe", pre.id.split("-", 1)[1].rsplit("-", 1)[0], s.probe, [pre.id, ext.id, ref.id]),
                      s.probe, (("pretrain", pre.id), ("extractor", ext.id), ("refstats", ref.id)), seconds=5.0)
        p.add(probe)
        n_lat = s.latents.n_images or 60000
        lat_flops = enc_flops * n_lat * (2 if s.latents.flip else 1)
        lat = Stage("latents", stage_id("latents", pre.id.split("-", 1)[1].rsplit("-", 1)[0], s.latents, [pre.id]),
                    s.latents, (("pretrain", pre.id),), flops=lat_flops, seconds=_seconds(s, lat_flops))
        p.add(lat)
        dstep = costs.dit_step_flops(s.dit, shape)
        dit_flops = dstep * s.dit.steps
        dit = Stage("dit", stage_id("dit", f"{s.dit.size}-n{s.dit.steps}", s.dit, [lat.id]), s.dit,
                    (("latents", lat.id),), flops=dit_flops, seconds=_seconds(s, dit_flops))
        p.add(dit)
        # sampling: one forward per Euler step (~1/3 of a training step per sample) + decoding
        samp_flops = s.sample.n_samples * s.sample.steps * dstep / (3 * s.dit.batch_size) * (2 if s.sample.cfg_scale != 1 else 1)
        samp = Stage("sample", stage_id("sample", f"n{s.sample.n_samples}-{s.sample.sampler}{s.sample.steps}", s.sample,
                                        [dit.id, lat.id, pre.id]),
                     s.sample, (("dit", dit.id), ("latents", lat.id), ("pretrain", pre.id)),
                     flops=samp_flops, seconds=_seconds(s, samp_flops))
        p.add(samp)
        fid = Stage("fid", stage_id("fid", f"n{s.sample.n_samples}-{s.extractor.name}", s.fid, [samp.id, ext.id, ref.id]),
                    s.fid, (("sample", samp.id), ("extractor", ext.id), ("refstats", ref.id)), seconds=2.0)
        p.add(fid)
        p.cells.append(Cell(
            id=cell_name, recipe=recipe, encoder=encoder, data_size=data_size, budget_flops=float(budget),
            seed=seed, steps=steps, encoder_params=enc_params, tokenizer_flops=tok_flops,
            dit_flops=dit_flops,
            stages={"extractor": ext.id, "refstats": ref.id, "pretrain": pre.id, "probe": probe.id,
                    "latents": lat.id, "dit": dit.id, "sample": samp.id, "fid": fid.id}))
    return p
