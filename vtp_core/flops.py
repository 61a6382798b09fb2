"""The FLOPs convention (docs/CONTRACTS.md#flops-convention): real FLOPs (2 per multiply-add) of the exact training step.

Why measured, not estimated: VTP does not say which towers it counts (docs/method.md#flops-accounting); we count every
active objective's forward + backward and the EMA teacher's forward, by running `objectives.step_losses`
under `torch.utils.flop_counter.FlopCounterMode` on the `meta` device (no memory, no arithmetic),
memoised on the versioned config minus steps/seed/data size so the planner
can price thousands of cells instantly. Elementwise ops (norms, softmax, optimizer, EMA) are not
counted, as in the usual 6·N·D convention. Meta-device dispatch still costs Python time per op, so
deep stacks are measured at depth 1 and 2 per tower and extrapolated: a step's FLOPs are exactly affine
in each tower's depth (identical blocks), so this equals the full count (tested) for the cost of two
shallow models. `vit_forward_flops_analytic` is the closed form for tests.

With `rec_loss: l1_lpips` the frozen VGG16 LPIPS network (built on meta: no weights file needed) runs
inside the counted step, so 'rec' includes its forward on the reconstruction and on the target and the
backward through the reconstruction branch (input gradients only: the net is frozen; the target branch
needs no grad). It is no registry tower: its cost is the same at depth 1 and 2, so it cancels in the
extrapolation's differences and is counted exactly once (tested). Stage 2 counts it likewise.
"""
from __future__ import annotations

import dataclasses

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from vtp_core import registry
from vtp_core.batches import sub_batch_sizes
from vtp_core.config import DataConfig, TokenizerConfig
from vtp_core.losses.lpips import LPIPS
from vtp_core.models.vit import ViTEncoder
from vtp_core.objectives import Teacher, active_objectives, step_losses
from vtp_core.tokenizer import Tokenizer, text_size


def train_step_flops(cfg: TokenizerConfig) -> dict:
    """{'total': FLOPs of one training step, 'by_component': {'rec', 'clip', 'ssl'}, 'per_sample': total/batch}."""
    total, by, per_sample = _memo("step", cfg, _measure)
    return {"total": total, "by_component": dict(by), "per_sample": per_sample}


def stage2_step_flops(cfg: TokenizerConfig) -> float:
    """FLOPs of one stage-2 step (frozen encode, decoder fwd/bwd with the adaptive GAN weight, D step).
    Reported separately from `tokenizer_flops` (the stage-1 scaling axis)."""
    return _memo("stage2", cfg, _stage2_flops)


def encoder_params(cfg: TokenizerConfig) -> int:
    """Encoder + bottleneck parameters (what the results table calls `encoder_params`)."""
    return _memo("params", cfg, _encoder_params)


def encode_flops(cfg: TokenizerConfig) -> float:
    """Forward FLOPs of encoding one image to its latent (latent-extraction cost)."""
    return _memo("encode", cfg, _encode_flops)


def vit_forward_flops_analytic(width: int, depth: int, n_tokens: int, mlp_hidden: int, patch: int = 0,
                               n_patches: int = 0, in_chans: int = 3, out_dim: int = 0) -> float:
    """Closed-form forward FLOPs of a ViT: 2·(matmul params)·tokens + 4·N²·D per layer (QKᵀ and AV)
    + the patch-embedding conv + an optional output projection (D -> out_dim on the patch tokens)."""
    per_token_params = 4 * width * width + 3 * width * mlp_hidden  # qkv + proj, SwiGLU w1, w2, w3
    blocks = depth * (2 * per_token_params * n_tokens + 4 * n_tokens * n_tokens * width)
    embed = 2 * in_chans * patch * patch * width * n_patches
    return float(blocks + embed + 2 * width * out_dim * n_patches)


