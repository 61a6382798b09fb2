"""Data loader: the trainer's step batches from tar shards against torchvision's ImageFolder + DataLoader,
images/s at 1 and 2 worker processes, both timed in the same run; and the CPU cores one H100 needs.

Data: photo-like JPEGs (`bench.decode.photo`, 300-600 px, quality 90; 5,000 by default,
`VTP_BENCH_LOADER_IMAGES` to change it), generated once under `$VTP_CACHE/bench-loader/<key>/` (the key
hashes the parameters) as webdataset-style tar shards (`<key>.jpg` + `<key>.txt` caption, 10 shards) and,
byte for byte the same JPEGs, as an ImageFolder tree (10 class folders).

Ours: `vtp_core.loader.WorkerBatches` over `StepBatches`, as `pretrain` builds it for a `tar` dataset read
lazily (byte-range index, reads in runs of neighbouring members, ADM centre crop), with recipe `ae` and
rec_fraction 1: a step draws B images and decodes each once, into a uint8 (B, 256, 256, 3) batch, timed as
the workers deliver it (`WorkerBatches.host`): the trainer normalizes it to [-1, 1] on the GPU after the copy
(`batches.finish_batch`, as timm's PrefetchLoader), so that pass costs the loader's CPUs nothing. Its defaults:
full JPEG decode, and the resize by torch's uint8 antialiased bicubic kernel (`DataConfig.resample: torch`,
PIL's filter within 2 levels; `resample: pil` is PIL's own kernel).
Reference: torchvision `ImageFolder` with Resize(256, BICUBIC), CenterCrop(256), ToTensor, Normalize to
[-1, 1], and `DataLoader(batch_size=B, shuffle=True)` (seeded), the same workers and prefetch factor. So
both sides read the same JPEGs and decode them with the same Pillow; the differences are where the time goes:
Pillow's bicubic resize is most of the reference's time per image and torch's kernel for the same filter takes
about a third of it, and the reference normalizes to float in its workers (4x the bytes to move) where ours
leaves that to the GPU.

Per core: for w workers the bench process is pinned to w CPUs before each loader starts, and each worker of
either side to one of them (ours does it itself, `loader._init_worker`; the reference through `pin_worker`), so
images/s / w is images/s per core. Each measurement starts a fresh loader, takes one batch per worker untimed
(worker start, the first round of work), then times the arrival of the next `steps` batches. Ours and the
reference alternate over rounds (`dit_eval.bench.alternate`: order flipped each round); rows report medians.
Target: ours >= 1.5x the reference per core.

Cores to feed one H100: the default (ViT-L `clip_ssl_ae`) step's FLOPs from the counter
(`sweeps.costs.tokenizer_step_flops`, cached on disk) over its images per step, at 40 % MFU of 989 TFLOP/s,
divided by ours' images/s per core: for the decode+crop batch above and for the full `clip_ssl_ae` batch
(captions read and tokenized, SSL views and iBOT masks on a quarter of the images), which is timed at one
worker in each round without a reference (torchvision has no counterpart to compare with).

    python -m bench bench.loader
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import statistics
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

GEN_VERSION = 1
N_SHARDS = 10
N_CLASSES = 10
TARGET = 1.5  # ours / reference per core
MFU = 0.40


@dataclasses.dataclass(frozen=True)
class Spec:
    """What one run measures. The defaults are `make bench`'s; the test runs a tiny one."""

    n_images: int = 5000
    sides: tuple[int, int] = (300, 600)  # image width and height, each uniform in this range
    quality: int = 90
    image_size: int = 256
    batch: int = 64
    steps: int = 40  # timed batches per measurement, after one untimed batch per worker
    rounds: int = 3
    workers: tuple[int, ...] = (1, 2)
    full_recipe: bool = True  # also time ours on the full clip_ssl_ae batch (1 worker, each round)
    seed: int = 0


# ------------------------------------------------------------------------------------------ the data
def _cache_root() -> Path:
    return Path(os.environ.get("VTP_CACHE", Path.home() / ".cache" / "vtp-scaling")) / "bench-loader"


