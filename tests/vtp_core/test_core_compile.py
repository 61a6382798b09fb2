"""The GPU path's `torch.compile` (`TokenizerConfig.compile`, on by default on CUDA): every block compiles to one
graph (no graph breaks), `compile_towers` compiles every block the step runs, and a compiled training step gives
the eager step's losses and gradients to float rounding. Traced with the `aot_eager` backend (dynamo + AOT
autograd, the graphs inductor would receive), so the check needs no C++ toolchain and runs on a CPU."""
from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
import torch._dynamo
from timm.layers import LayerNorm

from dit_eval.models import create_dit
from vtp_core.batches import CaptionTable, make_batch
from vtp_core.data import CLASS_NAMES, load_train
from vtp_core.models.layers import Block, RmsNorm, dinov3_rope, eva_rope
from vtp_core.objectives import Teacher, active_objectives, step_losses
from vtp_core.pretrain import compile_towers
from vtp_core.tokenizer import Tokenizer
import small_configs as small

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _one_graph(fn, *args, **kwargs) -> None:
    ex = torch._dynamo.explain(fn)(*args, **kwargs)
    assert (ex.graph_count, ex.graph_break_count) == (1, 0), [str(b.reason)[:300] for b in ex.break_reasons]


def test_every_block_traces_to_one_graph():
    """The unit `compile_towers` compiles: the encoder block (RMSNorm, QKNorm, q/v biases, RoPE with a CLS
    prefix, sample drop while training), the decoder block (LayerNorm), timm's EvaBlock in the text tower, and
    the DiT block (adaLN-Zero, interleaved RoPE)."""
    torch.manual_seed(0)
    enc = Block(64, 2, 176, functools.partial(RmsNorm, eps=1e-5), qkv_bias="qv", qk_norm=True)
    x, rope = torch.randn(4, 17, 64), dinov3_rope(32, (4, 4), 100.0, 1, CPU)
    _one_graph(enc, x, rope, drop_rate=0.25)  # training: sample drop (randperm) inside the graph
    _one_graph(enc.eval(), x, rope)
    dec = Block(64, 2, 176, functools.partial(LayerNorm, eps=1e-6))
    _one_graph(dec, x[:, 1:], dinov3_rope(32, (4, 4), 100.0, 0, CPU))
    model = Tokenizer(small.tokenizer(recipe="clip_ae"))
    _one_graph(model.text.blocks[0], torch.randn(2, model.text.size.context_length, model.text.size.width),
               is_causal=True)
    dit = create_dit("tiny", in_chans=8, input_size=8, num_classes=10)
    d = dit.size.width
    _one_graph(dit.blocks[0], torch.randn(2, 64, d), torch.randn(2, d), eva_rope(d // dit.size.heads, 8, CPU))


def test_compiled_step_matches_eager():
    """`compile_towers` compiles every block of the encoder, the EMA teacher, the decoder and the text tower; a
    full clip+ssl+rec training step (sample drop on, QKNorm on) then runs through dynamo graphs and gives the
    eager step's losses and gradients.

    Tolerance: the same function, float32 rounding aside. aot_eager runs the eager aten kernels, and on this CPU
    (torch 2.14) the compiled step is in fact bit-identical (3 seeds). What may legitimately differ is the
    order of float32 operations: AOT autograd may decompose a composite (F.rms_norm, a norm's or SDPA's
    backward) differently in another torch version, and inductor fuses elementwise chains and reorders
    reductions. Each reordered float32 sum of n terms moves its result by ~sqrt(n)·6e-8 relative (n <= 256
    here), ~1e-6; through a few blocks into softmax-based losses that stays ~1e-6, so the losses are held to
    rtol 1e-5. Gradient entries are sums of near-cancelling terms, so their error scales with the tensor's
    largest entry, not their own: each gradient is held to 1e-4 of its max |entry|. Real changes are far
    outside both (measured on this step: the encoder's RoPE in interleaved pairs moves the total loss 7e-3
    relative and a gradient by 1.4x its max entry; another sample-drop draw 1e-2; a q bias moved by 1e-3,
    1e-3 and 0.4x)."""
    torch.manual_seed(0)
    model = Tokenizer(small.tokenizer(recipe="clip_ssl_ae", batch_size=8, qk_norm=True, clip_drop_rate=0.1,
                                      ssl_drop_rate=0.2))
    teacher = Teacher(model)
    cfg = model.cfg
    imgs, labels = load_train(dataclasses.replace(cfg.data, n_train=64))
    batch = make_batch(cfg, imgs, labels, 0, active_objectives(model),
                       CaptionTable(CLASS_NAMES, model.text.size.context_length))
    centers = {k: v.clone() for k, v in teacher.state_dict().items()}  # a step updates the DINO centers
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> tuple[dict, list[torch.Tensor]]:
        teacher.load_state_dict(centers)
        torch.manual_seed(1)  # the same sample-drop draws in both steps
        losses = step_losses(model, teacher, batch, 0.04)
        grads = torch.autograd.grad(losses["total"], params, allow_unused=True)
        return {k: v.detach() for k, v in losses.items()}, grads

    eager_losses, eager_grads = step()
    compile_towers(model, teacher, backend="aot_eager", fullgraph=True)
    blocks = [*model.encoder.trunk.blocks, *model.decoder.stack.blocks, *model.text.blocks,
              *teacher.encoder.trunk.blocks]
    assert all(b._compiled_call_impl is not None for b in blocks)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled_losses, compiled_grads = step()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # the step went through dynamo
    assert set(compiled_losses) == set(eager_losses)
    for k in eager_losses:
        torch.testing.assert_close(compiled_losses[k], eager_losses[k], rtol=1e-5, atol=1e-7, msg=k)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, a, b in zip(names, compiled_grads, eager_grads):
        if b is None:
            assert a is None, name
            continue
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * b.abs().max().item() + 1e-12, msg=name)
