"""`dit` stage: train the fixed-spec class-conditional DiT with flow matching on cached latents.

Why it looks like this (docs/protocol.md#dit-training; DiT's train.py style): the whole loop is readable top to
bottom. AdamW with a constant lr, EMA for sampling, bf16 autocast + fused AdamW only on CUDA.
The stage must survive preemption and reach the *same* weights as an uninterrupted run (bit-identical
on CPU), so the checkpoint holds model, EMA, optimizer, step, every RNG, the data position and the
loss history; the data order is a pure function of (seed, epoch). A NaN/inf loss stops the run
with `Diverged` before the bad update is applied, leaving the last good checkpoint.

With WORLD_SIZE > 1 (torchrun, or SLURM tasks: `dit_eval.distributed`) it runs DistributedDataParallel:
every rank draws the same global batch and the same per-sample randomness for it (flip, noise,
timesteps, class dropout, in the single-process RNG order) and trains on its contiguous slice, so the
loss curve equals one process with the same global batch up to float reduction order. Rank 0 writes
the (un-wrapped, 1-process-loadable) checkpoints and dit.pt. With one process the loop is unchanged.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from dit_eval import distributed
from dit_eval.flops import dit_train_step_flops
from dit_eval.flow import flow_loss, interpolate, sample_t, training_loss, velocity_target
from dit_eval.latents import LatentStore, load_latents, load_stats
from dit_eval.models import count_params, create_dit
from vtp_core.cfg import to_dict
from vtp_core.runtime import (Diverged, Preempted, StageError, adamw, atomic_torch_save,
                              load_checkpoint, rng_state, seed_everything, set_rng_state)


class EpochSampler:
    """Batches of indices from per-epoch permutations seeded by (seed, epoch): the position
    (epoch, pos) is all a checkpoint needs to continue the exact same data order."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, pos: int = 0):
        self.n, self.bs, self.seed, self.epoch, self.pos = n, batch_size, seed, epoch, pos
        self._perm = self._make_perm()

    def _make_perm(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))

    def next(self) -> torch.Tensor:
        out = []
        need = self.bs
        while need:
            take = self._perm[self.pos:self.pos + need]
            out.append(take)
            need -= len(take)
            self.pos += len(take)
            if self.pos >= self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._make_perm()
        return torch.cat(out)

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}


def global_step_loss(ddp, raw, x1, y, mu: float, sigma: float) -> torch.Tensor:
    """This rank's flow loss on its slice of the global batch (x1, y). The noise, timesteps and class
    dropout are drawn for the whole global batch in `training_loss`'s RNG order (randn x0, randn t,
    then the model's rand for dropout), so every rank sees the same values as one process would."""
    sl = distributed.local_slice(x1.shape[0])
    x0 = torch.randn_like(x1)
    t = sample_t(x1.shape[0], mu, sigma, device=x1.device)
    if raw.training and raw.class_dropout > 0:
        drop = torch.rand(y.shape[0], device=y.device) < raw.class_dropout
        y = torch.where(drop, torch.full_like(y, raw.num_classes), y)
    x0, x1, t, y = x0[sl], x1[sl], t[sl], y[sl]
    keep, raw.class_dropout = raw.class_dropout, 0.0  # labels are already dropped: no second draw
    try:
        pred = ddp(interpolate(x0, x1, t), t, y)
    finally:
        raw.class_dropout = keep
    return flow_loss(pred, velocity_target(x0, x1))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_p = list(ema.parameters())
    torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - decay)


