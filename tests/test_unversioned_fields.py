"""Every unversioned config field is proven inert: flipping it changes no number downstream.

A stage id hashes only a config's versioned fields (`vtp_core.cfg.versioned_dict`), so a field declared
`unversioned(...)` may differ between two runs that share one id (a job resumed with another checkpoint
cadence, data moved to another disk, a bigger encode batch on a bigger GPU). That is sound only if the
field changes no number. This module

1. finds every unversioned field of every config class by walking the dataclasses (`dataclasses.fields`
   and their `versioned` metadata) from the study (`sweeps.schema.Study`) and the two config modules, and
   fails unless each has an entry in `INERT` naming the test below that flips it: a new unversioned field
   must be proven inert here (or be made versioned);
2. for each field, runs the stage(s) that read it twice at tiny size on CPU, the field flipped and nothing
   else, and compares what downstream stages use: tokenizer.pt and dit.pt tensors, metrics.json numbers,
   latents and their stats, samples, FIDs.

"equal" is bit-identical (torch.equal, ==): the field leaves the arithmetic and its order unchanged
(cadences, paths, workers, storage, shard layouts whose batches coincide). A tolerance is used only where
the field changes how inference is batched (the `batch_size` fields), and for `TokenizerConfig.compile` on
CUDA (ignored on CPU, where it is bit-identical; on CUDA its proof is the compiled-vs-eager step of
tests/vtp_core/test_core_compile.py); each such test says where its bound comes from. Stages run through
`cluster.stages` (entry functions and the probe's rFID services), the way the executors run them.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import shutil
import tarfile
import typing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dit_eval.config import FIDConfig
from vtp_core.cfg import check, load, versioned_dict
from vtp_core.config import TokenizerConfig
from vtp_core.runtime import StageContext, atomic_write_json, load_checkpoint
import small_configs as small

LOG = logging.getLogger("vtp.test.unversioned")

# ----------------------------------------------------------------------------------------------- the table
# field -> (the test that flips it, the flip, how the outputs are compared)
EQUAL = "bit-identical"
INERT: dict[str, tuple[str, str, str]] = {
    "DataConfig.path": ("test_data_field", "the data vs a byte-identical copy in another folder", EQUAL),
    "DataConfig.storage": ("test_data_field", "memory vs lazy (an unreadable image in each split)", EQUAL),
    "DataConfig.max_bad_fraction": ("test_data_field", "0.3 vs 0.5 (an unreadable image in each split)", EQUAL),
    "TokenizerConfig.ckpt_every": ("test_pretrain_field", "2 vs 3 (stage 1 and stage 2)", EQUAL),
    "TokenizerConfig.log_every": ("test_pretrain_field", "1 vs 3 (stage 1 and stage 2)", EQUAL),
    "TokenizerConfig.num_workers": ("test_pretrain_field", "0 vs 2", EQUAL),
    "TokenizerConfig.lpips_weights": ("test_pretrain_field", "the LPIPS file vs a byte-identical copy", EQUAL),
    "TokenizerConfig.checkpoint_blocks": ("test_pretrain_field", "False vs True (every block recomputed)", EQUAL),
    "TokenizerConfig.compile": ("test_compile_field", "True vs False",
                                ("bit-identical on CPU, where it is ignored; on CUDA the compiled step's losses and "
                                 "gradients equal the eager step's within the float tolerance of "
                                 "tests/vtp_core/test_core_compile.py::test_compiled_step_matches_eager")),
    "ProbeConfig.batch_size": ("test_probe_batch_size", "4 vs 3",
                               ("features/recons/PSNR/rFID within derived bounds; accuracies equal; "
                                "bit-identical when the features are")),
    "LatentsConfig.shard_size": ("test_latents_field", "8 vs 12 at batch 4 (same encode batches)", EQUAL),
    "LatentsConfig.batch_size": ("test_latents_field", "4 vs 3",
                                 "latents and stats within 1e-5 of their scale; bit-identical when latents are"),
    "DiTSpec.ckpt_every": ("test_dit_field", "2 vs 3", EQUAL),
    "DiTSpec.log_every": ("test_dit_field", "1 vs 3", EQUAL),
    "SampleConfig.shard_size": ("test_sample_field", "4 vs 6 at batch 2 (same sampling batches)", EQUAL),
    "SampleConfig.batch_size": ("test_sample_field", "2 vs 3",
                                ("images within 1 level in <= 1 % of values, gFID within its W2 bound; "
                                 "bit-identical when the images are")),
    "RefStatsConfig.npz": ("test_refstats_npz", "the reference batch vs a byte-identical copy", EQUAL),
    "AnchorConfig.name": ("test_anchor_field", "vtp-t vs another label", EQUAL),
    "AnchorConfig.checkpoint": ("test_anchor_field", "the released file vs a byte-identical copy elsewhere", EQUAL),
    "AnchorConfig.tokenizer_flops": ("test_anchor_field", "0 (unknown) vs 1e21 (a plot position only)", EQUAL),
    "ExtractorConfig.path": ("test_extractor_path", "bundled Inception ('') vs a copy given by path",
                             ("same recorded checksum (what identifies the network in every FID) and "
                              "bit-identical features")),
    "DINOv2Config.path": ("test_dinov2_path", "a DINOv2-family file vs a byte-identical copy in another folder",
                          "same recorded sha256 (the identity in every FD-DINOv2) and bit-identical features"),
}


def _fields_of(test: str) -> list[str]:
    return [f for f, (t, _, _) in INERT.items() if t == test]


def _dataclasses_in(typ) -> list[type]:
    """Dataclass types inside an annotation (Optional[X], dict[str, X], tuple[X, ...], X)."""
    if dataclasses.is_dataclass(typ) and isinstance(typ, type):
        return [typ]
    return [c for arg in typing.get_args(typ) for c in _dataclasses_in(arg)]


def config_classes() -> list[type]:
    """Every config dataclass: those of vtp_core.config and dit_eval.config, and every dataclass reachable
    through the fields of those and of the study."""
    import dit_eval.config
    import vtp_core.config
    from sweeps.schema import Study

    todo = [Study] + [c for m in (vtp_core.config, dit_eval.config) for c in vars(m).values()
                      if isinstance(c, type) and dataclasses.is_dataclass(c) and c.__module__ == m.__name__]
    seen: dict[type, None] = {}
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen[cls] = None
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            todo += _dataclasses_in(hints[f.name])
    return list(seen)


def unversioned_fields() -> list[str]:
    return sorted(f"{cls.__name__}.{f.name}" for cls in config_classes() for f in dataclasses.fields(cls)
                  if not f.metadata.get("versioned", True))


def test_every_unversioned_field_is_proven_inert():
    found = set(unversioned_fields())
    assert "TokenizerConfig.ckpt_every" in found and "DataConfig.path" in found  # the walk works
    missing, stale = sorted(found - set(INERT)), sorted(set(INERT) - found)
    assert not missing, (f"unversioned fields without a proof that they change no number: {missing}; add a "
                         f"case to INERT in {__file__} (or make the field versioned)")
    assert not stale, f"INERT lists fields that are not (or no longer) unversioned: {stale}"
    for field, (test, _, _) in INERT.items():
        assert callable(globals().get(test)), f"{field}: INERT names {test}, which is not a test of this module"
        assert field in VARIANTS[test], f"{field}: {test} has no variant for it"


# ----------------------------------------------------------------------------------------------- helpers
def run_stage(kind: str, cfg, out: Path, **inputs: Path) -> dict:
    """One stage through cluster.stages (its entry function and services), metrics.json written."""
    from cluster import stages

    inputs = {k: Path(v) for k, v in inputs.items()}
    ctx = StageContext(out=out, inputs=inputs, progress=False, log=LOG,
                       services=stages.services(kind, inputs, "cpu"))
    out.mkdir(parents=True, exist_ok=True)
    metrics = stages.entry(kind)(cfg, ctx)
    atomic_write_json(out / "metrics.json", metrics)
    return json.loads((out / "metrics.json").read_text())  # what downstream reads


def drop(d, keys=("wall_s",)):
    """`d` without the given keys at any depth (wall_s: seconds elapsed, not a result)."""
    if isinstance(d, dict):
        return {k: drop(v, keys) for k, v in d.items() if k not in keys}
    if isinstance(d, list):
        return [drop(v, keys) for v in d]
    return d


def assert_identical(a, b, where: str = "") -> None:
    """Nested dicts/lists of tensors, arrays and plain values: same keys, same bits."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), f"{where}: arrays differ"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def tokenizer_blob(stage: Path) -> dict:
    """tokenizer.pt with its config reduced to the versioned fields (the unversioned one was flipped)."""
    blob = load_checkpoint(stage / "tokenizer.pt")
    blob["config"] = versioned_dict(load(TokenizerConfig, blob["config"], strict=False, validate=False))
    return blob


