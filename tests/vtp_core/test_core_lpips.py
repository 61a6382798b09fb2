"""LPIPS: `rec_loss` decides whether it loads; the random-weights file (layout, determinism, CLI); its FLOPs."""
from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vtp_core.config import DataConfig, TokenizerConfig
from vtp_core.losses.lpips import (
    _CHANNELS,
    _VGG16,
    LPIPS,
    load_lpips,
    main,
    random_state,
    sha256_file,
    write_random_lpips,
)
from vtp_core.runtime import StageError

ROOT = Path(__file__).resolve().parents[2]
LOG = logging.getLogger("vtp.test")


def _cfg(**kw) -> TokenizerConfig:
    """Small sizes said explicitly (the defaults are the paper's); only the rec_loss/lpips fields matter here."""
    base = {"encoder": "tiny", "decoder": "tiny", "text": "tiny", "patch": 4, "latent_channels": 8, "batch_size": 16,
            "global_crop": 24, "local_crop": 16, "n_local_crops": 2, "dino_prototypes": 256, "dino_hidden": 256,
            "dino_bottleneck": 64, "rec_loss": "l1", "data": DataConfig(dataset="fashion_mnist", image_size=32)}
    return TokenizerConfig(**{**base, **kw})


def _file_layout() -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in LPIPS().state_dict().items() if k not in ("shift", "scale")}


# ---------------------------------------------------------------- load_lpips and rec_loss
def test_l1_returns_none_without_warning(caplog):
    with caplog.at_level(logging.DEBUG, logger="vtp.test"):
        assert load_lpips(_cfg(rec_loss="l1"), LOG) is None
        assert load_lpips(_cfg(rec_loss="l1", lpips_weights="/nonexistent.pt"), LOG) is None  # not even looked at
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_l1_lpips_without_weights_is_a_stage_error():
    with pytest.raises(StageError, match=r"rec_loss: l1_lpips needs tokenizer\.lpips_weights.*or say rec_loss: l1"):
        load_lpips(_cfg(rec_loss="l1_lpips"), LOG)
    with pytest.raises(StageError, match="not found"):
        load_lpips(_cfg(rec_loss="l1_lpips", lpips_weights="/nonexistent/lpips.pt", lpips_sha256="0" * 64), LOG)


def test_sha_and_layout_checks_kept(tmp_path):
    path = tmp_path / "lpips_random.pt"
    sha = write_random_lpips(path)
    with pytest.raises(StageError, match=r"lpips_sha256: .* has sha256 " + sha):
        load_lpips(_cfg(rec_loss="l1_lpips", lpips_weights=str(path), lpips_sha256="0" * 64), LOG)
    sd = random_state()
    sd["lin.0.weight"] = torch.ones(1, 32, 1, 1)  # wrong shape
    del sd["features.28.bias"]  # missing
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    with pytest.raises(StageError, match=r"not our LPIPS VGG16 file \(missing \['features\.28\.bias'\], "
                                         r"wrong shape \['lin\.0\.weight'\]\)"):
        load_lpips(_cfg(rec_loss="l1_lpips", lpips_weights=str(bad), lpips_sha256=sha256_file(bad)), LOG)


# ---------------------------------------------------------------- the random-weights file
def test_random_file_layout_and_determinism(tmp_path):
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    sha = write_random_lpips(a, seed=0)
    assert sha == sha256_file(a) and len(sha) == 64
    assert write_random_lpips(b, seed=0) == sha  # same seed, same bytes
    assert a.read_bytes() == b.read_bytes()
    assert write_random_lpips(c, seed=1) != sha
    sd = torch.load(a, map_location="cpu", weights_only=True)
    assert {k: tuple(v.shape) for k, v in sd.items()} == _file_layout()  # exactly the converter's layout
    assert all(v.dtype == torch.float32 for v in sd.values())
    for k, ch in enumerate(_CHANNELS):  # positive heads of the official scale
        w = sd[f"lin.{k}.weight"]
        assert w.shape == (1, ch, 1, 1) and (w > 0).all() and 0.05 < w.mean() < 0.15
    for key, v in sd.items():  # Kaiming-normal convs (std sqrt(2 / fan_in)), zero biases
        if key.startswith("features.") and key.endswith(".weight"):
            fan_in = v.shape[1] * v.shape[2] * v.shape[3]
            assert v.std().item() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.1)
        elif key.endswith(".bias"):
            assert not v.any()


