"""The sparse-pattern attention kinds: local, strided, block, longformer, bigbird.

Each kind is exact softmax attention restricted to a fixed set of (query i, key j)
pairs; every causal kind adds j <= i and padding keys are never visible:

  local(window w)          |i - j| < w   (causal: 0 <= i - j < w)
                           Beltagy et al. 2020 (Longformer's sliding window);
                           Parmar et al. 2018 (Image Transformer, local attention)
  strided(stride s)        |i - j| < s  or  (i - j) mod s == 0
                           Child et al. 2019, "Generating Long Sequences with Sparse
                           Transformers" (the union of its two strided heads)
  block(block b)           i // b == j // b
                           Qiu et al. 2020, "Blockwise Self-Attention for Long
                           Document Understanding" (BlockBERT)
  longformer(w, g)         local(w)  or  j < g  or  i < g
                           Beltagy et al. 2020, "Longformer: The Long-Document
                           Transformer" (window + g leading global tokens)
  bigbird(w, g, r, b)      longformer(w, g)  or  j // b in R[i // b]
                           Zaheer et al. 2020, "Big Bird: Transformers for Longer
                           Sequences" (window + global + r random key blocks)

How it is computed, and why. CPU `scaled_dot_product_attention` visits every key
block whatever the mask says (see DESIGN.md), and a dense n x n mask is itself
quadratic, so a pattern is only worth having if it is computed on gathered keys.
Every pattern here is a union of a few *key sets*, each of which can be laid out
as a small dense problem:

  band      queries in chunks of c attend to the c + w - 1 (causal) or c + 2w - 2
            (bidirectional) keys around the chunk, gathered with `unfold` (a view);
  columns   the strided part: with i = a*s + r, the keys of the same residue r form
            a column, so a (s, n/s, n/s) batched matmul holds all of them;
  global    the g leading keys, seen by every query (an n x g matmul), and, when
            bidirectional, the g leading queries, which see every key (g x n);
  random    per query block of size b, its r random key blocks gathered with
            `index_select` (a (n/b, b, r*b) batched matmul).

Each set is softmaxed on its own and the sets are merged with the log-sum-exp
trick (the merge flash attention uses across key blocks), so the result is one
softmax over the union. A set's mask removes the pairs another set already holds
(and repeated random blocks), so no key is counted twice. Nothing of size n x n is
ever built: time and memory are O(n (c + w)), O(n (s + n/s)) or O(n r b).

All ops are plain tensor ops (unfold, index_select, matmul, masked_fill), so they
run on CPU and CUDA, in float32 and bf16 (scores and softmax statistics are kept
in float32), and under autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from search_spaces.arch_spec import LayerSpec
from search_spaces.attention.base import Attention

# A finite stand-in for the max of a row with no visible key: exp(-inf - (-1e30))
# is still 0, and the merge gets a finite shift instead of -inf - -inf = NaN.
_EMPTY_ROW_MAX = -1e30

# One (unnormalised output, row max, row sum) triple per key set; all float32,
# shaped (batch, heads, n, head_dim), (batch, heads, n, 1), (batch, heads, n, 1).
Part = tuple[Tensor, Tensor, Tensor]


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def _round_up(n: int, size: int) -> int:
    return -(-n // size) * size


def _pad_seq(x: Tensor, total: int, left: int = 0) -> Tensor:
    """Zero-pad dim 2 (the sequence) of (batch, heads, n, d) to `total`, `left` of it in front."""
    right = total - x.shape[2] - left
    if left == 0 and right == 0:
        return x
    return F.pad(x, (0, 0, left, right))


def _pad_keep(kpm: Tensor | None, n: int, total: int, left: int = 0) -> Tensor | None:
    """The key padding mask padded to `total` with False (the padding is never visible)."""
    if kpm is None:
        return None
    out = torch.zeros(kpm.shape[0], total, dtype=torch.bool, device=kpm.device)
    out[:, left:left + n] = kpm
    return out


def _in_band(d: Tensor, window: int, causal: bool) -> Tensor:
    """local(window) on the offset d = i - j."""
    if causal:
        return (d >= 0) & (d < window)
    return d.abs() < window


def _softmax_part(scores: Tensor, visible: Tensor, values: Tensor) -> Part:
    """Softmax statistics of one key set.

    scores (..., q, k) in any dtype, visible a bool mask broadcastable to it,
    values (..., k, d). Returns the unnormalised output sum_j e_ij v_j, the row max
    m_i and the row sum l_i = sum_j e_ij with e_ij = exp(s_ij - m_i), all float32.
    The row max is detached: the merged result does not depend on it, so this is
    exact and keeps the max out of the backward graph.
    """
    s = scores.float().masked_fill(~visible, float("-inf"))
    m = s.amax(dim=-1, keepdim=True).detach().clamp_min(_EMPTY_ROW_MAX)
    e = (s - m).exp_()  # masked entries: exp(-inf) = 0
    l = e.sum(dim=-1, keepdim=True)
    o = torch.matmul(e.to(values.dtype), values).float()
    return o, m, l


def _merge(parts: list[Part], dtype: torch.dtype) -> Tensor:
    """One softmax over the union of the key sets (log-sum-exp merge).

    Rows with no visible key at all (padding queries) come out as zeros.
    """
    big_m = parts[0][1]
    for _, m, _ in parts[1:]:
        big_m = torch.maximum(big_m, m)
    out = None
    total = None
    for o, m, l in parts:
        w = torch.exp(m - big_m)
        out = o * w if out is None else out + o * w
        total = l * w if total is None else total + l * w
    # total == 0 only where no key is visible; there out == 0 too, so divide by 1.
    total = torch.where(total > 0, total, torch.ones_like(total))
    return (out / total).to(dtype)


# ---------------------------------------------------------------------------
# key sets
# ---------------------------------------------------------------------------
def _band_part(q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, n: int, window: int,
               causal: bool, chunk: int) -> Part:
    """Sliding window: query chunks of `chunk` against the keys within `window` of them.

    Chunk qb holds queries qb*c .. qb*c + c - 1; it gathers keys from qb*c - (w - 1)
    to qb*c + c - 1 (+ w - 1 ahead when bidirectional): K = c + w - 1 (+ w - 1) keys,
    taken as an overlapping `unfold` view of the zero-padded keys, so gathering costs
    one copy of O(n (c + w) d / c) and the scores are O(n K).
    """
    b, h, _, d = q.shape
    nq = _round_up(n, chunk)
    nb = nq // chunk
    left = window - 1
    right = 0 if causal else window - 1
    kw = chunk + left + right
    total = nq + left + right  # (total - kw) // chunk + 1 == nb windows
    qb = _pad_seq(q, nq).view(b, h, nb, chunk, d)
    kb = _pad_seq(k, total, left).unfold(2, kw, chunk)  # (b, h, nb, d, kw)
    vb = _pad_seq(v, total, left).unfold(2, kw, chunk).transpose(-1, -2)  # (b, h, nb, kw, d)
    scores = torch.matmul(qb, kb)  # (b, h, nb, chunk, kw)

    dev = q.device
    i = torch.arange(nq, device=dev).view(nb, chunk, 1)
    j = (torch.arange(nb, device=dev) * chunk - left).view(nb, 1, 1) + torch.arange(kw, device=dev)
    visible = _in_band(i - j, window, causal) & (j >= 0) & (j < n)  # (nb, chunk, kw)
    if kpm is not None:
        keep = _pad_keep(kpm, n, total, left).unfold(1, kw, chunk)  # (b, nb, kw)
        visible = visible & keep[:, None, :, None, :]
    o, m, l = _softmax_part(scores, visible, vb)
    return (o.reshape(b, h, nq, d)[:, :, :n], m.reshape(b, h, nq, 1)[:, :, :n],
            l.reshape(b, h, nq, 1)[:, :, :n])


def _column_part(q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, n: int, stride: int,
                 causal: bool) -> Part:
    """Sparse Transformer's strided keys: (i - j) mod s == 0 and |i - j| >= s.

    (|i - j| < s is the band's; among keys of i's residue only j = i lies there.)
    With i = a*s + r the keys of residue r are one column of the (n/s, s) grid, so
    a batched matmul over the s residues gives every such score: O(n * n/s).
    """
    b, h, _, d = q.shape
    nq = _round_up(n, stride)
    a = nq // stride

    def cols(x: Tensor) -> Tensor:  # (b, h, n, d) -> (b, h, s, a, d): row a of residue r = a*s + r
        return _pad_seq(x, nq).view(b, h, a, stride, d).transpose(2, 3)

    scores = torch.matmul(cols(q), cols(k).transpose(-1, -2))  # (b, h, s, a, a')
    dev = q.device
    rows = torch.arange(a, device=dev)
    diff = rows.view(a, 1) - rows.view(1, a)  # a - a' = (i - j) / s
    visible = (diff > 0) if causal else (diff != 0)
    j = rows.view(1, 1, a) * stride + torch.arange(stride, device=dev).view(stride, 1, 1)
    visible = visible & (j < n)  # (s, a, a')
    if kpm is not None:
        keep = _pad_keep(kpm, n, nq).view(b, a, stride).transpose(1, 2)  # (b, s, a')
        visible = visible & keep[:, None, :, None, :]
    o, m, l = _softmax_part(scores, visible, cols(v))

    def back(x: Tensor) -> Tensor:  # (b, h, s, a, x) -> (b, h, n, x)
        return x.transpose(2, 3).reshape(b, h, nq, x.shape[-1])[:, :, :n]

    return back(o), back(m), back(l)


def _global_key_part(q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, n: int, g: int,
                     window: int, causal: bool) -> Part:
    """Every query against the g leading (global) keys, minus those its window holds."""
    kg, vg = k[:, :, :g], v[:, :, :g]
    scores = torch.matmul(q, kg.transpose(-1, -2))  # (b, h, n, g)
    dev = q.device
    i = torch.arange(n, device=dev).view(n, 1)
    j = torch.arange(g, device=dev).view(1, g)
    visible = ~_in_band(i - j, window, causal)
    if causal:
        visible = visible & (j <= i)
    if kpm is not None:
        visible = visible & kpm[:, None, None, :g]
    return _softmax_part(scores, visible, vg)


def _global_query_rows(q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, g: int) -> Part:
    """The g leading (global) queries of a bidirectional model against every key: O(g n)."""
    scores = torch.matmul(q[:, :, :g], k.transpose(-1, -2))  # (b, h, g, n)
    visible = torch.ones(1, dtype=torch.bool, device=q.device) if kpm is None else kpm[:, None, None, :]
    return _softmax_part(scores, visible, v)


def _random_part(q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, n: int, table: Tensor,
                 block: int, window: int, g: int, causal: bool) -> Part:
    """BigBird's random blocks: query block qb against key blocks table[qb].

    Pairs already held by the window or the global keys, keys past n, and repeats
    of a block within one row of the table are masked, so each key counts once.
    """
    b, h, _, d = q.shape
    nq = _round_up(n, block)
    nqb, r = table.shape
    flat = table.reshape(-1)

    def gather(x: Tensor) -> Tensor:  # (b, h, n, d) -> (b, h, nqb, r*block, d)
        xb = _pad_seq(x, nq).view(b, h, nqb, block, d)
        return xb.index_select(2, flat).view(b, h, nqb, r * block, d)

    qb = _pad_seq(q, nq).view(b, h, nqb, block, d)
    scores = torch.matmul(qb, gather(k).transpose(-1, -2))  # (b, h, nqb, block, r*block)

    dev = q.device
    i = torch.arange(nq, device=dev).view(nqb, block, 1)
    j = (table.view(nqb, r, 1) * block + torch.arange(block, device=dev)).view(nqb, 1, r * block)
    earlier = torch.ones(r, r, dtype=torch.bool, device=dev).tril(-1)  # [rho, rho'] with rho' < rho
    repeat = ((table.view(nqb, r, 1) == table.view(nqb, 1, r)) & earlier).any(-1)  # (nqb, r)
    repeat = repeat.view(nqb, r, 1).expand(nqb, r, block).reshape(nqb, 1, r * block)
    visible = (j < n) & (j >= g) & ~repeat & ~_in_band(i - j, window, causal)
    if causal:
        visible = visible & (j <= i)
    if kpm is not None:
        keep = _pad_keep(kpm, n, nq).view(b, nqb, block).index_select(1, flat)  # (b, nqb*r, block)
        visible = visible & keep.view(b, 1, nqb, 1, r * block)
    o, m, l = _softmax_part(scores, visible, gather(v))
    return (o.reshape(b, h, nq, d)[:, :, :n], m.reshape(b, h, nq, 1)[:, :, :n],
            l.reshape(b, h, nq, 1)[:, :, :n])


def _band_chunk(window: int) -> int:
    # Query chunk for the band. Each chunk reads c + w - 1 keys (causal) for w
    # useful ones per query, so a smaller c wastes less work but makes more, smaller
    # matmuls; c = w, kept within [16, 128], was the fastest on CPU (benchmarks/attention.py).
    return max(16, min(window, 128))


# ---------------------------------------------------------------------------
# the kinds
# ---------------------------------------------------------------------------
class _PatternAttention(Attention):
    """Shared `attend`: scale q, compute the kind's key sets, merge them."""

    def parts(self, q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None, n: int) -> list[Part]:
        raise NotImplementedError

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        n = q.shape[2]
        kpm = None if key_padding_mask is None else key_padding_mask.to(torch.bool)
        q = q * self.scale  # O(n d) here instead of O(n K) on the scores
        return self.finish(_merge(self.parts(q, k, v, kpm, n), q.dtype), q, k, v, kpm)

    def finish(self, out: Tensor, q: Tensor, k: Tensor, v: Tensor, kpm: Tensor | None) -> Tensor:
        return out


