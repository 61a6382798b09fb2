"""The memory plan's trainer strategies keep the step's numbers: a step in micro-batches (gradient caching for
the global CLIP and KoLeo terms) gives the one-pass step's losses, gradients and DINO/iBOT centres; activation
checkpointing gives the same numbers with less saved for backward.

Tolerances (float32, the same as tests/vtp_core/test_core_compile.py, for the same reason): a micro-batch
computes the same per-sample functions as the whole batch, but its GEMMs and reductions see other shapes, so
sums may be blocked and ordered differently: ~sqrt(n)·6e-8 relative per sum of n <= 256 terms, ~1e-6 through a
few blocks into the losses (held to rtol 1e-5); gradient entries are sums of near-cancelling terms, so each
gradient is held to 1e-4 of its largest entry. A wrong split is far outside: a micro-batch's share weighted
1 instead of 1/k doubles a gradient, a KoLeo over one micro-batch's neighbours instead of the whole batch
moves it by O(1) of its entries, a centre updated from one micro-batch moves it by O(1) of its spread.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from vtp_core import microbatch
from vtp_core.batches import CaptionTable, make_batch
from vtp_core.data import CLASS_NAMES, load_train
from vtp_core.models.layers import set_activation_checkpointing
from vtp_core.objectives import Teacher, active_objectives, step_losses
from vtp_core.tokenizer import Tokenizer
import small_configs as small


def _setup(**kw):
    torch.manual_seed(0)
    cfg = small.tokenizer(recipe="clip_ssl_ae", batch_size=12, qk_norm=True, rec_loss="l1", **kw)
    model = Tokenizer(cfg)
    teacher = Teacher(model)
    with torch.no_grad():  # centres away from 0, so that a wrong update shows
        teacher.dino_center.center.normal_()
        teacher.ibot_center.center.normal_()
    imgs, labels = load_train(dataclasses.replace(cfg.data, n_train=64))
    batch = make_batch(cfg, imgs, labels, 0, active_objectives(model),
                       CaptionTable(CLASS_NAMES, model.text.size.context_length))
    return model, teacher, batch


def _run(model, teacher, batch, state, k: int | None):
    """One step's detached losses, gradients (name -> grad) and centres after it, from `state`."""
    teacher.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    if k is None:
        losses = step_losses(model, teacher, batch, 0.04)
        losses["total"].backward()
        losses = {n: v.detach() for n, v in losses.items()}
    else:
        losses = microbatch.step(model, teacher, batch, 0.04, active_objectives(model), None, k)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    centres = {n: v.clone() for n, v in teacher.state_dict().items() if "center" in n}
    return losses, grads, centres


def _assert_same(a, b):
    (la, ga, ca), (lb, gb, cb) = a, b
    assert set(la) == set(lb) and set(ga) == set(gb)
    for n in la:
        torch.testing.assert_close(la[n], lb[n], rtol=1e-5, atol=1e-7, msg=n)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=0, atol=1e-4 * gb[n].abs().max().item() + 1e-12, msg=n)
    for n in ca:
        torch.testing.assert_close(ca[n], cb[n], rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("k", [2, 5])
def test_micro_batched_step_equals_one_pass(k):
    """Every objective (rec, CLIP over the whole batch, DINO + iBOT + KoLeo) in k micro-batches, uneven for
    k=5 (12 CLIP images, 6 SSL images, 3 rec images: parts of 2-3, 1-2 and 1 rows): the same losses, the same
    gradient for every parameter (the logit scale and the mask token included), the same centres."""
    model, teacher, batch = _setup(clip_drop_rate=0.0, ssl_drop_rate=0.0)
    state = {n: v.clone() for n, v in teacher.state_dict().items()}
    one = _run(model, teacher, batch, state, None)
    assert {"clip", "dino", "ibot", "koleo", "rec", "total"} <= set(one[0]) and "logit_scale" in one[1]
    _assert_same(_run(model, teacher, batch, state, k), one)


def test_a_wrong_split_is_caught():
    """The check above can fail: KoLeo over each micro-batch's own features (no gradient caching) is refused."""
    model, teacher, batch = _setup(clip_drop_rate=0.0, ssl_drop_rate=0.0)
    state = {n: v.clone() for n, v in teacher.state_dict().items()}
    one = _run(model, teacher, batch, state, None)
    real = microbatch.koleo_term
    try:
        microbatch.koleo_term = lambda c: real(c) * 2.0  # a 2x KoLeo weight in the cached pass
        with pytest.raises(AssertionError):
            _assert_same(_run(model, teacher, batch, state, 2), one)
    finally:
        microbatch.koleo_term = real


def test_micro_batches_replay_sample_drop():
    """With stochastic depth on, the second (autograd) pass of a micro-batch drops the samples its first pass
    dropped. CLIP + rec (no drop on rec): a step in one micro-batch (k=1, both passes over the whole batch)
    draws exactly what the one-pass step draws, so every gradient agrees; without the replay the encoder's
    would not (checked: the same step with the replay switched off fails)."""
    def setup():
        torch.manual_seed(0)
        cfg = small.tokenizer(recipe="clip_ae", batch_size=12, clip_drop_rate=0.25, rec_loss="l1")
        model = Tokenizer(cfg)
        imgs, labels = load_train(dataclasses.replace(cfg.data, n_train=64))
        batch = make_batch(cfg, imgs, labels, 0, active_objectives(model),
                           CaptionTable(CLASS_NAMES, model.text.size.context_length))
        return model, batch

    def run(model, batch, k):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        if k is None:
            losses = step_losses(model, None, batch, 0.04)
            losses["total"].backward()
        else:
            losses = microbatch.step(model, None, batch, 0.04, active_objectives(model), None, k)
        return ({n: v.detach() for n, v in losses.items()},
                {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, {})

    model, batch = setup()
    one = run(model, batch, None)
    _assert_same(run(model, batch, 1), one)
    real = microbatch._set_rng
    try:
        microbatch._set_rng = lambda state, device: None  # no replay
        with pytest.raises(AssertionError):
            _assert_same(run(model, batch, 1), one)
    finally:
        microbatch._set_rng = real


def _saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_activation_checkpointing_same_numbers_less_saved():
    """Every block of every tower under `torch.utils.checkpoint`, with sample drop on (its draws replayed in
    the recompute): the same losses and gradients, and fewer bytes saved for backward."""
    model, teacher, batch = _setup(clip_drop_rate=0.25, ssl_drop_rate=0.3)
    state = {n: v.clone() for n, v in teacher.state_dict().items()}
    plain = _run(model, teacher, batch, state, None)
    teacher.load_state_dict(state)
    torch.manual_seed(1)
    plain_bytes = _saved_bytes(lambda: step_losses(model, teacher, batch, 0.04))
    set_activation_checkpointing(model, True)
    assert model.encoder.trunk.checkpoint_blocks and model.decoder.stack.checkpoint_blocks
    assert model.text.checkpoint_blocks
    checkpointed = _run(model, teacher, batch, state, None)
    teacher.load_state_dict(state)
    torch.manual_seed(1)
    ckpt_bytes = _saved_bytes(lambda: step_losses(model, teacher, batch, 0.04))
    _assert_same(checkpointed, plain)
    assert ckpt_bytes < 0.7 * plain_bytes, (ckpt_bytes, plain_bytes)


def test_bounds_cover_every_row_once():
    for n in range(0, 13):
        for k in range(1, 7):
            parts = microbatch.bounds(n, k)
            assert [i for a, b in parts for i in range(a, b)] == list(range(n))
            assert len(parts) == min(n, k) and all(b > a for a, b in parts)
