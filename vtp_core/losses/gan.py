"""Stage-2 adversarial pieces: LDM's PatchGAN discriminator, hinge losses and the adaptive GAN weight.

VTP does not say how its GAN stage works (docs/method.md#stage-2); these are the priors it names from
VA-VAE / LDM `LPIPSWithDiscriminator`: a 3-layer PatchGAN with hinge loss and an adaptive weight
||∇L_rec|| / ||∇L_gan|| at the decoder's last layer, scaled by `disc_weight`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are over the global batch, all ranks together: the per-channel
    sum and sum of squares are all-reduced (torch.distributed.nn's differentiable all_reduce, so gradients
    flow through the statistics as in one process). With one process it is nn.BatchNorm2d. (nn.SyncBatchNorm
    does the same on GPUs only; this also runs on gloo, so the world-size tests run on a CPU.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from vtp_core.distributed import world_size

        if not self.training or world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        n = x.new_full((1,), x.numel() / x.shape[1])
        stats = all_reduce(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), n]))
        count = stats[-1]
        mean = stats[: x.shape[1]] / count
        var = stats[x.shape[1]: 2 * x.shape[1]] / count - mean * mean
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * count / (count - 1), self.momentum)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class PatchGAN(nn.Module):
    """pix2pix NLayerDiscriminator: strided 4x4 convs + BatchNorm + LeakyReLU, one logit per patch. Its batch
    statistics are global across data-parallel ranks (`GlobalBatchNorm2d`), so stage 2 does not depend on the
    number of GPUs."""

    def __init__(self, in_chans: int = 3, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_chans, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                       GlobalBatchNorm2d(channels * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):  # GlobalBatchNorm2d too
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    scale: float, max_weight: float = 1e4) -> torch.Tensor:
    """scale · ||∂rec/∂W_last|| / (||∂g/∂W_last|| + 1e-4), clamped to [0, max_weight], detached. Under data
    parallelism the two gradients are averaged over ranks first: the gradients of the global-batch losses, so
    every rank uses the weight one process would."""
    from vtp_core.distributed import mean_across

    rec_grad = mean_across(torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0])
    g_grad = mean_across(torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0])
    w = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return (w.clamp(0.0, max_weight) * scale).detach()
