"""The data-loader bench (`bench/loader.py`) at a tiny size: its data is the same JPEGs as tar shards and as an
ImageFolder tree, both sides time the same number of images at 1 and 2 workers, and its rows have the table's
format (speed itself: `make bench`)."""
import os
import re

import pytest

from bench import loader


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("VTP_CACHE", str(tmp_path))
    return loader.Spec(n_images=40, sides=(64, 96), image_size=32, batch=4, steps=2, rounds=1, workers=(1, 2))


def test_shards_and_folder_hold_the_same_jpegs(tiny):
    from vtp_core.data.index import load_index

    pattern, folder, info = loader.generate(tiny)
    index = load_index(pattern, "tar", "train")
    assert len(index) == tiny.n_images == len(list(folder.rglob("*.jpg")))
    for i in (0, 17, 39):
        assert index.image_bytes(i) == (folder / f"c{i % loader.N_CLASSES}" / f"{i:06d}.jpg").read_bytes()
        assert index.caption(i) == f"a generated photo of shapes, number {i}"
    assert loader.generate(tiny)[2] == info  # cached: not generated again


def test_rows_time_the_same_images_on_both_sides(tiny):
    from vtp_core.config import TokenizerConfig

    n_cpus = len(os.sched_getaffinity(0))
    rows = loader.run(tiny, gpu_cfg=TokenizerConfig(encoder="S", decoder="S", rec_loss="l1"))
    for r in rows:
        assert {"bench", "value", "reference", "ratio", "ok"} <= set(r)
    timed = [r for r in rows if r["bench"].startswith("data loader, ") and "images" in r and "reference" in r["images"]]
    assert len(timed) == min(2, n_cpus)
    for r in timed:
        assert r["images"]["ours"] == r["images"]["reference"] == tiny.rounds * tiny.steps * tiny.batch
        assert re.fullmatch(r"\d+ img/s \(\d+/core\)", r["value"]) and r["ratio"].endswith("x")
        assert r["ok"] in (True, False)
    [full] = [r for r in rows if "full clip_ssl_ae step batch" in r["bench"]]
    assert full["images"]["ours"] == tiny.rounds * tiny.steps * tiny.batch  # every drawn image once per step
    cores = rows[-1]
    assert cores["bench"].startswith("CPU cores to feed one H100") and re.match(r"[\d.]+ cores", cores["value"])
    assert "GFLOP/image" in cores["bench"] and "images/s" in cores["bench"]
