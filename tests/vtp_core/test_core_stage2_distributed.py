"""Stage 2 (GAN decoder tuning) does not depend on the number of processes: 2 gloo processes match 1 process on
the same global batch. The discriminator's BatchNorm uses global-batch statistics, the adaptive GAN weight the
gradients of the global-batch losses, and the logged losses are global means.

Compared as in test_core_distributed.py: the logged losses of every stage-2 step relatively (1e-4), the
discriminator's running BatchNorm statistics relatively (1e-4), and the first stage-2 step's decoder gradients
within K·u·max|g| (a float32 sum of K terms in another order). Stage 1 runs one step at lr 1e-12 first, so the
two runs enter stage 2 with the same weights up to ~1e-12."""
from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from vtp_core.runtime import StageContext
import small_configs as small

CFG = small.tokenizer(recipe="ae", batch_size=32, rec_fraction=0.25, steps=1, warmup_steps=0, lr=1e-12, ckpt_every=100,
                      stage2_steps=3, disc_start=0, disc_channels=8, log_every=1)


def _instrument(stage2, record: dict) -> None:
    """Record every stage-2 step's logged losses and the decoder gradients at the first decoder step."""
    real_train, real_adamw = stage2.train, stage2.adamw

    def train(model, s2, cfg, ctx, data, lpips, save, on_step):
        record["decoder"] = model.decoder

        def logged(l2):
            record.setdefault("losses", []).append(dict(l2))
            on_step(l2)
        out = real_train(model, s2, cfg, ctx, data, lpips, save, logged)
        record["bn"] = {k: v.clone() for k, v in s2.disc.state_dict().items() if "running" in k}
        return out

    def adamw(params, *a, **k):
        params = list(params)
        opt = real_adamw(params, *a, **k)
        step = opt.step

        def recorded(*sa, **sk):
            if "grads" not in record and "decoder" in record and params[0] is next(record["decoder"].parameters()):
                record["grads"] = {n: p.grad.detach().clone() for n, p in record["decoder"].named_parameters()
                                   if p.grad is not None}
            return step(*sa, **sk)
        opt.step = recorded
        return opt

    stage2.train, stage2.adamw = train, adamw


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from vtp_core import pretrain, stage2

    record: dict = {}
    _instrument(stage2, record)
    pretrain.run(CFG, StageContext(out=f"{out}/run", progress=False))
    record.pop("decoder")
    torch.save(record, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_stage2_two_processes_match_one(tmp_path, make_ctx, monkeypatch, free_port):
    mp.spawn(_worker, args=(2, free_port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["losses"] == r1["losses"], "every rank logs the same global means"

    from vtp_core import pretrain, stage2

    one: dict = {}
    real = (stage2.train, stage2.adamw)
    try:
        _instrument(stage2, one)
        pretrain.run(CFG, make_ctx("single"))
    finally:
        stage2.train, stage2.adamw = real
    assert len(one["losses"]) == len(r0["losses"]) == CFG.stage2_steps
    for a, b in zip(one["losses"], r0["losses"]):
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-4 * max(abs(a[k]), 1e-8), (k, a[k], b[k])
    assert one["losses"][0]["gan_weight"] > 0  # the GAN term is on and weighted
    for k, v in one["bn"].items():
        assert torch.allclose(v, r0["bn"][k], rtol=1e-4, atol=1e-7), k
    tokens = 2 * CFG.batch_size * CFG.rec_fraction * (CFG.data.image_size // CFG.patch) ** 2
    for name, g in one["grads"].items():
        d = (g.double() - r0["grads"][name].double()).abs().max().item()
        assert d <= tokens * 2.0 ** -24 * g.double().abs().max().item() + 1e-12, (name, d)