def train_dit(spec, out: Path, data, stats: dict, device: str = "cpu", progress: bool = False,
              stop_requested=lambda: False, heartbeat=lambda info: None, log=None) -> dict:
    """The stage body: `data` = a LatentStore or one dict {"latents","latents_flip","labels"};
    `stats` = the latents' stats.pt."""
    t0 = time.time()
    out = Path(out)
    ckpt_path = out / "ckpt" / "last.pt"
    device = distributed.setup(device)
    world, main = distributed.world_size(), distributed.is_main()
    cuda = torch.device(device).type == "cuda"
    if spec.batch_size % world:
        raise StageError(f"dit: batch_size {spec.batch_size} is not divisible by WORLD_SIZE={world}")
    store = data if isinstance(data, LatentStore) else LatentStore([data])
    n, latent_shape = len(store), store.shape
    if n == 0:
        raise StageError("dit: the latents stage holds no latents")
    labels_all = store.all("labels")
    if labels_all.max().item() >= spec.num_classes or labels_all.min().item() < 0:
        raise StageError(f"dit: labels span [{labels_all.min().item()}, {labels_all.max().item()}] but "
                         f"num_classes={spec.num_classes}")
    mean = stats["mean"].view(1, -1, 1, 1).to(device)
    std = stats["std"].view(1, -1, 1, 1).to(device)

    seed_everything(spec.seed)
    model = create_dit(spec.size, latent_shape[0], latent_shape[1], spec.num_classes, spec.class_dropout).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = adamw(model.parameters(), device, lr=spec.lr, betas=(spec.beta1, spec.beta2),
                weight_decay=spec.weight_decay)
    sampler = EpochSampler(n, spec.batch_size, spec.seed)
    step, losses = 0, []

    if ckpt_path.exists():  # exact resume
        ck = load_checkpoint(ckpt_path)
        if ck["stats_hash"] != stats["hash"]:
            raise StageError(f"dit: checkpoint was trained with latent stats {ck['stats_hash']}, "
                             f"latents now have {stats['hash']}; delete {ckpt_path} to restart")
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        step, losses = ck["step"], ck["losses"].tolist()
        sampler = EpochSampler(n, spec.batch_size, spec.seed, **ck["data"])
        set_rng_state(ck["rng"])
        if cuda and world > 1 and "cuda_dev" in ck["rng"]:  # every rank continues rank 0's device stream
            torch.cuda.set_rng_state(ck["rng"]["cuda_dev"], device)
    distributed.barrier()  # nobody may overwrite the checkpoint while another rank still reads it
    # built after the resume (its init broadcast of rank 0's weights is then a no-op)
    net = distributed.wrap_ddp(model, torch.device(device))

    def save() -> None:
        if main:
            rng = rng_state()
            if cuda and world > 1:
                rng["cuda_dev"] = torch.cuda.get_rng_state(device)
            atomic_torch_save({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                               "step": step, "losses": torch.tensor(losses, dtype=torch.float64),
                               "data": sampler.state(), "rng": rng, "stats_hash": stats["hash"]}, ckpt_path)
        distributed.barrier()

    from tqdm.auto import tqdm

    bar = tqdm(total=spec.steps, initial=step, desc="dit", disable=not (progress and main), leave=False)
    model.train()
    while step < spec.steps:
        idx = sampler.next()
        x1 = store.gather("latents", idx)
        if store.has_flip:  # each sample picks its flipped latent with p = 0.5
            flip = torch.rand(len(idx)) < 0.5
            x1 = torch.where(flip.view(-1, 1, 1, 1), store.gather("latents_flip", idx), x1)
        x1 = x1.to(device, non_blocking=True)
        y = store.gather("labels", idx).to(device, non_blocking=True)
        x1 = (x1 - mean) / std
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            if world == 1:
                loss = training_loss(model, x1, y, spec.t_mu, spec.t_sigma)
            else:
                loss = global_step_loss(net, model, x1, y, spec.t_mu, spec.t_sigma)
        # the global-batch mean (equal slices), identical on every rank, so all ranks stop together
        loss_v = distributed.mean_across(loss.detach()).item()
        if loss_v != loss_v or abs(loss_v) == float("inf"):
            raise Diverged(step, loss_v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, model, spec.ema)
        step += 1
        losses.append(loss_v)
        bar.update(1)
        if step % spec.log_every == 0 or step == spec.steps:
            bar.set_postfix(loss=f"{loss_v:.4f}")
            heartbeat({"step": step, "loss": loss_v})
        if step % spec.ckpt_every == 0 and step < spec.steps:
            save()
        if distributed.any_across(stop_requested()) and step < spec.steps:
            save()
            raise Preempted(f"dit: stopped at step {step}/{spec.steps}, checkpoint saved")
    bar.close()
    save()

    if main:
        atomic_torch_save({"spec": to_dict(spec), "model": model.state_dict(), "ema": ema.state_dict(),
                           "stats_hash": stats["hash"], "latent_shape": list(latent_shape)}, out / "dit.pt")
    distributed.barrier()
    step_flops = dit_train_step_flops(spec, latent_shape)
    k = max(1, min(10, len(losses)))
    mean = (lambda xs: sum(xs) / len(xs) if xs else None)
    return {"loss": losses[-1] if losses else None, "loss_start": mean(losses[:k]), "loss_end": mean(losses[-k:]),
            "steps": step, "dit_params": count_params(model), "dit_step_flops": step_flops,
            "dit_flops": step_flops * spec.steps, "stats_hash": stats["hash"],
            "latent_shape": list(latent_shape), "world_size": world, "wall_s": round(time.time() - t0, 3)}


def run(cfg, ctx) -> dict:
    """Stage entry: latents + verified stats from the `latents` stage."""
    latents_dir = ctx.input("latents")
    stats = load_stats(latents_dir)
    return train_dit(cfg, ctx.out, load_latents(latents_dir), stats, ctx.device, ctx.progress,
                     ctx.stop_requested, ctx.heartbeat, ctx.log)
