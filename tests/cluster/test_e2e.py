"""An end-to-end micro study (2 cells, a few steps each) through the local executor, real stages."""
import dataclasses
import pandas as pd
import pytest

from cluster.cli import main as cli
from sweeps import costs
from sweeps.plan import plan
from sweeps.schema import load_study

pytestmark = pytest.mark.slow


def _budget(tmp_path, text) -> float:
    probe = tmp_path / "probe.yaml"
    probe.write_text(text.format(budget="1.0e15"))
    s = load_study(probe)
    per_step = max(costs.tokenizer_step_flops(dataclasses.replace(s.tokenizer, recipe=r)) for r in s.grid.recipe)
    return 3.5 * per_step  # clip_ssl_ae gets 3 steps, ae more


def test_micro_study_end_to_end(tmp_path, capsys, micro_study):
    study = tmp_path / "micro.yaml"
    study.write_text(micro_study.format(budget=f"{_budget(tmp_path, micro_study):.6e}"))
    results = tmp_path / "results"
    assert cli(["--results", str(results), "sweep", str(study), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "finished" in out

    df = pd.read_parquet(results / "micro" / "runs.parquet")
    assert len(df) == 2 and set(df.recipe) == {"ae", "clip_ssl_ae"}
    assert (df.status == "done").all(), df[["cell", "status", "reason"]]
    for col in ("study", "cell", "encoder", "encoder_params", "data_size", "tokenizer_flops", "dit_flops", "seed",
                "rfid", "linear_probe", "linear_probe_pre", "zero_shot", "gfid", "gfid_protocol", "status",
                "pretrain_id", "probe_id", "latents_id", "dit_id", "sample_id", "fid_id"):
        assert col in df.columns, col
    assert df.gfid.notna().all() and (df.gfid > 0).all()
    assert df.gfid_protocol.nunique() == 1, "one fixed downstream protocol for every cell"
    ae, vtp = df.set_index("recipe").loc["ae"], df.set_index("recipe").loc["clip_ssl_ae"]
    assert vtp.tokenizer_steps == 3 and ae.tokenizer_steps >= 3
    assert ae.tokenizer_flops <= ae.budget_flops and vtp.tokenizer_flops <= vtp.budget_flops
    assert pd.isna(ae.zero_shot) and vtp.zero_shot >= 0, "AE has no text tower: no zero-shot number"
    assert pd.isna(ae.zero_shot_resize) and vtp.zero_shot_resize == "squash", "the zero-shot protocol is in the table"
    assert (results / "micro" / "runs.csv").exists()

    # every stage folder follows the contract
    p = plan(load_study(study))
    for st in p.stages.values():
        d = results / "stages" / st.id
        for f in ("config.yaml", "status.json", "metrics.json"):
            assert (d / f).exists(), (st.id, f)

    # MLflow: one experiment for the study, one run per cell with its stage ids as tags
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("micro")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["cell"] for r in runs) == sorted(df.cell)
    assert all("fid_id" in r.data.tags and "gfid" in r.data.metrics for r in runs)

    # a second run does no work
    assert cli(["--results", str(results), "sweep", str(study), "--no-progress", "--no-mlflow"]) == 0
    out = capsys.readouterr().out
    assert "done " not in out.split("finished")[1] and "cached" in out

    # status from the files alone
    assert cli(["--results", str(results), "status", str(study)]) == 0
    assert "done" in capsys.readouterr().out


def test_anchor_cell_end_to_end(tmp_path, capsys, micro_study):
    """A released tokenizer (a random file in the released layout at the micro study's tiny geometry) runs
    through the local executor beside one trained cell: converted once, then latents, DiT, samples and gFID;
    its row is marked with its name and the report draws it without fitting it."""
    import released_layout as rl

    from vtp_core import registry
    from vtp_core.released import sha256_of

    ckpt = rl.save(rl.random_state_dict(registry.get("encoder", "tiny"), registry.get("text", "tiny"), patch=4,
                                        channels=8), tmp_path / "vtp-tiny.pt")
    text = micro_study.replace("recipe: [ae, clip_ssl_ae]", "recipe: [ae]") + (
        f"anchors:\n  - {{{{name: vtp-t, checkpoint: {ckpt}, sha256: {sha256_of(ckpt)}, size: tiny, text: tiny}}}}\n")
    study = tmp_path / "micro.yaml"
    study.write_text(text.format(budget=f"{_budget(tmp_path, text):.6e}"))
    results = tmp_path / "results"
    assert cli(["--results", str(results), "sweep", str(study), "--no-progress"]) == 0  # MLflow logs it too
    df = pd.read_parquet(results / "micro" / "runs.parquet")
    assert (df.status == "done").all(), df[["cell", "status", "reason"]]
    a = df.set_index("cell").loc["anchor-vtp-t"]
    assert a.anchor == "vtp-t" and a.recipe == "anchor" and pd.isna(a.tokenizer_flops)
    assert a.gfid > 0 and a.gfid_protocol == df.set_index("recipe").loc["ae"].gfid_protocol
    assert a.pretrain_id.startswith("anchor-tiny-") and (results / "stages" / a.pretrain_id / "tokenizer.pt").exists()
    assert a.rfid > 0 and a.zero_shot >= 0  # the probe runs on it too (the released text tower included)
    from analysis.report import write_report

    report = write_report(df, "micro", tmp_path / "report", n_boot=20, commit="c").read_text()
    assert "Released tokenizers (anchors)" in report and "vtp-t" in report
    assert "vtp-t" in (tmp_path / "report" / "gfid_vs_tokenizer_flops.svg").read_text()
    capsys.readouterr()