class LocalAttention(_PatternAttention):
    """Sliding-window attention: key j is visible to query i iff |i - j| < w
    (causal: 0 <= i - j < w). Beltagy et al. 2020 (Longformer), Parmar et al. 2018.

    O(n (c + w)) time and memory, c = the query chunk (see `_band_chunk`).
    """

    def parts(self, q, k, v, kpm, n):
        w = self.layer.window
        return [_band_part(q, k, v, kpm, n, w, self.causal, min(_band_chunk(w), n))]


class StridedAttention(_PatternAttention):
    """Sparse Transformer strided attention (Child et al. 2019): the union of its two
    heads' patterns, |i - j| < s or (i - j) mod s == 0 (causal adds j <= i).

    A band of width s plus the same-residue columns: O(n (s + n/s)), O(n sqrt n) at
    s ~ sqrt n.
    """

    def parts(self, q, k, v, kpm, n):
        s = self.layer.stride
        return [_band_part(q, k, v, kpm, n, s, self.causal, min(_band_chunk(s), n)),
                _column_part(q, k, v, kpm, n, s, self.causal)]


class BlockAttention(_PatternAttention):
    """Blockwise attention (Qiu et al. 2020, BlockBERT): i // b == j // b (causal adds
    j <= i). Each block is a dense b x b problem: O(n b)."""

    def parts(self, q, k, v, kpm, n):
        bs = min(self.layer.block, n)
        b, h, _, d = q.shape
        nq = _round_up(n, bs)
        nb = nq // bs

        def blocks(x: Tensor) -> Tensor:
            return _pad_seq(x, nq).view(b, h, nb, bs, d)

        scores = torch.matmul(blocks(q), blocks(k).transpose(-1, -2))  # (b, h, nb, bs, bs)
        pos = torch.arange(nq, device=q.device).view(nb, bs)
        visible = (pos < n).view(nb, 1, bs)  # keys past n (the padding we added)
        if self.causal:
            visible = visible & (pos.view(nb, bs, 1) >= pos.view(nb, 1, bs))
        if kpm is not None:
            visible = visible & _pad_keep(kpm, n, nq).view(b, 1, nb, 1, bs)
        o, m, l = _softmax_part(scores, visible, blocks(v))
        return [(o.reshape(b, h, nq, d)[:, :, :n], m.reshape(b, h, nq, 1)[:, :, :n],
                 l.reshape(b, h, nq, 1)[:, :, :n])]


