"""docs/method.md from the config classes themselves: one row per field with its default, where the value
comes from, what it means and which modules read it.

Why generated: the defaults are the method, and a hand-kept copy drifts. `python -m sweeps.method_doc`
rewrites the file; a test fails when the file and the code disagree.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from dit_eval.config import DiTSpec, ExtractorConfig, FIDConfig, LatentsConfig, RefStatsConfig, SampleConfig
from sweeps.schema import Estimate, Grid
from vtp_core.cfg import field_docs
from vtp_core.config import DataConfig, ProbeConfig, TokenizerConfig

REPO = Path(__file__).resolve().parents[1]
SECTIONS = (("grid", Grid), ("tokenizer", TokenizerConfig), ("data / eval_data", DataConfig),
            ("probe", ProbeConfig), ("extractor", ExtractorConfig), ("refstats", RefStatsConfig),
            ("latents", LatentsConfig), ("dit", DiTSpec), ("sample", SampleConfig), ("fid", FIDConfig),
            ("estimate", Estimate))
# where a section's readers live: its own package, and the planner and dispatch that read every section
READERS = {"vtp_core": ("vtp_core", "sweeps", "cluster"), "dit_eval": ("dit_eval", "sweeps", "cluster"),
           "sweeps": ("sweeps", "cluster")}
SKIP_FILES = ("config.py", "method_doc.py", "schema.py")

HEADER = """# The method, field by field

Every default of the suite's configs is the VTP method's value: the paper (VTP, arXiv 2512.13687),
its released code (model definitions, HF configs, the LightningDiT generation configs it ships), or,
where both are silent, the named prior the paper says it follows (DINOv2 for self-supervision,
OpenCLIP for the contrastive side and the optimiser, VA-VAE/LDM for the GAN stage). "ours" marks a
choice of this suite, "yours" a file or path you supply. A study file overrides any field; the
embedded demo (`sweeps/demo.yaml`) overrides many to fit two CPU cores.

This page is generated from the config classes (`python -m sweeps.method_doc`); a test keeps it in
step with the code. *Versioned* fields enter stage ids: changing one re-runs the stages that read it.

Choices the paper leaves open, and what the suite does:
- **Where the heads read**: CLIP and DINO read the pre-bottleneck D-dim tokens, as the released models
  (`heads_read: pre_bottleneck`); the 64-channel latent is trained by reconstruction alone.
- **Warm-up**: linear over min(`warmup_steps`, round(`warmup_fraction` × steps)) steps, then cosine to 0.
  Every cell reaches its peak learning rate, however few steps its budget buys.
- **Samples seen** count the images a recipe trains on: the whole batch with CLIP, the SSL subset
  without it, the reconstruction subset for a plain AE (`budget_samples`, the data-scaling axis).
- **Reconstruction loss**: L1 + LPIPS (VGG16) as the paper; a study without LPIPS weights must say
  `rec_loss: l1`.
- **FID reference**: a seeded, class-balanced subset of the reference split, or an ADM reference
  batch (`refstats: {npz, sha256}`).
- **Stage 2** (GAN decoder tuning) is off: the scaling curves use the stage-1 decoder.

How each metric is measured, and what enters each stage id, is in [protocol.md](protocol.md).
"""

# The model in the method's own terms: the facts the code relies on, in one place (the tables below give
# the values of every field). Hand-written; the generator only places it.
MODEL = """
## The tokenizer as VTP defines it

### Encoder
A ViT in the DINOv3 style (`vtp_core/models/vit.py`): a patch convolution (16 px), one CLS token, no
register tokens and no absolute position embedding. Positions enter only through axial 2D RoPE on the patch
tokens (base 100, coordinates centred in [-1, 1]; the CLS token is not rotated). Blocks are pre-norm with
RMSNorm, SwiGLU (hidden = int(4·D·2/3), rounded up to a multiple of 8) and scaled-dot-product attention with
biases on q, k, v. The paper adds QK-norm for stability; the released L config has it off (`qk_norm`).

