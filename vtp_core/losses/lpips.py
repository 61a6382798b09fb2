"""LPIPS (VGG16, Zhang et al. 2018) from a user-supplied weights file, checked by sha256.

Why user-supplied: nothing may download at run time, and the weights identify the loss, so the
file's sha256 is a versioned config field (`lpips_sha256`) while its path is not. Whether the term is
on is the versioned choice `TokenizerConfig.rec_loss` ("l1_lpips", the paper's, needs the file; "l1"
is said explicitly and runs without it).

File format (torch.save, weights_only): {"features.<i>.weight"/".bias": torchvision VGG16 `features`
conv weights, "lin.<k>.weight": (1, C_k, 1, 1) LPIPS linear heads for the 5 slices}. Build it once
from the two official files (torchvision's ImageNet VGG16 and the `lpips` package's v0.1 heads):

    python -m vtp_core.losses.lpips --vgg vgg16-397923af.pth --lin lpips/weights/v0.1/vgg.pth --out lpips_vgg16.pt

It prints the file's sha256 and the `tokenizer:` lines to paste into a study. One format only: the
converter is the single place that knows the official layouts.

For rehearsals and tests on machines without the official files, `--random` writes a file of the same
layout with seeded random weights (Kaiming-normal convs, positive heads; same seed, same bytes):

    python -m vtp_core.losses.lpips --random --out lpips_random.pt [--seed 0]

Its distances are finite and positive but mean nothing perceptually: never the paper's loss.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from vtp_core.runtime import StageError, atomic_torch_save, file_hash

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in torchvision indices
_CHANNELS = (64, 128, 256, 512, 512)
_CONVERT = ("python -m vtp_core.losses.lpips --vgg vgg16-397923af.pth --lin lpips/weights/v0.1/vgg.pth "
            "--out lpips_vgg16.pt")
_VGG_HINT = "torchvision VGG16 ImageNet weights, e.g. vgg16-397923af.pth"
_LIN_HINT = "the lpips package's lpips/weights/v0.1/vgg.pth"


class LPIPS(nn.Module):
    """Frozen VGG16 + 1x1 linear heads; inputs in [-1, 1]; returns (B,) distances."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*layers)
        self.lin = nn.ModuleList(nn.Conv2d(ch, 1, 1, bias=False) for ch in _CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:
                out.append(h)
            if i >= _TAPS[-1]:
                break
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = 0.0
        for lin, a, b in zip(self.lin, self._taps(x), self._taps(y)):
            a, b = F.normalize(a, dim=1, eps=1e-10), F.normalize(b, dim=1, eps=1e-10)
            d = d + lin((a - b) ** 2).mean(dim=(1, 2, 3))
        return d


def sha256_file(path: str | Path) -> str:
    return file_hash(path)


def _shapes() -> dict[str, tuple[int, ...]]:
    """Our file's keys and shapes, read off the module (on meta: no allocation) so they cannot drift."""
    with torch.device("meta"):
        net = LPIPS()
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if k not in ("shift", "scale")}


def _load_state(path: Path, what: str) -> dict:
    """torch.load(weights_only) of a state dict, or a one-line StageError naming the file."""
    if not path.is_file():
        raise StageError(f"{path}: not found (expected {what})")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)  # the lpips heads were saved on CUDA
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a foreign file
        first = (str(exc).splitlines() or [""])[0].split(". ")[0][:200]  # not torch's weights_only=False advice
        raise StageError(f"{path}: not a torch weights file (expected {what}): "
                         f"{type(exc).__name__}: {first}") from exc
    if not isinstance(sd, dict):
        raise StageError(f"{path}: holds a {type(sd).__name__}, expected a state dict ({what})")
    return sd


def _take(sd: dict, path: Path, key: str, shape: tuple[int, ...], what: str) -> torch.Tensor:
    v = sd.get(key)
    if not isinstance(v, torch.Tensor):
        raise StageError(f"{path}: missing key '{key}' (expected {what}, shape {shape})")
    if tuple(v.shape) != shape:
        raise StageError(f"{path}: '{key}' has shape {tuple(v.shape)}, expected {shape} ({what})")
    return v.detach().to(torch.float32).clone()  # own storage: the saved file holds only these weights


def convert(vgg_path: str | Path, lin_path: str | Path, out_path: str | Path) -> str:
    """Write our LPIPS file from the two official files (checking every key and shape); return its sha256."""
    vgg_path, lin_path, out_path = Path(vgg_path), Path(lin_path), Path(out_path)
    vgg, lin = _load_state(vgg_path, _VGG_HINT), _load_state(lin_path, _LIN_HINT)
    out = {}
    for key, shape in _shapes().items():
        if key.startswith("lin."):  # ours lin.<k>.weight <- lpips lin<k>.model.1.weight (model.0 is Dropout)
            out[key] = _take(lin, lin_path, f"lin{key.split('.')[1]}.model.1.weight", shape, _LIN_HINT)
        else:
            out[key] = _take(vgg, vgg_path, key, shape, _VGG_HINT)
    atomic_torch_save(out, out_path)
    return sha256_file(out_path)


