"""Data-parallel pretraining on CPU (gloo, 2 processes): ranks stay identical (weights and loss curve), and
`ae` matches one process on the same global batch (loss curve and weights, up to float reduction order)."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch
import torch.multiprocessing as mp

from vtp_core.config import TokenizerConfig
from vtp_core.runtime import StageContext, load_checkpoint

CFG = TokenizerConfig(recipe="ae", batch_size=32, rec_fraction=0.25, steps=3, warmup_steps=1, ckpt_every=100)
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


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from vtp_core import pretrain

    built, curve = [], []
    real = pretrain.Tokenizer
    pretrain.Tokenizer = lambda cfg: built.append(real(cfg)) or built[-1]  # keep each rank's live model
    pretrain.step_losses = _recording(pretrain.step_losses, curve)
    wrapped = []
    real_wrap = pretrain.distributed.wrap_ddp
    pretrain.distributed.wrap_ddp = lambda *a, **k: wrapped.append(real_wrap(*a, **k)) or wrapped[-1]
    for recipe in RECIPES:
        curve.clear()
        pretrain.run(dataclasses.replace(CFG, recipe=recipe), StageContext(out=f"{out}/{recipe}", progress=False))
        assert type(wrapped[-1]).__name__ == "DistributedDataParallel"
        torch.save({"model": built[-1].state_dict(), "losses": torch.tensor(curve, dtype=torch.float64)},
                   f"{out}/{recipe}/rank{rank}.pt")
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
    monkeypatch.setattr(pretrain, "step_losses", _recording(pretrain.step_losses, curve))
    for recipe in MATCH_ONE_PROCESS:
        curve.clear()
        single = make_ctx(f"single_{recipe}")
        pretrain.run(dataclasses.replace(CFG, recipe=recipe), single)
        s = load_checkpoint(single.out / "tokenizer.pt")["model"]
        r0 = torch.load(out / recipe / "rank0.pt")
        one = torch.tensor(curve, dtype=torch.float64)
        rel = ((one - r0["losses"]).abs() / one.abs()).max().item()
        wdiff = max((s[k] - r0["model"][k]).abs().max().item() for k in s)
        print(f"{recipe}: max relative loss-curve difference {rel:.3g}, max weight difference {wdiff:.3g}")
        assert rel < 1e-5, (recipe, one, r0["losses"])
        assert all(torch.allclose(s[k], r0["model"][k], atol=1e-5) for k in s), recipe
