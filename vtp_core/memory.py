"""A trainer step's memory on one GPU: the memory plan's prediction, and the cheapest strategy that fits.

Why predicted: the paper's batch (16,384 images over 8 GPUs: 2,048 ViT-L images per GPU for CLIP, the SSL
crops and the reconstruction subset, all alive in one graph) does not fit an 80 GB GPU as `pretrain` runs it.
The planner must say so, and say what would fit, before a job waits in a queue and dies of OOM.

The prediction (GB = 2^30 bytes, per GPU) bounds the step's peak: every objective's activations saved at the end
of the forward plus a full set of gradients. `pretrain` frees the last step's gradients before the forward, but
backward allocates the new ones while most activations are still alive, so both are counted (an upper bound by
at most the gradients' size):

- `params`, `grads`: the Tokenizer's trainable parameters and their gradients, fp32;
- `adamw`: AdamW's two fp32 states per parameter;
- `ema_teacher`: the EMA copy of the encoder + DINO head (+ its centres), fp32;
- `lpips`: the frozen VGG16 LPIPS net when `rec_loss: l1_lpips`, fp32;
- `bf16_weights`: autocast's bf16 copy of every trainable matmul/conv weight (>= 2-D parameters), cached for
  the forward and kept for backward;
- `ddp_buckets`: DDP's flat gradient buckets (another fp32 gradient; `gradient_as_bucket_view` is off), when
  the world size is above 1;
- `batch`: the per-GPU batch `make_batch` builds (fp32 images, tokens, masks), twice: this step's and the
  next one the loader (`vtp_core.loader`) has already put on the device;
- `act_<objective>`: bytes saved for backward by that objective's forward at its per-GPU batch (CLIP: the
  whole batch / world size; SSL and rec: their subsets / world size), plus its global-batch loss (below);
- `recompute` (activation checkpointing only): one block's saved activations, alive while it is recomputed;
- `allowance`: CUDA context, NCCL buffers, allocator fragmentation, backward temporaries and the EMA
  teacher's no-grad forward: `ALLOWANCE_FRACTION` of the rest + `ALLOWANCE_GB`, declared, not measured.

How the activations are measured (`measure`, `saved_bytes`): the objective's forward as `objectives.step_losses`
runs it with `objectives=(o,)`, on the meta device (shapes only, no memory, any batch size in the same time),
with `torch.autograd.graph.saved_tensors_hooks` counting what autograd keeps for backward. The count is per
*storage*: a view keeps its whole base alive, so a saved tensor adds its storage's bytes the first time that
storage is seen (views of one base, e.g. q/k/v of one qkv projection, count once). It excludes parameters and
buffers (their own components) and the batch's own tensors (`batch`), and it is taken at the end of the
forward (`_Recorder.totals`): what a node whose output nothing uses had saved is freed by then. Three
substitutions model the GPU step on meta, where neither the kernels nor the autocast the trainer uses run:

- bf16 autocast (`_MetaAutocast`): autocast ignores meta tensors, so a `TorchFunctionMode` applies CUDA
  autocast's policy to the ops this code calls: matmuls, linears, convolutions and SDPA cast fp32 operands to
  bf16 (a trainable weight once per forward, as autocast's cache does; excluded here, it is `bf16_weights`);
  layer/group norms, softmax, log-softmax, normalize, norms, sums, exp/log, pow and the losses run in fp32.
  Approximation: autocast lists more ops than this code calls; an op missing from the lists keeps its input
  dtype (the element-wise ops do, under autocast too).
- flash attention (`_FlashAttention`): SDPA on meta takes the math path and saves the (N, N) scores; the GPU
  kernels (flash / memory-efficient) save q, k, v, the output and an fp32 log-sum-exp (B, H, N). The CPU's
  flash kernel saves the same, which the test compares against real tensors.
- fused RMSNorm (`_FusedRmsNorm`, `kernels="cuda"`): on CUDA `F.rms_norm` runs `_fused_rms_norm`, which keeps
  its input and an fp32 reciprocal RMS per row; meta (and the CPU) run the composite, which keeps more.

Not modelled: `torch.compile` (TokenizerConfig.compile, CUDA): a compiled block saves what inductor's
partitioner picks, usually less than eager, so the eager count is an upper bound there; and kernel
workspaces / temporaries that live only inside one op (in `allowance`).

Speed: the towers' blocks are identical, so each objective is measured once with every tower at depth 1 and
module hooks attribute the saved bytes to each block call (and the block's input, what checkpointing keeps);
a tower at depth d saves `other + d * block` (tested against the full-depth count). Tensors a block receives
besides its input (the RoPE table, a DiT's conditioning) are the same for every block: counted once.

The affine model (`calibrate`): per objective, every measured piece (non-block bytes, each block call's bytes
and input) at two small per-GPU batches (`calibration_images`: (2, 4) images without sample-drop, (10, 20) at
the method's drop rates, so the dropped-sample counts are exact), evaluated at any per-GPU batch by the line
through the two points (tested within 15 % of the measurement at a third, larger batch; at the paper's ViT-L
cell within 0.1 % of a direct count at the full per-GPU batch). The global losses are neither affine nor
per-GPU: `gather_with_grad` hands every rank the whole batch's CLIP embeddings (logits B x B, fp32, and two
log-softmax outputs of that size) and KoLeo's SSL CLS tokens, so their bytes are measured once at the global
batch and taken out of the calibration points (measured there at the calibration size).

Strategies (`predict`, `choose`; cheapest first): `none` (as `pretrain` runs now); `checkpoint` (every
transformer block of every tower under activation checkpointing: a block keeps its input instead of its
interior, and one block's interior is alive again while it is recomputed in backward); and
`checkpoint+microbatch:k` (the per-GPU batch of every objective in k micro-batches, activations at 1/k of the
batch (the affine model evaluated there, its intercept kept whole) with the global losses unchanged through
gradient caching: the embeddings of the per-GPU batch are computed first, the loss over the gathered global
batch gives their gradients, each micro-batch is then re-run and back-propagated from them; its extra memory
is those embeddings and their fp32 gradients, `gradcache`). The batch tensors are not divided: the whole
per-GPU batch is on the device either way.
"""
from __future__ import annotations

