"""Planner: grid → cells → content-addressed stage ids; budget → steps arithmetic; sharing."""
import dataclasses

import pytest

from sweeps import costs, plan as plan_mod
from sweeps.ids import fmt_num, stage_id
from sweeps.schema import load_study
from vtp_core.config import ProbeConfig, TokenizerConfig

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
    from sweeps.schema import GRID_AXES

    assert GRID_AXES == ("recipe", "encoder", "data_size", "budget_flops", "seed")
    asked = []
    monkeypatch.setattr(costs, "tokenizer_step_flops", lambda cfg: asked.append(cfg) or (3.0e8 if cfg.recipe == "ae" else 7.0e8))
    p = plan_mod.plan(load_study(write_study(STUDY)))
    assert len(asked) == 2 and len(p.cells) == 16
    by_arch = {(c.recipe, c.encoder): costs._strip(c) for c in asked}
    for cell in p.cells:  # every cell's own config strips to the one its costs were looked up with
        assert costs._strip(p.stages[cell.stages["pretrain"]].cfg) == by_arch[cell.recipe, cell.encoder]


def test_stage_id_tag_keeps_letters_digits_and_dot_dash_underscore():
    cfg = TokenizerConfig()
    assert stage_id("pretrain", "a b/c:é-ü_1.5e9", cfg).startswith("pretrain-a_b_c_é-ü_1.5e9-")
    assert stage_id("pretrain", "x" * 70, cfg) == stage_id("pretrain", "x" * 60, cfg)  # tags cut at 60


def test_topological_order(write_study, fixed_costs):
    p = plan_mod.plan(load_study(write_study(STUDY)))
    seen = set()
    for s in p.stages.values():
        assert all(u in seen for u in s.upstream_ids), s.id
        seen.add(s.id)


def test_stage_id_stability():
    cfg = TokenizerConfig()
    a = stage_id("pretrain", "t", cfg)
    assert a == stage_id("pretrain", "t", TokenizerConfig())  # deterministic across instances
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
    from dit_eval.config import DiTSpec

    assert stage_id("pretrain", "t", TokenizerConfig()) == "pretrain-t-be9601bb0e"
    assert stage_id("dit", "t", DiTSpec(), ["latents-x"]) == "dit-t-d72ff9ce20"
    # probe: changed from probe-t-265c4ada62 when zero_shot_resize (zero-shot preprocessing) was added
    assert stage_id("probe", "t", ProbeConfig()) == "probe-t-b72cc7526c"


def test_fmt_num():
    assert fmt_num(2e12) == "2e12" and fmt_num(1500) == "1500" and fmt_num(0) == "0" and fmt_num(1.5e18) == "1.5e18"
