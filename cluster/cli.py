"""Command line behind the Makefile: `python -m cluster {sweep,status,collect,plan} SCALE`.

Bad input (a study file, a field, an argument) prints one line `error: ...` and exits with 2
before any work is done.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from sweeps.errors import SpecError

EXECUTORS = ("local", "slurm", "ray")


def _load(scale: str):
    from sweeps.plan import plan
    from sweeps.schema import load_study, study_path

    study = load_study(study_path(scale))
    from cluster.slurm import validate_resources

    validate_resources(study.resources, where=f"{study.path}: resources")  # a typo stops before any work
    return plan(study)


def _store(args):
    from cluster.store import Store

    return Store(args.results)


def _fmt_s(s: float) -> str:
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s / 60:.1f}m"
    return f"{s / 3600:.1f}h"


def _short(strategy: str) -> str:
    """'checkpoint+microbatch:4' -> 'ckpt+mb4' (the dry-run table's column)."""
    return strategy.replace("checkpoint", "ckpt").replace("microbatch:", "mb")


def print_dry_run(p, store, out=sys.stdout) -> None:
    """One row per cell: recipe, encoder + params, data, budget, steps, samples seen (in all and per objective),
    FLOPs, estimated time per stage, the pretrain step's predicted GB per GPU and memory strategy (when the
    study gives resources.pretrain.gpu_mem_gb; else '–') and device-hours; then the memory plan's figures per
    architecture, the stage ids and the totals."""
    from rich.console import Console
    from rich.table import Table

    from sweeps.ids import fmt_num
    from sweeps.plan import CELL_STAGES
    from sweeps.schema import resources_for

    console = Console(file=out, width=max(220, Console().width), soft_wrap=False)
    s = p.study
    est = s.estimate
    gpu_mem = resources_for(s.resources, "pretrain").get("gpu_mem_gb") or 0
    t = Table(title=f"study {s.name}: {len(p.cells)} cells, {len(p.stages)} distinct stages (times assume "
                    f"{fmt_num(est.throughput)} FLOP/s per {est.device} and {fmt_num(est.decode_images_per_s)} "
                    f"images/s per loader: estimate:)")
    for col in ("cell", "recipe", "encoder", "enc params", "data", "budget", "steps", "samples seen",
                "clip / ssl / rec", "tok FLOPs", "DiT FLOPs", *[f"t {k}" for k in CELL_STAGES], "GB/GPU",
                "dev-h", "done"):
        t.add_column(col, no_wrap=True)
    for c in p.cells:
        sts = [p.stages[c.stages[k]] for k in CELL_STAGES]
        done = sum(store.is_done(x.id) for x in sts)
        pre = p.stages[c.stages["pretrain"]]
        mem = f"{pre.mem_gb:.1f} {_short(pre.strategy)}" if pre.strategy else "–"
        if c.anchor:  # a released tokenizer: nothing trained here, its pre-training is not ours to count
            t.add_row(c.id, "anchor", c.encoder, f"{c.encoder_params / 1e6:.2f}M", "–", "–", "–",
                      "–", "–", "–", fmt_num(c.dit_flops), *[_fmt_s(x.seconds) for x in sts], mem,
                      f"{p.cell_device_hours(c):.3g}", f"{done}/{len(sts)}")
            continue
        budget = fmt_num(c.budget) + (" samples" if c.budget_kind == "samples" else "")
        per_obj = " / ".join(fmt_num(c.samples[k]) for k in ("clip", "ssl", "rec"))
        t.add_row(c.id, c.recipe, c.encoder, f"{c.encoder_params / 1e6:.2f}M", fmt_num(c.data_size) if c.data_size else "all",
                  budget, str(c.steps), fmt_num(c.samples_seen), per_obj, fmt_num(c.tokenizer_flops),
                  fmt_num(c.dit_flops), *[_fmt_s(x.seconds) for x in sts], mem, f"{p.cell_device_hours(c):.3g}",
                  f"{done}/{len(sts)}")
    console.print(t)
    if gpu_mem:
        print(f"GB/GPU: the pretrain step's predicted peak per GPU (of resources.pretrain.gpu_mem_gb = "
              f"{fmt_num(gpu_mem)}) with the cheapest strategy that fits: none, ckpt (activation checkpointing of "
              f"every block), ckpt+mb<k> (and k micro-batches)", file=out)
    shown: set = set()
    for c in p.cells:  # the memory plan's figures, once per architecture (they do not depend on the budget)
        pre = p.stages[c.stages["pretrain"]]
        if pre.strategy and not c.anchor and (c.recipe, c.encoder) not in shown:
            shown.add((c.recipe, c.encoder))
            parts = ", ".join(f"{k} {v:.3g}" for k, v in pre.mem if k != "total" and v > 0)
            print(f"memory plan {c.recipe}-{c.encoder}: pretrain {pre.strategy}, {pre.mem_gb:.1f} GB per GPU of "
                  f"{fmt_num(gpu_mem)} ({parts})", file=out)
    dits = {p.stages[c.stages["dit"]].mem for c in p.cells} - {()}
    for mem in sorted(dits):
        d = dict(mem)
        parts = ", ".join(f"{k} {v:.3g}" for k, v in mem if k != "total" and v > 0)
        strategy = next(st.strategy for st in p.stages.values() if st.kind == "dit" and st.mem == mem)
        print(f"memory plan dit {s.dit.size}: {strategy}, {d['total']:.1f} GB per GPU of "
              f"{fmt_num(resources_for(s.resources, 'dit').get('gpu_mem_gb'))} ({parts})", file=out)
    print("stage ids per cell (" + " ".join(CELL_STAGES) + "):", file=out)
    for c in p.cells:
        print(f"  {c.id}: " + " ".join(c.stages[k] for k in CELL_STAGES), file=out)
    for st in p.stages.values():
        if st.kind in ("extractor", "refstats"):
            print(f"shared stage {st.id}: {store.state(st.id)}, {_fmt_s(st.seconds)}, {st.device_hours:.3g} device-h",
                  file=out)
    left = [st for st in p.stages.values() if not store.is_done(st.id)]
    print(f"device-hours ({est.device}): {p.device_hours:.4g} for the study, "
          f"{sum(st.device_hours for st in left):.4g} for the {len(left)} stages not done; "
          f"serial time of those stages: {_fmt_s(sum(st.seconds for st in left))}", file=out)


def cmd_plan(args) -> int:
    p = _load(args.scale)
    print_dry_run(p, _store(args))
    return 0


def cmd_sweep(args) -> int:
    if args.executor not in EXECUTORS:
        raise SpecError(f"EXECUTOR={args.executor}: unknown executor (allowed: {', '.join(EXECUTORS)})")
    p = _load(args.scale)
    store = _store(args)
    if args.executor == "ray":  # refused before the dry run's table too: it would not run as planned
        from cluster.ray_exec import check_one_gpu_per_stage

        check_one_gpu_per_stage(p, p.study.resources)
    if args.dry:
        print_dry_run(p, store)
        if args.executor == "slurm":
            from cluster.slurm import submit_slurm

            submit_slurm(p, store, device=args.device, dry_run=True)
        return 0
    if args.executor == "slurm":  # fire and forget: the stage folders are the truth
        from cluster.slurm import submit_slurm

        sub = submit_slurm(p, store, device=args.device)
        print(f"sweep {p.study.name}: {sub.summary()}; code {sub.code_dir} (commit {sub.commit})")
        print(f"follow it with `make status SCALE={args.scale}`; when done, `make collect SCALE={args.scale}`")
        return 0
    from cluster import collect

    t0 = time.time()
    print(f"sweep {p.study.name}: {len(p.cells)} cells, {len(p.stages)} stages -> {store.root}/stages/", flush=True)
    if args.executor == "ray":
        from cluster.ray_exec import run_ray

        counts = run_ray(p, store, device=args.device)
    else:
        from cluster.local import run_local

        counts = run_local(p, store, device=args.device, progress=not args.no_progress)
    path = collect.write(p, store)
    if not args.no_mlflow:
        from cluster.tracking import log_table

        log_table(collect.table(p, store), p.study.name, store.root)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"sweep {p.study.name} finished in {time.time() - t0:.1f}s: {summary}; table {path}", flush=True)
    if counts.get("interrupted"):
        return 130
    return 1 if counts.get("failed") else 0


