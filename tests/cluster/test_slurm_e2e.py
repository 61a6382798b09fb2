"""A real micro study through the one-node SLURM, with `scontrol requeue` of its running tokenizer
pre-training: the requeued job resumes from ckpt/last.pt and the study ends with exactly the metrics
of an uninterrupted local run."""
import dataclasses
import subprocess

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
    # one AE cell whose pre-training lasts well over 10 s (a shorter job may ignore the requeue, RESOURCES §6.1)
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
