"""Micro-benchmarks of the downstream protocol's hot spots, as plain functions returning dicts
(a `make bench` script prints them). Why: to show that our DiT is not slower than a reference
transformer of the same shape, that the eigen-based Fréchet distance is not slower than
scipy's sqrtm at Inception's 2048 dims, and what an extractor costs per image.
"""
from __future__ import annotations

import functools
import statistics
import time

import numpy as np
import torch
import torch.nn as nn

from dit_eval.flow import training_loss
from dit_eval.frechet import frechet_distance
from dit_eval.models import create_dit, get_size
from vtp_core.runtime import adamw


class TimmBlockDiT(nn.Module):
    """Reference: timm ViT blocks (LayerNorm, GELU MLP, no adaLN/RoPE) at the same width/depth/tokens;
    the condition is added to every token. Same call signature as our DiT."""

    def __init__(self, size: str, in_chans: int, input_size: int, num_classes: int):
        super().__init__()
        from timm.models.vision_transformer import Block

        s = get_size(size)
        self.embed = nn.Conv2d(in_chans, s.width, 1)
        self.pos = nn.Parameter(torch.zeros(1, input_size * input_size, s.width))
        self.t = nn.Linear(1, s.width)
        self.y = nn.Embedding(num_classes + 1, s.width)
        self.blocks = nn.Sequential(*[Block(s.width, s.heads) for _ in range(s.depth)])
        self.out = nn.Linear(s.width, in_chans)

    def forward(self, x, t, y):
        b, c, h, w = x.shape
        tok = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        tok = tok + (self.t(t[:, None].float()) + self.y(y))[:, None]
        return self.out(self.blocks(tok)).transpose(1, 2).reshape(b, c, h, w)


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """One flow-matching train step of `model` on a fixed batch, with the trainers' AdamW."""
    opt = adamw(model.parameters(), x.device, lr=1e-4)  # the trainers' optimizer, same for both sides

    def step() -> None:
        loss = training_loss(model, x, y, -0.5, 1.25)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _seconds(step, iters: int, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def time_pair(ours: nn.Module, ref: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int, rounds: int = 5,
              warmup: int = 2) -> tuple[float, float, float]:
    """Median seconds/step of ours and ref over `rounds` alternated rounds of `iters` steps (ours-ref,
    ref-ours, ...), and the median of the per-round ratios ref/ours: machine drift hits both sides alike
    (one block of steps each, one after the other, swung this VM's ratios by +-20 %)."""
    steps = [_train_step(m, x, y) for m in (ours, ref)]
    for step in steps:
        for _ in range(warmup):
            step()
    t_ours, t_ref = alternate(*(functools.partial(_seconds, s, cuda=x.is_cuda) for s in steps), rounds, iters)
    ratio = statistics.median(r / o for o, r in zip(t_ours, t_ref))
    return statistics.median(t_ours), statistics.median(t_ref), ratio


def alternate(seconds_a, seconds_b, rounds: int, iters: int) -> tuple[list[float], list[float]]:
    """Per-round seconds/step of two sides, `seconds_x(iters)` each, over `rounds` rounds in alternation
    (a-b, b-a, a-b, ...): neither side always runs first, inheriting the other's caches, and machine drift
    hits both alike. The DiT rows here and the tokenizer rows (bench/tokenizer.py) time pairs with it."""
    times: tuple[list[float], list[float]] = ([], [])
    sides = (seconds_a, seconds_b)
    for r in range(rounds):
        for i in ((1, 0) if r % 2 else (0, 1)):
            times[i].append(sides[i](iters))
    return times


def bench_dit_train_step(size: str = "tiny", latent_shape=(8, 8, 8), batch_size: int = 64, iters: int = 5,
                         device: str = "cpu", rounds: int = 7) -> dict:
    """Training images/s of our DiT vs a timm-block reference of the same shape (`time_pair`)."""
    c, h, _ = latent_shape
    torch.manual_seed(0)
    x = torch.randn(batch_size, *latent_shape, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    ours, ref, ratio = time_pair(create_dit(size, c, h, 10).to(device), TimmBlockDiT(size, c, h, 10).to(device),
                                 x, y, iters, rounds)
    return {"bench": "dit_train_step", "size": size, "latent_shape": list(latent_shape), "batch_size": batch_size,
            "device": device, "ours_images_per_s": batch_size / ours, "timm_ref_images_per_s": batch_size / ref,
            "ratio": ratio, "rounds": rounds}


def bench_frechet(dim: int = 2048, n: int = 4096, seed: int = 0) -> dict:
    """Seconds for one Fréchet distance at `dim` (ours, eigh-based) vs pytorch-fid's scipy sqrtm."""
    from scipy import linalg

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, dim)) @ (rng.standard_normal((dim, dim)) / np.sqrt(dim))
    b = a[: n // 2] + 0.1 * rng.standard_normal((n // 2, dim))
    m1, s1, m2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    t0 = time.perf_counter()
    ours = frechet_distance(m1, s1, m2, s2)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    covmean = linalg.sqrtm(s1 @ s2).real
    ref = float((m1 - m2) @ (m1 - m2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    t_ref = time.perf_counter() - t0
    return {"bench": "frechet", "dim": dim, "ours_s": t_ours, "scipy_sqrtm_s": t_ref, "ours": ours, "scipy": ref,
            "rel_diff": abs(ours - ref) / max(abs(ref), 1e-12)}


def bench_extractor(stage_dir, n_images: int = 64, image_size: int = 32, device: str = "cpu") -> dict:
    """Images/s of a built extractor stage on random uint8 images."""
    from dit_eval.extractors import load_extractor

    ext = load_extractor(stage_dir, device)
    imgs = np.random.default_rng(0).integers(0, 256, (n_images, image_size, image_size, 3), dtype=np.uint8)
    ext(imgs[:2])
    t0 = time.perf_counter()
    ext(imgs)
    dt = time.perf_counter() - t0
    return {"bench": "extractor", "name": ext.name, "n_images": n_images, "images_per_s": n_images / dt}


def built_extractors(root) -> dict[str, tuple]:
    """Both extractors built into `root` (inception: the bundled TorchScript file, checksum-verified;
    fmnist_cnn: a few training steps on random images, enough to time it), with their input size."""
    from pathlib import Path

    from dit_eval.config import ExtractorConfig
    from dit_eval.extractors import build_fmnist_cnn, build_inception

    root = Path(root)
    (root / "inception").mkdir(parents=True, exist_ok=True)
    (root / "fmnist_cnn").mkdir(parents=True, exist_ok=True)
    build_inception(ExtractorConfig(name="inception"), root / "inception")
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 64))
    build_fmnist_cnn(ExtractorConfig(train_steps=2), root / "fmnist_cnn", data, data)
    return {"inception": (root / "inception", 256), "fmnist_cnn": (root / "fmnist_cnn", 32)}


def rows(frechet_dim: int = 2048, extractors: bool = True) -> list[dict]:
    """The benchmarks as `make bench` rows {bench, value, reference, ratio, ok} (bench/__main__.py format)."""
    out = []
    d = bench_dit_train_step()
    out.append({"bench": f"dit {d['size']} train images/s (ref: timm ViT blocks, no adaLN/RoPE; information; "
                         f"median of {d['rounds']} alternated rounds)",
                "value": round(d["ours_images_per_s"], 1), "reference": round(d["timm_ref_images_per_s"], 1),
                "ratio": round(d["ratio"], 3), "ok": None})
    f = bench_frechet(dim=frechet_dim)
    out.append({"bench": f"frechet {frechet_dim}-d seconds (ref: scipy sqrtm)", "value": round(f["ours_s"], 3),
                "reference": round(f["scipy_sqrtm_s"], 3), "ratio": round(f["ours_s"] / f["scipy_sqrtm_s"], 3),
                "ok": f["rel_diff"] < 1e-6})
    if extractors:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            for name, (stage_dir, size) in built_extractors(tmp).items():
                e = bench_extractor(stage_dir, n_images=32, image_size=size)
                out.append({"bench": f"extractor {name} images/s ({size}px uint8 in)",
                            "value": round(e["images_per_s"], 1), "reference": None, "ratio": None, "ok": None})
    return out
