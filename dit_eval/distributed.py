"""Process-group setup for the DiT trainer: one task per GPU, from torchrun's or SLURM's environment.

The collective helpers (world_size, rank, shard, mean_across, any_across, barrier) are the tokenizer
trainer's (`vtp_core.distributed`); this module only adds what DDP needs: reading SLURM task variables
when RANK/WORLD_SIZE are absent, picking the device from LOCAL_RANK, and the global-batch slice.
With WORLD_SIZE (or SLURM_NTASKS) unset or 1 nothing is initialised and every helper is a no-op.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from vtp_core.distributed import any_across, barrier, is_main, mean_across, rank, world_size

__all__ = ["setup", "env_from_slurm", "local_slice", "any_across", "barrier", "is_main", "mean_across", "rank",
           "world_size"]


def env_from_slurm(env=None) -> None:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK (and, on one node, MASTER_ADDR/MASTER_PORT) from SLURM task
    variables when torchrun's are absent (in `env`, default os.environ). Multi-node jobs must export
    MASTER_ADDR themselves."""
    env = os.environ if env is None else env
    if "RANK" in env or int(env.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in env:
        return
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in env and int(env.get("SLURM_NNODES", "1")) == 1:
        env["MASTER_ADDR"] = "127.0.0.1"
    if "MASTER_PORT" not in env and "SLURM_JOB_ID" in env:
        env["MASTER_PORT"] = str(20_000 + int(env["SLURM_JOB_ID"]) % 20_000)


def setup(device: str) -> str:
    """Initialise the process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU); returns this
    rank's device (cuda:LOCAL_RANK, modulo the visible GPUs so one-GPU-per-task masks also work)."""
    env_from_slurm()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % max(1, torch.cuda.device_count())}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # gloo beside nccl: the stop/NaN flags are small CPU tensors
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    return device


def local_slice(n: int) -> slice:
    """This rank's contiguous part of a global batch of n (n must divide by the world size)."""
    w = world_size()
    if n % w:
        raise ValueError(f"global batch {n} is not divisible by WORLD_SIZE={w}")
    k = n // w
    return slice(rank() * k, (rank() + 1) * k)
