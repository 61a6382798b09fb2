"""Planner: grid → cells → content-addressed stage ids; budget → steps arithmetic; sharing."""
import dataclasses

import pytest

from sweeps import costs, plan as plan_mod
from sweeps.ids import fmt_num, stage_id
from sweeps.errors import SpecError
from sweeps.schema import load_study
from vtp_core.config import TokenizerConfig
import small_configs as small

STUDY = """
name: p
grid:
  recipe: [ae, clip_ssl_ae]
  encoder: [tiny]
  data_size: [0, 1000]
  budget_flops: [1.0e9, 2.5e9]
  seed: [0, 1]
tokenizer: {batch_size: 16}
"""


@pytest.fixture
def fixed_costs(monkeypatch):
    """Known per-step FLOPs so the arithmetic can be checked exactly."""
    monkeypatch.setattr(costs, "tokenizer_step_flops", lambda cfg: 3.0e8 if cfg.recipe == "ae" else 7.0e8)
    monkeypatch.setattr(costs, "dit_step_flops", lambda spec, shape: 1.0e7)
    monkeypatch.setattr(costs, "encoder_params", lambda cfg: 12345)
    monkeypatch.setattr(costs, "encoder_forward_flops", lambda cfg: 1.0e5)
    monkeypatch.setattr(costs, "decoder_forward_flops", lambda cfg: 2.0e5)
    monkeypatch.setattr(costs, "dit_forward_flops", lambda spec, shape: 3.0e4)
    monkeypatch.setattr(costs, "extractor_forward_flops", lambda name: 5.0e5)


def test_budget_to_steps(write_study, fixed_costs):
    p = plan_mod.plan(load_study(write_study(STUDY)))
    assert len(p.cells) == 16
    by = {(c.recipe, c.budget_flops): c for c in p.cells}
    assert by[("ae", 1.0e9)].steps == 3  # floor(1e9 / 3e8)
    assert by[("ae", 2.5e9)].steps == 8  # floor(2.5e9 / 3e8)
    assert by[("clip_ssl_ae", 1.0e9)].steps == 1
    assert by[("clip_ssl_ae", 2.5e9)].steps == 3
    c = by[("ae", 2.5e9)]
    assert c.tokenizer_flops == pytest.approx(8 * 3.0e8)  # spent, never more than the budget
    assert c.tokenizer_flops <= c.budget_flops
    assert c.dit_flops == pytest.approx(p.study.dit.steps * 1.0e7)


def test_shared_stages_planned_once(write_study, fixed_costs):
    p = plan_mod.plan(load_study(write_study(STUDY)))
    kinds = [s.kind for s in p.stages.values()]
    assert kinds.count("extractor") == 1 and kinds.count("refstats") == 1
    assert kinds.count("pretrain") == 16  # every cell has its own tokenizer here
    # two cells that share a tokenizer share pretrain/probe/latents: same grid point twice
    p2 = plan_mod.plan(load_study(write_study(STUDY.replace("seed: [0, 1]", "seed: [0]"))))
    ids1 = {c.id: c.stages for c in p.cells}
    for c in p2.cells:
        assert c.stages == ids1[c.id], "ids depend only on the cell's own config and upstream ids"


def test_costs_looked_up_once_per_recipe_and_encoder(write_study, fixed_costs, monkeypatch):
    """The planner asks for a tokenizer's costs once per (recipe, encoder): valid because costs ignore the
    other grid axes (seed, data size and, through the budget, steps: `costs._strip`). A new grid axis must
    say whether it changes costs, so this pins the axes."""
    from sweeps.schema import Grid

    assert Grid.AXES == ("recipe", "encoder", "data_size", "budget", "seed")
    asked = []
    monkeypatch.setattr(costs, "tokenizer_step_flops", lambda cfg: asked.append(cfg) or (3.0e8 if cfg.recipe == "ae" else 7.0e8))
    p = plan_mod.plan(load_study(write_study(STUDY)))
    assert len(asked) == 2 and len(p.cells) == 16
    by_arch = {(c.recipe, c.encoder): costs._strip(c) for c in asked}
    for cell in p.cells:  # every cell's own config strips to the one its costs were looked up with
        assert costs._strip(p.stages[cell.stages["pretrain"]].cfg) == by_arch[cell.recipe, cell.encoder]


