"""MLflow as the index of a study: one experiment per study, one run per cell.

`python -m cluster.tracking ui --results R --port P` (`make mlflow-ui`) indexes every results/<study>/runs.parquet
first, then replaces itself with `mlflow ui` on the same store, so the browser shows the current tables. The
writes and the server are one MLflow installation (full `mlflow`, pinned in pyproject.toml): a store written by
another MLflow version can have a schema this server refuses, and such a store is moved aside and rebuilt here.

Why it is written from the results table after dispatch (and not by every job): with many SLURM
jobs starting at once, experiment creation races and SQLite 'database is locked' are the classic
failures (mlflow#10334, adept#292). Here one process creates the experiment (get-or-create with
retries), finds each cell's run by its `cell` tag (so re-collecting updates, never duplicates),
logs immutable cell axes as params once, and everything mutable as metrics/tags.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

PARAMS = ("recipe", "encoder", "encoder_params", "data_size", "budget_flops", "seed", "tokenizer_steps")
METRICS = ("gfid", "rfid", "linear_probe", "linear_probe_pre", "zero_shot", "zero_shot_top5", "tokenizer_flops",
           "dit_flops", "sfid", "inception_score", "inception_score_std", "precision", "recall", "fd_dinov2")
OTHER_PROTOCOLS = ("sfid", "inception_score", "precision", "recall", "fd_dinov2")  # tagged when computed


def git_commit(cwd: str | Path = ".") -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5,
                             check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True,
                               text=True, timeout=5, check=False).stdout.strip()
        return (sha or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tracking_uri(results: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(results).resolve() / 'mlflow.db'}"


def _experiment(client, name: str, tries: int = 5) -> str:
    for i in range(tries):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name)
        except Exception:  # noqa: BLE001 - created concurrently, or DB busy: look again
            time.sleep(0.2 * (i + 1))
    raise RuntimeError(f"could not get or create MLflow experiment {name!r}")


def _client(results: Path):
    """An MlflowClient on the study's tracking store. The default store (results/mlflow.db) is only an index of
    the runs table, which is re-logged in full: when a killed process left it half-migrated (MLflow creates and
    upgrades its tables in several transactions, e.g. `table _alembic_tmp_metrics already exists`), it is moved
    aside as mlflow.db.broken-<UTC time> (nothing is deleted) and created anew. A store given by
    MLFLOW_TRACKING_URI is the user's and is never moved."""
    import logging

    from mlflow.tracking import MlflowClient

    uri = tracking_uri(results)
    try:
        client = MlflowClient(uri)  # opens the store: creates or upgrades its tables
        client.search_experiments(max_results=1)
        return client
    except Exception as exc:  # any store error: see below
        db = Path(results).resolve() / "mlflow.db"
        if os.environ.get("MLFLOW_TRACKING_URI") or not db.exists():
            raise
        _forget_engine(uri)  # MLflow keeps one engine per URI, its connection still on the broken file
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for suffix in ("", "-journal", "-wal", "-shm"):
            part = db.with_name(db.name + suffix)
            if part.exists():
                part.rename(db.with_name(f"mlflow.db.broken-{stamp}{suffix}"))
        for marker in Path(results).glob("*/.mlflow_logged"):  # what they say was logged went with the old file
            marker.unlink(missing_ok=True)
        logging.getLogger("vtp.tracking").warning(
            "MLflow store %s could not be opened (%s); moved aside as mlflow.db.broken-%s, logging into a new one",
            db, str(exc).splitlines()[0][:200], stamp)
        return MlflowClient(uri)


