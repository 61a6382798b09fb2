"""Data-parallel pretraining on CPU (gloo, 2 processes): ranks stay identical (weights and loss curve), and
two processes match one process on the same global batch, for `ae` and `clip_ssl_ae`.

"Match" is judged at tolerances that follow from what is compared, not from one machine's rounding:
- the first step's gradients: the same sums over the global batch in another order (two halves and an
  all-reduce), so they differ by at most the float32 error of a sum of K terms, K·u·max|g| (u = 2^-24, K = the
  tokens one step sums over);
- the weights after that first AdamW step: the update lr·g/(|g| + eps) amplifies a gradient difference Δg by
  up to lr·eps/(|g| + eps)², and by at most 2·lr where the two gradients straddle 0, plus the update's own
  float32 rounding (16·u·(|w| + 2·lr)); the bound is computed element by element from the measured Δg. It is
  the mean-value bound (the derivative's largest value between the two gradients), so where |g| is near eps a
  weight difference can use nearly all of it, on any host;
- the loss curve, relatively (the batch mean of the losses; 1e-4).
The weights after several steps are not compared: Adam's amplification compounds, and a bound on it would be
a bound on the optimiser, not on data parallelism.
"""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import torch.multiprocessing as mp

from vtp_core.runtime import StageContext, load_checkpoint
import small_configs as small

CFG = small.tokenizer(recipe="ae", batch_size=32, rec_fraction=0.25, steps=3, warmup_steps=1, ckpt_every=100)
RECIPES = ("ae", "clip_ssl_ae")
# clip_ssl_ae matches because multi-crop views, iBOT masks, KoLeo neighbours and the DINO/iBOT centers
# are drawn/computed over the global batch, not per rank.
MATCH_ONE_PROCESS = ("ae", "clip_ssl_ae")


def _recording(step_losses, curve: list):
    """`step_losses` that also appends each step's global-batch total (the mean over ranks) to `curve`."""
    from vtp_core import distributed

    def wrapped(*a, **k):
        out = step_losses(*a, **k)
        curve.append(float(distributed.mean_across(out["total"].detach())))
        return out

    return wrapped