def cmd_status(args) -> int:
    from cluster.collect import status_counts

    from cluster.slurm import reconcile

    p = _load(args.scale)
    store = _store(args)
    # ask the scheduler about stages that claim to be running; OOM/TIMEOUT/... become `failed` with that reason
    checks = [r for r in reconcile(p, store) if r["verdict"] != "alive"]
    counts, failures = status_counts(p, store)
    print(f"study {p.study.name}: {len(p.cells)} cells, {len(p.stages)} stages")
    print(counts.to_string())
    for sid, state, reason in failures:
        print(f"{state:<9} {sid}: {reason}")
    for r in checks:
        if r["verdict"] in ("lost", "blocked"):
            print(f"{r['verdict']:<9} {r['stage']}: {r['reason']}")
    return 0


def cmd_collect(args) -> int:
    from cluster import collect

    p = _load(args.scale)
    store = _store(args)
    path = collect.write(p, store)
    df = collect.table(p, store)
    if not args.no_mlflow:
        from cluster.tracking import log_table

        log_table(df, p.study.name, store.root)
    print(f"{path}: {len(df)} cells, {int((df.status == 'done').sum())} done")
    return 0


def cmd_table(args) -> int:
    """Print where `collect` writes the study's runs table (the study's `name:`, which a YAML path may not show)."""
    from cluster import collect

    print(collect.table_path(_load(args.scale), _store(args)))
    return 0


