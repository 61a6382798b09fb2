"""The Ray executor: every stage of a plan as one Ray task, started as soon as its upstream is done.

Why a driver loop and not chained ObjectRefs: passing upstream refs as arguments would make Ray
skip (error) a whole chain on one failure but also on a stage that another process runs (busy),
and it cannot see stages finished by an earlier sweep. The driver instead submits a stage when the
status files say its upstream is done, records every failure in status.json (via `run_stage`,
like every executor) and lets the other cells go on. Per-stage CPUs/GPUs come from the study's
`resources:` (the same schema as SLURM: cpus_per_task, gpus_per_node).

Ray on shared machines (docs/cluster.md#ray): a short private temp dir (AF_UNIX paths stay under 107
bytes), no dashboard, and `ray.shutdown()` at the end when this call started Ray.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

from cluster.slurm import resources_for, stage_kinds, validate_resources
from cluster.store import Store

BAD = ("failed", "diverged", "preempted")


def check_one_gpu_per_stage(plan, res: Mapping[str, Any]) -> None:
    """A Ray task is one process on (at most) one GPU here: a stage that asks for more is refused before Ray
    starts, never run on one GPU with the rest idle. Multi-GPU data parallelism runs under EXECUTOR=slurm."""
    from sweeps.errors import SpecError

    for kind in sorted({st.kind for st in plan.stages.values()}):
        r = resources_for(res, kind)
        tasks, nodes, gpus = r.get("tasks_per_node", 1), r.get("nodes", 1), r.get("gpus_per_node") or 0
        if tasks * nodes > 1 or gpus > 1:
            raise SpecError(
                f"{getattr(plan.study, 'path', 'study')}: resources.{kind}: asks for {nodes} node(s) x "
                f"{tasks} task(s) x {gpus} GPU(s); EXECUTOR=ray runs each stage as one process on at most one "
                f"GPU (use EXECUTOR=slurm for data-parallel stages, or give {kind} tasks_per_node: 1, "
                f"gpus_per_node: 1)")


def _run_one(root: str, stage, entries: Mapping[str, str], device: str | None) -> str:
    """Body of the Ray task (a worker process): run_stage with the shared status protocol."""
    import ray

    from cluster import stages
    from cluster.runner import run_stage

    stages.ENTRY.update(entries)
    job = f"ray:{ray.get_runtime_context().get_task_id()}"
    return run_stage(Store(root), stage, device=device, progress=False, job_id=job)


def ray_temp_dir() -> str:
    d = Path(os.environ.get("VTP_RAY_TMP", f"/tmp/vtp-ray-{os.getuid()}"))
    d.mkdir(parents=True, exist_ok=True)
    return str(d)


def run_ray(plan, store: Store, resources: Mapping | None = None, *, num_cpus: int | None = None,
            num_gpus: int | None = None, address: str | None = None, device: str | None = None,
            entries: Mapping[str, str] | None = None, runtime_env: dict | None = None, poll_s: float = 1.0,
            echo: Callable[[str], Any] = print) -> Counter:
    """Run every stage of `plan` on Ray; returns counts of final states like `run_local`
    (done / cached / failed / diverged / preempted / skipped)."""
    import ray

    store = Store(Path(store.root).resolve())
    res = validate_resources(getattr(plan.study, "resources", {}) if resources is None else resources,
                             kinds=set(stage_kinds()) | set(entries or {}) | {s.kind for s in plan.stages.values()})
    check_one_gpu_per_stage(plan, res)
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
        if address:
            kw["address"] = address
        else:
            kw.update(num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus, _temp_dir=ray_temp_dir())
        ray.init(**kw)
        started = True
    task = ray.remote(_run_one)
    counts: Counter = Counter()
    pending = dict(plan.stages)  # topological order kept
    bad: set[str] = set()
    running: dict[Any, Any] = {}  # ObjectRef -> (stage, t0)
    try:
        while pending or running:
            for sid, st in list(pending.items()):
                if any(u in bad for u in st.upstream_ids):
                    bad.add(sid)
                    counts["skipped"] += 1
                    del pending[sid]
                elif store.is_done(sid):
                    counts["cached"] += 1
                    del pending[sid]
                elif all(store.is_done(u) for u in st.upstream_ids) and not store.is_leased(sid):
                    r = resources_for(res, st.kind)
                    ref = task.options(num_cpus=r["cpus_per_task"], num_gpus=r.get("gpus_per_node") or 0,
                                       max_retries=0, name=f"{st.kind}:{sid}").remote(
                        str(store.root), st, dict(entries or {}), device)
                    running[ref] = (st, time.time())
                    del pending[sid]
            if not running:
                time.sleep(poll_s)  # only stages run by another process remain
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=poll_s)
            for ref in ready:
                st, t0 = running.pop(ref)
                try:
                    state = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a worker died (OOM killer, node lost)
                    state = "failed"
                    reason = f"ray task died: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:500]
                    with store.lease(st.id) as held:
                        if held and store.state(st.id) not in ("done", "diverged"):
                            store.set_status(st.id, "failed", reason=reason)
                if state == "busy":  # another process took the lease first: revisit when it drops
                    pending[st.id] = st
                    continue
                if state == "blocked":  # an upstream stopped being done meanwhile
                    state = "skipped"
                if state == "done":
                    counts["done"] += 1
                    echo(f"  done     {st.id}  ({time.time() - t0:.1f}s)")
                else:
                    bad.add(st.id)
                    counts[state] += 1
                    echo(f"  {state:<8} {st.id}: {store.status(st.id).get('reason')}")
    except KeyboardInterrupt:
        for ref in running:
            ray.cancel(ref)  # KeyboardInterrupt in the task: run_stage records 'preempted'
        counts["interrupted"] = len(running) + len(pending)
        raise
    finally:
        if started:
            ray.shutdown()
    return counts



# ---------------------------------------------------------------------------- Ray Tune: LR search
def _lr_trial(config: dict) -> None:
    """One Tune trial: vtp_core.pretrain at config['lr']; every logged window is reported to Tune
    (ASHA stops bad trials at its rungs), a divergence reports an infinite loss."""
    import dataclasses

    from ray import tune

    from vtp_core import pretrain
    from vtp_core.runtime import Diverged, StageContext

    cfg = dataclasses.replace(config["base"], lr=float(config["lr"]))
    out = Path(tune.get_context().get_trial_dir()) / "stage"
    out.mkdir(parents=True, exist_ok=True)
    last = {"step": -1}

    def beat(info: dict) -> None:
        if "loss" in info and "step" in info:
            last["step"] = int(info["step"])
            tune.report({"loss": float(info["loss"]), "step": int(info["step"])})

    ctx = StageContext(out=out, device=config.get("device") or "cpu", progress=False, heartbeat=beat)
    try:
        metrics = pretrain.run(cfg, ctx)
    except Diverged as exc:
        tune.report({"loss": float("inf"), "step": max(int(exc.step), last["step"] + 1), "diverged": True})
        return
    if last["step"] < cfg.steps:
        tune.report({"loss": float(metrics["final_losses"]["total"]), "step": int(cfg.steps)})


def tune_lr(size: str, lrs=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2), *, recipe: str | None = None, steps: int = 200,
            study: str | None = None, base=None, grace_steps: int | None = None, reduction_factor: int = 3,
            num_cpus: int | None = None, cpus_per_trial: float = 1.0, device: str | None = None,
            out: str | Path | None = None, storage: str | Path | None = None) -> dict:
    """ASHA search over `lrs` for the tokenizer encoder `size`; writes and returns the choice.

    Base config: `base` (a TokenizerConfig), else the tokenizer section of `study` (a name under
    sweeps/ or a YAML path), else TokenizerConfig defaults; encoder=size, steps=steps, recipe if given. The metric is the
    training loss (mean of the last logging window) at `steps`; trials are compared at equal steps,
    and ASHA stops the worse ones at rungs of grace_steps * reduction_factor^k.
    Writes `out` (default results/tune/lr-<recipe>-<size>.yaml) with `lr`, every trial, and a
    `tokenizer: {lr: ...}` block to merge into a study's tokenizer section.
    """
    import dataclasses

    import ray
    import yaml
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from vtp_core.config import TokenizerConfig
    from vtp_core.runtime import atomic_write_text

    if base is None and study:
        from sweeps.schema import load_study, study_path

        base = load_study(study_path(study)).tokenizer
    elif base is None:
        base = TokenizerConfig()
    base = dataclasses.replace(base, encoder=size, steps=int(steps), recipe=recipe or base.recipe)
    every = max(1, min(base.log_every, steps // 10 or 1))
    base = dataclasses.replace(base, log_every=every, ckpt_every=10 ** 9)
    grace = grace_steps or max(every, steps // 9)
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                 _temp_dir=ray_temp_dir())
        started = True
    storage = Path(storage or Path(os.environ.get("VTP_RESULTS", "results")) / "tune").resolve()
    name = f"lr-{base.recipe}-{size}"
    try:
        tuner = tune.Tuner(
            tune.with_resources(_lr_trial, {"cpu": cpus_per_trial, "gpu": 1 if (device or "").startswith("cuda") else 0}),
            param_space={"lr": tune.grid_search([float(x) for x in lrs]), "base": base, "device": device},
            tune_config=tune.TuneConfig(metric="loss", mode="min", scheduler=ASHAScheduler(
                time_attr="step", max_t=int(steps), grace_period=int(grace), reduction_factor=reduction_factor)),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0),
        )
        grid = tuner.fit()
        trials = []
        for r in grid:
            m = r.metrics or {}
            trials.append({"lr": float(r.config["lr"]), "loss": float(m.get("loss", float("inf"))),
                           "step": int(m.get("step", 0)), "diverged": bool(m.get("diverged", False)),
                           "stopped_early": int(m.get("step", 0)) < steps, "error": str(r.error) if r.error else None})
    finally:
        if started:
            ray.shutdown()
    finished = [t for t in trials if t["step"] >= steps and t["error"] is None and t["loss"] == t["loss"]]
    if not finished:
        raise RuntimeError(f"tune_lr({size}): no trial reached {steps} steps: {trials}")
    best = min(finished, key=lambda t: t["loss"])
    doc = {"encoder": size, "recipe": base.recipe, "lr": best["lr"], "steps": int(steps),
           "metric": f"training loss (mean of the last {every} steps) at step {steps}, lower is better",
           "batch_size": base.batch_size, "data": dataclasses.asdict(base.data),
           "trials": sorted(trials, key=lambda t: t["lr"]), "tokenizer": {"lr": best["lr"]}}
    out = Path(out) if out else storage / f"{name}.yaml"
    atomic_write_text(out, yaml.safe_dump(doc, sort_keys=False))
    doc["path"] = str(out)
    return doc
