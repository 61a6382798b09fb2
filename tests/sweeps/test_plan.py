"""Planner: grid → cells → content-addressed stage ids; budget → steps arithmetic; sharing."""
import dataclasses

import pytest

from dit_eval.config import SampleConfig
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
    # latents, dit and sample 2: their numbers change with the models'), then when micro_batches was added and the
    # non-finite guard moved onto the device (CODE_VERSION 5), then when DataConfig.shuffle_chunk was added, then
    # from pretrain-t-c432a13d34 (defaults: pretrain-t-6a7f4e132b) when DataConfig.jpeg_decode was added, then
    # from pretrain-t-c743c55152 (defaults: pretrain-t-20270345c2) when DataConfig.resample was added
    assert stage_id("pretrain", "t", small.tokenizer()) == "pretrain-t-edf4ac6d81"
    assert stage_id("pretrain", "t", TokenizerConfig()) == "pretrain-t-35996f2ccb"  # the method's defaults
    assert stage_id("dit", "t", small.dit(), ["latents-x"]) == "dit-t-919e5d2fbf"
    # probe: changed from probe-t-265c4ada62 when zero_shot_resize (zero-shot preprocessing) was added, then
    # from probe-t-b72cc7526c at CODE_VERSION 2, then from probe-t-feec468718 with DataConfig.shuffle_chunk, then
    # from probe-t-d7750598f5 with DataConfig.jpeg_decode, then from probe-t-bf6ee716d7 with DataConfig.resample
    assert stage_id("probe", "t", small.probe()) == "probe-t-85cdb5c015"
    # sample: changed from sample-t-0540176a4e (defaults) when the label policy and the dopri5 fields (rtol, atol,
    # ode_batch) were added
    assert stage_id("sample", "t", SampleConfig(), ["dit-x"]) == "sample-t-85bba8729f"  # the method's defaults
    assert stage_id("sample", "t", small.sample(), ["dit-x"]) == "sample-t-3b657e3f7a"


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


MEM = "resources: {{pretrain: {{tasks_per_node: 2, gpus_per_node: 2, gpu_mem_gb: {gb}}}}}\n"


def test_memory_plan_on_the_stage_and_in_the_dry_run(write_study, fixed_costs, tmp_path):
    """With resources.pretrain.gpu_mem_gb the pretrain stage carries its predicted per-GPU peak and the cheapest
    strategy that fits; the dry run shows both; no id changes; without it (the CPU demo) nothing is planned."""
    import io

    from cluster.cli import print_dry_run
    from cluster.store import Store

    text = STUDY.replace("seed: [0, 1]", "seed: [0]").replace("data_size: [0, 1000]", "data_size: [0]")
    bare = plan_mod.plan(load_study(write_study(text)))
    roomy = plan_mod.plan(load_study(write_study(text + MEM.format(gb=80).replace(
        "}}\n", "}, dit: {tasks_per_node: 2, gpus_per_node: 2, gpu_mem_gb: 80}}\n"))))
    dit = roomy.stages[roomy.cells[0].stages["dit"]]
    assert dit.strategy == "none" and 0 < dit.mem_gb < 80 and bare.stages[dit.id].strategy == ""
    for c in bare.cells:
        st = bare.stages[c.stages["pretrain"]]
        assert (st.mem_gb, st.strategy, st.mem) == (0.0, "", ())
    for c in roomy.cells:
        st = roomy.stages[c.stages["pretrain"]]
        assert st.strategy == "none" and 0 < st.mem_gb <= 80 and dict(st.mem)["total"] == st.mem_gb
        assert st.id == bare.stages[c.stages["pretrain"]].id  # the plan's memory never enters a stage id
    out = io.StringIO()
    print_dry_run(roomy, Store(tmp_path / "results"), out=out)
    text_out = out.getvalue()
    assert "GB/GPU" in text_out and "(of resources.pretrain.gpu_mem_gb = 80)" in text_out
    clip_pre = roomy.stages[roomy.cells[-1].stages["pretrain"]]
    assert f"memory plan clip_ssl_ae-tiny: pretrain none, {clip_pre.mem_gb:.1f} GB" in text_out
    assert f"memory plan dit tiny: none, {dit.mem_gb:.1f} GB per GPU of 80" in text_out


