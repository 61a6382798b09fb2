"""The run store: one folder per stage id, status files, atomic writes, and a per-stage lease.

Why files and not a database: every executor (this process, a SLURM array task, a Ray worker) and
every reader (`make status`, `make collect`) agrees on the truth by reading the same folder, and a
killed process can never leave it inconsistent because every file is written to a temp file and
renamed. `done` is written last, after metrics.json; a `done` stage is never run again.

The lease is an exclusive `fcntl.flock` on `<stage>/.lock`, held while the stage runs: the kernel
drops it when the holder dies (even by SIGKILL), so two sweeps started at once run each stage
exactly once and a crashed run never blocks a re-run. `status.json` also records host, pid, job id
and a heartbeat for humans and for the scheduler reconciliation.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from vtp_core.cfg import to_dict
from vtp_core.runtime import atomic_write_json, atomic_write_text

STATUSES = ("pending", "running", "done", "failed", "diverged", "preempted")
FINAL = ("done", "diverged")  # not retried by a re-run (diverged is deterministic)


def now() -> float:
    return round(time.time(), 3)


class Store:
    def __init__(self, root: str | Path = "results"):
        self.root = Path(root)
        self.stages_dir = self.root / "stages"

    # ------------------------------------------------------------ paths
    def dir(self, stage_id: str) -> Path:
        return self.stages_dir / stage_id

    def study_dir(self, study: str) -> Path:
        return self.root / study

    # ------------------------------------------------------------ status
    def status(self, stage_id: str) -> dict:
        path = self.dir(stage_id) / "status.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {"status": "pending", "attempts": 0}
        except json.JSONDecodeError:  # cannot happen with atomic writes; be safe anyway
            return {"status": "pending", "attempts": 0, "reason": "unreadable status.json"}

    def state(self, stage_id: str) -> str:
        return self.status(stage_id).get("status", "pending")

    def is_done(self, stage_id: str) -> bool:
        return self.state(stage_id) == "done"

    def set_status(self, stage_id: str, status: str, **fields: Any) -> dict:
        assert status in STATUSES, status
        st = self.status(stage_id)
        st.update(fields)
        st["status"] = status
        st["id"] = stage_id
        st["updated"] = now()
        atomic_write_json(self.dir(stage_id) / "status.json", st)
        return st

    def heartbeat(self, stage_id: str, **info: Any) -> None:
        st = self.status(stage_id)
        if st.get("status") == "running" and st.get("pid") == os.getpid():
            st["heartbeat"] = now()
            st.update(info)
            atomic_write_json(self.dir(stage_id) / "status.json", st)

    # ------------------------------------------------------------ config / metrics
    def write_config(self, stage_id: str, kind: str, cfg: Any, upstream: dict[str, str]) -> None:
        doc = {"stage": kind, "id": stage_id, "upstream": upstream, "config": to_dict(cfg)}
        atomic_write_text(self.dir(stage_id) / "config.yaml", yaml.safe_dump(doc, sort_keys=False))

    def write_metrics(self, stage_id: str, metrics: dict) -> None:
        atomic_write_json(self.dir(stage_id) / "metrics.json", metrics)

    def metrics(self, stage_id: str) -> dict:
        try:
            return json.loads((self.dir(stage_id) / "metrics.json").read_text())
        except FileNotFoundError:
            return {}

    # ------------------------------------------------------------ lease
    @contextlib.contextmanager
    def lease(self, stage_id: str) -> Iterator[bool]:
        """Yield True if this process now holds the stage's exclusive lease, else False (busy)."""
        d = self.dir(stage_id)
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def is_leased(self, stage_id: str) -> bool:
        """True if some live process holds the lease right now."""
        lock = self.dir(stage_id) / ".lock"
        if not lock.exists():
            return False
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)