import dataclasses
import json
import math
import weakref
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from vtp_core import registry
from vtp_core.batches import objective_batches
from vtp_core.cfg import versioned_dict
from vtp_core.config import TokenizerConfig
from vtp_core.objectives import Teacher, active_objectives, step_losses
from vtp_core.tokenizer import Tokenizer, text_size

MEMORY_VERSION = 1  # bump when what a measurement counts changes (it keys the planner's cache)
GiB = float(2 ** 30)  # "GB" everywhere here: what nvidia-smi's MiB / 1024 and a GPU's "80 GB" mean
ALLOWANCE_FRACTION = 0.10  # allocator fragmentation, backward temporaries, the teacher's transient forward
ALLOWANCE_GB = 1.0  # CUDA context + cuBLAS workspaces + NCCL buffers
MAX_CALIBRATION_UNIT = 1000  # the largest drop-rate denominator the calibration sizes follow (below)
TOWERS = ("encoder", "decoder", "text")  # `Tokenizer` attributes = registry kinds of the towers with blocks
STRATEGIES = ("none", "checkpoint", "checkpoint+microbatch:k")
KERNELS = ("cuda", "cpu")  # whose kernels a meta-device measurement models


# ---------------------------------------------------------------------------- meta-device autocast and SDPA
class _FlashAttention(torch.autograd.Function):
    """What a flash / memory-efficient SDPA kernel keeps for backward: q, k, v, its output (token-major, as the
    kernels write it) and the fp32 log-sum-exp (B, H, N); not the (N, N) scores of the math path."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, n = q.shape[:3]
        out = torch.empty(b, n, h, v.shape[-1], dtype=q.dtype, device=q.device).transpose(1, 2)
        lse = torch.empty(b, h, n, dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class _FusedRmsNorm(torch.autograd.Function):
    """What CUDA's fused RMSNorm (`rms_norm` -> `_fused_rms_norm`) keeps for backward: its input, the weight and
    the fp32 reciprocal RMS (one per row); not the composite's squared / normalised intermediates."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, dims: int) -> torch.Tensor:
        rstd = torch.empty(*x.shape[:-dims], *[1] * dims, dtype=torch.float32, device=x.device)
        ctx.save_for_backward(x, weight, rstd)
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, weight, _ = ctx.saved_tensors
        return torch.empty_like(x), None if weight is None else torch.empty_like(weight), None