def test_memory_plan_picks_checkpointing_then_refuses(write_study, fixed_costs):
    from vtp_core import memory

    text = STUDY.replace("seed: [0, 1]", "seed: [0]").replace("data_size: [0, 1000]", "data_size: [0]")
    p = plan_mod.plan(load_study(write_study(text + MEM.format(gb=80))))
    tok = p.stages[p.cells[-1].stages["pretrain"]].cfg  # clip_ssl_ae, batch 16 over 2 GPUs
    totals = {s: memory.predict(tok, 2, s)["total"] for s in memory.strategies(tok, 2)}
    squeezed = plan_mod.plan(load_study(write_study(text + MEM.format(gb=(totals["none"] + totals["checkpoint"]) / 2))))
    assert squeezed.stages[squeezed.cells[-1].stages["pretrain"]].strategy == "checkpoint"
    with pytest.raises(SpecError, match=r"resources.pretrain.gpu_mem_gb: cell ae-tiny-d0-f1e9-s0 does not fit 1e-5 GB "
                                        r"per GPU in pretrain even with checkpoint over 2 GPU\(s\): params [\d.e-]+, grads .*"
                                        r"act_rec [\d.e-]+, recompute .* = [\d.]+ GB per GPU"):
        plan_mod.plan(load_study(write_study(text + MEM.format(gb=1e-5))))


def _paper_study(tmp_path, gpu_mem_gb: float):
    """sweeps/params.yaml as shipped (an LPIPS file filled in), its pretrain GPUs given `gpu_mem_gb`."""
    import yaml

    from sweeps.schema import study_path
    from vtp_core.losses.lpips import write_random_lpips

    doc = yaml.safe_load(study_path("params").read_text())
    weights = tmp_path / "lpips.pt"
    doc["tokenizer"].update(lpips_weights=str(weights), lpips_sha256=write_random_lpips(weights))
    doc["resources"]["pretrain"]["gpu_mem_gb"] = gpu_mem_gb
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(doc))
    return load_study(tmp_path / "params.yaml")


def test_paper_vtp_l_cell_memory_plan(tmp_path):
    """The paper's params study, cell clip_ssl_ae-L (batch 16,384 over 8 GPUs): refused on a tiny GPU with its
    numbers; on an 80 GB H100 it needs checkpointing and micro-batches (run with -s for the figures)."""
    s = _paper_study(tmp_path, 80)
    assert s.resources["pretrain"].gpu_mem_gb == 80 and s.resources["dit"].gpu_mem_gb == 80
    tok = dataclasses.replace(s.tokenizer, recipe="clip_ssl_ae", encoder="L")
    got = plan_mod.pretrain_memory(s, tok, "clip_ssl_ae-L-d0-f1.5e+18-s0")
    parts = dict(got["mem"])
    print(f"\nparams study, clip_ssl_ae-L over 8 GPUs of 80 GB: {got['strategy']}, {got['mem_gb']:.1f} GB per GPU: "
          + ", ".join(f"{k} {v:.3g}" for k, v in parts.items()))
    assert got["strategy"].startswith("checkpoint+microbatch:") and got["mem_gb"] <= 80
    assert parts["act_clip"] > parts["params"]
    dit = plan_mod.dit_memory(s, (64, 16, 16), "clip_ssl_ae-L-d0-f1.5e+18-s0")  # f16d64 latents at 256 px
    print(f"params study, dit {s.dit.size} (batch {s.dit.batch_size} over 8 GPUs): {dit['strategy']}, "
          f"{dit['mem_gb']:.1f} GB per GPU: " + ", ".join(f"{k} {v:.3g}" for k, v in dit["mem"]))
    assert dit["strategy"] == "none" and dit["mem_gb"] <= 80
    small_gpu = _paper_study(tmp_path, 16)
    with pytest.raises(SpecError, match=r"params.yaml: resources.pretrain.gpu_mem_gb: cell clip_ssl_ae-L-d0-f1.5e\+18-s0 "
                                        r"does not fit 16 GB per GPU in pretrain even with checkpoint\+microbatch:256 "
                                        r"over 8 "
                                        r"GPU\(s\): params [\d.]+, grads [\d.]+, adamw [\d.]+, .*act_clip [\d.]+.* GB "
                                        r"per GPU"):
        plan_mod.pretrain_memory(small_gpu, tok, "clip_ssl_ae-L-d0-f1.5e+18-s0")


