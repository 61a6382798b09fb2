"""The DINOv2 feature network of FD-DINOv2: timm's DINOv2 ViT (`vit_large_patch14_dinov2`'s class and
settings), 224 px input, the CLS token after the final norm (dgm-eval's convention, 1024-d for ViT-L/14).

Why a user file: Inception FID saturates on strong generators, and FD-DINOv2 is the metric newer work
adds; its weights are large and licensed separately, so nothing is downloaded. The file is identified
by its sha256 (checked when the stage is built and again every time it is loaded), and its shapes give
the architecture (width, depth, MLP width; 64-d heads as every DINOv2 size has), so a small random file
of the same family exercises the same code. Key names: timm's or facebookresearch/dinov2's (converted,
and the position embedding resampled to the 16x16 grid of 224 px, by timm's `checkpoint_filter_fn`).

Input: uint8 NHWC (grey is repeated to RGB) -> [0, 1] -> bicubic (antialiased) resize to 224x224 ->
ImageNet mean/std, as dgm-eval's DINOv2 encoder transforms images.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vtp_core.runtime import StageError

IMAGE_SIZE = 224
PATCH = 14
HEAD_DIM = 64
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def dinov2_input(images: np.ndarray, device: str) -> torch.Tensor:
    """uint8 NHWC -> (N, 3, 224, 224), normalised with ImageNet mean/std."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8, order="C")).to(device).permute(0, 3, 1, 2).float() / 255
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def _read(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = sd.get("model", sd) if isinstance(sd, dict) else sd
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    if not isinstance(sd, dict) or "cls_token" not in sd:
        raise StageError(f"dinov2 extractor: {path} is not a DINOv2 ViT state_dict (no cls_token)")
    return sd


def build_vit(sd: dict, path: Path):
    """The timm VisionTransformer that the tensors of `sd` describe (DINOv2 family, 224 px, no head)."""
    from timm.models.vision_transformer import VisionTransformer

    if "register_tokens" in sd or "reg_token" in sd or any(".w12." in k for k in sd):
        raise StageError(f"dinov2 extractor: {path}: DINOv2 with registers or SwiGLU (ViT-g) is not supported; "
                         f"give a ViT-S/B/L/14 file")
    dim = int(sd["cls_token"].shape[-1])
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    hidden = int(sd["blocks.0.mlp.fc1.weight"].shape[0])
    if dim % HEAD_DIM:
        raise StageError(f"dinov2 extractor: {path}: width {dim} is not a multiple of DINOv2's {HEAD_DIM}-d heads")
    return VisionTransformer(img_size=IMAGE_SIZE, patch_size=PATCH, embed_dim=dim, depth=depth,
                             num_heads=dim // HEAD_DIM, mlp_ratio=hidden / dim, init_values=1e-5, num_classes=0,
                             global_pool="token", dynamic_img_size=False)


def sha256_of(path: Path) -> str:
    from dit_eval.extractors import file_hash

    return file_hash(path, "sha256")


def check_file(path: str, sha256: str, where: str = "fid.dinov2") -> Path:
    """The weights file, refused in one line when it is missing or its sha256 is not the given one."""
    p = Path(path)
    if not path or not p.is_file():
        raise StageError(f"{where}.path: {path or '(empty)'}: no such DINOv2 weights file (nothing is downloaded)")
    h = sha256_of(p)
    if h != sha256.lower():
        raise StageError(f"{where}.sha256: {p} has sha256 {h}, not {sha256!r}")
    return p


@torch.no_grad()
def load_dinov2(path: Path, sha256: str):
    """The checked file as an eval-mode timm ViT whose forward gives the CLS features (N, dim)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    p = check_file(str(path), sha256)
    sd = _read(p)
    model = build_vit(sd, p)
    try:
        model.load_state_dict(checkpoint_filter_fn(dict(sd), model), strict=True)
    except RuntimeError as exc:
        raise StageError(f"dinov2 extractor: {p}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def build(cfg, out: Path) -> dict:
    """Stage body: check the file (sha256) and record it, with the feature width its shapes give."""
    from vtp_core.runtime import atomic_write_json

    p = check_file(cfg.path, cfg.sha256)
    sd = _read(p)
    build_vit(sd, p)  # refuses what it cannot build (registers, SwiGLU, odd widths) before any cell runs
    dim = int(sd["cls_token"].shape[-1])
    atomic_write_json(Path(out) / "extractor.json", {"name": "dinov2", "sha": cfg.sha256.lower(), "sha_algo": "sha256",
                                                     "dim": dim, "file": str(p.resolve())})
    return {"extractor": "dinov2", "sha": cfg.sha256.lower(), "dim": dim, "file": str(p)}


def write_random_dinov2(path: Path, seed: int = 0, width: int = 64, depth: int = 1) -> str:
    """A small seeded random file of the DINOv2 family (rehearsals: FD-DINOv2's code path without the real
    weights); returns its sha256."""
    from timm.models.vision_transformer import VisionTransformer

    from vtp_core.runtime import atomic_torch_save

    torch.manual_seed(seed)
    net = VisionTransformer(img_size=IMAGE_SIZE, patch_size=PATCH, embed_dim=width, depth=depth,
                            num_heads=width // HEAD_DIM, init_values=1e-5, num_classes=0)
    atomic_torch_save(net.state_dict(), Path(path))
    return sha256_of(Path(path))
