"""FLOPs of one DiT training step, measured (not estimated) with `torch.utils.flop_counter`.

Why measured on the meta device: the planner needs DiT FLOPs for every cell of a sweep without
allocating an XL/1; meta tensors carry shapes only, so counting one forward+backward of the exact
training loss costs milliseconds. Convention (docs/CONTRACTS.md#flops-convention): real FLOPs, 2 per multiply-add, per step
(= per-sample × batch). Elementwise ops and the optimizer are not counted by flop_counter (they are
<1% for a transformer). DiT FLOPs are reported separately from tokenizer FLOPs, never added.
"""
from __future__ import annotations

import functools

import torch
from torch.utils.flop_counter import FlopCounterMode

from dit_eval.flow import training_loss
from dit_eval.models import create_dit


@functools.lru_cache(maxsize=256)
def _step_flops(size: str, batch_size: int, num_classes: int, class_dropout: float,
                latent_shape: tuple[int, int, int]) -> float:
    c, h, w = latent_shape
    if h != w:
        raise ValueError(f"DiT needs square latents, got {latent_shape}")
    with torch.device("meta"):
        model = create_dit(size, c, h, num_classes, class_dropout)
        x1 = torch.empty(batch_size, c, h, w)
        y = torch.zeros(batch_size, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        training_loss(model, x1, y, 0.0, 1.0).backward()
    return float(counter.get_total_flops())


def dit_train_step_flops(spec, latent_shape) -> float:
    """FLOPs of one optimizer step (forward + backward over `spec.batch_size` latents of `latent_shape`)."""
    return _step_flops(spec.size, int(spec.batch_size), int(spec.num_classes), float(spec.class_dropout),
                       tuple(int(v) for v in latent_shape))


def dit_train_flops(spec, latent_shape) -> float:
    """Total DiT training FLOPs = steps × per-step FLOPs."""
    return spec.steps * dit_train_step_flops(spec, latent_shape)