def test_memory_plan_reaches_the_trainer(write_study, fixed_costs):
    """The strategy the plan picks is what pretrain runs: `checkpoint_blocks` (unversioned: the same numbers,
    the same id) and `micro_batches` (versioned: micro-batches draw stochastic depth per part, so the id
    changes); the estimate adds the recomputation's time. A strategy the study sets itself is checked, not
    replaced."""
    from vtp_core import memory

    text = (STUDY.replace("seed: [0, 1]", "seed: [0]").replace("data_size: [0, 1000]", "data_size: [0]")
            .replace("tokenizer: {batch_size: 16}", "tokenizer: {batch_size: 64}"))
    roomy = plan_mod.plan(load_study(write_study(text + MEM.format(gb=80))))
    pre = roomy.stages[roomy.cells[-1].stages["pretrain"]]
    tok = pre.cfg
    assert pre.strategy == "none" and (tok.checkpoint_blocks, tok.micro_batches) == (False, 1)
    totals = {s: memory.predict(tok, 2, s)["total"] for s in memory.strategies(tok, 2)}
    ck = plan_mod.plan(load_study(write_study(text + MEM.format(gb=(totals["none"] + totals["checkpoint"]) / 2))))
    ck_pre = ck.stages[ck.cells[-1].stages["pretrain"]]
    assert ck_pre.cfg.checkpoint_blocks and ck_pre.cfg.micro_batches == 1 and ck_pre.id == pre.id
    assert ck_pre.seconds == pytest.approx(pre.seconds * 4 / 3)
    micro = next(s for s in memory.strategies(tok, 2) if "microbatch" in s)
    gb = (totals["checkpoint"] + totals[micro]) / 2
    mb = plan_mod.plan(load_study(write_study(text + MEM.format(gb=gb))))
    mb_pre = mb.stages[mb.cells[-1].stages["pretrain"]]
    assert mb_pre.strategy == micro and mb_pre.cfg.micro_batches == memory.parse_strategy(micro)[1] > 1
    assert mb_pre.cfg.checkpoint_blocks and mb_pre.id != pre.id
    assert mb_pre.seconds == pytest.approx(pre.seconds * 5 / 3)
    own = text.replace("tokenizer: {", "tokenizer: {micro_batches: 2, ")
    mine = plan_mod.plan(load_study(write_study(own + MEM.format(gb=80))))
    assert mine.stages[mine.cells[-1].stages["pretrain"]].strategy == "microbatch:2"


# ------------------------------------------------------------------------------- anchors (released tokenizers)
def _released_file(tmp_path):
    """A random file in the released VTP layout at the tiny size, patch 4 and 8 channels (the micro studies'
    tokenizer geometry), and its sha256."""
    import released_layout as rl

    from vtp_core import registry
    from vtp_core.released import sha256_of

    path = rl.save(rl.random_state_dict(registry.get("encoder", "tiny"), registry.get("text", "tiny"), patch=4,
                                        channels=8), tmp_path / "vtp-tiny.pt")
    return path, sha256_of(path)


def _anchor_yaml(path, sha, name="vtp-t"):
    return f"anchors:\n  - {{name: {name}, checkpoint: {path}, sha256: {sha}, size: tiny, text: tiny}}\n"


def test_anchor_is_a_cell_that_skips_pretrain(write_study, fixed_costs, tmp_path):
    """One anchor adds one cell: an `anchor` stage (the conversion) in the tokenizer slot, then the same probe,
    latents, dit, sample and fid stages as a trained cell, with the same shared extractor and refstats. Its
    stage ids do not depend on the label or the path (the file is identified by its sha256), and the dry run
    lists it."""
    import io

    from cluster.cli import print_dry_run
    from cluster.store import Store

    path, sha = _released_file(tmp_path)
    p = plan_mod.plan(load_study(write_study(_anchor_yaml(path, sha))))
    anchors = [c for c in p.cells if c.anchor]
    assert len(p.cells) == 3 and len(anchors) == 1
    a = anchors[0]
    assert a.id == "anchor-vtp-t" and a.anchor == "vtp-t" and a.encoder == "tiny"
    assert p.stages[a.stages["pretrain"]].kind == "anchor"
    assert [p.stages[a.stages[k]].kind for k in ("probe", "latents", "dit", "sample", "fid")] == \
        ["probe", "latents", "dit", "sample", "fid"]
    assert dict(p.stages[a.stages["latents"]].upstream)["pretrain"] == a.stages["pretrain"]
    trained = next(c for c in p.cells if not c.anchor)
    assert a.stages["extractor"] == trained.stages["extractor"] and a.stages["refstats"] == trained.stages["refstats"]
    assert a.dit_flops == trained.dit_flops and a.tokenizer_flops != a.tokenizer_flops  # NaN: not counted
    ids = list(p.stages)
    assert ids.index(a.stages["pretrain"]) < ids.index(a.stages["latents"])  # topological
    copy = tmp_path / "elsewhere.pt"
    copy.write_bytes(path.read_bytes())
    p2 = plan_mod.plan(load_study(write_study(_anchor_yaml(copy, sha, name="other"))))
    assert next(c for c in p2.cells if c.anchor).stages == a.stages
    buf = io.StringIO()
    print_dry_run(p, Store(tmp_path / "results"), out=buf)
    out = buf.getvalue()
    rows = [[c.strip() for c in line.split("│")] for line in out.splitlines() if "│" in line]
    rows = [r for r in rows if "anchor" in r]  # the recipe column
    assert len(rows) == 1 and "1e10" in rows[0]  # no budget or tokenizer FLOPs; the DiT's FLOPs as any cell
    assert f"anchor-vtp-t: {a.stages['pretrain']} " in out


