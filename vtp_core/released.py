"""Released VTP tokenizers (the `VTPModel` state dict of MiniMax-AI/VTP) as this project's `Tokenizer`.

Why a converter and not a second model class: an anchor cell must run the same latents -> DiT -> sample ->
metrics code as every trained cell, so the released weights are moved into the project's modules once, in
the `anchor` stage, and saved as an ordinary `tokenizer.pt`. The mapping (docs/anchors.md):

- encoder `trunk.*` -> `encoder.*`: same block math (pre-norm RMSNorm, qkv with a full q/k/v bias, SDPA,
  SwiGLU). DINOv3's SwiGLU computes w3(silu(w1 x) * w2 x); timm's computes fc2(silu(fc1_g x) * fc1_x x), so
  w1 -> fc1_g, w2 -> fc1_x, w3 -> fc2. RoPE: both pair channel i with i + hd/2 (rotate-half) and lay the
  frequencies out as [h periods | w periods] twice, so q/k need no permutation; the released `periods` buffer
  is checked against base 100 (it is a bfloat16 copy of base^(4i/hd)) and not loaded: the project computes
  the same periods in float32.
- `trunk.feature_bottleneck` -> `encoder.bottleneck`; `visual_proj` -> `visual_proj` (reads the
  pre-bottleneck CLS, the project's `heads_read: pre_bottleneck`).
- `pixel_decoder.proj_in`/`proj_out` (1x1 convs) -> `decoder.conv_in`/`conv_out`; blocks and final LayerNorm
  -> `decoder.stack.*`; the PixelShuffle has no weights and the same channel order.
- Pixels: the released model reads and writes ImageNet-normalised pixels ((x01 - mean) / std); the project
  uses [-1, 1]. Both maps are affine per colour channel, so they are folded exactly into the patch
  embedding (input side) and `proj_out` (output side).
- text tower (OpenCLIP layout) -> `text.*`: `in_proj_weight` -> the fused qkv, `out_proj` -> `proj`,
  `c_fc`/`c_proj` -> `fc1`/`fc2`, `ln_1`/`ln_2` -> `norm1`/`norm2`. timm's EVA attention has q and v biases
  and a fixed zero k bias; the released key bias is dropped, which is exact: without RoPE it adds q·b_k to
  every logit of a query's row, and softmax is invariant to that.

Every released tensor is consumed exactly once and every project tensor is set exactly once; a missing,
unexpected or wrongly shaped tensor is refused naming it. A released feature the project's modules cannot
express (QK-norm weights, a k-bias mask, registers, LayerScale, other RoPE periods) is refused as an
unexpected key or a mismatch, never dropped.
"""
from __future__ import annotations

from pathlib import Path

import torch

from vtp_core import registry
from vtp_core.config import AnchorConfig, TokenizerConfig
from vtp_core.runtime import StageContext, StageError, atomic_torch_save, file_hash
from vtp_core.tokenizer import Tokenizer, tokenizer_payload

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ROPE_BASE = 100.0

# block sub-keys: released name -> project name (after the block prefix)
_SWIGLU = {"mlp.w1": "mlp.fc1_g", "mlp.w2": "mlp.fc1_x", "mlp.w3": "mlp.fc2"}
_TEXT_BLOCK = {"ln_1": "norm1", "ln_2": "norm2", "attn.out_proj": "attn.proj", "mlp.c_fc": "mlp.fc1",
               "mlp.c_proj": "mlp.fc2"}


def tokenizer_config(anchor: AnchorConfig, patch: int = 16, latent_channels: int = 64) -> TokenizerConfig:
    """The project config that expresses a released VTP model of `anchor.size`: symmetric decoder, a CLIP text
    tower and visual projection on the pre-bottleneck CLS (no DINO head is released), no QK-norm, full qkv
    bias, RoPE base 100."""
    return TokenizerConfig(recipe="clip_ae", encoder=anchor.size, decoder=anchor.size, text=anchor.text,
                           patch=patch, latent_channels=latent_channels, heads_read="pre_bottleneck",
                           qk_norm=False, qkv_bias="qkv", rope_base=ROPE_BASE, rec_loss="l1")


def sha256_of(path: str | Path) -> str:
    return file_hash(path)