def dit_blob(stage: Path) -> dict:
    from dit_eval.config import DiTSpec

    blob = load_checkpoint(stage / "dit.pt")
    blob["spec"] = versioned_dict(load(DiTSpec, blob["spec"], strict=False, validate=False))
    return blob


def latents_of(stage: Path) -> dict:
    """All latent shards concatenated (the layout is not a result) and the stats."""
    from dit_eval.latents import load_latents, load_stats

    store = load_latents(stage)
    return {**{k: store.all(k) for k in store.KEYS}, "stats": load_stats(stage)}


def npz(path: Path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tf.addfile(info, io.BytesIO(data))


def _unreadable_shard(path: Path, key: str, cls: str) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        _add(tf, f"{key}.jpg", b"not an image")
        _add(tf, f"{key}.txt", b"a caption whose image is unreadable")
        _add(tf, f"{key}.cls", cls.encode())


def write_data(root: Path) -> Path:
    """Captioned, labelled tar shards (`vtp_core.data.synthetic`) with train/ (24 images, then 1 unreadable in
    the middle: its replacement is the next shard's first image) and val/ (8, then 1 unreadable at the end:
    its replacement wraps around to the first image)."""
    from vtp_core.data.synthetic import write_tar_shards

    write_tar_shards(root / "train", 24, 2, n_classes=4, seed=0, with_cls=True)
    _unreadable_shard(root / "train" / "00000_bad.tar", "00000_bad", "blue_circle")
    write_tar_shards(root / "val", 8, 1, n_classes=4, seed=5, with_cls=True)
    _unreadable_shard(root / "val" / "99999_bad.tar", "99999_bad", "red_circle")
    return root


# ----------------------------------------------------------------------------------------------- baseline
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data, LPIPS file, extractor and one baseline run of every stage; tests run variants against it."""
    from vtp_core.data.index import load_index
    from vtp_core.losses.lpips import write_random_lpips

    root = tmp_path_factory.mktemp("unversioned")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VTP_CACHE", str(root / "cache"))  # hermetic data indexes
        w = SimpleNamespace(root=root)
        w.data_a = write_data(root / "disk_a" / "data")
        w.data_b = root / "disk_b" / "copy" / "data"
        shutil.copytree(w.data_a, w.data_b)
        for split in ("train", "test"):  # the labels mean the same classes in both splits
            assert load_index(str(w.data_a), "tar", split).class_names == ("blue_circle", "green_circle",
                                                                           "red_circle", "yellow_circle")
        w.lpips_a = root / "disk_a" / "lpips_vgg16.pt"
        sha = write_random_lpips(w.lpips_a)
        w.lpips_b = root / "disk_b" / "lpips_vgg16.pt"
        shutil.copyfile(w.lpips_a, w.lpips_b)

        w.data = small.data(dataset="tar", path=str(w.data_a), image_size=16, storage="memory",
                            max_bad_fraction=0.3)
        w.tok = small.tokenizer(recipe="clip_ssl_ae", batch_size=8, steps=5, warmup_steps=2, global_crop=12,
                                local_crop=8, rec_loss="l1_lpips", lpips_weights=str(w.lpips_a), lpips_sha256=sha,
                                stage2_steps=2, disc_layers=2, disc_channels=8, ckpt_every=2, log_every=1,
                                num_workers=0, data=w.data)
        w.probe = small.probe(n_train=16, n_test=6, probe_epochs=2, batch_size=4, data=w.data)
        w.latents = small.latents(data=w.data, n_images=0, stats_subset=16, shard_size=8, batch_size=4)
        w.refstats = small.refstats(data=w.data, split="test", n_images=6)
        w.dit = small.dit(steps=5, batch_size=4, ckpt_every=2, log_every=1, num_classes=4)
        w.sample = small.sample(n_samples=8, steps=3, shard_size=4, batch_size=2)
        w.fid = FIDConfig(allow_low_n=True)
        for cfg in (w.tok, w.probe, w.latents, w.refstats, w.dit, w.sample, w.fid):
            check(cfg)  # valid configs, as a study would give them

        w.ext = root / "extractor"
        run_stage("extractor", small.extractor(name="random_cnn"), w.ext)
        w.base = tokenizer_chain(w, w.tok, w.probe, w.latents, w.refstats, root / "base")
        w.base.dit = root / "base" / "dit"
        run_stage("dit", w.dit, w.base.dit, latents=w.base.latents)
        w.base.sample = root / "base" / "sample"
        run_stage("sample", w.sample, w.base.sample, dit=w.base.dit, latents=w.base.latents,
                  pretrain=w.base.pretrain)
        w.base.fid = root / "base" / "fid"
        run_stage("fid", w.fid, w.base.fid, sample=w.base.sample, extractor=w.ext, refstats=w.base.refstats)
        yield w


@pytest.fixture
def w(world, monkeypatch):
    """The baseline world, with its hermetic VTP_CACHE set for the test's own runs."""
    monkeypatch.setenv("VTP_CACHE", str(world.root / "cache"))
    return world


def tokenizer_chain(w, tok, probe, latents, refstats, out: Path) -> SimpleNamespace:
    """The stages that read DataConfig: pretrain, then probe and latents of that tokenizer, and refstats."""
    s = SimpleNamespace(pretrain=out / "pretrain", probe=out / "probe", latents=out / "latents",
                        refstats=out / "refstats")
    run_stage("pretrain", tok, s.pretrain)
    run_stage("probe", probe, s.probe, pretrain=s.pretrain, extractor=w.ext)
    run_stage("latents", latents, s.latents, pretrain=s.pretrain)
    run_stage("refstats", refstats, s.refstats, extractor=w.ext)
    return s


def metrics(stage: Path) -> dict:
    return drop(json.loads((stage / "metrics.json").read_text()))


# ----------------------------------------------------------------------------------------------- the cases
VARIANTS: dict[str, dict[str, typing.Callable]] = {
    "test_data_field": {
        "DataConfig.path": lambda w, d: dataclasses.replace(d, path=str(w.data_b)),
        "DataConfig.storage": lambda w, d: dataclasses.replace(d, storage="lazy"),
        "DataConfig.max_bad_fraction": lambda w, d: dataclasses.replace(d, max_bad_fraction=0.5),
    },
    "test_pretrain_field": {
        "TokenizerConfig.ckpt_every": lambda w, t: dataclasses.replace(t, ckpt_every=3),
        "TokenizerConfig.log_every": lambda w, t: dataclasses.replace(t, log_every=3),
        "TokenizerConfig.num_workers": lambda w, t: dataclasses.replace(t, num_workers=2),
        "TokenizerConfig.lpips_weights": lambda w, t: dataclasses.replace(t, lpips_weights=str(w.lpips_b)),
        "TokenizerConfig.checkpoint_blocks": lambda w, t: dataclasses.replace(t, checkpoint_blocks=True),
    },
    "test_compile_field": {"TokenizerConfig.compile": lambda w, t: dataclasses.replace(t, compile=False)},
    "test_probe_batch_size": {"ProbeConfig.batch_size": lambda w, p: dataclasses.replace(p, batch_size=3)},
    "test_latents_field": {
        "LatentsConfig.shard_size": lambda w, c: dataclasses.replace(c, shard_size=12),
        "LatentsConfig.batch_size": lambda w, c: dataclasses.replace(c, batch_size=3),
    },
    "test_dit_field": {
        "DiTSpec.ckpt_every": lambda w, c: dataclasses.replace(c, ckpt_every=3),
        "DiTSpec.log_every": lambda w, c: dataclasses.replace(c, log_every=3),
    },
    "test_sample_field": {
        "SampleConfig.shard_size": lambda w, c: dataclasses.replace(c, shard_size=6),
        "SampleConfig.batch_size": lambda w, c: dataclasses.replace(c, batch_size=3),
    },
    "test_refstats_npz": {"RefStatsConfig.npz": None},
    "test_anchor_field": {
        "AnchorConfig.name": lambda w, a: dataclasses.replace(a, name="other"),
        "AnchorConfig.checkpoint": lambda w, a: dataclasses.replace(a, checkpoint=str(w.copy)),
        "AnchorConfig.tokenizer_flops": lambda w, a: dataclasses.replace(a, tokenizer_flops=1e21),
    },
    "test_extractor_path": {"ExtractorConfig.path": None},
    "test_dinov2_path": {"DINOv2Config.path": None},
}


# ----------------------------------------------------------------------------------------------- tolerances
def assert_batched_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """float32 outputs of the same network on the same inputs, run in batches of another size. The batch size
    changes only how the matmul kernels block the rows, hence the order of the float32 additions inside each
    dot product (length <= 256 here): a few ulp (float32: 6e-8 relative) per layer, ~1e-6 after the tokenizer's
    ~10 matmuls. Allowed: 1e-5 of the tensor's scale, 10x that estimate (on CPU the two
    runs are bit-identical; an injected 2e-5 relative error is refused)."""
    scale = max(a.abs().max().item(), 1e-12)
    err = (a.double() - b.double()).abs().max().item()
    assert err <= 1e-5 * scale, f"{what}: max |diff| {err:.3g} > 1e-5 x scale {scale:.3g}"


def assert_uint8_close(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """uint8 images made from float32 values that may differ by ~1e-6 relative (see assert_batched_close) by
    `to_uint8` (x255, round half up): a value moves to the next level only when it lies within ~255 x 1e-5 of a
    rounding boundary, i.e. ~0.5 % of values, and by one level. Allowed: 1 level in at most 1 % of the values
    (a real change, e.g. other noise or weights, moves most values by many levels)."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8, what
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert d.max() <= 1, f"{what}: a value differs by {d.max()} levels"
    assert (d > 0).mean() <= 0.01, f"{what}: {(d > 0).mean():.2%} of the values differ"


def assert_frechet_close(fid_a: float, fid_b: float, feats_a: np.ndarray, feats_b: np.ndarray, what: str) -> None:
    """Two FIDs against the same reference, of two image sets with features feats_a / feats_b. A FID is the
    squared 2-Wasserstein distance between Gaussians, and W2 is a metric, so |sqrt(FID_a) - sqrt(FID_b)| is at
    most W2 between the two sets' Gaussians: the bound is computed from the compared images themselves (0 when
    their features agree). Plus 1e-6 x (1 + sqrt FID) for the float64 eigen-decompositions."""
    from dit_eval.frechet import feature_stats, frechet_distance

    bound = np.sqrt(frechet_distance(*feature_stats(feats_a), *feature_stats(feats_b)))
    gap = abs(np.sqrt(fid_a) - np.sqrt(fid_b))
    assert gap <= bound + 1e-6 * (1 + np.sqrt(max(fid_a, fid_b))), f"{what}: {fid_a} vs {fid_b} (W2 bound {bound})"


def psnr_bound(real: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """A bound on |PSNR_a - PSNR_b| computed from the two reconstructions themselves: per image
    |10 log10(mse_a / mse_b)| <= 10/ln 10 x |mse_a - mse_b| / min(mse_a, mse_b), and psnr_uint8 is a mean over
    images, so it moves by at most the largest per-image bound (0 for identical reconstructions)."""
    n = real[0].size
    ea, eb = ((x.astype(np.float64) - real.astype(np.float64)).reshape(len(real), -1) for x in (a, b))
    d_mse = (np.abs(ea ** 2 - eb ** 2)).sum(1) / n
    mse = np.minimum((ea ** 2).mean(1), (eb ** 2).mean(1))
    return float(np.max(10 / np.log(10) * d_mse / np.maximum(mse, 1e-12)))


# ----------------------------------------------------------------------------------------------- the cases
@pytest.mark.slow
@pytest.mark.parametrize("field", _fields_of("test_data_field"))
def test_data_field(field, w, tmp_path):
    """DataConfig is read by pretrain (train split), probe (both splits; centre crop, and squash for zero-shot),
    latents and refstats: all four run again on the flipped data and every output is bit-identical. Each split
    has an unreadable image, so storage and max_bad_fraction act (max_bad_fraction decides only whether a stage
    stops; one that finishes must have the same numbers)."""
    from vtp_core.data import class_names, load_captions, load_split

    d = VARIANTS["test_data_field"][field](w, w.data)
    for split in ("train", "test"):  # what every stage reads: same pixels, labels, captions at each position
        (ia, la), (ib, lb) = load_split(w.data, split), load_split(d, split)
        assert len(ia) == len(ib) == (25 if split == "train" else 9)
        assert np.array_equal(np.asarray(ia), np.asarray(ib)) and np.array_equal(la, lb), split
        ca, cb = load_captions(w.data, split), load_captions(d, split)
        assert [ca[i] for i in range(len(ca))] == [cb[i] for i in range(len(cb))], split
    assert class_names(w.data) == class_names(d)
    s = tokenizer_chain(w, dataclasses.replace(w.tok, data=d), dataclasses.replace(w.probe, data=d),
                        dataclasses.replace(w.latents, data=d), dataclasses.replace(w.refstats, data=d), tmp_path)
    assert_identical(tokenizer_blob(w.base.pretrain), tokenizer_blob(s.pretrain), "tokenizer.pt")
    for stage in ("pretrain", "probe", "latents", "refstats"):
        assert_identical(metrics(getattr(w.base, stage)), metrics(getattr(s, stage)), f"{stage} metrics")
    assert_identical(latents_of(w.base.latents), latents_of(s.latents), "latents")
    assert_identical(npz(w.base.refstats / "stats.npz"), npz(s.refstats / "stats.npz"), "refstats")


@pytest.mark.parametrize("field", _fields_of("test_pretrain_field"))
def test_pretrain_field(field, w, tmp_path):
    """Checkpoint and log cadence (read by stage 1 and stage 2), loader workers, the LPIPS file's path: the same
    tokenizer.pt tensors and the same metrics, final_losses included (a window of the last 20 steps, not of
    log_every: with 5 steps, log_every 1 vs 3 would otherwise average 1 vs 3 steps)."""
    run_stage("pretrain", VARIANTS["test_pretrain_field"][field](w, w.tok), tmp_path / "pretrain")
    assert_identical(tokenizer_blob(w.base.pretrain), tokenizer_blob(tmp_path / "pretrain"), "tokenizer.pt")
    assert_identical(metrics(w.base.pretrain), metrics(tmp_path / "pretrain"), "metrics")


def test_compile_field(w, tmp_path):
    """`compile` (on by default) compiles each block on CUDA only. Here, on CPU, flipping it leaves the stage
    bit-identical: the same tokenizer.pt tensors and metrics. On CUDA the compiled step rounds differently
    from the eager one; its proof is tests/vtp_core/test_core_compile.py::test_compiled_step_matches_eager,
    which compiles every block `compile_towers` compiles (backend aot_eager, the graphs inductor receives) and
    holds a clip+ssl+rec step's losses and gradients to the eager ones at a float tolerance it justifies."""
    import importlib.util

    assert w.tok.compile is True  # the baseline ran with the default
    run_stage("pretrain", VARIANTS["test_compile_field"]["TokenizerConfig.compile"](w, w.tok), tmp_path / "pretrain")
    assert_identical(tokenizer_blob(w.base.pretrain), tokenizer_blob(tmp_path / "pretrain"), "tokenizer.pt")
    assert_identical(metrics(w.base.pretrain), metrics(tmp_path / "pretrain"), "metrics")
    proof = Path(__file__).parent / "vtp_core" / "test_core_compile.py"
    spec = importlib.util.spec_from_file_location("compile_proof", proof)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.test_compiled_step_matches_eager)  # the proof the INERT entry names exists