@pytest.mark.parametrize("edit, named", [
    (lambda path, sha: (path.parent / "nope.pt", sha), r"anchors\[0\].checkpoint: .*nope.pt: no such file"),
    (lambda path, sha: (path, "a" * 64), r"anchors\[0\].sha256: .* has sha256 [0-9a-f]{64}, not 'a{64}'"),
    (lambda path, sha: (path, "abc"), r"anchors\[0\].sha256: 'abc': give the 64 lowercase hex digits"),
])
def test_anchor_file_problems_are_one_line(write_study, tmp_path, edit, named):
    path, sha = _released_file(tmp_path)
    with pytest.raises(SpecError, match=named) as err:
        load_study(write_study(_anchor_yaml(*edit(path, sha))))
    assert "\n" not in str(err.value)


def test_anchor_of_another_size_is_refused_by_tensor(write_study, tmp_path):
    """A file whose layout is not the declared size's: the study names the anchor and the first tensor."""
    path, sha = _released_file(tmp_path)
    text = _anchor_yaml(path, sha).replace("size: tiny", "size: S")
    with pytest.raises(SpecError, match=r"anchors\[0\].checkpoint: .*vtp-tiny.pt: trunk.cls_token has shape "
                                        r"\[1, 1, 64\], expected \[1, 1, 384\]"):
        load_study(write_study(text))


def test_the_dry_run_counts_the_passes_the_sampler_makes():
    """sweeps.costs.sample_model_passes (torch-free, for the dry run) against the passes actually made."""
    import torch

    from dit_eval.sample import euler_sample, time_grid
    from sweeps.costs import DOPRI5_NFE_PLAN, sample_model_passes

    calls = []

    class Count(torch.nn.Module):
        def forward(self, x, t, y):
            calls.append(len(x))
            return torch.zeros_like(x)

    for kw in ({}, {"cfg_scale": 3.0}, {"cfg_scale": 3.0, "cfg_interval_start": 0.4}, {"shift": 1.0, "steps": 7}):
        cfg = dataclasses.replace(small.sample(), **{"steps": 11, **kw})
        calls.clear()
        euler_sample(Count(), torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long), time_grid(cfg.steps, cfg.shift),
                     cfg.cfg_scale, cfg.cfg_interval_start, 10)
        assert sample_model_passes(cfg) == sum(calls)
    assert sample_model_passes(dataclasses.replace(small.sample(), sampler="dopri5", cfg_scale=1.0)) == DOPRI5_NFE_PLAN


def test_metric_passes_in_the_fid_estimate(write_study, fixed_costs, monkeypatch, tmp_path):
    """The fid stage's work: one pass of the study's extractor for all its metrics, one DINOv2 pass with
    fd_dinov2 (its own extractor + reference stages, shared by every cell), and the precision/recall distances."""
    import hashlib

    monkeypatch.setattr(costs, "extractor_forward_flops", lambda name: 7.0e6 if name == "dinov2" else 5.0e5)
    weights = tmp_path / "dinov2.pth"
    weights.write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    one = STUDY.replace("seed: [0, 1]", "seed: [0]").replace("data_size: [0, 1000]", "data_size: [0]")
    base = plan_mod.plan(load_study(write_study(one + "sample: {n_samples: 2000}\n", name="a.yaml")))
    fd = "fid: {metrics: [fid, sfid, precision, recall, fd_dinov2], dinov2: {path: '%s', sha256: '%s'}}\n"
    more = plan_mod.plan(load_study(write_study(
        one + "sample: {n_samples: 2000}\nextractor: {name: inception}\nrefstats: {n_images: 3000, pr_n_images: 1000}\n"
        + fd % (weights, sha), name="b.yaml")))
    f0 = base.stages[base.cells[0].stages["fid"]]
    f1 = more.stages[more.cells[0].stages["fid"]]
    assert f0.flops == 2000 * 5.0e5
    pr = 2 * 2048 * (2000 ** 2 + 1000 ** 2 + 2 * 2000 * 1000)
    assert f1.flops == pytest.approx(2000 * (5.0e5 + 7.0e6) + pr)
    assert f1.seconds == pytest.approx(f1.flops / more.study.estimate.throughput)
    ups = dict(f1.upstream)
    dino_ext, dino_ref = more.stages[ups["extractor_dinov2"]], more.stages[ups["refstats_dinov2"]]
    assert (dino_ext.kind, dino_ref.kind) == ("extractor", "refstats") and dino_ref.upstream_ids == (dino_ext.id,)
    assert dino_ref.flops == 3000 * 7.0e6 and dino_ref.id != ups["refstats"]
    assert sum(st.kind == "extractor" for st in more.stages.values()) == 2  # shared, once per study
    assert "extractor_dinov2" not in dict(f0.upstream)
    assert f1.id != f0.id  # the metrics are in the fid stage's hash
