"""A rank that dies mid-stage does not strand the others: with 2 gloo processes, rank 1 is SIGKILLed during
pre-training; rank 0 leaves within the bound, its stage is recorded `failed` with the reason, and a re-run
resumes from the last checkpoint and finishes."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

import small_configs as small

CFG = small.tokenizer(recipe="ae", batch_size=16, steps=10, warmup_steps=1, ckpt_every=2, log_every=1)
KILL_AT = 5  # rank 1 dies in its 6th step: checkpoints exist at steps 2 and 4
BOUND_S = 60.0  # VTP_DIST_TIMEOUT_S for the test: a peer that stalls is given up on after this


def _stage():
    from sweeps.ids import stage_id
    from sweeps.plan import Stage

    return Stage("pretrain", stage_id("pretrain", "failfast", CFG), CFG)


def _rank(rank: int, port: int, root: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), VTP_DIST_TIMEOUT_S=str(BOUND_S))
    import torch

    torch.set_num_threads(1)
    from cluster.runner import run_stage
    from cluster.store import Store
    from vtp_core import pretrain
    from vtp_core.runtime import StageContext

    st = _stage()
    if rank == 0:
        state = run_stage(Store(root), st, device="cpu", progress=False)
        Path(root, "rank0.json").write_text(json.dumps({"state": state, "t": time.time()}))
        return
    real, calls = pretrain.step_losses, []

    def dying(*a, **k):
        calls.append(1)
        if len(calls) > KILL_AT:
            Path(root, "rank1.json").write_text(json.dumps({"t": time.time()}))
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)

    pretrain.step_losses = dying
    pretrain.run(CFG, StageContext(out=Path(root) / "stages" / st.id, progress=False))


@pytest.mark.slow
def test_dead_rank_fails_the_stage_fast_and_the_rerun_resumes(tmp_path, free_port):
    from cluster.runner import run_stage
    from cluster.store import Store

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, free_port, str(tmp_path))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=BOUND_S + 240)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, "a rank is still waiting for its dead peer"
    assert procs[1].exitcode == -signal.SIGKILL
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    waited = r0["t"] - r1["t"]
    print(f"rank 0 left {waited:.1f}s after rank 1 died (bound {BOUND_S:.0f}s)")
    assert r0["state"] == "failed" and waited < BOUND_S
    store = Store(tmp_path)
    st = _stage()
    status = store.status(st.id)
    assert status["status"] == "failed" and status["reason"] and "\n" not in status["reason"]
    from vtp_core.runtime import load_checkpoint

    assert load_checkpoint(store.dir(st.id) / "ckpt" / "last.pt")["step"] == 4

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(k, None)
    assert run_stage(store, st, device="cpu", progress=False) == "done"  # one process resumes the two's run
    log = (store.dir(st.id) / "log.txt").read_text()
    assert "resumed from" in log and "at step 4" in log
    assert store.metrics(st.id)["steps"] == CFG.steps
