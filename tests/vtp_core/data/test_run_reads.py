"""Reads in runs (`DataIndex.image_bytes_many`): neighbouring tar members come back with one `pread` per run, the
same bytes as reading each alone, and an unreadable member keeps its own error."""
from __future__ import annotations

import io
import os
import tarfile

import numpy as np

from vtp_core.data import index as index_mod
from vtp_core.data.index import load_index


def _shards(root, n_shards: int = 3, per: int = 40):
    rng = np.random.default_rng(0)
    train = root / "train"
    train.mkdir(parents=True)
    for s in range(n_shards):
        with tarfile.open(train / f"{s:05d}.tar", "w") as tf:
            for k in range(per):
                for ext, data in ((".jpg", rng.bytes(int(rng.integers(100, 3000)))), (".txt", b"a caption")):
                    info = tarfile.TarInfo(f"{s:03d}{k:04d}{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return train


def test_runs_read_the_same_bytes_with_few_preads(tmp_path, monkeypatch):
    monkeypatch.setenv("VTP_CACHE", str(tmp_path / "cache"))
    _shards(tmp_path / "data")
    index = load_index(str(tmp_path / "data"), "tar", "train")
    ids = np.concatenate([np.arange(10, 50), np.arange(90, 100), [3, 7]])  # two runs across shards, two stragglers
    rng = np.random.default_rng(1)
    rng.shuffle(ids)
    calls = {"n": 0}
    real = os.pread

    def counted(*a):
        calls["n"] += 1
        return real(*a)

    monkeypatch.setattr(index_mod.os, "pread", counted)
    got = index.image_bytes_many(ids)
    runs = calls["n"]
    calls["n"] = 0
    want = [index.image_bytes(int(i)) for i in ids]
    assert got == want and calls["n"] == len(ids)
    assert runs <= 5, runs  # [10, 40) in shard 0, [40, 50) in shard 1, [90, 100) in shard 2, 3 and 7 (one run)


def test_a_missing_shard_fails_only_its_images(tmp_path, monkeypatch):
    monkeypatch.setenv("VTP_CACHE", str(tmp_path / "cache"))
    train = _shards(tmp_path / "data")
    index = load_index(str(tmp_path / "data"), "tar", "train")
    (train / "00001.tar").unlink()
    got = index.image_bytes_many(np.arange(30, 90))
    assert all(isinstance(g, OSError) for g in got[10:50])  # shard 1: images 40..79
    assert all(isinstance(g, bytes) and g for g in got[:10] + got[50:])
