"""Data contracts: Fashion-MNIST shapes, nested deterministic subsets, one pixel convention, views, batches."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from vtp_core.batches import CaptionTable, make_batch, mask_tensors, sample_indices
from vtp_core.data import CLASS_NAMES, caption, load_split, load_train, normalize, subset_indices, to_uint8
from vtp_core.fmnist_files import FMNIST_DEFAULT, debian_fmnist_missing, fmnist_dir
from vtp_core.data.views import block_masks, multi_crop
from vtp_core.models.text import tokenize
from vtp_core.runtime import StageError
import small_configs as small


def test_fashion_mnist_split_shapes():
    imgs, labels = load_split(small.data(), "test")
    assert imgs.shape == (10_000, 32, 32, 3) and imgs.dtype == np.uint8
    assert labels.shape == (10_000,) and set(np.unique(labels)) == set(range(10))
    assert (imgs[:, :2] == 0).all()  # 28 -> 32 zero padding
    shrunk, _ = load_split(small.data(image_size=16), "test")
    assert shrunk.shape == (10_000, 16, 16, 3)


def test_missing_dataset_is_one_line_error(tmp_path):
    with pytest.raises(StageError, match="dataset-fashion-mnist.*FASHION_MNIST_DIR") as err:
        load_split(small.data(path=str(tmp_path)), "train")
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_fashion_mnist_dir_is_honoured(tmp_path, monkeypatch):
    """FASHION_MNIST_DIR replaces the Debian path (a machine without the package); then no Debian package is
    needed, and a folder without the files is named in the error."""
    from vtp_core.data.datasets import _fashion_mnist, dataset_checksum

    for f in Path(FMNIST_DEFAULT).iterdir():
        (tmp_path / f.name).symlink_to(f)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    assert fmnist_dir(small.data()) == tmp_path and not debian_fmnist_missing(small.data())
    assert dataset_checksum(small.data()) == dataset_checksum(small.data(path=FMNIST_DEFAULT))
    _fashion_mnist.cache_clear()
    assert load_split(small.data(), "test")[0].shape == (10_000, 32, 32, 3)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "empty"))
    with pytest.raises(StageError, match=str(tmp_path / "empty")):
        dataset_checksum(small.data())
    assert not debian_fmnist_missing(small.data()), "a folder the user names is never installed by apt"
    monkeypatch.delenv("FASHION_MNIST_DIR")
    assert not debian_fmnist_missing(small.data()) and not debian_fmnist_missing(small.data(dataset="imagefolder"))


def test_subsets_nested_and_deterministic():
    a, b = subset_indices(1000, 100, 7), subset_indices(1000, 300, 7)
    assert (b[:100] == a).all() and len(set(b)) == 300
    assert (subset_indices(1000, 100, 7) == a).all()
    assert not (subset_indices(1000, 100, 8) == a).all()
    few, _ = load_train(small.data(n_train=50))
    many, _ = load_train(small.data(n_train=500))
    assert {x.tobytes() for x in few} <= {x.tobytes() for x in many}


def test_pixel_round_trip_is_exact():
    u = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    x = normalize(u)
    assert x.shape == (4, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert (to_uint8(x) == u).all()
    assert to_uint8(torch.full((1, 3, 2, 2), 5.0)).max() == 255


def test_captions_and_bpe():
    assert caption(9, 0) == "a photo of a ankle boot."
    ids = tokenize(["a photo of a bag."], 16)
    assert ids.shape == (1, 16) and ids[0, 0] == 49406 and ids.max() == 49407


def test_views_and_masks():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    glob, loc = multi_crop(x, g, 24, 16, 3, (0.32, 1.0), (0.05, 0.32))
    assert glob.shape == (10, 3, 24, 24) and loc.shape == (15, 3, 16, 16)
    m = block_masks(40, 6, 6, g, (0.1, 0.5), 0.5)
    frac = m.float().mean(1)
    assert (frac == 0).sum() == 20 and frac.max() <= 0.5 + 1e-6 and frac[frac > 0].min() >= 0.1 - 1 / 36
    t = mask_tensors(m)
    assert len(t["mask_idx"]) == int(m.sum())
    assert torch.allclose(t["mask_weight"].sum(), torch.tensor(20.0))


def test_batches_are_a_function_of_seed_and_step():
    cfg = small.tokenizer(batch_size=16)
    imgs, labels = load_train(dataclasses.replace(cfg.data, n_train=40))
    caps = CaptionTable(CLASS_NAMES, 16)
    act = ("rec", "clip", "ssl")
    a, b = make_batch(cfg, imgs, labels, 3, act, caps), make_batch(cfg, imgs, labels, 3, act, caps)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = make_batch(cfg, imgs, labels, 4, act, caps)
    assert not torch.equal(a["clip_images"], c["clip_images"])
    assert a["rec_images"].shape[0] == 2 and a["global_views"].shape[0] == 8
    # epochs: every sample once per epoch, order reshuffled per epoch
    first = np.concatenate([sample_indices(40, 16, 0, s) for s in range(5)])
    assert sorted(first[:40]) == list(range(40)) and sorted(first[40:80]) == list(range(40))


class _Counting:
    """An image array that counts the images it hands out (as a lazily decoded split would decode them)."""

    def __init__(self, imgs):
        self.imgs, self.served = imgs, 0

    def __len__(self):
        return len(self.imgs)

    def __getitem__(self, i):
        out = self.imgs[i]
        self.served += len(out)
        return out


@pytest.mark.parametrize("world", [2, 4])
def test_each_rank_materialises_only_its_slice(world, monkeypatch):
    """The ranks' batches are slices of the world-size-1 batch (views, masks, captions included), and a rank
    decodes and holds O(global batch / world size) of it."""
    from vtp_core import batches

    cfg = small.tokenizer(batch_size=32, recipe="clip_ssl_ae")
    imgs, labels = load_train(dataclasses.replace(cfg.data, n_train=200))
    caps, act = CaptionTable(CLASS_NAMES, 16), ("rec", "clip", "ssl")
    full_src = _Counting(imgs)
    full = make_batch(cfg, full_src, labels, 7, act, caps)
    parts, served = [], []
    monkeypatch.setattr(batches, "world_size", lambda: world)
    for r in range(world):
        monkeypatch.setattr(batches, "rank", lambda r=r: r)
        src = _Counting(imgs)
        parts.append(make_batch(cfg, src, labels, 7, act, caps))
        served.append(src.served)
    for key in ("clip_images", "clip_text", "rec_images"):
        assert torch.equal(torch.cat([p[key] for p in parts]), full[key]), key
    for key, n_views in (("global_views", 2), ("local_views", cfg.n_local_crops), ("masks", 2)):
        per_rank = [p[key].chunk(n_views) for p in parts]  # each rank: [view0 of its images, view1 ...]
        whole = torch.cat([torch.cat([v[i] for v in per_rank]) for i in range(n_views)])
        assert torch.equal(whole, full[key]), key
    nbytes = lambda b: sum(t.numel() * t.element_size() for t in b.values())  # noqa: E731
    assert max(nbytes(p) for p in parts) <= 1.1 * nbytes(full) / world
    b_ssl, b_rec = batches.sub_batch_sizes(cfg)
    assert full_src.served == 32  # one process decodes the draw once
    assert max(served) <= (32 + b_ssl + b_rec) / world  # a rank: its CLIP, SSL and rec slices, nothing else
