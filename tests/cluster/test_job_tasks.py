"""Several tasks per scheduler job, without a scheduler: two processes with SLURM task variables run the
same `StageJob`. A data-parallel stage kind forms one process group (rank 0 holds the lease and writes
status/metrics, rank 1 runs the trainer too); a finished stage sends rank 1 home without running;
other stage kinds run on rank 0 alone as a single process."""
from __future__ import annotations

import json
import os

import torch.multiprocessing as mp

from cluster.job import StageJob
from cluster.store import Store
from sweeps.ids import stage_id
from sweeps.plan import Stage

from fake_stages import FakeCfg


def dp_run(cfg, ctx):
    """A stand-in trainer: joins the process group through the trainers' own setup, all-reduces 1."""
    import torch
    import torch.distributed as dist

    from vtp_core import distributed

    distributed.setup(ctx.device)
    x = torch.ones(1)
    if distributed.world_size() > 1:
        dist.all_reduce(x)
    with open(ctx.out / f"ran.rank{os.environ.get('RANK', '0')}", "a") as fh:
        fh.write("x\n")
    return {"world_size": distributed.world_size(), "sum": float(x)}


ENTRIES = {"dit": "test_job_tasks:dp_run", "fake": "fake_stages:fake_run"}


def _task(rank: int, root: str, stage: Stage, port: int, out: str) -> None:
    os.environ.update(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS="2", SLURM_JOB_ID="77",
                      SLURM_JOB_NUM_NODES="1", SLURM_NODEID="0", SLURM_JOB_NODELIST="localhost",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1", _TEST_CLUSTER_="slurm")  # submitit: as in a job
    state = StageJob(root, stage, entries=ENTRIES, device="cpu")()
    with open(f"{out}.rank{rank}", "w") as fh:
        json.dump(state, fh)


def _run_job(tmp_path, stage: Stage, port: int, tag: str) -> list[str]:
    out = str(tmp_path / tag)
    mp.spawn(_task, args=(str(tmp_path / "results"), stage, port, out), nprocs=2, join=True)
    return [json.loads(open(f"{out}.rank{r}").read()) for r in (0, 1)]


def test_data_parallel_kind_runs_on_every_task(tmp_path, free_port):
    cfg = FakeCfg("dp")
    stage = Stage("dit", stage_id("dit", cfg.name, cfg, []), cfg)
    store = Store(tmp_path / "results")
    assert _run_job(tmp_path, stage, free_port, "first") == ["done", "follower: done"]
    assert store.metrics(stage.id)["world_size"] == 2 and store.metrics(stage.id)["sum"] == 2.0
    assert store.status(stage.id)["attempts"] == 1
    assert (store.dir(stage.id) / "ran.rank1").read_text() == "x\n"
    # the stage is done: rank 0 says so, rank 1 goes home without running the trainer
    assert _run_job(tmp_path, stage, free_port, "again") == ["done", "follower: done"]
    assert (store.dir(stage.id) / "ran.rank1").read_text() == "x\n"


def test_other_kinds_run_single_process_on_rank0(tmp_path, free_port, monkeypatch):
    log = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_STAGE_LOG", str(log))
    cfg = FakeCfg("single")
    stage = Stage("fake", stage_id("probe", cfg.name, cfg, []), cfg)
    assert _run_job(tmp_path, stage, free_port, "one") == ["done", "follower: single-process stage"]
    assert len(log.read_text().splitlines()) == 1  # ran once, not once per task
