"""User-supplied image-text data: an ImageFolder tree or webdataset-style tar shards, per split.

Layout: `<DataConfig.path>/<split>/` ('test' may also be called 'val') holding either class folders
(`<class>/<name>.<img ext>`) or `*.tar` shards whose members are grouped by key (`<key>.<img ext>`,
`<key>.txt` / `<key>.json` caption, optional `<key>.cls` label). Extensions are case-insensitive.
A caption comes from the `.txt` (or `.json` "caption"/"text") next to the image, else from the class
template. Images are decoded once, centre-cropped and resized to `image_size` (ADM `center_crop_arr`)
and kept in memory as uint8 NHWC, like Fashion-MNIST: this is the laptop/small-cluster path.
Unreadable images are skipped, counted and logged by path; more than `max_bad_fraction` stops the
stage. `DataConfig.checksum`, when set, must equal the sha256 of the (path, size) manifest.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vtp_core.config import DataConfig
from vtp_core.runtime import StageError

IMG_EXT = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
log = logging.getLogger("vtp.data")


@dataclass
class Loaded:
    images: np.ndarray  # uint8 (N,S,S,3)
    labels: np.ndarray  # int64 (N,), -1 when unknown
    captions: list[str]
    class_names: tuple[str, ...]
    bad: list[str]
    manifest_sha256: str


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


def _caption_from(data: bytes, ext: str) -> str | None:
    text = data.decode("utf-8", errors="replace")
    if ext == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return None
        text = obj.get("caption") or obj.get("text") or "" if isinstance(obj, dict) else ""
    return text.strip() or None


def split_dir(cfg: DataConfig, split: str) -> Path:
    root = Path(cfg.path)
    if not cfg.path:
        raise StageError(f"DataConfig.path: required for dataset '{cfg.dataset}'")
    names = [split] + (["val"] if split == "test" else [])
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise StageError(f"DataConfig.path: {root} has no '{'/'.join(names)}' folder for split '{split}'")


def _records_imagefolder(d: Path):
    """(source id, image bytes loader, class name, caption or None) per image, sorted."""
    classes = sorted(p.name for p in d.iterdir() if p.is_dir())
    for cls in classes:
        for f in sorted((d / cls).iterdir()):
            if f.suffix.lower() not in IMG_EXT:
                continue
            cap = None
            for side in sorted(f.parent.glob(f"{f.stem}.*")):
                if side.suffix.lower() in (".txt", ".json"):
                    cap = _caption_from(side.read_bytes(), side.suffix.lower())
                    break
            yield str(f), f.read_bytes, cls, cap, f.stat().st_size


def _records_tar(d: Path):
    for shard in sorted(p for p in d.iterdir() if p.suffix.lower() == ".tar"):
        with tarfile.open(shard) as tf:
            groups: dict[str, dict[str, tarfile.TarInfo]] = {}
            for m in tf.getmembers():
                if m.isfile():
                    key, dot, ext = m.name.rpartition(".")
                    if dot:
                        groups.setdefault(key, {})["." + ext.lower()] = m
            for key in sorted(groups):
                g = groups[key]
                img = next((m for e, m in g.items() if e in IMG_EXT), None)
                if img is None:
                    continue
                cap = None
                for e in (".txt", ".json"):
                    if e in g:
                        cap = _caption_from(tf.extractfile(g[e]).read(), e)
                        break
                cls = tf.extractfile(g[".cls"]).read().decode().strip() if ".cls" in g else ""
                data = tf.extractfile(img).read()
                yield f"{shard}:{img.name}", (lambda b=data: b), cls, cap, img.size


def load_folder_split(cfg: DataConfig, split: str) -> Loaded:
    d = split_dir(cfg, split)
    records = _records_tar(d) if cfg.dataset == "tar" else _records_imagefolder(d)
    images, classes, caps, bad, manifest = [], [], [], [], hashlib.sha256()
    for src, read, cls, cap, size in records:
        manifest.update(f"{Path(src).name if cfg.dataset != 'tar' else src.split(':')[-1]}\t{size}\n".encode())
        try:
            with Image.open(io.BytesIO(read())) as im:
                images.append(center_crop_arr(im, cfg.image_size))
        except Exception as exc:  # noqa: BLE001 - any decode failure means "unreadable image"
            bad.append(src)
            log.warning("data: skipping unreadable image %s (%s)", src, type(exc).__name__)
            continue
        classes.append(cls)
        caps.append(cap)
    total = len(images) + len(bad)
    if total == 0:
        raise StageError(f"DataConfig.path: no images under {d}")
    if len(bad) / total > cfg.max_bad_fraction:
        raise StageError(f"{d}: {len(bad)}/{total} unreadable images exceed max_bad_fraction={cfg.max_bad_fraction} "
                         f"(first: {bad[0]})")
    sha = manifest.hexdigest()
    if cfg.checksum and cfg.checksum != sha:
        raise StageError(f"DataConfig.checksum: {d} manifest sha256 is {sha}, config says '{cfg.checksum}'")
    names = tuple(sorted({c for c in classes if c}))
    labels = np.array([names.index(c) if c else -1 for c in classes], dtype=np.int64)
    from vtp_core.data.captions import caption as template_caption

    captions = [c if c else (template_caption(int(lab), 0, names) if lab >= 0 else "a photo.")
                for c, lab in zip(caps, labels)]
    if bad:
        log.warning("data: %d of %d images under %s unreadable and skipped", len(bad), total, d)
    return Loaded(np.ascontiguousarray(np.stack(images)), labels, captions, names, bad, sha)