def test_probe_batch_size(w, tmp_path, monkeypatch):
    """The encode batch of the probe: features within assert_batched_close, reconstructions within
    assert_uint8_close, PSNR within the bound those differences allow, rFID within its W2 bound. Accuracies
    are argmaxes: an image's class flips only if two of its logits tie to ~1e-6 relative, so they are compared
    exactly. Where the features and reconstructions come out bit-identical (the CI CPU), every metric must."""
    from dit_eval.extractors import load_extractor
    from vtp_core import probe

    seen: dict[int, dict] = {}
    extract, reconstruct = probe.extract_features, probe.reconstruct

    def spy_extract(tok, images, batch, device):
        out = extract(tok, images, batch, device)
        seen[batch].setdefault("features", []).append(out)
        return out

    def spy_reconstruct(tok, images, batch, device):
        out = reconstruct(tok, images, batch, device)
        seen[batch].update(real=np.asarray(images), recon=out)
        return out

    monkeypatch.setattr(probe, "extract_features", spy_extract)
    monkeypatch.setattr(probe, "reconstruct", spy_reconstruct)
    variant = VARIANTS["test_probe_batch_size"]["ProbeConfig.batch_size"](w, w.probe)
    out = {}
    for cfg in (w.probe, variant):  # the baseline again, spied (it must reproduce the fixture's numbers)
        seen[cfg.batch_size] = {}
        run_stage("probe", cfg, tmp_path / f"probe-{cfg.batch_size}", pretrain=w.base.pretrain, extractor=w.ext)
        out[cfg.batch_size] = metrics(tmp_path / f"probe-{cfg.batch_size}")
    ma, mb = out[w.probe.batch_size], out[variant.batch_size]
    assert_identical(metrics(w.base.probe), ma, "baseline probe")
    sa, sb = seen[w.probe.batch_size], seen[variant.batch_size]
    for i, (fa, fb) in enumerate(zip(sa["features"], sb["features"])):
        for k in fa:
            assert_batched_close(fa[k], fb[k], f"features[{i}].{k}")
    assert np.array_equal(sa["real"], sb["real"])
    assert_uint8_close(sa["recon"], sb["recon"], "reconstructions")
    for k in ("linear_probe", "linear_probe_pre", "zero_shot", "zero_shot_top5", "n_train", "n_test"):
        assert ma[k] == mb[k], k
    assert abs(ma["psnr"] - mb["psnr"]) <= psnr_bound(sa["real"], sa["recon"], sb["recon"]) + 1e-9
    ext = load_extractor(w.ext)
    assert_frechet_close(ma["rfid"]["value"], mb["rfid"]["value"], ext(sa["recon"]), ext(sb["recon"]), "rFID")
    assert_identical(drop(ma, ("value", "psnr")), drop(mb, ("value", "psnr")), "probe protocol")
    same = all(torch.equal(fa[k], fb[k]) for fa, fb in zip(sa["features"], sb["features"]) for k in fa)
    if same and np.array_equal(sa["recon"], sb["recon"]):
        assert_identical(ma, mb, "probe metrics")