def test_stage_id_tag_keeps_letters_digits_and_dot_dash_underscore():
    cfg = small.tokenizer()
    assert stage_id("pretrain", "a b/c:é-ü_1.5e9", cfg).startswith("pretrain-a_b_c_é-ü_1.5e9-")
    assert stage_id("pretrain", "x" * 70, cfg) == stage_id("pretrain", "x" * 60, cfg)  # tags cut at 60


def test_topological_order(write_study, fixed_costs):
    p = plan_mod.plan(load_study(write_study(STUDY)))
    seen = set()
    for s in p.stages.values():
        assert all(u in seen for u in s.upstream_ids), s.id
        seen.add(s.id)


def test_stage_id_stability():
    cfg = small.tokenizer()
    a = stage_id("pretrain", "t", cfg)
    assert a == stage_id("pretrain", "t", small.tokenizer())  # deterministic across instances
    assert a == "pretrain-t-" + a.rsplit("-", 1)[1] and len(a.rsplit("-", 1)[1]) == 10
    # versioned field changes the id
    assert stage_id("pretrain", "t", dataclasses.replace(cfg, lr=cfg.lr * 2)) != a
    assert stage_id("pretrain", "t", dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, n_train=7))) != a
    # logging / paths / checkpoint cadence do not
    assert stage_id("pretrain", "t", dataclasses.replace(cfg, log_every=999, ckpt_every=3, num_workers=4)) == a
    assert stage_id("pretrain", "t", dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path="/elsewhere"))) == a
    # upstream ids enter the hash, their order does not
    assert stage_id("probe", "t", cfg, ["x", "y"]) == stage_id("probe", "t", cfg, ["y", "x"])
    assert stage_id("probe", "t", cfg, ["x"]) != stage_id("probe", "t", cfg, ["z"])


def test_pinned_ids_of_default_configs():
    """Golden values: if one changes, every user's finished results are orphaned. Change them only on
    purpose (a new versioned field or a CODE_VERSION bump), in the same commit as the cause."""

    # pretrain: changed from pretrain-t-be9601bb0e when the method's fields (qk_norm, qkv_bias, per-objective drop
    # rates, rec_loss, adam_eps, warmup_fraction) were added (CODE_VERSION 2), then when each rank began to
    # draw its own slice's views from per-sample numbers (CODE_VERSION 3), then when the models were rebuilt from
    # standard parts (rotate-half RoPE, nn.Linear, F.rms_norm; `compile` unversioned) (CODE_VERSION 4; probe,
    # latents, dit and sample 2: their numbers change with the models')
    assert stage_id("pretrain", "t", small.tokenizer()) == "pretrain-t-41148109ec"
    assert stage_id("pretrain", "t", TokenizerConfig()) == "pretrain-t-0830556bdd"  # the method's defaults
    assert stage_id("dit", "t", small.dit(), ["latents-x"]) == "dit-t-919e5d2fbf"
    # probe: changed from probe-t-265c4ada62 when zero_shot_resize (zero-shot preprocessing) was added, then
    # from probe-t-b72cc7526c at CODE_VERSION 2
    assert stage_id("probe", "t", small.probe()) == "probe-t-feec468718"


def test_fmt_num():
    assert fmt_num(2e12) == "2e12" and fmt_num(1500) == "1500" and fmt_num(0) == "0" and fmt_num(1.5e18) == "1.5e18"


def test_stage_estimates_scale_with_their_own_work(write_study, fixed_costs):
    """Each stage's time is its work (FLOPs, images) over the declared throughput and its GPU count: doubling a
    stage's image count doubles its estimate, and nothing else's."""
    base = plan_mod.plan(load_study(write_study(STUDY.replace("seed: [0, 1]", "seed: [0]"))))
    more = plan_mod.plan(load_study(write_study(
        STUDY.replace("seed: [0, 1]", "seed: [0]")
        + "latents: {n_images: 20000}\nprobe: {n_train: 4000, n_test: 2000}\nrefstats: {n_images: 4000}\n"
        + "sample: {n_samples: 2000}\n")))
    for kind, factor in (("latents", 2), ("probe", 2), ("refstats", 2), ("sample", 2), ("fid", 2)):
        a = base.stages[base.cells[0].stages[kind]]
        b = more.stages[more.cells[0].stages[kind]]
        assert b.seconds == pytest.approx(factor * a.seconds), kind
        assert b.flops == pytest.approx(factor * a.flops), kind
    for kind in ("pretrain", "dit"):
        assert more.stages[more.cells[0].stages[kind]].seconds == base.stages[base.cells[0].stages[kind]].seconds


