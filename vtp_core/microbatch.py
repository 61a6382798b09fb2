"""One training step in micro-batches: the losses and gradients of `objectives.step_losses(...)["total"]
.backward()`, with each objective's activations alive for one micro-batch at a time.

Why: the paper's batch (16,384 images over 8 GPUs) does not fit an 80 GB GPU in one pass; the memory plan
(`vtp_core.memory`) picks how many micro-batches a cell needs (`TokenizerConfig.micro_batches`).

How each term is split, so that the sum of the parts is the whole:
- per-sample means (reconstruction, DINO): each micro-batch's mean, weighted by its share of the rank's batch,
  is back-propagated as soon as it is computed; iBOT is a sum over masked patches over the rank's crop count,
  so each part is divided by the whole count;
- the global terms, CLIP (contrastive over the whole global batch, negatives gathered from every rank) and
  KoLeo (nearest neighbours among every rank's CLS features), by gradient caching (GradCache, Gao et al.
  2021): a pass without autograd computes every micro-batch's embeddings; the loss over the whole gathered
  batch, on those embeddings as leaves, gives each embedding's gradient; each micro-batch then runs again
  with autograd and is back-propagated from its slice of those gradients. The second pass replays the
  first's RNG state, so the sample-drop draws (stochastic depth) are the same in both. Cost: one more
  forward of the towers that feed a global term.
- the DINO/iBOT centres are updated once, from the sums over every micro-batch.

What differs from one pass: float rounding, and stochastic depth, which drops a share of each micro-batch
rather than of the whole batch (so `micro_batches` is versioned). With no drop, a CPU test pins losses and
gradients to the one-pass step (tests/vtp_core/test_core_microbatch.py).

Under DDP the caller runs this on the bare module and averages the gradients once afterwards
(`distributed.average_gradients`): several backward passes per step are not what DDP's hooks expect.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn as nn

from vtp_core.batches import mask_tensors
from vtp_core.distributed import gather_with_grad
from vtp_core.losses import clip_loss, dino_loss, ibot_loss, reconstruction_loss
from vtp_core.objectives import Teacher, clip_embeddings, koleo_term, ssl_student, ssl_teacher
from vtp_core.tokenizer import Tokenizer


def bounds(n: int, k: int) -> list[tuple[int, int]]:
    """[a, b) ranges of at most k near-equal, non-empty micro-batches of n rows."""
    edges = [round(i * n / k) for i in range(k + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def _rng(device: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class _Sums:
    """Detached running sums of the logged losses (each added with its micro-batch's weight)."""

    def __init__(self):
        self.out: dict[str, torch.Tensor] = {}

    def add(self, losses: dict[str, torch.Tensor], weight: float = 1.0) -> None:
        for k, v in losses.items():
            v = v.detach().float() * weight
            self.out[k] = self.out[k] + v if k in self.out else v


def _rec(model: Tokenizer, x: torch.Tensor, lpips: nn.Module | None, k: int, autocast, sums: _Sums) -> None:
    cfg, n = model.cfg, x.shape[0]
    for a, b in bounds(n, k):
        with autocast():
            part = reconstruction_loss(model.decode(model.encoder.encode(x[a:b], cfg.rec_drop_rate)), x[a:b], lpips,
                                       cfg.lambda_lpips)
        (cfg.lambda_rec * part["rec"] * ((b - a) / n)).backward()
        sums.add(part, (b - a) / n)


def _clip(model: Tokenizer, images: torch.Tensor, text: torch.Tensor, k: int, autocast, sums: _Sums) -> None:
    cfg, device = model.cfg, images.device
    parts = bounds(images.shape[0], k)
    states, imgs, txts = [], [], []
    with torch.no_grad():
        for a, b in parts:
            states.append(_rng(device))
            with autocast():
                img, txt = clip_embeddings(model, images[a:b], text[a:b])
            imgs.append(img)
            txts.append(txt)
    img, txt = torch.cat(imgs).requires_grad_(), torch.cat(txts).requires_grad_()
    with autocast():
        loss = clip_loss(gather_with_grad(img), gather_with_grad(txt), model.logit_scale, cfg.logit_scale_max)
    (model.lambda_clip * loss).backward()  # the embeddings' gradients, and the logit scale's
    for (a, b), state in zip(parts, states):
        _set_rng(state, device)
        with autocast():
            img_c, txt_c = clip_embeddings(model, images[a:b], text[a:b])
        torch.autograd.backward([img_c, txt_c], [img.grad[a:b].to(img_c.dtype), txt.grad[a:b].to(txt_c.dtype)])
    sums.add({"clip": loss})


def _ssl_part(batch: dict[str, torch.Tensor], n_local: int, a: int, b: int) -> dict[str, torch.Tensor]:
    """Images [a, b) of this rank's SSL batch: their two global crops, local crops and masks, in the batch's
    layout ([view0; view1], locals by view), with the mask indices renumbered for the part."""
    glob, loc = batch["global_views"], batch["local_views"]
    n = glob.shape[0] // 2
    rows = torch.cat([torch.arange(a, b), torch.arange(n + a, n + b)]).to(glob.device)
    local = loc.unflatten(0, (n_local, n))[:, a:b].flatten(0, 1) if n_local else loc
    return {"global_views": glob[rows], "local_views": local, **mask_tensors(batch["masks"][rows])}


def _ssl(model: Tokenizer, teacher: Teacher, batch: dict[str, torch.Tensor], teacher_temp: float, k: int, autocast,
         sums: _Sums) -> None:
    cfg, device = model.cfg, batch["global_views"].device
    n = batch["global_views"].shape[0] // 2
    parts = [(a, b, _ssl_part(batch, cfg.n_local_crops, a, b)) for a, b in bounds(n, k)]
    # pass 1: every part's global CLS features without autograd, for KoLeo over the whole batch
    states, feats = [], []
    with torch.no_grad():
        for _, _, part in parts:
            states.append(_rng(device))
            with autocast():
                tok, _ = model.encoder.tokens(part["global_views"], mask=part["masks"], drop_rate=cfg.ssl_drop_rate)
                feats.append(model.head_input(tok)[:, 0])
    views = [torch.cat([f[: b - a] for (a, b, _), f in zip(parts, feats)]),
             torch.cat([f[b - a:] for (a, b, _), f in zip(parts, feats)])]
    cls = torch.cat(views).requires_grad_()  # (2n, D) [view0; view1]
    with autocast():
        koleo = koleo_term(cls)
    (model.lambda_ssl * cfg.koleo_weight * koleo).backward()
    # pass 2: each part with autograd: its DINO/iBOT share, and KoLeo through the cached feature gradients
    dino = ibot = 0.0
    sum_cls = sum_patch = 0.0
    n_cls = n_patch = 0
    for (a, b, part), state in zip(parts, states):
        _set_rng(state, device)
        with autocast():
            t = ssl_teacher(teacher, cfg, part["global_views"], part["mask_idx"], teacher_temp)
            s = ssl_student(model, part)
            d = dino_loss(s["cls"], s["loc"], t["cls_p"], cfg.n_local_crops, cfg.student_temp) * ((b - a) / n)
            i = ibot_loss(s["patch"], t["patch_p"], part["mask_weight"], 2 * n, cfg.student_temp)
        grad = torch.cat([cls.grad[a:b], cls.grad[n + a:n + b]]).to(s["cls_features"].dtype)
        (model.lambda_ssl * (d + i) + (s["cls_features"] * grad).sum()).backward()
        dino, ibot = dino + d.detach().float(), ibot + i.detach().float()
        sum_cls = sum_cls + t["cls"].float().sum(0, keepdim=True)
        sum_patch = sum_patch + t["patch"].float().sum(0, keepdim=True)
        n_cls, n_patch = n_cls + t["cls"].shape[0], n_patch + t["patch"].shape[0]
    teacher.dino_center.update_from_sum(sum_cls, n_cls)
    teacher.ibot_center.update_from_sum(sum_patch, n_patch)
    sums.add({"dino": dino, "ibot": ibot, "koleo": koleo, "ssl": dino + ibot + cfg.koleo_weight * koleo.detach()})


def step(model: Tokenizer, teacher: Teacher | None, batch: dict[str, torch.Tensor], teacher_temp: float,
         objectives: tuple[str, ...], lpips: nn.Module | None, k: int,
         autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """Forward and backward of one step in `k` micro-batches per objective: afterwards `.grad` holds what
    `step_losses(...)["total"].backward()` would leave (accumulated onto existing gradients), and the
    returned losses (detached) are the ones it would return. `autocast()` wraps each forward (not the
    backward passes)."""
    sums = _Sums()
    total = 0.0
    if "rec" in objectives:
        _rec(model, batch["rec_images"], lpips, k, autocast, sums)
        total = total + model.cfg.lambda_rec * sums.out["rec"]
    if "clip" in objectives:
        _clip(model, batch["clip_images"], batch["clip_text"], k, autocast, sums)
        total = total + model.lambda_clip * sums.out["clip"]
    if "ssl" in objectives:
        _ssl(model, teacher, batch, teacher_temp, k, autocast, sums)
        total = total + model.lambda_ssl * sums.out["ssl"]
    return {**sums.out, "total": total}
