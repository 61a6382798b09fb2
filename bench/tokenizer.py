"""Tokenizer train step (encoder + bottleneck + decoder, L1, AdamW) vs a timm VisionTransformer
encoder + decoder of the same width, depth and token count, timed in the same run; and, for information,
vs the same model built from timm's Eva layers (RoPE, SwiGLU, RMSNorm: the work the plain ViT does not do).

Each side runs in a spawned process of its own (`_Remote`), as each would when training, and the two
alternate in time (ours, ref, ref, ours, ours, ref, ...), the idle one waiting on a pipe; the row reports
medians, so load from other jobs on the machine, and cache state left by the other model, hit both sides
alike, while neither allocates on a heap the other has shaped. With a GPU present, the S and B steps also run
there in bf16 (autocast, fused AdamW, SDPA) and the row adds MFU: the step's FLOPs counted by
`torch.utils.flop_counter` on the step itself, per second, over the GPU's dense bf16 peak; and the same
with both sides `torch.compile`d (ours as the trainer compiles it, `compile_towers`; the reference whole),
since the GPU target is met, or not, with the compiler on."""
from __future__ import annotations

import contextlib
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from vtp_core.runtime import adamw

# dense bf16 tensor-core peaks (TFLOP/s) by device-name substring; VTP_PEAK_TFLOPS overrides
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
                    "RTX 4090": 165.0}


class TimmAE(nn.Module):
    """Reference: timm ViT encoder (patch embed, CLS, abs pos) + bottleneck + timm-block decoder."""

    def __init__(self, enc, dec, image_size: int, patch: int, channels: int):
        super().__init__()
        from timm.models.vision_transformer import Block, VisionTransformer

        self.p, self.side = patch, image_size // patch
        self.enc = VisionTransformer(img_size=image_size, patch_size=patch, embed_dim=enc.width, depth=enc.depth,
                                     num_heads=enc.heads, num_classes=0, global_pool="")
        self.bottleneck = nn.Linear(enc.width, channels, bias=False)
        self.up = nn.Linear(channels, dec.width)
        self.dec = nn.Sequential(*[Block(dec.width, dec.heads) for _ in range(dec.depth)])
        self.out = nn.Linear(dec.width, 3 * patch * patch)

    def forward(self, x):
        tok = self.enc.forward_features(x)[:, 1:]
        y = self.out(self.dec(self.up(self.bottleneck(tok))))
        b = x.shape[0]
        y = y.transpose(1, 2).reshape(b, 3 * self.p * self.p, self.side, self.side)
        return F.pixel_shuffle(y, self.p)