def test_gpu_count_divides_trainer_time_and_multiplies_gpu_hours(write_study, fixed_costs):
    one = plan_mod.plan(load_study(write_study(STUDY)))
    eight = plan_mod.plan(load_study(write_study(
        STUDY + "resources: {pretrain: {tasks_per_node: 8, gpus_per_node: 8}, probe: {gpus_per_node: 8}}\n")))
    for kind in ("pretrain", "probe"):
        a, b = (p.stages[p.cells[0].stages[kind]] for p in (one, eight))
        assert b.devices == 8 and a.devices == 1
        if kind == "pretrain":  # eight tasks train: an eighth of the time, the same device-hours
            assert b.seconds == pytest.approx(a.seconds / 8) and b.device_hours == pytest.approx(a.device_hours)
        else:  # rank 0 probes alone: the same time on eight held GPUs
            assert b.seconds == pytest.approx(a.seconds) and b.device_hours == pytest.approx(8 * a.device_hours)
    assert eight.device_hours == pytest.approx(sum(s.device_hours for s in eight.stages.values()))


def test_samples_budget_and_samples_per_objective(write_study, fixed_costs):
    p = plan_mod.plan(load_study(write_study(STUDY.replace("budget_flops: [1.0e9, 2.5e9]", "budget_samples: [6400]"))))
    by = {c.recipe: c for c in p.cells if c.data_size == 0 and c.seed == 0}
    assert by["clip_ssl_ae"].steps == 400 and by["clip_ssl_ae"].samples == {"clip": 6400, "ssl": 1600, "rec": 800}
    assert by["ae"].steps == 3200 and by["ae"].samples == {"clip": 0, "ssl": 0, "rec": 6400}  # ae trains on B_rec=2
    assert by["ae"].samples_seen == by["clip_ssl_ae"].samples_seen == 6400
    assert by["ae"].id.endswith("-n6400-s0")


def test_other_data_never_reuses_a_stage(write_study, fixed_costs, tmp_path, monkeypatch):
    from vtp_core.data import synthetic

    monkeypatch.setenv("VTP_CACHE", str(tmp_path / "cache"))
    a = synthetic.write_imagefolder(tmp_path / "a", {"train": 3, "val": 2}, n_classes=4, seed=0)
    b = synthetic.write_imagefolder(tmp_path / "b", {"train": 3, "val": 2}, n_classes=4, seed=1)
    text = STUDY.replace("data_size: [0, 1000]", "data_size: [0]") + (
        "data: {dataset: imagefolder, path: 'DATA', image_size: 32}\nextractor: {name: random_cnn}\n"
        "refstats: {split: test, n_images: 8}\nlatents: {n_images: 12, stats_subset: 12}\n"
        "probe: {n_train: 8, n_test: 8}\nsample: {n_samples: 16}\nfid: {allow_low_n: true}\n")
    pa, pb = (plan_mod.plan(load_study(write_study(text.replace("DATA", d)))) for d in (a, b))
    for ca, cb in zip(pa.cells, pb.cells):
        for kind in ("refstats", "pretrain", "probe", "latents", "dit", "sample", "fid"):
            assert ca.stages[kind] != cb.stages[kind], kind
    assert pa.study.data.checksum and pa.study.data.checksum != pb.study.data.checksum
    pinned = text.replace("DATA", a).replace("image_size: 32}", f"image_size: 32, checksum: '{pb.study.data.checksum}'}}")
    with pytest.raises(SpecError, match="data.checksum: the data at .* has manifest sha256"):
        plan_mod.plan(load_study(write_study(pinned)))
