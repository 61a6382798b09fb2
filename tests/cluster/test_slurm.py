"""SLURM dispatch through a real one-node SLURM (`scripts/slurm_local.sh up`), with cheap fake stages.

The tests poll the stage status files (the truth) with a timeout; they never wait on submitit's
`job.result()` (without accounting it can wait forever for a killed job).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import fake_stages  # noqa: E402

from cluster import slurm  # noqa: E402
from cluster.job import StageJob  # noqa: E402
from cluster.store import Store  # noqa: E402
from sweeps.errors import SpecError  # noqa: E402
from sweeps.ids import stage_id  # noqa: E402
from sweeps.plan import Plan, Stage  # noqa: E402
from vtp_core.runtime import Preempted, atomic_write_json  # noqa: E402

_LOCAL_CONF = Path(os.environ.get("VTP_SLURM_DIR", "/tmp/vtp-slurm")) / "slurm.conf"
if "SLURM_CONF" not in os.environ and _LOCAL_CONF.exists():
    os.environ["SLURM_CONF"] = str(_LOCAL_CONF)  # the cluster started by scripts/slurm_local.sh


def _why_no_slurm() -> str | None:
    if not shutil.which("sinfo"):
        return "sinfo not installed (start a test cluster: scripts/slurm_local.sh up)"
    if not slurm.slurm_available():
        return "no SLURM cluster answers sinfo (start one: scripts/slurm_local.sh up; export SLURM_CONF=...)"
    return None


_NO_SLURM = _why_no_slurm()
needs_slurm = pytest.mark.skipif(_NO_SLURM is not None, reason=str(_NO_SLURM))
ENTRIES = {"fake": "fake_stages:fake_run", "slow": "test_slurm:slow_run"}


# ------------------------------------------------------------------ a resumable fake stage
@dataclass(frozen=True)
class SlowCfg:
    name: str
    steps: int = 30
    step_s: float = 0.5


def slow_run(cfg, ctx):
    """Counts to cfg.steps, one step per step_s, saving progress every step; stops on request."""
    prog = ctx.out / "progress.json"
    step = json.loads(prog.read_text())["step"] if prog.exists() else 0
    with open(ctx.out / "attempts.log", "a") as fh:
        fh.write(f"{step} {os.environ.get('SLURM_JOB_ID')} {os.environ.get('SLURM_RESTART_COUNT', '0')}\n")
    while step < cfg.steps:
        if ctx.stop_requested():
            raise Preempted(f"stopped at step {step}")
        time.sleep(cfg.step_s)
        step += 1
        atomic_write_json(prog, {"step": step})
    return {"steps": step}


def slow_plan(name: str, steps: int = 30) -> Plan:
    p = Plan(study=fake_stages._Study())
    cfg = SlowCfg(name, steps)
    p.add(Stage("slow", stage_id("pretrain", cfg.name, cfg, []), cfg))
    return p


def wait_for(pred, timeout: float, what: str, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    sq = subprocess.run(["squeue", "-t", "all", "-r"], capture_output=True, text=True).stdout
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{sq}")


# ------------------------------------------------------------------ no cluster needed
def test_resources_typo_names_valid_keys():
    with pytest.raises(SpecError, match=r"unknown key 'pretrian' \(allowed: default, pretrain"):
        slurm.validate_resources({"pretrian": {"gpus_per_node": 1}})
    with pytest.raises(SpecError, match=r"resources.dit: unknown key 'gpu' \(allowed: partition, gpus_per_node"):
        slurm.validate_resources({"dit": {"gpu": 1}})
    with pytest.raises(SpecError, match=r"resources.default.timeout_min: expected an integer, got '1h'"):
        slurm.validate_resources({"default": {"timeout_min": "1h"}})
    res = slurm.validate_resources({"default": {"partition": "gpu", "additional_parameters": {"qos": "low"}},
                                    "dit": {"gpus_per_node": 4, "additional_parameters": {"constraint": "a100"}}})
    r = slurm.resources_for(res, "dit")
    assert r["partition"] == "gpu" and r["gpus_per_node"] == 4 and r["timeout_min"] == 60
    assert r["additional_parameters"] == {"qos": "low", "constraint": "a100"}
    assert slurm.resources_for(res, "fid")["additional_parameters"] == {"qos": "low"}


def test_dry_run_groups_by_level_and_kind_and_chunks(tmp_path):
    store = Store(tmp_path)
    plan = fake_stages.make_plan(3)
    fake_stages.install()
    StageJob(str(tmp_path), next(iter(plan.stages.values())))()  # chain 0's first stage is done already
    sub = slurm.submit_slurm(plan, store, {"fake": {"timeout_min": 5}}, max_array=2, dry_run=True, echo=lambda *a: None)
    assert not sub.jobs and [(x["level"], x["n"]) for x in sub.arrays] == [(0, 2), (0, 1), (1, 2), (1, 1), (2, 2)]
    # [0b 1a] [2a] | [0c 1b] [2b] | [1c 2c]: a chunk waits only for the chunks holding its upstream
    assert [x["dependency"] for x in sub.arrays] == [None, None, "afterany:<0>", "afterany:<1>", "afterany:<2>:<3>"]
    assert list(sub.skipped.values()) == ["done"]


def test_job_pickle_is_small():
    import pickle

    plan = fake_stages.make_plan(1)
    st = next(iter(plan.stages.values()))
    assert len(pickle.dumps(StageJob("/r", st, commit="abc", entries=ENTRIES))) < 4096


def test_job_runs_stage_in_process(tmp_path):
    fake_stages.install()
    store = Store(tmp_path)
    plan = fake_stages.make_plan(1)
    a, b, _ = plan.stages.values()
    assert StageJob(str(tmp_path), b, wait_upstream_s=0)() == "blocked"
    assert store.status(b.id)["reason"].startswith(f"blocked: upstream {a.id} is pending")
    assert StageJob(str(tmp_path), a)() == "done" and StageJob(str(tmp_path), b)() == "done"
    assert [json.loads(x)["event"] for x in (store.dir(a.id) / "jobs.jsonl").read_text().splitlines()] == ["start", "end"]


def test_reconcile_explains_running_stages_with_the_scheduler_state(tmp_path):
    store = Store(tmp_path)
    plan = fake_stages.make_plan(1)
    a, b, c = plan.stages
    store.set_status(a, "running", job_id="7_0", heartbeat=1.0)  # killed by the OOM killer
    store.set_status(b, "running", job_id="8", heartbeat=1.0)  # gone: node lost, MinJobAge passed
    store.set_status(c, "running", job_id="9", heartbeat=1.0)  # still running somewhere
    queue = {"7_0": {"state": "OUT_OF_MEMORY", "reason": "OutOfMemory"}, "9": {"state": "RUNNING", "reason": "None"}}
    rows = {r["stage"]: r for r in slurm.reconcile(plan, store, queue=queue)}
    assert rows[a]["verdict"] == "failed" and rows[a]["reason"] == "slurm job 7_0: OUT_OF_MEMORY (OutOfMemory)"
    assert store.state(a) == "failed" and store.status(a)["reason"].startswith("slurm job 7_0: OUT_OF_MEMORY")
    assert rows[b]["verdict"] == "stale" and "not known to the scheduler" in rows[b]["reason"]
    assert store.state(b) == "running", "unknown: reported, not rewritten"
    assert rows[c]["verdict"] == "alive"
    with store.lease(b):  # a live process holds the lease: alive whatever the scheduler says
        assert {r["stage"]: r["verdict"] for r in slurm.reconcile(plan, store, queue={})}[b] == "alive"
    # another host (flock is per host on many shared file systems): a fresh heartbeat means alive
    store.set_status(b, "running", host="other-node", heartbeat=time.time(), job_id=None)
    assert {r["stage"]: r["verdict"] for r in slurm.reconcile(plan, store, queue={})}[b] == "alive"
    store.set_status(b, "running", host="other-node", heartbeat=time.time() - 3600)
    assert {r["stage"]: r["verdict"] for r in slurm.reconcile(plan, store, queue={})}[b] == "stale"


# ------------------------------------------------------------------ the real cluster
@pytest.mark.slurm
@needs_slurm
def test_chains_through_slurm_failure_isolated_and_resubmit(tmp_path):
    store = Store(tmp_path / "results")
    plan = fake_stages.make_plan(3, fail="1b")
    # max_array=2: each level's array is chunked (2 + 1 tasks); a chunk depends only on the chunks
    # that hold its own upstream stages
    sub = slurm.submit_slurm(plan, store, {}, entries=ENTRIES, pythonpath=["tests/cluster"], max_array=2,
                             echo=lambda *a: None)
    assert len(sub.jobs) == 9 and [a["n"] for a in sub.arrays] == [2, 1, 2, 1, 2, 1], sub.summary()
    a = [x["job_id"] for x in sub.arrays]
    assert [x["dependency"] for x in sub.arrays] == [None, None, f"afterany:{a[0]}", f"afterany:{a[1]}",
                                                     f"afterany:{a[2]}", f"afterany:{a[3]}"]
    assert (Path(sub.code_dir) / "cluster" / "job.py").exists(), "jobs run from a code snapshot"
    ids = list(plan.stages)
    fail_id = ids[4]
    blocked_id = ids[5]
    # re-submitting while the first submission waits in the queue submits nothing twice
    again = slurm.submit_slurm(plan, store, {}, entries=ENTRIES, pythonpath=["tests/cluster"], echo=lambda *a: None)
    assert not again.jobs, again.summary()

    def settled():
        done = [s for s in ids if store.is_done(s)]
        return len(done) == 7 and store.state(fail_id) == "failed" and \
            str(store.status(blocked_id).get("reason", "")).startswith("blocked") and \
            all(r["verdict"] != "alive" for r in slurm.reconcile(plan, store))  # every job has left
    wait_for(settled, 120, "7 stages done, 1 failed, 1 blocked")
    for s in ids:
        st = store.status(s)
        if s not in (fail_id, blocked_id):
            assert st["attempts"] == 1 and st["job_id"] == sub.jobs[s], st
            assert st["job_id"].split("_")[0] in {a["job_id"] for a in sub.arrays}
    assert "told to fail" in store.status(fail_id)["reason"]
    start = json.loads((store.dir(ids[0]) / "jobs.jsonl").read_text().splitlines()[0])
    assert start["commit"] == sub.commit and start["code"] == sub.code_dir
    rows = {r["stage"]: r for r in slurm.reconcile(plan, store)}
    assert rows[blocked_id]["verdict"] == "blocked"
    # a partly finished study: only the failed stage and the one it blocked are submitted again
    third = slurm.submit_slurm(plan, store, {}, entries=ENTRIES, pythonpath=["tests/cluster"], echo=lambda *a: None)
    assert set(third.jobs) == {fail_id, blocked_id} and [x["n"] for x in third.arrays] == [1, 1]
    assert sum(v == "done" for v in third.skipped.values()) == 7
    for jid in third.jobs.values():
        subprocess.run(["scancel", jid.split("_")[0]], check=False)


@pytest.mark.slurm
@needs_slurm
@pytest.mark.parametrize("how", ["scontrol_requeue", "usr2_before_time_limit"])
def test_requeue_resumes_from_stage_folder(tmp_path, how):
    """SIGTERM (scontrol requeue, preemption) or SIGUSR2 (submitit's time-limit warning) while the
    stage runs: it checkpoints, the job is requeued, and the next attempt continues from disk."""
    store = Store(tmp_path / "results")
    plan = slow_plan(f"slow-{how}", steps=20)  # >= 10 s of work (docs/cluster.md#the-one-node-slurm)
    (sid,) = plan.stages
    after = fake_stages.FakeCfg(f"after-{how}")  # afterany must hold the child across the requeue
    down = plan.add(Stage("fake", stage_id("pretrain", after.name, after, [sid]), after, (("slow", sid),)))
    sub = slurm.submit_slurm(plan, store, {}, entries=ENTRIES, pythonpath=["tests/cluster"], echo=lambda *a: None)
    jid = sub.jobs[sid]
    prog = store.dir(sid) / "progress.json"
    wait_for(lambda: prog.exists() and json.loads(prog.read_text())["step"] >= 4, 60, "the stage to make progress", 0.2)
    if how == "scontrol_requeue":
        subprocess.run(["scontrol", "requeue", jid], check=True)
    else:
        subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    trail = store.dir(sid) / "jobs.jsonl"
    wait_for(lambda: store.is_done(sid) and trail.read_text().count('"end"') == 2, 120, "the requeued stage to finish")
    st = store.status(sid)
    attempts = [line.split() for line in (store.dir(sid) / "attempts.log").read_text().splitlines()]
    assert st["attempts"] == 2 and len(attempts) == 2, (st, attempts)
    assert attempts[0][0] == "0" and int(attempts[1][0]) >= 4, "the second attempt resumed from progress.json"
    assert store.metrics(sid)["steps"] == 20
    events = [json.loads(x) for x in (store.dir(sid) / "jobs.jsonl").read_text().splitlines()]
    assert [e.get("state") for e in events if e["event"] == "end"] == ["preempted", "done"]
    wait_for(lambda: store.is_done(down), 60, "the downstream stage")
    assert store.status(down)["attempts"] == 1 and store.status(down)["started"] >= st["ended"]


@pytest.mark.slurm
@needs_slurm
def test_killed_job_is_reconciled_and_resubmission_resumes(tmp_path):
    """SIGKILL (no chance to checkpoint or write status): the stage claims 'running'; reconcile
    records the scheduler's verdict, and a re-submission resumes from the last saved progress."""
    store = Store(tmp_path / "results")
    plan = slow_plan("slow-killed", steps=12)
    (sid,) = plan.stages
    kw = dict(entries=ENTRIES, pythonpath=["tests/cluster"], echo=lambda *a: None)
    jid = slurm.submit_slurm(plan, store, {}, **kw).jobs[sid]
    prog = store.dir(sid) / "progress.json"
    wait_for(lambda: prog.exists() and json.loads(prog.read_text())["step"] >= 3, 60, "progress", 0.2)
    os.kill(store.status(sid)["pid"], signal.SIGKILL)  # the stage's own process (one node: same machine)
    wait_for(lambda: not store.is_leased(sid) and slurm.queue_states().get(jid, {}).get("state") not in slurm.LIVE_STATES,
             60, "the job to end")
    assert store.state(sid) == "running"
    (row,) = slurm.reconcile(plan, store)
    assert row["verdict"] == "failed" and row["reason"].startswith(f"slurm job {jid}: "), row
    assert store.state(sid) == "failed"
    sub = slurm.submit_slurm(plan, store, {}, **kw)
    assert list(sub.jobs) == [sid]
    wait_for(lambda: store.is_done(sid), 90, "the re-submitted stage")
    starts = [int(line.split()[0]) for line in (store.dir(sid) / "attempts.log").read_text().splitlines()]
    assert store.status(sid)["attempts"] == 2 and starts[0] == 0 and starts[1] >= 3
