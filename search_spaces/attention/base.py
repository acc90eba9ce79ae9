"""The one interface every attention kind implements.

An attention module maps x (batch, length, d_model) and an optional padding mask
(batch, length; True = a real token, False = padding) to (batch, length, d_model).
The shared part (the Q/K/V and output projections, the head split) lives here; a
kind implements only `attend(q, k, v, key_padding_mask)` on (batch, heads, length,
head_dim) tensors, like the many-variants-one-signature style of x-transformers.

Length may be anything up to the spec's `max_seq_len`; kinds that work on blocks
pad internally and mask the padding.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn

from search_spaces.arch_spec import LayerSpec


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which matmuls keep float32 (autocast would cast them to bf16);
    nothing on a device without autocast (e.g. "meta", where a model is shaped
    before its weights are loaded)."""
    if not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


class Attention(nn.Module):
    """Multi-head attention with a pluggable `attend`.

    Subclasses set `kind` and implement `attend`. They may add parameters or
    buffers in `__init__` (Linformer's projections, Performer's features).
    """

    kind: str = ""

    def __init__(self, d_model: int, layer: LayerSpec, max_seq_len: int, causal: bool) -> None:
        super().__init__()
        self.d_model = d_model
        self.layer = layer
        self.heads = layer.heads
        self.head_dim = d_model // layer.heads
        self.max_seq_len = max_seq_len
        self.causal = causal
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        b, n, _ = x.shape
        if n > self.max_seq_len:
            raise ValueError(f"sequence length {n} exceeds max_seq_len={self.max_seq_len} of this model")
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = self.attend(q, k, v, padding_mask)
        return self.out(y.transpose(1, 2).reshape(b, n, self.d_model))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """q, k, v: (batch, heads, length, head_dim) -> (batch, heads, length, head_dim).

        key_padding_mask: (batch, length) bool, True where the key is a real token.
        Queries at padding positions may produce anything finite; keys at padding
        positions must get zero weight.
        """
        raise NotImplementedError

    def extra_repr(self) -> str:
        knobs = ", ".join(f"{k}={v}" for k, v in self.layer.knobs().items())
        return f"kind={self.kind}, heads={self.heads}, causal={self.causal}" + (f", {knobs}" if knobs else "")
