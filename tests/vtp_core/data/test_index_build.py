"""Building the byte-range index: compact typed columns, memory-mapped; one builder among processes that need it
at once (the others wait on its lock and load what it built); a build that dies leaves no index behind."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from vtp_core.data import index as data_index

ROOT = Path(__file__).resolve().parents[3]  # the repository: the subprocesses import vtp_core from it

SCRIPT = r"""
import os, sys, time
from pathlib import Path
from vtp_core.data import index as ix

mode, ready, pattern, log = sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
build = ix._build

def instrumented(folder, *args):
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    if mode == "die":  # leave a half-written folder, then wait to be killed while holding the lock
        (folder / "img_off.npy").write_bytes(b"partial")
        (ready / "building").touch()
        time.sleep(60)
    time.sleep(1.0)  # a slow build: the other processes arrive while it runs
    build(folder, *args)

ix._build = instrumented
(ready / str(os.getpid())).touch()
deadline = time.time() + 60
while mode == "race" and len(list(ready.iterdir())) < 3 and time.time() < deadline:
    time.sleep(0.01)
index = ix.load_index(pattern, "tar", "train")
print(len(index), index.manifest_sha256, type(index.cols["img_off"]).__name__)
"""


def _shards(d, n_shards: int = 3, per: int = 50) -> str:
    d.mkdir()
    for s in range(n_shards):
        with tarfile.open(d / f"{s:05d}.tar", "w") as tf:
            for i in range(s * per, (s + 1) * per):
                for ext, data in ((".jpg", b"\xff\xd8 tiny"), (".txt", f"caption {i}".encode())):
                    info = tarfile.TarInfo(f"k{i:05d}{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return str(d / f"{{00000..{n_shards - 1:05d}}}.tar")


def _spawn(mode: str, tmp_path, pattern: str, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, mode, str(tmp_path / "ready"), pattern, str(tmp_path / "builds")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("VTP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "ready").mkdir()
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_columns_are_compact_typed_and_memory_mapped(tmp_path, env):
    index = data_index.load_index(_shards(tmp_path / "d"), "tar", "train")
    assert len(index) == 150 and index.caption(149) == "caption 149" and index.image_bytes(3) == b"\xff\xd8 tiny"
    assert {c: index.cols[c].dtype for c in data_index.COLUMNS} == {c: np.dtype(t) for c, t in data_index.DTYPES.items()}
    assert sum(index.cols[c].nbytes for c in data_index.COLUMNS) / len(index) == 37
    assert all(isinstance(index.cols[c], np.memmap) for c in data_index.COLUMNS)
    assert isinstance(index.files, data_index.Names) and len(index.files) == 3 and index.files[2] == "00002.tar"


def test_imagefolder_paths_are_one_blob_not_one_object_per_file(tmp_path, env):
    """ImageFolder data has one file per image (and per caption): its paths are a memory-mapped UTF-8 blob
    plus one int64 end offset per file, so the index stays <= 64 bytes per image with a caption per image
    (37 + 2 x 8), and paths with non-ASCII names round-trip."""
    for i in range(40):
        cls = tmp_path / "d" / "train" / ("chats-é" if i % 2 else "dogs")
        cls.mkdir(parents=True, exist_ok=True)
        (cls / f"{i:03d}.jpg").write_bytes(b"\xff\xd8 tiny")
        (cls / f"{i:03d}.txt").write_text(f"caption {i}")
    index = data_index.load_index(str(tmp_path / "d"), "imagefolder", "train")
    files = index.files
    assert isinstance(files, data_index.Names) and len(files) == 80 and isinstance(files.ends, np.memmap)
    assert files[0] == "chats-é/001.jpg" and files[1] == "chats-é/001.txt" and files[-1] == "dogs/038.txt"
    per_image = (sum(index.cols[c].nbytes for c in data_index.COLUMNS) + files.ends.nbytes) / len(index)
    assert per_image == 37 + 16 <= 64
    assert index.caption(0) == "caption 1" and index.source(0).endswith("chats-é/001.jpg")
    with pytest.raises(IndexError, match="file id 80 of 80"):
        files[80]


@pytest.mark.timeout(120)
def test_one_process_builds_the_others_wait_and_load_it(tmp_path, env):
    pattern = _shards(tmp_path / "d")
    procs = [_spawn("race", tmp_path, pattern, env) for _ in range(3)]
    outs = [p.communicate(timeout=100) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert len((tmp_path / "builds").read_text().split()) == 1  # one build among three processes
    results = {o[0].strip() for o in outs}
    assert len(results) == 1 and results.pop().split()[::2] == ["150", "memmap"]


@pytest.mark.timeout(120)
def test_a_build_that_dies_leaves_no_index_and_the_next_process_builds(tmp_path, env, monkeypatch):
    pattern = _shards(tmp_path / "d")
    proc = _spawn("die", tmp_path, pattern, env)
    deadline = time.time() + 60
    while not (tmp_path / "ready" / "building").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
        time.sleep(0.05)
    cache = tmp_path / "cache" / "data-index"
    assert not [p for p in cache.iterdir() if (p / "meta.json").exists()]  # the half-built folder is not the index
    proc.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel releases it
    proc.wait(timeout=30)
    index = data_index.load_index(pattern, "tar", "train")
    assert len(index) == 150
    folders = [p for p in cache.iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / "meta.json").exists()  # the dead build's temp folder is gone

    monkeypatch.setattr(data_index._Columns, "write", lambda self, folder: (_ for _ in ()).throw(OSError("disk full")))
    (tmp_path / "d" / "00003.tar").write_bytes((tmp_path / "d" / "00000.tar").read_bytes())
    pattern4 = str(tmp_path / "d" / "{00000..00003}.tar")
    with pytest.raises(OSError, match="disk full"):
        data_index.load_index(pattern4, "tar", "train")
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1  # only the earlier, finished index
    monkeypatch.undo()
    assert len(data_index.load_index(pattern4, "tar", "train")) == 200


@pytest.mark.timeout(120)
def test_the_index_bench_runs_at_small_scale(monkeypatch):
    from bench import data_index as bench

    monkeypatch.setenv("VTP_BENCH_INDEX_IMAGES", "2000")
    rows = bench.run()
    # 37 B of columns per image + 8 B per file path (100 shards over 2,000 images)
    assert rows[0]["value"] == f"{37 + 8 * 100 / 2000:.1f} B" and rows[0]["ok"] is True and "2,000 images" in rows[0]["bench"]
    assert all({"bench", "value", "reference", "ratio", "ok"} <= set(r) for r in rows)
