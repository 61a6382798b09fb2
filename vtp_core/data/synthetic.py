"""Generated image data in the layouts a study reads: webdataset tar shards with captions, and ImageFolder
trees with class folders. For rehearsals, tests and benchmarks on machines without ImageNet or DataComp.

Each image is a class's shape in the class's colour on a noisy background, at a random position and size,
saved as JPEG (quality 90) at a size larger than a study's training size (so the ADM crop path resizes).
Captions say what is drawn ("a red circle on a noisy background"); everything is a function of the seed.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
           "purple": (150, 60, 190), "orange": (240, 140, 30)}


def class_names(n: int) -> list[str]:
    """`n` distinct class names 'colour shape' (at most len(COLOURS) * len(SHAPES))."""
    names = [f"{c} {s}" for s in SHAPES for c in COLOURS]
    if n > len(names):
        raise ValueError(f"at most {len(names)} synthetic classes, asked for {n}")
    return names[:n]


def draw(label: int, rng: np.random.Generator, size: tuple[int, int] = (80, 72)) -> Image.Image:
    """One image of class `label` (w, h = size)."""
    w, h = size
    colour_name, shape = class_names(label + 1)[label].split(" ")
    base = rng.integers(60, 200, 3)
    noise = rng.normal(0, 25, (h, w, 3))
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    r = int(rng.uniform(0.2, 0.4) * min(w, h))
    cx, cy = int(rng.uniform(r, w - r)), int(rng.uniform(r, h - r))
    fill = COLOURS[colour_name]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:
        d.rectangle([cx - r, cy - r // 3, cx + r, cy + r // 3], fill=fill)
        d.rectangle([cx - r // 3, cy - r, cx + r // 3, cy + r], fill=fill)
    return img


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def caption(label: int, rng: np.random.Generator) -> str:
    name = class_names(label + 1)[label]
    return str(rng.choice([f"a {name} on a noisy background", f"a photo of a {name}", f"{name}, centred",
                           f"a small picture showing a {name}"]))


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tf.addfile(info, io.BytesIO(data))


def write_tar_shards(root: str | Path, n_images: int, n_shards: int, n_classes: int = 10, seed: int = 0,
                     size: tuple[int, int] = (80, 72), captions: str = "txt", with_cls: bool = False) -> str:
    """`n_images` image-caption pairs in `n_shards` uncompressed tar shards under `root`; returns the shard
    pattern (`root/{00000..0000k}.tar`). `captions`: 'txt' files, 'json' files ({"caption": ...}) or 'none'."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = -(-n_images // n_shards)
    for s in range(n_shards):
        with tarfile.open(root / f"{s:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
            for i in range(s * per, min(n_images, (s + 1) * per)):
                label = int(rng.integers(n_classes))
                key = f"{s:05d}{i:07d}"
                _add(tf, f"{key}.jpg", jpeg(draw(label, rng, size)))
                if captions == "txt":
                    _add(tf, f"{key}.txt", caption(label, rng).encode())
                elif captions == "json":
                    _add(tf, f"{key}.json", json.dumps({"caption": caption(label, rng)}).encode())
                if with_cls:
                    _add(tf, f"{key}.cls", class_names(n_classes)[label].replace(" ", "_").encode())
    return str(root / f"{{00000..{n_shards - 1:05d}}}.tar")


def write_imagefolder(root: str | Path, per_class: dict[str, int], n_classes: int = 10, seed: int = 0,
                      size: tuple[int, int] = (80, 72)) -> str:
    """An ImageFolder tree `root/<split>/<class>/<i>.jpg` with `per_class[split]` images per class; returns root.
    Class folder names are 'colour_shape' (their readable names: 'colour shape')."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = class_names(n_classes)
    for split, n in per_class.items():
        for label, name in enumerate(names):
            d = root / split / name.replace(" ", "_")
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (d / f"{i:05d}.jpg").write_bytes(jpeg(draw(label, rng, size)))
    return str(root)
