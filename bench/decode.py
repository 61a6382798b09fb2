"""JPEG decode + ADM centre crop, `DataConfig.jpeg_decode: draft` against `full`, on one thread, in the same run.

The images are photo-like JPEGs (`photo`: gradients, sharp shapes, noise; quality 90), 300-600 px like
ImageNet's, and larger ones where draft can act at 256 px (short side >= 1024). Each row times the same
encoded bytes both ways, each image decoded both ways back to back (the order flipped every image and
round) over several rounds, so machine drift hits both alike. Draft's pixels stay within the tolerance that
tests/vtp_core/test_core_decode.py states; this says what it buys."""
from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROUNDS = 3


def photo(rng: np.random.Generator, w: int, h: int, quality: int = 90) -> bytes:
    """A photo-like JPEG: smooth colour gradients and waves, a few sharp filled shapes, a slight blur, noise."""
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    c = rng.uniform(-1, 1, (3, 6)) * [80, 80, 80, 40, 3, 3] + [128, 0, 0, 0, 0, 0]
    arr = np.stack([a + b * x + d * y + e * np.sin(2 * np.pi * (f * x + g * y)) for a, b, d, e, f, g in c], -1)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 9)):
        x0, y0, r = rng.integers(0, w), rng.integers(0, h), rng.integers(10, max(w, h) // 3)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x0 - r, y0 - r // 2, x0 + r, y0 + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(1.0))) + rng.normal(0, 6, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _row(images: list[bytes], size: int, what: str) -> dict:
    """Images per second through `folders.RESIZES` (decode from bytes, resize, crop), full and draft."""
    from vtp_core.data.folders import RESIZES

    names = ("center_crop", "center_crop+draft")
    seconds = dict.fromkeys(names, 0.0)
    for r in range(ROUNDS):
        for i, data in enumerate(images):
            for name in (names if (i + r) % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                with Image.open(io.BytesIO(data)) as im:
                    RESIZES[name](im, size)
                seconds[name] += time.perf_counter() - t0
    full, draft = (ROUNDS * len(images) / seconds[n] for n in names)
    return {"bench": f"decode + centre crop to {size} px, draft vs full ({len(images)} JPEGs q90 {what}, one thread)",
            "value": f"{draft:.0f} img/s", "reference": f"full {full:.0f} img/s", "ratio": f"{draft / full:.2f}x",
            "ok": draft >= 0.95 * full}


def run() -> list[dict]:
    rng = np.random.default_rng(0)
    common = [photo(rng, *rng.integers(300, 601, 2)) for _ in range(200)]
    large = [photo(rng, *rng.integers(1024, 1301, 2)) for _ in range(40)]
    return [_row(common, 256, "300-600 px"), _row(common, 64, "300-600 px"), _row(common, 32, "300-600 px"),
            _row(large, 256, "1024-1300 px")]


if __name__ == "__main__":
    for row in run():
        print(row)
