"""The Ray executor with cheap fake stages: dependencies honoured, one failing cell does not stop the others."""
import os
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import fake_stages  # noqa: E402

from cluster.store import Store  # noqa: E402
from sweeps.errors import SpecError  # noqa: E402
import small_configs as small

ray = pytest.importorskip("ray")
ENTRIES = {"fake": "fake_stages:fake_run"}


def test_ray_runs_chains_failure_isolated_then_retries_only_failures(tmp_path, monkeypatch, request):
    from cluster.ray_exec import run_ray

    log = tmp_path / "runs.log"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FAKE_STAGE_LOG", str(log))  # Ray workers inherit the driver's environment
    tmp = Path("/tmp") / f"vtp-ray-test-{os.getpid()}"  # short: AF_UNIX socket paths < 107 bytes
    monkeypatch.setenv("VTP_RAY_TMP", str(tmp))
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    store = Store(tmp_path / "results")
    plan = fake_stages.make_plan(3, fail="1a")
    counts = run_ray(plan, store, {}, num_cpus=2, entries=ENTRIES, poll_s=0.2, echo=lambda *a: None)
    assert counts == {"done": 6, "failed": 1, "skipped": 2}
    assert not ray.is_initialized(), "run_ray shut down the Ray it started"
    ids = list(plan.stages)
    runs = [line.split()[0] for line in log.read_text().splitlines()]
    assert sorted(runs) == sorted(set(runs)) and len(runs) == 7, "each stage ran once"
    for chain in (ids[0:3], ids[6:9]):  # each chain ran in dependency order
        assert [runs.index(s) for s in chain] == sorted(runs.index(s) for s in chain)
    st = store.status(ids[0])
    assert st["job_id"].startswith("ray:") and st["attempts"] == 1
    assert store.status(ids[3])["reason"].startswith("ValueError: stage 1a was told to fail")
    counts2 = run_ray(plan, store, {}, num_cpus=2, entries=ENTRIES, poll_s=0.2, echo=lambda *a: None)
    assert counts2 == {"cached": 6, "failed": 1, "skipped": 2}
    assert store.status(ids[3])["attempts"] == 2


def test_ray_resources_typo_refused_before_ray_starts(tmp_path):
    from cluster.ray_exec import run_ray

    with pytest.raises(SpecError, match="unknown key 'cpus'"):
        run_ray(fake_stages.make_plan(1), Store(tmp_path), {"fake": {"cpus": 2}}, entries=ENTRIES)
    assert not ray.is_initialized()


@pytest.mark.parametrize("fields", [{"tasks_per_node": 8, "gpus_per_node": 8}, {"gpus_per_node": 4},
                                    {"nodes": 2}])
def test_multi_gpu_stage_refused_under_ray_before_ray_starts(tmp_path, fields):
    """Ray runs a stage as one process: a stage asking for N GPUs is refused, never run on one of them."""
    from cluster.ray_exec import run_ray

    with pytest.raises(SpecError, match=r"resources.fake: asks for .* EXECUTOR=ray runs each stage as one process"):
        run_ray(fake_stages.make_plan(1), Store(tmp_path), {"fake": fields}, entries=ENTRIES)
    assert not ray.is_initialized()


def test_cli_refuses_a_multi_gpu_study_under_ray(write_study, tmp_path, capsys):
    from cluster.cli import main

    path = write_study("resources: {pretrain: {tasks_per_node: 8, gpus_per_node: 8}}\n")
    assert main(["--results", str(tmp_path / "r"), "sweep", str(path), "--executor", "ray", "--dry"]) == 2
    err = capsys.readouterr().err
    assert "resources.pretrain: asks for 1 node(s) x 8 task(s) x 8 GPU(s)" in err and "\n" not in err.strip()
    assert main(["--results", str(tmp_path / "r"), "sweep", str(path), "--dry"]) == 0  # the local dry run plans it


@pytest.mark.slow
def test_tune_lr_asha_picks_an_lr_and_writes_yaml(tmp_path, monkeypatch, request):
    import yaml

    from cluster.ray_exec import tune_lr

    tmp = Path("/tmp") / f"vtp-ray-tune-{os.getpid()}"
    monkeypatch.setenv("VTP_RAY_TMP", str(tmp))
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "lr.yaml"

    base = small.tokenizer(batch_size=16, data=small.data(n_train=512))
    doc = tune_lr("tiny", lrs=(1e-4, 3e-3, 10.0), recipe="ae", steps=18, num_cpus=2, grace_steps=6, base=base,
                  out=out, storage=tmp_path / "tune")
    saved = yaml.safe_load(out.read_text())
    assert saved["lr"] == doc["lr"] == saved["tokenizer"]["lr"] and saved["lr"] in (1e-4, 3e-3)
    assert [t["lr"] for t in saved["trials"]] == [1e-4, 3e-3, 10.0]
    assert saved["lr"] == min((t for t in saved["trials"] if t["step"] >= 18), key=lambda t: t["loss"])["lr"]
    assert not ray.is_initialized()
