"""Large user data: the byte-range index (tar shards, shard patterns, ImageFolder), lazily decoded images
equal to the in-memory ones, deterministic replacement of unreadable images, and pre-training on lazy
data bit-identical to pre-training on the same data in memory."""
from __future__ import annotations

import dataclasses
import gzip
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from vtp_core import pretrain
from vtp_core.data import index as data_index
from vtp_core.data import load_captions, load_split, load_train, take
from vtp_core.data.lazy import LazyImages
from vtp_core.runtime import StageError, load_checkpoint
import small_configs as small


def _png(seed: int, size=(40, 36)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _shard(path, start: int, n: int, broken: int | None = None) -> None:
    with tarfile.open(path, "w") as tf:
        for i in range(start, start + n):
            img = b"not an image" if i == broken else _png(i)
            for ext, data in ((".png", img), (".txt", f"caption {i}".encode()), (".cls", str(i % 3).encode())):
                info = tarfile.TarInfo(f"k{i:04d}{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    for s in range(3):
        _shard(d / f"{s:05d}.tar", 6 * s, 6)
    return d


def test_shard_pattern_lazy_equals_memory(shards):
    pattern = str(shards / "{00000..00002}.tar")
    mem = small.data(dataset="tar", path=pattern, image_size=16, storage="memory")
    lazy = dataclasses.replace(mem, storage="lazy")
    m_img, m_lab = load_split(mem, "train")
    l_img, l_lab = load_split(lazy, "train")
    assert isinstance(l_img, LazyImages) and isinstance(m_img, np.ndarray)
    assert l_img.shape == m_img.shape == (18, 16, 16, 3) and np.array_equal(l_lab, m_lab)
    idx = np.array([17, 0, 5, 5, 9])
    assert np.array_equal(l_img[idx], m_img[idx]) and np.array_equal(l_img[3], m_img[3])
    assert np.array_equal(l_img[2:7], m_img[2:7]) and np.array_equal(np.asarray(l_img), m_img)
    sub = take(l_img, np.array([4, 1]))  # a lazy view: nothing decoded until indexed
    assert isinstance(sub, LazyImages) and np.array_equal(sub[:], m_img[[4, 1]])
    caps = load_captions(lazy, "train")
    assert [caps[i] for i in range(18)] == load_captions(mem, "train") == [f"caption {i}" for i in range(18)]
    with pytest.raises(StageError, match="train split only"):
        load_split(lazy, "test")


def test_index_is_cached_and_rebuilt_when_shards_change(shards, monkeypatch):
    cfg = small.data(dataset="tar", path=str(shards.parent), image_size=16)
    (shards.parent / "train").symlink_to(shards)
    assert len(data_index.load_index(cfg.path, "tar", "train")) == 18
    monkeypatch.setattr(data_index, "_scan_tar", lambda p: (_ for _ in ()).throw(AssertionError("rescanned")))
    assert len(data_index.load_index(cfg.path, "tar", "train")) == 18  # cached: no shard is read
    monkeypatch.undo()
    _shard(shards / "00003.tar", 18, 2)  # a new shard changes the listing: the index is rebuilt
    assert len(data_index.load_index(cfg.path, "tar", "train")) == 20


def test_bad_input_errors(shards, tmp_path):
    with pytest.raises(StageError, match="1 of 4 shards .* missing"):
        data_index.load_index(str(shards / "{00000..00003}.tar"), "tar", "train")
    gz = tmp_path / "gz" / "train"
    gz.mkdir(parents=True)
    with open(shards / "00000.tar", "rb") as src, gzip.open(gz / "00000.tar", "wb") as dst:
        dst.write(src.read())
    with pytest.raises(StageError, match="not an uncompressed tar"):
        data_index.load_index(str(tmp_path / "gz"), "tar", "train")
    from vtp_core.cfg import ConfigError, load
    from vtp_core.config import DataConfig

    with pytest.raises(ConfigError, match="storage: unknown value 'disk' .allowed: auto, memory, lazy"):
        load(DataConfig, {"dataset": "tar", "path": str(shards / "{00000..00002}.tar"), "storage": "disk"})


def test_unreadable_images_are_replaced_logged_and_bounded(tmp_path, caplog):
    d = tmp_path / "bad"
    d.mkdir()
    _shard(d / "00000.tar", 0, 20, broken=4)
    cfg = small.data(dataset="tar", path=str(d / "{00000..00000}.tar"), image_size=16, storage="lazy",
                     max_bad_fraction=0.1)
    imgs, _ = load_split(cfg, "train")
    with caplog.at_level("WARNING"):
        got = imgs[np.array([4, 5])]
    assert np.array_equal(got[0], got[1])  # image 4 is unreadable: deterministically replaced by image 5
    assert "00000.tar:k0004.png" in caplog.text
    strict = dataclasses.replace(cfg, max_bad_fraction=0.04)  # 1 bad of 20 seen exceeds 4 %
    imgs, _ = load_split(strict, "train")
    with pytest.raises(StageError, match="max_bad_fraction=0.04.*k0004.png"):
        imgs[:]


def test_pretrain_on_lazy_data_equals_memory(shards, make_ctx):
    pattern = str(shards / "{00000..00002}.tar")
    data = small.data(dataset="tar", path=pattern, image_size=16, n_train=12, storage="memory")
    cfg = small.tokenizer(recipe="clip_ssl_ae", batch_size=4, steps=3, data=data, patch=4, global_crop=16,
                          local_crop=8, warmup_steps=1)
    weights = []
    for storage in ("memory", "lazy"):
        ctx = make_ctx(storage)
        pretrain.run(dataclasses.replace(cfg, data=dataclasses.replace(data, storage=storage)), ctx)
        weights.append(load_checkpoint(ctx.out / "tokenizer.pt")["model"])
    assert len(load_train(dataclasses.replace(data, storage="lazy"))[0]) == 12
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_index_cli_prints_checksum_and_lists_unreadable(tmp_path, capsys):
    d = tmp_path / "bad"
    d.mkdir()
    _shard(d / "00000.tar", 0, 6, broken=2)
    pattern = str(d / "{00000..00000}.tar")
    bad_list = tmp_path / "bad.txt"
    assert data_index.main(["--dataset", "tar", "--path", pattern, "--decode", "--image-size", "16",
                            "--bad-list", str(bad_list)]) == 0
    out = capsys.readouterr().out
    sha = data_index.load_index(pattern, "tar", "train").manifest_sha256
    assert "6 images" in out and f"data.checksum: {sha}" in out and "1 unreadable" in out
    assert bad_list.read_text().strip().endswith("00000.tar:k0002.png")
    assert data_index.main(["--dataset", "tar", "--path", str(d / "{00000..00001}.tar")]) == 2
    assert "missing" in capsys.readouterr().err
