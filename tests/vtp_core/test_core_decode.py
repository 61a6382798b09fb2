"""Reduced-scale JPEG decoding (`DataConfig.jpeg_decode: draft`, `folders.draft`) against the full decode, and
the CPU budget that sizes the decode thread pool (`runtime.cpu_budget`).

The stated tolerance of draft vs full, in uint8 levels after ADM's centre crop, on photo-like JPEGs (q90,
300-600 px; 1024-1300 px for 256, as smaller ones are not drafted there). Where the picture is smooth the two
differ by rounding only, <= 2 levels: at 1/8 scale libjpeg outputs each 8x8 block's DC term, exactly the
block's mean (what three BOX halvings compute), and at 1/2 and 1/4 its reduced IDCT of the low frequencies is
the local mean wherever the block is smooth. At edges the filter shapes differ: DCT scaling keeps each block's
low frequencies (a sharper, block-local low-pass than a 2x2 box), and the one BOX halving plus BICUBIC that
follow smooth only part of that away, so an edge pixel can differ by a fraction (up to about 1/3) of the
edge's contrast. Measured over 200 such images (`bench.decode.photo`, seed 0; seed 1 within 0.05 of the
means):

    size   mean |diff|   worst image's mean   99th pct   99.9th pct   max
     32        1.51            2.68              13          32        74
     64        0.87            1.92               8          23        59
    256        0.71            0.95               3          18        69   (300-600 px images: identical)

`squash` (zero-shot) after draft differs about half as much (32 px: mean 0.76, max 45). TOLERANCE holds the
bounds the test checks on a smaller set, with margin. For scale: dropping ADM's BOX halvings (one BICUBIC
resize from full size, common elsewhere) differs from ADM by 2.65 (32 px) and 1.76 (64 px) on average.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bench.decode import photo
from vtp_core.data.folders import RESIZES, center_crop_arr, draft, resize_name

# size -> (mean |diff|, worst image's mean |diff|, 99th percentile, max), uint8 levels
TOLERANCE = {32: (2.0, 4.0, 18, 112), 64: (1.2, 3.0, 12, 96), 256: (1.0, 1.5, 5, 104)}


def _preprocess(data: bytes, size: int, name: str = "center_crop") -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return RESIZES[name](im, size)


def _diffs(images: list[bytes], size: int, resize: str = "center_crop") -> list[np.ndarray]:
    return [np.abs(_preprocess(b, size, resize).astype(int) - _preprocess(b, size, resize + "+draft")).ravel()
            for b in images]


@pytest.mark.parametrize("size", [32, 64, 256])
def test_draft_is_within_the_stated_tolerance_of_the_full_decode(size):
    rng = np.random.default_rng(1)
    lo, hi = (1024, 1300) if size == 256 else (300, 600)
    n = 8 if size == 256 else 40
    diffs = _diffs([photo(rng, *rng.integers(lo, hi + 1, 2)) for _ in range(n)], size)
    every = np.concatenate(diffs)
    got = (every.mean(), max(d.mean() for d in diffs), np.percentile(every, 99), every.max())
    bounds = TOLERANCE[size]
    assert all(g <= b for g, b in zip(got, bounds)), f"size {size}: (mean, worst mean, p99, max) {got} > {bounds}"
    assert got[0] > 0  # the images are large enough for draft to act at every size


def test_draft_of_smooth_content_differs_by_rounding_only():
    h, w = 480, 560
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 60], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    for size in (32, 64):
        assert _diffs([buf.getvalue()], size)[0].max() <= 2


def test_draft_squash_is_within_the_centre_crop_tolerance():
    rng = np.random.default_rng(2)
    every = np.concatenate(_diffs([photo(rng, *rng.integers(300, 601, 2)) for _ in range(16)], 32, "squash"))
    assert 0 < every.mean() <= TOLERANCE[32][0] and every.max() <= TOLERANCE[32][3]


def test_draft_geometry_is_the_box_halvings():
    """The drafted image has the size k BOX halvings give (floor(w/k)), also for sides not divisible by k;
    k is the largest of 1, 2, 4, 8 that keeps the short side (301) >= 2·size: 301 >= 4·size for k = 2."""
    data = photo(np.random.default_rng(3), 333, 301)
    for size, k in ((76, 1), (75, 2), (38, 2), (37, 4), (19, 4), (18, 8), (2, 8)):
        with Image.open(io.BytesIO(data)) as im:
            assert draft(im, size).size == (333 // k, 301 // k), (size, k)


def test_draft_is_a_no_op_for_png_small_jpegs_and_loaded_images():
    rng = np.random.default_rng(4)
    jpeg = photo(rng, 255, 300)  # short side 255 < 4·64: no halving may be skipped at 64
    with Image.open(io.BytesIO(jpeg)) as im:
        assert draft(im, 64) is im and im.size == (255, 300)
    assert np.array_equal(_preprocess(jpeg, 64), _preprocess(jpeg, 64, "center_crop+draft"))
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo(rng, 500, 400))).save(buf, "PNG")
    for name in ("center_crop", "squash"):
        assert np.array_equal(_preprocess(buf.getvalue(), 32, name), _preprocess(buf.getvalue(), 32, name + "+draft"))
    with Image.open(io.BytesIO(jpeg)) as im:
        im.load()
        assert draft(im, 16) is im and np.array_equal(center_crop_arr(im, 16), _preprocess(jpeg, 16))


def test_resize_name_and_the_data_path(tmp_path):
    """`DataConfig.jpeg_decode` reaches both storages: draft pixels, the same in memory and read lazily."""
    import dataclasses

    from vtp_core.data import load_split
    from vtp_core.runtime import StageError
    import small_configs as small

    assert resize_name("squash", "full") == "squash" and resize_name("center_crop", "draft") == "center_crop+draft"
    with pytest.raises(StageError, match="jpeg_decode: 'fast'; valid: full, draft"):
        resize_name("center_crop", "fast")
    rng = np.random.default_rng(5)
    images = [photo(rng, *rng.integers(300, 401, 2)) for _ in range(4)]
    for i, data in enumerate(images):
        (tmp_path / "train" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "train" / f"c{i % 2}" / f"{i}.jpg").write_bytes(data)
    cfg = small.data(dataset="imagefolder", path=str(tmp_path), image_size=32, storage="memory", jpeg_decode="draft")
    mem = load_split(cfg, "train")[0]
    lazy = np.asarray(load_split(dataclasses.replace(cfg, storage="lazy"), "train")[0])
    full = load_split(dataclasses.replace(cfg, jpeg_decode="full"), "train")[0]
    order = sorted(range(4), key=lambda i: (i % 2, str(i)))  # class folders, then file names
    assert np.array_equal(mem, lazy) and not np.array_equal(mem, full)
    assert np.array_equal(mem, np.stack([_preprocess(images[i], 32, "center_crop+draft+torch") for i in order]))
    pil = load_split(dataclasses.replace(cfg, resample="pil"), "train")[0]  # bit for bit ADM's center_crop_arr
    assert np.array_equal(pil, np.stack([_preprocess(images[i], 32, "center_crop+draft") for i in order]))
    assert resize_name("squash", "draft", "torch") == "squash+draft+torch"
    with pytest.raises(StageError, match="resample: 'cv2'; valid: torch, pil"):
        resize_name("center_crop", "full", "cv2")


@pytest.mark.parametrize("name", ["center_crop", "squash", "center_crop+draft"])
def test_torch_resample_is_pils_filter_up_to_rounding(name):
    """`DataConfig.resample: torch` against PIL on the same decoded pixels. Both run the same separable filter
    (antialiased bicubic a = -0.5, or triangle for squash) with fixed-point coefficients and round to uint8
    after each of the two 1-D passes, so a pixel can differ by at most one level per pass: <= 2. Most pixels
    round the same way: the mean difference is a small fraction of a level (measured ~0.04 on photo-like
    JPEGs; bound 0.25, a quarter of the smallest difference that is not rounding)."""
    rng = np.random.default_rng(2)
    images = [photo(rng, *rng.integers(200, 1100, 2)) for _ in range(12)]
    for size in (32, 64, 256):
        d = np.concatenate([np.abs(_preprocess(b, size, name).astype(int) - _preprocess(b, size, name + "+torch")).ravel()
                            for b in images])
        assert d.max() <= 2 and d.mean() < 0.25, (name, size, d.max(), d.mean())


def test_cpu_budget_follows_the_allocation_not_the_node(monkeypatch):
    import os

    from vtp_core import runtime

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    assert runtime.cpu_budget() == 6  # the affinity mask, not the node's 128
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert runtime.cpu_budget() == 4  # the job's share, where Slurm does not pin CPUs
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "16")
    assert runtime.cpu_budget() == 6  # pinned to fewer than the job's share: the pinning binds
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "")
    assert runtime.cpu_budget() == 6  # unset or malformed: ignored

    def no_affinity(pid):
        raise AttributeError("sched_getaffinity")

    monkeypatch.setattr(os, "sched_getaffinity", no_affinity)
    assert runtime.cpu_budget() == 128
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    assert runtime.cpu_budget() == 8
