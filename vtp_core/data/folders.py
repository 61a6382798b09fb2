"""User-supplied image-text data: an ImageFolder tree or webdataset-style tar shards, per split.

Layout: `<DataConfig.path>/<split>/` ('test' may also be called 'val') holding either class folders
(`<class>/<name>.<img ext>`) or `*.tar` shards whose members are grouped by key (`<key>.<img ext>`,
`<key>.txt` / `<key>.json` caption, optional `<key>.cls` label). Extensions are case-insensitive.
A caption comes from the `.txt` (or `.json` "caption"/"text") next to the image, else from the class
template. Where the bytes lie comes from a cached byte-range index (`data/index.py`). Here a split is
decoded once, centre-cropped and resized to `image_size` (ADM `center_crop_arr`) and kept in memory
as uint8 NHWC, like Fashion-MNIST (the laptop/small-cluster path; `data/lazy.py` is the other).
The one other preprocessing is `squash_arr` (the whole image resized to a square, no crop): VTP's
zero-shot protocol (docs/protocol.md#zero-shot) uses it, the linear probe and rFID use the centre crop.
Either may follow a reduced-scale JPEG decode (`DataConfig.jpeg_decode: draft`, `draft`): a declared, versioned
approximation of the full decode, faster where the image is much larger than `image_size`.
Unreadable images are replaced by the next readable one (i+1, i+2, ..., wrapping), as `data/lazy.py`
does, so `storage: memory` and `storage: lazy` give the same image, label and caption at every position;
a caption file that cannot be read or decoded is replaced by the class template. Both are counted and
logged by path, and more than `max_bad_fraction` of the images stops the stage.
`DataConfig.checksum`, when set, must equal the sha256 of the (name, size) manifest.
"""
from __future__ import annotations

import functools
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vtp_core.config import DECODES, RESAMPLES, DataConfig
from vtp_core.data.index import DataIndex, UnreadableCaption, load_index
from vtp_core.runtime import StageError, cpu_budget

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


def _resized(img: Image.Image, size: tuple[int, int], filt: int, resample: str) -> np.ndarray:
    """`img` resized to `size` (w, h) with PIL's antialiased `filt` (BICUBIC or BILINEAR), as uint8 HWC.

    resample 'pil' is PIL's own kernel. 'torch' is the same filter (PIL's a = -0.5 cubic / triangle, widened by
    the scale when shrinking) in torch's uint8 antialiased `interpolate` kernel, ~2.8x faster on one core at
    300-600 -> 256 px; the two differ only in fixed-point rounding: at most 1 level per 1-D pass, on a small share of the
    pixels (tests/vtp_core/test_core_decode.py)."""
    if resample == "pil":
        return np.asarray(img.resize(size, resample=filt))
    mode = {Image.BICUBIC: "bicubic", Image.BILINEAR: "bilinear"}[filt]
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None]  # channels-last uint8: torch's vectorised path
    out = F.interpolate(t, size=(size[1], size[0]), mode=mode, antialias=True)
    return out[0].permute(1, 2, 0).numpy()


def center_crop_arr(img: Image.Image, size: int, resample: str = "pil") -> np.ndarray:
    """ADM preprocessing: BOX-halve while the short side >= 2·size, BICUBIC resize, centre crop."""
    img = img.convert("RGB")
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    arr = _resized(img, tuple(round(x * scale) for x in img.size), Image.BICUBIC, resample)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[top:top + size, left:left + size])


def squash_arr(img: Image.Image, size: int, resample: str = "pil") -> np.ndarray:
    """VTP zero-shot preprocessing, torchvision `Resize((size, size))` on a PIL image: the whole image
    resized to a square (aspect ratio NOT kept, no crop) with PIL BILINEAR, which is what torchvision
    calls for PIL inputs (PIL's resize is antialiased). No BOX pre-halving, so the pixels are the same."""
    return np.ascontiguousarray(_resized(img.convert("RGB"), (size, size), Image.BILINEAR, resample))


