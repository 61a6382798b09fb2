"""Step batches for the trainer: built ahead of the step that uses them, on a thread or in worker processes.

A step's batch is a pure function of (seed, step, rank, world size) (`batches.make_batch`), so where and when it
is built changes no number, and a resumed run asks for step s and gets exactly step s's batch: no loader state
is checkpointed.

- `num_workers` = 0 (auto on a CPU run): `ThreadPrefetcher` builds step s+1 on one background thread while step s trains (the
  CPU-sized runs: Fashion-MNIST is in memory, and worker processes would compete with the model for 2 cores).
- `num_workers` > 0 (auto on CUDA: the job's CPUs less one): `WorkerBatches`, a torch `DataLoader` over `StepBatches` (item s = this rank's batch of
  step s): each worker process builds whole steps (reads and decodes only this rank's images, makes the crops,
  SSL views, iBOT masks and caption tokens), `prefetch_factor` steps ahead per worker, in step order; on CUDA
  the batch arrives in pinned memory and is copied with `non_blocking=True`, so the copy overlaps the step.
  Full-size images cross as uint8 and are normalized on the device (`batches.finish_batch`).
  Workers fork from the trainer (in-memory arrays and the index's memory-mapped columns are shared, not
  copied); on CUDA the model is already on the device then, so they do not hold a copy of it.
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from vtp_core.batches import finish_batch, host_batch, make_batch
from vtp_core.config import TokenizerConfig
from vtp_core.runtime import cpu_budget


class ThreadPrefetcher:
    """Builds step s+1's batch on a background thread while step s trains."""

    def __init__(self, build: Callable[[int], dict], last_step: int):
        self.build, self.last_step = build, last_step
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="batch")
        self.pending: tuple[int, Future] | None = None

    def __call__(self, step: int) -> dict:
        if self.pending is not None and self.pending[0] == step:
            batch = self.pending[1].result()
        else:
            batch = self.build(step)
        nxt = step + 1
        self.pending = (nxt, self.pool.submit(self.build, nxt)) if nxt < self.last_step else None
        return batch

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class StepBatches(Dataset):
    """Item s: this rank's batch of step s, on the CPU as the loader delivers it (`batches.host_batch`)."""

    def __init__(self, cfg: TokenizerConfig, images, labels, active: tuple[str, ...], captions):
        self.cfg, self.images, self.labels, self.active, self.captions = cfg, images, labels, active, captions

    def __len__(self) -> int:
        return self.cfg.steps

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        return host_batch(self.cfg, self.images, self.labels, int(step), self.active, self.captions)


def _init_worker(worker_id: int) -> None:
    """Give worker `worker_id` its round-robin share of this process's CPUs (pinned, so `runtime.cpu_budget`
    and the thread pools sized from it see the share, not the node) and fresh decode threads: an executor
    inherited through fork has no threads in the child."""
    from vtp_core.data import folders

    n = get_worker_info().num_workers
    try:
        cpus = sorted(os.sched_getaffinity(0))
        share = set(cpus[worker_id::n]) or {cpus[worker_id % len(cpus)]}
        os.sched_setaffinity(0, share)
    except (AttributeError, OSError):  # no affinity API: one thread each
        share = {0}
    torch.set_num_threads(len(share))
    folders._pool.cache_clear()


def resolve_workers(num_workers: int, device: torch.device) -> int:
    """`TokenizerConfig.num_workers`, with -1 (auto) resolved: on CUDA the job's CPUs less one (the trainer's
    own thread), at least 1; on a CPU run 0 (the model needs the cores)."""
    if num_workers >= 0:
        return num_workers
    return max(1, cpu_budget() - 1) if device.type == "cuda" else 0


class WorkerBatches:
    """`num_workers` processes building steps [first_step, last_step) in order; `__call__(s)` returns step s."""

    def __init__(self, data: StepBatches, first_step: int, last_step: int, num_workers: int, device: torch.device):
        self.device, self.next_step = device, first_step
        loader = DataLoader(data, batch_size=None, sampler=range(first_step, last_step), num_workers=num_workers,
                            pin_memory=device.type == "cuda", prefetch_factor=2, worker_init_fn=_init_worker)
        self.it = iter(loader)

    def host(self, step: int) -> dict:
        """Step s's batch as the workers deliver it (pinned on CUDA; full-size images still uint8)."""
        if step != self.next_step:
            raise RuntimeError(f"loader: asked for step {step}, the workers are building step {self.next_step}")
        self.next_step += 1
        return next(self.it)

    def __call__(self, step: int) -> dict:
        return finish_batch(self.host(step), self.device)

    def close(self) -> None:
        shutdown = getattr(self.it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def step_batches(cfg: TokenizerConfig, images, labels, active: tuple[str, ...], captions, first_step: int,
                 device: torch.device):
    """The trainer's batch source for steps [first_step, cfg.steps): `WorkerBatches` with `cfg.num_workers` > 0,
    else `ThreadPrefetcher`."""
    workers = resolve_workers(cfg.num_workers, device)
    if workers > 0 and first_step < cfg.steps:
        return WorkerBatches(StepBatches(cfg, images, labels, active, captions), first_step, cfg.steps, workers,
                             device)
    return ThreadPrefetcher(lambda s: make_batch(cfg, images, labels, s, active, captions, device), cfg.steps)
