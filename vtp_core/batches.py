"""Training batches as a pure function of (seed, step): sample order, sub-batches, views, masks, captions.

Why: exact resume needs no data-loader state beyond the step counter. Sample order walks
epoch-wise permutations seeded by (seed, epoch); every random draw of step s (subsets, crops, masks,
caption templates) comes from a generator seeded by (seed, s), drawn for the whole global batch as
numbers; each rank then materialises only its own slice (`make_batch`).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from vtp_core.config import RECIPES, TokenizerConfig, shuffle_chunk
from vtp_core.distributed import rank, world_size
from vtp_core.data import TEMPLATES, caption, class_names, load_train_captions, normalize
from vtp_core.data.views import block_mask, crop_draws, crop_from, mask_plan
from vtp_core.models.text import tokenize


def _gen(seed: int, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0]))


@functools.lru_cache(maxsize=2)
def _epoch_perm(n: int, seed: int, epoch: int) -> np.ndarray:
    """One epoch's sample order, drawn once (a 100M-image permutation takes seconds, a step milliseconds)."""
    perm = torch.randperm(n, generator=_gen(seed, 1, epoch)).numpy()
    perm.setflags(write=False)
    return perm


@functools.lru_cache(maxsize=2)
def _chunk_order(n: int, chunk: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's order of the ceil(n / chunk) chunks (chunk c = images [c·chunk, (c+1)·chunk)), and the epoch
    position where each chunk in that order starts. Memory: two int64 per chunk, not per image."""
    n_chunks = -(-n // chunk)
    order = torch.randperm(n_chunks, generator=_gen(seed, 3, epoch)).numpy()
    sizes = np.where(order == n_chunks - 1, n - (n_chunks - 1) * chunk, chunk)  # the last chunk may be short
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for a in (order, starts):
        a.setflags(write=False)
    return order, starts


def _epoch_positions(n: int, seed: int, epoch: int, off: int, count: int, chunk: int) -> np.ndarray:
    """Images at positions [off, off + count) of epoch `epoch`'s order."""
    if chunk <= 1:
        return _epoch_perm(n, seed, epoch)[off: off + count]
    order, starts = _chunk_order(n, chunk, seed, epoch)
    pos = np.arange(off, off + count)
    k = np.searchsorted(starts, pos, side="right") - 1
    return order[k] * chunk + (pos - starts[k])


def sample_indices(n: int, batch: int, seed: int, step: int, chunk: int = 1) -> np.ndarray:
    """Indices of step `step`: positions [step*batch, (step+1)*batch) of concatenated epoch orders.

    `chunk` = 1: each epoch is a uniform permutation of the n images. `chunk` > 1: each epoch visits chunks of
    `chunk` consecutive images (in file order: within a tar shard, forward through its bytes) in a seeded random
    order, so a step reads whole runs of neighbouring members instead of one random small read per image, and a
    rank's contiguous share of the step is a few runs of its own (`DataConfig.shuffle_chunk`)."""
    start, parts, got = step * batch, [], 0
    while got < batch:
        epoch, off = divmod(start + got, n)
        part = _epoch_positions(n, seed, epoch, off, min(batch - got, n - off), chunk)
        parts.append(part)
        got += len(part)
    return np.concatenate(parts).astype(np.int64)


def sub_batch_sizes(cfg: TokenizerConfig) -> tuple[int, int]:
    """(B_ssl, B_rec): at least 1 each (2 for SSL, KoLeo needs a neighbour)."""
    return max(2, round(cfg.batch_size * cfg.ssl_fraction)), max(1, round(cfg.batch_size * cfg.rec_fraction))


def objective_batches(cfg: TokenizerConfig) -> dict[str, int]:
    """Images per step of each objective the recipe trains: {'clip': B, 'ssl': B_ssl, 'rec': B_rec}, 0 when off."""
    lam_clip, lam_ssl = RECIPES[cfg.recipe]
    b_ssl, b_rec = sub_batch_sizes(cfg)
    return {"clip": cfg.batch_size if lam_clip else 0, "ssl": b_ssl if lam_ssl else 0, "rec": b_rec}


def images_per_step(cfg: TokenizerConfig) -> int:
    """Distinct images one step draws from the data and trains on: the whole batch B when CLIP is on, else the
    SSL subset B_ssl (the rec subset is drawn inside it), else B_rec. `samples seen` = steps × this, so a
    reconstruction-only AE counts only what it trains on, and the data walks at the pace it is used."""
    return max(objective_batches(cfg).values())


class CaptionTable:
    """Class-template captions: token ids of every (template, class), computed once: (T, n_classes, ctx)."""

    def __init__(self, names: tuple[str, ...], context_length: int):
        caps = [caption(c, t, names) for t in range(len(TEMPLATES)) for c in range(len(names))]
        self.ids = tokenize(caps, context_length).view(len(TEMPLATES), len(names), context_length)

    def __call__(self, idx: np.ndarray, labels: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Token ids of the images `idx`; `draws` (one integer per image) pick each image's template."""
        return self.ids[draws % self.ids.shape[0], labels]


class CaptionList:
    """Per-image captions (user data), tokenised per batch (each rank its own slice)."""

    def __init__(self, captions: list[str], context_length: int):
        self.captions, self.context_length = captions, context_length

    def __call__(self, idx: np.ndarray, labels: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        return tokenize([self.captions[i] for i in idx], self.context_length)


def caption_source(data_cfg, context_length: int) -> CaptionTable | CaptionList:
    """Templates over class names for labelled data (Fashion-MNIST), the files' captions otherwise."""
    caps = load_train_captions(data_cfg)
    return CaptionTable(class_names(data_cfg), context_length) if caps is None else CaptionList(caps, context_length)


def _mine(n: int) -> slice:
    """This rank's contiguous share of n positions (n must divide by the world size)."""
    w, r = world_size(), rank()
    if n % w:
        raise ValueError(f"batch dimension {n} is not divisible by WORLD_SIZE={w}")
    k = n // w
    return slice(r * k, (r + 1) * k)


# Full-size images travel as uint8 NHWC from the loader to the device and are normalized there (`finish_batch`):
# 1/4 of the bytes through the workers' shared memory and the host-to-device copy, and no float pass on the
# loader's CPUs (timm's PrefetchLoader does the same). The same float ops wherever they run: the same numbers.
UINT8_KEYS = ("rec_images", "clip_images")


def finish_batch(batch: dict[str, torch.Tensor], device: str | torch.device) -> dict[str, torch.Tensor]:
    """A `host_batch` on `device` (asynchronous copies from pinned memory), its uint8 images normalized there."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    for k in UINT8_KEYS:
        if k in out:
            out[k] = normalize(out[k], device)
    return out


def make_batch(cfg: TokenizerConfig, images: np.ndarray, labels: np.ndarray, step: int, active: tuple[str, ...],
               captions: CaptionTable | CaptionList | None, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """This rank's slice of every sub-batch of one step, on `device` (images float NCHW in [-1, 1])."""
    return finish_batch(host_batch(cfg, images, labels, step, active, captions), device)


def host_batch(cfg: TokenizerConfig, images: np.ndarray, labels: np.ndarray, step: int, active: tuple[str, ...],
               captions: CaptionTable | CaptionList | None) -> dict[str, torch.Tensor]:
    """This rank's slice of every sub-batch of one step, on the CPU as the loader delivers it: the `UINT8_KEYS`
    images uint8 NHWC (`finish_batch` normalizes them on the device), the SSL views float NCHW in [-1, 1].

    Everything random about the step is drawn first, for the whole global batch, as numbers: which images
    (`sample_indices`), the rec and SSL subsets, one row of crop uniforms per SSL view, the iBOT mask plan and
    a seed per masked crop, a template draw per caption. A rank then decodes only the images its slices
    use and makes only their views, masks and captions: the union over ranks is the world-size-1 batch, and
    host memory per rank is O(global batch / world size)."""
    g = _gen(cfg.seed, 2, step)
    draw = images_per_step(cfg)
    idx = sample_indices(len(images), draw, cfg.seed, step, shuffle_chunk(cfg.data))
    b_ssl, b_rec = sub_batch_sizes(cfg)
    rec_sel = torch.randperm(draw, generator=g)[:b_rec]
    ssl_sel = torch.randperm(draw, generator=g)[:b_ssl]
    parts: dict[str, torch.Tensor] = {}
    if "rec" in active:
        parts["rec"] = rec_sel[_mine(b_rec)]
    if "clip" in active:
        clip_mine = _mine(draw)
        parts["clip"] = torch.arange(draw)[clip_mine]
        templates = torch.randint(0, 1 << 30, (draw,), generator=g)
    if "ssl" in active:
        ssl_mine = _mine(b_ssl)
        parts["ssl"] = ssl_sel[ssl_mine]
        n_views = 2 + cfg.n_local_crops
        crop_u = crop_draws(n_views * b_ssl, g).view(n_views, b_ssl, 5)
        plan = mask_plan(2 * b_ssl, g, tuple(cfg.mask_ratio), cfg.mask_probability)
        mask_seeds = torch.randint(0, 1 << 62, (2 * b_ssl,), generator=g)
    need = torch.unique(torch.cat(list(parts.values())))  # sorted positions in the draw
    u = images[idx[need.numpy()]]  # uint8 (gathered before `normalize`: 4x fewer bytes); decodes lazily read
    raw = lambda pos: torch.from_numpy(np.ascontiguousarray(u[torch.searchsorted(need, pos).numpy()]))  # noqa: E731
    batch: dict[str, torch.Tensor] = {}
    if "rec" in active:
        batch["rec_images"] = raw(parts["rec"])
    if "clip" in active:
        pos = parts["clip"].numpy()
        batch["clip_images"] = raw(parts["clip"])
        batch["clip_text"] = captions(idx[pos], torch.from_numpy(np.asarray(labels[idx[pos]])), templates[clip_mine])
    if "ssl" in active:  # this rank's images of each view: [view0 of its images, view1 of its images]
        xs, u = normalize(raw(parts["ssl"])), crop_u[:, ssl_mine]
        glob = torch.cat([crop_from(xs, cfg.global_crop, u[v], tuple(cfg.global_crop_scale)) for v in (0, 1)])
        loc = [crop_from(xs, cfg.local_crop, u[2 + v], tuple(cfg.local_crop_scale)) for v in range(cfg.n_local_crops)]
        loc = torch.cat(loc) if loc else xs.new_zeros(0, xs.shape[1], cfg.local_crop, cfg.local_crop)
        side = cfg.global_crop // cfg.patch
        crops = [v * b_ssl + j for v in (0, 1) for j in range(b_ssl)[ssl_mine]]
        masks = torch.zeros(len(crops), side * side, dtype=torch.bool)
        for row, c in enumerate(crops):
            if plan[c] > 0:
                masks[row] = block_mask(side, side, float(plan[c]), torch.Generator().manual_seed(int(mask_seeds[c])))
        batch.update(global_views=glob, local_views=loc, **mask_tensors(masks))
    return batch


def mask_tensors(masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """masks (n, N) bool -> {'masks', 'mask_idx' flat indices, 'mask_weight' 1/(masked count of its image)}."""
    per_img = masks.sum(1, keepdim=True).clamp(min=1).float()
    flat = masks.flatten()
    idx = flat.nonzero().squeeze(1)
    weight = (1.0 / per_img).expand_as(masks).flatten()[idx]
    return {"masks": masks, "mask_idx": idx, "mask_weight": weight}
