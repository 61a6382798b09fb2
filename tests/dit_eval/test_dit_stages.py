"""The stage entry points wired end to end through StageContext, with vtp_core's tokenizer and data
replaced by fakes (sys.modules), so these tests do not depend on vtp_core's models or datasets."""
import json
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from dit_fakes import FakeTokenizer, fake_to_uint8, synthetic_images

from dit_eval import extractors, fid, latents, refstats, sample, train
from dit_eval.config import FIDConfig
from dit_eval.extractors import INCEPTION_SHA1, bundled_inception_path, file_hash, load_extractor
from dit_eval.fid import protocol_hash
from vtp_core.runtime import StageError, atomic_write_json
import small_configs as small


@pytest.fixture
def fake_vtp(monkeypatch):
    imgs, labels = synthetic_images(300)
    splits = {"train": (imgs[:200], labels[:200]), "test": (imgs[200:], labels[200:])}
    data = types.ModuleType("vtp_core.data")
    data.load_split = lambda cfg, split: splits[split]
    data.to_uint8 = fake_to_uint8
    data.normalize = lambda x, device="cpu": torch.from_numpy(np.asarray(x)).to(device).permute(0, 3, 1, 2) / 127.5 - 1
    tok = types.ModuleType("vtp_core.tokenizer")
    tok.load_tokenizer = lambda stage_dir, device: FakeTokenizer()
    monkeypatch.setitem(sys.modules, "vtp_core.data", data)
    monkeypatch.setitem(sys.modules, "vtp_core.tokenizer", tok)


def test_pipeline_end_to_end(fake_vtp, make_ctx, tmp_path):
    ext = make_ctx("extractor")
    m = extractors.run(small.extractor(train_steps=30), ext)
    assert m["dim"] == 128 and 0 <= m["test_accuracy"] <= 1
    ref = make_ctx("refstats", extractor=ext.out)
    r = refstats.run(small.refstats(n_images=100), ref)
    assert r["extractor_sha"] == m["sha"] and r["n"] == 100 and r["split"] == "test"
    (tmp_path / "pretrain").mkdir()
    lat = make_ctx("latents", pretrain=tmp_path / "pretrain")
    lm = latents.run(small.latents(n_images=200, shard_size=64), lat)
    dit = make_ctx("dit", latents=lat.out)
    dm = train.run(small.dit(steps=20, batch_size=16), dit)
    assert dm["stats_hash"] == lm["stats_hash"] and dm["loss_end"] < dm["loss_start"]
    smp = make_ctx("sample", dit=dit.out, latents=lat.out, pretrain=tmp_path / "pretrain")
    sm = sample.run(small.sample(n_samples=150, steps=5, shard_size=100, batch_size=50), smp)
    atomic_write_json(smp.out / "metrics.json", sm)
    out = fid.run(FIDConfig(), make_ctx("fid", sample=smp.out, extractor=ext.out, refstats=ref.out))
    g = out["gfid"]
    assert g["value"] > 0 and g["n_samples"] == 150 and g["low_n"] is False and g["reference"] == "refstats"
    assert g["extractor_sha"] == m["sha"] and (g["sampler"], g["steps"], g["shift"]) == ("euler", 5, 0.3)
    assert g["protocol_hash"] == protocol_hash({**g, "value": 1.0})
    assert protocol_hash({**g, "steps": 6}) != g["protocol_hash"]
    ode = make_ctx("sample_dopri5", dit=dit.out, latents=lat.out, pretrain=tmp_path / "pretrain")
    om = sample.run(small.sample(n_samples=150, sampler="dopri5", shift=0.0, labels="balanced", shard_size=50,
                                 ode_batch=50), ode)
    atomic_write_json(ode.out / "metrics.json", om)
    assert np.bincount(sample.load_samples(ode.out)[1], minlength=10).tolist() == [15] * 10 and om["nfe_min"] > 6
    go = fid.run(FIDConfig(), make_ctx("fid_dopri5", sample=ode.out, extractor=ext.out, refstats=ref.out))["gfid"]
    assert (go["sampler"], go["labels"], go["rtol"]) == ("dopri5", "balanced", 1e-3) and "steps" not in go
    assert go["protocol_hash"] != g["protocol_hash"] and g["labels"] == "uniform"
    json.dumps(out)
    json.dumps(dm)
    few = make_ctx("sample_few", dit=dit.out, latents=lat.out, pretrain=tmp_path / "pretrain")
    atomic_write_json(few.out / "metrics.json",
                      sample.run(small.sample(n_samples=50, steps=3, shard_size=50, batch_size=50), few))
    low = fid.run(FIDConfig(allow_low_n=True), make_ctx("fid_low", sample=few.out, extractor=ext.out, refstats=ref.out))
    assert low["gfid"]["low_n"] is True and low["gfid"]["protocol_hash"] != g["protocol_hash"]
    with pytest.raises(StageError, match="allow_low_n"):
        fid.run(FIDConfig(allow_low_n=False), make_ctx("fid_x", sample=few.out, extractor=ext.out, refstats=ref.out))


