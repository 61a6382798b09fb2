"""Run one stage under its lease, with the status protocol every executor shares.

pending → running (attempts+1, host, pid, job id, heartbeat) → metrics.json → done (last).
A StageError/exception → failed with a one-line reason (traceback in log.txt); Diverged →
diverged with step and loss; Preempted (SIGTERM/SIGUSR1, state checkpointed) → preempted, which
the next run resumes. The caller decides what to do with the returned state.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from cluster import stages as stage_registry
from cluster.store import Store
from vtp_core.runtime import Diverged, Preempted, StageContext, StageError, StopFlag, pick_device, stop_on_signals

HEARTBEAT_S = 15.0


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}"[:500]


def stage_logger(path: Path, file: str = "log.txt") -> tuple[logging.Logger, logging.Handler]:
    """A logger writing to `<stage folder>/<file>`; the caller removes and closes the handler."""
    log = logging.getLogger(f"vtp.stage.{path.name}.{file}")
    log.setLevel(logging.INFO)
    handler = logging.FileHandler(path / file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log, handler


def run_stage(store: Store, stage, device: str | None = None, progress: bool = True,
              job_id: str | None = None, stop: StopFlag | None = None,
              on_start: Callable[[], None] | None = None) -> str:
    """Run `stage` (a sweeps.plan.Stage) if needed. Returns the resulting state or 'busy'/'blocked'.
    `on_start` is called under the lease just before the entry function (a multi-task job's rank 0
    tells the other ranks to join there)."""
    if store.is_done(stage.id):
        return "done"
    for kind, up in stage.upstream:
        if not store.is_done(up):
            return "blocked"
    with store.lease(stage.id) as held:
        if not held:
            return "busy"
        st = store.status(stage.id)
        if st.get("status") == "done":  # finished by another process while we waited
            return "done"
        if st.get("status") == "diverged":
            return "diverged"
        out = store.dir(stage.id)
        inputs = {kind: store.dir(up) for kind, up in stage.upstream}
        store.write_config(stage.id, stage.kind, stage.cfg, dict(stage.upstream))
        dev = pick_device(device)
        store.set_status(stage.id, "running", stage=stage.kind, attempts=int(st.get("attempts", 0)) + 1,
                         host=socket.gethostname(), pid=os.getpid(), job_id=job_id or os.environ.get("SLURM_JOB_ID"),
                         started=time.time(), heartbeat=time.time(), device=dev, reason=None)
        log, handler = stage_logger(out)
        flag = stop or StopFlag()
        beat_stop = threading.Event()

        def beat() -> None:
            while not beat_stop.wait(HEARTBEAT_S):
                store.heartbeat(stage.id)

        t = threading.Thread(target=beat, daemon=True)
        t.start()
        try:
            with stop_on_signals(flag):
                ctx = StageContext(out=out, inputs=inputs, device=dev, progress=progress, log=log,
                                   stop_requested=flag, heartbeat=lambda info: store.heartbeat(stage.id, **info),
                                   services=stage_registry.services(stage.kind, inputs, dev))
                t0 = time.time()
                if on_start is not None:
                    on_start()
                metrics = stage_registry.entry(stage.kind)(stage.cfg, ctx)
                metrics = dict(metrics or {})
                metrics.setdefault("wall_s", round(time.time() - t0, 3))
            beat_stop.set()
            t.join()
            store.write_metrics(stage.id, metrics)
            store.set_status(stage.id, "done", ended=time.time())
            return "done"
        except Diverged as exc:
            beat_stop.set()
            log.error("diverged: %s", exc)
            store.set_status(stage.id, "diverged", ended=time.time(), reason=_one_line(exc),
                             diverged_step=exc.step, diverged_loss=str(exc.loss))
            return "diverged"
        except (Preempted, KeyboardInterrupt) as exc:
            beat_stop.set()
            log.warning("stopped: %s", exc)
            store.set_status(stage.id, "preempted", ended=time.time(), reason=_one_line(exc) or "preempted")
            if isinstance(exc, KeyboardInterrupt):
                raise
            return "preempted"
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, the sweep goes on
            beat_stop.set()
            log.error("failed:\n%s", traceback.format_exc())
            reason = _one_line(exc) if isinstance(exc, StageError) else f"{_one_line(exc)} (traceback in {out / 'log.txt'})"
            store.set_status(stage.id, "failed", ended=time.time(), reason=reason)
            return "failed"
        finally:
            beat_stop.set()
            log.removeHandler(handler)
            handler.close()
