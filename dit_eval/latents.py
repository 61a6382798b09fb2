"""`latents` stage: encode the DiT training set once per tokenizer, with per-channel statistics.

Why (docs/protocol.md#latents): the DiT trains on cached latents, never on pixels, so encoding happens once.
Every image is encoded twice (as is and h-flipped) in fp32 without autocast; the DiT input is
(z − mean)/std with per-channel stats from a fixed random subset of non-flipped latents, and these
stats are recomputed for every tokenizer. The stats carry a content hash: training and sampling
both assert it, because normalising in training but not at decode (or with other stats) silently
wrecks gFID. Latents are stored in shards (not one file per image).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from vtp_core.runtime import Preempted, StageError, atomic_torch_save, load_checkpoint

SHARD_GLOB = "latents-*.pt"


def stats_hash(mean: torch.Tensor, std: torch.Tensor) -> str:
    """Short sha256 of the stats' float32 bytes: identifies the normalisation a DiT was trained with."""
    h = hashlib.sha256()
    for t in (mean, std):
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_stats(latents_dir: Path) -> dict:
    """Read `stats.pt` and check that its recorded hash matches its content (else StageError)."""
    path = Path(latents_dir) / "stats.pt"
    if not path.is_file():
        raise StageError(f"latent stats missing: {path} (run the latents stage first)")
    st = load_checkpoint(path)
    got = stats_hash(st["mean"], st["std"])
    if got != st["hash"]:
        raise StageError(f"latent stats {path} are corrupt: content hash {got} != recorded {st['hash']}")
    return st


def shard_paths(latents_dir: Path) -> list[Path]:
    paths = sorted((Path(latents_dir) / "shards").glob(SHARD_GLOB))
    if not paths:
        raise StageError(f"no latent shards in {Path(latents_dir) / 'shards'} (latents stage incomplete?)")
    return paths


class LatentStore:
    """The latent shards as one indexable set, without concatenating them: shards are mmap'd, so a
    batch reads only its rows (ImageNet latents with flips are ~170 GB in fp32 and never fit in RAM)."""

    KEYS = ("latents", "latents_flip", "labels")

    def __init__(self, parts: list[dict]):
        self.parts = parts
        sizes = torch.tensor([len(p["latents"]) for p in parts])
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
        self.has_flip = all(len(p["latents_flip"]) == len(p["latents"]) for p in parts)
        self.shape = tuple(parts[0]["latents"].shape[1:])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def gather(self, key: str, idx: torch.Tensor) -> torch.Tensor:
        """Rows `idx` (global indices, any order) of `key`."""
        shard = torch.bucketize(idx, self.offsets[1:], right=True)
        first = self.parts[0][key]
        out = torch.empty((len(idx), *first.shape[1:]), dtype=first.dtype)
        for s in shard.unique().tolist():
            m = shard == s
            out[m] = self.parts[s][key][idx[m] - self.offsets[s]]
        return out

    def all(self, key: str) -> torch.Tensor:
        return torch.cat([p[key] for p in self.parts])


def load_latents(latents_dir: Path) -> LatentStore:
    """All shards of a latents stage (mmap'd)."""
    return LatentStore([torch.load(p, map_location="cpu", weights_only=True, mmap=True)
                        for p in shard_paths(latents_dir)])


@torch.no_grad()
def encode(tokenizer, images: np.ndarray, batch_size: int, device: str, flip: bool = False) -> torch.Tensor:
    """Encode in fp32 with autocast off (as VTP's extract_features); returns CPU latents.
    Pixels go through the suite's one convention, `vtp_core.data.normalize` (uint8 NHWC -> [-1, 1])."""
    from vtp_core.data import normalize

    out = []
    dev_type = torch.device(device).type
    with torch.autocast(dev_type, enabled=False):
        for i in range(0, len(images), batch_size):
            x = normalize(images[i:i + batch_size], device)
            if flip:
                x = torch.flip(x, dims=[3])
            out.append(tokenizer.encode(x).float().cpu())
    return torch.cat(out)


