import pytest
import torch

from dit_eval.latents import encode_to_shards, load_latents, load_stats, stats_hash
from dit_eval.train import train_dit
from vtp_core.runtime import Diverged, Preempted, StageError, load_checkpoint
import small_configs as small


def _latents(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 8, 8, 8, generator=g) * 2 + 1
    return {"latents": z, "latents_flip": z.flip(3), "labels": torch.arange(n) % 10}


def _stats(z):
    mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))
    return {"mean": mean, "std": std, "n": len(z), "hash": stats_hash(mean, std)}


def test_tiny_dit_overfits_16_latents(tmp_path):
    # 16 structured latents (a per-sample channel code + a small spatial pattern), redundant like real
    # latents; i.i.d. Gaussian latents are too hard to memorise for `tiny` within a unit-test budget.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 8, 1, 1, generator=g) + 0.3 * torch.randn(16, 1, 8, 8, generator=g)
    data = {"latents": z, "latents_flip": z, "labels": torch.arange(16) % 10}
    spec = small.dit(steps=250, batch_size=16, lr=1e-2, ema=0.9, t_mu=0.0, t_sigma=1.0)
    m = train_dit(spec, tmp_path, data, _stats(z))
    assert m["loss_start"] / m["loss_end"] >= 5, m
    ck = torch.load(tmp_path / "dit.pt", weights_only=True)
    assert set(ck) >= {"spec", "model", "ema", "stats_hash", "latent_shape"} and ck["latent_shape"] == [8, 8, 8]
    assert m["dit_flops"] == m["dit_step_flops"] * spec.steps and m["dit_params"] > 0


def test_resume_is_bit_identical(tmp_path):
    data = _latents(40)
    stats = _stats(data["latents"])
    spec = small.dit(steps=12, batch_size=8, ckpt_every=5)
    ref = train_dit(spec, tmp_path / "a", data, stats)
    calls = {"n": 0}

    def stop():  # stop after the 7th step (between checkpoints)
        calls["n"] += 1
        return calls["n"] == 7

    with pytest.raises(Preempted):
        train_dit(spec, tmp_path / "b", data, stats, stop_requested=stop)
    assert load_checkpoint(tmp_path / "b" / "ckpt" / "last.pt")["step"] == 7
    res = train_dit(spec, tmp_path / "b", data, stats)
    assert res["loss"] == ref["loss"] and res["loss_start"] == ref["loss_start"]
    a, b = torch.load(tmp_path / "a" / "dit.pt"), torch.load(tmp_path / "b" / "dit.pt")
    for key in ("model", "ema"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)


def test_resume_with_other_stats_refused(tmp_path):
    data = _latents(20)
    spec = small.dit(steps=6, batch_size=4, ckpt_every=3)
    with pytest.raises(Preempted):
        train_dit(spec, tmp_path, data, _stats(data["latents"]), stop_requested=lambda: True)
    with pytest.raises(StageError, match="latent stats"):
        train_dit(spec, tmp_path, data, _stats(data["latents"] * 2))


def test_nan_loss_raises_diverged(tmp_path):
    data = _latents(8)
    stats = _stats(data["latents"])
    data["latents"][:] = float("nan")
    data["latents_flip"][:] = float("nan")
    with pytest.raises(Diverged):
        train_dit(small.dit(steps=3, batch_size=4), tmp_path, data, stats)


def test_latents_stage_and_tampered_stats_refused(tmp_path, fake_tokenizer):
    from dit_fakes import synthetic_images

    imgs, labels = synthetic_images(30)
    m = encode_to_shards(small.latents(n_images=25, shard_size=10, stats_subset=20), tmp_path, fake_tokenizer,
                         imgs, labels, "cpu")
    assert m["n"] == 25 and m["latent_shape"] == [8, 8, 8] and m["n_shards"] == 3 and m["n_stats"] == 20
    store = load_latents(tmp_path)
    d = {k: store.all(k) for k in store.KEYS}
    idx = torch.tensor([24, 0, 13, 9])
    assert torch.equal(store.gather("latents", idx), d["latents"][idx])
    assert d["latents"].shape == (25, 8, 8, 8) and d["labels"].tolist() == labels[:25].tolist()
    x = torch.from_numpy(imgs[:2]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        assert torch.allclose(d["latents_flip"][:2], fake_tokenizer.encode(x.flip(3)), atol=1e-5)
    st = load_stats(tmp_path)
    assert st["hash"] == m["stats_hash"]
    st["mean"] = st["mean"] + 1  # stats edited without re-hashing
    torch.save(st, tmp_path / "stats.pt")
    with pytest.raises(StageError, match="corrupt"):
        load_stats(tmp_path)


@pytest.mark.parametrize("class_dropout", [0.0, 0.5])
def test_the_null_label_is_trained_only_with_class_dropout(tmp_path, class_dropout):
    """Guidance reads the null label's embedding row (index num_classes). It receives gradient only through
    class dropout: Adam's first moment of that row is non-zero after a few steps with dropout 0.5 (16 labels
    per step, P(no label dropped in 4 steps) = 0.5^64) and exactly zero without dropout, where the row
    keeps its random init (which is why the sample stage and the study refuse CFG without class dropout)."""
    data = _latents(16)
    spec = small.dit(steps=4, batch_size=16, class_dropout=class_dropout, ckpt_every=2)
    train_dit(spec, tmp_path, data, _stats(data["latents"]))
    ck = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)
    from dit_eval.models import create_dit

    names = [n for n, _ in create_dit(spec.size, 8, 8, spec.num_classes).named_parameters()]
    idx = names.index("y_embedder.weight")  # optimizer state is keyed by parameter order
    null_row_moment = ck["optimizer"]["state"][idx]["exp_avg"][spec.num_classes]
    assert (null_row_moment.abs().sum() > 0) == (class_dropout > 0)