### Latent
`Linear(D -> 64, bias=False)` on the final-norm patch tokens: a 16×16×64 latent for a 256 px image. It is
deterministic: no KL term, no noise, no normalisation. Its raw per-channel std is about 0.1, which is why the
DiT sees it standardised per channel ([protocol](protocol.md#latents)). In the released models the CLIP and
DINO heads read the D-dim tokens *before* this projection, so the latent is trained by reconstruction alone
(`heads_read`).

### Pixel decoder
The latent goes through a 1×1 convolution to the decoder width, a stack of RoPE transformer blocks (the
scaling runs use 4 ViT-L layers, `decoder: L4`), a final norm, a 1×1 convolution to 3·16² channels and a
pixel shuffle back to the image, in the dataset's normalised pixel space.

### Text tower and CLIP loss
An OpenCLIP text transformer (width 768, 12 layers, 12 heads, context 77, CLIP BPE, causal mask, EOT
pooling) and a linear image projection of the CLS token. The loss is softmax CLIP, not SigLIP: a symmetric
InfoNCE over the whole batch (features gathered across ranks), with a learnable logit scale that starts at
ln(1/0.07) and is clamped at ln(100) as in OpenCLIP (`vtp_core/losses/clip.py`).

### Self-supervision
The paper says only that it follows DINOv2 closely, so the suite takes DINOv2's defaults
(`vtp_core/losses/ssl.py`): an EMA teacher (momentum 0.992 -> 1, cosine), DINO on the CLS tokens of 2 global
and 8 local crops, iBOT on masked patch tokens of the global crops (block masks), one shared head, softmax
centering with momentum 0.9, teacher temperature 0.04 -> 0.07, student temperature 0.1, KoLeo with weight 0.1
on the student's global CLS features, drop rate 0.3 for the student and none for the teacher.

### Reconstruction loss
L_rec = L1 + LPIPS (VGG16), 1:1, on the reconstruction sub-batch; LPIPS sees [-1, 1] pixels. Its weight in the
total is λ_rec = 0.1: the paper reports that a small reconstruction weight gives better generation.

### Total loss and batches
L = λ_rec·L_rec + λ_ssl·L_ssl + λ_clip·L_clip with λ_ssl, λ_clip ∈ {0, 1}; the four recipes are `ae` (both 0),
`clip_ae`, `ssl_ae` and `clip_ssl_ae` (VTP, both 1). One step draws a batch of B image-text pairs; all of them
feed CLIP (B = 16k in the paper), and random subsets feed SSL (B/4) and reconstruction (B/8). The three
objectives are separate forward passes over their own images, summed into one optimiser step
(`vtp_core/objectives.py`, `vtp_core/pretrain.py`). The optimiser, schedule and drop rates are not published;
the suite takes OpenCLIP's and DINOv2's values (the `source` column below).

### Stage 2
VTP then freezes the encoder and fine-tunes only the pixel decoder with a GAN loss, because a GAN loss through
a ViT encoder is unstable. How is not published; `vtp_core/stage2.py` uses the priors of VA-VAE and LDM: a
3-layer PatchGAN, hinge loss, and the adaptive GAN weight scaled by 0.5. The latents, and so the downstream
DiT, are the same as after stage 1. It is off by default (`stage2_steps: 0`).

### FLOPs accounting
The paper does not say which towers its "training FLOPs" count. The suite counts everything one training step
runs: every active objective's forward and backward, the EMA teacher's forward and LPIPS, as real FLOPs
(2 per multiply-add) measured by `torch.utils.flop_counter` (`vtp_core/flops.py`; the convention is in
[CONTRACTS.md](CONTRACTS.md#flops-convention)). For VTP-L at a 16k batch this comes to
roughly 0.5-0.9 TFLOP per sample seen, so the paper's 1.1 billion samples are 5e20-1e21 FLOPs, the range of
its compute axis (about 1e18 to 5e20).

### Model sizes
Encoders: S = 384 wide, 12 deep, 6 heads (21.6M parameters at patch 16); B = 768/12/12 (85.7M);
L = 1024/24/16 (303.5M). The paper's symmetric ViT-B and ViT-L autoencoders (171.2M and 607.2M) are twice
these. The 4-layer ViT-L decoder of the scaling runs has 51.3M; the text tower's 12 residual blocks
hold 85.1M. The DiT sizes follow LightningDiT: B/1 is
12 deep, 768 wide, 12 heads (130M); XL/1 is 28 deep, 1152 wide, 16 heads (675M).

### Published scaling figures
The paper's scaling runs (ViT-L encoder, 4-layer ViT-L decoder, 277M filtered DataComp-1B images,
LightningDiT-B trained 80 ImageNet epochs, FID-10K) report:
- **compute**: VTP's gFID falls from 81.3 to 27.0 over about 5.5e18 -> 1.9e20 tokenizer FLOPs (8 points,
  each about twice the last), while the reconstruction-only AE's rFID improves (2.0 -> 0.5) and its gFID
  worsens (55.0 -> 58.6). VTP overtakes the AE at about 1.2e19 FLOPs.
- **parameters**: at each curve's end VTP-S/B/L reach 31.3 / 27.8 / 26.1; the AE stays near 57 from 20M to
  300M encoder parameters.
- **data** (1.1B samples seen each, on 100K / 1M / 10M / 100M images): AE 58.4 / 58.4 / 57.2 / 56.7,
  VTP 47.6 / 40.6 / 31.0 / 27.5.
- **recipes at one budget**: CLIP+SSL+AE is best in generation (gFID 27.8) and understanding (74.9 % linear
  probe on the 64-d latent).
These are the shapes the analysis tests use (`tests/analysis/conftest.py`).
"""


def _tracked(dirs: tuple[str, ...]) -> list[Path]:
    """The committed Python files under `dirs` (git's index, not a directory walk: the page must come out
    the same in a fresh clone as in a working tree with stray files)."""
    try:
        out = subprocess.run(["git", "ls-files", "--", *(f"{d}/*.py" for d in dirs)], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file there is
        out = [str(p.relative_to(REPO)) for d in dirs for p in (REPO / d).rglob("*.py")]
    files = [REPO / f for f in out if (REPO / f).is_file() and Path(f).name not in SKIP_FILES]
    return sorted(files, key=lambda p: (dirs.index(p.relative_to(REPO).parts[0]), p.relative_to(REPO).parts))


def _used_in(name: str, cls: type) -> str:
    """Modules of the section's own package (and the planner/dispatch) that read an attribute of that name."""
    pat = re.compile(rf"\.{re.escape(name)}\b")
    files = _tracked(READERS[cls.__module__.split(".")[0]])
    hits = [str(p.relative_to(REPO)) for p in files if pat.search(p.read_text())]
    return ", ".join(f"`{h}`" for h in hits[:4]) + (f" +{len(hits) - 4}" if len(hits) > 4 else "") or "–"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return "''" if v == "" else str(v)


def render() -> str:
    out = [HEADER, MODEL]
    for title, cls in SECTIONS:
        out.append(f"\n## `{title}`\n")
        out.append("| field | default | source | meaning | versioned | read in |")
        out.append("|---|---|---|---|---|---|")
        for name, default, md in field_docs(cls):
            if name.split(".")[0] == "data" and cls is not DataConfig:
                continue  # the data sections have their own table
            leaf = name.rsplit(".", 1)[-1]
            cells = [f"`{name}`", _fmt(default), md.get("source") or "–", md.get("doc") or "–",
                     "yes" if md.get("versioned", True) else "no", _used_in(leaf, cls)]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    path = REPO / "docs" / "method.md"
    path.write_text(render())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
