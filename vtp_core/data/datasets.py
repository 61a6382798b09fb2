"""Dataset readers returning uint8 NHWC arrays + integer labels (+ captions).

Fashion-MNIST comes from Debian (`dataset-fashion-mnist`) or $FASHION_MNIST_DIR; user data (ImageFolder / tar shards)
from `data/folders.py`.

Why plain arrays: the tokenizer trainer, the probe, the latent cache and the reference statistics
all read the same images the same way; Fashion-MNIST (60k/10k, 28x28) fits in memory, is padded
to 32x32 (or resized to `DataConfig.image_size`) and replicated to 3 channels.
Subsets are nested: the first n indices of one permutation fixed by `subset_seed`.
User data too large for memory is read lazily (`DataConfig.storage`, `data/lazy.py`): same interface,
images decoded on access; use `take` for subsets so nothing is decoded before it is needed.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vtp_core.config import DataConfig
from vtp_core.data.captions import CLASS_NAMES, readable_class_names
from vtp_core.fmnist_files import FILES, fmnist_dir, missing_message
from vtp_core.runtime import StageError


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.lru_cache(maxsize=4)
def _fashion_mnist(root: str, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    img_f, lab_f = (Path(root) / f for f in FILES[split])
    for f in (img_f, lab_f):
        if not f.is_file():
            raise StageError(missing_message(f))
    imgs, labels = _read_idx(img_f), _read_idx(lab_f).astype(np.int64)
    if size >= 28 and (size - 28) % 2 == 0:
        pad = (size - 28) // 2
        imgs = np.pad(imgs, ((0, 0), (pad, pad), (pad, pad)))
    else:
        t = torch.from_numpy(imgs.copy()).float().unsqueeze(1)
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        imgs = t.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    imgs = np.ascontiguousarray(np.repeat(imgs[..., None], 3, axis=-1))
    imgs.setflags(write=False)
    labels.setflags(write=False)
    return imgs, labels


@functools.lru_cache(maxsize=16)
def _fmnist_checksum(root: str, stamps: tuple) -> str:
    h = hashlib.sha256()
    for split in ("train", "test"):
        for name in FILES[split]:
            h.update(f"{name}\n".encode())
            h.update((Path(root) / name).read_bytes())
    return h.hexdigest()


def dataset_checksum(cfg: DataConfig) -> str:
    """The identity of the data `cfg` names (what `DataConfig.checksum` holds): for Fashion-MNIST the sha256 of
    its four files, for user data `index.dataset_manifest` (the manifests of its splits). StageError when the
    data is missing."""
    if cfg.dataset == "fashion_mnist":
        root = fmnist_dir(cfg)
        files = [root / f for split in ("train", "test") for f in FILES[split]]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise StageError(missing_message(missing[0]))
        return _fmnist_checksum(str(root), tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    from vtp_core.data.index import dataset_manifest

    return dataset_manifest(cfg.path, cfg.dataset)


FMNIST_SIZES = {"train": 60000, "test": 10000}


def split_size(cfg: DataConfig, split: str) -> int:
    """Images in a split (from the data index for user data; nothing is decoded)."""
    if cfg.dataset == "fashion_mnist":
        return FMNIST_SIZES[split]
    from vtp_core.data.index import load_index

    return len(load_index(cfg.path, cfg.dataset, split))


def load_split(cfg: DataConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Whole split ('train' | 'test') as (uint8 (N,S,S,3), int64 (N,)), read-only, cached."""
    if split not in FILES:
        raise StageError(f"unknown split '{split}'; valid: train, test")
    if cfg.dataset == "fashion_mnist":
        from vtp_core.data.folders import check_manifest

        check_manifest(cfg)
        return _fashion_mnist(str(fmnist_dir(cfg)), split, cfg.image_size)
    ld = _folder(cfg, split)
    return ld.images, ld.labels


def load_captions(cfg: DataConfig, split: str) -> list[str] | None:
    """Per-image captions of a split, or None for class-labelled data (captions come from templates)."""
    if cfg.dataset == "fashion_mnist":
        return None
    return _folder(cfg, split).captions


