"""MLflow index: one experiment per study, one run per cell, safe when several collects start at once."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).parents[2]


def _table(n: int, gfid: float) -> pd.DataFrame:
    return pd.DataFrame({"study": "s", "cell": [f"c{i}" for i in range(n)], "recipe": "ae", "encoder": "tiny",
                         "encoder_params": 1, "data_size": 0, "budget_flops": 1e12, "seed": 0, "tokenizer_steps": 3,
                         "gfid": gfid, "rfid": float("nan"), "gfid_protocol": "p", "status": "done", "reason": None,
                         "pretrain_id": [f"pretrain-{i}" for i in range(n)], "fid_id": [f"fid-{i}" for i in range(n)]})


def test_concurrent_collects_make_one_experiment_and_one_run_per_cell(tmp_path):
    tbl = tmp_path / "t.parquet"
    _table(5, 10.0).to_parquet(tbl)
    code = textwrap.dedent(f"""
        import pandas as pd
        from cluster.tracking import log_table
        log_table(pd.read_parquet({str(tbl)!r}), "s", {str(tmp_path / 'results')!r}, commit="abc", if_changed=False)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT) for _ in range(3)]
    assert all(p.wait(120) == 0 for p in procs)
    from mlflow.tracking import MlflowClient

    from cluster.tracking import log_table, tracking_uri

    client = MlflowClient(tracking_uri(tmp_path / "results"))
    exps = [e for e in client.search_experiments() if e.name == "s"]
    assert len(exps) == 1
    runs = client.search_runs([exps[0].experiment_id])
    assert sorted(r.data.tags["cell"] for r in runs) == [f"c{i}" for i in range(5)]
    r = runs[0]
    assert r.data.params["recipe"] == "ae" and r.data.tags["git_commit"] == "abc" and r.info.status == "FINISHED"
    assert r.data.metrics["gfid"] == 10.0 and r.data.tags["pretrain_id"].startswith("pretrain-")
    # re-collecting updates the same runs (metrics change, params stay immutable), never duplicates
    assert log_table(_table(5, 9.0), "s", tmp_path / "results", commit="abc") == 5
    assert log_table(_table(5, 9.0), "s", tmp_path / "results", commit="abc") == 0, "unchanged table: nothing to log"
    runs = client.search_runs([exps[0].experiment_id])
    assert len(runs) == 5 and all(r.data.metrics["gfid"] == 9.0 for r in runs)


def test_a_half_migrated_store_is_moved_aside_and_rebuilt(tmp_path):
    """A process killed while MLflow created its tables leaves e.g. `_alembic_tmp_metrics` behind, and every later
    open fails ("table _alembic_tmp_metrics already exists"). The default store is only an index of the runs
    table: it is moved aside (kept) and rebuilt, and every cell is logged."""
    import sqlite3

    from mlflow.tracking import MlflowClient

    from cluster.tracking import log_table, tracking_uri

    results = tmp_path / "results"
    results.mkdir()
    con = sqlite3.connect(results / "mlflow.db")
    con.execute("CREATE TABLE _alembic_tmp_metrics (key VARCHAR(250) NOT NULL)")
    con.commit()
    con.close()
    assert log_table(_table(3, 7.0), "s", results, commit="abc") == 3
    assert len(list(results.glob("mlflow.db.broken-*"))) == 1
    client = MlflowClient(tracking_uri(results))
    [exp] = [e for e in client.search_experiments() if e.name == "s"]
    assert sorted(r.data.tags["cell"] for r in client.search_runs([exp.experiment_id])) == ["c0", "c1", "c2"]


def test_a_store_of_another_mlflow_version_is_rebuilt_from_the_tables(tmp_path):
    """A store whose schema revision this MLflow does not know (another version wrote it; its server would refuse
    it) is moved aside when `make mlflow-ui` indexes the tables, and every study is logged again, although each
    study's marker said its table was logged already (that was into the old file)."""
    import sqlite3

    from mlflow.tracking import MlflowClient

    from cluster.tracking import index_all, log_table, tracking_uri

    results = tmp_path / "results"
    (results / "s").mkdir(parents=True)
    _table(3, 7.0).to_parquet(results / "s" / "runs.parquet")
    assert log_table(_table(3, 7.0), "s", results, commit="abc") == 3
    assert index_all(results) == 0, "nothing changed: nothing to log"
    con = sqlite3.connect(results / "mlflow.db")
    con.execute("UPDATE alembic_version SET version_num = 'f4a9b2c7d1e6'")  # a revision from another MLflow
    con.commit()
    con.close()
    # a new process, as `make mlflow-ui` is (MLflow checks a store's schema once per process and URI)
    code = f"from cluster.tracking import index_all; print(index_all({str(results)!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0 and out.stdout.split()[-1] == "3", out.stdout + out.stderr
    assert len(list(results.glob("mlflow.db.broken-*"))) == 1
    client = MlflowClient(tracking_uri(results))
    [exp] = [e for e in client.search_experiments() if e.name == "s"]
    assert sorted(r.data.tags["cell"] for r in client.search_runs([exp.experiment_id])) == ["c0", "c1", "c2"]


def test_other_metrics_are_logged_with_their_protocols(tmp_path):
    from mlflow.tracking import MlflowClient

    from cluster.tracking import log_table, tracking_uri

    df = _table(2, 10.0).assign(fd_dinov2=[30.0, 31.0], fd_dinov2_protocol="d1", precision=float("nan"),
                                precision_protocol=None)
    assert log_table(df, "s", tmp_path / "results", commit="abc") == 2
    client = MlflowClient(tracking_uri(tmp_path / "results"))
    exp = client.get_experiment_by_name("s")
    for r in client.search_runs([exp.experiment_id]):
        assert r.data.metrics["fd_dinov2"] in (30.0, 31.0) and r.data.tags["fd_dinov2_protocol"] == "d1"
        assert "precision" not in r.data.metrics and "precision_protocol" not in r.data.tags
