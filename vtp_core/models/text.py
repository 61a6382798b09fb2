"""OpenCLIP-style causal text tower and the OpenAI CLIP BPE tokenizer (no `import open_clip`).

Why load the BPE by file path: the installed open-clip-torch wheel ships the vocabulary
(`bpe_simple_vocab_16e6.txt.gz`) and a self-contained `tokenizer.py`, but importing the package
pulls dependencies we do not have; loading that one file keeps the exact CLIP tokenisation.
Tiny text sizes hash the BPE ids into a small embedding table (`TextSize.vocab_size`), keeping SOT/EOT
as the two largest ids so EOT (argmax) pooling still works: with template captions collisions do not
matter, and a 49408-row table would otherwise dominate a CPU training step.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
from timm.layers import LayerNorm
from timm.models.eva import EvaBlock

from vtp_core.models.layers import run_blocks
from vtp_core.openclip_files import open_clip_file, open_clip_module
from vtp_core.registry import TextSize

VOCAB_SIZE = 49408


@functools.lru_cache(maxsize=None)
def _simple_tokenizer():
    vocab = open_clip_file("bpe_simple_vocab_16e6.txt.gz", "the CLIP BPE vocabulary")
    return open_clip_module("tokenizer.py", "the CLIP BPE tokenizer").SimpleTokenizer(bpe_path=str(vocab))


def tokenize(texts: list[str] | str, context_length: int) -> torch.Tensor:
    """CLIP BPE ids (N, context_length) with SOT/EOT; over-long captions are truncated, EOT kept."""
    return _simple_tokenizer()(texts, context_length=context_length)


class TextTower(nn.Module):
    """Token + learned position embedding, causal pre-LN GELU blocks, final LN, EOT (argmax) pooling, projection."""

    def __init__(self, size: TextSize):
        super().__init__()
        self.size = size
        w = size.width
        self.token_embedding = nn.Embedding(size.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.empty(size.context_length, w))
        norm = functools.partial(LayerNorm, eps=1e-5)
        self.blocks = nn.ModuleList(
            EvaBlock(w, size.heads, qkv_bias=True, mlp_ratio=size.mlp_ratio, num_prefix_tokens=0,
                     act_layer=nn.GELU, norm_layer=norm)
            for _ in range(size.depth)
        )
        self.ln_final = norm(w)
        self.text_projection = nn.Parameter(torch.empty(w, size.embed_dim))
        self.checkpoint_blocks = False  # `layers.set_activation_checkpointing`
        self._init()

    def _init(self) -> None:
        """OpenCLIP init: token 0.02, position 0.01, attn W^-0.5, proj W^-0.5 (2L)^-0.5, fc (2W)^-0.5."""
        w, n = self.size.width, self.size.depth
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std, proj_std, fc_std = w ** -0.5, w ** -0.5 * (2 * n) ** -0.5, (2 * w) ** -0.5
        for blk in self.blocks:
            nn.init.normal_(blk.attn.qkv.weight, std=attn_std)
            nn.init.normal_(blk.attn.proj.weight, std=proj_std)
            nn.init.zeros_(blk.attn.proj.bias)
            nn.init.normal_(blk.mlp.fc1.weight, std=fc_std)
            nn.init.normal_(blk.mlp.fc2.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=w ** -0.5)

    def fold_ids(self, ids: torch.Tensor) -> torch.Tensor:
        v = self.size.vocab_size
        if v >= VOCAB_SIZE:
            return ids
        folded = torch.where(ids == VOCAB_SIZE - 2, v - 2, ids % (v - 2))  # SOT
        return torch.where(ids == VOCAB_SIZE - 1, v - 1, folded)  # EOT stays the largest id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, ctx) CLIP BPE -> text embedding (B, embed_dim), unnormalised."""
        ids = self.fold_ids(ids)
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        x = self.ln_final(run_blocks(self.blocks, x, self.checkpoint_blocks, is_causal=True))
        x = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]
        return x @ self.text_projection
