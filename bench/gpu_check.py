"""`make gpu-check`: what the GPU path promises, measured by one command on one GPU (at most 8 minutes on an
H100, compile time included) and printed as one table, also written as Markdown and JSON headed with the UTC
date, the device, torch and the git commit, ready to paste into docs/benchmarks.md.

Why: the suite is written and tested on CPUs, and its GPU claims hold only once measured on a GPU: a bf16 step
fast enough to be worth renting, a compiled step that trains like the eager one, a memory plan that never
under-predicts, a study that runs end to end on CUDA. This module measures each; every row runs on its own (an
exception becomes a failed row with its one-line reason, and the other rows still run).

a. tokenizer S and B `ae` train step (`bench.tokenizer.ae_step`: 256 px / p16, batch 64, bf16 autocast, fused
   AdamW), eager and compiled as the trainer compiles it (`compile_towers`, inductor): images/s, achieved
   TFLOP/s (the step's FLOPs counted on the step itself by `vtp_core.flops.flop_counter_mode`) and MFU over the
   device's dense bf16 peak (`bench/peaks.py`). Target: MFU >= 40 % compiled; the eager rows are information.
b. DiT-B/1 train step as `dit_eval.train` runs it (bf16 autocast, fused AdamW, EMA update) on the method's
   latents (64 channels on a 16x16 grid: 256 px at p16; `DiTSpec` defaults otherwise) at 128 per GPU (the
   LightningDiT batch of 1024 over 8 GPUs): images/s, TFLOP/s, MFU, and the planner's FLOPs per step beside the
   counted ones. Information: the DiT trainer runs eager.
c. eager vs compiled loss agreement: the trainer itself (`pretrain.run`, on generated tar shards) trains one
   S `clip_ssl_ae` config twice for 20 steps from the same seed and data, `compile` off and on, with inductor's
   `fallback_random` so both runs draw the same random numbers (sample drop); the row is the largest relative
   difference of a step's total loss. Tolerance 5u = 2e-2, u = 2^-8 the bf16 unit roundoff: where eager rounds
   every intermediate of a block to bf16, inductor's fused kernels keep fp32 inside, so a block's output moves
   by ~u per element; the losses average that over many elements at the first step (identical weights), and
   after it the two runs' weights part by rounding-sized amounts that AdamW's normalised update can magnify
   (a gradient entry near zero moves its weight by ~lr either way). 5u leaves room for that drift over 20 steps
   while a broken compiled step (a wrong or missing op) moves the loss by O(1). A compiled run that hits
   dynamo's recompile limit (part of the step silently eager) fails the row.
d. memory predicted vs measured: `pretrain.run` (eager, 3 steps: the last two hold the gradients and AdamW
   states) of S `clip_ssl_ae` with L1+LPIPS (random weights in the real layout) at per-GPU batches 32 and 64,
   world size 1: `torch.cuda.max_memory_allocated` (less what was allocated before the run) against
   `vtp_core.memory.predict(cfg, 1, "none")`, shown with and without its allowance. ok when
   measured <= predicted <= 1.5 x measured: the plan must never under-predict, and above 1.5x it would waste
   GPUs (at these sizes the allowance is 10 % + 1 GB on >= 8 GB, the affine activation model is tested within
   15 %: together < 1.4x). The prediction models the eager step, which is what runs here.
e. a micro study end to end: the rehearsal (`cluster.rehearse`) of sweeps/params.yaml cut to encoder S, its
   smallest budget and the recipes ae and clip_ssl_ae, every stage on the device through the local executor in
   a temporary results folder (the miniature trains eager: compiled steps are rows a and c); ok when the
   rehearsal's checks pass and every cell has a finite gFID.
z. the whole check's wall time, against the 8 minutes it is meant to take.

Without CUDA it prints one line and exits with 2. `--device cpu --tiny` is the test's dry rehearsal: tiny sizes
on the CPU, every row through the same code; the compiled rows use the `aot_eager` backend (inductor needs a C++
toolchain there; `pretrain` compiles only on CUDA, so row c routes its `maybe_compile` to `compile_towers` with
that backend), and MFU and the allocator's peak report n/a. Exit code: 0 when every row ran (a missed target is
the table's "NO"), 1 when a row raised.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import gc
import json
import logging
import math
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from analysis.summary import git_commit
from bench.peaks import peak_tflops

GiB = float(2 ** 30)
NO_CUDA = "gpu-check: no CUDA device (torch.cuda.is_available() is False); run it on a GPU node"
LOSS_TOLERANCE = 5 * 2.0 ** -8  # 5u, u the bf16 unit roundoff (module docstring, row c)
MFU_TARGET = 0.40  # compiled tokenizer step
MEMORY_MAX_RATIO = 1.5  # predicted / measured (module docstring, row d)
BUDGET_S = 480.0  # the whole command on one GPU
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Sizes:
    """What each row runs: the method's GPU shapes (`GPU`), or the dry rehearsal's tiny ones (`TINY`)."""

    tokenizers: tuple[str, ...] = ("S", "B")  # row a: encoder = decoder size
    image_size: int = 256
    patch: int = 16
    latent_channels: int = 64
    batch: int = 64  # row a, per step
    rounds: int = 5  # timed rounds of `iters` steps; rows a and b report the median round
    iters: int = 10
    warmup: int = 3
    dit_size: str = "B/1"
    dit_latent: tuple[int, int, int] = (64, 16, 16)
    dit_batch: int = 128
    dit_classes: int = 1000
    trainer: dict = field(default_factory=dict)  # rows c, d: TokenizerConfig fields over the method's defaults
    trainer_encoder: str = "S"
    agree_batch: int = 32
    agree_steps: int = 20
    memory_batches: tuple[int, ...] = (32, 64)
    study_recipes: tuple[str, ...] = ("ae", "clip_ssl_ae")
    backend: str = "inductor"


GPU = Sizes()
TINY = Sizes(tokenizers=("tiny",), image_size=32, patch=4, latent_channels=8, batch=2, rounds=1, iters=1, warmup=1,
             dit_size="tiny", dit_latent=(8, 8, 8), dit_batch=4, dit_classes=10,
             trainer={"decoder": "tiny", "text": "tiny", "patch": 4, "latent_channels": 8, "n_local_crops": 2,
                      "global_crop": 24, "local_crop": 16, "dino_prototypes": 256, "dino_hidden": 256,
                      "dino_bottleneck": 64},
             trainer_encoder="tiny", agree_batch=8, agree_steps=3, memory_batches=(4, 8), study_recipes=("ae",),
             backend="aot_eager")


@dataclass
class Env:
    """Where the rows run: device, sizes, the device's dense bf16 peak (None: MFU n/a) and a scratch folder."""

    device: str
    sizes: Sizes
    peak: float | None
    tmp: Path

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


