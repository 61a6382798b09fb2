"""A real micro study through the one-node SLURM, with `scontrol requeue` of its running tokenizer
pre-training: the requeued job resumes from ckpt/last.pt and the study ends with exactly the metrics
of an uninterrupted local run."""
import dataclasses
import subprocess
from pathlib import Path

import pytest
from test_slurm import needs_slurm, wait_for

from cluster import collect, faults, slurm
from cluster.store import Store
from sweeps import costs
from sweeps.plan import plan as make_plan
from sweeps.schema import load_study

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@needs_slurm
def test_micro_study_on_slurm_with_requeue_matches_local(tmp_path, micro_study, monkeypatch):
    # CPU float results depend on the thread count: both runs use one thread (jobs get
    # OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK, 1 here), so any difference would come from the requeue
    probe = tmp_path / "probe.yaml"
    probe.write_text(micro_study.format(budget="1.0e15"))
    s = load_study(probe)
    per_step = costs.tokenizer_step_flops(dataclasses.replace(s.tokenizer, recipe="ae"))
    study = tmp_path / "micro.yaml"
    # one AE cell whose pre-training lasts well over 10 s (a shorter job may ignore the requeue: docs/cluster.md#the-one-node-slurm)
    study.write_text(micro_study.format(budget=f"{1500.5 * per_step:.6e}").replace("recipe: [ae, clip_ssl_ae]", "recipe: [ae]"))
    p = make_plan(load_study(study))
    pre = p.cells[0].stages["pretrain"]

    ref = tmp_path / "ref"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    faults.run_to_end(str(study), ref)

    store = Store(tmp_path / "slurm")
    sub = slurm.submit_slurm(p, store, {"default": {"cpus_per_task": 1}}, echo=lambda *a: None)
    assert pre in sub.jobs
    ckpt = store.dir(pre) / "ckpt" / "last.pt"
    wait_for(lambda: store.state(pre) == "running" and ckpt.exists(), 240, "pre-training to checkpoint")
    job = store.status(pre)["job_id"]
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait_for(lambda: all(store.is_done(sid) for sid in p.stages), 480, "the whole study to finish", poll=1.0)
    assert store.status(pre)["attempts"] >= 2, "the requeued pre-training ran again (and resumed)"
    collect.write(p, store)
    diff = faults.compare(ref, store.root, "micro")
    assert diff.empty, diff.to_string()


@needs_slurm
def test_two_tasks_per_job_train_data_parallel(tmp_path, micro_study, monkeypatch):
    """`tasks_per_node: 2` for the trainers: both tasks of each job join one gloo process group (rank 0
    holds the lease), the stages record world_size 2, and their losses equal one process's up to
    float reduction order; the single-process stages of the same study are untouched by the extra task."""
    study = tmp_path / "micro.yaml"
    study.write_text(micro_study.format(budget="2.0e11").replace("recipe: [ae, clip_ssl_ae]", "recipe: [ae]"))
    p = make_plan(load_study(study))
    cell = p.cells[0].stages
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ref = tmp_path / "ref"
    faults.run_to_end(str(study), ref)

    store = Store(tmp_path / "slurm")
    two = {"tasks_per_node": 2, "cpus_per_task": 1}
    slurm.submit_slurm(p, store, {"default": {"cpus_per_task": 1}, "pretrain": two, "dit": two, "probe": two},
                       echo=lambda *a: None)
    wait_for(lambda: all(store.is_done(sid) for sid in p.stages), 480, "the study to finish", poll=1.0)
    one = Store(ref)
    for kind in ("pretrain", "dit"):
        m, r = store.metrics(cell[kind]), one.metrics(cell[kind])
        assert m["world_size"] == 2 and r["world_size"] == 1, kind
        assert (store.dir(cell[kind]) / "log.rank1.txt").exists(), kind  # the second task trained too
        assert store.status(cell[kind])["attempts"] == 1
    # same curve up to float reduction order, which AdamW amplifies over hundreds of steps (a parameter
    # with an exactly-zero gradient gets lr-sized updates from rounding noise): the first logged window
    # agrees to 1e-3, the last to a few percent; the 3-step gloo tests pin the equivalence to 1e-5
    first = [_first_logged(st.dir(cell["pretrain"]) / "log.txt") for st in (store, one)]
    assert abs(first[0] - first[1]) <= 1e-3 * first[1], first
    a, b = store.metrics(cell["pretrain"])["final_losses"], one.metrics(cell["pretrain"])["final_losses"]
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 5e-2 * abs(b[k]) for k in a), (a, b)
    a, b = store.metrics(cell["dit"])["loss_start"], one.metrics(cell["dit"])["loss_start"]
    assert abs(a - b) <= 1e-3 * abs(b), (a, b)
    assert store.metrics(cell["probe"]).keys() == one.metrics(cell["probe"]).keys()


def _first_logged(log: Path) -> float:
    """The total loss of the first `pretrain step k/n ... total=x` line of a stage log."""
    line = next(ln for ln in log.read_text().splitlines() if "pretrain step" in ln)
    return float(line.split("total=")[1].split()[0])
