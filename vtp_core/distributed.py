"""Data parallelism shared by both trainers: process-group setup from torchrun's or SLURM's environment
(one task per GPU), and the few collectives the trainers need.

Every rank builds the same global batch (a pure function of seed and step) and takes its slice; the
trainers wrap their step in `DistributedDataParallel`. CLIP uses the global batch (OpenCLIP
`gather_with_grad`), DINO/iBOT centers use global means. `average_gradients` remains for tokenizer
stage 2, whose adaptive GAN weight needs `torch.autograd.grad` (which DDP does not reduce). With
WORLD_SIZE unset or 1 nothing is initialised and every helper is a no-op, so the single-process path
(and its bit-exact resume) is unchanged.
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


def env_from_slurm(env=None) -> None:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK (and, on one node, MASTER_ADDR/MASTER_PORT) from SLURM task
    variables when torchrun's are absent (in `env`, default os.environ). Jobs started by
    `cluster.job` have them exported already (submitit's TorchDistributedEnvironment, multi-node too);
    this covers a plain `srun python ...`."""
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
    """Initialise the process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU) unless a caller
    (`cluster.job`) already did; returns this rank's device (cuda:LOCAL_RANK, modulo the visible GPUs
    so one-GPU-per-task masks also work)."""
    env_from_slurm()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % max(1, torch.cuda.device_count())}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        init_process_group(cuda)
    return device


DEFAULT_TIMEOUT_S = 300.0


def timeout_s() -> float:
    """How long a rank waits in a collective for a peer that stalled: VTP_DIST_TIMEOUT_S (default 300 s, a
    few minutes: longer than any step, short enough that a job does not sit on its GPUs for half an hour).
    A peer that dies outright is noticed at once: its sockets close and the next collective fails."""
    return float(os.environ.get("VTP_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))


def init_process_group(cuda: bool) -> None:
    """env:// rendezvous; gloo beside nccl on CUDA because the stop/NaN flags are small CPU tensors.
    NCCL's async error handling tears the process down when a collective fails or exceeds `timeout_s`
    (instead of leaving the other ranks blocked in a kernel); under SLURM, srun --kill-on-bad-exit ends
    the job's other tasks when one exits non-zero (cluster.slurm)."""
    from datetime import timedelta

    if cuda:
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s()))


def wrap_ddp(module: torch.nn.Module, device: torch.device, **kw) -> torch.nn.Module:
    """`DistributedDataParallel(module)` when WORLD_SIZE > 1, else the module itself."""
    if world_size() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, **kw)


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
