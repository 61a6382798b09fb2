"""Data index at scale: bytes of index per image and build seconds per million images, on generated shards.

Why generated: the figure that matters is the index's cost per image (DataComp-277M has 277M images), and
that does not depend on image bytes, so each member is a few bytes: 1,000,000 images (a `.jpg` and a `.txt`
each, 2M tar members, ~2 GB of tar blocks) in 100 shards by default (`VTP_BENCH_INDEX_IMAGES` to change it).
The build runs in a fresh process, so its peak RSS (`ru_maxrss`) is the build's, shown above the RSS the
process had before building (interpreter, numpy, torch). Target: at most 64 bytes per image.

    python -m bench bench.data_index
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

TARGET_BYTES = 64

CHILD = r"""
import json, resource, sys, time
from vtp_core.data.index import COLUMNS, load_index

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
index = load_index(sys.argv[1], "tar", "train")
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
load_index(sys.argv[1], "tar", "train")
print(json.dumps({"n": len(index), "seconds": seconds, "load_seconds": time.perf_counter() - t0,
                  "bytes": sum(int(index.cols[c].nbytes) for c in COLUMNS) + int(index.files.ends.nbytes), "rss_before_kb": before, "rss_peak_kb": peak}))
"""


def generate(folder: Path, n_images: int, n_shards: int) -> str:
    """`n_images` tiny samples (`<key>.jpg` of 3 bytes, `<key>.txt` of ~10) in `n_shards` shards; the shard pattern."""
    per = -(-n_images // n_shards)
    pad = tarfile.NUL * tarfile.BLOCKSIZE
    for s in range(n_shards):
        with open(folder / f"{s:05d}.tar", "wb") as fh:
            for i in range(s * per, min(n_images, (s + 1) * per)):
                for ext, data in ((".jpg", b"jpg"), (".txt", f"caption {i}".encode())):
                    info = tarfile.TarInfo(f"{i:09d}{ext}")
                    info.size = len(data)
                    fh.write(info.tobuf(tarfile.GNU_FORMAT) + data + pad[len(data):])
            fh.write(pad * 2)  # end of archive
    return str(folder / f"{{00000..{n_shards - 1:05d}}}.tar")


def run() -> list[dict]:
    n_images = int(os.environ.get("VTP_BENCH_INDEX_IMAGES", 1_000_000))
    n_shards = min(100, n_images)
    with tempfile.TemporaryDirectory(prefix="vtp-bench-index-") as d:
        shards = Path(d) / "shards"
        shards.mkdir()
        t0 = time.perf_counter()
        pattern = generate(shards, n_images, n_shards)
        gen = time.perf_counter() - t0
        env = {**os.environ, "VTP_CACHE": str(Path(d) / "cache"),
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
        out = subprocess.run([sys.executable, "-c", CHILD, pattern], env=env, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
    per_image = r["bytes"] / r["n"]
    per_million = r["seconds"] / r["n"] * 1e6
    peak_mb, before_mb = r["rss_peak_kb"] / 1024, r["rss_before_kb"] / 1024
    what = f"{r['n']:,} images, {2 * r['n']:,} members, {n_shards} shards"
    return [
        {"bench": f"data index: bytes per image in memory ({what})", "value": f"{per_image:.1f} B",
         "reference": f"target {TARGET_BYTES} B", "ratio": f"{per_image / TARGET_BYTES:.2f}x of target",
         "ok": per_image <= TARGET_BYTES},
        {"bench": "data index: build time per million images (one process, header scan + write)",
         "value": f"{per_million:.1f} s", "reference": f"generating the shards: {gen:.1f} s", "ratio": "-", "ok": None},
        {"bench": "data index: build peak RSS (fresh process)", "value": f"{peak_mb:.0f} MB",
         "reference": f"before building: {before_mb:.0f} MB",
         "ratio": f"{(peak_mb - before_mb) * 2**20 / r['n']:.0f} B per image above it", "ok": None},
        {"bench": "data index: load (memory-map) in the same process", "value": f"{r['load_seconds'] * 1e3:.1f} ms",
         "reference": "-", "ratio": "-", "ok": None},
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