def _recording_adamw(adamw, model_of, first: dict):
    """`runtime.adamw` whose first `step` records (name -> gradient, weight after the step) of the model."""
    def make(*a, **k):
        opt = adamw(*a, **k)
        step = opt.step

        def recorded(*sa, **sk):
            model = model_of()
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
            out = step(*sa, **sk)
            if not first:
                first.update(grads=grads, weights={n: model.get_parameter(n).detach().clone() for n in grads},
                             lr=opt.param_groups[0]["lr"], eps=opt.param_groups[0]["eps"])
            return out

        opt.step = recorded
        return opt

    return make


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from vtp_core import pretrain

    built, curve, first = [], [], {}
    real = pretrain.Tokenizer
    pretrain.Tokenizer = lambda cfg: built.append(real(cfg)) or built[-1]  # keep each rank's live model
    pretrain.step_losses = _recording(pretrain.step_losses, curve)
    pretrain.adamw = _recording_adamw(pretrain.adamw, lambda: built[-1], first)
    wrapped = []
    real_wrap = pretrain.distributed.wrap_ddp
    pretrain.distributed.wrap_ddp = lambda *a, **k: wrapped.append(real_wrap(*a, **k)) or wrapped[-1]
    for recipe in RECIPES:
        curve.clear()
        first.clear()
        pretrain.run(dataclasses.replace(CFG, recipe=recipe), StageContext(out=f"{out}/{recipe}", progress=False))
        assert type(wrapped[-1]).__name__ == "DistributedDataParallel"
        torch.save({"model": built[-1].state_dict(), "losses": torch.tensor(curve, dtype=torch.float64),
                    "first": dict(first)}, f"{out}/{recipe}/rank{rank}.pt")
    # the memory plan's micro-batched step: no DDP, gradients averaged once after the micro-batches
    first.clear()
    n_wrapped = len(wrapped)
    pretrain.run(dataclasses.replace(CFG, recipe="clip_ssl_ae", micro_batches=2),
                 StageContext(out=f"{out}/micro", progress=False))
    assert len(wrapped) == n_wrapped
    torch.save({"model": built[-1].state_dict(), "first": dict(first)}, f"{out}/micro/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo(tmp_path, make_ctx, monkeypatch, free_port):
    out = tmp_path / "ddp"
    mp.spawn(_worker, args=(2, free_port, str(out)), nprocs=2, join=True)
    for recipe in RECIPES:
        r0, r1 = torch.load(out / recipe / "rank0.pt"), torch.load(out / recipe / "rank1.pt")
        assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"]), recipe  # ranks never drift
        assert torch.equal(r0["losses"], r1["losses"]) and len(r0["losses"]) == CFG.steps
        assert all(torch.isfinite(v).all() for v in r0["model"].values())
        saved = load_checkpoint(out / recipe / "tokenizer.pt")["model"]
        assert all(torch.equal(saved[k], r0["model"][k]) for k in saved)

    from vtp_core import pretrain  # one process, same global batch: equal up to rounding

    curve: list = []
    built: list = []
    first: dict = {}
    real = pretrain.Tokenizer
    monkeypatch.setattr(pretrain, "Tokenizer", lambda cfg: built.append(real(cfg)) or built[-1])
    monkeypatch.setattr(pretrain, "step_losses", _recording(pretrain.step_losses, curve))
    monkeypatch.setattr(pretrain, "adamw", _recording_adamw(pretrain.adamw, lambda: built[-1], first))
    tokens = CFG.batch_size * ((CFG.data.image_size // CFG.patch) ** 2 + 1)
    u = 2.0 ** -24
    for recipe in MATCH_ONE_PROCESS:
        curve.clear()
        first.clear()
        pretrain.run(dataclasses.replace(CFG, recipe=recipe), make_ctx(f"single_{recipe}"))
        r0 = torch.load(out / recipe / "rank0.pt")
        one = torch.tensor(curve, dtype=torch.float64)
        rel = ((one - r0["losses"]).abs() / one.abs()).max().item()
        assert rel < 1e-4, (recipe, one, r0["losses"])
        g1, g2 = first["grads"], r0["first"]["grads"]
        assert g1.keys() == g2.keys(), recipe
        worst_g, worst_w = 0.0, 0.0
        lr, eps = first["lr"], first["eps"]
        for name in g1:
            a, b = g1[name].double(), g2[name].double()
            dg = (a - b).abs()
            bound_g = tokens * u * a.abs().max().item()
            worst_g = max(worst_g, dg.max().item() / max(bound_g, 1e-30))
            assert dg.max().item() <= bound_g, (recipe, name, dg.max().item(), bound_g)
            same_side = torch.sign(a) == torch.sign(b)
            m = torch.where(same_side, torch.minimum(a.abs(), b.abs()), torch.zeros_like(a))
            w = first["weights"][name].double()
            # + the update's own float32 rounding: a few operations on operands as large as |w before| <= |w| + lr
            bound_w = torch.minimum(lr * eps * dg / (m + eps) ** 2, torch.full_like(dg, 2 * lr)) + 16 * u * (w.abs() + 2 * lr)
            dw = (w - r0["first"]["weights"][name].double()).abs()
            worst_w = max(worst_w, (dw / bound_w).max().item())
            assert bool((dw <= bound_w).all()), (recipe, name, dw.max().item())
        print(f"{recipe}: loss curve rel. difference {rel:.3g}; first-step gradients and weights use "
              f"{worst_g:.3g} and {worst_w:.3g} of their bounds")
        if recipe == "clip_ssl_ae":  # two ranks in 2 micro-batches each vs one process in one pass
            m0, m1 = torch.load(out / "micro" / "rank0.pt"), torch.load(out / "micro" / "rank1.pt")
            assert all(torch.equal(m0["model"][k], m1["model"][k]) for k in m0["model"])
            assert m0["first"]["grads"].keys() == g1.keys()
            for name in g1:  # the same sums in another order (halves, micro-batches, an all-reduce)
                a, b = g1[name].double(), m0["first"]["grads"][name].double()
                assert (a - b).abs().max().item() <= tokens * u * a.abs().max().item(), ("micro", name)
