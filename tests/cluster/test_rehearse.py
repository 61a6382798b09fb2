"""The rehearsal: the shrink mapping keeps what it declares, its checks catch the defects that would waste a real
study's GPU-hours, and every shipped study passes its rehearsal end to end on this CPU."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cluster import rehearse
from sweeps.errors import SpecError
from sweeps.schema import read_yaml, study_from_doc, study_path

SHIPPED = ("params", "data", "flops", "recipes")


def _cells(steps: dict) -> list[rehearse.RealCell]:
    return [rehearse.RealCell(r, e, d, b, s, n) for (r, e, d, b, s), n in steps.items()]


def test_select_keeps_every_axis_and_the_step_spread():
    real = {("ae", "S", 0, 1e18, 0): 3000, ("ae", "L", 0, 1e18, 0): 1000, ("vtp", "L", 0, 1e18, 0): 100,
            ("vtp", "L", 0, 4e18, 0): 400, ("vtp", "L", 0, 1.6e19, 0): 1600, ("ae", "L", 0, 4e18, 0): 4000}
    kept, trimmed, c = rehearse.select(_cells(real), dataclasses.replace(rehearse.SHRINK, min_steps=2, max_steps=40,
                                                                         max_cells=4))
    assert c == pytest.approx(2 / 100)
    got = {(k.recipe, k.encoder, k.budget): n for k, n in kept}
    assert {(r, e) for r, e, _ in got} == {("ae", "S"), ("ae", "L"), ("vtp", "L")}  # every recipe x encoder
    assert got[("vtp", "L", 1e18)] == 2 and got[("ae", "L", 1e18)] == 20 and got[("ae", "S", 1e18)] == 60
    assert got[("vtp", "L", 4e18)] == 8  # the spread: steps x c
    assert len(kept) == 4 and len(trimmed) == 2


def test_data_sizes_are_nested_doubling_subsets():
    assert rehearse.data_sizes((100_000, 1_000_000, 10_000_000, 100_000_000), 400) == {
        0: 0, 100_000: 50, 1_000_000: 100, 10_000_000: 200, 100_000_000: 400}
    assert rehearse.data_sizes((0,), 400) == {0: 0}


@pytest.mark.parametrize("name", SHIPPED)
def test_shrink_keeps_token_grids_recipes_and_the_method(name, tmp_path):
    real = study_from_doc(read_yaml(study_path(name)), study_path(name), validate=False)
    names = rehearse.register_sizes()
    data = {"data": {"dataset": "tar", "path": "/x/{00000..00003}.tar"}, "eval_data": {"dataset": "imagefolder", "path": "/y"}}
    sec = rehearse.shrunk_sections(real, names, data, ("/l.pt", "0" * 64), 0.01, rehearse.SHRINK)
    t, tr = sec["tokenizer"], real.tokenizer
    grid = lambda side, patch: side // patch  # noqa: E731
    assert grid(sec["data"]["image_size"], t["patch"]) == grid(real.data.image_size, tr.patch)
    assert grid(t["global_crop"], t["patch"]) == grid(tr.global_crop, tr.patch)
    assert grid(t["local_crop"], t["patch"]) == grid(tr.local_crop, tr.patch)
    for field in ("lambda_rec", "rec_loss", "qk_norm", "qkv_bias", "mask_ratio", "mask_probability", "lr",
                  "warmup_fraction", "ssl_fraction", "rec_fraction", "n_local_crops", "clip_drop_rate", "ssl_drop_rate"):
        assert t[field] == getattr(tr, field), field  # the method's values, unshrunk
    assert t["warmup_steps"] == round(tr.warmup_steps * 0.01)
    assert sec["extractor"]["name"] == "random_cnn" and t["lpips_sha256"] == "0" * 64
    sm, smr = sec["sample"], real.sample
    assert all(sm[f] == getattr(smr, f) for f in ("sampler", "labels", "rtol", "atol", "cfg_scale", "cfg_interval_start"))
    assert sm["shard_size"] % sm["ode_batch"] == 0  # a dopri5 study's shards hold whole runs in its rehearsal too


def test_shrink_keeps_the_metrics_its_extractor_can_compute(tmp_path):
    """random_cnn replaces the Inception: sfid and is (Inception layers) are left out, the rest kept, and
    FD-DINOv2 runs on the rehearsal's random DINOv2-family file (a loadable file, checked by sha256)."""
    from dit_eval.config import DINOv2Config, FIDConfig
    from dit_eval.dinov2 import write_random_dinov2

    real = study_from_doc(read_yaml(study_path("flops")), study_path("flops"), validate=False)
    real = dataclasses.replace(real, fid=FIDConfig(metrics=("fid", "sfid", "is", "precision", "recall", "fd_dinov2"),
                                                   dinov2=DINOv2Config(path="/real/dinov2.pth", sha256="a" * 64)))
    data = {"data": {"dataset": "tar", "path": "/x/{00000..00003}.tar"}, "eval_data": {"dataset": "imagefolder", "path": "/y"}}
    dino = (str(tmp_path / "d.pth"), write_random_dinov2(tmp_path / "d.pth"))
    args = (real, rehearse.register_sizes(), data, ("/l.pt", "0" * 64), 0.01, rehearse.SHRINK)
    fid = rehearse.shrunk_sections(*args, dino)["fid"]
    assert fid["metrics"] == ["fid", "precision", "recall", "fd_dinov2"] and fid["allow_low_n"]
    assert fid["dinov2"] == {"name": "dinov2", "path": dino[0], "sha256": dino[1]}
    assert rehearse.shrunk_sections(*args)["fid"]["metrics"] == ["fid", "precision", "recall"]


