"""Released VTP weights -> the project's Tokenizer (`vtp_core.released`).

A random state dict in the released layout (tests/released_layout.py, transcribed from the released key table)
at a small width/depth is converted; the converted model must compute what the released code computes, here a
float64 reference written from the released math (DINOv3 encoder/decoder, OpenCLIP text tower).

Tolerance: the project model runs in float32 (unit roundoff u = 6e-8) against a float64 reference. Each output
is a chain of ~12 dependent matmul/norm/softmax steps over inner sizes <= 256; the rounding error of one step
is ~sqrt(n)·u <= 1e-6 relative, so the chain stays below ~1e-5 of the output's scale. The bound used,
1e-4 of the output's largest magnitude, leaves 10x to that, and the negative controls show that a wrong RoPE
pairing or a swapped SwiGLU moves the outputs by more than 1e-2 of their scale with these weights.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import released_layout as rl
import torch
from timm.layers import apply_rot_embed_cat

from vtp_core import registry
from vtp_core.config import AnchorConfig
from vtp_core.models.layers import dinov3_rope
from vtp_core.released import check_layout, convert, read_state_dict, run, sha256_of
from vtp_core.runtime import StageContext, StageError
from vtp_core.tokenizer import load_tokenizer

VIT = registry.get("encoder", "tiny")
TEXT = registry.get("text", "tiny")
REL = 1e-4  # see the module docstring


def anchor(path="", sha="0" * 64) -> AnchorConfig:
    return AnchorConfig(name="vtp-tiny", checkpoint=str(path), sha256=sha, size="tiny", text="tiny")


def close(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest |a - ref| relative to the reference's largest magnitude."""
    return float((a.detach().double() - ref.detach()).abs().max() / ref.detach().abs().max())


@pytest.fixture(scope="module")
def sd():
    return rl.random_state_dict(VIT, TEXT, seed=0)


@pytest.fixture(scope="module")
def model(sd):
    return convert(sd, anchor(), "released.pt")


def test_layout_at_L_is_the_released_one():
    """The transcribed layout at VTP-L holds the released model's 731,570,721 numbers (its published total,
    which counts the two 16-entry RoPE `periods` buffers) and the published shapes of a few telling tensors."""
    keys = rl.layout(registry.get("encoder", "L"), registry.get("text", "base"))
    assert sum(math.prod(s) for s in keys.values()) == 731_570_721
    assert keys["trunk.blocks.23.mlp.w1.weight"] == (2736, 1024)
    assert keys["trunk.rope_embed.periods"] == (16,)
    assert keys["pixel_decoder.proj_out.weight"] == (768, 1024, 1, 1)
    assert keys["text_transformer.resblocks.11.attn.in_proj_weight"] == (2304, 768)


def test_every_tensor_used_once_and_shapes_match(sd, model):
    """Every released tensor lands in exactly one project tensor of the same size (the folded pixel maps and
    the split qkv bias included): the project holds the released parameters less the text tower's key bias."""
    n_released = sum(t.numel() for k, t in sd.items() if not k.endswith("periods"))
    n_project = sum(t.numel() for t in model.state_dict().values())
    assert n_project == n_released - TEXT.depth * TEXT.width  # the k third of each in_proj_bias (softmax-invariant)
    assert not any(k.startswith("dino_head") for k in model.state_dict())
    p = model.state_dict()
    assert torch.equal(p["encoder.trunk.blocks.1.mlp.fc1_g.weight"], sd["trunk.blocks.1.mlp.w1.weight"])
    assert torch.equal(p["encoder.trunk.blocks.1.mlp.fc1_x.weight"], sd["trunk.blocks.1.mlp.w2.weight"])
    assert torch.equal(p["decoder.stack.blocks.0.mlp.fc2.bias"], sd["pixel_decoder.blocks.0.mlp.w3.bias"])
    assert torch.equal(p["encoder.trunk.blocks.0.attn.qkv.weight"], sd["trunk.blocks.0.attn.qkv.weight"])
    b = sd["text_transformer.resblocks.1.attn.in_proj_bias"]
    assert torch.equal(p["text.blocks.1.attn.q_bias"], b[:TEXT.width])
    assert torch.equal(p["text.blocks.1.attn.v_bias"], b[2 * TEXT.width:])