class TimmEvaAE(nn.Module):
    """Information only, the same model in timm's layers: an `Eva` encoder (CLS, 2D RoPE with DINOv3
    coordinates, base 100, rotate-half pairs; SwiGLU hidden aligned to 8; RMSNorm; q/v biases) and
    `EvaBlock`s (LayerNorm, RoPE on the patch grid) as the decoder. Our layers replace exactly these."""

    def __init__(self, enc, dec, image_size: int, patch: int, channels: int):
        super().__init__()
        import functools

        from timm.layers import LayerNorm, RmsNorm, RotaryEmbeddingDinoV3
        from timm.models.eva import Eva, EvaBlock

        self.p, self.side = patch, image_size // patch
        self.enc = Eva(img_size=image_size, patch_size=patch, embed_dim=enc.width, depth=enc.depth,
                       num_heads=enc.heads, num_classes=0, global_pool="", qkv_bias=True, mlp_ratio=enc.mlp_ratio * 2 / 3,
                       swiglu_mlp=True, swiglu_align_to=8, use_abs_pos_emb=False, use_rot_pos_emb=True,
                       rope_type="dinov3", rope_temperature=100.0, rope_rotate_half=True,
                       norm_layer=functools.partial(RmsNorm, eps=1e-5))
        self.bottleneck = nn.Linear(enc.width, channels, bias=False)
        self.up = nn.Linear(channels, dec.width)
        self.dec = nn.ModuleList(EvaBlock(dec.width, dec.heads, qkv_bias=True, mlp_ratio=dec.mlp_ratio * 2 / 3,
                                          swiglu_mlp=True, swiglu_align_to=8, num_prefix_tokens=0, rotate_half=True,
                                          norm_layer=functools.partial(LayerNorm, eps=1e-6))
                                 for _ in range(dec.depth))
        self.dec_norm = LayerNorm(dec.width, eps=1e-6)
        rope = RotaryEmbeddingDinoV3(dec.width // dec.heads, temperature=100.0, rotate_half=True)
        self.register_buffer("rope", rope.get_embed([self.side, self.side]), persistent=False)
        self.out = nn.Linear(dec.width, 3 * patch * patch)

    def forward(self, x):
        y = self.up(self.bottleneck(self.enc.forward_features(x)[:, 1:]))
        for blk in self.dec:
            y = blk(y, rope=self.rope)
        y = self.out(self.dec_norm(y))
        y = y.transpose(1, 2).reshape(x.shape[0], 3 * self.p * self.p, self.side, self.side)
        return F.pixel_shuffle(y, self.p)


class _Stepper:
    """One model's train step (forward, L1, backward, the trainers' AdamW) on a fixed batch."""

    def __init__(self, side: str, model: nn.Module, fwd, x: torch.Tensor):
        self.side, self.model, self.fwd, self.x = side, model, fwd, x
        self.opt = adamw(model.parameters(), x.device, lr=1e-4)  # the trainers' optimizer, same for both sides
        self.cuda = x.is_cuda

    def step(self) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            loss = F.l1_loss(self.fwd(self.x).float(), self.x)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def seconds(self, iters: int) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            self.step()
        if self.cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / iters

    def flops(self) -> int:
        from vtp_core.flops import flop_counter_mode

        with flop_counter_mode() as counter:  # attention counted alike on both sides, whichever kernel runs it
            self.step()
        return counter.get_total_flops()

    def compile(self, backend: str) -> None:
        """Ours as the trainer compiles it (`compile_towers`), the reference whole; then one step, so the
        compilation happens here and not inside a timed round."""
        if self.side == "ours":
            from vtp_core.pretrain import compile_towers

            compile_towers(self.model, backend=backend)
        else:
            self.model.compile(dynamic=False, backend=backend)
        self.step()


def _side(side: str, encoder: str, image_size: int, patch: int, channels: int, batch: int, device: str,
          reference: str = "vit") -> _Stepper:
    """One side of a pair, "ours" (the `ae` tokenizer as the trainer builds it) or "ref", on a fixed batch
    that is the same for both sides, whichever process builds them."""
    from vtp_core import registry
    from vtp_core.config import DataConfig, TokenizerConfig
    from vtp_core.tokenizer import build_tokenizer

    torch.manual_seed(0)
    if side == "ours":
        cfg = TokenizerConfig(recipe="ae", encoder=encoder, decoder=encoder, patch=patch, latent_channels=channels,
                              data=DataConfig(image_size=image_size))
        model = build_tokenizer(cfg).to(device)
        fwd = lambda v: model.decode(model.encode(v))  # noqa: E731
    else:
        from vtp_core.models.linear import route_linears

        model = {"vit": TimmAE, "vit_onednn": TimmAE, "eva": TimmEvaAE}[reference](
            registry.get("encoder", encoder), registry.get("decoder", encoder), image_size, patch, channels).to(device)
        if reference != "vit":  # its Linears' GEMMs where ours run (oneDNN on this kind of CPU): layers vs layers
            route_linears(model)
        fwd = model
    x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(1)).to(device)
    return _Stepper(side, model, fwd, x)


def _pair(encoder: str, image_size: int, patch: int, channels: int, batch: int, device: str, reference: str = "vit"):
    """Both sides in this process (the tests' view of a row's models)."""
    return tuple(_side(side, encoder, image_size, patch, channels, batch, device, reference) for side in ("ours", "ref"))


