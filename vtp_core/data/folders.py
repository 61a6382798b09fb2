"""User-supplied image-text data: an ImageFolder tree or webdataset-style tar shards, per split.

Layout: `<DataConfig.path>/<split>/` ('test' may also be called 'val') holding either class folders
(`<class>/<name>.<img ext>`) or `*.tar` shards whose members are grouped by key (`<key>.<img ext>`,
`<key>.txt` / `<key>.json` caption, optional `<key>.cls` label). Extensions are case-insensitive.
A caption comes from the `.txt` (or `.json` "caption"/"text") next to the image, else from the class
template. Where the bytes lie comes from a cached byte-range index (`data/index.py`). Here a split is
decoded once, centre-cropped and resized to `image_size` (ADM `center_crop_arr`) and kept in memory
as uint8 NHWC, like Fashion-MNIST (the laptop/small-cluster path; `data/lazy.py` is the other).
The one other preprocessing is `squash_arr` (the whole image resized to a square, no crop): VTP's
zero-shot protocol (METHOD.md §5.8) uses it, the linear probe and rFID use the centre crop (§5.7).
Unreadable images are replaced by the next readable one (i+1, i+2, ..., wrapping), as `data/lazy.py`
does, so `storage: memory` and `storage: lazy` give the same image, label and caption at every position;
they are counted and logged by path, and more than `max_bad_fraction` stops the stage.
`DataConfig.checksum`, when set, must equal the sha256 of the (name, size) manifest.
"""
from __future__ import annotations

import functools
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vtp_core.config import DataConfig
from vtp_core.data.index import DataIndex, load_index
from vtp_core.runtime import StageError

log = logging.getLogger("vtp.data")


@dataclass
class Loaded:
    images: np.ndarray  # uint8 (N,S,S,3)
    labels: np.ndarray  # int64 (N,), -1 when unknown
    captions: list[str]
    class_names: tuple[str, ...]
    bad: list[str]
    manifest_sha256: str
    index: DataIndex | None = None  # where the images come from (to re-decode them another way)
    # int64 (N,): position in `index` of the image decoded at each position: i itself, or for an unreadable
    # image the next readable one that replaces it (lazy storage: i, replaced when decoded; same pixels)
    ids: np.ndarray | None = None


def center_crop_arr(img: Image.Image, size: int) -> np.ndarray:
    """ADM preprocessing: BOX-halve while the short side >= 2·size, BICUBIC resize, centre crop."""
    img = img.convert("RGB")
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


def squash_arr(img: Image.Image, size: int) -> np.ndarray:
    """VTP zero-shot preprocessing, torchvision `Resize((size, size))` on a PIL image: the whole image
    resized to a square (aspect ratio NOT kept, no crop) with PIL BILINEAR, which is what torchvision
    calls for PIL inputs (PIL's resize is antialiased). No BOX pre-halving, so the pixels are the same."""
    return np.asarray(img.convert("RGB").resize((size, size), resample=Image.BILINEAR))


RESIZES = {"center_crop": center_crop_arr, "squash": squash_arr}


def check_resize(resize: str, where: str = "resize") -> None:
    if resize not in RESIZES:
        raise StageError(f"{where}: '{resize}'; valid: {', '.join(RESIZES)}")


def decode(index: DataIndex, i: int, size: int, resize: str = "center_crop") -> np.ndarray:
    """Image i of the index as uint8 (size, size, 3), preprocessed by `resize` ('center_crop' = ADM
    `center_crop_arr`, 'squash' = `squash_arr`); raises on unreadable bytes."""
    with Image.open(io.BytesIO(index.image_bytes(i))) as im:
        return RESIZES[resize](im, size)


def decode_many(index: DataIndex, ids, size: int, resize: str = "center_crop") -> list[np.ndarray | Exception]:
    """Decode several images on a thread pool (PIL releases the GIL while decoding and resizing)."""
    check_resize(resize)  # up front: inside `one` a bad name would read as "unreadable image"

    def one(i):
        try:
            return decode(index, int(i), size, resize)
        except Exception as exc:  # noqa: BLE001 - any decode failure means "unreadable image"
            return exc

    if len(ids) < 8:
        return [one(i) for i in ids]
    return list(_pool().map(one, ids))


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(min(16, os.cpu_count() or 1), thread_name_prefix="decode")


def load_folder_split(cfg: DataConfig, split: str, index: DataIndex | None = None) -> Loaded:
    """Every image of the split decoded into memory. An unreadable image i is replaced by the next readable
    one (i+1, i+2, ..., wrapping: the rule of `lazy.LazyImages`), counted and logged by path; position i
    keeps its own label and caption (as with lazy storage), so the storage changes no number."""
    index = index or load_index(cfg.path, cfg.dataset, split)
    total = len(index)
    if total == 0:
        raise StageError(f"DataConfig.path: no images under {index.root}")
    decoded = decode_many(index, range(total), cfg.image_size)
    bad = []
    for i, img in enumerate(decoded):
        if isinstance(img, Exception):
            bad.append(index.source(i))
            log.warning("data: unreadable image %s replaced by the next readable one (%s)", bad[-1],
                        type(img).__name__)
    check_bad_fraction(bad, total, cfg.max_bad_fraction, index.root)
    if len(bad) == total:
        raise StageError(f"{index.root}: no readable image at all")
    check_manifest(cfg)
    ids = np.empty(total, dtype=np.int64)  # the next readable position at or after i, wrapping
    nxt = -1
    for j in range(2 * total - 1, -1, -1):
        if not isinstance(decoded[j % total], Exception):
            nxt = j % total
        if j < total:
            ids[j] = nxt
    labels = np.asarray(index.label).astype(np.int64)
    captions = [default_caption(index.caption(i), lab, index.class_names) for i, lab in enumerate(labels)]
    if bad:
        log.warning("data: %d of %d images under %s unreadable, each replaced by the next readable one",
                    len(bad), total, index.root)
    images = np.ascontiguousarray(np.stack([decoded[j] for j in ids]))
    return Loaded(images, labels, captions, index.class_names, bad, index.manifest_sha256, index, ids)


def check_bad_fraction(bad: list[str], total: int, max_fraction: float, where) -> None:
    if total and len(bad) / total > max_fraction:
        raise StageError(f"{where}: {len(bad)}/{total} unreadable images exceed max_bad_fraction={max_fraction} "
                         f"(first: {', '.join(bad[:5])})")


def check_manifest(cfg: DataConfig, index: DataIndex | None = None) -> None:
    """The data a stage reads must be the data it was planned on: `cfg.checksum` (the planner fills it in)
    against the dataset's manifest now."""
    if not cfg.checksum:
        return
    from vtp_core.data.datasets import dataset_checksum

    now = dataset_checksum(cfg)
    if cfg.checksum != now:
        raise StageError(f"DataConfig.checksum: {cfg.path or cfg.dataset} has manifest sha256 {now}, the study "
                         f"was planned on '{cfg.checksum}' (the data changed: re-plan, or point path back)")


def default_caption(cap: str | None, label: int, names: tuple[str, ...]) -> str:
    """The file's caption, else the class template, else a neutral one."""
    from vtp_core.data.captions import caption as template_caption

    return cap if cap else (template_caption(int(label), 0, names) if label >= 0 else "a photo.")
