"""refstats: the seeded class-balanced reference subset (on a class-sorted ImageFolder made here), the
ADM-style `.npz` reference mode, and the data-free `random_cnn` extractor."""
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

import vtp_core.data as vdata
import vtp_core.data.lazy as vlazy
from dit_eval import extractors, refstats
from dit_eval.config import ExtractorConfig, RefStatsConfig
from dit_eval.extractors import load_extractor
from dit_eval.frechet import feature_stats
from vtp_core.config import DataConfig
from vtp_core.runtime import StageError

N_CLASSES = 120


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A class-sorted ImageFolder: 120 classes of 3-7 8x8 PNGs each (uneven), train/ and val/."""
    monkeypatch.setenv("VTP_CACHE", str(tmp_path / "cache"))  # hermetic data-index cache
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for split in ("train", "val"):
        for k in range(N_CLASSES):
            d = root / split / f"c{k:03d}"
            d.mkdir(parents=True)
            for i in range(int(rng.integers(3, 8))):
                px = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                px[: 1 + k % 8, : 1 + k // 15] = 255  # class-dependent content
                Image.fromarray(px).save(d / f"{i:02d}.png")
    return root


@pytest.fixture
def random_ext(make_ctx):
    ctx = make_ctx("extractor")
    extractors.run(ExtractorConfig(name="random_cnn", seed=0), ctx)
    return ctx.out


def _run(make_ctx, name, ext, cfg):
    ctx = make_ctx(name, extractor=ext)
    m = refstats.run(cfg, ctx)
    json.dumps(m)
    return m, refstats.load_stats_npz(ctx.out / "stats.npz")


@pytest.mark.parametrize("storage", ["memory", "lazy"])
def test_balanced_reference_covers_every_class(folder, random_ext, make_ctx, monkeypatch, storage):
    data = DataConfig(dataset="imagefolder", path=str(folder), image_size=8, storage=storage)
    images, labels = vdata.load_split(data, "train")
    n = 180  # 1.5 per class; the first 180 images of the class-sorted split are ~36 classes
    assert len(np.unique(labels)) == N_CLASSES and len(np.unique(labels[:n])) < 50
    decoded = []
    real_decode = vlazy.decode_many
    monkeypatch.setattr(vlazy, "decode_many", lambda index, ids, *a, **k: decoded.extend(ids) or real_decode(index, ids, *a, **k))

    m, st = _run(make_ctx, "ref", random_ext, RefStatsConfig(data=data, split="train", n_images=n, seed=0))
    assert m["reference"] == "computed" and m["selection"] == "class_balanced" and m["n"] == n and m["seed"] == 0
    c = m["classes"]
    assert c["n_classes"] == N_CLASSES and c["max_per_class"] - c["min_per_class"] <= 1
    assert (c["min_per_class"], c["max_per_class"], c["short_classes"]) == (1, 2, 0)
    assert len(m["per_class"]) == N_CLASSES and sum(m["per_class"]) == n
    assert min(m["per_class"]) == c["min_per_class"] and max(m["per_class"]) == c["max_per_class"]
    idx, _ = refstats.balanced_indices(labels, n, 0)
    assert np.all(np.diff(idx) > 0)  # deterministic (sorted) order, no repeats
    assert np.bincount(labels[idx], minlength=N_CLASSES).tolist() == m["per_class"]
    assert m["subset_sha"] == refstats.subset_sha(idx)
    ext = load_extractor(random_ext)
    mu, sigma = feature_stats(ext(vdata.take(images, idx)))  # the stage used exactly these images
    assert np.allclose(st["mu"], mu) and np.allclose(st["sigma"], sigma) and st["n"] == n
    if storage == "lazy":  # only the chosen images were decoded (by the stage; the check above adds n more)
        assert sorted(decoded[:n]) == sorted(vdata.take(images, idx).ids.tolist()) and len(decoded) == 2 * n

    same, st_same = _run(make_ctx, "ref_same", random_ext, RefStatsConfig(data=data, n_images=n, seed=0))
    assert same["subset_sha"] == m["subset_sha"] and same["per_class"] == m["per_class"]
    assert np.array_equal(st_same["mu"], st["mu"])
    other, st_other = _run(make_ctx, "ref_other", random_ext, RefStatsConfig(data=data, n_images=n, seed=1))
    assert other["subset_sha"] != m["subset_sha"] and not np.allclose(st_other["mu"], st["mu"])
    assert other["classes"]["max_per_class"] - other["classes"]["min_per_class"] <= 1
    assert not np.array_equal(refstats.balanced_indices(labels, n, 1)[0], idx)

    whole, _ = _run(make_ctx, "ref_all", random_ext, RefStatsConfig(data=data, n_images=0))
    assert whole["n"] == len(labels) and whole["selection"] == "all"
    assert whole["per_class"] == np.bincount(labels).tolist()


def test_quota_rule_short_classes_and_remainder():
    counts = [1, 2, 10, 10, 10]
    labels = np.repeat(np.arange(5), counts)
    seen = set()
    for seed in range(20):
        idx, info = refstats.balanced_indices(labels, 20, seed)
        q = np.bincount(labels[idx], minlength=5)
        # classes 0, 1 give all they have; 17 left over 3 classes: 5 each, 2 of them (seeded) get a 6th
        assert q[:2].tolist() == [1, 2] and sorted(q[2:].tolist()) == [5, 6, 6] and q.sum() == 20
        assert info["per_class"] == q.tolist() and info["classes"]["short_classes"] == 2
        assert np.array_equal(idx, refstats.balanced_indices(labels, 20, seed)[0])
        seen.add(tuple(q[2:]))
    assert len(seen) > 1  # the +1 goes to seeded classes, not always the first ones
    even = np.repeat(np.arange(4), 5)
    assert refstats.balanced_indices(even, 8, 0)[1]["per_class"] == [2, 2, 2, 2]
    with pytest.raises(StageError, match="n_images=21"):
        refstats.balanced_indices(even, 21, 0)


def test_unlabelled_split_falls_back_to_uniform(random_ext, make_ctx):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    ext = load_extractor(random_ext)
    cfg = RefStatsConfig(n_images=20, seed=3)
    m = refstats.compute_refstats(cfg, make_ctx("u").out, ext, images, np.full(60, -1))
    idx = np.sort(np.random.default_rng(3).permutation(60)[:20])
    assert m["selection"] == "uniform" and m["classes"] is None and m["n_unlabelled"] == 60
    assert m["subset_sha"] == refstats.subset_sha(idx)
    st = refstats.load_stats_npz(make_ctx("u").out / "stats.npz")
    assert np.allclose(st["mu"], feature_stats(ext(images[idx]))[0])
    m2 = refstats.compute_refstats(RefStatsConfig(n_images=20, seed=4), make_ctx("u2").out, ext, images)
    assert m2["selection"] == "uniform" and m2["subset_sha"] != m["subset_sha"]


def _write_ref(path, dim, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    mu, sigma = rng.normal(size=dim), a @ a.T / dim + np.eye(dim)
    np.savez(path, mu=mu, sigma=sigma, arr_0=rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8))
    return mu, sigma, hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_npz_reference(random_ext, make_ctx, tmp_path):
    mu, sigma, sha = _write_ref(tmp_path / "VIRTUAL_ref.npz", 128)  # random_cnn's dim
    nowhere = DataConfig(dataset="imagefolder", path=str(tmp_path / "no-such-folder"), image_size=8)
    cfg = RefStatsConfig(data=nowhere, npz=str(tmp_path / "VIRTUAL_ref.npz"), sha256=sha)  # no images read
    m, st = _run(make_ctx, "npz", random_ext, cfg)
    assert np.array_equal(st["mu"], mu) and np.array_equal(st["sigma"], sigma)
    assert m["reference"] == "npz" and m["npz_sha256"] == sha and m["npz_file"] == "VIRTUAL_ref.npz"
    assert m["dim"] == 128 and m["extractor"] == "random_cnn"

    wrong = "0" * 64
    with pytest.raises(StageError) as e:
        _run(make_ctx, "npz_bad", random_ext, RefStatsConfig(data=nowhere, npz=cfg.npz, sha256=wrong))
    msg = _one_line(e)
    assert "VIRTUAL_ref.npz" in msg and wrong in msg and sha in msg
    with pytest.raises(StageError) as e:
        _run(make_ctx, "npz_missing", random_ext, RefStatsConfig(data=nowhere, npz=str(tmp_path / "gone.npz"), sha256=sha))
    msg = _one_line(e)
    assert "gone.npz" in msg and "not found" in msg and sha in msg
    with pytest.raises(StageError) as e:
        _run(make_ctx, "npz_short", random_ext, RefStatsConfig(data=nowhere, npz=cfg.npz, sha256=sha[:16]))
    assert "64" in _one_line(e)

    _, _, sha_big = _write_ref(tmp_path / "inception_ref.npz", 2048)  # Inception stats vs a 128-d extractor
    with pytest.raises(StageError) as e:
        _run(make_ctx, "npz_dim", random_ext,
             RefStatsConfig(data=nowhere, npz=str(tmp_path / "inception_ref.npz"), sha256=sha_big))
    msg = _one_line(e)
    assert "2048" in msg and "dim 128" in msg
    assert not (make_ctx("npz_dim").out / "stats.npz").exists()


def test_random_cnn_extractor(make_ctx):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        ctx = make_ctx(name)
        m = extractors.run(ExtractorConfig(name="random_cnn", seed=seed), ctx)
        meta = json.loads((ctx.out / "extractor.json").read_text())
        assert meta == {"name": "random_cnn", "sha": m["sha"], "dim": 128, "file": "cnn.pt", "seed": seed}
        assert m["sha"] == extractors.file_hash(ctx.out / "cnn.pt")[:16]
        runs[name] = (m["sha"], load_extractor(ctx.out), ctx.out)
    imgs = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    fa, fb, fc = (runs[k][1](imgs) for k in "abc")
    assert runs["a"][1].name == "random_cnn" and fa.shape == (6, 128) and fa.dtype == np.float64
    assert np.abs(fa).sum() > 0 and fa.std(0).mean() > 0  # features vary with the image
    assert runs["a"][0] == runs["b"][0] and np.array_equal(fa, fb)
    assert runs["a"][0] != runs["c"][0] and not np.allclose(fa, fc)
    (runs["a"][2] / "cnn.pt").write_bytes((runs["a"][2] / "cnn.pt").read_bytes() + b"x")
    with pytest.raises(StageError, match="random_cnn.*recorded sha"):
        load_extractor(runs["a"][2])
    with pytest.raises(StageError, match="valid: fmnist_cnn, inception, random_cnn"):
        extractors.run(ExtractorConfig(name="clip"), make_ctx("x"))


def test_fmnist_cnn_reads_fashion_mnist_at_32px(make_ctx, monkeypatch):
    seen = []
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.arange(40) % 10

    def fake_load_split(cfg, split):
        seen.append((cfg.dataset, cfg.image_size, split))
        return imgs, labels

    monkeypatch.setattr(vdata, "load_split", fake_load_split)
    m = extractors.run(ExtractorConfig(name="fmnist_cnn", train_steps=2), make_ctx("fm"))
    assert seen == [("fashion_mnist", 32, "train"), ("fashion_mnist", 32, "test")] and m["dim"] == 128


def test_sfid_stats_and_precision_recall_subset(make_ctx):
    """One pass gives both statistics; the P/R reference is a class-balanced subset of the chosen images
    (their own features, bit for bit), bounded by pr_n_images."""
    import torch

    from dit_eval.extractors import Extractor

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (400, 4, 4, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(10), 40)
    passes = []

    def net(x, keys):
        passes.append(len(x))
        return {"features": x.flatten(1)[:, :6], "spatial": x.flatten(1)[:, 6:15]}

    ext = Extractor("inception", "s", 6, net, lambda imgs, dev: torch.from_numpy(np.asarray(imgs, np.float32)), "cpu",
                    batch_size=1000, outputs=("features", "spatial"))
    ctx = make_ctx("pr")
    m = refstats.compute_refstats(RefStatsConfig(n_images=200, pr_n_images=50, seed=3), ctx.out, ext, images, labels)
    st = refstats.load_stats_npz(ctx.out / "stats.npz")
    idx, _ = refstats.balanced_indices(labels, 200, 3)
    flat = images[idx].reshape(200, -1).astype(np.float64)
    assert passes == [200]
    assert np.allclose(st["mu_s"], flat[:, 6:15].mean(0)) and st["sigma_s"].shape == (9, 9) and m["sfid_stats"]
    pr = st["pr_features"]
    assert pr.shape == (50, 6) and m["pr_n"] == 50
    rows = {tuple(r) for r in flat[:, :6]}
    assert all(tuple(r) in rows for r in pr)  # drawn from the chosen images
    pos, _ = refstats.balanced_indices(labels[idx], 50, 3)
    assert np.bincount(labels[idx][pos], minlength=10).tolist() == [5] * 10