def test_random_file_loads_and_gives_sane_distances(tmp_path):
    path = tmp_path / "lpips_random.pt"
    sha = write_random_lpips(path, seed=0)
    net = load_lpips(_cfg(rec_loss="l1_lpips", lpips_weights=str(path), lpips_sha256=sha), LOG)
    assert isinstance(net, LPIPS) and not any(p.requires_grad for p in net.parameters())
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
    y = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        d_xy, d_xx = net(x, y), net(x, x)
        d_near = net(x, (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1))
    assert d_xy.shape == (4,) and torch.isfinite(d_xy).all() and (d_xy > 0).all()
    assert d_xx.abs().max() < 1e-6
    assert (d_near > 0).all() and (d_near < d_xy).all()  # a small perturbation is nearer than another image
    # gradients reach the reconstruction (the training use) and are finite
    x_hat = y.clone().requires_grad_(True)
    net(x_hat, x).mean().backward()
    assert torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0


def test_random_cli_prints_sha_and_paste_lines(tmp_path):
    out = tmp_path / "f.pt"
    proc = subprocess.run([sys.executable, "-m", "vtp_core.losses.lpips", "--random", "--out", str(out), "--seed", "3"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    sha = sha256_file(out)
    assert sha == write_random_lpips(tmp_path / "again.pt", seed=3)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"wrote {out.resolve()}" and lines[1] == f"sha256 {sha}"
    assert lines[2].startswith("tokenizer:")
    assert "  rec_loss: l1_lpips" in lines and f'  lpips_weights: "{out.resolve()}"' in lines
    assert f'  lpips_sha256: "{sha}"' in lines
    assert "random" in proc.stderr  # said to be random, off stdout (stdout is the paste block)


def test_cli_needs_official_files_or_random(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "x.pt")])
    assert exc.value.code == 2 and "--random" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--random", "--vgg", "v.pth", "--out", str(tmp_path / "x.pt")])
    assert exc.value.code == 2
    assert main(["--random", "--out", str(tmp_path / "y.pt"), "--seed", "5"]) == 0
    assert f"sha256 {sha256_file(tmp_path / 'y.pt')}" in capsys.readouterr().out


# ---------------------------------------------------------------- FLOPs
def _vgg_forward_flops_analytic(side: int) -> int:
    """2 FLOPs per multiply-add of VGG16's 13 3x3 convs (padding 1) on one image, through relu5_3."""
    total, c, s = 0, 3, side
    for v in _VGG16:
        if v == "M":
            s //= 2
        else:
            total += 2 * 9 * c * v * s * s
            c = v
    return total


def test_lpips_flops_match_closed_form():
    """One VGG pass, and the LPIPS term as training runs it (2 forwards + input-gradient backward of one branch,
    plus the 1x1 heads), per image at 256 px."""
    side = 256
    heads = sum(2 * ch * (side >> k) ** 2 for k, ch in enumerate(_CHANNELS))  # lin on the squared difference
    with torch.device("meta"):
        net = LPIPS()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        net._taps(torch.empty(1, 3, side, side, device="meta"))
    fwd = fc.get_total_flops()
    assert fwd == _vgg_forward_flops_analytic(side)
    x_hat = torch.empty(1, 3, side, side, device="meta", requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        net(x_hat, torch.empty(1, 3, side, side, device="meta")).mean().backward()
    step = fc.get_total_flops()
    assert step == 3 * fwd + 2 * heads  # grad of a conv's input costs its forward; frozen weights: no dW
    print(f"LPIPS at {side} px per image: VGG16 forward {fwd:.4e} FLOPs; in the rec loss (fwd x2 + bwd) {step:.4e}")