class LongformerAttention(_PatternAttention):
    """Longformer (Beltagy et al. 2020): local(w) or j < g or i < g, the sliding
    window plus g leading global tokens that see and are seen by every token.

    Band + the g global keys (minus the band's) + (bidirectional) the g global query
    rows, each a dense softmax over all keys: O(n (c + w + g)).
    In a causal model a global query i < g can only see j <= i < g, which the global
    keys already cover, so only the key side is needed.
    """

    def parts(self, q, k, v, kpm, n):
        w, g = self.layer.window, min(self.layer.global_tokens, n)
        parts = [_band_part(q, k, v, kpm, n, w, self.causal, min(_band_chunk(w), n))]
        if g > 0:
            parts.append(_global_key_part(q, k, v, kpm, n, g, w, self.causal))
        return parts

    def finish(self, out, q, k, v, kpm):
        g = min(self.layer.global_tokens, q.shape[2])
        if self.causal or g == 0:
            return out
        # A global query's visible set is every key, so its row is plain attention.
        rows = _merge([_global_query_rows(q, k, v, kpm, g)], out.dtype)
        return torch.cat([rows, out[:, :, g:]], dim=2)


class BigBirdAttention(LongformerAttention):
    """BigBird (Zaheer et al. 2020): longformer(w, g) or j // b in R[i // b], where
    R holds r random key blocks (of size b) per query block.

    R is fixed by `layer.seed`: r integers in [0, 2^31) per query block of the
    longest sequence are drawn once from a seeded `torch.Generator`, and scaled to
    the blocks a query block may pick at length n (causal: blocks 0..its own;
    bidirectional: all ceil(n / b) blocks), so the same spec always gives the same
    pattern, and a causal model's pattern for a prefix does not depend on n.
    Repeated blocks, and pairs the window or the global keys already hold, are
    masked in the random set, so the softmax is over the set union.
    O(n (c + w + g + r b)).
    """

    def __init__(self, d_model: int, layer: LayerSpec, max_seq_len: int, causal: bool) -> None:
        super().__init__(d_model, layer, max_seq_len, causal)
        gen = torch.Generator().manual_seed(layer.seed)
        n_blocks = -(-max_seq_len // layer.block)
        bits = torch.randint(0, 2**31, (n_blocks, layer.random_blocks), generator=gen, dtype=torch.int64)
        # An integer buffer: it follows .to(device) but not .to(dtype), so bf16 models
        # keep the same pattern; not persistent, since the seed already determines it.
        self.register_buffer("_random_bits", bits, persistent=False)

    def random_block_table(self, n: int) -> Tensor:
        """(ceil(n / block), random_blocks) LongTensor: row qb lists the key blocks
        query block qb attends to (may repeat; repeats count once)."""
        nqb = -(-n // self.layer.block)
        bits = self._random_bits[:nqb]
        if self.causal:
            choices = torch.arange(1, nqb + 1, device=bits.device).view(nqb, 1)
        else:
            choices = torch.full((nqb, 1), nqb, device=bits.device, dtype=torch.int64)
        return (bits * choices) >> 31  # floor(u * choices), u = bits / 2^31 in [0, 1)

    def parts(self, q, k, v, kpm, n):
        parts = super().parts(q, k, v, kpm, n)
        if self.layer.random_blocks > 0:
            g = min(self.layer.global_tokens, n)
            parts.append(_random_part(q, k, v, kpm, n, self.random_block_table(n), self.layer.block,
                                      self.layer.window, g, self.causal))
        return parts
