"""The GPU path's `torch.compile`: every tower compiles to one graph (no graph breaks, no complex dtype for
inductor), what the trainer compiles is what the step runs, and a compiled step gives the eager step's
losses and gradients. Traced with the `aot_eager` backend (dynamo + AOT autograd, the graphs inductor
would receive), so the check needs no C++ toolchain and takes seconds."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch._dynamo

from dit_eval.models import create_dit
from vtp_core.batches import CaptionTable, make_batch
from vtp_core.data import CLASS_NAMES, load_train
from vtp_core.models.layers import dinov3_rope, eva_rope, rope_table
from vtp_core.models.text import tokenize
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


def _model(recipe: str = "clip_ssl_ae") -> tuple[Tokenizer, Teacher | None]:
    torch.manual_seed(0)
    model = Tokenizer(small.tokenizer(recipe=recipe, batch_size=8))
    return model, Teacher(model) if model.lambda_ssl else None


def _one_graph(fn, *args) -> None:
    ex = torch._dynamo.explain(fn)(*args)
    assert (ex.graph_count, ex.graph_break_count) == (1, 0), [str(b.reason)[:300] for b in ex.break_reasons]


def test_every_tower_traces_to_one_graph():
    model, _ = _model()
    x = torch.randn(2, 3, 32, 32)
    p = model.encoder.patch_embed(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([model.encoder.cls_token.expand(2, -1, -1), p], 1)
    _one_graph(model.encoder.trunk, tokens, (8, 8))
    _one_graph(model.decoder, model.encode(x))
    _one_graph(model.text, tokenize(["a photo of a shirt"], model.text.size.context_length))
    dit = create_dit("tiny", in_chans=8, input_size=8, num_classes=10)  # shares the RoPE attention and RMSNorm
    _one_graph(dit, torch.randn(2, 8, 8, 8), torch.rand(2), torch.randint(0, 10, (2,)))


def test_traced_rope_tables_equal_the_cached_complex_ones():
    """Under compile the table is built in the graph as (cos, sin); the same angles as the eager table."""
    for kind, args, cached in [("dinov3", (16, (3, 4), 100.0, 1, CPU, 2), dinov3_rope),
                               ("eva", (16, 4, CPU, 2), eva_rope)]:
        traced = torch.compile(lambda: rope_table(kind, *args), backend="aot_eager", fullgraph=True)()
        torch.testing.assert_close(torch.view_as_complex(traced.contiguous()), cached(*args), rtol=0, atol=1e-7)


def test_compile_towers_compiles_what_the_step_runs_and_matches_eager():
    """`compile_towers` covers the encoder's block stack (reached through `Tokenizer.encode`/`features`, not
    the encoder's `__call__`), the teacher's, the decoder and the text tower; a full clip+ssl+rec step then
    runs through dynamo-compiled graphs only and equals the eager step."""
    model, teacher = _model()
    cfg = model.cfg
    active = active_objectives(model)
    imgs, labels = load_train(dataclasses.replace(cfg.data, n_train=64))
    batch = make_batch(cfg, imgs, labels, 0, active, CaptionTable(CLASS_NAMES, model.text.size.context_length))

    centers = {k: v.clone() for k, v in teacher.state_dict().items()}  # a step updates the DINO centers

    def step() -> tuple[dict, list[torch.Tensor]]:
        teacher.load_state_dict(centers)
        losses = step_losses(model, teacher, batch, 0.04)
        grads = torch.autograd.grad(losses["total"], [p for p in model.parameters() if p.requires_grad],
                                    allow_unused=True)
        return {k: v.detach() for k, v in losses.items()}, grads

    eager_losses, eager_grads = step()
    compile_towers(model, teacher, backend="aot_eager", fullgraph=True)
    towers = [model.encoder.trunk, model.decoder, model.text, teacher.encoder.trunk]
    assert all(t._compiled_call_impl is not None for t in towers)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled_losses, compiled_grads = step()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > frames  # the step went through dynamo
    assert set(compiled_losses) == set(eager_losses)
    for k in eager_losses:
        torch.testing.assert_close(compiled_losses[k], eager_losses[k], rtol=1e-4, atol=1e-5, msg=k)
    for (name, _), a, b in zip(model.named_parameters(), compiled_grads, eager_grads):
        if b is None:
            assert a is None, name
            continue
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item() + 1e-8, msg=name)