def read_state_dict(path: str | Path, lazy: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a released file: safetensors, or a torch file holding a state dict (optionally under
    'state_dict' / 'model'). Torch files are memory-mapped, so reading the shapes costs no RAM; `lazy` gives a
    safetensors file's tensors as meta tensors of their shapes (its header only)."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            if lazy:
                with safe_open(str(path), "pt") as fh:
                    sd = {k: _meta_or_small(fh, k) for k in fh.keys()}  # noqa: SIM118 - a safetensors handle, not a dict
            else:
                sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line, not a traceback
        raise StageError(f"{path}: not a readable state dict ({type(exc).__name__}: {str(exc)[:120]})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict) and len(sd) == 1:
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise StageError(f"{path}: expected a mapping of tensor names to tensors (a VTPModel state_dict)")
    return sd


def _meta_or_small(fh, key: str) -> torch.Tensor:
    """A lazily opened safetensors entry: the real tensor for the small RoPE periods, else a meta tensor."""
    if key.endswith("periods"):
        return fh.get_tensor(key)
    sl = fh.get_slice(key)
    return torch.empty(sl.get_shape(), device="meta")


def _fold_input_norm(w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch embedding on ImageNet-normalised pixels -> on [-1, 1] pixels: x_n = x / (2 std) + (0.5 - mean) / std
    per channel, and the conv (stride = kernel, no padding) is linear in x_n."""
    if w.is_meta:  # a layout check: shapes only
        return w, b
    mean, std = torch.tensor(IMAGENET_MEAN, dtype=torch.float64), torch.tensor(IMAGENET_STD, dtype=torch.float64)
    w64, b64 = w.double(), b.double()
    w_new = w64 / (2 * std)[None, :, None, None]
    b_new = b64 + (w64 * ((0.5 - mean) / std)[None, :, None, None]).sum(dim=(1, 2, 3))
    return w_new.float(), b_new.float()


def _fold_output_norm(w: torch.Tensor, b: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """proj_out writes ImageNet-normalised pixels y_n; the project's [-1, 1] pixel is 2 (y_n std + mean) - 1.
    Output channel k is colour k // patch² (PixelShuffle order)."""
    if w.is_meta:
        return w, b
    c = torch.arange(w.shape[0]) // (patch * patch)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)[c]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)[c]
    w_new = w.double() * (2 * std)[:, None, None, None]
    b_new = 2 * std * b.double() + 2 * mean - 1
    return w_new.float(), b_new.float()


class _Taker:
    """Hands out released tensors once each, checking their shapes; `leftover()` names what was not used.
    `shapes_only`: hand out meta tensors (no data read) except the small RoPE `periods`, which are checked."""

    def __init__(self, sd: dict[str, torch.Tensor], where: str, what: str, shapes_only: bool = False):
        self.sd, self.where, self.what, self.used, self.shapes_only = sd, where, what, set(), shapes_only

    def __call__(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if key in self.used:
            raise StageError(f"{self.where}: {key} consumed twice (converter bug)")
        if key not in self.sd:
            raise StageError(f"{self.where}: missing key {key} (expected {list(shape)} for {self.what})")
        t = self.sd[key]
        if tuple(t.shape) != tuple(shape):
            raise StageError(f"{self.where}: {key} has shape {list(t.shape)}, expected {list(shape)} for {self.what}")
        self.used.add(key)
        if self.shapes_only and not key.endswith("periods"):
            return torch.empty(t.shape, device="meta")
        return t.detach().to(torch.float32)

    def leftover(self) -> list[str]:
        return sorted(set(self.sd) - self.used)


def _check_periods(periods: torch.Tensor, head_dim: int, key: str, where: str) -> None:
    """The released periods are base^(4i/hd) stored in bfloat16; anything else is a RoPE this project does not
    compute (another base, min/max periods)."""
    want = ROPE_BASE ** (2 * torch.arange(head_dim // 4, dtype=torch.float64) / (head_dim // 2))
    if not torch.equal(periods.to(torch.bfloat16), want.to(torch.bfloat16)):
        raise StageError(f"{where}: {key} = {[round(float(x), 4) for x in periods[:4]]}... are not RoPE base "
                         f"{ROPE_BASE:g} periods (the project's RoPE is base 100 with base^(4i/hd) periods)")


def _mapping(model: Tokenizer, take: _Taker, patch: int) -> dict[str, torch.Tensor]:
    """project state-dict key -> tensor, consuming every released tensor the model needs."""
    enc, dec = model.sizes["encoder"], model.sizes["decoder"]
    txt = model.sizes["text"]
    d, c = enc.width, model.cfg.latent_channels
    out: dict[str, torch.Tensor] = {}
    out["encoder.cls_token"] = take("trunk.cls_token", (1, 1, d))
    out["encoder.mask_token"] = take("trunk.mask_token", (1, d))
    out["encoder.patch_embed.weight"], out["encoder.patch_embed.bias"] = _fold_input_norm(
        take("trunk.patch_embed.proj.weight", (d, 3, patch, patch)), take("trunk.patch_embed.proj.bias", (d,)))
    _check_periods(take("trunk.rope_embed.periods", (d // enc.heads // 4,)), d // enc.heads,
                   "trunk.rope_embed.periods", take.where)
    out.update(_vit_blocks(take, "trunk.blocks", "encoder.trunk.blocks", enc, norm_bias=False))
    out["encoder.trunk.norm.weight"] = take("trunk.norm.weight", (d,))
    out["encoder.bottleneck.weight"] = take("trunk.feature_bottleneck.weight", (c, d))
    out["visual_proj.weight"] = take("visual_proj.weight", (txt.embed_dim, d))
    out["logit_scale"] = take("logit_scale", ())
    dd = dec.width
    out["decoder.conv_in.weight"] = take("pixel_decoder.proj_in.weight", (dd, c, 1, 1))
    out["decoder.conv_in.bias"] = take("pixel_decoder.proj_in.bias", (dd,))
    _check_periods(take("pixel_decoder.rope_embed.periods", (dd // dec.heads // 4,)), dd // dec.heads,
                   "pixel_decoder.rope_embed.periods", take.where)
    out.update(_vit_blocks(take, "pixel_decoder.blocks", "decoder.stack.blocks", dec, norm_bias=True))
    out["decoder.stack.norm.weight"] = take("pixel_decoder.norm.weight", (dd,))
    out["decoder.stack.norm.bias"] = take("pixel_decoder.norm.bias", (dd,))
    n_out = 3 * patch * patch
    out["decoder.conv_out.weight"], out["decoder.conv_out.bias"] = _fold_output_norm(
        take("pixel_decoder.proj_out.weight", (n_out, dd, 1, 1)), take("pixel_decoder.proj_out.bias", (n_out,)), patch)
    out.update(_text(take, txt))
    return out


def _vit_blocks(take: _Taker, src: str, dst: str, size: registry.ViTSize, norm_bias: bool) -> dict[str, torch.Tensor]:
    d, h = size.width, registry.swiglu_hidden(size.width, size.mlp_ratio)
    shapes = {"attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,), "attn.proj.weight": (d, d),
              "attn.proj.bias": (d,), "mlp.w1.weight": (h, d), "mlp.w1.bias": (h,), "mlp.w2.weight": (h, d),
              "mlp.w2.bias": (h,), "mlp.w3.weight": (d, h), "mlp.w3.bias": (d,)}
    for norm in ("norm1", "norm2"):
        shapes[f"{norm}.weight"] = (d,)
        if norm_bias:
            shapes[f"{norm}.bias"] = (d,)
    out = {}
    for i in range(size.depth):
        for sub, shape in shapes.items():
            mod, leaf = sub.rsplit(".", 1)
            out[f"{dst}.{i}.{_SWIGLU.get(mod, mod)}.{leaf}"] = take(f"{src}.{i}.{sub}", shape)
    return out


def _text(take: _Taker, size: registry.TextSize) -> dict[str, torch.Tensor]:
    w, hid = size.width, int(size.width * size.mlp_ratio)
    out = {"text.token_embedding.weight": take("token_embedding.weight", (size.vocab_size, w)),
           "text.positional_embedding": take("positional_embedding", (size.context_length, w)),
           "text.text_projection": take("text_projection", (w, size.embed_dim)),
           "text.ln_final.weight": take("ln_final.weight", (w,)), "text.ln_final.bias": take("ln_final.bias", (w,))}
    shapes = {"ln_1": ((w,), (w,)), "ln_2": ((w,), (w,)), "attn.out_proj": ((w, w), (w,)),
              "mlp.c_fc": ((hid, w), (hid,)), "mlp.c_proj": ((w, hid), (w,))}
    for i in range(size.depth):
        src, dst = f"text_transformer.resblocks.{i}", f"text.blocks.{i}"
        for sub, (ws, bs) in shapes.items():
            out[f"{dst}.{_TEXT_BLOCK[sub]}.weight"] = take(f"{src}.{sub}.weight", ws)
            out[f"{dst}.{_TEXT_BLOCK[sub]}.bias"] = take(f"{src}.{sub}.bias", bs)
        out[f"{dst}.attn.qkv.weight"] = take(f"{src}.attn.in_proj_weight", (3 * w, w))
        q_bias, _k_bias, v_bias = take(f"{src}.attn.in_proj_bias", (3 * w,)).chunk(3)  # k bias: softmax-invariant
        out[f"{dst}.attn.q_bias"], out[f"{dst}.attn.v_bias"] = q_bias, v_bias
    return out


def _infer(sd: dict[str, torch.Tensor], where: str) -> tuple[int, int]:
    """(patch, latent channels) from the patch embedding and the bottleneck (the sizes come from the anchor)."""
    for key in ("trunk.patch_embed.proj.weight", "trunk.feature_bottleneck.weight"):
        if key not in sd:
            raise StageError(f"{where}: missing key {key} (not a VTPModel state dict?)")
    return int(sd["trunk.patch_embed.proj.weight"].shape[-1]), int(sd["trunk.feature_bottleneck.weight"].shape[0])


def infer_shape(path: str | Path) -> tuple[int, int]:
    """(patch, latent channels) of a released file, from its tensor shapes alone."""
    return _infer(read_state_dict(path, lazy=True), str(path))


def convert(sd: dict[str, torch.Tensor], anchor: AnchorConfig, where: str = "",
            shapes_only: bool = False) -> Tokenizer | None:
    """A `Tokenizer` holding the released weights `sd` (see the module docstring), in eval mode on the CPU.
    Raises StageError naming the first missing, unexpected or mis-shaped tensor. `shapes_only`: check the
    layout (names, shapes, RoPE periods) without reading the weights; returns None."""
    where = where or anchor.checkpoint
    patch, channels = _infer(sd, where)
    with torch.device("meta"):
        model = Tokenizer(tokenizer_config(anchor, patch, channels))
    take = _Taker(sd, where, f"VTP size {anchor.size} / text {anchor.text}", shapes_only)
    new = _mapping(model, take, patch)
    extra = take.leftover()
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise StageError(f"{where}: unexpected key {extra[0]}{more}: the project's {anchor.size} tokenizer has no "
                         f"such tensor (a released feature it cannot express, or another size)")
    target = model.state_dict()
    if set(new) != set(target):  # a converter bug, not a user error: every project tensor must be set once
        raise StageError(f"{where}: project tensors not set: {sorted(set(target) - set(new))[:3]}; "
                         f"unknown: {sorted(set(new) - set(target))[:3]}")
    if shapes_only:
        return None
    model = model.to_empty(device="cpu")
    model.load_state_dict(new, strict=True)
    _reset_fixed_buffers(model, where)
    return model.eval()


def _reset_fixed_buffers(model: Tokenizer, where: str) -> None:
    """`to_empty` leaves non-persistent buffers uninitialised and no state dict carries them; the only ones the
    tokenizer has are the EVA attention's fixed zero key biases (text tower)."""
    saved = set(model.state_dict())
    for name, buf in model.named_buffers():
        if name in saved:
            continue
        if not name.endswith(".k_bias"):
            raise StageError(f"{where}: the project tokenizer has a buffer {name} the converter does not set")
        buf.zero_()


def check_layout(path: str | Path, anchor: AnchorConfig) -> None:
    """Refuse a file whose keys or shapes do not match `anchor.size` (StageError naming the tensor), reading
    names and shapes only (torch files are memory-mapped, safetensors lazily opened). It runs the conversion's
    own mapping, so the check and the stage cannot disagree."""
    convert(read_state_dict(path, lazy=True), anchor, str(path), shapes_only=True)


def run(cfg: AnchorConfig, ctx: StageContext) -> dict:
    """The `anchor` stage: check the file's sha256, convert it, save `tokenizer.pt` (what `pretrain` writes)."""
    sha = sha256_of(cfg.checkpoint) if Path(cfg.checkpoint).is_file() else None
    if sha is None:
        raise StageError(f"anchors[{cfg.name}].checkpoint: {cfg.checkpoint}: no such file")
    if sha != cfg.sha256:
        raise StageError(f"anchors[{cfg.name}].sha256: {cfg.checkpoint} has sha256 {sha}, not {cfg.sha256}")
    model = convert(read_state_dict(cfg.checkpoint), cfg)
    atomic_torch_save(tokenizer_payload(model), Path(ctx.out) / "tokenizer.pt")
    return {"checkpoint_sha256": sha, "size": cfg.size,
            "encoder_params": registry.count_params(model.encoder),
            "params": registry.count_params(model)}
