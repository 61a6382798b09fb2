"""Trainer contracts: exact resume after a stop, NaN guard keeps the last checkpoint, artefacts + metrics."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from vtp_core import pretrain
from vtp_core.runtime import Diverged, Preempted, load_checkpoint
from vtp_core.tokenizer import load_tokenizer


def poisoned_at(step_losses, step: int):
    """`step_losses` whose total is NaN at step index `step` (its (step+1)-th call)."""
    calls = {"n": 0}

    def poisoned(*args, **kw):
        out = step_losses(*args, **kw)
        calls["n"] += 1
        if calls["n"] == step + 1:
            out["total"] = out["total"] * float("nan")
        return out

    return poisoned


@pytest.mark.parametrize("recipe,micro_batches", [("ae", 1), ("clip_ssl_ae", 1), ("clip_ssl_ae", 2)])
def test_resume_is_bit_identical(recipe, micro_batches, tiny_cfg, make_ctx, stop_after):
    cfg = dataclasses.replace(tiny_cfg, recipe=recipe, steps=5, ckpt_every=100, micro_batches=micro_batches,
                              ssl_drop_rate=0.2)
    full = make_ctx("full")
    pretrain.run(cfg, full)
    part = make_ctx("part", stop_requested=stop_after(2))
    with pytest.raises(Preempted):
        pretrain.run(cfg, part)
    assert load_checkpoint(part.ckpt_path)["step"] == 2
    part.stop_requested = lambda: False
    metrics = pretrain.run(cfg, part)
    a = load_checkpoint(full.out / "tokenizer.pt")["model"]
    b = load_checkpoint(part.out / "tokenizer.pt")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    if recipe == "clip_ssl_ae":
        ta, tb = load_checkpoint(full.ckpt_path)["teacher"], load_checkpoint(part.ckpt_path)["teacher"]
        assert all(torch.equal(ta[k], tb[k]) for k in ta)
    from vtp_core.batches import images_per_step

    assert metrics["steps"] == 5 and metrics["samples_seen"] == 5 * images_per_step(cfg)  # ae: its rec batch only
    assert metrics["tokenizer_flops"] == pytest.approx(5 * metrics["flops_per_step"])


def test_nan_loss_raises_diverged_and_keeps_last_checkpoint(tiny_cfg, make_ctx, monkeypatch):
    monkeypatch.setattr(pretrain, "step_losses", poisoned_at(pretrain.step_losses, 3))
    ctx = make_ctx()
    cfg = dataclasses.replace(tiny_cfg, recipe="ae", steps=6, ckpt_every=2)
    with pytest.raises(Diverged) as err:
        pretrain.run(cfg, ctx)
    assert err.value.step == 3
    ck = load_checkpoint(ctx.ckpt_path)
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["model"].values())
    assert not (ctx.out / "tokenizer.pt").exists()


def test_artefact_loads_and_metrics_complete(tiny_cfg, make_ctx, caplog):
    ctx = make_ctx()
    m = pretrain.run(dataclasses.replace(tiny_cfg, recipe="clip_ae", steps=2), ctx)
    for key in ("final_losses", "steps", "samples_seen", "samples", "lr_peak", "flops_per_step", "tokenizer_flops",
                "encoder_params", "wall_s"):
        assert key in m
    assert m["samples_seen"] == 2 * tiny_cfg.batch_size and m["samples"]["ssl"] == 0
    assert m["lr_peak"] == pytest.approx(tiny_cfg.lr)
    assert set(m["final_losses"]) >= {"rec", "clip", "total"}
    tok = load_tokenizer(ctx.out, "cpu")
    x = torch.zeros(2, 3, 32, 32)
    f = tok.features(x)
    assert f["pre"].shape == (2, 64) and f["bottleneck"].shape == (2, tiny_cfg.latent_channels)
    it = tok.image_text(x, ["a photo of a bag.", "a photo of a coat."])
    assert it["image"].shape == it["text"].shape == (2, 64)


def test_stage2_freezes_encoder_trains_decoder_and_resumes(tiny_cfg, make_ctx, stop_after):
    cfg = dataclasses.replace(tiny_cfg, recipe="ae", steps=2, stage2_steps=4, disc_start=1, disc_channels=8,
                              ckpt_every=100)
    s1 = make_ctx("s1")
    pretrain.run(dataclasses.replace(cfg, stage2_steps=0), s1)
    full = make_ctx("full")
    m = pretrain.run(cfg, full)
    assert m["stage2_final_losses"]["gan_weight"] > 0 and m["stage2_final_losses"]["d"] > 0
    a = load_checkpoint(s1.out / "tokenizer.pt")["model"]
    b = load_checkpoint(full.out / "tokenizer.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("encoder."))
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    part = make_ctx("part", stop_requested=stop_after(4))  # 2 stage-1 steps, then stop in stage 2
    with pytest.raises(Preempted):
        pretrain.run(cfg, part)
    part.stop_requested = lambda: False
    pretrain.run(cfg, part)
    c = load_checkpoint(part.out / "tokenizer.pt")["model"]
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_custom_size_reloads_without_registry(tiny_cfg, make_ctx, monkeypatch):
    from vtp_core import registry

    registry.register("encoder", "test_custom", registry.ViTSize(32, 1, 2), overwrite=True)
    ctx = make_ctx()
    pretrain.run(dataclasses.replace(tiny_cfg, recipe="ae", encoder="test_custom", steps=1), ctx)
    monkeypatch.delitem(registry._REGISTRY["encoder"], "test_custom")
    tok = load_tokenizer(ctx.out)
    assert tok.encoder.width == 32


def test_no_host_read_between_sync_points(tiny_cfg, make_ctx, monkeypatch):
    """The loop reads nothing from the device between sync points: the trainer's thread makes as many host
    reads (item/tolist/bool/float/int/numpy/cpu of a tensor) in 12 steps as in 6 when both sync only at the
    end. (The batch is built as numbers on the prefetch thread: not counted.)"""
    import threading

    main = threading.get_ident()
    reads = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            if threading.get_ident() == main:
                reads["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    monkeypatch.setattr(pretrain, "SYNC_EVERY", 1000)
    counts = []
    for steps in (3, 6, 12):  # the first run warms the process's caches (FLOPs counts, RoPE tables)
        cfg = dataclasses.replace(tiny_cfg, recipe="clip_ssl_ae", steps=steps, log_every=1000, ckpt_every=1000)
        reads["n"] = 0
        pretrain.run(cfg, make_ctx(f"n{steps}"))
        counts.append(reads["n"])
    assert counts[1] == counts[2], counts


def test_stop_is_agreed_at_the_next_sync_point(tiny_cfg, make_ctx, stop_after, monkeypatch):
    """The stop flag is polled every step and acted on at the next sync point (every SYNC_EVERY steps)."""
    monkeypatch.setattr(pretrain, "SYNC_EVERY", 4)
    cfg = dataclasses.replace(tiny_cfg, recipe="ae", steps=9, log_every=100, ckpt_every=100)
    ctx = make_ctx(stop_requested=stop_after(2))
    with pytest.raises(Preempted):
        pretrain.run(cfg, ctx)
    assert load_checkpoint(ctx.ckpt_path)["step"] == 4


def test_non_finite_step_is_skipped_on_the_device_and_reported_with_its_step(tiny_cfg, make_ctx, monkeypatch):
    """A NaN at step 1 is read at the sync point after step 4: Diverged names step 1; the optimizer (fused
    AdamW, `found_inf`) and the EMA teacher never applied step 1, and applied steps 0, 2 and 3."""
    real_adamw = pretrain.adamw
    changed = []

    def recording_adamw(*a, **k):
        opt = real_adamw(*a, **k)
        step = opt.step

        def recorded(*sa, **sk):
            before = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
            out = step(*sa, **sk)
            after = [p.detach() for g in opt.param_groups for p in g["params"]]
            changed.append(any(not torch.equal(x, y) for x, y in zip(before, after)))
            return out

        opt.step = recorded
        return opt

    teacher_changed = []
    real_update = pretrain.Teacher.update

    def update(self, model, momentum, apply=None):
        before = [p.clone() for p in self.encoder.parameters()]
        real_update(self, model, momentum, apply)
        teacher_changed.append(any(not torch.equal(x, y) for x, y in zip(before, self.encoder.parameters())))

    monkeypatch.setattr(pretrain, "step_losses", poisoned_at(pretrain.step_losses, 1))
    monkeypatch.setattr(pretrain, "adamw", recording_adamw)
    monkeypatch.setattr(pretrain.Teacher, "update", update)
    monkeypatch.setattr(pretrain, "SYNC_EVERY", 4)
    ctx = make_ctx()
    cfg = dataclasses.replace(tiny_cfg, recipe="clip_ssl_ae", steps=8, log_every=100, ckpt_every=100,
                              ema_momentum=0.5)
    with pytest.raises(Diverged) as err:
        pretrain.run(cfg, ctx)
    assert err.value.step == 1
    assert changed == [True, False, True, True] and teacher_changed == [True, False, True, True]
    assert not ctx.ckpt_path.exists() and not (ctx.out / "tokenizer.pt").exists()
