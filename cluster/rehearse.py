"""`make rehearse SCALE=<study>`: a shipped study end to end in miniature, on a CPU, through the code paths the
real study runs, with its invariants checked from the logged metrics.

Why: a paper-scale study costs thousands of GPU-hours and cannot run where it is written. A rehearsal runs the
same study file with the same recipes and objectives, the same dataset kinds and the same stage graph, shrunk
by one declared mapping (`SHRINK`, printed with every rehearsal), and fails on what would waste those hours: a
loss term that trains nothing, a schedule that never reaches its peak learning rate, a FID reference that
misses classes, data that does not enter the stage ids.

The shrink mapping:
- sizes: encoder S / B / L -> widths 32 / 48 / 64 (2 blocks), decoder L4 -> 64 wide, 1 block; the text tower,
  the DiT -> `tiny`; latent channels <= 8; DINO head K / hidden / bottleneck <= 256 / 64 / 32.
- pixels: image size, patch and SSL crops divided by patch/2 (the patch becomes 2): every token grid is the
  real one (16x16 images, 14x14 global and 6x6 local crops at 256/16/224/96).
- batches: 32 images per step with the real CLIP : SSL : rec fractions.
- budgets: each cell's real step count (its budget over the real FLOPs, or images, per step) times one factor
  c = min_steps / the smallest real step count, so the step-count spread between cells is kept; the planner
  gets those steps times the miniature's own FLOPs (or images) per step. The warm-up cap is scaled by c too.
- cells: every (recipe, encoder, data size) keeps its smallest budget; further cells, by budget rank then seed,
  while they stay under `max_steps` and `max_cells`.
- data: the study's dataset kinds, generated: webdataset tar shards with captions for `tar`, class folders for
  `imagefolder` (10 classes of coloured shapes, JPEG); data sizes -> nested subsets, each twice the last, the
  largest the whole generated set. A second dataset (another seed) checks that data enters the stage ids.
- evaluation: a seeded random CNN (`random_cnn`) for Inception, a random-weights VGG16 file for LPIPS, FID
  over 32 samples (allowed as low-N), probes on a few dozen images for 5 epochs, the DiT for 10 steps.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dit_eval.config import INCEPTION_METRICS
from sweeps.errors import SpecError

KEEP_SECTIONS = ("tokenizer", "data", "eval_data", "probe", "extractor", "refstats", "latents", "dit", "sample", "fid")


@dataclass(frozen=True)
class Shrink:
    """The declared mapping from a real study to its rehearsal (see the module docstring)."""

    min_steps: int = 2  # steps of the cell with the fewest real steps
    max_steps: int = 40  # beyond the coverage cells, cells longer than this are trimmed
    max_cells: int = 6
    batch_size: int = 32
    latent_channels: int = 8
    dino: tuple[int, int, int] = (256, 64, 32)  # prototypes, hidden, bottleneck
    patch: int = 2
    train_images: int = 400  # generated pre-training images (tar shards)
    shards: int = 4
    n_classes: int = 10
    eval_per_class: tuple[int, int] = (12, 4)  # generated evaluation images per class: train, val
    probe: tuple[int, int] = (40, 20)  # linear-probe train, test images
    probe_epochs: int = 5
    refstats_images: int = 30
    stats_subset: int = 60
    dit_steps: int = 10
    dit_batch: int = 16
    samples: int = 32
    sample_steps: int = 4

    def sizes(self) -> dict[str, dict[str, Any]]:
        from vtp_core.registry import TextSize, ViTSize

        return {"encoder": {"S": ViTSize(32, 2, 2), "B": ViTSize(48, 2, 2), "L": ViTSize(64, 2, 2)},
                "decoder": {"S": ViTSize(32, 1, 2), "B": ViTSize(48, 1, 2), "L": ViTSize(64, 1, 2),
                            "L4": ViTSize(64, 1, 2)},
                "text": {"base": TextSize(32, 1, 2, context_length=16, embed_dim=32, vocab_size=4096)}}


SHRINK = Shrink()


def register_sizes(shrink: Shrink = SHRINK) -> dict[str, dict[str, str]]:
    """Register the miniature sizes as `r-<name>`; returns kind -> {real name: rehearsal name}."""
    from vtp_core import registry

    names: dict[str, dict[str, str]] = {}
    for kind, table in shrink.sizes().items():
        for real, size in table.items():
            registry.register(kind, f"r-{real}", size, overwrite=True)
            names.setdefault(kind, {})[real] = f"r-{real}"
    return names


# ---------------------------------------------------------------------------- data
def make_data(root: Path, study, shrink: Shrink, seed: int) -> dict[str, dict]:
    """Generated stand-ins for the study's `data:` and `eval_data:` (same dataset kinds): section -> fields."""
    from vtp_core.data import synthetic

    out = {}
    for sec in ("data", "eval_data"):
        d = getattr(study, sec)
        target = root / f"{sec}-{seed}"
        if d.dataset == "fashion_mnist":
            out[sec] = {"dataset": "fashion_mnist"}
            continue
        if d.dataset == "tar" and "{" in d.path:
            done = target / ".complete"
            pattern = str(target / f"{{00000..{shrink.shards - 1:05d}}}.tar")
            if not done.exists():
                pattern = synthetic.write_tar_shards(target, shrink.train_images, shrink.shards, shrink.n_classes,
                                                     seed=seed)
                done.write_text("ok")
            out[sec] = {"dataset": "tar", "path": pattern}
        else:
            done = target / ".complete"
            if not done.exists():
                per = {"train": shrink.eval_per_class[0], "val": shrink.eval_per_class[1]}
                if d.dataset == "tar":
                    for split, n in per.items():
                        synthetic.write_tar_shards(target / split, n * shrink.n_classes, 2, shrink.n_classes,
                                                   seed=seed + (split == "val"), with_cls=True)
                else:
                    synthetic.write_imagefolder(target, per, shrink.n_classes, seed=seed)
                done.write_text("ok")
            out[sec] = {"dataset": d.dataset, "path": str(target)}
    return out