@pytest.mark.parametrize("field", _fields_of("test_latents_field"))
def test_latents_field(field, w, tmp_path):
    """shard_size 8 vs 12 with batch_size 4: the encode batches are the same rows either way (shards are cut at
    multiples of the batch), only the files differ: bit-identical latents and stats, and a DiT trained on
    them is bit-identical too. batch_size 4 vs 3: latents within assert_batched_close; the stats (float64 mean
    and std over those latents, stored float32) move by at most as much as the latents (std is 1-Lipschitz in
    the max norm up to sqrt(n/(n-1))), so 2x that bound; bit-identical latents must give identical stats."""
    lat = tmp_path / "latents"
    cfg = VARIANTS["test_latents_field"][field](w, w.latents)
    run_stage("latents", cfg, lat, pretrain=w.base.pretrain)
    a, b = latents_of(w.base.latents), latents_of(lat)
    ma, mb = metrics(w.base.latents), metrics(lat)
    if field == "LatentsConfig.shard_size":
        assert ma["n_shards"] == 4 and mb["n_shards"] == 3  # the layout did change
        assert_identical(a, b, "latents")
        assert_identical(drop(ma, ("n_shards",)), drop(mb, ("n_shards",)), "metrics")
        run_stage("dit", w.dit, tmp_path / "dit", latents=lat)
        assert_identical(dit_blob(w.base.dit), dit_blob(tmp_path / "dit"), "dit.pt trained on the other layout")
        return
    assert torch.equal(a["labels"], b["labels"])
    for k in ("latents", "latents_flip"):
        assert_batched_close(a[k], b[k], k)
    scale = max(a["latents"].abs().max().item(), a["latents_flip"].abs().max().item())
    for k in ("mean", "std"):
        err = (a["stats"][k] - b["stats"][k]).abs().max().item()
        assert err <= 2e-5 * scale, f"stats {k}: {err}"
    if torch.equal(a["latents"], b["latents"]) and torch.equal(a["latents_flip"], b["latents_flip"]):
        assert_identical(a, b, "latents")
        assert_identical(ma, mb, "metrics")