def class_names(cfg: DataConfig, split: str = "train") -> tuple[str, ...]:
    """Class names for templates / zero-shot (folder names for user data)."""
    if cfg.dataset == "fashion_mnist":
        return CLASS_NAMES
    return readable_class_names(_folder(cfg, split).class_names, Path(cfg.path) if "{" not in cfg.path else None)


@functools.lru_cache(maxsize=4)
def _folder(cfg: DataConfig, split: str):
    """User data of one split: decoded into memory (`folders.Loaded`) or read lazily (same fields)."""
    from vtp_core.data.folders import Loaded, check_manifest, load_folder_split, resize_name
    from vtp_core.data.index import load_index
    from vtp_core.data.lazy import LazyCaptions, LazyImages

    index = load_index(cfg.path, cfg.dataset, split)
    decoded_gb = len(index) * cfg.image_size ** 2 * 3 / 1e9
    lazy = cfg.storage == "lazy" or (cfg.storage == "auto" and decoded_gb > float(os.environ.get("VTP_DECODED_MAX_GB", 8)))
    if not lazy:
        ld = load_folder_split(cfg, split, index)
        ld.images.setflags(write=False)
        return ld
    if len(index) == 0:
        raise StageError(f"DataConfig.path: no images under {index.root}")
    check_manifest(cfg)
    labels = np.asarray(index.label).astype(np.int64)
    images = LazyImages(index, cfg.image_size, cfg.max_bad_fraction,  # one bad-data ledger for images and captions
                        resize=resize_name("center_crop", cfg.jpeg_decode, cfg.resample))
    return Loaded(images, labels, LazyCaptions(index, images.ledger),
                  index.class_names, [], index.manifest_sha256, index, np.arange(len(index), dtype=np.int64))


def load_images(cfg: DataConfig, split: str, idx, resize: str = "center_crop"):
    """Images `idx` of a split (positions as in `load_split`) preprocessed by `resize` ('center_crop' |
    'squash', `folders.RESIZES`) after `cfg.jpeg_decode`, as a lazy view for user data (decoded when indexed,
    batch by batch).

    Fashion-MNIST images are square, so squashing and centre-cropping them give the same pixels: its
    (padded or resized) split is returned for either mode."""
    from vtp_core.data.folders import check_resize, resize_name
    from vtp_core.data.lazy import LazyImages

    check_resize(resize)
    if cfg.dataset == "fashion_mnist":
        return load_split(cfg, split)[0][np.asarray(idx)]
    ld = _folder(cfg, split)
    return LazyImages(ld.index, cfg.image_size, cfg.max_bad_fraction, np.asarray(ld.ids)[np.asarray(idx)],
                      resize=resize_name(resize, cfg.jpeg_decode, cfg.resample))


def take(data, idx):
    """data[idx] for arrays and lists; a lazy view for lazily read images/captions (nothing decoded)."""
    if hasattr(data, "subset"):
        return data.subset(idx)
    if isinstance(data, list):
        return [data[i] for i in idx]
    return data[idx]


def subset_indices(n_total: int, n: int, seed: int) -> np.ndarray:
    """First n (0 = all) of a fixed permutation of range(n_total): nested across n, deterministic in seed."""
    if n < 0 or n > n_total:
        raise StageError(f"subset size {n} not in [0, {n_total}]")
    perm = np.random.default_rng(seed).permutation(n_total)
    return perm[: n or n_total]


def load_train(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """The tokenizer's pre-training set: the nested subset (cfg.n_train, cfg.subset_seed) of 'train'."""
    imgs, labels = load_split(cfg, "train")
    idx = train_indices(cfg, len(imgs))
    return take(imgs, idx), labels[idx]


def train_indices(cfg: DataConfig, n_total: int) -> np.ndarray:
    """Sorted positions of the nested training subset. The whole split needs no permutation (the same result:
    a 277M-image permutation costs 2.2 GB and seconds per rank)."""
    if cfg.n_train in (0, n_total):
        return np.arange(n_total, dtype=np.int64)
    return np.sort(subset_indices(n_total, cfg.n_train, cfg.subset_seed))


def load_train_captions(cfg: DataConfig) -> list[str] | None:
    """Captions aligned with `load_train` (None for class-labelled data)."""
    caps = load_captions(cfg, "train")
    return None if caps is None else take(caps, train_indices(cfg, len(caps)))