def _serve(conn, threads: int, side: str, args: tuple) -> None:
    """A side's own process: build it, then answer ("seconds", iters) / ("flops", None) / ("compile",
    backend) / ("threads", None) / ("exit", None) with ("ok", result) or ("error", traceback) until told to
    exit. "threads": (threads, whether this process had to call torch.set_num_threads)."""
    import traceback

    from vtp_core.runtime import keep_freed_memory

    set_threads = torch.get_num_threads() != threads  # normally equal (`_Remote` passes OMP_NUM_THREADS)
    if set_threads:  # and then left alone: see `_Remote` for what the call costs
        torch.set_num_threads(threads)
    keep_freed_memory()  # as a trainer's process runs
    stepper = None
    while True:
        op, arg = conn.recv()
        if op == "exit":
            conn.send(("ok", None))
            return
        if op == "threads":
            conn.send(("ok", (torch.get_num_threads(), set_threads)))
            continue
        try:
            if stepper is None:
                stepper = _side(side, *args)
            if op == "compile":
                from torch._dynamo.utils import counters

                stepper.compile(arg)
                result = counters["stats"]["unique_graphs"]
            else:
                result = stepper.seconds(arg) if op == "seconds" else stepper.flops()
            conn.send(("ok", result))
        except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
            conn.send(("error", traceback.format_exc()))
            return


