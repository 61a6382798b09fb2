"""The trainer's batch source (`vtp_core.loader`): worker processes build exactly `make_batch`'s steps, in order,
outside the training process, and a run that uses them resumes bit-identically."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from vtp_core import pretrain
from vtp_core.batches import CaptionTable, make_batch
from vtp_core.data import CLASS_NAMES, load_train
from vtp_core import loader
from vtp_core.loader import StepBatches, ThreadPrefetcher, WorkerBatches, resolve_workers, step_batches
from vtp_core.runtime import Preempted, load_checkpoint
import small_configs as small

CPU = torch.device("cpu")


def _inputs():
    cfg = small.tokenizer(recipe="clip_ssl_ae", batch_size=16, steps=8)
    images, labels = load_train(dataclasses.replace(cfg.data, n_train=256))
    return cfg, images, labels, ("rec", "clip", "ssl"), CaptionTable(CLASS_NAMES, 77)


class _WithPid(StepBatches):
    def __getitem__(self, step):
        return {**super().__getitem__(step), "pid": torch.tensor(os.getpid()),
                "cpus": torch.tensor(sorted(os.sched_getaffinity(0))), "threads": torch.tensor(torch.get_num_threads())}


def test_workers_build_make_batch_steps_in_order_outside_the_trainer():
    cfg, images, labels, active, captions = _inputs()
    src = WorkerBatches(_WithPid(cfg, images, labels, active, captions), 3, cfg.steps, 2, CPU)
    try:
        for step in range(3, cfg.steps):
            got = src(step)
            assert int(got.pop("pid")) != os.getpid()  # decoded, cropped, masked and tokenised in a worker
            cpus, threads = got.pop("cpus").tolist(), int(got.pop("threads"))
            mine = sorted(os.sched_getaffinity(0))
            assert set(cpus) <= set(mine) and len(cpus) in (len(mine[0::2]), len(mine[1::2]))  # its share, pinned
            assert threads == len(cpus)
            want = make_batch(cfg, images, labels, step, active, captions)
            assert got.keys() == want.keys()
            assert all(torch.equal(got[k], want[k]) for k in want), step
        with pytest.raises(RuntimeError, match="asked for step 3"):
            src(3)
    finally:
        src.close()


def test_the_source_follows_num_workers():
    cfg, images, labels, active, captions = _inputs()
    thread = step_batches(cfg, images, labels, active, captions, 0, CPU)
    workers = step_batches(dataclasses.replace(cfg, num_workers=2), images, labels, active, captions, 0, CPU)
    try:
        assert isinstance(thread, ThreadPrefetcher) and isinstance(workers, WorkerBatches)
        assert all(torch.equal(a, b) for a, b in zip(thread(0).values(), workers(0).values()))
    finally:
        thread.close()
        workers.close()


def test_resume_with_workers_is_bit_identical(tiny_cfg, make_ctx, stop_after, monkeypatch):
    """Killed at step 2 and resumed with 2 workers, against an uninterrupted run on the in-process thread: the
    same weights, bit for bit (the loader keeps no state: it restarts at the checkpoint's step)."""
    monkeypatch.setattr(pretrain, "SYNC_EVERY", 1)
    cfg = dataclasses.replace(tiny_cfg, recipe="clip_ssl_ae", steps=5, ckpt_every=100)
    full = make_ctx("full")
    pretrain.run(cfg, full)
    workers = dataclasses.replace(cfg, num_workers=2)
    part = make_ctx("part", stop_requested=stop_after(2))
    with pytest.raises(Preempted):
        pretrain.run(workers, part)
    assert load_checkpoint(part.ckpt_path)["step"] == 2
    part.stop_requested = lambda: False
    pretrain.run(workers, part)
    a = load_checkpoint(full.out / "tokenizer.pt")["model"]
    b = load_checkpoint(part.out / "tokenizer.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_auto_workers_follow_the_job_cpus(monkeypatch):
    monkeypatch.setattr(loader, "cpu_budget", lambda: 8)
    assert resolve_workers(-1, torch.device("cuda")) == 7 and resolve_workers(-1, CPU) == 0
    monkeypatch.setattr(loader, "cpu_budget", lambda: 1)
    assert resolve_workers(-1, torch.device("cuda")) == 1
    assert resolve_workers(3, CPU) == 3 and resolve_workers(0, torch.device("cuda")) == 0
