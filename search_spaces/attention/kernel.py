"""Kernel ("linearised") attention kinds: `linear` and `performer`.

Both replace softmax(q k^T) by a feature map phi, so that attention becomes

    out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j))

and the sums can be formed once (bidirectional) or as prefix sums (causal):
O(n) in sequence length instead of O(n^2).

- `linear`: phi(x) = elu(x) + 1 (Katharopoulos et al. 2020, "Transformers are
  RNNs: Fast Autoregressive Transformers with Linear Attention").
- `performer`: FAVOR+ positive orthogonal random features, an unbiased estimate
  of the softmax kernel (Choromanski et al. 2021, "Rethinking Attention with
  Performers").

The causal form never materialises the (n, r, d) tensor of per-token prefix
sums (that is n times the size of the output): `causal_kernel_attention` splits
the sequence into chunks of C tokens, uses a masked C x C quadratic product
inside each chunk and a running (r x d) state across chunks (the "chunked" form
of e.g. Hua et al. 2022, FLASH, and of the gated linear attention kernels).
Time O(n C (r + d) + n r d), memory O(n (r + d) + n r d / C + C^2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from search_spaces.arch_spec import LayerSpec
from search_spaces.attention.base import Attention

# Denominators are sums of positive features; they are exactly zero only for a
# query that sees no real key (a padding row, or a causal row before the first
# real key). Clamping at a tiny value keeps those rows finite (0 / eps = 0)
# without biasing real rows, whose denominators are far larger.
EPS = 1e-12

# Chunk size of the causal form, chosen by measurement on the 2-core CPU at
# n = 8192, 4 heads, head_dim 64 (C in 32..256): small chunks waste time and
# memory on per-chunk (r, d) states, large ones on the C x C products. 64 was
# best for `linear` (r = d = 64); `performer` (r = 256 features: 4x bigger
# states) was best at 128.
DEFAULT_CHUNK = 64


def _no_autocast(device: torch.device):
    """A context in which matmuls keep float32 (autocast would cast them to bf16)."""
    return torch.autocast(device_type=device.type, enabled=False)


def bidirectional_kernel_attention(fq: Tensor, fk: Tensor, v: Tensor) -> Tensor:
    """out_i = fq_i^T (sum_j fk_j v_j^T) / (fq_i^T sum_j fk_j).

    fq, fk: (b, h, n, r) non-negative features (padding keys already zero);
    v: (b, h, n, d). Returns (b, h, n, d) in v's dtype.
    """
    kv = fk.transpose(-1, -2) @ v  # (b, h, r, d): the global sum of fk_j v_j^T
    num = fq @ kv
    with _no_autocast(fq.device):
        # The normaliser is a sum over up to n tokens: keep it in float32.
        z = fk.float().sum(dim=-2)  # (b, h, r)
        den = (fq.float() @ z.unsqueeze(-1)).squeeze(-1)  # (b, h, n)
        out = num.float() / den.clamp_min(EPS).unsqueeze(-1)
    return out.to(v.dtype)


def _exclusive_running_sum(x: Tensor, dim: int, reverse: bool = False) -> Tensor:
    """y_t = sum_{s < t} x_s (reverse: sum_{s > t} x_s) along `dim`, one in-place
    addition per position into a fresh buffer: T small ops that touch each
    number once, no autograd."""
    length = x.shape[dim]
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    order = range(length - 1, -1, -1) if reverse else range(length)
    prev = None
    for t in order:
        if prev is None:
            y.select(dim, t).zero_()
        else:
            torch.add(y.select(dim, prev), x.select(dim, prev), out=y.select(dim, t))
        prev = t
    return y


class _ExclusivePrefixSum(torch.autograd.Function):
    """Exclusive prefix sum whose backward is the reverse exclusive prefix sum."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:  # type: ignore[override]
        ctx.dim = dim
        return _exclusive_running_sum(x, dim)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return _exclusive_running_sum(grad, ctx.dim, reverse=True), None


def exclusive_prefix_sum(x: Tensor, dim: int) -> Tensor:
    """y_t = sum_{s < t} x_s along `dim` (differentiable).

    A running sum, one in-place addition per position (the positions here are
    chunks, n / C of them). Measured on the 2-core CPU for the (n / C, r, d)
    chunk states at n = 8192 (128 x 64 x 64 per head): ~3 ms, against ~60-70 ms
    for a log2-step Hillis-Steele scan built from `torch.cat` (each of its steps
    rewrites the whole tensor) and ~55-95 ms for `torch.cumsum` over this middle
    dimension. Half-precision inputs should be passed as float32 (the sums grow
    long)."""
    dim = dim % x.dim()
    if x.shape[dim] == 0:
        return x.clone()
    return _ExclusivePrefixSum.apply(x, dim)