@pytest.mark.parametrize("field", _fields_of("test_dit_field"))
def test_dit_field(field, w, tmp_path):
    """DiT checkpoint and log cadence: the same weights (model and EMA) and metrics (loss_start/loss_end are
    means over a fixed 10 steps, not over log_every)."""
    run_stage("dit", VARIANTS["test_dit_field"][field](w, w.dit), tmp_path / "dit", latents=w.base.latents)
    assert_identical(dit_blob(w.base.dit), dit_blob(tmp_path / "dit"), "dit.pt")
    assert_identical(metrics(w.base.dit), metrics(tmp_path / "dit"), "metrics")


@pytest.mark.parametrize("field", _fields_of("test_sample_field"))
def test_sample_field(field, w, tmp_path):
    """Sample i's noise and label depend only on (seed, i). shard_size 4 vs 6 with batch_size 2: the same
    sampling batches, other files: bit-identical images, labels and gFID. batch_size 2 vs 3: the DiT and the
    decoder see other batch shapes: images within assert_uint8_close, gFID within its W2 bound, labels equal;
    bit-identical images must give the identical gFID."""
    from dit_eval.extractors import load_extractor
    from dit_eval.sample import load_samples

    smp, fid = tmp_path / "sample", tmp_path / "fid"
    run_stage("sample", VARIANTS["test_sample_field"][field](w, w.sample), smp, dit=w.base.dit,
              latents=w.base.latents, pretrain=w.base.pretrain)
    run_stage("fid", w.fid, fid, sample=smp, extractor=w.ext, refstats=w.base.refstats)
    (ia, la), (ib, lb) = load_samples(w.base.sample), load_samples(smp)
    assert np.array_equal(la, lb)
    ma, mb = metrics(w.base.sample), metrics(smp)
    ga, gb = metrics(w.base.fid)["gfid"], metrics(fid)["gfid"]
    if field == "SampleConfig.shard_size" or np.array_equal(ia, ib):
        assert np.array_equal(ia, ib)
        assert_identical(drop(ma, ("n_shards", "n_shards_generated")), drop(mb, ("n_shards", "n_shards_generated")),
                         "sample metrics")
        assert_identical(ga, gb, "gfid")
        return
    assert_uint8_close(ia, ib, "samples")
    ext = load_extractor(w.ext)
    assert_frechet_close(ga["value"], gb["value"], ext(ia), ext(ib), "gFID")
    assert_identical(drop(ga, ("value",)), drop(gb, ("value",)), "gfid protocol")


