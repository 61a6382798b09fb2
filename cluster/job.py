"""What one scheduler job runs: one stage, through `run_stage`, resumable after requeue.

Why a tiny callable and not a closure: the pickle that submitit ships to the job must stay small
and must never carry state that goes stale (fairchem#1055: a requeued job resumed from a path
baked into its pickle). `StageJob` holds the results root, the stage (configs only) and a few
strings; everything else (the newest `ckpt/last.pt`, the upstream folders, the attempt count) is
read from the stage folder when the job starts, so a requeued job resumes from disk.

Signals. SLURM sends SIGTERM on `scontrol requeue`/preemption/`scancel`, and submitit asks for
SIGUSR2 some time before the time limit. While the stage runs, both only set the stop flag: a
trainer checkpoints to ckpt/last.pt and raises Preempted, `run_stage` records `preempted`. Then,
if the stop came from SIGUSR2, the signal is handed back to submitit's own handler, which calls
`checkpoint()` (this same callable: the state is on disk, not in the pickle) and requeues the
job; SIGTERM needs nothing more (SLURM requeues the job itself, or it was cancelled and a later
re-submission picks the `preempted` stage up).

Several tasks per job (`tasks_per_node` > 1: one task per GPU). Every task runs this callable. For the
data-parallel kinds (`pretrain`, `dit`) the tasks export torch's rendezvous variables (submitit's
TorchDistributedEnvironment, multi-node too) and form one process group; rank 0 alone takes the
stage lease and writes status/metrics, and tells the other ranks (broadcast) whether to join the
trainer or go home (stage done, busy, blocked). The trainers themselves write files on rank 0 only.
Other kinds run single-process on rank 0; the other tasks exit at once.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from cluster.store import Store, now

DATA_PARALLEL = frozenset({"pretrain", "dit"})  # stage kinds whose trainers run one task per GPU


def slurm_job_id() -> str | None:
    """`<array job>_<task>` for an array task (what squeue/sacct/submitit print), else SLURM_JOB_ID."""
    arr, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if arr and task:
        return f"{arr}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def held_elsewhere(store: Store, stage_id: str, stale_after_s: float | None = None) -> bool:
    """True if a live process holds the stage: its lease on this host, or (the flock is per host on
    many shared file systems) a `running` status from another host with a fresh heartbeat."""
    if store.is_leased(stage_id):
        return True
    st = store.status(stage_id)
    if st.get("status") != "running" or st.get("host") in (None, socket.gethostname()):
        return False
    if stale_after_s is None:
        from cluster.runner import HEARTBEAT_S

        stale_after_s = 3 * HEARTBEAT_S
    return time.time() - float(st.get("heartbeat") or 0) < stale_after_s


def _append_jsonl(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:  # one short line per write: O_APPEND keeps lines whole
        fh.write(json.dumps(row, sort_keys=True, default=str) + "\n")


def _ntasks() -> int:
    return int(os.environ.get("SLURM_NTASKS", "1"))


def _broadcast(word: str | None) -> str:
    """Rank 0's word to every rank of the job's process group (rank 0 passes it, the others None)."""
    import torch
    import torch.distributed as dist

    box = [word]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))  # on gloo beside nccl
    return box[0]


def _preempt_signal() -> signal.Signals:
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)


@dataclass
class StageJob(submitit.helpers.Checkpointable):
    """Run `stage` under `root`; returns run_stage's state ('done', 'failed', 'blocked', ...)."""

    root: str
    stage: Any  # sweeps.plan.Stage: kind, id, cfg (frozen dataclasses), upstream ids
    commit: str | None = None  # git commit of the submitting tree (+ "-dirty")
    entries: dict[str, str] = field(default_factory=dict)  # extra stage kinds: kind -> "module:fn"
    wait_upstream_s: float = 3600.0  # wait this long for an upstream that another live process runs
    device: str | None = None

    def __call__(self) -> str:
        from cluster import stages
        from cluster.runner import run_stage
        from vtp_core.runtime import StopFlag

        stages.ENTRY.update(self.entries)
        store = Store(self.root)
        st = self.stage
        job_id = slurm_job_id()
        trail = store.dir(st.id) / "jobs.jsonl"
        flag = StopFlag()
        from_scheduler = {"usr": False}
        sig = _preempt_signal()

        def on_usr(*_):
            from_scheduler["usr"] = True
            flag.requested = True

        self._wait_for_running_upstream(store)
        rank, group = self._join_tasks()
        old = signal.signal(sig, on_usr)
        try:
            if rank > 0:
                return self._follow(store, flag)
            announced = []

            def announce() -> None:
                announced.append(True)
                if group:
                    _broadcast("run")

            if not store.is_done(st.id) and all(store.is_done(u) for u in st.upstream_ids):
                _append_jsonl(trail, {"event": "start", "job_id": job_id, "host": socket.gethostname(),
                                      "pid": os.getpid(), "commit": self.commit, "tasks": _ntasks(),
                                      "code": os.environ.get("VTP_CODE_DIR"), "time": now()})
            state = run_stage(store, st, device=self.device, progress=False, job_id=job_id, stop=flag,
                              on_start=announce)
            if group and not announced:
                _broadcast(state)  # the other ranks wait for word: nothing to train
        finally:
            signal.signal(sig, old)
            if group:
                import torch.distributed as dist

                if dist.is_initialized():
                    dist.destroy_process_group()
        if state == "blocked":
            self._note_blocked(store)
        elif state != "busy":
            _append_jsonl(trail, {"event": "end", "job_id": job_id, "state": state, "time": now()})
        print(f"stage {st.id}: {state}", flush=True)
        if state == "preempted" and from_scheduler["usr"]:
            signal.raise_signal(sig)  # submitit's handler: checkpoint() -> requeue -> exit
        if state == "failed":
            # a non-zero exit makes the scheduler's state FAILED too (stable-pretraining#61)
            raise RuntimeError(f"stage {st.id} failed: {store.status(st.id).get('reason')}")
        return state

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue the same small callable: progress lives in the stage folder, not in the pickle."""
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    # ------------------------------------------------------------------ several tasks per job
    def _join_tasks(self) -> tuple[int, bool]:
        """(this task's rank, whether it is in a process group). One task: (0, False). A data-parallel
        stage: every task exports torch's env:// variables and joins the group. Any other stage runs
        on rank 0 as a single process (its env says WORLD_SIZE=1, so no trainer waits for peers)."""
        rank, n = int(os.environ.get("SLURM_PROCID", "0")), _ntasks()
        if n <= 1:
            return 0, False
        if self.stage.kind not in DATA_PARALLEL:
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            return rank, False
        from vtp_core.distributed import init_process_group
        from vtp_core.runtime import pick_device

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        init_process_group(cuda=pick_device(self.device).startswith("cuda"))
        return rank, True

    def _follow(self, store: Store, flag) -> str:
        """A rank > 0: wait for rank 0's word, then run the same trainer as a follower (no lease, no
        status; the trainer writes nothing on this rank). Its log goes to log.rank<r>.txt."""
        import traceback

        from cluster import stages
        from cluster.runner import stage_logger
        from vtp_core.runtime import Diverged, Preempted, StageContext, pick_device, stop_on_signals

        st, rank = self.stage, os.environ.get("RANK", "?")
        word = _broadcast(None) if _ntasks() > 1 and self.stage.kind in DATA_PARALLEL else "single-process stage"
        if word != "run":
            print(f"stage {st.id} rank {rank}: nothing to do ({word})", flush=True)
            return f"follower: {word}"
        log, handler = stage_logger(store.dir(st.id), f"log.rank{rank}.txt")
        dev = pick_device(self.device)
        inputs = {kind: store.dir(up) for kind, up in st.upstream}
        ctx = StageContext(out=store.dir(st.id), inputs=inputs, device=dev, progress=False, log=log,
                           stop_requested=flag, services=stages.services(st.kind, inputs, dev))
        try:
            with stop_on_signals(flag):
                stages.entry(st.kind)(st.cfg, ctx)
            state = "done"
        except Preempted:
            state = "preempted"
        except Diverged:
            state = "diverged"
        except Exception:
            log.error("rank %s failed:\n%s", rank, traceback.format_exc())
            raise
        finally:
            log.removeHandler(handler)
            handler.close()
        print(f"stage {st.id} rank {rank}: {state}", flush=True)
        return f"follower: {state}"

    # ------------------------------------------------------------------ helpers
    def _wait_for_running_upstream(self, store: Store) -> None:
        """An upstream stage that another live process holds (a local sweep, another submission)
        has no SLURM job to depend on: wait for its lease to drop instead of reporting 'blocked'."""
        deadline = time.time() + self.wait_upstream_s
        while time.time() < deadline:
            busy = [u for u in self.stage.upstream_ids if not store.is_done(u) and held_elsewhere(store, u)]
            if not busy:
                return
            time.sleep(5.0)

    def _note_blocked(self, store: Store) -> None:
        """Leave the reason in status.json (still 'pending') so `make status` can say why."""
        bad = {u: store.state(u) for u in self.stage.upstream_ids if not store.is_done(u)}
        reason = "blocked: upstream " + ", ".join(f"{u} is {s}" for u, s in bad.items())
        with store.lease(self.stage.id) as held:
            if held and store.state(self.stage.id) in ("pending",):
                store.set_status(self.stage.id, "pending", reason=reason, job_id=slurm_job_id())
        print(reason, file=sys.stderr, flush=True)
