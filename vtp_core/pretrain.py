"""Stage 1 of VTP: joint pre-training of the tokenizer (reconstruction + CLIP + DINOv2-style SSL),
then the optional stage 2 (GAN decoder fine-tuning, `vtp_core.stage2`).

Read top to bottom like DiT's train.py. Each step draws one batch (a pure function of seed and step):
the whole batch feeds CLIP, random subsets of batch·ssl_fraction and batch·rec_fraction feed the SSL
multi-crop and the reconstruction; one AdamW step on λ_rec·L_rec + λ_ssl·L_ssl + λ_clip·L_clip
(docs/method.md#total-loss-and-batches), then the EMA teacher update. Checkpoints hold everything needed for a
bit-identical resume on CPU.

With WORLD_SIZE > 1 the step runs under DistributedDataParallel (`vtp_core.distributed`): the several
encoder passes of one step (CLIP, SSL student views, reconstruction) are one forward of `StepModule`, so
DDP sees one forward and one backward; rank 0 writes files. With `micro_batches` > 1 the step runs in
micro-batches (`vtp_core.microbatch`, several backward passes) on the bare module and the gradients are
averaged over ranks once; `checkpoint_blocks` recomputes every block in backward. The memory plan sets both.

The loop never waits on the device inside a step: the losses stay on the device and are read every
`SYNC_EVERY` steps (and at log and checkpoint steps). A non-finite step is never applied: whether the
global-batch losses and the gradient norm are finite is a device flag that the fused AdamW kernel
(`found_inf`) and the EMA update obey; the first such step is read at the next sync, and the run stops
there as `Diverged` at that step, the last checkpoint untouched. The stop flag (preemption) is polled
every step on the host and agreed across ranks at the sync points.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vtp_core import distributed, flops, microbatch, stage2
from vtp_core.batches import caption_source, images_per_step, objective_batches
from vtp_core.config import TokenizerConfig
from vtp_core.data import load_train
from vtp_core.loader import step_batches
from vtp_core.losses.lpips import load_lpips
from vtp_core.models.layers import set_activation_checkpointing
from vtp_core.objectives import Teacher, active_objectives, step_losses
from vtp_core.registry import count_params
from vtp_core.runtime import (Diverged, Preempted, StageContext, adamw, atomic_torch_save,
                              load_checkpoint, rng_state, seed_everything, set_rng_state)
from vtp_core.schedules import ema_momentum_at, lr_at, teacher_temp_at
from vtp_core.tokenizer import Tokenizer, tokenizer_payload

NO_DECAY = ("cls_token", "mask_token", "positional_embedding", "logit_scale", "prototypes")
# final_losses: means over the last 20 steps (or all, if fewer), not over log_every: log_every is unversioned,
# so it may change log lines but no number (tests/test_unversioned_fields.py)
FINAL_LOSS_WINDOW = 20
# host reads (losses, the divergence flag, the agreed stop flag) every this many steps, and at log/checkpoint steps
SYNC_EVERY = 10
RECOMPILE_LIMIT = 64  # compiled graphs per block code object (`compile_towers`)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, tokens, position embeddings, the logit scale, DINO prototypes."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.split(".")[-1] in NO_DECAY else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class StepModule(torch.nn.Module):
    """One training step's losses as a single module call (what DDP wraps). The EMA teacher and LPIPS
    are held outside the module tree: they are not trained, and DDP must not broadcast or reduce them."""

    def __init__(self, model: Tokenizer, teacher, lpips, active: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.__dict__.update(teacher=teacher, lpips=lpips, active=active)

    def forward(self, batch: dict, teacher_temp: float) -> dict:
        return step_losses(self.model, self.teacher, batch, teacher_temp, self.active, self.lpips)


def compile_towers(model: Tokenizer, teacher: Teacher | None = None, **compile_kwargs) -> None:
    """In-place `Module.compile` (state-dict keys unchanged) of every transformer block the step runs: the
    encoder's, the teacher's, the pixel decoder's and the text tower's. Per block, not per tower: the blocks
    of a stack share one compiled graph per input shape (dynamo treats their parameters as inputs), compile
    time does not grow with depth, and the code between blocks (patch embedding, RoPE table, heads) stays
    eager. Shapes are specialised (`dynamic=False`): a step has a few fixed batch/crop shapes."""
    # every Block instance shares one code object, and dynamo keeps at most `recompile_limit` (8) graphs per code
    # object: the encoder alone sees ~6 variants (CLIP, SSL global/local, rec batches, their drop rates, the
    # teacher without grad), the decoder and micro-batch passes more. Past the limit a block silently runs eager.
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    stacks = [model.encoder.trunk.blocks, model.decoder.stack.blocks]
    stacks += [model.text.blocks] if hasattr(model, "text") else []
    stacks += [teacher.encoder.trunk.blocks] if teacher is not None else []
    for blocks in stacks:
        for block in blocks:
            block.compile(**{"dynamic": False, **compile_kwargs})


def maybe_compile(model: Tokenizer, teacher: Teacher | None, cfg: TokenizerConfig, device: torch.device) -> None:
    """`compile_towers` when `cfg.compile` and the step runs on CUDA; on CPU the model runs eager (compiling
    costs start-up and a C++ toolchain per cell there). Eager and compiled agree to float rounding
    (tests/vtp_core/test_core_compile.py)."""
    if cfg.compile and device.type == "cuda":
        compile_towers(model, teacher)


def run(cfg: TokenizerConfig, ctx: StageContext) -> dict:
    t_start, log = time.time(), ctx.log
    device = torch.device(distributed.setup(ctx.device))
    cuda = device.type == "cuda"
    seed_everything(cfg.seed)
    model = Tokenizer(cfg).to(device)
    teacher = Teacher(model).to(device) if model.lambda_ssl else None
    lpips = load_lpips(cfg, log, device)
    opt = adamw(param_groups(model, cfg.weight_decay), device, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps)
    s2 = stage2.Stage2(model, cfg, device) if cfg.stage2_steps > 0 else None
    images, labels = load_train(cfg.data)
    active = active_objectives(model)
    captions = caption_source(cfg.data, model.text.size.context_length) if "clip" in active else None
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext

    step, wall_before, window, s2_losses, lr_peak = 0, 0.0, {}, {}, 0.0
    if ctx.ckpt_path.is_file():
        ck = load_checkpoint(ctx.ckpt_path)
        model.load_state_dict(ck["model"])
        if teacher is not None:
            teacher.load_state_dict(ck["teacher"])
        opt.load_state_dict(ck["optimizer"])
        if s2 is not None and ck.get("stage2"):
            s2.load_state_dict(ck["stage2"])
        set_rng_state(ck["rng"])
        step, wall_before, window = ck["step"], ck["wall_s"], ck["loss_window"]
        lr_peak = float(ck.get("lr_peak", 0.0))
        log.info("pretrain: resumed from %s at step %d (stage 2 step %d)", ctx.ckpt_path, step, s2.step if s2 else 0)
    maybe_compile(model, teacher, cfg, device)
    set_activation_checkpointing(model, cfg.checkpoint_blocks)

    def save() -> None:
        if not distributed.is_main():
            return distributed.barrier()
        atomic_torch_save({"model": model.state_dict(), "teacher": teacher.state_dict() if teacher else {},
                           "optimizer": opt.state_dict(), "stage2": s2.state_dict() if s2 else {}, "scaler": {},
                           "step": step, "rng": rng_state(), "samples_seen": step * images_per_step(cfg),
                           "wall_s": wall_before + time.time() - t_start, "loss_window": window,
                           "lr_peak": lr_peak}, ctx.ckpt_path)
        distributed.barrier()

    # ------------------------------------------------------------------ stage 1
    # DDP is built after the resume (its broadcast of rank 0's weights is then a no-op). Recipes leave
    # some parameters without a gradient (the iBOT mask token outside SSL), hence find_unused_parameters;
    # the DINO centers are all-reduced by the loss itself, hence no buffer broadcast. A step in micro-batches
    # runs on the bare module and averages the gradients itself.
    step_module = StepModule(model, teacher, lpips, active)
    micro = cfg.micro_batches > 1
    net = step_module if micro else distributed.wrap_ddp(step_module, device, find_unused_parameters=True,
                                                         broadcast_buffers=False)
    params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain", disable=not ctx.progress, leave=False)
    model.train()
    # later steps' batches are built on a thread or in worker processes (pure in the step: changes no number)
    next_batch = step_batches(cfg, images, labels, active, captions, step, device)
    names: list[str] = []
    pending: list[torch.Tensor] = []  # each unread step's global-batch mean losses, on the device
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first non-finite step (-1: none)
    bad_value = torch.zeros((), device=device)
    stop_local = False
    try:
        while step < cfg.steps:
            lr = lr_at(cfg, step)
            lr_peak = max(lr_peak, lr)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = next_batch(step)
            opt.zero_grad(set_to_none=True)
            if micro:
                losses = microbatch.step(model, teacher, batch, teacher_temp_at(cfg, step), active, lpips,
                                         cfg.micro_batches, amp)
                distributed.average_gradients(params)
            else:
                with amp():
                    losses = net(batch, teacher_temp_at(cfg, step))
                losses["total"].backward()  # under DDP: gradients averaged over ranks
            names = list(losses)
            # global-batch means of every loss in one all-reduce (no host read): the logged curve does not depend
            # on the world size, and every rank reaches the same verdict on a non-finite step
            seen = distributed.mean_across(torch.stack([losses[k].detach().float() for k in names]))
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf)
            ok = torch.isfinite(seen).all() & torch.isfinite(grad_norm)
            opt.found_inf = (~ok).float()  # the fused AdamW kernel skips the update (and its step count)
            opt.step()
            if teacher is not None:
                teacher.update(model, ema_momentum_at(cfg, step), ok)
            new_bad = (first_bad < 0) & ~ok
            total = seen[names.index("total")]
            bad_value = torch.where(new_bad, torch.where(torch.isfinite(total), grad_norm.float(), total), bad_value)
            first_bad = torch.where(new_bad, torch.full_like(first_bad, step), first_bad)
            pending.append(seen)
            step += 1
            bar.update(1)
            stop_local = stop_local or ctx.stop_requested()
            if not (step % SYNC_EVERY == 0 or step % cfg.log_every == 0 or step % cfg.ckpt_every == 0
                    or step == cfg.steps):
                continue
            # ---- a sync point: the host reads what the device has accumulated
            if int(first_bad) >= 0:
                raise Diverged(int(first_bad), float(bad_value))
            keep = max(cfg.log_every, FINAL_LOSS_WINDOW)  # the log's window and the final one
            for row in torch.stack(pending).tolist():
                window = {k: (window.get(k, []) + [v])[-keep:] for k, v in zip(names, row)}
            pending.clear()
            if step % cfg.log_every == 0 or step == cfg.steps:
                means = {k: sum(v[-cfg.log_every:]) / len(v[-cfg.log_every:]) for k, v in window.items()}
                bar.set_postfix(loss=f"{means['total']:.4f}")
                log.info("pretrain step %d/%d %s", step, cfg.steps, " ".join(f"{k}={v:.4f}" for k, v in means.items()))
                ctx.heartbeat({"step": step, "steps": cfg.steps, "loss": means["total"]})
            stop = distributed.any_across(stop_local)
            if step % cfg.ckpt_every == 0 or stop:
                save()
                if stop and step < cfg.steps:
                    bar.close()
                    raise Preempted(f"pretrain stopped at step {step}; checkpoint {ctx.ckpt_path}")
    finally:
        next_batch.close()
    bar.close()
    save()

    # ------------------------------------------------------------------ stage 2 (optional)
    if s2 is not None and s2.step < cfg.stage2_steps:
        def on_step(l2: dict) -> None:
            if s2.step % cfg.log_every == 0 or s2.step == cfg.stage2_steps:
                log.info("stage2 step %d/%d %s", s2.step, cfg.stage2_steps, " ".join(f"{k}={v:.4f}" for k, v in l2.items()))
                ctx.heartbeat({"stage2_step": s2.step, "stage2_steps": cfg.stage2_steps, "loss": l2["rec"]})

        s2_losses = stage2.train(model, s2, cfg, ctx, (images, labels), lpips, save, on_step)
        save()

    if distributed.is_main():
        atomic_torch_save(tokenizer_payload(model), Path(ctx.out) / "tokenizer.pt")
    distributed.barrier()
    step_flops = flops.train_step_flops(cfg)
    per_objective = objective_batches(cfg)
    return {
        "final_losses": {k: sum(v[-FINAL_LOSS_WINDOW:]) / len(v[-FINAL_LOSS_WINDOW:]) for k, v in window.items()},
        "stage2_final_losses": s2_losses or None,
        "steps": cfg.steps,
        "stage2_steps": cfg.stage2_steps,
        "samples_seen": cfg.steps * images_per_step(cfg),  # distinct images drawn and trained on
        "samples": {k: cfg.steps * b for k, b in per_objective.items()},  # per objective
        "data_size": int(len(images)),
        "batch": per_objective,
        "lr_peak": lr_peak,  # the schedule's peak, reached inside the run (a rehearsal checks it against lr)
        "lr": cfg.lr,
        "flops_per_step": step_flops["total"],
        "flops_by_component": step_flops["by_component"],
        "tokenizer_flops": cfg.steps * step_flops["total"],  # stage 1 only (the scaling axis)
        "stage2_flops": cfg.stage2_steps * flops.stage2_step_flops(cfg) if cfg.stage2_steps else 0.0,
        "encoder_params": flops.encoder_params(cfg),
        "total_params": count_params(model),
        "lpips": lpips is not None,
        "wall_s": wall_before + time.time() - t_start,
        "device": str(device),
        "world_size": distributed.world_size(),
    }