def test_refstats_npz(w, tmp_path):
    """An ADM-style reference batch and a byte-identical copy of it in another folder (same file name; its
    identity is the versioned sha256): the same stats.npz, metrics and gFID."""
    import hashlib

    from dit_eval.refstats import load_stats_npz

    base = load_stats_npz(w.base.refstats / "stats.npz")
    first = tmp_path / "disk_a" / "VIRTUAL_reference.npz"
    first.parent.mkdir()
    np.savez(first, mu=base["mu"] + 0.5, sigma=base["sigma"] * 1.5)
    copy = tmp_path / "disk_b" / "VIRTUAL_reference.npz"
    copy.parent.mkdir()
    shutil.copyfile(first, copy)
    sha = hashlib.sha256(first.read_bytes()).hexdigest()
    runs = []
    for where in (first, copy):  # the stage folder is named by its id, which npz does not enter: same name
        ref = tmp_path / where.parent.name / "refstats"
        run_stage("refstats", small.refstats(npz=str(where), sha256=sha), ref, extractor=w.ext)
        run_stage("fid", w.fid, ref.parent / "fid", sample=w.base.sample, extractor=w.ext, refstats=ref)
        runs.append((metrics(ref), npz(ref / "stats.npz"), metrics(ref.parent / "fid")))
    assert runs[0][2]["gfid"]["value"] != metrics(w.base.fid)["gfid"]["value"]  # the npz was used
    assert_identical(runs[0], runs[1], "refstats from the npz and from its copy")