def load_lpips(cfg, log: logging.Logger, device: str | torch.device = "cpu") -> LPIPS | None:
    """The LPIPS net of `cfg.lpips_weights` (sha256 must equal `cfg.lpips_sha256`) when `cfg.rec_loss` is
    "l1_lpips"; None for "l1" (an explicit choice: nothing to warn about). A StageError, never a silent
    L1-only run, when l1_lpips has no file (config validation normally refuses that earlier)."""
    if not cfg.lpips_on:
        return None
    if not cfg.lpips_weights:
        raise StageError("TokenizerConfig.rec_loss: l1_lpips needs tokenizer.lpips_weights (a VGG16 LPIPS file "
                         f"built with: {_CONVERT}) and its lpips_sha256; or say rec_loss: l1")
    path = Path(cfg.lpips_weights)
    if not path.is_file():
        raise StageError(f"TokenizerConfig.lpips_weights: {path} not found")
    digest = sha256_file(path)
    if digest != cfg.lpips_sha256:
        raise StageError(f"TokenizerConfig.lpips_sha256: {path} has sha256 {digest}, config says "
                         f"'{cfg.lpips_sha256}'")
    sd = _load_state(path, f"an LPIPS file written by: {_CONVERT}")
    expected = _shapes()
    shape = {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}
    problems = {
        "missing": [k for k in expected if k not in shape],
        "unexpected": [k for k in sd if k not in expected],
        "wrong shape": [k for k, s in expected.items() if k in shape and shape[k] != s],
    }
    if any(problems.values()):
        found = ", ".join(f"{name} {keys[:3]}" for name, keys in problems.items() if keys)
        raise StageError(f"TokenizerConfig.lpips_weights: {path} is not our LPIPS VGG16 file ({found}); "
                         f"build it from the official weights with: {_CONVERT}")
    net = LPIPS()
    net.load_state_dict(sd, strict=False)  # keys checked above; only the shift/scale constants are not in the file
    log.info("LPIPS on: %s (sha256 %s)", path, digest)
    return net.to(device).eval()


def random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random weights in our file's layout: Kaiming-normal convs (ReLU gain, fan-in) with zero biases,
    so activations keep their scale through the 13 layers, and positive heads of the official scale
    (U[0.02, 0.18], mean 0.1 like the v0.1 heads), so distances are finite, >= 0 and 0 only for equal inputs."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in _shapes().items():  # fixed order: the same seed draws the same numbers
        if key.startswith("lin."):
            out[key] = 0.02 + 0.16 * torch.rand(shape, generator=g)
        elif key.endswith(".weight"):
            out[key] = torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:]))
        else:
            out[key] = torch.zeros(shape)
    return out


def write_random_lpips(out_path: str | Path, seed: int = 0) -> str:
    """Write a random-weights LPIPS file with the exact layout of the converter's (rehearsals and tests without
    the official VGG16 files; NOT the paper's loss); return its sha256. Same seed, same bytes."""
    atomic_torch_save(random_state(seed), Path(out_path))
    return sha256_file(out_path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vtp_core.losses.lpips",
                                 description="Convert the official VGG16 + LPIPS v0.1 weights to our LPIPS file, "
                                             "or (--random) write a seeded random-weights file of the same layout.")
    ap.add_argument("--vgg", help=_VGG_HINT)
    ap.add_argument("--lin", help=_LIN_HINT)
    ap.add_argument("--random", action="store_true",
                    help="random weights instead of the official files (rehearsals and tests; not the paper's loss)")
    ap.add_argument("--seed", type=int, default=0, help="seed of --random (same seed, same file)")
    ap.add_argument("--out", required=True, help="the file to write (point TokenizerConfig.lpips_weights at it)")
    args = ap.parse_args(argv)
    if args.random and (args.vgg or args.lin):
        ap.error("--random takes no --vgg/--lin")
    if not args.random and not (args.vgg and args.lin):
        ap.error("give --vgg and --lin (the official files), or --random")
    try:
        if args.random:
            sha = write_random_lpips(args.out, args.seed)
            print(f"note: random LPIPS weights (seed {args.seed}), for rehearsals and tests only", file=sys.stderr)
        else:
            sha = convert(args.vgg, args.lin, args.out)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    print(f"wrote {out}\nsha256 {sha}\n"
          f"tokenizer:  # in the study (merge into its tokenizer: block if it has one)\n"
          f"  rec_loss: l1_lpips\n  lpips_weights: {json.dumps(str(out))}\n  lpips_sha256: {json.dumps(sha)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