def causal_kernel_attention(fq: Tensor, fk: Tensor, v: Tensor, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """out_i = fq_i^T (sum_{j<=i} fk_j v_j^T) / (fq_i^T sum_{j<=i} fk_j), chunked.

    Inside a chunk of C tokens: (fq fk^T masked to j <= i) @ v, a C x C product.
    Across chunks: the exclusive prefix sum over chunks of fk_c^T v_c (one r x d
    state per chunk, summed in float32), applied as fq_c @ S_c. The per-token
    (n, r, d) prefix sums are never formed; the per-chunk states are n / C of them.
    """
    b, h, n, r = fq.shape
    d = v.shape[-1]
    c = max(1, min(chunk, n))
    pad = (-n) % c
    if pad:
        # Zero features for the tail: padded keys add nothing, padded queries are cut off.
        fq = F.pad(fq, (0, 0, 0, pad))
        fk = F.pad(fk, (0, 0, 0, pad))
        v = F.pad(v, (0, 0, 0, pad))
    nc = (n + pad) // c
    fq = fq.reshape(b, h, nc, c, r)
    fk = fk.reshape(b, h, nc, c, r)
    v = v.reshape(b, h, nc, c, d)

    # Within each chunk: the exact quadratic form restricted to j <= i.
    a = (fq @ fk.transpose(-1, -2)).tril()  # (b, h, nc, c, c)
    num = a @ v

    # Across chunks: the state before chunk t is S_t = sum over chunks < t of
    # fk^T v. All per-chunk terms come from one batched matmul and their prefix
    # sums from `exclusive_prefix_sum` (n / C cheap in-place additions, no
    # matmul inside the loop). Measured on the 2-core CPU: a Python loop over
    # chunks with two small matmuls each is as fast on an idle machine but several
    # times slower when other processes share the cores (every small matmul waits
    # for all OpenMP threads). The (n / C, r, d) states are the price:
    # memory O(n r d / C), linear in n.
    kv = fk.transpose(-1, -2) @ v  # (b, h, nc, r, d)
    with _no_autocast(fq.device):
        state = exclusive_prefix_sum(kv.float() if kv.dtype not in (torch.float32, torch.float64) else kv, dim=2)
    num = num + fq @ state.to(fq.dtype)

    with _no_autocast(fq.device):
        # The normaliser state, in float32: (n / C, r) numbers, cheap to keep whole.
        zk = fk.float().sum(dim=-2)  # (b, h, nc, r)
        z = exclusive_prefix_sum(zk, dim=2)  # keys of earlier chunks only
        den = a.float().sum(dim=-1) + (fq.float() @ z.unsqueeze(-1)).squeeze(-1)  # (b, h, nc, c)
        out = num.float() / den.clamp_min(EPS).unsqueeze(-1)
    out = out.reshape(b, h, nc * c, d)[:, :, :n]
    return out.to(v.dtype)


def _zero_padding_keys(fk: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    # A padding key with zero features adds nothing to either sum.
    if key_padding_mask is None:
        return fk
    return fk * key_padding_mask[:, None, :, None].to(fk.dtype)


def elu_plus_one(x: Tensor) -> Tensor:
    """elu(x) + 1 = exp(min(x, 0)) + max(x, 0): the same function, measured ~1.6x
    faster on CPU than F.elu(x) + 1 (the feature map is ~20% of a causal call)."""
    return torch.exp(x.clamp_max(0)) + x.clamp_min(0)


class LinearAttention(Attention):
    """Linear attention, phi(x) = elu(x) + 1 (Katharopoulos et al. 2020,
    "Transformers are RNNs", ICML). No knobs; causal via chunked prefix sums."""

    chunk: int = DEFAULT_CHUNK

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        fq = elu_plus_one(q)
        fk = _zero_padding_keys(elu_plus_one(k), key_padding_mask)
        if self.causal:
            return causal_kernel_attention(fq, fk, v, self.chunk)
        return bidirectional_kernel_attention(fq, fk, v)


def orthogonal_gaussian_features(m: int, d: int, seed: int) -> Tensor:
    """(m, d) positive-orthogonal-random-feature directions (Choromanski et al.
    2021, section 3.2): blocks of d orthogonal rows (QR of a Gaussian matrix),
    each row rescaled by an independent chi(d) norm so that every row is
    marginally N(0, I_d) while rows within a block stay exactly orthogonal,
    which lowers the variance of the softmax-kernel estimate."""
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(math.ceil(m / d)):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        blocks.append(q.T)
    w = torch.cat(blocks, dim=0)[:m]
    # Norm of a d-dim standard Gaussian vector is chi(d)-distributed.
    norms = torch.randn(m, d, generator=g, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (w * norms).float()


class PerformerAttention(Attention):
    """FAVOR+ attention (Choromanski et al. 2021, "Rethinking Attention with
    Performers", ICLR): softmax(q k^T / sqrt(d)) estimated with `layer.rank`
    positive orthogonal random features,

        phi(x) = exp(w x' - |x'|^2 / 2) / sqrt(m),   x' = x d^{-1/4},

    drawn once from `layer.seed` and kept in the `features` buffer (saved and
    loaded with the model, shared by all heads of the layer)."""

    chunk: int = 128

    def __init__(self, d_model: int, layer: LayerSpec, max_seq_len: int, causal: bool) -> None:
        super().__init__(d_model, layer, max_seq_len, causal)
        if layer.rank is None:
            raise ValueError("performer needs rank (the number of random features)")
        self.register_buffer("features", orthogonal_gaussian_features(layer.rank, self.head_dim, layer.seed))

    def _phi(self, x: Tensor, is_query: bool, key_padding_mask: Tensor | None) -> Tensor:
        """phi(x) = exp(w x' - |x'|^2 / 2 - c) / sqrt(m), with a stabiliser c.

        c is the usual max-subtraction (performer-pytorch, the paper's code): a
        constant per query, or one constant per (batch, head) for the keys,
        which cancels between numerator and denominator. For a query the
        |x'|^2 / 2 term is itself such a constant, so with c = max_r(w_r x')
        - |x'|^2 / 2 both go away exactly: exp(w x' - max_r w_r x').
        Everything is done on (b, h, n) vectors except one subtraction and the
        exp over the (b, h, n, m) logits, the two passes that cost time.
        """
        m = self.features.shape[0]
        log_norm = 0.5 * math.log(m)  # the 1/sqrt(m), folded into the exponent
        with _no_autocast(x.device):
            # The exponent is computed in float32: in bf16 an error of 0.4% on an
            # exponent of ~10 would already be a 4% error on the feature.
            x = x.float() * self.head_dim ** -0.25
            logits = x @ self.features.float().T  # (b, h, n, m)
            row_max = logits.amax(dim=-1).detach()  # (b, h, n)
            if is_query:
                return torch.exp(logits - (row_max + log_norm).unsqueeze(-1))
            half_sq = 0.5 * (x * x).sum(dim=-1)  # (b, h, n): part of each key's feature, kept
            best = row_max - half_sq.detach()
            if key_padding_mask is not None:
                # Padding keys neither set the constant nor (below) carry weight.
                best = best.masked_fill(~key_padding_mask[:, None, :], -torch.inf)
            # One constant per (batch, head), the max over real keys; detached as
            # its gradient is exactly zero. In the causal case later keys take part
            # in it; it cancels mathematically, so earlier outputs change only at
            # the rounding level (and only if later keys are much larger).
            stab = best.amax(dim=-1, keepdim=True)
            stab = torch.where(torch.isfinite(stab), stab, torch.zeros_like(stab))
            offset = half_sq + stab + log_norm
            if key_padding_mask is not None:
                # Keep padding exponents <= 0 (no inf * 0 = nan), then zero them.
                offset = torch.where(key_padding_mask[:, None, :], offset, row_max + log_norm)
            phi = torch.exp(logits - offset.unsqueeze(-1))
        return _zero_padding_keys(phi, key_padding_mask)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        dtype = v.dtype
        fq = self._phi(q, True, None).to(dtype)
        fk = self._phi(k, False, key_padding_mask).to(dtype)
        if self.causal:
            return causal_kernel_attention(fq, fk, v, self.chunk)
        return bidirectional_kernel_attention(fq, fk, v)
