"""Data parallelism for the tokenizer trainer, driven by the usual env (WORLD_SIZE, RANK, LOCAL_RANK).

Why not `DistributedDataParallel`: one VTP step runs the encoder in several separate forward passes
(CLIP, SSL student global/local, reconstruction), which DDP's single-forward hooks do not fit. Instead
every rank builds the same global batch (a pure function of seed and step), takes its slice, and
gradients are averaged with one flat all-reduce before clipping. CLIP uses the global batch
(OpenCLIP `gather_with_grad`), DINO/iBOT centers use global means. With WORLD_SIZE unset or 1 every
helper is a no-op, so the single-process path (and its bit-exact resume) is unchanged.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def setup(device: str) -> str:
    """Initialise the process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU); returns the device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")  # CPU flags (stop, NaN) ride on gloo
    return device


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (sizes must divide by the world size)."""
    w = world_size()
    if w == 1:
        return x
    if x.shape[0] % w:
        raise ValueError(f"batch dimension {x.shape[0]} is not divisible by WORLD_SIZE={w}")
    n = x.shape[0] // w
    return x[rank() * n:(rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's x along dim 0, keeping the autograd graph (gradients flow back)."""
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def mean_across(x: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()


def average_gradients(params) -> None:
    """One flat all-reduce of all gradients, divided by the world size."""
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def any_across(flag: bool) -> bool:
    """True on every rank if it is True on any rank (so all ranks stop at the same step)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