_T = torch.Tensor
_LOWER = {F.linear, F.conv1d, F.conv2d, F.conv_transpose2d, torch.matmul, _T.matmul, _T.__matmul__, _T.__rmatmul__,
          torch.mm, _T.mm, torch.bmm, _T.bmm, torch.addmm, _T.addmm, torch.baddbmm, torch.einsum,
          F.scaled_dot_product_attention}
_FP32 = {F.layer_norm, F.group_norm, F.normalize, F.softmax, F.log_softmax, F.cross_entropy, F.nll_loss, F.l1_loss,
         F.mse_loss, torch.softmax, _T.softmax, torch.log_softmax, _T.log_softmax, torch.norm, _T.norm,
         torch.linalg.vector_norm, torch.sum, _T.sum, torch.exp, _T.exp, torch.log, _T.log, torch.pow, _T.pow,
         _T.__pow__, torch.rsqrt, _T.rsqrt, torch.cumsum, _T.cumsum, torch.prod, _T.prod}


class _MetaAutocast(TorchFunctionMode):
    """CUDA bf16 autocast's policy for meta tensors (which autocast ignores), and the kernels of `kernels`:
    SDPA as the flash kernel (CUDA and CPU), RMSNorm as CUDA's fused kernel ("cuda"; the CPU runs the composite).

    A trainable leaf (a parameter) is cast once per forward and the cast reused, as autocast's weight cache
    does; its storage joins `exclude` (it is `bf16_weights`, not an activation)."""

    def __init__(self, dtype: torch.dtype | None, kernels: str, exclude: set):
        super().__init__()
        if kernels not in KERNELS:
            raise ValueError(f"kernels={kernels!r}; valid: {', '.join(KERNELS)}")
        self.dtype, self.kernels, self.exclude = dtype, kernels, exclude
        self.cache: dict[tuple, torch.Tensor] = {}  # (id(parameter), dtype) -> its cast

    def _cast(self, x: Any, to: torch.dtype, frm: tuple[torch.dtype, ...]) -> Any:
        if isinstance(x, (list, tuple)):
            return type(x)(self._cast(v, to, frm) for v in x)
        if not isinstance(x, torch.Tensor) or x.dtype not in frm:
            return x
        if isinstance(x, nn.Parameter) and x.requires_grad:
            key = (id(x), to)
            if key not in self.cache:
                self.cache[key] = y = x.to(to)
                self.exclude.add(_storage(y)[0])
            return self.cache[key]
        return x.to(to)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.dtype is not None and func in _LOWER:
            args, kwargs = self._cast(args, self.dtype, (torch.float32,)), {
                k: self._cast(v, self.dtype, (torch.float32,)) for k, v in kwargs.items()}
        elif self.dtype is not None and func in _FP32:
            args, kwargs = self._cast(args, torch.float32, (self.dtype,)), {
                k: self._cast(v, torch.float32, (self.dtype,)) for k, v in kwargs.items()}
        if func is F.scaled_dot_product_attention and kwargs.get("attn_mask") is None:  # with a mask: math path
            return _FlashAttention.apply(*args[:3])
        if func is F.rms_norm and self.kernels == "cuda":
            x, shape = args[0], args[1] if len(args) > 1 else kwargs["normalized_shape"]
            weight = args[2] if len(args) > 2 else kwargs.get("weight")
            return _FusedRmsNorm.apply(x, weight, len(shape) if isinstance(shape, (list, tuple)) else 1)
        return func(*args, **kwargs)


# ---------------------------------------------------------------------------- counting saved tensors
def _storage(t: torch.Tensor) -> tuple[int, int]:
    """(identity, bytes) of the storage behind `t` (a view shares its base's); meta tensors have storages too."""
    try:
        st = t.untyped_storage()
        return st._cdata, st.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):  # a tensor without a storage (a wrapper subclass)
        return id(t), t.numel() * t.element_size()