# ---------------------------------------------------------------------------- helpers
def _seconds_per_step(step: Callable[[], None], env: Env) -> float:
    """Median over `rounds` rounds of `iters` steps, after `warmup` steps (compilation happens there)."""
    from dit_eval.bench import _seconds

    s = env.sizes
    for _ in range(s.warmup):
        step()
    return statistics.median(_seconds(step, s.iters, env.cuda) for _ in range(s.rounds))


def _speed(flops: float, seconds: float, batch: int, env: Env) -> tuple[str, dict]:
    """'N img/s, T TFLOP/s, MFU m %' and the same as numbers; MFU n/a without a known peak."""
    tflops = flops / seconds / 1e12
    mfu = tflops / env.peak if env.peak else None
    text = f"{batch / seconds:.4g} img/s, {tflops:.4g} TFLOP/s, MFU " + (f"{mfu:.1%}" if mfu is not None else "n/a")
    return text, {"images_per_s": batch / seconds, "step_s": seconds, "step_flops": flops, "tflops": tflops,
                  "mfu": mfu}


def _peak_text(env: Env) -> str:
    """What MFU is measured against: the peak, or why there is none."""
    if not env.cuda:
        return "(MFU n/a on the CPU)"
    return f"of {env.peak:.0f} TFLOP/s dense bf16" if env.peak else "(no peak known for this device: VTP_PEAK_TFLOPS)"


def _free(env: Env) -> None:
    gc.collect()
    if env.cuda:
        torch.cuda.empty_cache()


