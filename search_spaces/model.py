"""`build_model(spec)`: an `ArchSpec` made into a PyTorch module.

Read top to bottom like nanoGPT's model.py: token embedding plus learned
positions, one pre-norm block per `LayerSpec` (each with its own attention kind,
heads and FFN width), a final LayerNorm, and a head (per-token logits, or logits
of the masked mean over real tokens).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from search_spaces.arch_spec import ArchSpec, LayerSpec
from search_spaces.attention.registry import attention_class


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, layer: LayerSpec, max_seq_len: int, causal: bool, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = attention_class(layer.attention)(d_model, layer, max_seq_len, causal)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, layer.ffn), nn.GELU(), nn.Linear(layer.ffn, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x), padding_mask))
        return x + self.drop(self.mlp(self.ln2(x)))


class Transformer(nn.Module):
    """The model an `ArchSpec` describes. `forward(tokens, padding_mask=None)`:
    tokens (batch, length) int64; padding_mask (batch, length) bool, True = real.
    Returns (batch, length, n_classes) for head "token", (batch, n_classes) for "pooled".
    """

    def __init__(self, spec: ArchSpec) -> None:
        super().__init__()
        self.spec = spec
        self.tok = nn.Embedding(spec.vocab_size, spec.d_model)
        self.pos = nn.Embedding(spec.max_seq_len, spec.d_model)
        self.drop = nn.Dropout(spec.dropout)
        self.blocks = nn.ModuleList(
            Block(spec.d_model, layer, spec.max_seq_len, spec.causal, spec.dropout) for layer in spec.layers
        )
        self.ln_f = nn.LayerNorm(spec.d_model)
        self.head = nn.Linear(spec.d_model, spec.n_classes)
        self.gradient_checkpointing = False
        # PyTorch's default initialisation (Kaiming-uniform Linear, N(0, 1)
        # embeddings). GPT-2's std-0.02 init leaves MQAR on a long plateau at these
        # widths: a 2-layer d=64 model sat at chance after 2,500 steps with it, and
        # reached 99.5% in 350 steps with the defaults (benchmarks/mqar_speed.py).

    def forward(self, tokens: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        n = tokens.shape[1]
        if n > self.spec.max_seq_len:
            raise ValueError(f"sequence length {n} exceeds max_seq_len={self.spec.max_seq_len}")
        pos = torch.arange(n, device=tokens.device)
        x = self.drop(self.tok(tokens) + self.pos(pos))
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, padding_mask, use_reentrant=False)
            else:
                x = block(x, padding_mask)
        x = self.ln_f(x)
        if self.spec.head == "pooled":
            if padding_mask is None:
                x = x.mean(dim=1)
            else:
                w = padding_mask.to(x.dtype).unsqueeze(-1)
                x = (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
        return self.head(x)


def build_model(spec: ArchSpec) -> Transformer:
    """Build the (freshly initialised) model for `spec`."""
    return Transformer(spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