def _write_shard(root: str, shard: int, ids: list[int], sides: tuple[int, int], quality: int, seed: int) -> int:
    """Shard `shard` (`<key>.jpg` + `<key>.txt` per image) and the same JPEGs under folder/train/c<i % 10>/."""
    import io

    from bench.decode import photo

    rng = np.random.default_rng([seed, shard])
    nbytes = 0
    with tarfile.open(Path(root) / "shards" / f"{shard:05d}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for i in ids:
            w, h = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
            jpg = photo(rng, w, h, quality)
            (Path(root) / "folder" / "train" / f"c{i % N_CLASSES}" / f"{i:06d}.jpg").write_bytes(jpg)
            for ext, data in ((".jpg", jpg), (".txt", f"a generated photo of shapes, number {i}".encode())):
                info = tarfile.TarInfo(f"{i:06d}{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            nbytes += len(jpg)
    return nbytes


def generate(spec: Spec) -> tuple[str, Path, dict]:
    """(shard pattern, ImageFolder root, info) of the data of `spec`, generated on first use and cached."""
    from vtp_core.runtime import cpu_budget

    params = [GEN_VERSION, spec.n_images, list(spec.sides), spec.quality, N_SHARDS, spec.seed]
    key = hashlib.sha256(json.dumps(params).encode()).hexdigest()[:16]
    final = _cache_root() / key
    n_shards = min(N_SHARDS, spec.n_images)
    pattern = str(final / "shards" / f"{{00000..{n_shards - 1:05d}}}.tar")
    if not (final / "info.json").is_file():
        tmp = final.with_name(f"{key}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "shards").mkdir(parents=True)
        for c in range(N_CLASSES):
            (tmp / "folder" / "train" / f"c{c}").mkdir(parents=True)
        per = -(-spec.n_images // n_shards)
        t0 = time.perf_counter()
        with ProcessPoolExecutor(min(cpu_budget(), n_shards)) as pool:
            futs = [pool.submit(_write_shard, str(tmp), s, list(range(s * per, min(spec.n_images, (s + 1) * per))),
                                spec.sides, spec.quality, spec.seed) for s in range(n_shards)]
            nbytes = sum(f.result() for f in futs)
        info = {"params": params, "jpeg_bytes": nbytes, "seconds": time.perf_counter() - t0}
        (tmp / "info.json").write_text(json.dumps(info))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    info = json.loads((final / "info.json").read_text())
    for p in sorted(final.rglob("*")):  # into the page cache, so neither side's first round reads the disk
        if p.is_file():
            p.read_bytes()
    return pattern, final / "folder" / "train", info


# ------------------------------------------------------------------------------------------ timing
@contextlib.contextmanager
def pinned(n: int):
    """This thread (and the worker processes it forks) on its first `n` CPUs."""
    try:
        saved = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # no affinity API: unpinned
        yield
        return
    os.sched_setaffinity(0, sorted(saved)[:n])
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


def _timed(batches, warm: int, steps: int, count) -> tuple[float, int]:
    """Seconds for `steps` batches after `warm` untimed ones, and the images in the timed batches."""
    for _ in range(warm):
        next(batches)
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        n += count(next(batches))
    return time.perf_counter() - t0, n


def _ours_cfg(pattern: str, spec: Spec, recipe: str, seed: int, workers: int):
    from vtp_core.config import DataConfig, TokenizerConfig

    data = DataConfig(dataset="tar", path=pattern, image_size=spec.image_size, storage="lazy")
    fractions = {"rec_fraction": 1.0} if recipe == "ae" else {}  # ae: the rec batch is the whole draw
    return TokenizerConfig(recipe=recipe, batch_size=spec.batch, steps=workers + spec.steps, seed=seed, data=data,
                           rec_loss="l1", num_workers=workers, **fractions)


def ours(pattern: str, spec: Spec, workers: int, seed: int, recipe: str = "ae") -> tuple[float, int]:
    """(seconds, images) of `spec.steps` step batches from `WorkerBatches` with `workers` processes."""
    import torch

    from vtp_core.batches import caption_source
    from vtp_core.config import RECIPES
    from vtp_core.data import load_train
    from vtp_core.loader import StepBatches, WorkerBatches
    from vtp_core.objectives import OBJECTIVES
    from vtp_core.tokenizer import text_size

    cfg = _ours_cfg(pattern, spec, recipe, seed, workers)
    images, labels = load_train(cfg.data)
    lam_clip, lam_ssl = RECIPES[recipe]
    active = tuple(o for o in OBJECTIVES if o == "rec" or (o == "clip" and lam_clip) or (o == "ssl" and lam_ssl))
    captions = caption_source(cfg.data, text_size(cfg).context_length) if lam_clip else None
    loader = WorkerBatches(StepBatches(cfg, images, labels, active, captions), 0, cfg.steps, workers,
                           torch.device("cpu"))
    try:
        return _timed((loader.host(s) for s in range(cfg.steps)), workers, spec.steps, _drawn)
    finally:
        loader.close()


def _drawn(batch: dict) -> int:
    """Images a step batch drew: the CLIP batch when there is one, else the rec batch (each decoded once)."""
    return batch["clip_images" if "clip_images" in batch else "rec_images"].shape[0]


def reference_dataset(folder: Path, size: int):
    """torchvision's ImageFolder with the standard resize-crop-normalise, to float in [-1, 1]."""
    from torchvision import datasets
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    return datasets.ImageFolder(str(folder), transform=tf)


def pin_worker(worker_id: int) -> None:
    """The reference's workers placed as ours are (`vtp_core.loader._init_worker`): one CPU each, round robin."""
    from torch.utils.data import get_worker_info

    with contextlib.suppress(AttributeError, OSError):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(cpus[worker_id::get_worker_info().num_workers]) or {cpus[worker_id % len(cpus)]})


def reference(dataset, spec: Spec, workers: int, seed: int, pin: bool = True) -> tuple[float, int]:
    """(seconds, images) of `spec.steps` batches from a torch DataLoader over `dataset` with `workers` processes,
    each pinned to its own CPU like ours (`pin`; torch leaves them unpinned)."""
    import torch
    from torch.utils.data import DataLoader

    dl = DataLoader(dataset, batch_size=spec.batch, shuffle=True, generator=torch.Generator().manual_seed(seed),
                    num_workers=workers, prefetch_factor=2, drop_last=True, worker_init_fn=pin_worker if pin else None)
    it = iter(dl)
    try:
        return _timed(it, workers, spec.steps, lambda b: b[0].shape[0])
    finally:
        it._shutdown_workers()


def gpu_feed(cfg=None) -> dict:
    """Images/s one H100 consumes at `cfg`'s step (default: the method's ViT-L clip_ssl_ae) and 40 % MFU."""
    from bench.peaks import PEAK_BF16_TFLOPS
    from sweeps.costs import tokenizer_step_flops
    from vtp_core.batches import images_per_step
    from vtp_core.config import TokenizerConfig

    cfg = cfg or TokenizerConfig()
    t0 = time.perf_counter()
    step = tokenizer_step_flops(cfg)
    seconds = time.perf_counter() - t0
    per_image = step / images_per_step(cfg)
    peak = PEAK_BF16_TFLOPS["H100"] * 1e12
    return {"step_flops": step, "images_per_step": images_per_step(cfg), "flops_per_image": per_image,
            "peak": peak, "images_per_s": MFU * peak / per_image, "count_seconds": seconds, "cfg": cfg}


# ------------------------------------------------------------------------------------------ rows
def run(spec: Spec | None = None, gpu_cfg=None) -> list[dict]:
    from dit_eval.bench import alternate

    spec = spec or Spec(n_images=int(os.environ.get("VTP_BENCH_LOADER_IMAGES", Spec.n_images)))
    try:
        n_cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n_cpus = os.cpu_count() or 1
    workers = [w for w in spec.workers if w <= n_cpus]
    pattern, folder, info = generate(spec)
    ref_ds = reference_dataset(folder, spec.image_size)
    steps = min(spec.steps, len(ref_ds) // spec.batch - max(workers))  # the reference stops at its epoch's end
    if steps < 1:
        raise ValueError(f"bench.loader: {spec.n_images} images are too few for batches of {spec.batch}")
    spec = dataclasses.replace(spec, steps=steps)
    what = (f"{spec.n_images:,} JPEGs {spec.sides[0]}-{spec.sides[1]} px q{spec.quality}, "
            f"{info['jpeg_bytes'] / spec.n_images / 1e3:.0f} kB avg")
    images = {}  # (side, workers) -> images timed, for the test
    per_s: dict[tuple[str, int], list[float]] = {}
    for w in workers:
        seeds = {"ours": itertools.count(), "ref": itertools.count()}

        def side(name, fn, w=w, seeds=seeds):
            def seconds_per_image(_iters):
                with pinned(w):
                    secs, n = fn(w, next(seeds[name]))
                images[name, w] = images.get((name, w), 0) + n
                return secs / n
            return seconds_per_image

        t_ours, t_ref = alternate(side("ours", lambda w_, s: ours(pattern, spec, w_, s)),
                                  side("ref", lambda w_, s: reference(ref_ds, spec, w_, s)), spec.rounds, steps)
        per_s["ours", w] = [1 / t for t in t_ours]
        per_s["ref", w] = [1 / t for t in t_ref]
    rows = []
    for w in workers:
        o, r = statistics.median(per_s["ours", w]), statistics.median(per_s["ref", w])
        ratio = statistics.median(a / b for a, b in zip(per_s["ours", w], per_s["ref", w]))
        cores = f"{w} worker{'s' * (w > 1)} pinned to {w} core{'s' * (w > 1)}"
        rows.append({
            "bench": (f"data loader, {cores}: images/s, decode + centre crop to {spec.image_size} px, batches of "
                      f"{spec.batch} (ours: WorkerBatches over tar shards, `ae` step batch, torch resize; ref: torchvision "
                      f"ImageFolder + DataLoader; {what}; median of {spec.rounds} alternated rounds of "
                      f"{steps * spec.batch} images)"),
            "value": f"{o:.0f} img/s ({o / w:.0f}/core)", "reference": f"{r:.0f} img/s ({r / w:.0f}/core)",
            "ratio": f"{ratio:.2f}x", "ok": ratio >= TARGET,
            "images": {"ours": images["ours", w], "reference": images["ref", w]}})
    if len(workers) > 1:
        a, b = workers[0], workers[-1]
        scale = {s: statistics.median(per_s[s, b]) / statistics.median(per_s[s, a]) for s in ("ours", "ref")}
        rows.append({"bench": f"data loader scaling, {b} workers / {a} worker ({b} / {a} cores)",
                     "value": f"{scale['ours']:.2f}x", "reference": f"{scale['ref']:.2f}x",
                     "ratio": f"{scale['ours'] / scale['ref']:.2f}x", "ok": None})
    per_core = statistics.median(per_s["ours", workers[0]]) / workers[0]
    full = None
    if spec.full_recipe:
        runs = []
        for r in range(spec.rounds):
            with pinned(1):
                secs, n = ours(pattern, spec, 1, r, recipe="clip_ssl_ae")
            images["full", 1] = images.get(("full", 1), 0) + n
            runs.append(n / secs)
        full = statistics.median(runs)
        rows.append({"bench": ("data loader, ours on the full clip_ssl_ae step batch (captions read + tokenized, "
                               "SSL 2 global + 8 local views and iBOT masks on 1/4), 1 worker on 1 core, images/s"),
                     "value": f"{full:.0f} img/s", "reference": f"`ae` batch above: {per_core:.0f} img/s",
                     "ratio": f"{full / per_core:.2f}x", "ok": None, "images": {"ours": images["full", 1]}})
    g = gpu_feed(gpu_cfg)
    c = g["cfg"]
    need = g["images_per_s"] / (full or per_core)
    rows.append({
        "bench": (f"CPU cores to feed one H100 at the {c.encoder} {c.recipe} tokenizer step at {MFU:.0%} MFU: "
                  f"{g['step_flops'] / 1e15:.1f} PFLOP/step (flop counter, {g['count_seconds']:.1f} s) / "
                  f"{g['images_per_step']:,} images = {g['flops_per_image'] / 1e9:.0f} GFLOP/image; "
                  f"{MFU:.0%} x {g['peak'] / 1e12:.0f} TFLOP/s = {g['images_per_s']:.0f} images/s; over ours per core"),
        "value": f"{need:.1f} cores" + (f" (full batch, {full:.0f} img/s/core)" if full else ""),
        "reference": f"decode + crop only ({per_core:.0f} img/s/core): {g['images_per_s'] / per_core:.1f} cores",
        "ratio": "-", "ok": None})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
