"""`make mlflow-ui` after a study: the server starts on 127.0.0.1 at a free port, serves the study's runs through
MLflow's REST API with their params and metrics, and stops when its process group (the id the test started) is
signalled."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _get(url: str, body: dict | None = None) -> dict | str:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    return json.loads(text) if text.startswith("{") else text


def _micro_study_collected(tmp_path: Path, micro_study: str) -> tuple[Path, dict[str, float]]:
    """The micro study planned for real, its stages marked done with known metrics (no training: the UI is what
    is tested), and `make collect`'s command run on it. Returns (results folder, gFID per cell)."""
    from cluster.cli import main as cli
    from cluster.store import Store
    from sweeps.plan import plan
    from sweeps.schema import load_study

    study = tmp_path / "micro.yaml"
    study.write_text(micro_study.format(budget="1.0e13"))
    results = tmp_path / "results"
    store, gfid = Store(results), {}
    for i, c in enumerate(plan(load_study(study)).cells):
        for sid in c.stages.values():
            store.set_status(sid, "done")
        gfid[c.id] = 40.0 + i
        store.write_metrics(c.stages["fid"], {"gfid": {"value": gfid[c.id], "protocol_hash": "p"}})
        store.write_metrics(c.stages["probe"], {"rfid": {"value": 5.0 + i, "protocol_hash": "r"},
                                                "linear_probe": {"value": 0.5}})
    assert cli(["--results", str(results), "collect", str(study)]) == 0
    return results, gfid


def _check_runs(base: str, proc: subprocess.Popen, log: Path, gfid: dict[str, float]) -> None:
    """Wait for the server's /health, then read the study's runs through the REST API and check them."""
    deadline = time.time() + 180
    while True:
        assert proc.poll() is None, f"make mlflow-ui exited with {proc.returncode}: {log.read_text()}"
        try:
            if _get(f"{base}/health") == "OK":
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        assert time.time() < deadline, f"no answer on {base}: {log.read_text()}"
        time.sleep(0.5)
    exp = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=micro")["experiment"]
    runs = _get(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})
    runs = runs["runs"]
    assert len(runs) == len(gfid) == 2
    seen = {}
    for r in runs:
        params = {p["key"]: p["value"] for p in r["data"]["params"]}
        metrics = {m["key"]: m["value"] for m in r["data"]["metrics"]}
        tags = {t["key"]: t["value"] for t in r["data"]["tags"]}
        assert params["encoder"] == "tiny" and params["seed"] == "0" and params["data_size"] == "512", params
        assert r["info"]["status"] == "FINISHED" and tags["status"] == "done", (r["info"], tags)
        seen[tags["cell"]] = (params["recipe"], metrics["gfid"], metrics["linear_probe"])
    assert {cell: g for cell, (_, g, _) in seen.items()} == gfid, "each cell's gFID, as collected"
    assert sorted(rec for rec, _, _ in seen.values()) == ["ae", "clip_ssl_ae"]
    assert all(lp == 0.5 for _, _, lp in seen.values())


def test_make_mlflow_ui_serves_the_runs_of_a_micro_study(tmp_path, micro_study, free_port):
    results, gfid = _micro_study_collected(tmp_path, micro_study)
    with open(tmp_path / "ui.log", "w") as log:
        proc = subprocess.Popen(["make", "--no-print-directory", "mlflow-ui", f"PY={sys.executable}",
                                 f"RESULTS={results}", f"PORT={free_port}"], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _check_runs(f"http://127.0.0.1:{free_port}", proc, tmp_path / "ui.log", gfid)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # make, the server it became and the server's workers
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
    deadline = time.time() + 30
    while True:  # the workers leave with their group; the port is free again
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", free_port)) != 0:
                break
        assert time.time() < deadline, f"something still answers on port {free_port}"
        time.sleep(0.5)
