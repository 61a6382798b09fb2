"""Projection heads: the DINO/iBOT head (shared, DINOv2 `separate_head: false`) and the CLIP image projection.

The DINO head's last layer is weight-normalised with the gain fixed at 1 (DINOv2's default), which
is exactly a linear layer with unit-norm rows; it is written that way (no parametrization hooks) so the
EMA teacher is a plain deepcopy and the head builds on the meta device.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vtp_core.models.vit import init_weights


class DINOHead(nn.Module):
    """MLP (in -> hidden -> hidden -> bottleneck, GELU) -> L2 norm -> unit-norm linear to K prototypes."""

    def __init__(self, in_dim: int, n_prototypes: int, hidden: int, bottleneck: int, n_layers: int = 3):
        super().__init__()
        dims = [in_dim] + [hidden] * (n_layers - 1) + [bottleneck]
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.apply(init_weights)
        self.prototypes = nn.Parameter(torch.empty(n_prototypes, bottleneck))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return F.linear(x, F.normalize(self.prototypes, dim=-1))
