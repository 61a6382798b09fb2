"""Probe stage: metrics in range, zero-shot null with a reason for recipes without CLIP, rFID via services."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vtp_core import pretrain, probe
import small_configs as small


def test_linear_probe_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    x = torch.randn(200, 6, generator=g) * 0.1 + torch.nn.functional.one_hot(y, 6).float()
    assert probe.linear_probe_accuracy(x[:100], y[:100], x[100:], y[100:], 100, 0.05, 0) > 0.95


def test_psnr():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    assert probe.psnr_uint8(a, a) == 100.0
    assert probe.psnr_uint8(a, a + 1) == pytest.approx(20 * np.log10(255), rel=1e-6)


@pytest.mark.parametrize("recipe", ["ae", "clip_ae"])
def test_probe_stage_metrics(recipe, tiny_cfg, make_ctx, fid_services):
    tok_ctx = make_ctx("pretrain")
    pretrain.run(dataclasses.replace(tiny_cfg, recipe=recipe, steps=3), tok_ctx)
    ctx = make_ctx("probe", inputs={"pretrain": tok_ctx.out}, services=fid_services)
    m = probe.run(small.probe(n_train=200, n_test=100, probe_epochs=5), ctx)
    for k in ("linear_probe", "linear_probe_pre"):
        assert 0.0 <= m[k] <= 1.0
    assert m["linear_probe_pre"] > 0.15  # above chance (0.1) even after 3 steps
    if recipe == "ae":
        assert m["zero_shot"] is None and "no CLIP" in m["zero_shot_reason"]
    else:
        assert 0.0 <= m["zero_shot"] <= m["zero_shot_top5"] <= 1.0
    assert m["rfid"]["value"] > 0 and m["rfid"]["n_samples"] == 100 and m["rfid"]["extractor"] == "randproj8"
    assert 0 < m["psnr"] < 100


def test_probe_without_services_records_reason(tiny_cfg, make_ctx):
    tok_ctx = make_ctx("pretrain")
    pretrain.run(dataclasses.replace(tiny_cfg, recipe="ae", steps=1), tok_ctx)
    m = probe.run(small.probe(n_train=50, n_test=20, probe_epochs=1), make_ctx("probe", inputs={"pretrain": tok_ctx.out}))
    assert m["rfid"]["value"] is None and m["rfid"]["reason"]


def test_class_names_for_prompts(tmp_path):
    from vtp_core.data.captions import readable_class_names, zero_shot_prompts
    from vtp_core.runtime import StageError

    wnids = tuple(f"n{i:08d}" for i in range(1000))
    names = readable_class_names(wnids)  # ImageNet folders: OpenCLIP's names, the 80 OpenAI templates
    assert names[:2] == ("tench", "goldfish") and len(names) == 1000
    assert len(zero_shot_prompts(names)) == 80 and zero_shot_prompts(names)[0]("tench") == "a bad photo of a tench."
    assert readable_class_names(("cat", "dog"), tmp_path) == ("cat", "dog")
    (tmp_path / "classnames.txt").write_text("house cat\nbig dog\n")
    assert readable_class_names(("cat", "dog"), tmp_path) == ("house cat", "big dog")
    assert zero_shot_prompts(("Big Dog",))[0]("Big Dog") == "a photo of a big dog."
    with pytest.raises(StageError, match="2 names for 3 class folders"):
        readable_class_names(("a", "b", "c"), tmp_path)


def test_bad_zero_shot_resize_is_a_clear_error():
    from vtp_core.cfg import ConfigError, load
    from vtp_core.config import ProbeConfig

    with pytest.raises(ConfigError, match=r"^probe: zero_shot_resize: unknown value 'stretch' \(allowed: squash, center_crop\)$"):
        load(ProbeConfig, {"zero_shot_resize": "stretch", "data": {"dataset": "fashion_mnist"}}, "probe")


@pytest.fixture
def strips_folder(tmp_path):
    """Non-square (2:1) ImageFolder: red left / blue right strips, a flat grey middle unique per image,
    and one unreadable image in val (so split positions and index positions differ)."""
    from PIL import Image

    for s, split in enumerate(("train", "val")):
        for c, cls in enumerate(("cat", "dog")):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(5):
                arr = np.full((24, 48, 3), 20 + 7 * (10 * s + 5 * c + i), np.uint8)
                arr[:, :6], arr[:, -6:] = (255, 0, 0), (0, 0, 255)
                Image.fromarray(arr).save(d / f"img{i}.png")
    (tmp_path / "val" / "cat" / "broken.png").write_bytes(b"not an image")
    return tmp_path


@pytest.mark.parametrize("storage", ["memory", "lazy"])
def test_zero_shot_sees_squashed_images_linear_probe_centre_crops(storage, strips_folder, make_ctx, monkeypatch):

    data = small.data(dataset="imagefolder", path=str(strips_folder), image_size=16, max_bad_fraction=0.3,
                      storage=storage)
    tok_ctx = make_ctx("pretrain")
    pretrain.run(small.tokenizer(recipe="clip_ae", batch_size=4, steps=1, data=data, global_crop=12, local_crop=8),
                 tok_ctx)
    seen: dict = {"features": []}
    extract, zero_shot = probe.extract_features, probe.zero_shot_accuracy

    def spy_features(tok, images, *a, **kw):
        seen["features"].append(np.asarray(images))
        return extract(tok, images, *a, **kw)

    def spy_zero_shot(tok, images, labels, *a, **kw):
        seen["zero_shot"], seen["labels"] = np.asarray(images), np.asarray(labels)
        return zero_shot(tok, images, labels, *a, **kw)

    monkeypatch.setattr(probe, "extract_features", spy_features)
    monkeypatch.setattr(probe, "zero_shot_accuracy", spy_zero_shot)
    for mode in ("squash", "center_crop"):
        seen["features"].clear()
        m = probe.run(small.probe(n_train=8, n_test=6, probe_epochs=1, data=data, zero_shot_resize=mode),
                      make_ctx(f"probe-{mode}", inputs={"pretrain": tok_ctx.out}))
        assert m["zero_shot_resize"] == mode and 0.0 <= m["zero_shot"] <= 1.0
        crop, zs = seen["features"][1], seen["zero_shot"]  # [1]: the test subset the linear probe sees
        assert crop.shape == zs.shape == (6, 16, 16, 3)
        assert (np.abs(crop[:, :, [0, -1]].astype(int) - crop[:, :, [8]]) <= 1).all()  # strips cropped away
        if mode == "squash":
            assert (zs[:, :, 0] == (255, 0, 0)).all() and (zs[:, :, -1] == (0, 0, 255)).all()  # whole view
            assert np.array_equal(zs[:, 8, 8], crop[:, 8, 8])  # same images (unique grey), same order
        else:
            assert np.array_equal(zs, crop)
        assert len(set(crop[:, 8, 8, 0])) == 6