@pytest.mark.slow
def test_extractor_path(w, tmp_path):
    """The Inception weights: bundled (path '') vs a byte-identical copy given by path. The extractor stage
    records the file's checksum, every FID carries it, and `load_extractor` refuses a file that no longer has
    it: the checksum, not the path, identifies the network. Shown: same checksum and record (but the `file`
    path itself), and the same pool3 features of the same images, bit for bit."""
    from dit_eval.extractors import bundled_inception_path, load_extractor
    from vtp_core.data import load_split

    copy = tmp_path / "elsewhere" / "inception.pt"
    copy.parent.mkdir()
    shutil.copyfile(bundled_inception_path(), copy)
    images = np.asarray(load_split(w.data, "test")[0])[:2]
    rows = []
    for path in ("", str(copy)):
        out = tmp_path / ("bundled" if not path else "given")
        m = run_stage("extractor", small.extractor(name="inception", path=path), out)
        record = json.loads((out / "extractor.json").read_text())
        assert record["file"] == str(Path(path or bundled_inception_path()).resolve())
        ext = load_extractor(out)
        rows.append((drop(m, ("file",)), drop(record, ("file",)), ext.sha, ext(images)))
    assert rows[0][2] == rows[1][2] and len(rows[0][2]) == 40  # sha1 of the file
    assert_identical(rows[0], rows[1], "inception stage")



