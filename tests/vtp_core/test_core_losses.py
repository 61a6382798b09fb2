"""Loss pieces: CLIP clamp, DINO/iBOT/KoLeo behaviour, LPIPS loading by sha256, GAN adaptive weight."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from vtp_core.config import TokenizerConfig
from vtp_core.losses import DINOCenter, clip_loss, dino_loss, ibot_loss, koleo_loss
from vtp_core.losses.gan import PatchGAN, adaptive_weight, hinge_d_loss
from vtp_core.losses.lpips import LPIPS, load_lpips, sha256_file
from vtp_core.runtime import StageError
from vtp_core.schedules import ema_momentum_at, lr_at, teacher_temp_at


def test_clip_loss_perfect_alignment_and_clamp():
    e = torch.eye(4)
    low = clip_loss(e, e, torch.tensor(math.log(100.0)))
    assert low < 0.01
    assert clip_loss(e, e, torch.tensor(10.0)) == pytest.approx(float(low))  # clamped at ln 100
    assert clip_loss(e, e.roll(1, 0), torch.tensor(2.0)) > 1.0


def test_dino_ibot_koleo():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(8, 16, generator=g)
    center = DINOCenter(16, 0.9)
    probs = center.teacher_probs(t, 0.04)
    assert torch.allclose(probs.sum(-1), torch.ones(8))
    aligned = dino_loss(t.roll(4, 0) / 0.04 * 0.1, t[:0], probs, n_local=0)
    assert aligned < dino_loss(torch.randn(8, 16, generator=g), t[:0], probs, n_local=0)
    center.update(t)
    assert torch.allclose(center.center, 0.1 * t.mean(0, keepdim=True))
    w = torch.tensor([0.5, 0.5, 1.0])
    assert ibot_loss(t[:3], probs[:3], w, n_images=2) > 0
    spread = koleo_loss(torch.eye(4))
    assert spread < koleo_loss(torch.eye(4) + 0.99)  # clumped points have a higher KoLeo loss


def test_schedules():
    cfg = TokenizerConfig(steps=100, warmup_steps=10, lr=1.0)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 100) == pytest.approx(0.0, abs=1e-9)
    assert teacher_temp_at(cfg, 0) == 0.04 and teacher_temp_at(cfg, 30) == pytest.approx(0.07)
    assert ema_momentum_at(cfg, 0) == pytest.approx(0.992) and ema_momentum_at(cfg, 100) == pytest.approx(1.0)


def test_lpips_off_warns_and_on_needs_matching_sha(tmp_path, caplog):
    log = logging.getLogger("vtp.test")
    with caplog.at_level("WARNING"):
        assert load_lpips(TokenizerConfig(), log) is None
    assert "LPIPS term OFF" in caplog.text
    path = tmp_path / "lpips_vgg16.pt"
    torch.save({k: v for k, v in LPIPS().state_dict().items() if k not in ("shift", "scale")}, path)
    with pytest.raises(StageError, match="sha256"):
        load_lpips(TokenizerConfig(lpips_weights=str(path), lpips_sha256="0" * 64), log)
    net = load_lpips(TokenizerConfig(lpips_weights=str(path), lpips_sha256=sha256_file(path)), log)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    d = net(x, x.flip(-1))
    assert d.shape == (2,) and torch.allclose(net(x, x), torch.zeros(2))


def test_patchgan_and_adaptive_weight():
    disc = PatchGAN(3, 8, 3)
    x = torch.rand(2, 3, 32, 32)
    out = disc(x)
    assert out.ndim == 4 and out.shape[1] == 1
    assert hinge_d_loss(torch.full((2,), 2.0), torch.full((2,), -2.0)) == 0
    w_last = torch.randn(4, requires_grad=True)
    rec, g = (w_last * 3).sum(), (w_last * 1.5).sum()
    assert float(adaptive_weight(rec, g, w_last, scale=0.5)) == pytest.approx(1.0, rel=1e-3)