class _Recorder:
    """Pack hook + block hooks. At the end of the forward (`totals`), every storage still held for backward is
    counted once: outside any block, or in the first block call that saved it. Counted then, not when packed:
    a node whose output nothing uses is freed during the forward (KoLeo's similarity matrix), its storage with
    it, and a later tensor may get the same storage identity."""

    def __init__(self, exclude: set):
        self.exclude, self.packed, self.calls, self.stack, self.shared = exclude, [], [], [], []

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        self.packed.append((weakref.ref(t), self.stack[-1] if self.stack else None))
        return t

    def totals(self) -> tuple[int, list[int]]:
        """(bytes outside the blocks, bytes per block call) of what the graph holds now."""
        shared = {_storage(v)[0] for r in self.shared if (v := r()) is not None}
        seen, other, per_call = set(self.exclude), 0, [0] * len(self.calls)
        for ref, top in self.packed:
            t = ref()
            if t is None:
                continue
            key, nbytes = _storage(t)
            if key in seen:
                continue
            seen.add(key)
            if top is None or key in shared:
                other += nbytes
            else:
                per_call[top] += nbytes
        return other, per_call

    def hook(self, tower: str, blocks: list[nn.Module]) -> list:
        def pre(mod, args, kwargs):
            if not torch.is_grad_enabled():
                self.stack.append(None)
                return
            x = args[0] if args else next(iter(kwargs.values()))
            self.calls.append((tower, x.numel() * x.element_size()))
            self.stack.append(len(self.calls) - 1)
            # what a block gets besides its input (RoPE table, conditioning) is every block's: counted once
            self.shared += [weakref.ref(v) for v in (*args[1:], *kwargs.values()) if isinstance(v, torch.Tensor)]

        def post(mod, args, kwargs, out):
            self.stack.pop()

        return [h for b in blocks for h in (b.register_forward_pre_hook(pre, with_kwargs=True),
                                            b.register_forward_hook(post, with_kwargs=True))]


