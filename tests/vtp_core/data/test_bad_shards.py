"""Bad data on generated shards: a corrupt JPEG, a missing caption, captions that are not UTF-8 or not JSON, an
empty shard, a shard cut inside a member and one cut inside a header, and a shard deleted after indexing.
Each bad image is replaced by the next readable one and each bad caption by the class template, the same in
two runs and in both storages; each is logged by path and counted against `max_bad_fraction`; past it the
stage fails with the count and the first paths, and never hangs."""
from __future__ import annotations

import dataclasses
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from vtp_core.data import index as data_index
from vtp_core.data.folders import default_caption, load_folder_split
from vtp_core.data.index import UnreadableCaption
from vtp_core.data.lazy import LazyCaptions, LazyImages, _BadLedger
from vtp_core.runtime import StageError
import small_configs as small

N = 27  # images indexed from the fixture's shards (see `shards`)


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _write(path, samples: dict[int, dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for i, parts in samples.items():
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"k{i:04d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def _good(i: int) -> dict[str, bytes]:
    return {"jpg": _jpeg(i), "txt": f"caption {i}".encode(), "cls": str(i % 3).encode()}


def _cut(path, name: str, at: str) -> None:
    """Truncate a shard halfway through member `name`'s data ('data') or 100 bytes into its header ('header')."""
    with tarfile.open(path) as tf:
        m = tf.getmember(name)
    with open(path, "r+b") as fh:
        fh.truncate(m.offset_data + m.size // 2 if at == "data" else m.offset + 100)


@pytest.fixture
def shards(tmp_path):
    """00000: 10 samples: k3 a corrupt JPEG, k5 no caption, k6 a .txt that is not UTF-8, k7 a .json that is not JSON,
    k8 a good .json; 00001: an empty file; 00002: 6 good samples (the one deleted in a test); 00003: 8 samples, cut
    halfway through k23's image (its .txt and .cls are lost); 00004: 3 good samples, then cut inside k27's header."""
    d = tmp_path / "shards"
    d.mkdir()
    s0 = {i: _good(i) for i in range(10)}
    s0[3]["jpg"] = _jpeg(3)[:2] + bytes(40) + _jpeg(3)[42:]
    del s0[5]["txt"]
    s0[6]["txt"] = b"\xff\xfe not utf-8 \xc3\x28"
    s0[7] = {"jpg": _jpeg(7), "json": b"{not json", "cls": b"1"}
    s0[8] = {"jpg": _jpeg(8), "json": json.dumps({"caption": "json eight"}).encode(), "cls": b"2"}
    _write(d / "00000.tar", s0)
    (d / "00001.tar").write_bytes(b"")
    _write(d / "00002.tar", {i: _good(i) for i in range(10, 16)})
    _write(d / "00003.tar", {i: _good(i) for i in range(16, 24)})
    _cut(d / "00003.tar", "k0023.jpg", "data")
    _write(d / "00004.tar", {i: _good(i) for i in range(24, 28)})
    _cut(d / "00004.tar", "k0027.jpg", "header")
    return d


def _cfg(d, **kw):
    return small.data(dataset="tar", path=str(d / "{00000..00004}.tar"), image_size=16, **kw)


def _lazy(index, max_bad_fraction):
    imgs = LazyImages(index, 16, max_bad_fraction, resize="center_crop+torch")  # as DataConfig() resizes
    return imgs, LazyCaptions(index, imgs.ledger)


def test_bad_shards_are_indexed_as_far_as_they_can_be_read(shards, caplog):
    with caplog.at_level("WARNING"):
        index = data_index.load_index(_cfg(shards).path, "tar", "train")
    assert len(index) == N  # 10 + 0 + 6 + 8 (k23 kept: its header is whole) + 3
    assert f"empty shard {shards / '00001.tar'}" in caplog.text
    assert f"shard {shards / '00003.tar'} is cut short in member k0023.jpg" in caplog.text
    assert f"shard {shards / '00004.tar'} has an unreadable header" in caplog.text
    assert index.source(23) == f"{shards / '00003.tar'}:k0023.jpg"
    with pytest.raises(OSError, match="cut short"):
        index.image_bytes(23)  # half of it is there: a short read, never a silently truncated image
    assert index.caption(5) is None and index.caption(8) == "json eight"
    for i, member in ((6, "k0006.txt"), (7, "k0007.json")):
        with pytest.raises(UnreadableCaption, match=member):
            index.caption(i)
    assert list(index.label[:4]) == [0, 1, 2, 0] and index.cap_file[23] == -1  # k23's .txt was past the cut


def test_each_bad_item_is_replaced_the_same_way_logged_and_counted(shards, caplog):
    cfg = _cfg(shards, max_bad_fraction=0.2)  # 4 of 27 bad: 2 images (k3, k23) and 2 captions (k6, k7)
    with caplog.at_level("WARNING"):
        mem = load_folder_split(cfg, "train")
    again = load_folder_split(cfg, "train")
    assert np.array_equal(mem.images, again.images) and mem.captions == again.captions
    for path in ("00000.tar:k0003.jpg", "00003.tar:k0023.jpg", "00000.tar:k0006.txt", "00000.tar:k0007.json"):
        assert path in caplog.text and any(b.endswith(path) for b in mem.bad)
    assert len(mem.bad) == 4
    assert list(mem.ids[[3, 23]]) == [4, 24]  # the next readable image
    assert np.array_equal(mem.images[3], mem.images[4]) and np.array_equal(mem.images[23], mem.images[24])
    names = mem.class_names
    for i in (5, 6, 7):  # no caption, not UTF-8, not JSON: the class template
        assert mem.captions[i] == default_caption(None, int(mem.labels[i]), names)
    assert mem.captions[8] == "json eight" and mem.captions[9] == "caption 9"

    index = data_index.load_index(cfg.path, "tar", "train")
    for _ in range(2):  # lazy storage, twice: the same pixels and captions as in memory
        imgs, caps = _lazy(index, 0.2)
        assert np.array_equal(imgs[:], mem.images) and [caps[i] for i in range(N)] == mem.captions
        assert (imgs.ledger.n_bad_img, imgs.ledger.n_bad_cap, imgs.ledger.n_seen) == (2, 2, N)
        assert imgs.ledger.examples[0].endswith("00000.tar:k0003.jpg")


@pytest.mark.timeout(60)
def test_past_max_bad_fraction_the_stage_fails_with_count_and_examples(shards):
    with pytest.raises(StageError, match=r"4/27 unreadable images or captions exceed max_bad_fraction=0.1 "
                                         r"\(first: .*00000.tar:k0003.jpg"):
        load_folder_split(_cfg(shards, max_bad_fraction=0.1), "train")
    index = data_index.load_index(_cfg(shards).path, "tar", "train")
    imgs, caps = _lazy(index, 0.1)
    imgs[:]  # 2 of 27 images: under 10 %
    with pytest.raises(StageError, match=r"3/27 .*max_bad_fraction=0.1 .*k0003.jpg, .*k0023.jpg, .*k0006.txt"):
        [caps[i] for i in range(N)]  # the first bad caption takes it past 10 %
    imgs, _ = _lazy(index, 0.05)
    with pytest.raises(StageError, match=r"2/27 .*max_bad_fraction=0.05"):
        imgs[:]


@pytest.mark.timeout(60)
def test_a_shard_deleted_after_indexing(shards, caplog):
    cfg = _cfg(shards, max_bad_fraction=0.7)
    index = data_index.load_index(cfg.path, "tar", "train")
    imgs, caps = _lazy(index, 0.7)
    (shards / "00002.tar").unlink()  # images 10..15
    with caplog.at_level("WARNING"):
        got = imgs[:]
        texts = [caps[i] for i in range(N)]
    assert all(np.array_equal(got[i], got[16]) for i in range(10, 16))  # replaced by the next readable, k16
    assert f"{shards / '00002.tar'}:@" in caplog.text  # named by shard and byte offset (its header is gone too)
    assert imgs.ledger.n_bad_img == 2 + 6 and imgs.ledger.n_bad_cap == 2 + 6
    assert texts[10] == default_caption(None, int(index.label[10]), index.class_names)
    mem = load_folder_split(cfg, "train", index)
    assert np.array_equal(mem.images, got) and mem.captions == texts and len(mem.bad) == 16

    with pytest.raises(StageError, match=r"16/27 .*max_bad_fraction=0.3 .*00002.tar:@"):
        load_folder_split(dataclasses.replace(cfg, max_bad_fraction=0.3), "train", index)
    imgs, _ = _lazy(index, 0.1)
    with pytest.raises(StageError, match=r"8/27 .*max_bad_fraction=0.1"):
        imgs[:]


@pytest.mark.timeout(60)
def test_nothing_readable_fails_instead_of_looping(tmp_path):
    _write(tmp_path / "00000.tar", {i: {"jpg": b"not a jpeg", "txt": b"x"} for i in range(5)})
    cfg = small.data(dataset="tar", path=str(tmp_path / "{00000..00000}.tar"), image_size=16, max_bad_fraction=1.0)
    imgs, _ = _lazy(data_index.load_index(cfg.path, "tar", "train"), 1.0)
    with pytest.raises(StageError, match="no readable image at all"):
        imgs[np.array([2, 0])]
    with pytest.raises(StageError, match="no readable image at all"):
        load_folder_split(cfg, "train")


def test_the_ledger_is_bounded():
    n = 1_000_000
    ledger = _BadLedger(0.01, "where", n)
    assert sum(b.nbytes for b in (ledger._seen, ledger._bad_img, ledger._bad_cap)) == 3 * n // 8
    ids = np.arange(0, n, 2)
    ledger.record(np.concatenate([ids, ids[:10]]), {int(i): f"img{i}" for i in ids[:1000]})  # repeats count once
    ledger.record(ids[:1000], {int(i): f"img{i}" for i in ids[:1000]})
    ledger.record_caption(1, UnreadableCaption("cap1", "bad JSON"))
    ledger.record_caption(1, UnreadableCaption("cap1", "bad JSON"))
    assert (ledger.n_seen, ledger.n_bad_img, ledger.n_bad_cap) == (n // 2 + 1, 1000, 1)
    assert len(ledger.examples) == _BadLedger.EXAMPLES and ledger.examples[0] == "img0"
    with pytest.raises(StageError, match=r"where: 6001/500001 .* \(first: img0, img2, img4, img6, img8\)"):
        ledger.record(ids[:6000], {int(i): f"img{i}" for i in ids[:6000]})