def _trainer_cfg(env: Env, root: Path, batch: int, steps: int, **fields):
    """An S (tiny) clip_ssl_ae `TokenizerConfig` at the method's values otherwise, on generated tar shards of
    its image size (two steps' worth), with a random-weights LPIPS file of the real layout."""
    from vtp_core.config import DataConfig, TokenizerConfig
    from vtp_core.data import synthetic
    from vtp_core.losses.lpips import write_random_lpips

    s = env.sizes
    lpips = root / "lpips_random_vgg16.pt"
    sha = write_random_lpips(lpips)
    pattern = synthetic.write_tar_shards(root / "data", 2 * batch, 2, seed=0)
    return TokenizerConfig(recipe="clip_ssl_ae", encoder=s.trainer_encoder, batch_size=batch, steps=steps,
                           data=DataConfig(dataset="tar", path=pattern, image_size=s.image_size),
                           rec_loss="l1_lpips", lpips_weights=str(lpips), lpips_sha256=sha,
                           ckpt_every=10 ** 6, log_every=1, **{**s.trainer, **fields})


def _pretrain(cfg, env: Env, out: Path, on_step: Callable[[dict], None] = lambda info: None) -> dict:
    """`pretrain.run(cfg)` in `out` on the device; `on_step` gets every heartbeat ({step, steps, loss})."""
    from vtp_core import pretrain
    from vtp_core.runtime import StageContext

    ctx = StageContext(out=out, device=env.device, progress=False, log=logging.getLogger("vtp.gpu_check"),
                       heartbeat=on_step)
    return pretrain.run(cfg, ctx)


# ---------------------------------------------------------------------------- rows
def tokenizer_step(size: str, compiled: bool) -> Callable[[Env], dict]:
    def row(env: Env) -> dict:
        from bench.tokenizer import ae_step

        s = env.sizes
        torch._dynamo.reset()
        stepper = ae_step(size, s.image_size, s.patch, s.latent_channels, s.batch, env.device)
        flops = stepper.flops()  # counted eagerly: the compiled step does the same arithmetic
        if compiled:
            stepper.compile(s.backend)
        text, data = _speed(flops, _seconds_per_step(stepper.step, env), s.batch, env)
        if compiled:
            expected = f"MFU >= {MFU_TARGET:.0%} {_peak_text(env)}"
            ok = None if data["mfu"] is None else data["mfu"] >= MFU_TARGET
        else:
            expected, ok = f"information: the target is the compiled row's {_peak_text(env)}", None
        return {"value": text, "expected": expected, "ok": ok, "data": data}

    return row


