"""One VTP training step's losses: the exact computation that both the trainer and the FLOPs counter run.

Why shared: the FLOPs convention (docs/CONTRACTS.md#flops-convention) counts "the exact training step"; keeping the
forward of every objective in one function means the count cannot drift from what is trained.
The three objectives are separate forward passes over their own sub-batches (docs/method.md#total-loss-and-batches):
CLIP on the whole batch, SSL multi-crop (student + EMA teacher) on one subset, reconstruction on another.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from vtp_core.config import TokenizerConfig
from vtp_core.distributed import gather_with_grad
from vtp_core.losses import DINOCenter, clip_loss, dino_loss, ibot_loss, koleo_loss, reconstruction_loss
from vtp_core.tokenizer import Tokenizer

OBJECTIVES = ("rec", "clip", "ssl")


class Teacher(nn.Module):
    """EMA copy of the student's encoder (+ bottleneck) and DINO head, plus the DINO/iBOT centers."""

    def __init__(self, model: Tokenizer):
        super().__init__()
        self.encoder = copy.deepcopy(model.encoder)
        self.dino_head = copy.deepcopy(model.dino_head)
        k = model.cfg.dino_prototypes
        self.dino_center = DINOCenter(k, model.cfg.center_momentum)
        self.ibot_center = DINOCenter(k, model.cfg.center_momentum)
        self.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: Tokenizer, momentum: float, apply: torch.Tensor | None = None) -> None:
        """θ_t <- m·θ_t + (1-m)·θ_s over encoder and head; `apply` (a 0-dim bool on the device): update only
        if true, decided on the device (the trainer's non-finite-step guard, no host read)."""
        t_params = list(self.encoder.parameters()) + list(self.dino_head.parameters())
        s_params = list(model.encoder.parameters()) + list(model.dino_head.parameters())
        weight = 1.0 - momentum if apply is None else (1.0 - momentum) * apply.to(t_params[0].dtype)
        torch._foreach_lerp_(t_params, [p.detach() for p in s_params], weight)


def active_objectives(model: Tokenizer) -> tuple[str, ...]:
    return tuple(o for o in OBJECTIVES if o == "rec" or (o == "clip" and model.lambda_clip)
                 or (o == "ssl" and model.lambda_ssl))


def step_losses(model: Tokenizer, teacher: Teacher | None, batch: dict[str, torch.Tensor], teacher_temp: float,
                objectives: tuple[str, ...] | None = None, lpips: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Loss tensors of one step; 'total' = λ_rec·rec + λ_ssl·ssl + λ_clip·clip over `objectives`."""
    cfg: TokenizerConfig = model.cfg
    objectives = active_objectives(model) if objectives is None else objectives
    out: dict[str, torch.Tensor] = {}
    total = 0.0
    if "rec" in objectives:
        x = batch["rec_images"]
        out.update(reconstruction_loss(model.decode(model.encoder.encode(x, cfg.rec_drop_rate)), x, lpips,
                                       cfg.lambda_lpips))
        total = total + cfg.lambda_rec * out["rec"]
    if "clip" in objectives:
        img, txt = clip_embeddings(model, batch["clip_images"], batch["clip_text"])
        out["clip"] = clip_loss(gather_with_grad(img), gather_with_grad(txt), model.logit_scale, cfg.logit_scale_max)
        total = total + model.lambda_clip * out["clip"]
    if "ssl" in objectives:
        out.update(_ssl_losses(model, teacher, batch, teacher_temp))
        total = total + model.lambda_ssl * out["ssl"]
    out["total"] = total
    return out


def clip_embeddings(model: Tokenizer, images: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLIP loss's inputs for this rank's slice: image embeddings (encoder CLS through the visual
    projection) and text embeddings, (B, E) each, unnormalised."""
    t, _ = model.encoder.tokens(images, drop_rate=model.cfg.clip_drop_rate)
    return model.visual_proj(model.head_input(t[:, 0])), model.text(text)


@torch.no_grad()
def ssl_teacher(teacher: Teacher, cfg: TokenizerConfig, glob: torch.Tensor, mask_idx: torch.Tensor,
                teacher_temp: float) -> dict[str, torch.Tensor]:
    """The EMA teacher on the global crops: DINO-head logits of the CLS tokens ('cls', (2B, K)) and of the
    student's masked patches ('patch'), and their centred, sharpened probabilities ('cls_p', 'patch_p')."""
    t_tok, _ = teacher.encoder.tokens(glob)
    t_in = teacher.encoder.bottleneck(t_tok) if cfg.heads_read == "bottleneck" else t_tok
    t_cls = teacher.dino_head(t_in[:, 0])
    t_patch = teacher.dino_head(t_in[:, 1:].flatten(0, 1).index_select(0, mask_idx))
    return {"cls": t_cls, "patch": t_patch, "cls_p": teacher.dino_center.teacher_probs(t_cls, teacher_temp),
            "patch_p": teacher.ibot_center.teacher_probs(t_patch, teacher_temp)}


def ssl_student(model: Tokenizer, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student on the global crops (masked) and the local crops: DINO-head logits of the global CLS
    ('cls'), of the masked patches ('patch') and of the local CLS ('loc'), and the global CLS features KoLeo
    spreads ('cls_features', (2B, D))."""
    cfg = model.cfg
    s_tok, _ = model.encoder.tokens(batch["global_views"], mask=batch["masks"], drop_rate=cfg.ssl_drop_rate)
    s_in = model.head_input(s_tok)
    s_cls = model.dino_head(s_in[:, 0])
    s_patch = model.dino_head(s_in[:, 1:].flatten(0, 1).index_select(0, batch["mask_idx"]))
    if cfg.n_local_crops:
        l_tok, _ = model.encoder.tokens(batch["local_views"], drop_rate=cfg.ssl_drop_rate)
        s_loc = model.dino_head(model.head_input(l_tok[:, 0]))
    else:
        s_loc = s_cls[:0]
    return {"cls": s_cls, "patch": s_patch, "loc": s_loc, "cls_features": s_in[:, 0]}


def koleo_term(cls_features: torch.Tensor) -> torch.Tensor:
    """KoLeo of each global view's CLS features over the whole global batch (gathered across ranks), summed
    over the two views; `cls_features` (2B, D) stacked [view0; view1]."""
    return sum(koleo_loss(gather_with_grad(c)) for c in cls_features.chunk(2))


def _ssl_losses(model: Tokenizer, teacher: Teacher, batch: dict[str, torch.Tensor], teacher_temp: float):
    cfg = model.cfg
    glob = batch["global_views"]
    t = ssl_teacher(teacher, cfg, glob, batch["mask_idx"], teacher_temp)
    s = ssl_student(model, batch)
    out = {
        "dino": dino_loss(s["cls"], s["loc"], t["cls_p"], cfg.n_local_crops, cfg.student_temp),
        "ibot": ibot_loss(s["patch"], t["patch_p"], batch["mask_weight"], glob.shape[0], cfg.student_temp),
        "koleo": koleo_term(s["cls_features"]),
    }
    out["ssl"] = out["dino"] + out["ibot"] + cfg.koleo_weight * out["koleo"]
    if torch.is_grad_enabled() and glob.device.type != "meta":
        teacher.dino_center.update(t["cls"])
        teacher.ibot_center.update(t["patch"])
    return out
