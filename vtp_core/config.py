"""Frozen configs of the tokenizer stages (`pretrain`, `probe`) and of the data they read.

Why frozen dataclasses: the planner hashes their versioned fields into stage ids, so a config must
not change after it is made. Every default is the VTP method's value (docs/method.md lists each
field with its source): the paper or the released code where they say it, and the named prior
(DINOv2 for SSL, OpenCLIP for the contrastive side and the optimiser) where they are silent. The
embedded demo and the tests override what they need to stay small (sweeps/demo.yaml).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from vtp_core.cfg import spec, unversioned

# recipe name -> (lambda_clip, lambda_ssl); lambda_rec is always on (0.1 by default).
RECIPES: dict[str, tuple[float, float]] = {
    "ae": (0.0, 0.0),
    "clip_ae": (1.0, 0.0),
    "ssl_ae": (0.0, 1.0),
    "clip_ssl_ae": (1.0, 1.0),
}
DATASETS = ("fashion_mnist", "imagefolder", "tar")
STORAGES = ("auto", "memory", "lazy")
DECODES = ("full", "draft")
RESAMPLES = ("torch", "pil")
HEADS_READ = ("pre_bottleneck", "bottleneck")
REC_LOSSES = ("l1_lpips", "l1")
QKV_BIAS = ("qkv", "qv", "none")
ZERO_SHOT_RESIZES = ("squash", "center_crop")


def _sizes(kind: str):
    def names() -> list[str]:
        from vtp_core import registry  # torch: imported only when a size is checked

        return registry.list_sizes(kind)
    return names


@dataclass(frozen=True)
class DataConfig:
    """Where images (and captions) come from. `n_train=0` means the whole set.

    Subsets are nested and deterministic: the first n of one fixed permutation (subset_seed).
    `checksum` identifies the data: the sha256 of its manifest (`python -m vtp_core.data.index`
    prints it). The planner fills it in from the data when a study does not pin it, so a stage id
    changes whenever the data does; a pinned value must match the data.
    """

    dataset: str = spec("tar", choices=DATASETS, source="paper §4.1 (DataComp-1B, 277M filtered)",
                        doc="fashion_mnist (Debian package), imagefolder (class folders) or tar (webdataset shards)")
    image_size: int = spec(256, gt=0, source="released code: HF config (image_size 256)", doc="side of the square training images")
    # full: ADM's centre crop on the fully decoded image, the method's preprocessing. draft: large JPEGs
    # are decoded at 1/2, 1/4 or 1/8 scale by libjpeg first (short side kept >= 2·image_size), then the same
    # halvings, resize and crop: ~1.7x the images/s at 64 px from 300-600 px photos, ~2.5x at 32 (bench/decode.py),
    # but an approximation (mean 0.9 levels at 64 px, up to ~1/3 of an edge's contrast on edge pixels; bounds in
    # tests/vtp_core/test_core_decode.py), so versioned and off by default.
    jpeg_decode: str = spec("full", choices=DECODES, source="ours (full = ADM center_crop_arr, the method's)",
                            doc="full | draft: JPEGs decoded at reduced scale first (faster; within the stated "
                                "tolerance of full, tests/vtp_core/test_core_decode.py)")
    # The resize after decode (user JPEG data; Fashion-MNIST is resized once, in memory): the method's filter
    # (PIL's antialiased bicubic, bilinear for zero-shot) run by torch's uint8 kernel or by PIL's. The same
    # filter, so the same pixels up to fixed-point rounding (at most 1 level per pass, 2 in all; mean ~0.04 levels),
    # at ~1/3 of PIL's time: torch is the default; pil reproduces ADM's center_crop_arr bit for bit.
    resample: str = spec("torch", choices=RESAMPLES, source="ours (the method's PIL bicubic filter, torch's kernel)",
                         doc="torch | pil: which library's kernel resizes decoded images (within 2 levels)")
    n_train: int = spec(0, ge=0, source="grid axis data_size", doc="nested training subset; 0 = all")
    subset_seed: int = spec(0, source="ours", doc="seed of the nested-subset permutation")
    path: str = unversioned("", source="yours", doc="data folder or shard pattern (identity: checksum)")
    checksum: str = spec("", source="ours", doc="manifest sha256 of the data (filled by the planner)")
    max_bad_fraction: float = unversioned(0.01, ge=0, le=1, source="ours",
                                          doc="unreadable share of images that stops a stage")
    # "memory" decodes a split once into RAM, "lazy" reads images from their files on access
    # (DataComp/LAION scale); "auto" picks lazy when the decoded split would exceed VTP_DECODED_MAX_GB (8)
    storage: str = unversioned("auto", choices=STORAGES, source="ours", doc="memory | lazy | auto (same pixels)")
    shuffle_chunk: int = spec(0, ge=0, source="ours (webdataset-style shard-level shuffle)",
                              doc="images kept together, in file order, in the sample order; the chunks are "
                                  "shuffled every epoch. 0 = auto: 256 for tar shards (reads run forward through "
                                  "a shard), 1 (a uniform shuffle) otherwise")

    def problems(self):
        if self.dataset != "fashion_mnist" and not self.path:
            yield "path", f"required for dataset {self.dataset!r} (a folder or shard pattern you supply)"


@dataclass(frozen=True)
class TokenizerConfig:
    """One tokenizer pre-training run (stage 1, optionally stage 2)."""

    # ---- what is trained
    recipe: str = spec("clip_ssl_ae", choices=RECIPES, source="paper §4.3 (VTP = CLIP+SSL+AE)",
                       doc="ae | clip_ae | ssl_ae | clip_ssl_ae")
    encoder: str = spec("L", choices=_sizes("encoder"), source="paper §4.1 (ViT-L in the scaling runs)",
                        doc="encoder size (vtp_core/registry.py)")
    decoder: str = spec("L4", choices=_sizes("decoder"), source="paper §4.1, §4.3 (4 ViT-L layers)",
                        doc="pixel decoder size")
    text: str = spec("base", choices=_sizes("text"), source="paper §4.1 (12 layers, width 768)",
                     doc="text tower size")
    patch: int = spec(16, gt=0, source="released code: HF config (patch 16)", doc="patch side in pixels")
    latent_channels: int = spec(64, gt=0, source="released code: HF config (feature_bottleneck 64)", doc="latent channels (f16d64)")
    heads_read: str = spec("pre_bottleneck", choices=HEADS_READ, source="released code: HF config (bottleneck_ae_only: true)",
                           doc="CLIP/DINO heads read pre-bottleneck D-dim tokens, or the latent")
    qk_norm: bool = spec(True, source="paper §4.1 (QKNorm; the released L config has it off)",
                         doc="RMSNorm over the head dim on q and k")
    qkv_bias: str = spec("qkv", choices=QKV_BIAS, source="released code (qkv_bias=True)",
                         doc="qkv: biases on q, k, v; qv: k bias masked (EVA); none")
    rope_base: float = spec(100.0, gt=0, source="released code (RoPE base 100)", doc="axial 2D RoPE base")
    text_context: int = spec(0, ge=0, source="released code: HF config (text context 77)", doc="0 = the text size's context")
    # ---- batches (paper: B_clip 16k, B_ssl 4k, B_rec 2k; SSL and rec are random subsets of the CLIP batch)
    batch_size: int = spec(16384, gt=0, source="paper §3.6, §4.1 (16k)", doc="B_clip, the whole batch")
    ssl_fraction: float = spec(0.25, gt=0, le=1, source="paper §3.6 (4k of 16k)", doc="B_ssl / batch_size")
    rec_fraction: float = spec(0.125, gt=0, le=1, source="paper §3.6 (2k of 16k)", doc="B_rec / batch_size")
    # ---- losses
    lambda_rec: float = spec(0.1, ge=0, source="paper §4.1", doc="weight of L_rec")
    rec_loss: str = spec("l1_lpips", choices=REC_LOSSES, source="paper eq. 1 (L1 + LPIPS, 1:1)",
                         doc="l1_lpips needs lpips_weights; l1 must be said explicitly")
    lambda_lpips: float = spec(1.0, ge=0, source="paper eq. 1", doc="LPIPS weight inside L_rec")
    lpips_sha256: str = spec("", source="yours", doc="sha256 of the VGG16 LPIPS file (identifies the loss)")
    lpips_weights: str = unversioned("", source="yours", doc="path of that file")
    logit_scale_max: float = spec(math.log(100.0), source="prior: OpenCLIP clamp ln 100", doc="CLIP logit-scale clamp")
    # ---- SSL (paper: "closely follow DINOv2"; every value below is DINOv2's default config)
    n_local_crops: int = spec(8, ge=0, source="prior: DINOv2 (8 local crops)", doc="SSL local crops per image")
    global_crop: int = spec(224, gt=0, source="prior: DINOv2 (224)", doc="SSL global crop side")
    local_crop: int = spec(96, gt=0, source="prior: DINOv2 (96)", doc="SSL local crop side")
    global_crop_scale: tuple[float, float] = spec((0.32, 1.0), gt=0, le=1, source="prior: DINOv2",
                                                  doc="area fraction of global crops")
    local_crop_scale: tuple[float, float] = spec((0.05, 0.32), gt=0, le=1, source="prior: DINOv2",
                                                 doc="area fraction of local crops")
    dino_prototypes: int = spec(65536, gt=0, source="prior: DINOv2 (K = 65536)", doc="DINO/iBOT prototypes")
    dino_hidden: int = spec(2048, gt=0, source="prior: DINOv2", doc="DINO head MLP width")
    dino_bottleneck: int = spec(256, gt=0, source="prior: DINOv2", doc="DINO head bottleneck")
    mask_probability: float = spec(0.5, ge=0, le=1, source="prior: DINOv2", doc="share of global crops with an iBOT mask")
    mask_ratio: tuple[float, float] = spec((0.1, 0.5), ge=0, le=1, source="prior: DINOv2",
                                           doc="iBOT mask ratio range (block masking)")
    teacher_temp: float = spec(0.04, gt=0, source="prior: DINOv2", doc="teacher temperature at the start")
    teacher_temp_final: float = spec(0.07, gt=0, source="prior: DINOv2", doc="after the warm-up")
    teacher_temp_warmup: float = spec(0.3, ge=0, le=1, source="prior: DINOv2 (30 of 100 epochs)",
                                      doc="fraction of the steps")
    student_temp: float = spec(0.1, gt=0, source="prior: DINOv2", doc="student temperature")
    center_momentum: float = spec(0.9, ge=0, le=1, source="prior: DINOv2", doc="softmax-centering momentum")
    koleo_weight: float = spec(0.1, ge=0, source="prior: DINOv2", doc="KoLeo weight inside L_ssl")
    ema_momentum: float = spec(0.992, ge=0, le=1, source="prior: DINOv2", doc="teacher EMA momentum at the start")
    ema_momentum_final: float = spec(1.0, ge=0, le=1, source="prior: DINOv2", doc="cosine to this at the end")
    # ---- stochastic depth (DINOv2 sample drop: per residual branch, a random subset of the batch skips it)
    clip_drop_rate: float = spec(0.1, ge=0, lt=1, source="prior: low end of 0.1-0.3 for CLIP at L (the released code has the field, not its value)",
                                 doc="drop rate of the encoder on the CLIP batch")
    ssl_drop_rate: float = spec(0.3, ge=0, lt=1, source="prior: DINOv2 drop_path_rate 0.3",
                                doc="drop rate of the SSL student (the teacher never drops)")
    rec_drop_rate: float = spec(0.0, ge=0, lt=1, source="prior: no drop for reconstruction", doc="drop rate on the rec batch")
    # ---- optimiser and schedule (not published; OpenCLIP large-batch priors, DINOv2 clip)
    lr: float = spec(5e-4, gt=0, source="prior: OpenCLIP (5e-4 .. 1e-3)", doc="peak learning rate")
    weight_decay: float = spec(0.2, ge=0, source="prior: OpenCLIP", doc="AdamW weight decay")
    betas: tuple[float, float] = spec((0.9, 0.98), ge=0, lt=1, source="prior: OpenCLIP", doc="AdamW betas")
    adam_eps: float = spec(1e-6, gt=0, source="prior: OpenCLIP", doc="AdamW eps")
    grad_clip: float = spec(3.0, ge=0, source="prior: DINOv2 clip_grad 3.0", doc="global grad-norm clip; 0 = off")
    warmup_steps: int = spec(2000, ge=0, source="prior: OpenCLIP (2k-10k)", doc="linear warm-up, at most this many steps")
    warmup_fraction: float = spec(0.1, ge=0, lt=1, source="prior: DINOv2 (10 of 100 epochs)",
                                  doc="... and at most this fraction of a cell's steps; then cosine to 0")
    steps: int = spec(1, gt=0, source="planner: budget / FLOPs (or samples) per step", doc="training steps")
    seed: int = spec(0, source="grid axis seed", doc="seed of the run")
    data: DataConfig = spec(DataConfig(), source="study data:", doc="pre-training data")
    # ---- stage 2 (GAN decoder fine-tuning, encoder frozen; not published: VA-VAE/LDM priors)
    stage2_steps: int = spec(0, ge=0, source="ours: scaling curves without stage 2 (the paper's GAN stage is unspecified)",
                             doc="GAN decoder fine-tuning steps; 0 = off")
    stage2_lr: float = spec(1e-4, gt=0, source="prior: VA-VAE / LDM", doc="decoder and discriminator lr")
    disc_start: int = spec(0, ge=0, source="prior: VA-VAE starts at 5001", doc="stage-2 step the GAN term starts")
    disc_weight: float = spec(0.5, ge=0, source="prior: LDM LPIPSWithDiscriminator", doc="adaptive GAN weight scale")
    disc_layers: int = spec(3, gt=0, source="prior: PatchGAN", doc="discriminator depth")
    disc_channels: int = spec(64, gt=0, source="prior: PatchGAN", doc="discriminator base width")
    # ---- how it runs (numbers do not depend on these)
    compile: bool = unversioned(True, source="ours",
                                doc="torch.compile each block on CUDA (ignored on CPU); eager and compiled agree to float rounding")
    checkpoint_blocks: bool = unversioned(False, source="ours: set by the planner's memory plan",
                                          doc="activation checkpointing of every transformer block (recomputed in "
                                              "backward, RNG replayed): less memory, the same numbers")
    micro_batches: int = spec(1, ge=1, source="ours: set by the planner's memory plan",
                              doc="each objective's per-GPU batch in this many micro-batches; the global losses "
                                  "(CLIP, KoLeo) through gradient caching")
    ckpt_every: int = unversioned(500, gt=0, source="ours", doc="checkpoint cadence in steps")
    log_every: int = unversioned(50, gt=0, source="ours", doc="log cadence in steps")
    num_workers: int = unversioned(-1, ge=-1, source="ours",
                                   doc="data-loader worker processes; -1 = auto: the job's CPUs less one on CUDA, "
                                       "none on a CPU run (an in-process prefetch thread)")

    @property
    def lpips_on(self) -> bool:
        return self.rec_loss == "l1_lpips"

    def problems(self):
        """Cross-field rules: a degenerate SSL setup or reconstruction loss is refused, not trained."""
        if self.data.image_size % self.patch:
            yield "data.image_size", f"{self.data.image_size} is not a multiple of tokenizer.patch={self.patch}"
        for name in ("global_crop_scale", "local_crop_scale", "mask_ratio"):
            lo, hi = getattr(self, name)
            if lo > hi:
                yield name, f"[{lo}, {hi}] is not a range (first value > second)"
        yield from ssl_problems(self)
        if self.rec_loss == "l1_lpips" and not self.lpips_weights:
            yield "rec_loss", ("l1_lpips (the paper's L1 + LPIPS) needs tokenizer.lpips_weights, a VGG16 LPIPS file "
                               "built with `python -m vtp_core.losses.lpips`; or say rec_loss: l1")
        elif self.rec_loss == "l1_lpips" and len(self.lpips_sha256) != 64:
            yield "lpips_sha256", (f"{self.lpips_sha256!r}: give the 64-hex-digit sha256 of {self.lpips_weights} "
                                   f"(`python -m vtp_core.losses.lpips` prints it)")


def ssl_problems(cfg: TokenizerConfig):
    """(field, message) for SSL settings that would train nothing: crops under 2x2 patches or off the patch
    grid, and iBOT masks that mask no patch. Only for recipes with SSL."""
    if not RECIPES[cfg.recipe][1]:
        return
    for name in ("global_crop", "local_crop") if cfg.n_local_crops else ("global_crop",):
        side = getattr(cfg, name)
        if side % cfg.patch:
            yield name, f"{side} is not a multiple of tokenizer.patch={cfg.patch}"
        elif side // cfg.patch < 2:
            yield name, (f"{side} px is {side // cfg.patch}x{side // cfg.patch} patch(es) of {cfg.patch}; an SSL crop "
                         f"needs at least 2x2 patches")
        elif side > cfg.data.image_size:
            yield name, f"{side} is larger than data.image_size={cfg.data.image_size}"
    n_tok = (cfg.global_crop // max(cfg.patch, 1)) ** 2
    b_ssl = max(2, round(cfg.batch_size * cfg.ssl_fraction))
    if int(2 * b_ssl * cfg.mask_probability) == 0:
        yield "mask_probability", (f"{cfg.mask_probability} masks none of the {2 * b_ssl} global crops per step "
                                   f"(iBOT would train nothing)")
    elif round(cfg.mask_ratio[1] * n_tok) < 1:
        yield "mask_ratio", (f"{list(cfg.mask_ratio)} of a {n_tok}-patch global crop rounds to 0 masked patches "
                             f"(iBOT would train nothing; raise global_crop or the ratio)")


def warmup_steps(cfg: TokenizerConfig) -> int:
    """The linear warm-up of one run: min(warmup_steps, round(warmup_fraction · steps)). Peak LR is reached at
    step warm-1 (or step 0 without warm-up), inside every run since warmup_fraction < 1."""
    return min(cfg.warmup_steps, round(cfg.warmup_fraction * cfg.steps))


@dataclass(frozen=True)
class ProbeConfig:
    """Understanding + reconstruction probes of a pretrained tokenizer."""

    n_train: int = spec(100000, gt=0, source="ours: 100 per ImageNet class (paper probe settings UNKNOWN)",
                        doc="linear-probe train images (train split of eval_data)")
    n_test: int = spec(50000, gt=0, source="released code (all 50k ImageNet val)", doc="eval images; also the rFID set")
    probe_epochs: int = spec(30, gt=0, source="ours", doc="full-batch logistic-regression steps")
    probe_lr: float = spec(1e-2, gt=0, source="ours", doc="its learning rate")
    seed: int = spec(0, source="ours", doc="seed of the probe subsets")
    batch_size: int = unversioned(256, gt=0, source="ours", doc="encode batch")
    data: DataConfig = spec(DataConfig(), source="study eval_data:", doc="evaluation data")
    # zero-shot preprocessing: "squash" = VTP's Resize((S, S)), whole image, no crop;
    # "center_crop" = the ADM crop the linear probe and rFID use. Versioned: it changes zero-shot numbers.
    zero_shot_resize: str = spec("squash", choices=ZERO_SHOT_RESIZES, source="released code (Resize((256, 256)), no crop)",
                                 doc="zero-shot preprocessing")


@dataclass(frozen=True)
class AnchorConfig:
    """A released VTP tokenizer (MiniMax-AI/VTP `VTPModel` weights) run through a study's downstream stages.

    Its stage converts the released state dict into this project's `Tokenizer` (`vtp_core.released`); the
    file is identified by its sha256, so the path and the label may change without changing a stage id.
    """

    name: str = unversioned("", source="yours", doc="label of the anchor in the runs table and the plots (e.g. vtp-l)")
    checkpoint: str = unversioned("", source="yours", doc="path of the released weights (.safetensors or a torch "
                                                            "state dict); identity: sha256")
    sha256: str = spec("", source="yours", doc="sha256 of that file")
    size: str = spec("L", choices=_sizes("encoder"), source="released code: VTP-S/B/L (symmetric decoder)",
                     doc="encoder size; the released decoder has the same width, depth and heads")
    text: str = spec("base", choices=_sizes("text"), source="released code: HF config (12 x 768 text tower)",
                     doc="text tower size")
    tokenizer_flops: float = unversioned(0.0, ge=0, source="yours (e.g. the release's paper)",
                                         doc="pre-training FLOPs you attribute to the release, only to place its point "
                                             "on compute axes; 0 = unknown (drawn as a labelled horizontal line)")

    def problems(self):
        if not self.name or not self.name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            yield "name", f"{self.name!r}: give a label of letters, digits, '-', '_' or '.'"
        if not self.checkpoint:
            yield "checkpoint", "required: the path of the released weights"
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            yield "sha256", f"{self.sha256!r}: give the 64 lowercase hex digits of the file's sha256 (sha256sum prints it)"


TAR_SHUFFLE_CHUNK = 256  # ~25 MB of consecutive DataComp-sized JPEGs per run; a 16k batch spans 64 runs


def shuffle_chunk(data: DataConfig) -> int:
    """`data.shuffle_chunk`, with 0 resolved: `TAR_SHUFFLE_CHUNK` for tar shards, 1 (a uniform shuffle) for
    data held in memory or read one file per image, where neighbours in file order gain nothing."""
    if data.shuffle_chunk:
        return data.shuffle_chunk
    return TAR_SHUFFLE_CHUNK if data.dataset == "tar" else 1