# ---------------------------------------------------------------------------- the mapping
@dataclass(frozen=True)
class RealCell:
    recipe: str
    encoder: str
    data_size: int
    budget: float
    seed: int
    steps: int  # what the real study would train


def real_cells(study) -> list[RealCell]:
    """Every cell of the real study with its real step count (no data needed: FLOPs on the meta device)."""
    import itertools

    from sweeps import costs
    from vtp_core.batches import images_per_step

    g, out = study.grid, []
    for r, e, d, b, s in itertools.product(g.recipe, g.encoder, g.data_size, g.budget, g.seed):
        tok = dataclasses.replace(study.tokenizer, recipe=r, encoder=e, seed=s)
        per_step = costs.tokenizer_step_flops(tok) if g.budget_kind == "flops" else images_per_step(tok)
        out.append(RealCell(r, e, d, b, s, math.floor(b / per_step)))
    return out


def select(cells: list[RealCell], shrink: Shrink) -> tuple[list[tuple[RealCell, int]], list[RealCell], float]:
    """(kept cells with their rehearsal steps, trimmed cells, the step factor c)."""
    if min(c.steps for c in cells) < 1:
        bad = min(cells, key=lambda c: c.steps)
        raise SpecError(f"grid.budget: cell {bad.recipe}/{bad.encoder} at {bad.budget:g} is less than one real step")
    factor = shrink.min_steps / min(c.steps for c in cells)
    steps = {c: max(1, round(c.steps * factor)) for c in cells}
    groups: dict[tuple, list[RealCell]] = {}
    for c in sorted(cells, key=lambda c: (c.budget, c.seed)):
        groups.setdefault((c.recipe, c.encoder, c.data_size), []).append(c)
    kept = [g[0] for g in groups.values()]  # coverage: every recipe, encoder and data size
    rank = 1
    while len(kept) < shrink.max_cells and any(len(g) > rank for g in groups.values()):
        for g in groups.values():
            if len(g) > rank and len(kept) < shrink.max_cells and steps[g[rank]] <= shrink.max_steps:
                kept.append(g[rank])
        rank += 1
    trimmed = [c for c in cells if c not in kept]
    return [(c, steps[c]) for c in kept], trimmed, factor


def data_sizes(sizes: tuple[int, ...], n_generated: int) -> dict[int, int]:
    """Real data sizes -> nested subsets of the generated set, each twice the last, the largest all of it."""
    real = sorted(s for s in set(sizes) if s)
    out = {0: 0}
    for i, s in enumerate(real):
        out[s] = max(2, n_generated >> (len(real) - 1 - i))
    return out


