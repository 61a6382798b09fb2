"""Frozen configs of the tokenizer stages (`pretrain`, `probe`).

Why frozen dataclasses: the planner hashes their versioned fields into stage ids, so a config must
not change after it is made; defaults are the embedded demo (Fashion-MNIST 32x32, tiny sizes, CPU).
Where the VTP paper leaves a detail UNKNOWN (METHOD.md), the DINOv2/OpenCLIP default is used and
is a field here, so a study can change it.
"""
from __future__ import annotations

from dataclasses import dataclass

from vtp_core.cfg import unversioned

# recipe name -> (lambda_clip, lambda_ssl); lambda_rec is always on (0.1 by default).
RECIPES: dict[str, tuple[float, float]] = {
    "ae": (0.0, 0.0),
    "clip_ae": (1.0, 0.0),
    "ssl_ae": (0.0, 1.0),
    "clip_ssl_ae": (1.0, 1.0),
}


@dataclass(frozen=True)
class DataConfig:
    """Where images (and captions) come from. `n_train=0` means the whole set.

    Subsets are nested and deterministic: the first n of one fixed permutation (subset_seed).
    """

    dataset: str = "fashion_mnist"  # fashion_mnist | imagefolder | tar
    image_size: int = 32
    n_train: int = 0
    subset_seed: int = 0
    path: str = unversioned("")  # fashion_mnist: default /usr/share/datasets/fashion-mnist
    checksum: str = ""  # optional sha256 of a manifest for user-supplied data (versioned: identifies the data)
    max_bad_fraction: float = unversioned(0.01)
    # user data: "memory" decodes the split once into RAM, "lazy" reads images from their files on access
    # (DataComp/LAION scale); "auto" picks lazy when the decoded split would exceed VTP_DECODED_MAX_GB (8)
    storage: str = unversioned("auto")


@dataclass(frozen=True)
class TokenizerConfig:
    """One tokenizer pre-training run (stage 1, optionally stage 2)."""

    recipe: str = "clip_ssl_ae"
    encoder: str = "tiny"  # registry name (vtp_core.registry)
    decoder: str = "tiny"
    text: str = "tiny"
    patch: int = 4
    latent_channels: int = 8
    heads_read: str = "pre_bottleneck"  # pre_bottleneck (as released) | bottleneck
    batch_size: int = 64  # B_clip (whole batch)
    ssl_fraction: float = 0.25  # B_ssl = batch_size * ssl_fraction
    rec_fraction: float = 0.125  # B_rec = batch_size * rec_fraction
    n_local_crops: int = 2
    lambda_rec: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 10
    steps: int = 100  # derived from the FLOPs budget by the planner
    seed: int = 0
    data: DataConfig = DataConfig()
    stage2_steps: int = 0  # GAN decoder fine-tuning steps (0 = off)
    # --- added by vtp_core (defaults: DINOv2/OpenCLIP where METHOD.md says UNKNOWN, tiny-sized for CPU) ---
    text_context: int = 0  # text context length; 0 = the text size's default (tiny 16, base 77)
    rope_base: float = 100.0
    betas: tuple[float, float] = (0.9, 0.98)  # OpenCLIP prior
    grad_clip: float = 3.0  # global grad-norm clip (DINOv2); 0 = off
    logit_scale_max: float = 4.605170185988092  # ln(100), OpenCLIP clamp
    global_crop: int = 24  # SSL global crop side (DINOv2: 224 of 256)
    local_crop: int = 16  # SSL local crop side (DINOv2: 96)
    global_crop_scale: tuple[float, float] = (0.32, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.32)
    dino_prototypes: int = 256  # K (DINOv2: 65536)
    dino_hidden: int = 256  # head MLP hidden (DINOv2: 2048)
    dino_bottleneck: int = 64  # head bottleneck (DINOv2: 256)
    mask_probability: float = 0.5  # iBOT: fraction of global crops that get a mask
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    teacher_temp: float = 0.04  # warmed up linearly to teacher_temp_final
    teacher_temp_final: float = 0.07
    teacher_temp_warmup: float = 0.3  # fraction of `steps` (DINOv2: 30 of 100 epochs)
    student_temp: float = 0.1
    center_momentum: float = 0.9
    koleo_weight: float = 0.1
    ema_momentum: float = 0.992  # teacher EMA, cosine schedule to ema_momentum_final
    ema_momentum_final: float = 1.0
    lambda_lpips: float = 1.0  # LPIPS weight inside L_rec (on only with lpips_sha256 + lpips_weights)
    lpips_sha256: str = ""  # sha256 of the VGG16 LPIPS weights (versioned: identifies the loss)
    lpips_weights: str = unversioned("")  # path to those weights (a path: not versioned)
    compile: bool = unversioned(False)  # torch.compile the towers (`pretrain.compile_towers`); CUDA only
    # stage 2 (GAN decoder fine-tuning, encoder frozen; METHOD.md §2.2 UNKNOWN -> VA-VAE/LDM priors)
    stage2_lr: float = 1e-4  # decoder and discriminator AdamW lr (constant)
    disc_start: int = 0  # stage-2 step at which the GAN term switches on (VA-VAE: 5001)
    disc_weight: float = 0.5  # scales the adaptive GAN weight (LDM LPIPSWithDiscriminator)
    disc_layers: int = 3  # PatchGAN depth
    disc_channels: int = 64  # PatchGAN base width
    ckpt_every: int = unversioned(50)
    log_every: int = unversioned(10)
    num_workers: int = unversioned(0)


@dataclass(frozen=True)
class ProbeConfig:
    """Understanding + reconstruction probes of a pretrained tokenizer."""

    n_train: int = 2000  # linear-probe train images (from the train split of `data`)
    n_test: int = 1000  # eval images (test split), also the rFID set
    probe_epochs: int = 30
    probe_lr: float = 1e-2
    seed: int = 0
    batch_size: int = unversioned(256)
    data: DataConfig = DataConfig()  # the evaluation data (a study fills in its `eval_data:`)
    # zero-shot preprocessing: "squash" = VTP's Resize((S, S)), whole image, no crop (METHOD.md §5.8);
    # "center_crop" = the ADM crop the linear probe and rFID use. Versioned: it changes zero-shot numbers.
    zero_shot_resize: str = "squash"


ZERO_SHOT_RESIZES = ("squash", "center_crop")