def _blocks(tower: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a tower: the members of its `blocks` ModuleList(s)."""
    return [b for name, m in tower.named_modules() if name.split(".")[-1] == "blocks" and isinstance(m, nn.ModuleList)
            for b in m]


def _full_sizes(cfg: TokenizerConfig) -> dict:
    sizes = {"encoder": registry.get("encoder", cfg.encoder), "decoder": registry.get("decoder", cfg.decoder)}
    if cfg.recipe in ("clip_ae", "clip_ssl_ae"):
        sizes["text"] = text_size(cfg)
    return sizes


def _batch(cfg: TokenizerConfig, objective: str, n: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One objective's batch of `n` images shaped like `batches.make_batch`'s (its mask count the expected one,
    as `flops._meta_batch`), fp32 images; real values on a real device."""
    s, img = cfg.data.image_size, lambda *shape: torch.randn(*shape, device=device).clamp_(-1, 1)
    if objective == "rec":
        return {"rec_images": img(n, 3, s, s)}
    if objective == "clip":
        return {"clip_images": img(n, 3, s, s),
                "clip_text": torch.zeros(n, text_size(cfg).context_length, dtype=torch.long, device=device)}
    n_img, n_tok = 2 * n, (cfg.global_crop // cfg.patch) ** 2
    n_masked = int(n_img * cfg.mask_probability)
    lo, hi = cfg.mask_ratio
    n_idx = sum(int(round((lo + (hi - lo) * j / max(n_masked - 1, 1)) * n_tok)) for j in range(n_masked))
    return {"global_views": img(n_img, 3, cfg.global_crop, cfg.global_crop),
            "local_views": img(cfg.n_local_crops * n, 3, cfg.local_crop, cfg.local_crop),
            "masks": torch.zeros(n_img, n_tok, dtype=torch.bool, device=device),
            "mask_idx": torch.zeros(n_idx, dtype=torch.long, device=device),
            "mask_weight": torch.ones(n_idx, device=device)}


def _modes(device: torch.device, dtype: torch.dtype, exclude: set, kernels: str = "cuda"):
    """The context that makes a forward on `device` save what the step saves on `kernels`' device: on meta,
    `_MetaAutocast` (autocast when `dtype` is not fp32); on a real device its own kernels and autocast."""
    if device.type == "meta":
        return _MetaAutocast(None if dtype == torch.float32 else dtype, kernels, exclude)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def _param_keys(*modules: nn.Module | None) -> set:
    return {_storage(t)[0] for m in modules if m is not None for t in (*m.parameters(), *m.buffers())}


def count_saved(run, towers: dict[str, nn.Module], exclude: set, device: torch.device, dtype: torch.dtype,
                kernels: str = "cuda") -> tuple[int, list[list]]:
    """(bytes saved outside the blocks, [[tower, bytes saved in one block call, that block's input bytes], ...])
    of `run()` (a forward with grad), counted with saved-tensor hooks at its end; `towers` name the modules
    whose `blocks` are attributed per call; storages in `exclude` (parameters, buffers, inputs) are not counted."""
    rec = _Recorder(exclude)
    handles = [h for name, tower in towers.items() for h in rec.hook(name, _blocks(tower))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t), _modes(device, dtype, exclude, kernels):
            out = run()
        other, per_call = rec.totals()  # while `out` holds the graph
        del out
    finally:
        for h in handles:
            h.remove()
    return other, [[t, saved, inp] for (t, inp), saved in zip(rec.calls, per_call)]


def input_keys(tensors) -> tuple[set, int]:
    """(storage identities, bytes) of a step's input tensors."""
    keys, nbytes = set(), 0
    for t in tensors:
        key, n = _storage(t)
        keys.add(key)
        nbytes += n
    return keys, nbytes


def measure(cfg: TokenizerConfig, objective: str, n: int, dtype: torch.dtype = torch.bfloat16,
            device: str | torch.device = "meta", sizes: dict | None = None, kernels: str = "cuda") -> dict:
    """Bytes one objective's forward saves for backward on `n` images of its batch (world size 1), as
    {'other': outside the blocks, 'calls': [[tower, bytes saved in one block call, that block's input
    bytes], ...], 'batch': the batch's own bytes}. `sizes` overrides the towers' registry sizes (depth 1 for
    the extrapolation). `dtype` is the training dtype (bf16: autocast as on CUDA). `kernels`: on meta, whose
    kernels to model (the CPU's, to compare with a real CPU step)."""
    from vtp_core.losses.lpips import LPIPS

    device = torch.device(device)
    torch.manual_seed(0)
    with torch.device(device):
        model = Tokenizer(cfg, sizes)
        teacher = Teacher(model) if objective == "ssl" else None
        lpips = LPIPS().eval() if objective == "rec" and cfg.lpips_on else None
    if lpips is not None:
        lpips.requires_grad_(False)
    model.train()
    batch = _batch(cfg, objective, n, device)
    keys, batch_bytes = input_keys(batch.values())
    other, calls = count_saved(lambda: step_losses(model, teacher, batch, 0.04, (objective,), lpips),
                               {name: getattr(model, name) for name in TOWERS if hasattr(model, name)},
                               _param_keys(model, teacher, lpips) | keys, device, dtype, kernels)
    return {"other": other, "calls": calls, "batch": batch_bytes}


def _depth1(cfg: TokenizerConfig) -> dict:
    return {k: dataclasses.replace(s, depth=1) for k, s in _full_sizes(cfg).items()}


def saved_bytes(cfg: TokenizerConfig, objective: str, n: int, dtype: torch.dtype = torch.bfloat16,
                device: str | torch.device = "meta", extrapolate: bool = True, kernels: str = "cuda") -> int:
    """Bytes saved for backward by one objective's forward on `n` images (world size 1: its loss over those
    `n`), excluding parameters, buffers and the batch. `extrapolate`: measured at depth 1 per tower and
    scaled to the full depth (exact for identical blocks); else measured at full depth."""
    if not extrapolate:
        m = measure(cfg, objective, n, dtype, device, kernels=kernels)
        return int(m["other"] + sum(c[1] for c in m["calls"]))
    depth = {k: s.depth for k, s in _full_sizes(cfg).items()}
    m = measure(cfg, objective, n, dtype, device, _depth1(cfg), kernels)
    return int(m["other"] + sum(depth[t] * saved for t, saved, _ in m["calls"]))


# ---------------------------------------------------------------------------- the global-batch losses
def global_loss_bytes(cfg: TokenizerConfig, objective: str, n: int, dtype: torch.dtype) -> float:
    """Bytes the objective's loss over gathered embeddings saves for `n` rows (the CLIP loss on image and
    text embeddings; KoLeo on the SSL CLS tokens of each of the two global views), its inputs not counted
    (the towers' outputs: their cast copies are what is saved). 0 for rec."""
    from vtp_core.losses import clip_loss, koleo_loss

    if objective == "rec":
        return 0.0
    m = torch.device("meta")
    with torch.device(m):
        if objective == "clip":
            e = text_size(cfg).embed_dim
            xs = [torch.empty(n, e, dtype=dtype, requires_grad=True) for _ in range(2)]
            scale = nn.Parameter(torch.tensor(2.0))
            run = lambda: clip_loss(xs[0], xs[1], scale, cfg.logit_scale_max)  # noqa: E731
        else:
            d = _head_dim(cfg)
            xs = [torch.empty(n, d, dtype=dtype, requires_grad=True) for _ in range(2)]
            scale = None
            run = lambda: koleo_loss(xs[0]) + koleo_loss(xs[1])  # noqa: E731
    exclude = input_keys(xs + ([scale] if scale is not None else []))[0]
    return float(count_saved(run, {}, exclude, m, dtype)[0])


def _head_dim(cfg: TokenizerConfig) -> int:
    """Width of what the CLIP / DINO heads (and KoLeo) read: the encoder's tokens or the latent."""
    return registry.get("encoder", cfg.encoder).width if cfg.heads_read == "pre_bottleneck" else cfg.latent_channels


def _gradcache_per_image(cfg: TokenizerConfig, objective: str) -> float:
    """Gradient caching's memory per per-GPU image: the embeddings the global loss reads and their gradients,
    fp32 (CLIP: image + text embedding; SSL: the CLS token of the two global views, for KoLeo)."""
    if objective == "clip":
        return 2 * 2 * text_size(cfg).embed_dim * 4.0
    if objective == "ssl":
        return 2 * 2 * _head_dim(cfg) * 4.0
    return 0.0


# ---------------------------------------------------------------------------- calibration (JSON-able)
def _fixed_bytes(cfg: TokenizerConfig) -> dict[str, float]:
    from vtp_core.losses.lpips import LPIPS

    with torch.device("meta"):
        model = Tokenizer(cfg)
        teacher = Teacher(model) if model.lambda_ssl else None
        lpips = LPIPS() if cfg.lpips_on else None
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def size(m: nn.Module | None) -> int:
        return 0 if m is None else sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))

    return {"params": 4.0 * params, "grads": 4.0 * params, "adamw": 8.0 * params, "ema_teacher": float(size(teacher)),
            "lpips": float(size(lpips)),
            "bf16_weights": 2.0 * sum(p.numel() for p in model.parameters() if p.requires_grad and p.dim() >= 2)}