def draft(img: Image.Image, size: int) -> Image.Image:
    """`img` (opened, not yet loaded) as if `center_crop_arr` had BOX-halved it n = 1, 2 or 3 times: a JPEG
    decoded at 1/2^n scale by libjpeg (DCT scaling, PIL `draft`), n the most halvings that keep the short side
    >= 2·size, so at least one BOX halving still runs on decoded pixels (it smooths most of the difference).
    libjpeg's output is ceil(w/2^n) wide; it is resampled onto the floor(w/2^n) grid over exactly the original
    extent, the grid the halvings give, so the later resize and crop see the same geometry (`squash_arr` then
    resizes it as it would the whole image). Not a JPEG, already loaded, or short side < 4·size: `img` itself.

    It is an approximation: DCT scaling keeps each 8x8 block's low frequencies instead of averaging pixels, so
    edges come out a little sharper than the BOX chain's; tests/vtp_core/test_core_decode.py states and checks
    the tolerance against the full decode."""
    w, h = img.size
    k = 1
    while k < 8 and min(w, h) >= 4 * k * size:  # k = 2^n: one more halving still leaves short side >= 2·size
        k *= 2
    got = img.draft(img.mode, (w // k, h // k)) if k > 1 else None
    if got is None:
        return img
    _, box = got  # the original extent in decoded pixels: (0, 0, w/k, h/k)
    k = round(w / box[2])  # the scale PIL chose for that request (k), read back rather than assumed
    return img.resize((w // k, h // k), Image.BOX, box=box)


def _preprocess(resize, drafted: bool, resample: str):
    def preprocess(img: Image.Image, size: int) -> np.ndarray:
        return resize(draft(img, size) if drafted else img, size, resample)
    return preprocess


# name -> preprocessing: '<resize>[+draft][+torch]' (`resize_name`): '+draft' decodes large JPEGs at reduced
# scale first, '+torch' resamples with torch's kernel instead of PIL's
RESIZES = {f"{name}{'+draft' * drafted}{'+torch' * (resample == 'torch')}": _preprocess(fn, drafted, resample)
           for name, fn in {"center_crop": center_crop_arr, "squash": squash_arr}.items()
           for drafted in (False, True) for resample in sorted(RESAMPLES)}


def resize_name(resize: str, decode: str, resample: str = "pil") -> str:
    """The `RESIZES` name of `resize` ('center_crop' | 'squash') after `DataConfig.jpeg_decode` ('full' | 'draft')
    with `DataConfig.resample` ('pil' | 'torch'): one string, so every reader of a resize name (`decode_many`,
    `lazy.LazyImages`) carries the decode and the resampler too."""
    if decode not in DECODES:
        raise StageError(f"jpeg_decode: '{decode}'; valid: {', '.join(DECODES)}")
    if resample not in RESAMPLES:
        raise StageError(f"resample: '{resample}'; valid: {', '.join(RESAMPLES)}")
    return resize + ("+draft" if decode == "draft" else "") + ("+torch" if resample == "torch" else "")


def check_resize(resize: str, where: str = "resize") -> None:
    if resize not in RESIZES:
        raise StageError(f"{where}: '{resize}'; valid: {', '.join(RESIZES)}")


def decode(index: DataIndex, i: int, size: int, resize: str = "center_crop") -> np.ndarray:
    """Image i of the index as uint8 (size, size, 3), preprocessed by `resize` ('center_crop' = ADM
    `center_crop_arr`, 'squash' = `squash_arr`, either with '+draft': `draft` first); raises on unreadable
    bytes."""
    return decode_bytes(index.image_bytes(i), size, resize)


DECODE_GROUP = 1024  # images whose bytes are read (in runs) before they are decoded


def decode_bytes(data: bytes, size: int, resize: str = "center_crop") -> np.ndarray:
    """`decode` of an image's bytes already read."""
    with Image.open(io.BytesIO(data)) as im:
        return RESIZES[resize](im, size)


def decode_many(index: DataIndex, ids, size: int, resize: str = "center_crop") -> list[np.ndarray | Exception]:
    """Decode several images: their bytes read in runs of neighbouring members (`DataIndex.image_bytes_many`),
    then decoded on a thread pool (PIL releases the GIL while decoding and resizing) of one thread per CPU this
    process may use (`runtime.cpu_budget`), at most 16. An unreadable image is returned as its exception."""
    check_resize(resize)  # up front: inside `one` a bad name would read as "unreadable image"

    def one(data):
        if isinstance(data, Exception):
            return data
        try:
            return decode_bytes(data, size, resize)
        except Exception as exc:  # noqa: BLE001 - any decode failure means "unreadable image"
            return exc

    ids = [int(i) for i in ids]
    out: list[np.ndarray | Exception] = []
    for a in range(0, len(ids), DECODE_GROUP):  # bounded bytes in flight (a whole split may be asked for)
        blobs = index.image_bytes_many(ids[a:a + DECODE_GROUP])
        out += [one(b) for b in blobs] if len(blobs) < 8 else list(_pool().map(one, blobs))
    return out


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(min(16, cpu_budget()), thread_name_prefix="decode")


def load_folder_split(cfg: DataConfig, split: str, index: DataIndex | None = None) -> Loaded:
    """Every image of the split decoded into memory. An unreadable image i is replaced by the next readable
    one (i+1, i+2, ..., wrapping: the rule of `lazy.LazyImages`), counted and logged by path; position i
    keeps its own label and caption (as with lazy storage), so the storage changes no number."""
    index = index or load_index(cfg.path, cfg.dataset, split)
    total = len(index)
    if total == 0:
        raise StageError(f"DataConfig.path: no images under {index.root}")
    decoded = decode_many(index, range(total), cfg.image_size, resize_name("center_crop", cfg.jpeg_decode, cfg.resample))
    bad = []
    for i, img in enumerate(decoded):
        if isinstance(img, Exception):
            bad.append(index.source(i))
            log.warning("data: unreadable image %s replaced by the next readable one (%s)", bad[-1],
                        type(img).__name__)
    labels = np.asarray(index.label).astype(np.int64)
    captions = []
    for i in range(total):
        cap, err = read_caption(index, i)
        captions.append(cap)
        if err:
            bad.append(err.source)
            log.warning("data: unreadable caption %s: the class template stands in", err)
    check_bad_fraction(bad, total, cfg.max_bad_fraction, index.root)
    if len(decoded) and all(isinstance(img, Exception) for img in decoded):
        raise StageError(f"{index.root}: no readable image at all")
    check_manifest(cfg)
    ids = np.empty(total, dtype=np.int64)  # the next readable position at or after i, wrapping
    nxt = -1
    for j in range(2 * total - 1, -1, -1):
        if not isinstance(decoded[j % total], Exception):
            nxt = j % total
        if j < total:
            ids[j] = nxt
    if bad:
        log.warning("data: %d unreadable images or captions among the %d under %s; each image replaced by the "
                    "next readable one, each caption by the class template", len(bad), total, index.root)
    images = np.ascontiguousarray(np.stack([decoded[j] for j in ids]))
    return Loaded(images, labels, captions, index.class_names, bad, index.manifest_sha256, index, ids)


def check_bad_fraction(bad: list[str], total: int, max_fraction: float, where, count: int | None = None) -> None:
    """StageError when more than `max_fraction` of `total` images had an unreadable image or caption file.
    `bad`: their paths (or the first of them, when `count` gives how many there are)."""
    count = len(bad) if count is None else count
    if total and count / total > max_fraction:
        raise StageError(f"{where}: {count}/{total} unreadable images or captions exceed max_bad_fraction="
                         f"{max_fraction} (first: {', '.join(bad[:5])})")


def read_caption(index: DataIndex, i: int) -> tuple[str, UnreadableCaption | None]:
    """Image i's caption (`default_caption`: the file's, else the class template), and the error when its caption
    file exists but cannot be read or decoded (the template then stands in; the caller counts and logs it)."""
    try:
        cap, err = index.caption(i), None
    except UnreadableCaption as exc:
        cap, err = None, exc
    return default_caption(cap, int(index.label[i]), index.class_names), err


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
