"""Bad study specs are refused before any work, with one line naming file, field, value and what is allowed."""

from pathlib import Path

import pytest

from cluster.cli import main as cli
from sweeps.errors import SpecError
from sweeps.schema import load_study, study_path

GOOD = """
name: ok
grid:
  recipe: [ae, clip_ssl_ae]
  encoder: [tiny]
  data_size: [0]
  budget_flops: [1.0e12]
  seed: [0, 1]
tokenizer: {batch_size: 16}
dit: {steps: 10}
"""

BAD = [  # (yaml, substrings the one-line error must contain)
    ("grid: {recipe: [ae]}\nfoo: 1\n", ["unknown key 'foo'", "allowed:", "grid"]),
    ("grid: {recipe: [ae], colour: [red]}\n", ["grid", "unknown key 'colour'", "allowed:", "budget_flops"]),
    ("grid: {recipe: []}\n", ["grid.recipe", "empty list"]),
    ("grid: {recipe: [vqgan]}\n", ["grid.recipe[0]", "'vqgan'", "allowed:", "clip_ssl_ae"]),
    ("grid: {encoder: [XXL]}\n", ["grid.encoder[0]", "'XXL'", "allowed:"]),
    ("grid: {budget_flops: [lots]}\n", ["grid.budget_flops[0]", "expected a number", "'lots'"]),
    ("grid: {seed: [0.5]}\n", ["grid.seed[0]", "expected an integer", "0.5"]),
    ("grid: {budget_flops: [-1.0e12]}\n", ["grid.budget_flops[0]", "must be > 0"]),
    ("tokenizer: {batch_size: big}\n", ["tokenizer.batch_size", "expected an integer", "'big'"]),
    ("tokenizer: {recipe: ae}\n", ["tokenizer.recipe", "set by the grid"]),
    ("tokenizer: {lr: 0}\n", ["tokenizer.lr", "must be > 0"]),
    ("tokenizer: {rec_fraction: 2.0}\n", ["tokenizer.rec_fraction", "(0, 1]", "2.0"]),
    ("dit: {size: giant}\n", ["dit.size", "'giant'", "allowed:"]),
    ("dit: {ema: [0.9]}\n", ["dit.ema", "expected a number"]),
    ("data: {dataset: cifar}\n", ["data.dataset", "'cifar'", "fashion_mnist"]),
    ("data: {dataset: imagefolder}\n", ["data.path", "required"]),
    ("data: {storage: disk}\n", ["data.storage", "'disk'", "lazy"]),
    ("eval_data: {dataset: tar, path: '/d/{0..9}.tar'}\n", ["eval_data.path", "shard pattern", "no test split"]),
    ("sample: {sampler: heun}\n", ["sample.sampler", "'heun'", "euler, dopri5"]),
    ("probe: {zero_shot_resize: stretch}\n", ["probe.zero_shot_resize", "'stretch'", "allowed: squash, center_crop"]),
    ("grid: [1, 2]\n", ["grid", "expected a mapping"]),
    ("- just\n- a list\n", ["expected a mapping"]),
    ("grid: {recipe: [ae\n", ["not valid YAML"]),
    ("data: {image_size: 30}\n", ["data.image_size", "multiple of tokenizer.patch"]),
    ("grid: {recipe: [ae, ae]}\n", ["grid.recipe", "duplicate"]),
]


@pytest.mark.parametrize("text,needles", BAD, ids=[b[1][0] for b in BAD])
def test_bad_spec_refused_with_one_line(write_study, text, needles):
    path = write_study(text)
    with pytest.raises(SpecError) as err:
        load_study(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_cli_exit_code_2_and_one_line(write_study, capsys, tmp_path):
    path = write_study("grid: {recipe: [vqgan]}\n")
    assert cli(["--results", str(tmp_path / "r"), "sweep", str(path), "--dry"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "vqgan" in err
    assert not (tmp_path / "r").exists(), "nothing may be written for a refused spec"


def test_unknown_study_name_lists_studies(capsys):
    with pytest.raises(SpecError, match="studies: .*demo"):
        study_path("nosuchstudy")


def test_unknown_executor_refused(capsys, tmp_path):
    assert cli(["--results", str(tmp_path), "sweep", "demo", "--executor", "kubernetes"]) == 2
    assert "allowed: local, slurm, ray" in capsys.readouterr().err


def test_impossible_budget_refused(write_study):
    from sweeps.plan import plan

    path = write_study(GOOD.replace("[1.0e12]", "[10.0]"))
    with pytest.raises(SpecError, match=r"grid.budget_flops: 10 is less than one training step"):
        plan(load_study(path))


def test_good_spec_loads(write_study):
    s = load_study(write_study(GOOD))
    assert s.name == "ok" and s.n_cells == 4
    assert s.tokenizer.batch_size == 16 and s.dit.steps == 10
    assert s.latents.data == s.eval_data


@pytest.mark.parametrize("name", ["demo", "params", "data", "flops", "recipes"])
def test_shipped_studies_load(name, tmp_path):
    """A shipped study names the files a user supplies; as shipped it stops at the first one, and with an
    LPIPS file given it loads with the method's settings (paths to data are checked by the planner)."""
    import yaml

    from vtp_core.losses.lpips import write_random_lpips

    if name == "demo":  # the embedded study needs nothing from the user
        assert load_study(study_path(name)).tokenizer.rec_loss == "l1"
        return
    with pytest.raises(SpecError, match="tokenizer.lpips_sha256"):
        load_study(study_path(name))
    doc = yaml.safe_load(study_path(name).read_text())
    weights = tmp_path / "lpips.pt"
    doc["tokenizer"].update(lpips_weights=str(weights), lpips_sha256=write_random_lpips(weights))
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    s = load_study(tmp_path / f"{name}.yaml")
    assert s.name == name and s.n_cells >= 2
    t = s.tokenizer
    assert (t.patch, t.global_crop, t.local_crop, t.batch_size, t.dino_prototypes) == (16, 224, 96, 16384, 65536)
    assert t.rec_loss == "l1_lpips" and t.qk_norm and s.dit.size == "B/1" and s.sample.n_samples == 10000


def test_lr_from_tune_file(write_study, tmp_path):
    (tmp_path / "lr.yaml").write_text("encoder: tiny\nlr: 0.0042\n")
    s = load_study(write_study(GOOD.replace("tokenizer: {batch_size: 16}", "tokenizer: {batch_size: 16, lr_from: lr.yaml}")))
    assert s.tokenizer.lr == 0.0042
    with pytest.raises(SpecError, match="tokenizer.lr_from: no such file 'nope.yaml'"):
        load_study(write_study(GOOD.replace("tokenizer: {batch_size: 16}", "tokenizer: {lr_from: nope.yaml}")))


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "docs" / "examples").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_example_studies_plan(path):
    """The studies the docs tell users to run load and plan as they are (they need no file from the user)."""
    from sweeps.plan import plan

    assert plan(load_study(path)).study.name == path.stem