def channel_stats(latents_dir: Path, n_total: int, subset: int, seed: int) -> dict:
    """Per-channel mean/std over a fixed random subset (seeded) of the non-flipped latents."""
    k = min(subset, n_total) if subset > 0 else n_total
    idx = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:k].sort().values
    picked, start = [], 0
    for p in shard_paths(latents_dir):
        z = torch.load(p, map_location="cpu", weights_only=True, mmap=True)["latents"]
        sel = idx[(idx >= start) & (idx < start + len(z))] - start
        picked.append(z[sel].double())
        start += len(z)
    z = torch.cat(picked)
    mean = z.mean(dim=(0, 2, 3)).float()
    std = z.std(dim=(0, 2, 3)).float()
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all()) or (std <= 0).any():
        raise StageError(f"latent stats are degenerate (mean {mean.tolist()}, std {std.tolist()})")
    return {"mean": mean, "std": std, "n": int(k), "hash": stats_hash(mean, std)}


def encode_to_shards(cfg, out: Path, tokenizer, images: np.ndarray, labels: np.ndarray, device: str,
                     progress: bool = False, stop_requested=lambda: False) -> dict:
    """The stage body, with tokenizer and images injected (tests pass a fake tokenizer and arrays).

    Existing shards are kept, so a preempted stage resumes at the first missing shard.
    """
    n = len(images) if cfg.n_images in (0, None) else min(cfg.n_images, len(images))
    if n == 0:
        raise StageError("latents: no training images to encode (check data.path / data.n_train)")
    if cfg.n_images and len(images) < cfg.n_images:
        raise StageError(f"latents: asked for n_images={cfg.n_images} but the train split has {len(images)}")
    t0 = time.time()
    shard_dir = Path(out) / "shards"
    starts = range(0, n, cfg.shard_size)
    bar = _tqdm(starts, progress, "encode")
    for s in bar:
        path = shard_dir / f"latents-{s // cfg.shard_size:05d}.pt"
        if path.exists():
            continue
        if stop_requested():
            raise Preempted("latents: stop requested; finished shards are kept")
        imgs = images[s:min(n, s + cfg.shard_size)]
        z = encode(tokenizer, imgs, cfg.batch_size, device)
        z_flip = encode(tokenizer, imgs, cfg.batch_size, device, flip=True) if cfg.flip else z[:0]
        if not torch.isfinite(z).all():
            raise StageError(f"latents: tokenizer produced non-finite latents in shard {path.name}")
        lab = torch.tensor(labels[s:s + len(imgs)], dtype=torch.long)  # a copy: labels may be a read-only memmap
        atomic_torch_save({"latents": z, "latents_flip": z_flip, "labels": lab}, path)
    stats = channel_stats(out, n, cfg.stats_subset, cfg.stats_seed)
    atomic_torch_save(stats, Path(out) / "stats.pt")
    shape = list(load_checkpoint(shard_paths(out)[0])["latents"].shape[1:])
    return {"stats_hash": stats["hash"], "n": n, "n_stats": stats["n"], "latent_shape": shape,
            "flip": bool(cfg.flip), "n_shards": len(starts), "latent_mean": stats["mean"].tolist(),
            "latent_std": stats["std"].tolist(), "wall_s": round(time.time() - t0, 3)}


def run(cfg, ctx) -> dict:
    """Stage entry: tokenizer from the `pretrain` stage, images from the data's train split."""
    from vtp_core.data import load_split
    from vtp_core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(ctx.input("pretrain"), ctx.device)
    tokenizer.eval()
    images, labels = load_split(cfg.data, "train")
    return encode_to_shards(cfg, ctx.out, tokenizer, images, labels, ctx.device, ctx.progress,
                            ctx.stop_requested)


def _tqdm(it, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, disable=not enabled, leave=False)
