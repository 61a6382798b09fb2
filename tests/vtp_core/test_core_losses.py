"""Loss pieces: CLIP clamp, DINO/iBOT/KoLeo behaviour, LPIPS loading by sha256 + converter, GAN adaptive weight."""
from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vtp_core.losses import DINOCenter, clip_loss, dino_loss, ibot_loss, koleo_loss
from vtp_core.losses.gan import PatchGAN, adaptive_weight, hinge_d_loss
from vtp_core.losses.lpips import LPIPS, convert, load_lpips, main, sha256_file
from vtp_core.runtime import StageError
from vtp_core.schedules import ema_momentum_at, lr_at, teacher_temp_at
import small_configs as small


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
    cfg = small.tokenizer(steps=100, warmup_steps=10, lr=1.0)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 100) == pytest.approx(0.0, abs=1e-9)
    assert teacher_temp_at(cfg, 0) == 0.04 and teacher_temp_at(cfg, 30) == pytest.approx(0.07)
    assert ema_momentum_at(cfg, 0) == pytest.approx(0.992) and ema_momentum_at(cfg, 100) == pytest.approx(1.0)


def test_lpips_off_only_when_said_and_on_needs_matching_sha(tmp_path):
    log = logging.getLogger("vtp.test")
    assert load_lpips(small.tokenizer(rec_loss="l1"), log) is None  # L1 only: an explicit choice
    with pytest.raises(StageError, match="or say rec_loss: l1"):
        load_lpips(small.tokenizer(rec_loss="l1_lpips"), log)
    path = tmp_path / "lpips_vgg16.pt"
    torch.save({k: v for k, v in LPIPS().state_dict().items() if k not in ("shift", "scale")}, path)
    with pytest.raises(StageError, match="sha256"):
        load_lpips(small.tokenizer(rec_loss="l1_lpips", lpips_weights=str(path), lpips_sha256="0" * 64), log)
    net = load_lpips(small.tokenizer(rec_loss="l1_lpips", lpips_weights=str(path), lpips_sha256=sha256_file(path)), log)
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


# The lpips 0.1.4 wheel's real heads file (7 KB, BSD-2; see tests/vtp_core/data/README.md); its tensors
# were saved on CUDA, so it loads only with map_location="cpu" on a CPU machine.
LPIPS_LIN = Path(__file__).parent / "data" / "lpips_v0.1_vgg.pth"


def _torchvision_vgg16(path: Path) -> dict:
    """torchvision's VGG16 state dict layout with random `features` weights, saved to `path`.

    classifier.* (never read by the converter) are 1-element stand-ins: the real ones are 0.5 GB."""
    try:
        import torchvision
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in torchvision.models.vgg16(weights=None).state_dict().items()}
    except ImportError:
        shapes = {k: v.shape for k, v in LPIPS().state_dict().items() if k.startswith("features.")}
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=g) * (2 / s[1:].numel()) ** 0.5 if len(s) == 4
          else torch.randn(s, generator=g) * 0.01 if k.startswith("features.") else torch.zeros(1)
          for k, s in shapes.items()}
    torch.save(sd, path)
    return sd


def test_lpips_converter_maps_official_files(tmp_path, capsys):
    vgg_path, out = tmp_path / "vgg16-397923af.pth", tmp_path / "lpips_vgg16.pt"
    vgg, lin = _torchvision_vgg16(vgg_path), torch.load(LPIPS_LIN, map_location="cpu", weights_only=True)
    assert sorted(lin) == [f"lin{k}.model.1.weight" for k in range(5)]  # the real lpips v0.1 layout
    assert main(["--vgg", str(vgg_path), "--lin", str(LPIPS_LIN), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    sha = sha256_file(out)
    assert f"sha256 {sha}" in printed and f'lpips_sha256: "{sha}"' in printed and "lpips_weights: " in printed
    net = load_lpips(small.tokenizer(rec_loss="l1_lpips", lpips_weights=str(out), lpips_sha256=sha),
                     logging.getLogger("vtp.test"))
    assert torch.equal(net.features[0].weight, vgg["features.0.weight"])
    assert torch.equal(net.features[28].bias, vgg["features.28.bias"])
    assert torch.equal(net.lin[3].weight, lin["lin3.model.1.weight"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(net(x, x), torch.zeros(2)) and (net(x, x.flip(-1)) > 0).all()
    assert convert(vgg_path, LPIPS_LIN, tmp_path / "again.pt") == sha  # same inputs, same bytes


def test_lpips_converter_one_line_errors(tmp_path):
    vgg_path, lin_path, out = tmp_path / "vgg.pth", tmp_path / "lin.pth", tmp_path / "out.pt"
    vgg = _torchvision_vgg16(vgg_path)
    del vgg["features.28.bias"]
    torch.save(vgg, tmp_path / "cut.pth")
    with pytest.raises(StageError, match=r"cut\.pth: missing key 'features\.28\.bias' .*shape \(512,\)") as e:
        convert(tmp_path / "cut.pth", LPIPS_LIN, out)
    assert "\n" not in str(e.value) and not out.exists()
    lin = torch.load(LPIPS_LIN, map_location="cpu", weights_only=True)
    lin["lin2.model.1.weight"] = torch.zeros(1, 128, 1, 1)
    torch.save(lin, lin_path)
    with pytest.raises(StageError, match=r"lin\.pth: 'lin2\.model\.1\.weight' has shape \(1, 128, 1, 1\), "
                                         r"expected \(1, 256, 1, 1\)"):
        convert(vgg_path, lin_path, out)
    with pytest.raises(StageError, match=r"lpips_v0\.1_vgg\.pth: missing key 'features\.0\.weight'"):
        convert(LPIPS_LIN, vgg_path, out)  # --vgg and --lin swapped
    assert not out.exists()


def test_lpips_foreign_file_points_to_converter(tmp_path):
    vgg_path = tmp_path / "vgg16-397923af.pth"
    _torchvision_vgg16(vgg_path)
    cfg = small.tokenizer(rec_loss="l1_lpips", lpips_weights=str(vgg_path), lpips_sha256=sha256_file(vgg_path))
    with pytest.raises(StageError, match=r"not our LPIPS VGG16 file .*python -m vtp_core\.losses\.lpips --vgg"):
        load_lpips(cfg, logging.getLogger("vtp.test"))


def test_lpips_cli_exits_2_on_bad_input(tmp_path):
    bad = tmp_path / "not_weights.pth"
    bad.write_bytes(b"not a torch file")
    proc = subprocess.run([sys.executable, "-m", "vtp_core.losses.lpips", "--vgg", str(bad), "--lin", str(LPIPS_LIN),
                           "--out", str(tmp_path / "out.pt")], capture_output=True, text=True,
                          cwd=Path(__file__).parents[2], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "not_weights.pth: not a torch weights file" in proc.stderr