def dit_step(env: Env) -> dict:
    """Row b: the DiT trainer's step (autocast bf16 on CUDA, fused AdamW, EMA) on a fixed batch of latents."""
    from dit_eval.config import DiTSpec
    from dit_eval.flops import dit_train_step_flops
    from dit_eval.flow import training_loss
    from dit_eval.models import create_dit
    from dit_eval.train import ema_update
    from vtp_core.flops import flop_counter_mode
    from vtp_core.runtime import adamw

    s = env.sizes
    spec = DiTSpec(size=s.dit_size, batch_size=s.dit_batch, num_classes=s.dit_classes)
    c, h, w = s.dit_latent
    torch.manual_seed(spec.seed)
    model = create_dit(spec.size, c, h, spec.num_classes, spec.class_dropout).to(env.device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = adamw(model.parameters(), env.device, lr=spec.lr, betas=(spec.beta1, spec.beta2),
                weight_decay=spec.weight_decay)
    x1 = torch.randn(s.dit_batch, c, h, w, device=env.device)
    y = torch.randint(0, spec.num_classes, (s.dit_batch,), device=env.device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=env.cuda):
            loss = training_loss(model, x1, y, spec.t_mu, spec.t_sigma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, model, spec.ema)

    with flop_counter_mode() as counter:
        step()
    flops = counter.get_total_flops()
    planned = dit_train_step_flops(spec, s.dit_latent)
    text, data = _speed(flops, _seconds_per_step(step, env), s.dit_batch, env)
    data["planner_step_flops"] = planned
    return {"value": f"{text}; FLOPs/step {flops:.3g} (planner {planned:.3g})",
            "expected": f"information: MFU {_peak_text(env)}, the DiT trains eager", "ok": None, "data": data}


class _RecompileLimit(logging.Handler):
    """Counts dynamo's 'hit config.recompile_limit' warnings: past it a frame runs eager, silently."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "hit config." in msg:
            self.hits.append(msg.splitlines()[0])


def loss_agreement(env: Env) -> dict:
    """Row c: the trainer twice, eager then compiled, same seed and data; per-step total losses compared."""
    import torch._dynamo
    import torch._inductor.config

    from vtp_core import pretrain

    s = env.sizes
    root = env.tmp / "agree"
    root.mkdir(parents=True, exist_ok=True)
    cfg = _trainer_cfg(env, root, s.agree_batch, s.agree_steps)
    curves: dict[bool, list[float]] = {}
    graphs, limit = 0, _RecompileLimit()
    for compiled in (False, True):
        torch._dynamo.reset()
        losses: list[float] = []
        run_cfg = dataclasses.replace(cfg, compile=compiled)
        with contextlib.ExitStack() as stack:
            if compiled:
                stack.enter_context(torch._inductor.config.patch(fallback_random=True))
                logging.getLogger("torch._dynamo").addHandler(limit)
                stack.callback(logging.getLogger("torch._dynamo").removeHandler, limit)
                if not env.cuda:  # pretrain compiles on CUDA only: the dry rehearsal traces with aot_eager
                    stack.enter_context(_compile_on_cpu(pretrain, s.backend))
                before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            _pretrain(run_cfg, env, root / f"run-{'compiled' if compiled else 'eager'}",
                      lambda info: losses.append(float(info["loss"])) if "step" in info else None)
            if compiled:
                graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - before
        curves[compiled] = losses
        _free(env)
    torch._dynamo.reset()
    eager, comp = curves[False], curves[True]
    if len(eager) != s.agree_steps or len(comp) != s.agree_steps:
        raise RuntimeError(f"expected {s.agree_steps} per-step losses, got {len(eager)} eager, {len(comp)} compiled")
    rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(eager, comp)]
    worst = max(range(len(rel)), key=rel.__getitem__)
    ok = rel[worst] <= LOSS_TOLERANCE and graphs > 0 and not limit.hits
    value = (f"max rel. diff {rel[worst]:.2e} (step {worst}), step 0 {rel[0]:.2e}; {graphs} graphs compiled"
             + (f"; {limit.hits[0]}" if limit.hits else ""))
    return {"value": value, "expected": f"<= {LOSS_TOLERANCE:.2g} (5u, u = 2^-8 bf16) over {s.agree_steps} steps, "
                                        f"no recompile-limit hit ({s.backend})",
            "ok": ok, "data": {"eager": eager, "compiled": comp, "rel_diff": rel, "graphs": graphs,
                               "recompile_limit_hits": limit.hits}}


@contextlib.contextmanager
def _compile_on_cpu(pretrain, backend: str):
    """`pretrain.maybe_compile` as on CUDA, with `backend` (the dry rehearsal on a CPU)."""
    original = pretrain.maybe_compile

    def maybe_compile(model, teacher, cfg, device):
        if cfg.compile:
            pretrain.compile_towers(model, teacher, backend=backend)

    pretrain.maybe_compile = maybe_compile
    try:
        yield
    finally:
        pretrain.maybe_compile = original


def memory_row(batch: int) -> Callable[[Env], dict]:
    def row(env: Env) -> dict:
        """Row d at one per-GPU batch: the trainer's peak allocation against the memory plan's prediction."""
        from vtp_core import memory

        root = env.tmp / f"memory-{batch}"
        root.mkdir(parents=True, exist_ok=True)
        cfg = _trainer_cfg(env, root, batch, 3, compile=False)
        pred = memory.predict(cfg, 1, "none")
        bare = pred["total"] - pred["allowance"]
        _free(env)
        if env.cuda:
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        _pretrain(cfg, env, root / "run")
        expected = f"measured <= predicted <= {MEMORY_MAX_RATIO}x measured"
        data = {"predicted_gb": pred["total"], "predicted_without_allowance_gb": bare, "parts_gb": pred}
        if not env.cuda:
            return {"value": f"predicted {pred['total']:.3g} GB ({bare:.3g} without allowance); measured n/a "
                             f"(no CUDA allocator)", "expected": expected, "ok": None, "data": data}
        measured = (torch.cuda.max_memory_allocated() - base) / GiB
        _free(env)
        ratio = pred["total"] / measured
        data.update(measured_gb=measured, ratio=ratio, ratio_without_allowance=bare / measured)
        return {"value": f"predicted {pred['total']:.3g} GB ({bare:.3g} without allowance) / measured "
                         f"{measured:.3g} GB = {ratio:.2f}x ({bare / measured:.2f}x)",
                "expected": expected, "ok": 1.0 <= ratio <= MEMORY_MAX_RATIO, "data": data}

    return row


def micro_study(env: Env) -> dict:
    """Row e: the rehearsal of sweeps/params.yaml cut to 1 encoder x the size's recipes, on the device."""
    import yaml

    from cluster import rehearse
    from cluster.store import Store
    from sweeps.plan import plan
    from sweeps.schema import read_yaml, study_from_doc, study_path

    s = env.sizes
    doc = read_yaml(study_path("params"))
    doc["name"] = "gpu-check-micro"
    doc["grid"].update(recipe=list(s.study_recipes), encoder=["S"], data_size=[0], seed=[0],
                       budget_flops=[min(doc["grid"]["budget_flops"])])
    path = env.tmp / "micro.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    shrink = dataclasses.replace(rehearse.SHRINK, max_cells=len(s.study_recipes))
    report = rehearse.rehearse(path, env.tmp / "micro", shrink, device=env.device, echo=lambda *_: None)
    work = env.tmp / "micro" / doc["name"]
    store = Store(work / "results")
    gfid = {}
    for cell_doc in sorted((work / "studies").glob("*.yaml")):
        for cell in plan(study_from_doc(read_yaml(cell_doc), cell_doc)).cells:
            gfid[cell.recipe] = (store.metrics(cell.stages["fid"]).get("gfid") or {}).get("value")
    finite = [v for v in gfid.values() if isinstance(v, (int, float)) and math.isfinite(v)]
    failed = [f"{c['cell']}: {c['check']}" for c in report["checks"] if not c["ok"]]
    ok = report["ok"] and len(finite) == len(s.study_recipes) == len(gfid)
    shown = ", ".join(f"{r} {v:.4g}" if isinstance(v, float) else f"{r} {v}" for r, v in gfid.items())
    value = (f"{len(gfid)} cell{'s' * (len(gfid) != 1)}, gFID {shown}; rehearsal checks "
             f"{len(report['checks']) - len(failed)}/{len(report['checks'])} passed"
             + (f" (failed: {failed[0]})" if failed else ""))
    return {"value": value, "expected": "every cell done, finite gFID, rehearsal checks pass", "ok": ok,
            "data": {"gfid": gfid, "rehearsal": report}}


def checks(sizes: Sizes) -> list[tuple[str, str, Callable[[Env], dict]]]:
    """(id, what, row function) of every row, in the order they run."""
    out = []
    for size in sizes.tokenizers:
        for compiled in (False, True):
            out.append((f"a.{size}.{'compiled' if compiled else 'eager'}",
                        f"tokenizer {size} ae step {sizes.image_size}px/p{sizes.patch} b{sizes.batch}, "
                        + (f"compiled ({sizes.backend})" if compiled else "eager"), tokenizer_step(size, compiled)))
    c, h, w = sizes.dit_latent
    out.append(("b", f"DiT {sizes.dit_size} step {c}x{h}x{w} latents b{sizes.dit_batch}", dit_step))
    out.append(("c", f"eager vs compiled: pretrain {sizes.trainer_encoder} clip_ssl_ae b{sizes.agree_batch}, "
                     f"{sizes.agree_steps} steps", loss_agreement))
    for b in sizes.memory_batches:
        out.append((f"d.b{b}", f"memory: pretrain {sizes.trainer_encoder} clip_ssl_ae b{b}, predicted vs peak "
                               f"allocated", memory_row(b)))
    out.append(("e", f"micro study end to end (rehearsal of params: S x {', '.join(sizes.study_recipes)})",
                micro_study))
    return out


# ---------------------------------------------------------------------------- the run and its table
def run_checks(env: Env, wanted: list[str] | None = None, echo=print) -> list[dict]:
    """Every row (or those whose id starts with one of `wanted`), each on its own; then the wall-time row."""
    rows, t_all = [], time.time()
    for cid, what, fn in checks(env.sizes):
        if wanted and not any(cid.startswith(w) for w in wanted):
            continue
        echo(f"gpu-check: {cid} {what} ...")
        t0 = time.time()
        try:
            row = fn(env)
            row["error"] = None
        except Exception as exc:  # one row's failure is that row's verdict, not the run's end
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            row = {"value": f"ERROR {reason}"[:300], "expected": "", "ok": False, "data": {}, "error": reason}
        finally:
            _free(env)
        row.update(id=cid, check=what, seconds=round(time.time() - t0, 1))
        echo(f"gpu-check: {cid} done in {row['seconds']}s")
        rows.append(row)
    total = time.time() - t_all
    full = env.cuda and env.sizes == GPU and not wanted
    rows.append({"id": "z", "check": "wall time of the whole check", "value": f"{total:.0f} s",
                 "expected": f"<= {BUDGET_S:.0f} s on one GPU" + ("" if full else " (information: not the full "
                                                                                  "GPU run)"),
                 "ok": total <= BUDGET_S if full else None, "seconds": round(total, 1), "data": {}, "error": None})
    return rows


def _mark(ok) -> str:
    return {True: "yes", False: "NO", None: "-"}[ok]


def header(device: str, sizes: Sizes) -> dict:
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": name,
            "torch": torch.__version__, "cuda": torch.version.cuda if device == "cuda" else None,
            "commit": git_commit(REPO), "sizes": "gpu" if sizes == GPU else "tiny (dry rehearsal)"}


