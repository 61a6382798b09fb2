"""User data: ImageFolder and tar shards with .txt/.json captions, bad-image accounting, checksum."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from vtp_core import pretrain
from vtp_core.data import class_names, load_captions, load_split
from vtp_core.runtime import StageError
import small_configs as small


def _png(seed: int, size=(40, 36)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
    for split in ("train", "val"):
        for c, cls in enumerate(("cat", "dog")):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(5):
                (d / f"img{i}.{'PNG' if i % 2 else 'png'}").write_bytes(_png(10 * c + i))
            (d / "img0.txt").write_text("a fluffy animal\n")
            (d / "img1.json").write_text(json.dumps({"caption": "json caption"}))
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not an image")
    return tmp_path


def test_imagefolder_split_captions_and_bad_images(folder, caplog):
    with pytest.raises(StageError, match="max_bad_fraction"):
        load_split(small.data(dataset="imagefolder", path=str(folder), max_bad_fraction=0.01), "train")
    cfg = small.data(dataset="imagefolder", path=str(folder), max_bad_fraction=0.2, image_size=16)
    with caplog.at_level("WARNING"):
        imgs, labels = load_split(cfg, "train")
    assert "broken.jpg" in caplog.text
    # cat/broken.jpg sorts first: it keeps its position, label and (template) caption, and its pixels are
    # those of the next readable image, cat/img0 (the rule of lazy storage, so both storages agree)
    assert imgs.shape == (11, 16, 16, 3) and imgs.dtype == np.uint8 and list(labels) == [0] * 6 + [1] * 5
    assert np.array_equal(imgs[0], imgs[1]) and not np.array_equal(imgs[1], imgs[2])
    caps = load_captions(cfg, "train")
    assert caps[:4] == ["a photo of a cat.", "a fluffy animal", "json caption", "a photo of a cat."]
    assert class_names(cfg) == ("cat", "dog")
    assert load_split(cfg, "test")[0].shape[0] == 10  # 'val' serves as the test split


def test_checksum_mismatch_is_an_error(folder):
    with pytest.raises(StageError, match="checksum"):
        load_split(small.data(dataset="imagefolder", path=str(folder), max_bad_fraction=0.2, checksum="x"), "test")


def test_tar_shards(tmp_path):
    (tmp_path / "train").mkdir()
    with tarfile.open(tmp_path / "train" / "shard-000.tar", "w") as tf:
        for i in range(4):
            for ext, data in ((".JPG" if i == 0 else ".png", _png(i)), (".json", json.dumps({"text": f"cap {i}"}).encode()),
                              (".cls", str(i % 2).encode())):
                info = tarfile.TarInfo(f"k{i:03d}{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    cfg = small.data(dataset="tar", path=str(tmp_path), image_size=16)
    imgs, labels = load_split(cfg, "train")
    assert imgs.shape == (4, 16, 16, 3) and list(labels) == [0, 1, 0, 1]
    assert load_captions(cfg, "train") == ["cap 0", "cap 1", "cap 2", "cap 3"]


def test_pretrain_on_captioned_folder(folder, make_ctx):
    data = small.data(dataset="imagefolder", path=str(folder), max_bad_fraction=0.2, image_size=16)
    cfg = small.tokenizer(recipe="clip_ae", batch_size=4, steps=2, data=data, global_crop=12, local_crop=8)
    m = pretrain.run(cfg, make_ctx())
    assert np.isfinite(m["final_losses"]["clip"])


def _strips(grey: int = 128, size=(48, 24)) -> Image.Image:
    """A 2:1 image: red left strip, blue right strip, flat grey between (the grey tells images apart)."""
    w, h = size
    arr = np.full((h, w, 3), grey, np.uint8)
    arr[:, : w // 8] = (255, 0, 0)
    arr[:, -(w // 8):] = (0, 0, 255)
    return Image.fromarray(arr)


def test_squash_keeps_the_whole_field_of_view_center_crop_does_not():
    from vtp_core.data.folders import center_crop_arr, squash_arr

    sq, cc = squash_arr(_strips(), 16), center_crop_arr(_strips(), 16)
    assert sq.shape == cc.shape == (16, 16, 3) and sq.dtype == np.uint8
    assert (sq[:, 0] == (255, 0, 0)).all() and (sq[:, -1] == (0, 0, 255)).all()  # both strips kept
    assert (sq[:, 8] == 128).all()
    assert (cc == 128).all()  # the centre crop of a 2:1 image drops both strips


def test_squash_equals_torchvision_resize():
    T = pytest.importorskip("torchvision.transforms")
    from vtp_core.data.folders import squash_arr

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 90, 3), dtype=np.uint8))
    assert np.array_equal(squash_arr(img, 16), np.asarray(T.Resize((16, 16))(img)))


def test_decode_resize_modes_and_bad_mode(folder):
    from vtp_core.data.folders import decode, decode_many
    from vtp_core.data.index import load_index

    index = load_index(str(folder), "imagefolder", "test")
    # the fixture's images are 40x36: the two modes differ, the default is the centre crop
    assert np.array_equal(decode(index, 0, 16), decode(index, 0, 16, "center_crop"))
    assert not np.array_equal(decode(index, 0, 16, "squash"), decode(index, 0, 16))
    with pytest.raises(StageError, match=r"resize: 'stretch'; valid: center_crop, center_crop\+torch, .*squash"):
        decode_many(index, range(10), 16, "stretch")  # an error, not ten "unreadable images"