@pytest.mark.parametrize("field", _fields_of("test_anchor_field"))
def test_anchor_field(field, tmp_path):
    """A released tokenizer's stage reads the file its sha256 names: the label, the path (a byte-identical copy
    elsewhere) and the FLOPs attributed to it for plotting change nothing in tokenizer.pt or the metrics."""
    import released_layout as rl

    from vtp_core import registry
    from vtp_core.config import AnchorConfig
    from vtp_core.released import sha256_of

    path = rl.save(rl.random_state_dict(registry.get("encoder", "tiny"), registry.get("text", "tiny"), patch=4,
                                        channels=8), tmp_path / "vtp.pt")
    copy = tmp_path / "elsewhere" / "vtp.pt"
    copy.parent.mkdir()
    shutil.copyfile(path, copy)
    base = AnchorConfig(name="vtp-t", checkpoint=str(path), sha256=sha256_of(path), size="tiny", text="tiny")
    flipped = VARIANTS["test_anchor_field"][field](SimpleNamespace(copy=copy), base)
    assert flipped != base and versioned_dict(flipped) == versioned_dict(base)
    outs = []
    for cfg, name in ((base, "a"), (flipped, "b")):
        m = run_stage("anchor", cfg, tmp_path / name)
        outs.append((drop(m), tokenizer_blob(tmp_path / name)))
    assert_identical(outs[0], outs[1], field)


def test_dinov2_path(tmp_path):
    """FD-DINOv2's weights: a small random file of the DINOv2 family vs a byte-identical copy elsewhere. The
    stage records the sha256 the study gives (checked against the file), every FD-DINOv2 carries it, and
    `load_extractor` re-checks it: the checksum, not the path, identifies the network. Shown: same record
    (but the `file` path itself) and the same CLS features of the same images, bit for bit."""
    from timm.models.vision_transformer import VisionTransformer

    from dit_eval.config import DINOv2Config
    from dit_eval.dinov2 import sha256_of
    from dit_eval.extractors import load_extractor

    torch.manual_seed(0)
    net = VisionTransformer(img_size=224, patch_size=14, embed_dim=64, depth=1, num_heads=1, init_values=1e-5,
                            num_classes=0)
    a, b = tmp_path / "a" / "dinov2.pth", tmp_path / "b" / "dinov2.pth"
    a.parent.mkdir()
    b.parent.mkdir()
    torch.save(net.state_dict(), a)
    shutil.copyfile(a, b)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    rows = []
    for path in (a, b):
        out = tmp_path / f"stage-{path.parent.name}"
        m = run_stage("extractor", DINOv2Config(path=str(path), sha256=sha256_of(a)), out)
        record = json.loads((out / "extractor.json").read_text())
        ext = load_extractor(out)
        rows.append((drop(m, ("file",)), drop(record, ("file",)), ext.sha, ext(images)))
    assert_identical(rows[0], rows[1], "dinov2 stage")


def test_tolerances_reject_real_changes():
    """The bounds above hold on the CI CPU with nothing to spare only because its results are bit-identical:
    check here, on made-up data, that they pass rounding-sized differences and refuse real ones."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 8, generator=g)
    assert_batched_close(z, z * (1 + 1e-6 * torch.randn(z.shape, generator=g)), "rounding")
    with pytest.raises(AssertionError, match="scale"):
        assert_batched_close(z, z * (1 + 1e-3 * torch.randn(z.shape, generator=g)), "a change")
    rng = np.random.default_rng(0)
    img = rng.integers(1, 255, (8, 16, 16, 3), dtype=np.uint8)
    flip = img.copy()
    flip.reshape(-1)[rng.choice(img.size, img.size // 200, replace=False)] += 1  # 0.5 % of values, 1 level
    assert_uint8_close(img, flip, "rounding")
    with pytest.raises(AssertionError, match="levels"):
        assert_uint8_close(img, np.clip(img.astype(int) + 2, 0, 255).astype(np.uint8), "a change")
    with pytest.raises(AssertionError, match="values differ"):
        assert_uint8_close(img, (img + (rng.random(img.shape) < 0.05)).astype(np.uint8), "a change")
    from dit_eval.frechet import feature_stats, frechet_distance

    ref = feature_stats(rng.standard_normal((40, 4)))
    fa = rng.standard_normal((40, 4)) + 0.3
    fb = fa + 1e-3 * rng.standard_normal(fa.shape)

    def fid(f):
        return frechet_distance(*feature_stats(f), *ref)

    assert_frechet_close(fid(fa), fid(fb), fa, fb, "nearby sets")
    with pytest.raises(AssertionError, match="W2 bound"):
        assert_frechet_close(fid(fa), fid(fa) + 1.0, fa, fb, "a FID that moved more than its images")
    real = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    assert psnr_bound(real, img[:4, :8, :8], img[:4, :8, :8]) == 0.0
    assert psnr_bound(real, img[:4, :8, :8], flip[:4, :8, :8]) > 0.0