@contextlib.contextmanager
def _env(**values: str):
    """os.environ with `values` set inside the block (what a spawned child inherits), restored after."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _Remote:
    """One side of a row in a process of its own (`_serve`), stepped on request: ours and the reference
    each own a whole process, as each would when training, so neither runs on a heap or caches the other's
    allocations shaped (in one shared process ours took 1,000-15,700 page faults a step after each of the
    reference's rounds as the heap was trimmed, fragmented and grew; the reference ~0). Rounds still
    alternate in time, and the idle side waits on a pipe, so machine drift still hits both sides alike.
    `close()` (or `contextlib.closing`) ends the process."""

    def __init__(self, side: str, args: tuple):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # a fresh interpreter: no torch state inherited by fork
        self.side, (self.conn, child) = side, ctx.Pipe()
        threads = torch.get_num_threads()
        self.proc = ctx.Process(target=_serve, args=(child, threads, side, args), daemon=True)
        # The child starts with this process's thread count as its default, as a trainer does (it inherits
        # OMP_NUM_THREADS from `make`, and nothing calls torch.set_num_threads): that call also turns MKL's
        # dynamic threading off, after which every GEMM that torch's CPU flash-attention kernel runs inside
        # its own parallel loop fans out again; attention measured 1.4-1.7x slower so, on both sides.
        with _env(OMP_NUM_THREADS=str(threads)):
            self.proc.start()
        child.close()

    def _call(self, op: str, arg=None):
        self.conn.send((op, arg))
        try:
            status, result = self.conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"tokenizer bench: the {self.side} process died (exit code {self.proc.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"tokenizer bench: the {self.side} process failed:\n{result}")
        return result

    def step(self) -> None:
        self._call("seconds", 1)

    def seconds(self, iters: int) -> float:
        return self._call("seconds", iters)

    def flops(self) -> int:
        return self._call("flops")

    def threads(self) -> tuple[int, bool]:
        """(the side's intra-op threads, whether its process called torch.set_num_threads to get them)."""
        return tuple(self._call("threads"))

    def compile(self, backend: str) -> int:
        """Compile this side; returns its process's count of dynamo graphs so far."""
        return self._call("compile", backend)

    def close(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(Exception):
                self._call("exit")
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()
        self.conn.close()


def _alternate(ours: _Stepper, ref: _Stepper, rounds: int, iters: int,
               warmup: int = 2) -> tuple[float, float, float, tuple[float, float]]:
    """Median seconds/step of ours and ref, the median of the per-round ratios ref/ours and their
    quartiles (the row's own spread: a ratio inside it is parity). The order flips every round (ours-ref,
    ref-ours, ...), so neither side always inherits the other's caches."""
    from dit_eval.bench import alternate

    for s in (ours, ref):
        for _ in range(warmup):
            s.step()
    t_ours, t_ref = alternate(ours.seconds, ref.seconds, rounds, iters)
    ratios = [r / o for o, r in zip(t_ours, t_ref)]
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3  # one round: its own spread
    return statistics.median(t_ours), statistics.median(t_ref), statistics.median(ratios), (q1, q3)


def _peak_tflops() -> float | None:
    if os.environ.get("VTP_PEAK_TFLOPS"):
        return float(os.environ["VTP_PEAK_TFLOPS"])
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def _sig(x: float, digits: int = 4) -> float:
    """x to `digits` significant figures: images/s spans 0.5 (B at 256 px on a CPU) to thousands (tiny)."""
    return float(f"{x:.{digits}g}")


def _case(encoder: str, image_size: int, patch: int, channels: int, batch: int, rounds: int, iters: int,
          device: str = "cpu", reference: str = "vit", compiled: str | None = None, isolated: bool = True) -> dict:
    """One row; `compiled`: a torch.compile backend for both sides ("inductor" on the GPU), or None (eager).
    `isolated` (what `make bench` runs): each side in its own process (`_Remote`); False: both in this one."""
    args = (encoder, image_size, patch, channels, batch, device, reference)
    with contextlib.ExitStack() as processes:  # an isolated side's process ends with the row, whatever happens
        if isolated:
            ours, ref = (processes.enter_context(contextlib.closing(_Remote(side, args))) for side in ("ours", "ref"))
        else:
            ours, ref = (_side(side, *args) for side in ("ours", "ref"))
        # counted eagerly (the compiled step is the same step), one step each: ours does 2 % more arithmetic than the
        # plain ViT at tiny (SwiGLU hidden 170.7 rounded up to 176), the same at S and B, and the row says so
        step_flops, ref_flops = ours.flops(), ref.flops()
        if compiled:
            ours.compile(compiled)
            ref.compile(compiled)
        t_ours, t_ref, ratio, (q1, q3) = _alternate(ours, ref, rounds, iters, warmup=4)
    what = {"vit": "timm ViT enc+dec", "vit_onednn": "timm ViT enc+dec, its Linears on our GEMMs (oneDNN), information",
            "eva": "the same model in timm's Eva layers, its Linears on our GEMMs, information"}[reference]
    where = f"cpu {torch.get_num_threads()} threads" if device == "cpu" else device
    where += f" compiled ({compiled})" if compiled else ""
    how = "each in its own process, " if isolated else ""
    row = {"bench": f"tokenizer ae step {encoder} {image_size}px/p{patch} b{batch} {where} images/s "
                    f"(ref: {what}; {how}median of {rounds} alternated rounds, quartiles {q1:.3f}-{q3:.3f}; "
                    f"FLOPs ours/ref {step_flops / ref_flops:.3f}; step {t_ours * 1e3:.4g} / {t_ref * 1e3:.4g} ms)",
           "value": _sig(batch / t_ours), "reference": _sig(batch / t_ref), "ratio": round(ratio, 3),
           "ok": ratio >= 0.98 if reference == "vit" else None}
    if device == "cuda":
        peak = _peak_tflops()
        achieved = step_flops / t_ours / 1e12
        row["bench"] += f"; {achieved:.0f} TFLOP/s bf16"
        if peak:
            row["bench"] += f", MFU {achieved / peak:.1%} of {peak:.0f}"
            row["ok"] = row["ok"] and achieved / peak >= 0.40
    return row


def run() -> list[dict]:
    """CPU rows: tiny at the embedded demo's shape (32 px / p4); S and B at their training shape (256 px / p16,
    257 tokens) with the batch a 2-core CPU steps in about a second; S also at 64 px / p16 (17 tokens), where
    per-op overhead, not arithmetic, sets the step time (the worst case for a model with more, smaller ops).
    Where our Linears run their GEMMs in oneDNN (`vtp_core.models.linear`), information rows give the plain
    ViT the same GEMMs: the target rows compare against timm as it runs by default, those compare layers."""
    from vtp_core.models.linear import cpu_gemm

    rows = [_case("tiny", 32, 4, 8, 64, rounds=11, iters=3), _case("S", 256, 16, 64, 2, rounds=9, iters=1),
            _case("B", 256, 16, 64, 1, rounds=5, iters=1), _case("S", 64, 16, 64, 8, rounds=9, iters=2)]
    if cpu_gemm() == "onednn":
        rows += [_case("tiny", 32, 4, 8, 64, rounds=7, iters=3, reference="vit_onednn"),
                 _case("S", 256, 16, 64, 2, rounds=7, iters=1, reference="vit_onednn")]
    rows += [_case("tiny", 32, 4, 8, 64, rounds=7, iters=3, reference="eva"),
             _case("S", 256, 16, 64, 2, rounds=5, iters=1, reference="eva")]
    if torch.cuda.is_available():
        rows += [_case(size, 256, 16, 64, 64, rounds=5, iters=10, device="cuda", compiled=compiled)
                 for compiled in (None, "inductor") for size in ("S", "B")]
    return rows