def shrunk_sections(study, names: dict, data: dict, lpips: tuple[str, str], factor: float,
                    shrink: Shrink, dinov2: tuple[str, str] | None = None) -> dict[str, dict]:
    """The study's sections, shrunk (everything else, the method's values, kept as the study has them)."""
    from vtp_core.cfg import to_dict

    t = study.tokenizer
    f = max(1, t.patch // shrink.patch)
    for name, side in (("data.image_size", study.data.image_size), ("eval_data.image_size", study.eval_data.image_size),
                       ("tokenizer.global_crop", t.global_crop), ("tokenizer.local_crop", t.local_crop)):
        if side % f:
            raise SpecError(f"{study.path}: {name}: {side} is not divisible by the pixel factor {f} (patch {t.patch} "
                            f"-> {shrink.patch}); the rehearsal keeps token grids exact")
    k, hidden, bottleneck = shrink.dino
    tok = {k2: v for k2, v in to_dict(t).items() if k2 not in ("recipe", "encoder", "seed", "steps", "data")}
    tok.update(decoder=names["decoder"].get(t.decoder, "tiny"), text=names["text"].get(t.text, "tiny"),
               patch=t.patch // f, global_crop=t.global_crop // f, local_crop=t.local_crop // f,
               latent_channels=min(t.latent_channels, shrink.latent_channels),
               batch_size=min(t.batch_size, shrink.batch_size), dino_prototypes=min(t.dino_prototypes, k),
               dino_hidden=min(t.dino_hidden, hidden), dino_bottleneck=min(t.dino_bottleneck, bottleneck),
               text_context=0, warmup_steps=max(1, round(t.warmup_steps * factor)) if t.warmup_steps else 0,
               ckpt_every=5, log_every=2, compile=False)
    if t.rec_loss == "l1_lpips":
        tok.update(lpips_weights=lpips[0], lpips_sha256=lpips[1])
    out = {"tokenizer": tok}
    for sec in ("data", "eval_data"):
        d = {k2: v for k2, v in to_dict(getattr(study, sec)).items() if k2 not in ("checksum", "path")}
        d.update(data[sec], image_size=getattr(study, sec).image_size // f, n_train=0)
        out[sec] = d
    p = study.probe
    out["probe"] = {**_without(to_dict(p), "data"), "n_train": min(p.n_train, shrink.probe[0]),
                    "n_test": min(p.n_test, shrink.probe[1]), "probe_epochs": min(p.probe_epochs, shrink.probe_epochs)}
    out["extractor"] = {**to_dict(study.extractor), "name": "random_cnn", "path": ""}
    r = study.refstats
    out["refstats"] = {**_without(to_dict(r), "data"), "n_images": min(r.n_images or shrink.refstats_images,
                                                                       shrink.refstats_images), "npz": "", "sha256": ""}
    la = study.latents
    out["latents"] = {**_without(to_dict(la), "data"), "n_images": 0, "stats_subset": shrink.stats_subset}
    dit = study.dit
    out["dit"] = {**to_dict(dit), "size": "tiny", "steps": min(dit.steps, shrink.dit_steps),
                  "batch_size": min(dit.batch_size, shrink.dit_batch), "num_classes": shrink.n_classes,
                  "ckpt_every": 10, "log_every": 5}
    sm = study.sample
    out["sample"] = {**to_dict(sm), "n_samples": min(sm.n_samples, shrink.samples),
                     "steps": min(sm.steps, shrink.sample_steps), "shard_size": 16, "batch_size": 16,
                     "ode_batch": 16}  # dopri5 runs: whole runs per shard
    # the Inception-only metrics go with the Inception (random_cnn replaces it); FD-DINOv2 runs on a random file
    metrics = [m for m in study.fid.metrics if m not in INCEPTION_METRICS and (m != "fd_dinov2" or dinov2)]
    out["fid"] = {**to_dict(study.fid), "allow_low_n": True, "metrics": metrics or ["fid"]}
    if "fd_dinov2" in metrics:
        out["fid"]["dinov2"] = {"name": "dinov2", "path": dinov2[0], "sha256": dinov2[1]}
    out["estimate"] = {"device": "cpu", "flops_per_s": {"cpu": 3.0e10}}
    return out


def _without(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def cell_doc(study, sections: dict, cell: RealCell, steps: int, names: dict, sizes: dict[int, int]) -> dict:
    """One rehearsal study holding one cell: its budget buys exactly `steps` miniature steps."""
    from sweeps import costs
    from sweeps.schema import study_from_doc
    from vtp_core.batches import images_per_step

    enc = names["encoder"].get(cell.encoder, "tiny")
    doc = {"name": f"rehearse-{study.name}", **sections,
           "grid": {"recipe": [cell.recipe], "encoder": [enc], "data_size": [sizes[cell.data_size]], "seed": [cell.seed]}}
    s = study_from_doc({**doc, "grid": {**doc["grid"], "budget_flops": [1.0]}}, Path(f"rehearse-{study.name}.yaml"),
                       validate=False)
    tok = dataclasses.replace(s.tokenizer, recipe=cell.recipe, encoder=enc, seed=cell.seed)
    if study.grid.budget_kind == "flops":
        doc["grid"]["budget_flops"] = [(steps + 0.5) * costs.tokenizer_step_flops(tok)]
    else:
        doc["grid"]["budget_samples"] = [(steps + 0.5) * images_per_step(tok)]
    return doc


# ---------------------------------------------------------------------------- checks
ACTIVE_TERMS = {"rec": ("l1",), "clip": ("clip",), "ssl": ("dino", "ibot", "koleo")}


def check_cell(plan, cell, store, n_classes: int | None) -> list[tuple[str, bool, str]]:
    """(check, passed, detail) for one finished cell, from its stages' status and metrics."""
    from vtp_core.config import RECIPES

    out = []
    states = {k: store.state(sid) for k, sid in cell.stages.items()}
    bad = {k: v for k, v in states.items() if v != "done"}
    reasons = "; ".join(f"{k} {v}: {store.status(cell.stages[k]).get('reason', '')}" for k, v in bad.items())
    out.append(("every stage done", not bad, reasons or f"{len(states)} stages"))
    pre = store.metrics(cell.stages["pretrain"])
    tok = plan.stages[cell.stages["pretrain"]].cfg
    lam_clip, lam_ssl = RECIPES[tok.recipe]
    terms = list(ACTIVE_TERMS["rec"]) + (["lpips"] if tok.rec_loss == "l1_lpips" else [])
    terms += list(ACTIVE_TERMS["clip"]) if lam_clip else []
    terms += list(ACTIVE_TERMS["ssl"]) if lam_ssl else []
    losses = pre.get("final_losses") or {}
    for term in terms:
        v = losses.get(term)
        ok = v is not None and math.isfinite(v) and v != 0.0
        out.append((f"loss {term} finite and non-zero", ok, f"{v!r}"))
    peak, lr = pre.get("lr_peak"), tok.lr
    out.append(("peak LR reached", peak is not None and abs(peak - lr) <= 1e-9 * lr,
                f"peak {peak!r} of lr {lr!r} in {tok.steps} steps"))
    ref = store.metrics(cell.stages["refstats"])
    classes = ref.get("classes") or {}
    if ref.get("reference") == "npz":
        out.append(("reference classes balanced", True, "ADM reference batch"))
    else:
        lo, hi, k = classes.get("min_per_class"), classes.get("max_per_class"), classes.get("n_classes")
        ok = lo is not None and hi is not None and hi - lo <= 1 and (n_classes is None or k == n_classes)
        out.append(("reference covers every class equally", ok, f"{k} classes, {lo}-{hi} images each"))
    return out


def check_data_identity(doc_a: dict, doc_b: dict, where: Path) -> list[tuple[str, bool, str]]:
    """Plan one cell on the generated dataset and on a second one: every data-dependent id must differ, and
    planning the same study twice must give the same ids."""
    from sweeps.plan import plan
    from sweeps.schema import study_from_doc

    a1, a2, b = (plan(study_from_doc(d, where)) for d in (doc_a, doc_a, doc_b))
    ca, ca2, cb = a1.cells[0], a2.cells[0], b.cells[0]
    same = [k for k in ("refstats", "pretrain", "probe", "latents", "dit", "sample", "fid") if ca.stages[k] == cb.stages[k]]
    return [("same study, same stage ids", ca.stages == ca2.stages, ""),
            ("other data, other stage ids", not same, f"shared: {', '.join(same)}" if same else "all differ")]


# ---------------------------------------------------------------------------- the run
def rehearse(study_path: Path, results: Path, shrink: Shrink = SHRINK, device: str = "cpu",
             echo=print) -> dict:
    from cluster.local import run_local
    from cluster.store import Store
    from sweeps.plan import plan
    from sweeps.schema import read_yaml, study_from_doc
    from vtp_core.losses.lpips import write_random_lpips
    from vtp_core.runtime import atomic_write_json

    t0 = time.time()
    real = study_from_doc(read_yaml(study_path), study_path, validate=False)
    work = Path(results) / real.name
    work.mkdir(parents=True, exist_ok=True)
    names = register_sizes(shrink)
    cells = real_cells(real)
    kept, trimmed, factor = select(cells, shrink)
    lpips_path = work / "lpips_random_vgg16.pt"
    lpips = (str(lpips_path), write_random_lpips(lpips_path, seed=0))
    data_a, data_b = make_data(work / "data", real, shrink, 0), make_data(work / "data", real, shrink, 1)
    dinov2 = None
    if "fd_dinov2" in real.fid.metrics:
        from dit_eval.dinov2 import write_random_dinov2

        dinov2 = (str(work / "dinov2_random.pth"), write_random_dinov2(work / "dinov2_random.pth", seed=0))
    sections = shrunk_sections(real, names, data_a, lpips, factor, shrink, dinov2)
    sections_b = {**sections, **{sec: {**sections[sec], **data_b[sec]} for sec in ("data", "eval_data")}}
    gen_train = shrink.train_images if real.data.dataset == "tar" and "{" in real.data.path else (
        shrink.eval_per_class[0] * shrink.n_classes)
    sizes = data_sizes(real.grid.data_size, gen_train)
    echo(f"rehearse {real.name}: {len(cells)} real cells, {len(kept)} rehearsed ({len(trimmed)} trimmed), "
         f"step factor c = {factor:.3g}, data sizes {sizes}")
    store = Store(work / "results")
    checks: list[dict] = []
    docs = []
    for cell, steps in kept:
        doc = cell_doc(real, sections, cell, steps, names, sizes)
        docs.append(doc)
        where = work / "studies" / f"{cell.recipe}-{cell.encoder}-d{cell.data_size}-{cell.budget:g}-s{cell.seed}.yaml"
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text(yaml.safe_dump(doc, sort_keys=False))
        p = plan(study_from_doc(doc, where))
        c = p.cells[0]
        echo(f"  {cell.recipe:<12} {cell.encoder:<4} data {cell.data_size:<10g} budget {cell.budget:<9g} seed {cell.seed}: "
             f"real {cell.steps} steps -> {c.steps}")
        counts = run_local(p, store, device=device, progress=False, echo=lambda *_: None)
        for name, ok, detail in check_cell(p, c, store, shrink.n_classes):
            checks.append({"cell": c.id, "real_steps": cell.steps, "check": name, "ok": bool(ok), "detail": detail})
        if counts.get("interrupted"):
            break
    doc_b = {**docs[0], **{sec: sections_b[sec] for sec in ("data", "eval_data")}}
    identity = check_data_identity(docs[0], doc_b, work / "studies" / "identity.yaml")
    if doc_b == docs[0]:  # nothing generated: no second dataset to plan
        identity[1] = ("other data, other stage ids", True, "not applicable: the study reads only Fashion-MNIST, one "
                       "fixed dataset (its name is in every id)")
    for name, ok, detail in identity:
        checks.append({"cell": "-", "real_steps": 0, "check": name, "ok": bool(ok), "detail": detail})
    report = {"study": real.name, "shrink": dataclasses.asdict(shrink), "step_factor": factor,
              "cells": len(cells), "rehearsed": len(kept), "trimmed": [dataclasses.asdict(c) for c in trimmed],
              "checks": checks, "ok": all(c["ok"] for c in checks), "wall_s": round(time.time() - t0, 1)}
    atomic_write_json(work / "rehearsal.json", report)
    return report


def print_report(report: dict, out=sys.stdout) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"rehearsal of {report['study']}: {'PASSED' if report['ok'] else 'FAILED'} "
                    f"({report['rehearsed']} of {report['cells']} cells, {report['wall_s']}s)")
    for col in ("cell", "check", "ok", "detail"):
        t.add_column(col)
    for c in report["checks"]:
        t.add_row(c["cell"], c["check"], "yes" if c["ok"] else "NO", str(c["detail"])[:80])
    Console(file=out, width=160).print(t)


def main(argv: list[str] | None = None) -> int:
    from sweeps.schema import study_path

    ap = argparse.ArgumentParser(prog="python -m cluster.rehearse", description=__doc__.splitlines()[0])
    ap.add_argument("scale", help="study name under sweeps/ or a YAML path")
    ap.add_argument("--results", default="results/rehearse", help="where the miniature's stages and data go")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-cells", type=int, default=SHRINK.max_cells)
    args = ap.parse_args(argv)
    try:
        report = rehearse(study_path(args.scale), Path(args.results),
                          dataclasses.replace(SHRINK, max_cells=args.max_cells), device=args.device)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_report(report)
    print(json.dumps({"ok": report["ok"], "report": str(Path(args.results) / report["study"] / "rehearsal.json")}))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