def calibration_images(cfg: TokenizerConfig) -> tuple[int, int]:
    """The two per-GPU image counts the affine model is calibrated at: (u, 2u), u the smallest integer >= 2
    for which every sample-drop keep count int(B·(1 - drop_rate)) (`layers.sample_drop_add`) is exact, i.e. a
    multiple of each (1 - rate)'s denominator: (2, 4) without drop, (10, 20) at the method's 0.1 / 0.3. Below
    that the rounding makes the line steeper than the batch it predicts (+10 % at (2, 4) for ViT-L CLIP)."""
    from fractions import Fraction

    u = 1
    for r in (cfg.clip_drop_rate, cfg.ssl_drop_rate, cfg.rec_drop_rate):
        u = math.lcm(u, Fraction(1 - r).limit_denominator(MAX_CALIBRATION_UNIT).denominator)
    u = max(2, u)
    return u, 2 * u


def calibrate(cfg: TokenizerConfig, dtype: torch.dtype = torch.bfloat16) -> dict:
    """The memory model of `cfg` (JSON-able, what the planner caches): the fixed bytes, and per active objective
    its pieces measured at `calibration_images(cfg)` per-GPU images (meta device, depth 1 per tower, the local
    loss taken out), its global-batch loss bytes and its gradient-caching bytes per image."""
    ns = calibration_images(cfg)
    with torch.device("meta"):
        active = active_objectives(Tokenizer(cfg, _depth1(cfg)))
    depth = {k: s.depth for k, s in _full_sizes(cfg).items()}
    global_n = objective_batches(cfg)
    objs = {}
    for o in active:
        points = []
        for n in ns:
            m = measure(cfg, o, n, dtype, "meta", _depth1(cfg))
            points.append({"other": m["other"] - global_loss_bytes(cfg, o, n, dtype), "batch": m["batch"],
                           "calls": [{"tower": t, "saved": s, "input": i} for t, s, i in m["calls"]]})
        objs[o] = {"points": points, "depth": {t: depth[t] for t in {c["tower"] for c in points[0]["calls"]}},
                   "global_loss": global_loss_bytes(cfg, o, global_n[o], dtype), "global_n": global_n[o],
                   "gradcache_per_image": _gradcache_per_image(cfg, o)}
    return {"version": MEMORY_VERSION, "dtype": str(dtype).removeprefix("torch."), "n": list(ns),
            "fixed": _fixed_bytes(cfg), "objectives": objs}


