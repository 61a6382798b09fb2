"""Data-parallel pretraining on CPU (gloo, 2 processes): ranks stay identical and `ae` matches one process."""
from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from vtp_core.config import TokenizerConfig
from vtp_core.runtime import StageContext, load_checkpoint

CFG = TokenizerConfig(recipe="ae", batch_size=32, rec_fraction=0.25, steps=3, warmup_steps=1, ckpt_every=100)
RECIPES = ("ae", "clip_ssl_ae")


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from vtp_core import pretrain

    built = []
    real = pretrain.Tokenizer
    pretrain.Tokenizer = lambda cfg: built.append(real(cfg)) or built[-1]  # keep each rank's live model
    for recipe in RECIPES:
        pretrain.run(dataclasses.replace(CFG, recipe=recipe), StageContext(out=f"{out}/{recipe}", progress=False))
        torch.save(built[-1].state_dict(), f"{out}/{recipe}/rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo(tmp_path, make_ctx):
    out = tmp_path / "ddp"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    for recipe in RECIPES:
        r0, r1 = torch.load(out / recipe / "rank0.pt"), torch.load(out / recipe / "rank1.pt")
        assert all(torch.equal(r0[k], r1[k]) for k in r0), recipe  # ranks never drift apart
        assert all(torch.isfinite(v).all() for v in r0.values())
        saved = load_checkpoint(out / recipe / "tokenizer.pt")["model"]
        assert all(torch.equal(saved[k], r0[k]) for k in saved)
    single = make_ctx("single")  # same global batch, averaged gradients: one process up to rounding
    from vtp_core import pretrain

    pretrain.run(CFG, single)
    s = load_checkpoint(single.out / "tokenizer.pt")["model"]
    r0 = torch.load(out / "ae" / "rank0.pt")
    assert all(torch.allclose(s[k], r0[k], atol=1e-5) for k in s)
