"""Understanding + reconstruction probes of a pretrained tokenizer (the `probe` stage).

What the VTP scaling plots need on their other axes (docs/protocol.md#linear-probe, #zero-shot,
#rfid-and-psnr): a linear probe on the bottleneck features (the paper's "understanding" axis) and on
the pre-bottleneck CLS token (the released script's features), CLIP zero-shot with averaged
class-template prompts, and rFID/PSNR of reconstructions. As in VTP, zero-shot sees the test images
squashed to a square (`Resize((S, S))`, `ProbeConfig.zero_shot_resize`) while the linear probe, PSNR
and rFID see the ADM centre crop: the same test subset, decoded twice. vtp_core cannot import
dit_eval, so FID features and the Fréchet distance arrive as `ctx.services["fid_features"]` and
`ctx.services["frechet"]`; real and reconstructed images go through the same extractor and the same
`to_uint8`.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
import torch.nn.functional as F

from vtp_core.config import ProbeConfig
from vtp_core.data import (CLASS_NAMES, class_names, load_images, load_split, normalize, subset_indices,
                           take, to_uint8)
from vtp_core.data.captions import zero_shot_prompts
from vtp_core.runtime import StageContext, StageError
from vtp_core.tokenizer import Tokenizer, load_tokenizer


@torch.no_grad()
def _batched(fn, images: np.ndarray, batch: int, device: str) -> list:
    return [fn(normalize(images[i:i + batch], device)) for i in range(0, len(images), batch)]


def extract_features(tok: Tokenizer, images: np.ndarray, batch: int, device: str) -> dict[str, torch.Tensor]:
    outs = _batched(tok.features, images, batch, device)
    return {k: torch.cat([o[k].float().cpu() for o in outs]) for k in outs[0]}


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                          steps: int, lr: float, seed: int, weight_decay: float = 1e-4) -> float:
    """Multinomial logistic regression on standardised features, full-batch Adam; top-1 test accuracy."""
    mu, sd = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    xa, xb = (train_x - mu) / sd, (test_x - mu) / sd
    n_cls = int(max(train_y.max(), test_y.max())) + 1
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(xa.shape[1], n_cls, generator=g) * 0.01).requires_grad_()
    b = torch.zeros(n_cls, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(xa @ w + b, train_y) + weight_decay * w.square().sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((xb @ w + b).argmax(1) == test_y).float().mean())


@torch.no_grad()
def zero_shot_accuracy(tok: Tokenizer, images: np.ndarray, labels: np.ndarray, batch: int, device: str,
                       names: tuple[str, ...] = CLASS_NAMES) -> tuple[float, float]:
    """(top-1, top-5) of image·classᵀ; class embedding = renormalised mean of normalised prompt embeddings."""
    classes = []
    for name in names:
        t = tok.embed_text([prompt(name) for prompt in zero_shot_prompts(names)]).mean(0)
        classes.append(F.normalize(t, dim=-1))
    w = torch.stack(classes)
    k = min(5, len(names))
    top = torch.cat([(e @ w.t()).topk(k, dim=1).indices.cpu() for e in _batched(tok.embed_image, images, batch, device)])
    hit = top == torch.from_numpy(np.asarray(labels)).view(-1, 1)
    return float(hit[:, 0].float().mean()), float(hit.any(1).float().mean())


@torch.no_grad()
def reconstruct(tok: Tokenizer, images: np.ndarray, batch: int, device: str) -> np.ndarray:
    """uint8 NHWC reconstructions (encode -> decode -> the one `to_uint8`)."""
    return np.concatenate(_batched(lambda x: to_uint8(tok.decode(tok.encode(x))), images, batch, device))


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-image PSNR on the 0-255 scale (identical images count as 100 dB)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return float(np.mean(np.where(mse > 0, 10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-12)), 100.0)))


def rfid(real: np.ndarray, recon: np.ndarray, ctx: StageContext, data_tag: str) -> dict:
    feats, frechet = ctx.services.get("fid_features"), ctx.services.get("frechet")
    protocol = {"n_samples": int(len(real)), "extractor": ctx.services.get("extractor_name"),
                "extractor_sha": ctx.services.get("extractor_sha"), "reference": data_tag,
                "to_uint8": "clamp*255 round-half-up"}
    protocol["protocol_hash"] = hashlib.sha256(json.dumps(protocol, sort_keys=True, default=str).encode()).hexdigest()[:10]
    if feats is None or frechet is None:
        ctx.log.warning("probe: rFID skipped: ctx.services lacks 'fid_features'/'frechet' (wired by cluster/stages.py)")
        return {"value": None, "reason": "no fid_features/frechet service", **protocol}
    value = float(frechet(np.asarray(feats(real)), np.asarray(feats(recon))))
    return {"value": value, **protocol}


def run(cfg: ProbeConfig, ctx: StageContext) -> dict:
    device = ctx.device
    tok = load_tokenizer(ctx.input("pretrain"), device)
    data = cfg.data
    tr_img, tr_lab = load_split(data, "train")
    te_img, te_lab = load_split(data, "test")
    if cfg.n_train > len(tr_img) or cfg.n_test > len(te_img):
        raise StageError(f"ProbeConfig: n_train={cfg.n_train}/n_test={cfg.n_test} exceed the splits "
                         f"({len(tr_img)}/{len(te_img)})")
    tr_idx = np.sort(subset_indices(len(tr_img), cfg.n_train, cfg.seed))
    te_idx = np.sort(subset_indices(len(te_img), cfg.n_test, cfg.seed))
    # the train subset stays lazy for large user data (features are extracted batch by batch); the test
    # subset is compared pixel-wise with its reconstructions, so it is decoded
    tr_img, tr_lab, te_img, te_lab = take(tr_img, tr_idx), tr_lab[tr_idx], np.asarray(take(te_img, te_idx)), te_lab[te_idx]

    f_tr = extract_features(tok, tr_img, cfg.batch_size, device)
    f_te = extract_features(tok, te_img, cfg.batch_size, device)
    y_tr, y_te = torch.from_numpy(tr_lab), torch.from_numpy(te_lab)
    steps = cfg.probe_epochs * 10
    out: dict = {
        "linear_probe": linear_probe_accuracy(f_tr["bottleneck"], y_tr, f_te["bottleneck"], y_te, steps, cfg.probe_lr, cfg.seed),
        "linear_probe_pre": linear_probe_accuracy(f_tr["pre"], y_tr, f_te["pre"], y_te, steps, cfg.probe_lr, cfg.seed),
        "n_train": int(len(tr_img)), "n_test": int(len(te_img)),
    }
    if tok.has_clip:
        zs_img = te_img  # already centre-cropped
        # Fashion-MNIST images are square: squash and centre crop give the same pixels, nothing to re-decode.
        # User data: the same test subset (same indices) decoded again, squashed, read batch by batch.
        if cfg.zero_shot_resize == "squash" and data.dataset != "fashion_mnist":
            zs_img = load_images(data, "test", te_idx, resize="squash")
        out["zero_shot"], out["zero_shot_top5"] = zero_shot_accuracy(tok, zs_img, te_lab, cfg.batch_size, device,
                                                                     class_names(data))
        out["zero_shot_resize"] = cfg.zero_shot_resize
    else:
        out["zero_shot"], out["zero_shot_reason"] = None, f"recipe '{tok.cfg.recipe}' has no CLIP head"
    recon = reconstruct(tok, te_img, cfg.batch_size, device)
    out["psnr"] = psnr_uint8(te_img, recon)
    out["rfid"] = rfid(te_img, recon, ctx, f"{data.dataset} test, {len(te_img)} images (seed {cfg.seed})")
    return out