def _attention_forward_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """SDPA forward: q k^T and scores·v, two matmuls (torch's formula, for the kernel its table lacks)."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """SDPA backward as the model computes it: the gradients of q k^T and of scores·v, four matmuls, twice
    the forward. Not a flash kernel's recomputation of the scores (torch's formula counts it): the model's
    arithmetic, as the explicit softmax(q k^T) v and the meta-device count here (the math path) do it."""
    return 2 * flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


_aten = torch.ops.aten
ATTENTION_FLOP_FORMULAS = {  # FlopCounterMode `custom_mapping`: every SDPA kernel counted alike
    _aten._scaled_dot_product_flash_attention_for_cpu: _attention_forward_flops,  # torch counts 0 for it
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward_flops,
    _aten._scaled_dot_product_flash_attention_backward: _attention_backward_flops,
    _aten._scaled_dot_product_efficient_attention_backward: _attention_backward_flops,
    _aten._scaled_dot_product_cudnn_attention_backward: _attention_backward_flops,
}


def flop_counter_mode() -> FlopCounterMode:
    """A `FlopCounterMode` that counts attention the same whichever kernel runs it: torch's CPU flash
    kernel (which torch's own table counts as 0) and the GPU kernels as the explicit form and the meta
    device count it, so MFU is model FLOPs over time. bench/ counts steps on real devices with it."""
    return FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOP_FORMULAS)


# ---------------------------------------------------------------- memoised internals
_IGNORED = {"steps", "seed"}  # plus data.n_train / data.subset_seed: cannot change per-step cost
_FIELDS = tuple(f.name for f in dataclasses.fields(TokenizerConfig)
                if f.metadata.get("versioned", True) and f.name not in _IGNORED and f.name != "data")
_DATA_FIELDS = tuple(f.name for f in dataclasses.fields(DataConfig)
                     if f.metadata.get("versioned", True) and f.name not in ("n_train", "subset_seed"))
_CACHE: dict[tuple, object] = {}


def _key(cfg: TokenizerConfig) -> tuple:
    """The versioned config minus steps/seed/data size, as a hashable tuple (~µs, no JSON)."""
    return (tuple(getattr(cfg, n) for n in _FIELDS), tuple(getattr(cfg.data, n) for n in _DATA_FIELDS))


def _memo(kind: str, cfg: TokenizerConfig, fn):
    key = (kind, _key(cfg))
    if key not in _CACHE:
        _CACHE[key] = fn(dataclasses.replace(cfg, steps=1, seed=0,
                                             data=dataclasses.replace(cfg.data, n_train=0, subset_seed=0)))
    return _CACHE[key]


def _meta_batch(cfg: TokenizerConfig, active: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Tensors shaped like `batches.make_batch` output (mask count = its expected value)."""
    b_ssl, b_rec = sub_batch_sizes(cfg)
    s, m = cfg.data.image_size, torch.device("meta")
    out = {}
    if "rec" in active:
        out["rec_images"] = torch.empty(b_rec, 3, s, s, device=m)
    if "clip" in active:
        out["clip_images"] = torch.empty(cfg.batch_size, 3, s, s, device=m)
        out["clip_text"] = torch.zeros(cfg.batch_size, text_size(cfg).context_length, dtype=torch.long, device=m)
    if "ssl" in active:
        n_img, n_tok = 2 * b_ssl, (cfg.global_crop // cfg.patch) ** 2
        n_masked = int(n_img * cfg.mask_probability)
        lo, hi = cfg.mask_ratio
        n_idx = sum(int(round((lo + (hi - lo) * j / max(n_masked - 1, 1)) * n_tok)) for j in range(n_masked))
        out.update(
            global_views=torch.empty(n_img, 3, cfg.global_crop, cfg.global_crop, device=m),
            local_views=torch.empty(cfg.n_local_crops * b_ssl, 3, cfg.local_crop, cfg.local_crop, device=m),
            masks=torch.zeros(n_img, n_tok, dtype=torch.bool, device=m),
            mask_idx=torch.zeros(n_idx, dtype=torch.long, device=m),
            mask_weight=torch.empty(n_idx, device=m),
        )
    return out


def _meta_lpips(cfg: TokenizerConfig) -> LPIPS | None:
    """The LPIPS net the trainer runs (`load_lpips`), on meta: same ops and shapes, no weights file needed."""
    if not cfg.lpips_on:
        return None
    with torch.device("meta"):
        return LPIPS().eval()


def _count(model: Tokenizer, teacher: Teacher | None, batch: dict, objectives: tuple[str, ...],
           lpips: LPIPS | None = None) -> int:
    with FlopCounterMode(display=False) as fc:
        step_losses(model, teacher, batch, 0.04, objectives, lpips)["total"].backward()
    return int(fc.get_total_flops())


def _count_step(cfg: TokenizerConfig, sizes: dict) -> dict[str, int]:
    with torch.device("meta"):
        model = Tokenizer(cfg, sizes)
        teacher = Teacher(model) if model.lambda_ssl else None
    active = active_objectives(model)
    batch = _meta_batch(cfg, active)
    lpips = _meta_lpips(cfg)
    return {o: _count(model, teacher, batch, (o,), lpips) for o in active}


def _full_sizes(cfg: TokenizerConfig) -> dict:
    sizes = {"encoder": registry.get("encoder", cfg.encoder), "decoder": registry.get("decoder", cfg.decoder)}
    if cfg.recipe in ("clip_ae", "clip_ssl_ae"):
        sizes["text"] = registry.get("text", cfg.text)
    return sizes


def count_step_flops(cfg: TokenizerConfig, extrapolate: bool = True) -> dict[str, int]:
    """FLOPs per objective of one step (forward + backward; teacher forward inside 'ssl'; LPIPS inside 'rec'
    when on: depth-independent, so it is in `base` and cancels in every `deeper - base`, counted once)."""
    full = _full_sizes(cfg)
    if not extrapolate or all(s.depth <= 2 for s in full.values()):
        return _count_step(cfg, full)
    shallow = {k: dataclasses.replace(s, depth=1) for k, s in full.items()}
    base = _count_step(cfg, shallow)
    out = dict(base)
    for k, s in full.items():
        deeper = _count_step(cfg, {**shallow, k: dataclasses.replace(s, depth=2)})
        for o in out:
            out[o] += (s.depth - 1) * (deeper[o] - base[o])
    return out


def _measure(cfg: TokenizerConfig) -> tuple[float, tuple[tuple[str, float], ...], float]:
    by = count_step_flops(cfg)
    total = sum(by.values())  # the objectives are independent forward/backward passes: exact sum
    return float(total), tuple((k, float(v)) for k, v in by.items()), float(total) / cfg.batch_size


def _encoder_params(cfg: TokenizerConfig) -> int:
    with torch.device("meta"):
        enc = ViTEncoder(registry.get("encoder", cfg.encoder), cfg.patch, cfg.latent_channels,
                         qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm)
    return registry.count_params(enc) - enc.mask_token.numel()


def _encode_flops(cfg: TokenizerConfig) -> float:
    with torch.device("meta"):
        enc = ViTEncoder(registry.get("encoder", cfg.encoder), cfg.patch, cfg.latent_channels,
                         qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        enc.encode(torch.empty(1, 3, cfg.data.image_size, cfg.data.image_size, device="meta"))
    return float(fc.get_total_flops())


def _stage2_flops(cfg: TokenizerConfig) -> float:
    from vtp_core.losses.gan import PatchGAN
    from vtp_core.stage2 import discriminator_loss, generator_losses

    with torch.device("meta"):
        model = Tokenizer(dataclasses.replace(cfg, recipe="ae"))
        disc = PatchGAN(3, cfg.disc_channels, cfg.disc_layers)
    model.encoder.requires_grad_(False)
    x = torch.empty(sub_batch_sizes(cfg)[1], 3, cfg.data.image_size, cfg.data.image_size, device="meta")
    with FlopCounterMode(display=False) as fc:
        gl = generator_losses(model, disc, x, cfg, _meta_lpips(cfg), gan_on=True)
        gl["total"].backward()
        discriminator_loss(disc, x, gl["x_hat"]).backward()
    return float(fc.get_total_flops())
