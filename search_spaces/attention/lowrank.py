"""Low-rank attention kinds: `linformer` and `nystrom` (both bidirectional only).

- `linformer` (Wang et al. 2020, "Linformer: Self-Attention with Linear
  Complexity"): learned projections E, F (rank x max_seq_len) compress keys and
  values along the sequence to `rank` rows; softmax attention of the n queries
  over those rank rows costs O(n k).
- `nystrom` (Xiong et al. 2021, "Nystromformer: A Nystrom-Based Algorithm for
  Approximating Self-Attention"): softmax(Q K^T) ~ K1 pinv(K2) K3 with
  landmarks = segment means of the queries and keys, O(n m) for m landmarks.

Neither can be causal: a compressed key mixes all positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search_spaces.arch_spec import LayerSpec
from search_spaces.attention.base import Attention, no_autocast



class LinformerAttention(Attention):
    """Linformer (Wang et al. 2020): out = softmax(q (E k)^T / sqrt(d)) (F v).

    E and F are (rank, max_seq_len) parameters shared by the heads of the layer
    (the paper's "headwise sharing"); a sequence of n < max_seq_len tokens uses
    their first n columns. Padding keys and values are zeroed before the
    projection, so they contribute nothing to any compressed row.
    """

    def __init__(self, d_model: int, layer: LayerSpec, max_seq_len: int, causal: bool) -> None:
        super().__init__(d_model, layer, max_seq_len, causal)
        if causal:
            raise ValueError("linformer cannot be causal: each compressed key mixes all positions")
        if layer.rank is None:
            raise ValueError("linformer needs rank (the projected length k)")
        # Std 1/sqrt(max_seq_len), like the Xavier init of fairseq's Linformer:
        # a projected row is a sum of max_seq_len keys, so it keeps the scale of
        # one key. Plain Parameters (not nn.Linear), so they keep this scale
        # whatever initialisation the model gives its Linear layers.
        g = torch.Generator().manual_seed(layer.seed)
        std = 1.0 / math.sqrt(max_seq_len)
        self.proj_k = nn.Parameter(torch.randn(layer.rank, max_seq_len, generator=g) * std)
        self.proj_v = nn.Parameter(torch.randn(layer.rank, max_seq_len, generator=g) * std)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        n = k.shape[-2]
        if key_padding_mask is not None:
            keep = key_padding_mask[:, None, :, None].to(k.dtype)
            k, v = k * keep, v * keep
        e = self.proj_k[:, :n].to(k.dtype)
        f = self.proj_v[:, :n].to(v.dtype)
        k_low = torch.matmul(e, k)  # (b, h, rank, d): (rank, n) @ (b, h, n, d)
        v_low = torch.matmul(f, v)
        return F.scaled_dot_product_attention(q, k_low, v_low, scale=self.scale)


def iterative_pinv(a: Tensor, iterations: int) -> Tensor:
    """Moore-Penrose pseudo-inverse of a batch of square matrices by the
    iteration used in Nystromformer (Xiong et al. 2021, eq. 13; Razavi et al.
    2014): Z0 = A^T / (||A||_1 ||A||_inf),
    Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4.

    Matmuls only (fast on GPUs, smooth gradients, unlike an SVD). The norms
    are taken per matrix rather than over the whole batch, as the paper's code
    does, so one matrix in a batch does not slow the convergence of the others.
    """
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    norm1 = a.abs().sum(dim=-2).amax(dim=-1)  # max column sum
    norm_inf = a.abs().sum(dim=-1).amax(dim=-1)  # max row sum
    z = a.transpose(-1, -2) / (norm1 * norm_inf)[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


class NystromAttention(Attention):
    """Nystromformer (Xiong et al. 2021): softmax(Q K^T / sqrt(d)) V is
    approximated by K1 pinv(K2) (K3 V) with

        K1 = softmax(Q Kl^T),  K2 = softmax(Ql Kl^T),  K3 = softmax(Ql K^T)

    (q and k each scaled by d^{-1/4}), where the m = `layer.rank` landmarks
    Ql, Kl are means of m consecutive segments of the real (non-padding)
    tokens. Segments are as equal as possible (sizes floor or ceil of L / m for
    L real tokens), so any length works without padding the sequence. With
    m >= L every landmark is one token, K1 = K2 = K3 = A, and the result is
    A pinv(A) A V = A V, exact softmax attention.

    The pseudo-inverse is the paper's iterative method (`pinv_iterations`,
    default 12 rather than the paper's 6: each iteration multiplies the
    smallest resolved singular values by ~3.25, and 6 leave visible error when
    m is as large as the sequence; it is matmul-only, so it stays fast on GPU
    and differentiable without SVD's instability). All of it runs in float32:
    the pseudo-inverse is ill-conditioned in bf16.

    A landmark with no real token (L < m, or all padding) is masked out of K1
    and K2 and given an identity row in K2, so pinv(K2) is block-diagonal and
    the empty landmark contributes nothing.
    """

    pinv_iterations: int = 12

    def __init__(self, d_model: int, layer: LayerSpec, max_seq_len: int, causal: bool) -> None:
        super().__init__(d_model, layer, max_seq_len, causal)
        if causal:
            raise ValueError("nystrom cannot be causal: each landmark averages a whole segment")
        if layer.rank is None:
            raise ValueError("nystrom needs rank (the number of landmarks)")

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        b, h, n, d = q.shape
        m = min(self.layer.rank, n)
        dtype = v.dtype
        with no_autocast(q.device):
            s = self.head_dim ** -0.25
            qf, kf, vf = q.float() * s, k.float() * s, v.float()
            real = (
                torch.ones(b, n, dtype=torch.bool, device=q.device)
                if key_padding_mask is None
                else key_padding_mask.to(torch.bool)
            )
            # Segment of each real token: floor(index among real tokens * m / L).
            idx = real.long().cumsum(dim=1) - 1  # (b, n)
            length = real.sum(dim=1, keepdim=True).clamp_min(1)  # (b, 1)
            seg = (idx.clamp_min(0) * m).div(length, rounding_mode="floor").clamp(0, m - 1)
            assign = F.one_hot(seg, m).float() * real.unsqueeze(-1).float()  # (b, n, m)
            counts = assign.sum(dim=1)  # (b, m)
            filled = counts > 0
            mean = assign / counts.clamp_min(1).unsqueeze(1)
            q_land = torch.einsum("bnm,bhnd->bhmd", mean, qf)
            k_land = torch.einsum("bnm,bhnd->bhmd", mean, kf)

            neg = torch.finfo(torch.float32).min  # finite: an all-masked row stays finite
            no_land = ~filled[:, None, None, :]
            k1 = torch.softmax((qf @ k_land.transpose(-1, -2)).masked_fill(no_land, neg), dim=-1)  # (b,h,n,m)
            k2 = torch.softmax((q_land @ k_land.transpose(-1, -2)).masked_fill(no_land, neg), dim=-1)
            eye = torch.eye(m, device=q.device)
            k2 = torch.where(filled[:, None, :, None], k2, eye)  # empty landmark -> identity row
            k3 = torch.softmax((q_land @ kf.transpose(-1, -2)).masked_fill(~real[:, None, None, :], neg), dim=-1)
            out = (k1 @ iterative_pinv(k2, self.pinv_iterations)) @ (k3 @ vf)
        return out.to(dtype)