def cmd_tune(args) -> int:
    from cluster.ray_exec import tune_lr
    from vtp_core import registry

    if args.size not in registry.list_sizes("encoder"):
        raise SpecError(f"SIZE={args.size}: unknown encoder size (allowed: {', '.join(registry.list_sizes('encoder'))})")
    doc = tune_lr(args.size, recipe=args.recipe, steps=args.steps, study=args.study, device=args.device,
                  lrs=tuple(float(x) for x in args.lrs.split(",")))
    print(f"best lr for {doc['recipe']} {args.size}: {doc['lr']:g} -> {doc['path']}")
    print(f"use it in a study: tokenizer: {{lr_from: {doc['path']}}}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster", description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=os.environ.get("VTP_RESULTS", "results"), help="results folder")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, fn in (("sweep", cmd_sweep), ("plan", cmd_plan), ("status", cmd_status), ("collect", cmd_collect),
                     ("table", cmd_table)):
        sp = sub.add_parser(name)
        sp.add_argument("scale", help="study name under sweeps/ (e.g. demo, params) or a YAML path")
        sp.set_defaults(fn=fn)
        if name == "sweep":
            sp.add_argument("--dry", action="store_true", help="print the plan and costs, do no work")
            sp.add_argument("--executor", default="local")
            sp.add_argument("--device", default=None, help="cpu / cuda (default: CUDA when present)")
            sp.add_argument("--no-progress", action="store_true")
        if name in ("sweep", "collect"):
            sp.add_argument("--no-mlflow", action="store_true", help="skip the MLflow index")
    tp = sub.add_parser("tune", help="Ray Tune ASHA learning-rate search for the tokenizer at one encoder size")
    tp.add_argument("size")
    tp.add_argument("--recipe", default=None)
    tp.add_argument("--steps", type=int, default=200)
    tp.add_argument("--study", default=None, help="take the tokenizer settings from this study")
    tp.add_argument("--lrs", default="1e-4,3e-4,1e-3,3e-3,1e-2")
    tp.add_argument("--device", default=None)
    tp.set_defaults(fn=cmd_tune)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
