"""Run store: atomic writes, status protocol, the lease that lets two sweeps run each stage once."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fake_stages  # noqa: E402

from cluster.collect import status_counts  # noqa: E402
from cluster.local import run_local  # noqa: E402
from cluster.runner import run_stage  # noqa: E402
from cluster.store import Store  # noqa: E402
from vtp_core import runtime  # noqa: E402

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


@pytest.fixture(autouse=True)
def _fake():
    fake_stages.install()


def test_atomic_write_interrupted_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "status.json"
    runtime.atomic_write_json(target, {"status": "running"})

    def boom(fd):
        raise OSError("disk vanished mid-write")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        runtime.atomic_write_json(target, {"status": "done"})
    assert json.loads(target.read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"], "no temp file left behind"


def test_status_protocol_done_last_and_failure_reason(tmp_path):
    store = Store(tmp_path)
    plan = fake_stages.make_plan(1, fail="0b")
    states = [run_stage(store, st, progress=False) for st in plan.stages.values()]
    assert states == ["done", "failed", "blocked"]
    a, b, c = plan.stages
    st = store.status(a)
    assert st["status"] == "done" and st["attempts"] == 1 and st["pid"] == os.getpid()
    assert json.loads((store.dir(a) / "metrics.json").read_text()) == {"value": 2, "wall_s": st and store.metrics(a)["wall_s"]}
    assert (store.dir(a) / "config.yaml").exists()
    assert store.status(b)["reason"].startswith("ValueError: stage 0b was told to fail")
    assert "Traceback" in (store.dir(b) / "log.txt").read_text()
    assert store.state(c) == "pending"


def test_failed_cell_does_not_stop_others(tmp_path):
    store = Store(tmp_path)
    plan = fake_stages.make_plan(3, fail="1a")
    counts = run_local(plan, store, progress=False, echo=lambda *a: None)
    assert counts == {"done": 6, "failed": 1, "skipped": 2}
    counts2 = run_local(plan, store, progress=False, echo=lambda *a: None)  # re-run: retry the failure only
    assert counts2["cached"] == 6 and counts2["failed"] == 1
    table, failures = status_counts(plan, store)
    assert len(failures) == 1 and failures[0][1] == "failed"
    assert failures[0][2].startswith("ValueError: stage 1a was told to fail (traceback in ")
    assert int(table.loc["fake", "done"]) == 6


def _sweep_script(root: Path, log: Path, sleep: float, n: int) -> str:
    return textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(HERE)!r})
        os.environ["FAKE_STAGE_LOG"] = {str(log)!r}
        os.environ["FAKE_STAGE_SLEEP"] = {str(sleep)!r}
        import fake_stages
        fake_stages.install()
        from cluster.local import run_local
        from cluster.store import Store
        plan = fake_stages.make_plan({n})
        c = run_local(plan, Store({str(root)!r}), progress=False, poll_s=0.05, echo=lambda *a: None)
        print(dict(c))
    """)


def test_two_concurrent_sweeps_run_each_stage_once(tmp_path):
    log = tmp_path / "runs.log"
    script = _sweep_script(tmp_path / "results", log, sleep=0.3, n=3)
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    lines = log.read_text().split()
    stage_runs = lines[0::2]
    pids = set(lines[1::2])
    assert sorted(stage_runs) == sorted(set(stage_runs)) and len(stage_runs) == 9, "each stage ran exactly once"
    assert len(pids) == 2, "both sweeps did some of the work"
    store = Store(tmp_path / "results")
    plan = fake_stages.make_plan(3)
    assert all(store.is_done(s) for s in plan.stages)


def test_sigkill_mid_stage_leaves_no_done_and_rerun_finishes(tmp_path):
    log = tmp_path / "runs.log"
    script = _sweep_script(tmp_path / "results", log, sleep=5.0, n=1)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    store = Store(tmp_path / "results")
    plan = fake_stages.make_plan(1)
    first = next(iter(plan.stages))
    deadline = time.time() + 60
    while store.state(first) != "running" and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert store.state(first) == "running" and not (store.dir(first) / "metrics.json").exists()
    assert not store.is_leased(first), "the kernel dropped the dead process's lease"
    _, failures = status_counts(plan, store)
    assert failures[0][:2] == (first, "stale")
    counts = run_local(plan, store, progress=False, echo=lambda *a: None)
    assert counts["done"] == 3 and store.status(first)["attempts"] == 2