def test_encode_decode_match_the_released_math(sd, model):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        y = model.decode(z)
    ref_z = rl.ref_encode(sd, VIT, x)
    assert z.shape == (2, 64, 4, 4) and y.shape == x.shape
    assert close(z, ref_z) < REL
    ref_y = rl.ref_decode(sd, VIT, z.double())
    assert close(y, ref_y) < REL
    # negative controls: the other RoPE pairing, or SwiGLU's gate and up swapped, is far outside the bound
    assert close(z, rl.ref_encode(sd, VIT, x, interleaved=True)) > 1e-2
    assert close(z, rl.ref_encode(sd, VIT, x, swap_swiglu=True)) > 1e-2
    assert close(y, rl.ref_decode(sd, VIT, z.double(), interleaved=True)) > 1e-2


def test_text_tower_matches_openclip(sd, model):
    """The key bias dropped from the text attention changes nothing: torch's nn.MultiheadAttention with the
    full released bias gives the same embedding."""
    assert sd["text_transformer.resblocks.0.attn.in_proj_bias"][TEXT.width:2 * TEXT.width].abs().max() > 0.05
    ids = torch.randint(0, TEXT.vocab_size - 2, (3, TEXT.context_length), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        t = model.text(ids)
    assert close(t, rl.ref_text(sd, TEXT, ids)) < REL


def test_rope_tables_pair_as_the_released_code():
    """The project's RoPE (timm's DINOv3 table, rotate-half) on q equals the released formula on an (h, w) grid,
    the CLS prefix unrotated."""
    hd, hw = 32, (3, 5)
    q = torch.randn(2, 2, 1 + 15, hd, dtype=torch.float64)
    got = apply_rot_embed_cat(q.float(), dinov3_rope(hd, hw, 100.0, 1, torch.device("cpu")), half=True)
    sin, cos = rl._rope(hd, *hw, rl._exact(hd))
    want = torch.cat([q[:, :, :1], rl._rotate(q[:, :, 1:], sin, cos, interleaved=False)], 2)
    assert close(got, want) < 1e-6  # one rotation in float32: a few u of the inputs' scale


@pytest.mark.parametrize("edit, named", [
    (lambda s: s.pop("trunk.blocks.1.mlp.w3.bias"), "missing key trunk.blocks.1.mlp.w3.bias"),
    (lambda s: s.update({"trunk.blocks.0.attn.q_norm.weight": torch.ones(32)}),
     "unexpected key trunk.blocks.0.attn.q_norm.weight"),
    (lambda s: s.update({"pixel_decoder.blocks.0.mlp.w1.weight": torch.zeros(170, 64)}),
     r"pixel_decoder.blocks.0.mlp.w1.weight has shape \[170, 64\], expected \[176, 64\]"),
    (lambda s: s.update({"text_projection": torch.zeros(64, 32)}), r"text_projection has shape \[64, 32\]"),
    (lambda s: s.update({"trunk.rope_embed.periods": rl.periods(32, base=10000.0)}),
     "trunk.rope_embed.periods .* are not RoPE base 100"),
])
def test_wrong_key_or_shape_is_refused_by_name(sd, edit, named):
    bad = dict(sd)
    edit(bad)
    with pytest.raises(StageError, match=named) as err:
        convert(bad, anchor(), "released.pt")
    assert "\n" not in str(err.value) and str(err.value).startswith("released.pt: ")


def test_wrong_size_is_refused(sd):
    with pytest.raises(StageError, match=r"trunk.cls_token has shape \[1, 1, 64\], expected \[1, 1, 384\]"):
        convert(sd, dataclasses.replace(anchor(), size="S"), "released.pt")


def test_anchor_stage_writes_a_tokenizer(sd, tmp_path):
    """The stage checks the sha256, converts, and writes a tokenizer.pt that downstream stages load; a torch
    file and a safetensors file of the same tensors give the same tokenizer."""
    from safetensors.torch import save_file

    pt = rl.save(sd, tmp_path / "vtp.pt")
    with pytest.raises(StageError, match=r"anchors\[vtp-tiny\].sha256: .* has sha256 [0-9a-f]{64}, not 0000"):
        run(anchor(pt), StageContext(out=tmp_path))
    out = tmp_path / "stage"
    out.mkdir()
    m = run(anchor(pt, sha256_of(pt)), StageContext(out=out))
    assert m["checkpoint_sha256"] == sha256_of(pt) and m["encoder_params"] > 0
    tok = load_tokenizer(out)
    st = tmp_path / "vtp.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    other = convert(read_state_dict(st), anchor(st))
    for k, v in tok.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.isfinite(tok.decode(tok.encode(x))).all()


def test_unreadable_file_is_one_line(tmp_path):
    bad = tmp_path / "vtp.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(StageError, match=r"vtp.pt: not a readable state dict") as err:
        read_state_dict(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_layout_check_reads_names_and_shapes(sd, tmp_path, suffix):
    """What the planner runs before any work: the same mapping on shapes alone, refusing by name."""
    from safetensors.torch import save_file

    def write(d, name):
        path = tmp_path / (name + suffix)
        if suffix == ".pt":
            torch.save(d, path)
        else:
            save_file({k: v.contiguous() for k, v in d.items()}, str(path))
        return path

    check_layout(write(sd, "good"), anchor())
    bad = dict(sd, **{"trunk.blocks.0.attn.qkv.bias": torch.zeros(128)})
    with pytest.raises(StageError, match=r"bad.*: trunk.blocks.0.attn.qkv.bias has shape \[128\], expected \[192\]"):
        check_layout(write(bad, "bad"), anchor())


@pytest.mark.parametrize("size", ["S", "B", "L"])
def test_released_sizes_convert_on_shapes(size):
    """The released layout at VTP-S/B/L (meta tensors: no memory) passes the converter's checks for its size,
    so every released tensor of a real file has a place; at L this is the published 731,570,721 numbers."""
    vit, text = registry.get("encoder", size), registry.get("text", "base")
    sd = {k: torch.empty(s, device="meta") for k, s in rl.layout(vit, text).items()}
    for k in ("trunk.rope_embed.periods", "pixel_decoder.rope_embed.periods"):
        sd[k] = rl.periods(vit.width // vit.heads)
    a = dataclasses.replace(anchor(), size=size, text="base")
    assert convert(sd, a, f"vtp-{size}", shapes_only=True) is None
    other = {"S": "B", "B": "L", "L": "S"}[size]
    with pytest.raises(StageError, match=f"vtp-{size}: .* expected .* for VTP size {other}"):
        convert(sd, dataclasses.replace(a, size=other), f"vtp-{size}", shapes_only=True)


def test_released_bfloat16_rope_is_a_rounding_level_difference(sd, model):
    """The released code evaluates RoPE (coordinates, angles, sin/cos) and rotates q and k in bfloat16; the
    converted model does it in float32. Against that exact bfloat16 evaluation the converted model differs by
    rounding: each rotated q/k carries a few bfloat16 unit roundoffs (u = 2^-8), so the outputs stay within
    4u of their scale here (measured ~0.003), far from the RoPE-pairing errors above (~0.3) and far above the
    float32 agreement (~1e-6) that the layout test pins."""
    u = 2.0 ** -8
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        y = model.decode(z)
    for got, ref in ((z, rl.ref_encode(sd, VIT, x, bf16_rope=True)), (y, rl.ref_decode(sd, VIT, z.double(), bf16_rope=True))):
        assert REL < close(got, ref) < 4 * u