def _forget_engine(uri: str) -> None:
    """Dispose of MLflow's cached SQLAlchemy engine for `uri` (SqlAlchemyStore._engine_map, private: absent in
    another MLflow version, then nothing to forget)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)
    if engine is not None:
        engine.dispose()


def log_table(df: pd.DataFrame, study: str, results: Path, commit: str | None = None, if_changed: bool = True) -> int:
    """Create/update one MLflow run per row. Returns the number of runs touched (0 when the table is
    unchanged since the last successful log, so re-running a finished study stays instant)."""
    import fcntl

    Path(results).mkdir(parents=True, exist_ok=True)
    with open(Path(results) / ".mlflow.lock", "w") as lock:  # concurrent collects take turns (no duplicate runs)
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _log_table(df, study, Path(results), commit, if_changed)


def _log_table(df: pd.DataFrame, study: str, results: Path, commit: str | None, if_changed: bool) -> int:
    import hashlib
    import logging

    from vtp_core.runtime import atomic_write_text

    marker = Path(results) / study / ".mlflow_logged"
    digest = hashlib.sha256((tracking_uri(results) + df.to_csv(index=False)).encode()).hexdigest()
    if if_changed and marker.exists() and marker.read_text().strip() == digest:
        return 0

    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from mlflow.entities import Metric, Param, RunTag

    client = _client(results)
    exp_id = _experiment(client, study)
    commit = commit or git_commit()
    existing = {r.data.tags.get("cell"): r.info.run_id
                for r in client.search_runs([exp_id], max_results=50000)}
    ts = int(time.time() * 1000)
    for row in df.to_dict("records"):
        cell = row["cell"]
        run_id = existing.get(cell)
        params = []
        if run_id is None:
            run_id = client.create_run(exp_id, run_name=cell, tags={"cell": cell}).info.run_id
            params = [Param(k, str(row[k])) for k in PARAMS if k in row]
        metrics = [Metric(k, float(row[k]), ts, 0) for k in METRICS
                   if row.get(k) is not None and not (isinstance(row[k], float) and math.isnan(row[k]))]
        tags = [RunTag("git_commit", commit), RunTag("status", str(row["status"])),
                RunTag("gfid_protocol", str(row.get("gfid_protocol"))), RunTag("rfid_protocol", str(row.get("rfid_protocol"))),
                RunTag("zero_shot_resize", str(row.get("zero_shot_resize")))]
        tags += [RunTag(k, str(v)) for k, v in row.items() if k.endswith("_id")]
        tags += [RunTag(f"{m}_protocol", str(row[f"{m}_protocol"])) for m in OTHER_PROTOCOLS
                 if row.get(f"{m}_protocol") is not None]
        if row.get("reason"):
            tags.append(RunTag("reason", str(row["reason"])[:4000]))
        client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        state = {"done": "FINISHED", "failed": "FAILED", "diverged": "FAILED"}.get(row["status"])
        if state:
            client.set_terminated(run_id, state)
    atomic_write_text(marker, digest + "\n")
    return len(df)


def index_all(results: Path) -> int:
    """Log every study's runs table under `results` (results/<study>/runs.parquet) into the tracking store; the
    store is opened first, so one that cannot be opened is moved aside and rebuilt from the tables. Returns the
    number of runs touched (0 when every table was logged already)."""
    import fcntl

    Path(results).mkdir(parents=True, exist_ok=True)
    with open(Path(results) / ".mlflow.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _client(Path(results))
    touched = 0
    for table in sorted(Path(results).glob("*/runs.parquet")):
        touched += log_table(pd.read_parquet(table), table.parent.name, Path(results))
    return touched


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster.tracking", description="the MLflow index of the studies")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ui = sub.add_parser("ui", help="index every study's runs table, then serve the MLflow UI on 127.0.0.1")
    ui.add_argument("--results", default=os.environ.get("VTP_RESULTS", "results"), help="results folder")
    ui.add_argument("--port", type=int, default=5000)
    args = ap.parse_args(argv)
    results = Path(args.results)
    n = index_all(results)
    uri = tracking_uri(results)
    print(f"MLflow index {uri}: {n} runs updated; serving http://127.0.0.1:{args.port} (Ctrl-C stops it)", flush=True)
    # exec: the server keeps this process id, so whoever started `make mlflow-ui` stops it by that id
    # one worker: a local browser is one user, and each worker imports MLflow anew before the server answers
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(args.port), "--workers", "1"]
    os.execv(sys.executable, cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
