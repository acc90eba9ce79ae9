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
from search_spaces.attention.base import Attention, no_autocast

# Denominators are sums of positive features; they are exactly zero only for a
# query that sees no real key (a padding row, or a causal row before the first
# real key). Clamping at the smallest normal float32 keeps those rows finite
# (0 / eps = 0) without touching any real row: FAVOR+ features can be small
# (e^-30 and less, see PerformerAttention._phi), and a larger clamp (1e-12 once)
# pulled such rows towards zero.
EPS = torch.finfo(torch.float32).tiny

# Chunk size of the causal form, chosen by measurement on the 2-core CPU at
# n = 8192, 4 heads, head_dim 64 (C in 32..256): small chunks waste time and
# memory on per-chunk (r, d) states, large ones on the C x C products. 64 was
# best for `linear` (r = d = 64); `performer` (r = 256 features: 4x bigger
# states) was best at 128.
DEFAULT_CHUNK = 64



def bidirectional_kernel_attention(fq: Tensor, fk: Tensor, v: Tensor) -> Tensor:
    """out_i = fq_i^T (sum_j fk_j v_j^T) / (fq_i^T sum_j fk_j).

    fq, fk: (b, h, n, r) non-negative features (padding keys already zero);
    v: (b, h, n, d). Returns (b, h, n, d) in v's dtype.
    """
    kv = fk.transpose(-1, -2) @ v  # (b, h, r, d): the global sum of fk_j v_j^T
    num = fq @ kv
    with no_autocast(fq.device):
        # The normaliser is a sum over up to n tokens: keep it in float32.
        z = fk.float().sum(dim=-2)  # (b, h, r)
        den = (fq.float() @ z.unsqueeze(-1)).squeeze(-1)  # (b, h, n)
        out = num.float() / den.clamp_min(EPS).unsqueeze(-1)
    return out.to(v.dtype)


