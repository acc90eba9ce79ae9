"""`full`: exact softmax attention (Vaswani et al. 2017, "Attention Is All You
Need") through `torch.nn.functional.scaled_dot_product_attention`, the baseline
every efficient kind is measured against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from search_spaces.attention.base import Attention


class FullAttention(Attention):
    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        if key_padding_mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        n = q.shape[-2]
        mask = key_padding_mask[:, None, None, :]  # (b, 1, 1, n): padding keys get no weight
        if self.causal:
            mask = mask & torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
