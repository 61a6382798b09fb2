"""Process-group helpers for the DiT trainer: the tokenizer trainer's (`vtp_core.distributed`: setup from
torchrun's or SLURM's environment, collectives, DDP wrapping) plus the global-batch slice.
With WORLD_SIZE (or SLURM_NTASKS) unset or 1 nothing is initialised and every helper is a no-op.
"""
from __future__ import annotations

from vtp_core.distributed import (any_across, barrier, env_from_slurm, is_main, mean_across, rank, setup,
                                  world_size, wrap_ddp)

__all__ = ["setup", "env_from_slurm", "local_slice", "any_across", "barrier", "is_main", "mean_across", "rank",
           "world_size", "wrap_ddp"]


def local_slice(n: int) -> slice:
    """This rank's contiguous part of a global batch of n (n must divide by the world size)."""
    w = world_size()
    if n % w:
        raise ValueError(f"global batch {n} is not divisible by WORLD_SIZE={w}")
    k = n // w
    return slice(rank() * k, (rank() + 1) * k)