def exclusive_prefix_sum(x: Tensor, dim: int) -> Tensor:
    """y_t = sum_{s < t} x_s along `dim` (differentiable), as a two-level blocked
    scan of a handful of whole-tensor ops, whatever the length T.

    The T positions (here: chunks, n / C of them) are split into G groups of
    P ~ sqrt(T): the exclusive prefix inside each group is a matmul with a
    strictly lower-triangular P x P matrix of ones, the exclusive prefix of the
    group totals one with a G x G one, and the two are added. Extra work
    O(T (P + G)) per element of the other dims, a few percent of the
    matmuls around it. Measured on the 2-core CPU (n = 8192 chunk states):
    `torch.cumsum` over this middle dimension and a log2(T)-step Hillis-Steele
    scan built from `torch.cat` are both tens of ms; a Python loop of T in-place
    additions is ~3 ms on an idle machine but, with states of more than ~32k
    numbers per step (performer: r = 256), every addition is split over the
    OpenMP threads and waits for all of them, ~4 ms each once other processes
    share the cores (0.5 s a call). Half-precision inputs should be passed as
    float32 (the sums grow long)."""
    dim = dim % x.dim()
    shape = x.shape
    length = shape[dim]
    pre = math.prod(shape[:dim])
    post = math.prod(shape[dim + 1:])
    if length <= 1 or x.numel() == 0:
        return torch.zeros_like(x)
    p = 1 << math.ceil(math.log2(math.sqrt(length)))  # group size, a power of two
    g = -(-length // p)
    x3 = x.reshape(pre, length, post)
    if g * p != length:
        x3 = F.pad(x3, (0, 0, 0, g * p - length))
    xg = x3.view(pre, g, p, post)
    ones = dict(dtype=x.dtype, device=x.device)
    inner = torch.ones(p, p, **ones).tril_(-1) @ xg  # (pre, g, p, post): within each group
    totals = xg.sum(dim=2)  # (pre, g, post)
    outer = torch.ones(g, g, **ones).tril_(-1) @ totals  # (pre, g, post): earlier groups
    y = (inner + outer.unsqueeze(2)).view(pre, g * p, post)[:, :length]
    return y.reshape(shape)


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
    # (In place: the matmul saved its inputs, not its output, so autograd allows it.)
    a = (fq @ fk.transpose(-1, -2)).tril_()  # (b, h, nc, c, c)
    num = a @ v

    # Across chunks: the state before chunk t is S_t = sum over chunks < t of
    # fk^T v. All per-chunk terms come from one batched matmul and their prefix
    # sums from `exclusive_prefix_sum` (a blocked scan: a few whole-tensor ops).
    # Measured on the 2-core CPU: a Python loop over chunks with two small
    # matmuls each is as fast on an idle machine but several times slower when
    # other processes share the cores (every small op waits for all OpenMP
    # threads). The (n / C, r, d) states are the price: memory O(n r d / C),
    # linear in n.
    kv = fk.transpose(-1, -2) @ v  # (b, h, nc, r, d)
    with no_autocast(fq.device):
        state = exclusive_prefix_sum(kv.float() if kv.dtype not in (torch.float32, torch.float64) else kv, dim=2)
    # num += fq @ state, one fused batched matmul-add in place (a @ v saved its
    # inputs, not num).
    num.view(-1, c, d).baddbmm_(fq.reshape(-1, c, r), state.to(fq.dtype).reshape(-1, r, d))

    with no_autocast(fq.device):
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
    """elu(x) + 1 = max(x, 0) + exp(min(x, 0)): the same function, measured ~2x
    faster on CPU than F.elu(x) + 1 (the feature map is ~20% of a causal call).
    The exp and the sum run in place on fresh tensors (clamp saves its input, not
    its output; the exp's result, which its backward needs, is not modified)."""
    return x.clamp_min(0).add_(x.clamp_max(0).exp_())


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
        q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        # QR's Q alone is not uniformly (Haar) distributed: LAPACK's sign convention
        # tilts each column towards one coordinate, which biased the estimate (a
        # mean row of -0.045 per coordinate, a kernel estimate ~6% low however many
        # features). Scaling column i by sign(R_ii) makes it Haar (Mezzadri 2007,
        # "How to generate random matrices from the classical compact groups").
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
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
        constant per query, or one constant per (batch, head) for the keys, the max
        over the real keys, which cancels between numerator and denominator. For a
        query the |x'|^2 / 2 term is itself such a constant, so with c = max_r(w_r x')
        - |x'|^2 / 2 both go away exactly: exp(w x' - max_r w_r x').

        In the causal form the keys' constant includes later keys. It cancels
        exactly; an earlier output can change only where a later key's features are
        so much larger (e^87, float32's range) that every earlier key's underflow to
        0. (A denominator clamp of 1e-12 used to zero such rows from e^-27 on: the
        clamp is now float32's smallest normal, see EPS.) A stabiliser free of other
        keys (the constant |w_r|^2 / 2 per feature, moved to the query side) was
        tried and measured worse: with keys of norm ~30 per head every feature
        underflows, giving rows of zeros and NaN gradients where this one is exact.
        """
        m = self.features.shape[0]
        log_norm = 0.5 * math.log(m)  # the 1/sqrt(m), folded into the exponent
        with no_autocast(x.device):
            # The exponent is computed in float32: in bf16 an error of 0.4% on an
            # exponent of ~10 would already be a 4% error on the feature.
            x = x.float() * self.head_dim ** -0.25
            logits = x @ self.features.float().T  # (b, h, n, m)
            # The two passes over the (b, h, n, m) logits, subtraction and exp, run
            # in place (the matmul saved its inputs, not its output; exp_ saves its
            # result): no (b, h, n, m) temporaries besides the logits themselves.
            with torch.no_grad():
                row_max = logits.amax(dim=-1)  # (b, h, n)
            if is_query:
                return logits.sub_((row_max + log_norm).unsqueeze(-1)).exp_()
            half_sq = 0.5 * (x * x).sum(dim=-1)  # (b, h, n): part of each key's feature, kept
            best = row_max - half_sq.detach()
            if key_padding_mask is not None:
                # Padding keys neither set the constant nor (below) carry weight.
                best = best.masked_fill(~key_padding_mask[:, None, :], -torch.inf)
            # One constant per (batch, head), the max over real keys; detached as
            # its gradient is exactly zero.
            stab = best.amax(dim=-1, keepdim=True)
            stab = torch.where(torch.isfinite(stab), stab, torch.zeros_like(stab))
            offset = half_sq + stab + log_norm
            if key_padding_mask is not None:
                # Keep padding exponents <= 0 (no inf * 0 = nan), then zero them.
                offset = torch.where(key_padding_mask[:, None, :], offset, row_max + log_norm)
            phi = logits.sub_(offset.unsqueeze(-1)).exp_()
        return _zero_padding_keys(phi, key_padding_mask)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        if v.dtype == torch.float16:
            # Features far below the largest are ordinary here (e^-20 and less):
            # float32 and bfloat16 hold them, float16 (smallest normal 6e-5) flushes
            # them to zero. So float16 inputs are attended in float32, autocast off.
            with no_autocast(v.device):
                return self.attend(q.float(), k.float(), v.float(), key_padding_mask).to(v.dtype)
        fq = self._phi(q, True, None).to(v.dtype)
        fk = self._phi(k, False, key_padding_mask).to(v.dtype)
        if self.causal:
            return causal_kernel_attention(fq, fk, v, self.chunk)
        return bidirectional_kernel_attention(fq, fk, v)