_MODELS: dict[str, dict] = {}


def memory_model(cfg: TokenizerConfig) -> dict:
    """`calibrate(cfg)`, memoised in-process (the planner also caches it on disk: `sweeps.costs`)."""
    key = json.dumps(versioned_dict(dataclasses.replace(cfg, steps=1, seed=0)), sort_keys=True, default=str)
    if key not in _MODELS:
        _MODELS[key] = calibrate(cfg)
    return _MODELS[key]


# ---------------------------------------------------------------------------- prediction and choice
def parse_strategy(strategy: str) -> tuple[bool, int]:
    """'none' | 'checkpoint' | 'checkpoint+microbatch:k' (also 'microbatch:k') -> (checkpointing, k)."""
    ckpt, k = False, 1
    for part in strategy.split("+"):
        if part == "checkpoint":
            ckpt = True
        elif part.startswith("microbatch:") and part[len("microbatch:"):].isdigit() and int(part[11:]) >= 1:
            k = int(part[len("microbatch:"):])
        elif part != "none":
            raise ValueError(f"memory strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    return ckpt, k


def strategy_name(checkpoint: bool, micro_batches: int) -> str:
    """The inverse of `parse_strategy`: the trainer's two fields as a strategy name."""
    if micro_batches > 1:
        return f"checkpoint+microbatch:{micro_batches}" if checkpoint else f"microbatch:{micro_batches}"
    return "checkpoint" if checkpoint else "none"


def _at(model: dict, points: list, n: float, get) -> float:
    """The line through the two calibration points of one piece, at n images."""
    (n0, n1), (v0, v1) = model["n"], (get(points[0]), get(points[1]))
    return v0 + (v1 - v0) * (n - n0) / (n1 - n0)


def affine_saved_bytes(model: dict, objective: str, n: float, checkpoint: bool = False) -> float:
    """The affine model's saved bytes of one objective on n per-GPU images, its global loss left out (add
    `global_loss_bytes` at the rows the loss sees). `checkpoint`: the blocks keep only their inputs."""
    obj = model["objectives"][objective]
    pts = obj["points"]
    out = _at(model, pts, n, lambda p: p["other"])
    for i, call in enumerate(pts[0]["calls"]):
        piece = "input" if checkpoint else "saved"
        out += obj["depth"][call["tower"]] * _at(model, pts, n, lambda p, i=i: p["calls"][i][piece])
    return out


def per_gpu_batches(cfg: TokenizerConfig, world_size: int) -> dict[str, float]:
    """Images of each active objective's batch on one GPU (global batch / world size)."""
    return {o: b / world_size for o, b in objective_batches(cfg).items() if b}


def predict_from(model: dict, n_gpu: dict[str, float], world_size: int, strategy: str, batch_n: dict[str, float],
                 batch_copies: int) -> dict:
    """GB (2^30 bytes) by component, with 'total', of a step whose memory `model` holds (`calibrate`'s format)
    on `n_gpu` images per objective and GPU: the fixed bytes, DDP's buckets (world size > 1), `batch_copies`
    batches of `batch_n` images alive, the activations under `strategy`, the allowance."""
    ckpt, k = parse_strategy(strategy)
    out = dict(model["fixed"])
    out["ddp_buckets"] = model["fixed"]["grads"] if world_size > 1 else 0.0
    out["batch"] = batch_copies * sum(_at(model, obj["points"], batch_n[o], lambda p: p["batch"])
                                      for o, obj in model["objectives"].items())
    recompute = 0.0
    for o, obj in model["objectives"].items():
        pts, n = obj["points"], n_gpu[o] / k
        act = affine_saved_bytes(model, o, n, ckpt) + obj["global_loss"]
        if ckpt:  # one block call's interior, recomputed in backward while the others hold only their inputs
            recompute = max([recompute, *(_at(model, pts, n, lambda p, i=i: p["calls"][i]["saved"])
                                          for i in range(len(pts[0]["calls"])))])
        if k > 1:
            act += obj["gradcache_per_image"] * n_gpu[o]
        out[f"act_{o}"] = act
    out["recompute"] = recompute
    rest = sum(out.values())
    out["allowance"] = ALLOWANCE_FRACTION * rest + ALLOWANCE_GB * GiB
    out = {name: v / GiB for name, v in out.items()}
    out["total"] = sum(out.values())
    return out


def predict(cfg: TokenizerConfig, world_size: int, strategy: str = "none", model: dict | None = None) -> dict:
    """Per-GPU peak memory of one `pretrain` step, in GB (2^30 bytes), by component (module docstring), with
    'total'. `model`: `calibrate(cfg)` (default: memoised here). The batch: this step's per-GPU slices and the
    prefetched next step's."""
    n_gpu = per_gpu_batches(cfg, world_size)
    return predict_from(model or memory_model(cfg), n_gpu, world_size, strategy, n_gpu, 2)


def strategies_for(per_gpu: list[int]) -> list[str]:
    """none, checkpoint, then checkpoint with k >= 2 micro-batches for every k dividing each per-GPU batch."""
    g = math.gcd(*per_gpu) if per_gpu else 1
    return ["none", "checkpoint", *(f"checkpoint+microbatch:{k}" for k in range(2, g + 1) if g % k == 0)]


def choose_from(strategies_: list[str], predict_: Callable[[str], dict], gpu_mem_gb: float) -> str | None:
    """The first of `strategies_` whose predicted total fits `gpu_mem_gb`, or None."""
    return next((s for s in strategies_ if predict_(s)["total"] <= gpu_mem_gb), None)


def strategies(cfg: TokenizerConfig, world_size: int) -> list[str]:
    """Every strategy the plan may pick for `cfg`, cheapest (least recomputation) first; k divides every active
    objective's per-GPU batch."""
    return strategies_for([int(b) for b in per_gpu_batches(cfg, world_size).values()])


def choose(cfg: TokenizerConfig, world_size: int, gpu_mem_gb: float, model: dict | None = None) -> str | None:
    """The cheapest strategy whose predicted total fits `gpu_mem_gb`, or None when none does."""
    model = model or memory_model(cfg)
    return choose_from(strategies(cfg, world_size), lambda s: predict(cfg, world_size, s, model), gpu_mem_gb)


def describe(parts: dict) -> str:
    """'params 1.87, grads 1.87, ... = 58.94 GB' (zero components left out)."""
    shown = ", ".join(f"{k} {v:.3g}" for k, v in parts.items() if k != "total" and v > 0)
    return f"{shown} = {parts['total']:.4g} GB"
