"""DINOv2 self-distillation losses: DINO on CLS tokens, iBOT on masked patch tokens, KoLeo.

VTP says only "closely follow DINOv2" (docs/method.md#self-supervision), so these are DINOv2's defaults: softmax
centering with momentum 0.9 (separate centers for DINO and iBOT), teacher temperature warmed up
0.04 -> 0.07, student 0.1, KoLeo weight 0.1 on the student's global CLS features.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vtp_core.distributed import mean_across


class DINOCenter(nn.Module):
    """Running mean of teacher logits (a buffer, checkpointed with the model state)."""

    def __init__(self, n_prototypes: int, momentum: float = 0.9):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, n_prototypes))

    @torch.no_grad()
    def teacher_probs(self, logits: torch.Tensor, temp: float) -> torch.Tensor:
        return F.softmax((logits.float() - self.center) / temp, dim=-1)

    @torch.no_grad()
    def update(self, logits: torch.Tensor) -> None:
        """center <- m·center + (1-m)·(batch mean of teacher logits, averaged over ranks)."""
        self.update_from_sum(logits.float().sum(0, keepdim=True), logits.shape[0])

    @torch.no_grad()
    def update_from_sum(self, total: torch.Tensor, count: int) -> None:
        """The same from the sum of the logits (1, K) and their number on this rank (a step in micro-batches
        adds its parts): the global mean over every rank's rows, also when ranks hold different numbers of
        rows (iBOT), kept on the device (no host read); no rows anywhere leaves the center as it is."""
        both = mean_across(torch.cat([total.float(), total.new_full((1, 1), float(count), dtype=torch.float32)], 1))
        n = both[:, -1:]
        mean = torch.where(n > 0, both[:, :-1] / n.clamp(min=torch.finfo(torch.float32).tiny), self.center)
        self.center.mul_(self.momentum).add_(mean, alpha=1 - self.momentum)


def _ce(student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float) -> torch.Tensor:
    return -(teacher_probs * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(-1)


def dino_loss(student_global: torch.Tensor, student_local: torch.Tensor, teacher_global_probs: torch.Tensor,
              n_local: int, student_temp: float = 0.1) -> torch.Tensor:
    """Mean CE over (student crop, teacher global crop) pairs, excluding a global crop with itself.

    All tensors are stacked by view: student_global (2B,K) [view0; view1], student_local (n_local*B,K),
    teacher_global_probs (2B,K). Same normalisation as DINOv2 (global + local terms / number of terms).
    """
    t0, t1 = teacher_global_probs.chunk(2)
    s0, s1 = student_global.chunk(2)
    total = _ce(s0, t1, student_temp).mean() + _ce(s1, t0, student_temp).mean()
    for s in student_local.chunk(n_local) if n_local else ():
        total = total + _ce(s, t0, student_temp).mean() + _ce(s, t1, student_temp).mean()
    return total / (2 + 2 * n_local)


def ibot_loss(student_patch: torch.Tensor, teacher_patch_probs: torch.Tensor, weights: torch.Tensor,
              n_images: int, student_temp: float = 0.1) -> torch.Tensor:
    """CE on masked patches, each weighted 1/(masked patches of its image), summed / number of images."""
    if student_patch.shape[0] == 0:
        return student_patch.sum() * 0.0
    return (_ce(student_patch, teacher_patch_probs, student_temp) * weights).sum() / max(n_images, 1)


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimator: -mean log(distance to nearest neighbour), on L2-normed x."""
    if x.shape[0] < 2:
        return x.sum() * 0.0
    x = F.normalize(x.float(), dim=-1, eps=eps)
    sim = x @ x.t()
    sim = sim - 2.0 * torch.eye(x.shape[0], device=x.device, dtype=sim.dtype)  # exclude self
    nn_idx = sim.argmax(dim=1)
    dist = (x - x[nn_idx]).norm(dim=-1)
    return -torch.log(dist + eps).mean()