def _fake_cell(tmp_path, losses: dict, lr_peak: float, per_class: tuple[int, int], recipe: str = "clip_ssl_ae"):
    """A finished cell in a real store, with the metrics a run would log."""
    from cluster.store import Store
    from sweeps.plan import CELL_STAGES, Cell, Plan, Stage

    import small_configs as small

    store = Store(tmp_path / "r")
    tok = small.tokenizer(recipe=recipe, rec_loss="l1_lpips", lpips_weights="/l.pt", lpips_sha256="0" * 64, lr=1e-3)
    ids = {k: f"{k}-x-0000000000" for k in ("extractor", "refstats", *CELL_STAGES)}
    for sid in ids.values():
        store.set_status(sid, "done")
    store.write_metrics(ids["pretrain"], {"final_losses": losses, "lr_peak": lr_peak})
    lo, hi = per_class
    store.write_metrics(ids["refstats"], {"reference": "computed", "classes": {"n_classes": 10, "min_per_class": lo,
                                                                              "max_per_class": hi}})
    cell = Cell("c", recipe, "tiny", 0, "flops", 1.0, 0, 5, 1, 1.0, 1.0, 1, {}, ids)
    plan = Plan(None, [cell], {ids["pretrain"]: Stage("pretrain", ids["pretrain"], dataclasses.replace(tok, steps=5))})
    return plan, cell, store


GOOD = {"l1": 0.3, "lpips": 0.2, "clip": 3.4, "dino": 5.0, "ibot": 2.7, "koleo": 0.8}


@pytest.mark.parametrize("defect", ["ibot zero (1x1 mask grid)", "lpips missing (L1 only)", "peak LR not reached",
                                    "reference covers 39 of 1000 classes", "non-finite clip", "none"])
def test_checks_catch_what_wastes_gpu_hours(tmp_path, defect):
    losses, peak, per_class = dict(GOOD), 1e-3, (3, 3)
    if defect.startswith("ibot"):
        losses["ibot"] = 0.0
    elif defect.startswith("lpips"):
        del losses["lpips"]
    elif defect.startswith("peak"):
        peak = 1e-3 * 5 / 2000  # a fixed 2000-step warm-up in a 5-step cell
    elif defect.startswith("reference"):
        per_class = (0, 50)
    elif defect.startswith("non-finite"):
        losses["clip"] = float("nan")
    checks = rehearse.check_cell(*_fake_cell(tmp_path, losses, peak, per_class), n_classes=10)
    failed = [name for name, ok, _ in checks if not ok]
    assert (failed == []) == (defect == "none"), (defect, checks)


def test_a_degenerate_study_is_refused_before_it_runs(tmp_path):
    """SSL crops of one patch would make iBOT train nothing: the rehearsal (like the real sweep) refuses the study."""
    import yaml

    doc = read_yaml(study_path("recipes"))
    doc["tokenizer"].update(global_crop=16, local_crop=16)
    path = tmp_path / "degenerate.yaml"
    path.write_text(yaml.safe_dump(doc))
    shrink = dataclasses.replace(rehearse.SHRINK, max_cells=1)
    with pytest.raises(SpecError, match="tokenizer.global_crop: .*at least 2x2 patches"):
        rehearse.rehearse(path, tmp_path / "r", shrink, echo=lambda *_: None)


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_study_passes_its_rehearsal(name, tmp_path_factory):
    """Every shipped study, end to end in miniature: CI runs all four."""
    results = tmp_path_factory.getbasetemp() / "rehearse"  # one store: the shared extractor is made once
    report = rehearse.rehearse(study_path(name), Path(results), echo=print)
    rehearse.print_report(report)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert report["ok"] and not failed, failed
    assert report["rehearsed"] >= len({(c.recipe, c.encoder, c.data_size) for c in rehearse.real_cells(
        study_from_doc(read_yaml(study_path(name)), study_path(name), validate=False))})
