"""Runtime contract between a stage's entry function and whoever runs it (local/SLURM/Ray).

Every stage module exposes `run(cfg, ctx: StageContext) -> dict` (metrics, JSON-able).
The caller (cluster/) owns status.json; the stage owns its folder's artefacts and checkpoints.
This module is the lowest layer, so vtp_core and dit_eval can use it without importing cluster/.

Also here: device choice, the CPU budget, atomic file writes, and the checkpoint/RNG helpers that make resume exact.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch


class StageError(RuntimeError):
    """A stage failed for a reason worth one line in `make status` (bad data, missing file...)."""


class Diverged(RuntimeError):
    """Training produced NaN/inf; the stage is marked `diverged`, the last good checkpoint stays."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"non-finite loss or gradient norm ({loss}) at step {step}")
        self.step, self.loss = step, loss


class Preempted(RuntimeError):
    """A stop was requested (SIGTERM/SIGUSR1); state was checkpointed; the stage can be re-run to resume."""


def pick_device(override: str | None = None) -> str:
    """CUDA when present, else CPU; `DEVICE=` (env) or an explicit override wins."""
    dev = override or os.environ.get("DEVICE") or ""
    if dev:
        return dev
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_budget() -> int:
    """How many CPUs this process may use: the job's allocation, not the node's. The smaller of
    `SLURM_CPUS_PER_TASK` (the job's share when the scheduler does not pin CPUs) and the affinity mask
    (`os.sched_getaffinity`: what a cpuset, `taskset` or a Slurm/MPI binding leaves this process); else
    `os.cpu_count()`. Thread pools sized from the node's count would oversubscribe a shared node."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        n = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(1, n)


# ---------------------------------------------------------------- the optimizer
def adamw(params, device: str | torch.device, **kwargs) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel on CPU and CUDA: one kernel over all tensors instead of a Python
    loop of ~10 ops per tensor (the CPU default), whose per-op overhead dominates the update of many small
    tensors; the update equals the loop's to float32 rounding."""
    fused = torch.device(device).type in ("cpu", "cuda") or None
    return torch.optim.AdamW(params, fused=fused, **kwargs)


# ---------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[str]:
    """Yield a temp path in the target's folder; on success fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with _atomic(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync, rename: SIGKILL never leaves a torn file.

    Saved through a file object so the zip's internal folder is always 'archive' (torch names it after
    the file otherwise): the same weights give the same bytes, so file checksums are reproducible."""
    with _atomic(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def load_checkpoint(path: Path) -> Any:
    """Always weights_only=True and on the CPU (a GPU-saved checkpoint must not OOM the loader)."""
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- RNG state
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG a trainer touches, as tensors/ints only (so weights_only loading works)."""
    py = random.getstate()
    np_state = np.random.get_state()
    st = {
        "torch": torch.get_rng_state(),
        "python_version": int(py[0]),
        "python_state": torch.tensor(py[1], dtype=torch.int64),
        "python_gauss": py[2] if py[2] is not None else float("nan"),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    gauss = st["python_gauss"]
    random.setstate((st["python_version"], tuple(int(v) for v in st["python_state"].tolist()),
                     None if isinstance(gauss, float) and gauss != gauss else gauss))
    np.random.set_state(("MT19937", st["numpy_keys"].numpy().astype(np.uint32), st["numpy_pos"],
                         st["numpy_has_gauss"], st["numpy_gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ---------------------------------------------------------------- stop requests
class StopFlag:
    """Set by SIGTERM/SIGUSR1 (SLURM preemption/time limit): trainers checkpoint and raise Preempted."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag, signals: tuple = (signal.SIGTERM, signal.SIGUSR1)) -> Iterator[StopFlag]:
    """Install handlers that only set the flag (main thread only; elsewhere a no-op)."""
    old = {}
    try:
        for s in signals:
            try:
                old[s] = signal.signal(s, lambda *_: setattr(flag, "requested", True))
            except ValueError:  # not in the main thread
                pass
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- the context
@dataclass
class StageContext:
    """What a stage entry function gets besides its config.

    out:      the stage folder (results/stages/<id>/); write artefacts here (atomically).
    inputs:   upstream stage kind -> that stage's folder (e.g. {"pretrain": Path, "refstats": Path}).
    device:   "cpu" / "cuda" / "cuda:1".
    progress: show tqdm bars.
    services: injected callables that a lower layer may not import (e.g. "rfid" for vtp_core.probe).
    """

    out: Path
    inputs: dict[str, Path] = field(default_factory=dict)
    device: str = "cpu"
    progress: bool = True
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("vtp"))
    stop_requested: Callable[[], bool] = field(default=lambda: False)
    heartbeat: Callable[[dict], None] = field(default=lambda info: None)
    services: dict[str, Callable[..., Any]] = field(default_factory=dict)

    @property
    def ckpt_path(self) -> Path:
        return Path(self.out) / "ckpt" / "last.pt"

    def input(self, kind: str) -> Path:
        try:
            return Path(self.inputs[kind])
        except KeyError:
            raise StageError(f"stage needs upstream '{kind}' but got {sorted(self.inputs)}") from None


def file_hash(path: str | Path, algo: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks: the one checksum of weights and data files."""
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