def test_extractor_checksum_guard(fake_vtp, make_ctx):
    ctx = make_ctx("extractor")
    extractors.run(small.extractor(train_steps=5), ctx)
    e = load_extractor(ctx.out)
    feats = e(synthetic_images(3)[0])
    assert feats.shape == (3, 128) and feats.dtype == np.float64
    (ctx.out / "cnn.pt").write_bytes((ctx.out / "cnn.pt").read_bytes() + b"x")
    with pytest.raises(StageError, match="recorded sha"):
        load_extractor(ctx.out)
    with pytest.raises(StageError, match="valid: fmnist_cnn, inception"):
        extractors.run(small.extractor(name="clip"), ctx)


def test_bundled_inception(make_ctx):
    path = bundled_inception_path()
    assert file_hash(path, "sha1") == INCEPTION_SHA1
    ctx = make_ctx("inception")
    extractors.run(small.extractor(name="inception"), ctx)
    e = load_extractor(ctx.out)
    imgs = synthetic_images(2)[0]
    f = e(imgs)
    assert e.dim == 2048 and f.shape == (2, 2048) and np.isfinite(f).all()
    with warnings.catch_warnings():  # the plain module must equal the TorchScript it was converted from
        warnings.simplefilter("ignore", FutureWarning)
        ts = torch.jit.load(str(path)).eval()
    with torch.no_grad():
        ref = ts(extractors.inception_input(imgs, "cpu")).double().numpy()
    assert np.abs(f - ref).max() < 1e-4
    from dit_eval.inception import from_torchscript

    pth = ctx.out.parent / "my_inception.pth"  # a pytorch-fid style state_dict (torchvision key names)
    torch.save(from_torchscript(path).net.state_dict(), pth)
    ctx2 = make_ctx("inception_pth")
    extractors.run(small.extractor(name="inception", path=str(pth)), ctx2)
    assert np.abs(load_extractor(ctx2.out)(imgs) - f).max() < 1e-6
    torch.save({"fc.weight": torch.zeros(1)}, ctx.out / "pt_inception-2015-12-05-6726825d.pth")
    with pytest.raises(StageError, match="its name says"):
        extractors.run(small.extractor(name="inception", path=str(ctx.out / "pt_inception-2015-12-05-6726825d.pth")),
                       ctx)
    with pytest.raises(StageError, match="not found"):
        extractors.run(small.extractor(name="inception", path="/nonexistent/pt_inception.pth"), ctx)


def test_reference_npz(tmp_path):
    np.savez(tmp_path / "ref.npz", mu=np.zeros(4), sigma=np.eye(4))
    r = refstats.load_reference_npz(tmp_path / "ref.npz")
    assert r["sigma"].shape == (4, 4)
    with pytest.raises(StageError, match="does not match"):
        refstats.load_reference_npz(tmp_path / "ref.npz", sha256="deadbeef")


def test_inception_metrics_through_the_stage_entries(fake_vtp, make_ctx, tmp_path):
    """The real (bundled) Inception through extractor -> refstats -> fid with FID, sFID and precision/recall:
    one pass each over 40 reference and 24 sample images (CPU-sized; low-N allowed and labelled)."""
    ext = make_ctx("inc")
    extractors.run(small.extractor(name="inception"), ext)
    ref = make_ctx("ref", extractor=ext.out)
    r = refstats.run(small.refstats(n_images=40, pr_n_images=20), ref)
    assert r["sfid_stats"] and r["pr_n"] == 20
    smp = tmp_path / "sample"
    (smp / "samples").mkdir(parents=True)
    imgs, labels = synthetic_images(24)
    np.savez(smp / "samples" / "shard-0.npz", images=imgs, labels=labels)
    atomic_write_json(smp / "metrics.json", {"protocol": sample.protocol(small.sample(steps=5))})
    out = fid.run(FIDConfig(allow_low_n=True, metrics=("fid", "sfid", "precision", "recall")),
                  make_ctx("fid", sample=smp, extractor=ext.out, refstats=ref.out))
    assert out["gfid"]["value"] > 0 and out["sfid"]["value"] > 0 and out["sfid"]["low_n"]
    assert 0 <= out["precision"]["value"] <= 1 and 0 <= out["recall"]["value"] <= 1
    assert out["recall"]["n_reference"] == 20 and out["metrics"] == ["fid", "sfid", "precision", "recall"]
    json.dumps(out)
