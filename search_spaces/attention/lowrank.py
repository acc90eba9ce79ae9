"""Low-rank attention: Linformer and Nyströmformer (both bidirectional only: each
mixes information across the whole sequence before attending)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from search_spaces.arch_spec import LayerSpec
from search_spaces.attention.base import Attention

NEG_INF = float("-inf")


class LinformerAttention(Attention):
    """Linformer (Wang et al. 2020, "Linformer: Self-Attention with Linear
    Complexity"): keys and values are projected along the sequence by learned
    E, F in R^{k x N} (shared by the heads, the paper's "headwise sharing"), so
    attention is (n x k) instead of (n x n). A sequence shorter than max_seq_len
    uses the first n columns of E and F. Padding keys and values are zeroed before
    the projection so they carry nothing."""

    def __init__(self, d_model: int, layer: LayerSpec, max_seq_len: int, causal: bool) -> None:
        super().__init__(d_model, layer, max_seq_len, causal)
        k = layer.rank
        # The paper initialises the projections like linear layers: N(0, 1/k).
        self.proj_k = nn.Parameter(torch.randn(k, max_seq_len) / math.sqrt(k))
        self.proj_v = nn.Parameter(torch.randn(k, max_seq_len) / math.sqrt(k))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        n = q.shape[-2]
        if key_padding_mask is not None:
            keep = key_padding_mask[:, None, :, None].to(k.dtype)
            k, v = k * keep, v * keep
        e = self.proj_k[:, :n].to(k.dtype)
        f = self.proj_v[:, :n].to(v.dtype)
        k_low = torch.einsum("rn,bhnd->bhrd", e, k)
        v_low = torch.einsum("rn,bhnd->bhrd", f, v)
        scores = torch.matmul(q, k_low.transpose(-1, -2)) * self.scale
        return torch.matmul(scores.float().softmax(dim=-1).to(v.dtype), v_low)


def _segment_means(x: Tensor, keep: Tensor, landmarks: int) -> Tensor:
    """Means of `landmarks` contiguous segments of x (b, h, n, d) over real tokens
    only (keep: (b, 1, n, 1) float). Segments are as equal as possible when n is
    not a multiple of `landmarks` (bounds from linspace)."""
    n = x.shape[-2]
    bounds = torch.linspace(0, n, landmarks + 1, device=x.device).round().long()
    seg = torch.bucketize(torch.arange(n, device=x.device), bounds[1:], right=True).clamp_max(landmarks - 1)
    one_hot = nn.functional.one_hot(seg, landmarks).to(x.dtype)  # (n, m)
    sums = torch.einsum("nm,bhnd->bhmd", one_hot, x * keep)
    counts = torch.einsum("nm,bhnk->bhmk", one_hot, keep.expand(*x.shape[:2], n, 1))
    return sums / counts.clamp_min(1.0)


def _iterative_pinv(a: Tensor, iters: int = 6) -> Tensor:
    """Moore-Penrose pseudo-inverse by the iteration of the Nyströmformer paper
    (Razavi et al. 2014): Z <- 1/4 Z (13 I - AZ (15 I - AZ (7 I - AZ))), started at
    Z0 = A^T / (||A||_1 ||A||_inf). Only matrix products: fast on GPU, and stable
    for the row-stochastic matrices it is applied to."""
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    col = a.abs().sum(dim=-2).amax(dim=-1)
    row = a.abs().sum(dim=-1).amax(dim=-1)
    z = a.transpose(-1, -2) / (col * row)[..., None, None]
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


class NystromAttention(Attention):
    """Nyströmformer (Xiong et al. 2021): softmax(QK^T) is approximated through m
    landmarks (segment means of Q and K) as F B^+ G, with F = softmax(Q K~^T),
    B = softmax(Q~ K~^T), G = softmax(Q~ K^T), in O(n m). B^+ comes from the
    paper's iterative pseudo-inverse (`_iterative_pinv`, 6 iterations as in the
    paper) while m < n. With m >= n every segment is one token, B = softmax(QK^T)
    is invertible and the product is exact softmax attention up to the inverse's
    accuracy, so there we use `torch.linalg.pinv` (an exact SVD pseudo-inverse) —
    the regime only tests and tiny sequences reach."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        b, h, n, d = q.shape
        m = min(self.layer.rank, n)
        dtype = v.dtype
        q, k, v = q.float(), k.float(), v.float()
        if key_padding_mask is None:
            keep = torch.ones(b, 1, n, 1, device=q.device)
            key_bias = None
        else:
            keep = key_padding_mask[:, None, :, None].float()
            key_bias = torch.zeros(b, 1, 1, n, device=q.device).masked_fill(~key_padding_mask[:, None, None, :], NEG_INF)
        q_l = _segment_means(q, keep, m)
        k_l = _segment_means(k, keep, m)
        # A landmark made only of padding must not be attended to.
        seg_real = _segment_means(keep.expand(b, h, n, 1), keep, m) > 0  # (b, h, m, 1)
        land_bias = torch.zeros(b, h, 1, m, device=q.device).masked_fill(~seg_real.transpose(-1, -2), NEG_INF)
        f = torch.softmax(q @ k_l.transpose(-1, -2) * self.scale + land_bias, dim=-1)
        bmat = torch.softmax(q_l @ k_l.transpose(-1, -2) * self.scale + land_bias, dim=-1)
        g_scores = q_l @ k.transpose(-1, -2) * self.scale
        if key_bias is not None:
            g_scores = g_scores + key_bias
        g = torch.softmax(g_scores, dim=-1)
        g = torch.nan_to_num(g)  # rows of all-padding landmarks
        bmat = torch.nan_to_num(bmat)
        b_inv = torch.linalg.pinv(bmat) if m >= n else _iterative_pinv(bmat)
        out = f @ (b_inv @ (g @ v))
        return torch.nan_to_num(out).to(dtype)