def markdown(head: dict, rows: list[dict]) -> str:
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = [f"#### {head['date'][:10]} · {head['device']} · commit {head['commit']}", "",
             f"`make gpu-check` at {head['date']}, torch {head['torch']}"
             + (f", CUDA {head['cuda']}" if head["cuda"] else "") + f", sizes: {head['sizes']}.", "",
             "| check | value | expected | ok | s |", "|---|---|---|---|---|"]
    lines += [f"| {cell(r['id'] + ' ' + r['check'])} | {cell(r['value'])} | {cell(r['expected'])} | {_mark(r['ok'])} "
              f"| {r['seconds']} |" for r in rows]
    return "\n".join(lines) + "\n"


def print_table(head: dict, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"gpu-check {head['date']} · {head['device']} · commit {head['commit']} · torch {head['torch']}")
    for col in ("check", "value", "expected", "ok", "s"):
        t.add_column(col)
    for r in rows:
        t.add_row(f"{r['id']} {r['check']}", str(r["value"]), str(r["expected"]), _mark(r["ok"]), str(r["seconds"]))
    Console(width=200).print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/gpu-check", help="folder of the .md and .json (default: %(default)s)")
    ap.add_argument("--rows", default="", help="run only the rows whose ids start with these (comma-separated: "
                                               "a,b,c,d,e or e.g. a.S)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu: only with --tiny (the test's dry rehearsal)")
    ap.add_argument("--tiny", action="store_true", help="the test's dry rehearsal: tiny sizes, MFU rows report n/a")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.tiny:
        print("gpu-check: --device cpu runs only with --tiny (the test's dry rehearsal: tiny sizes on CPU)",
              file=sys.stderr)
        return 2
    sizes = TINY if args.tiny else GPU
    head = header(args.device, sizes)
    peak = peak_tflops(head["device"]) if args.device == "cuda" else None
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        env = Env(args.device, sizes, peak, Path(tmp))
        rows = run_checks(env, [w for w in args.rows.split(",") if w] or None, echo=lambda m: print(m, flush=True))
    print_table(head, rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{head['date'][:10]}-{re.sub(r'[^A-Za-z0-9]+', '-', head['device']).strip('-')}"
    (out / f"{stem}.md").write_text(markdown(head, rows))
    (out / f"{stem}.json").write_text(json.dumps({**head, "peak_tflops": peak, "rows": rows}, indent=1,
                                                 default=str))
    print(f"gpu-check: wrote {out / stem}.md and .json")
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
