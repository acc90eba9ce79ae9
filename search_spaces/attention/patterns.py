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
Every pattern here is a union of a few *key sets*, each a small dense problem per
query chunk:

  band      queries in chunks of c attend to the c + w - 1 (causal) or c + 2w - 2
            (bidirectional) keys around the chunk, gathered with `unfold`;
  global    the g leading keys, the same for every chunk, and, when bidirectional,
            the g leading queries, which see every key (g x n);
  random    BigBird chunks queries by its block size b; each chunk gathers its r
            random key blocks with `index_select`;
  columns   the strided part: with i = a*s + r, the keys of the same residue r form
            a column, so a (s, n/s, n/s) batched matmul holds all of them.

local, block, longformer and bigbird concatenate their sets along the keys and run
one `scaled_dot_product_attention` per call with the chunks as the batch: one
joint softmax over the union, in the fused kernel (on a 2-core CPU about 1.5x faster
per (query, key) pair than separate matmul/softmax ops). A set's boolean mask hides
the pairs an earlier set already holds (and repeated random blocks), so no key is
counted twice. strided cannot share a key list across a chunk (each residue has its
own column), so its two sets are softmaxed separately and merged with the
log-sum-exp trick (as flash attention merges key blocks). Nothing of size n x n is
ever built: time and memory are O(n (c + w + g + r b)) or O(n (s + n/s)).

All ops are plain tensor ops (unfold, index_select, matmul, masked_fill, SDPA), so
they run on CPU and CUDA, in float32 and bf16, and under autograd. Rows with no
visible key (only ever padding queries) come out as zeros.
"""

from __future__ import annotations

from typing import NamedTuple

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


def _softmax_part(scores: Tensor, hidden: list[Tensor], values: Tensor) -> Part:
    """Softmax statistics of one key set.

    scores (..., q, k) in any dtype, straight from a matmul; `hidden` bool masks, each
    broadcastable to it, True where the pair is NOT visible (several small masks
    applied one after the other, so no mask of the scores' full size is built);
    values (..., k, d). Returns the unnormalised output sum_j e_ij v_j, the row max
    m_i and the row sum l_i = sum_j e_ij with e_ij = exp(s_ij - m_i), all float32.

    The ops work in place on the fresh scores (autograd allows it: the matmul that
    made them saved its inputs, not its output; exp_ saves its result), which saves
    a full copy per step. The row max is detached: the merged result does not
    depend on it, so this is exact and keeps the max out of the backward graph.
    """
    s = scores.float()
    for mask in hidden:
        s = s.masked_fill_(mask, float("-inf"))
    m = s.amax(dim=-1, keepdim=True).detach().clamp_min(_EMPTY_ROW_MAX)
    e = s.sub_(m).exp_()  # hidden pairs: exp(-inf) = 0
    l = e.sum(dim=-1, keepdim=True)
    o = torch.matmul(e.to(values.dtype), values).float()
    return o, m, l


def _merge(parts: list[Part], dtype: torch.dtype) -> Tensor:
    """One softmax over the union of the key sets (log-sum-exp merge).

    Rows with no visible key at all (padding queries) come out as zeros.
    """
    if len(parts) == 1:  # one key set: nothing to merge
        o, _, l = parts[0]
        return (o / torch.where(l > 0, l, torch.ones_like(l))).to(dtype)
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
    # i - j = t - u + left for query t and key slot u of a chunk: the same in every chunk.
    offset = torch.arange(chunk, device=dev).view(chunk, 1) - torch.arange(kw, device=dev) + left
    hidden = [~_in_band(offset, window, causal)]  # (chunk, kw)
    if kpm is not None:  # padded with False, so it also hides keys outside [0, n)
        keep = _pad_keep(kpm, n, total, left).unfold(1, kw, chunk)  # (b, nb, kw)
        hidden.append(~keep[:, None, :, None, :])
    else:
        # Keys outside [0, n) (our zero padding) sit only in the first and last few
        # chunks: hide them there, on a slice, rather than with a pass over all scores.
        first = min(nb, -(-left // chunk))  # chunks 0 .. first-1 reach j < 0
        last = max(first, min(nb, (n + left - kw) // chunk + 1))  # chunks last.. reach j >= n
        j = (torch.arange(nb, device=dev) * chunk - left).view(nb, 1) + torch.arange(kw, device=dev)
        outside = ((j < 0) | (j >= n)).view(nb, 1, kw)
        scores = scores.float()
        for lo, hi in ((0, first), (last, nb)):
            if hi > lo:
                scores[:, :, lo:hi].masked_fill_(outside[lo:hi], float("-inf"))
    o, m, l = _softmax_part(scores, hidden, vb)
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
    hidden = [(diff <= 0) if causal else (diff == 0)]  # (a, a')
    if kpm is not None:  # padded with False, so it also hides keys past n
        keep = _pad_keep(kpm, n, nq).view(b, a, stride).transpose(1, 2)  # (b, s, a')
        hidden.append(~keep[:, None, :, None, :])
    elif nq > n:
        j = rows.view(1, 1, a) * stride + torch.arange(stride, device=dev).view(stride, 1, 1)
        hidden.append(j >= n)  # (s, 1, a')
    o, m, l = _softmax_part(scores, hidden, cols(v))

    def back(x: Tensor) -> Tensor:  # (b, h, s, a, x) -> (b, h, n, x)
        return x.transpose(2, 3).reshape(b, h, nq, x.shape[-1])[:, :, :n]

    return back(o), back(m), back(l)


# ---------------------------------------------------------------------------
# the joint path: one fused softmax over the concatenated key sets of a chunk
# ---------------------------------------------------------------------------
class _KeySet(NamedTuple):
    """Keys and values gathered per query chunk, (batch, heads, chunks, K, d) (may be an
    expanded view), and `hidden`, broadcastable to (batch, chunks, chunk, K): True
    where the pair is not visible (outside the pattern, padding, or already held by
    an earlier set in the list)."""

    k: Tensor
    v: Tensor
    hidden: Tensor


def _band_keys(k: Tensor, v: Tensor, kpm: Tensor | None, n: int, nq: int, chunk: int, window: int,
               causal: bool) -> _KeySet:
    """Sliding window: chunk qb (queries qb*c .. qb*c + c - 1) gathers the keys from
    qb*c - (w - 1) to qb*c + c - 1 (+ w - 1 ahead when bidirectional), an overlapping
    `unfold` view of the zero-padded keys: K = c + w - 1 (+ w - 1) keys per chunk."""
    nb = nq // chunk
    left = window - 1
    right = 0 if causal else window - 1
    kw = chunk + left + right
    total = nq + left + right  # (total - kw) // chunk + 1 == nb windows
    kb = _pad_seq(k, total, left).unfold(2, kw, chunk).transpose(-1, -2)  # (b, h, nb, kw, d)
    vb = _pad_seq(v, total, left).unfold(2, kw, chunk).transpose(-1, -2)
    dev = k.device
    # i - j = t - u + left for query t and key slot u of a chunk: the same in every chunk.
    offset = torch.arange(chunk, device=dev).view(chunk, 1) - torch.arange(kw, device=dev) + left
    hidden = ~_in_band(offset, window, causal)  # (chunk, kw)
    if kpm is not None:  # padded with False, so it also hides keys outside [0, n)
        keep = _pad_keep(kpm, n, total, left).unfold(1, kw, chunk)  # (b, nb, kw)
        return _KeySet(kb, vb, hidden | ~keep[:, :, None, :])
    j = (torch.arange(nb, device=dev) * chunk - left).view(nb, 1) + torch.arange(kw, device=dev)
    return _KeySet(kb, vb, hidden | ((j < 0) | (j >= n)).view(nb, 1, kw))


def _global_keys(k: Tensor, v: Tensor, kpm: Tensor | None, nq: int, chunk: int, g: int, window: int,
                 causal: bool) -> _KeySet:
    """The g leading (global) keys, the same for every chunk, minus the window's."""
    b, h, _, d = k.shape
    nb = nq // chunk
    kg = k[:, :, None, :g].expand(b, h, nb, g, d)
    vg = v[:, :, None, :g].expand(b, h, nb, g, d)
    dev = k.device
    i = torch.arange(nq, device=dev).view(nb, chunk, 1)
    j = torch.arange(g, device=dev)
    hidden = _in_band(i - j, window, causal)  # the window holds these already
    if causal:
        hidden = hidden | (j > i)
    if kpm is not None:
        hidden = hidden | ~kpm[:, None, None, :g]
    return _KeySet(kg, vg, hidden)


def _random_keys(k: Tensor, v: Tensor, kpm: Tensor | None, n: int, nq: int, block: int, table: Tensor,
                 window: int, g: int, causal: bool) -> _KeySet:
    """BigBird's random blocks: query block qb (the chunk) gathers key blocks table[qb].

    `table`: (nqb, r), one pattern for the batch, or (b, nqb, r), one per sequence.
    Pairs the window or the global keys already hold, keys past n, and repeats of a
    block within one row of the table are hidden, so each key counts once.
    """
    b, h, _, d = k.shape
    per_seq = table.dim() == 3
    tb = table if per_seq else table.unsqueeze(0)  # (B, nqb, r), B = b or 1
    nb, nqb, r = tb.shape
    dev = k.device
    rows = torch.arange(b, device=dev).view(b, 1)

    def gather(x: Tensor) -> Tensor:  # (b, h, n, d) -> (b, h, nqb, r*block, d)
        blocks = _pad_seq(x, nq).view(b, h, nqb, block, d)
        if not per_seq:
            return blocks.index_select(2, tb.reshape(-1)).view(b, h, nqb, r * block, d)
        picked = blocks[rows, :, tb.reshape(b, nqb * r)]  # (b, nqb*r, h, block, d)
        return picked.permute(0, 2, 1, 3, 4).reshape(b, h, nqb, r * block, d)

    i = torch.arange(nq, device=dev).view(nqb, block, 1)
    j = (tb.view(nb, nqb, r, 1) * block + torch.arange(block, device=dev)).view(nb, nqb, 1, r * block)
    earlier = torch.ones(r, r, dtype=torch.bool, device=dev).tril(-1)  # [rho, rho'] with rho' < rho
    repeat = ((tb.view(nb, nqb, r, 1) == tb.view(nb, nqb, 1, r)) & earlier).any(-1)  # (B, nqb, r)
    repeat = repeat.view(nb, nqb, r, 1).expand(nb, nqb, r, block).reshape(nb, nqb, 1, r * block)
    hidden = _in_band(i - j, window, causal) | (j >= n) | (j < g) | repeat  # (B, nqb, block, r*block)
    if causal:
        hidden = hidden | (j > i)
    if not per_seq:
        hidden = hidden[0]
    if kpm is not None:
        keep = _pad_keep(kpm, n, nq).view(b, nqb, block)
        keep = keep[rows, tb.reshape(b, nqb * r)] if per_seq else keep.index_select(1, tb.reshape(-1))  # (b, nqb*r, block)
        hidden = hidden | ~keep.view(b, nqb, 1, r * block)
    return _KeySet(gather(k), gather(v), hidden)


def real_lengths(kpm: Tensor) -> Tensor:
    """(b,) each sequence's length by its key padding mask: its last real position + 1
    (0 for a sequence with no real token)."""
    positions = torch.arange(1, kpm.shape[1] + 1, device=kpm.device)
    return torch.where(kpm, positions, 0).amax(dim=1)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, hidden: Tensor, scale: float) -> Tensor:
    """Fused attention with a boolean mask; rows with no visible key give zeros.

    Such rows are only ever padding queries (a real query always sees itself). They
    are given every key and zeroed afterwards, so no kernel sees an all-masked row
    (some return NaN for it) and no gradient leaves them.
    """
    empty = hidden.all(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=~hidden | empty, scale=scale)
    return out.masked_fill(empty, 0.0)


def _joint_attend(q: Tensor, n: int, chunk: int, sets: list[_KeySet], scale: float) -> Tensor:
    """Attention of each query chunk over the union of its key sets, in one
    `scaled_dot_product_attention` call: the chunks become the batch, the sets are
    concatenated along the keys, and their `hidden` masks make the union exact.

    CPU SDPA's flash kernel fuses scores, softmax and the value product, so per
    (query, key) pair this costs several times less than separate tensor ops; the
    gathered keys keep the pair count O(n K) instead of the n^2 a masked SDPA over
    the whole sequence would visit.
    """
    b, h, _, d = q.shape
    nq = _round_up(n, chunk)
    nb = nq // chunk
    qb = _pad_seq(q, nq).view(b, h, nb, chunk, d).transpose(1, 2).reshape(b * nb, h, chunk, d)
    keys = torch.cat([s.k for s in sets], dim=3) if len(sets) > 1 else sets[0].k
    vals = torch.cat([s.v for s in sets], dim=3) if len(sets) > 1 else sets[0].v
    kk = keys.shape[3]
    keys = keys.transpose(1, 2).reshape(b * nb, h, kk, d)
    vals = vals.transpose(1, 2).reshape(b * nb, h, kk, d)
    bm = max(s.hidden.shape[0] if s.hidden.dim() == 4 else 1 for s in sets)  # batch of the masks
    hidden = torch.cat([s.hidden.expand(bm, nb, chunk, s.k.shape[3]) for s in sets], dim=-1)
    hidden = hidden.reshape(bm * nb, 1, chunk, kk)
    if bm != b:  # masks with no batch dim: the same for every sequence
        hidden = hidden.view(1, nb, 1, chunk, kk).expand(b, nb, 1, chunk, kk).reshape(b * nb, 1, chunk, kk)
    out = _sdpa(qb, keys, vals, hidden, scale)
    return out.view(b, nb, h, chunk, d).transpose(1, 2).reshape(b, h, nq, d)[:, :, :n]


def _band_chunk(window: int) -> int:
    # Query chunk of the sliding window. Each chunk reads c + w - 1 keys (causal) for
    # w useful ones per query: a small c wastes little work but makes many small
    # problems. c = w kept within [16, 64] was the fastest on a 2-core CPU at w = 256
    # (64: 4.9x causal SDPA at n = 8192; 128: 4.2x; 256: 3.7x).
    return max(16, min(window, 64))


# ---------------------------------------------------------------------------
# the kinds
# ---------------------------------------------------------------------------
class LocalAttention(Attention):
    """Sliding-window attention: key j is visible to query i iff |i - j| < w
    (causal: 0 <= i - j < w). Beltagy et al. 2020 (Longformer), Parmar et al. 2018.

    O(n (c + w)) time and memory, c = the query chunk (see `_band_chunk`).
    """

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        n, w = q.shape[2], self.layer.window
        chunk = min(_band_chunk(w), n)
        nq = _round_up(n, chunk)
        band = _band_keys(k, v, _bool(key_padding_mask), n, nq, chunk, w, self.causal)
        return _joint_attend(q, n, chunk, [band], self.scale)


class BlockAttention(Attention):
    """Blockwise attention (Qiu et al. 2020, BlockBERT): i // b == j // b (causal adds
    j <= i). Each block is a dense b x b problem: O(n b)."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        n = q.shape[2]
        bs = min(self.layer.block, n)
        nq = _round_up(n, bs)
        nb = nq // bs
        b, h, _, d = k.shape
        kb = _pad_seq(k, nq).view(b, h, nb, bs, d)
        vb = _pad_seq(v, nq).view(b, h, nb, bs, d)
        t = torch.arange(bs, device=q.device)
        hidden = (t.view(bs, 1) < t.view(1, bs)) if self.causal else torch.zeros(1, 1, dtype=torch.bool,
                                                                                 device=q.device)
        kpm = _bool(key_padding_mask)
        if kpm is not None:  # padded with False, so it also hides keys past n
            hidden = hidden | ~_pad_keep(kpm, n, nq).view(b, nb, 1, bs)
        else:
            hidden = hidden | (torch.arange(nq, device=q.device) >= n).view(nb, 1, bs)
        return _joint_attend(q, n, bs, [_KeySet(kb, vb, hidden)], self.scale)


class StridedAttention(Attention):
    """Sparse Transformer strided attention (Child et al. 2019): the union of its two
    heads' patterns, |i - j| < s or (i - j) mod s == 0 (causal adds j <= i).

    A band of width s plus the same-residue columns, each softmaxed on its own and
    merged by log-sum-exp (the columns differ per query, so they cannot share a
    chunk's key list): O(n (s + n/s)), O(n sqrt n) at s ~ sqrt n.
    """

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        n, s = q.shape[2], self.layer.stride
        kpm = _bool(key_padding_mask)
        qs = q * self.scale  # O(n d) here instead of O(n K) on the scores
        parts = [_band_part(qs, k, v, kpm, n, s, self.causal, min(_band_chunk(s), n)),
                 _column_part(qs, k, v, kpm, n, s, self.causal)]
        return _merge(parts, q.dtype)


class LongformerAttention(Attention):
    """Longformer (Beltagy et al. 2020): local(w) or j < g or i < g, the sliding
    window plus g leading global tokens that see and are seen by every token.

    Each query chunk attends to its window and the g global keys (minus those in its
    window) in one joint softmax; when bidirectional the g global query rows see every
    key (g x n). O(n (c + w + g)). In a causal model a global query i < g can only see
    j <= i < g, which the global keys already cover, so only the key side is needed.
    """

    def chunk(self, n: int) -> int:
        return min(_band_chunk(self.layer.window), n)

    def key_sets(self, k: Tensor, v: Tensor, kpm: Tensor | None, n: int, nq: int, chunk: int) -> list[_KeySet]:
        w, g = self.layer.window, min(self.layer.global_tokens, n)
        sets = [_band_keys(k, v, kpm, n, nq, chunk, w, self.causal)]
        if g > 0:
            sets.append(_global_keys(k, v, kpm, nq, chunk, g, w, self.causal))
        return sets

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        n = q.shape[2]
        kpm = _bool(key_padding_mask)
        chunk = self.chunk(n)
        out = _joint_attend(q, n, chunk, self.key_sets(k, v, kpm, n, _round_up(n, chunk), chunk), self.scale)
        g = min(self.layer.global_tokens, n)
        if self.causal or g == 0:
            return out
        # A global query's visible set is every key, so its row is plain attention.
        hidden = torch.zeros(1, 1, 1, 1, dtype=torch.bool, device=q.device) if kpm is None \
            else ~kpm[:, None, None, :]
        rows = _sdpa(q[:, :, :g], k, v, hidden.expand(q.shape[0], 1, g, n), self.scale)
        return torch.cat([rows, out[:, :, g:]], dim=2)


class BigBirdAttention(LongformerAttention):
    """BigBird (Zaheer et al. 2020): longformer(w, g) or j // b in R[i // b], where
    R holds r random key blocks (of size b) per query block.

    Queries are chunked by the random block size b; each chunk attends, in one joint
    softmax, to its window, the global keys and its r random key blocks, with repeats
    and pairs already held by the window or the global keys hidden, so the softmax is
    over the set union. O(n (b + w + g + r b)).

    R is fixed by `layer.seed`: r integers in [0, 2^31) per query block of the
    longest sequence are drawn once from a seeded `torch.Generator`, and scaled to
    the blocks a query block may pick (causal: blocks 0..its own; bidirectional:
    all ceil(L / b) blocks of the sequence's own length L, its last real token + 1).
    So the same spec always gives the same pattern, a causal model's pattern for a
    prefix does not depend on n, and a bidirectional one's does not depend on the
    padding its batch adds (it once drew over the padded length: ListOps outputs
    changed by up to 0.13 with the batch's longest sequence).
    """

    def __init__(self, d_model: int, layer: LayerSpec, max_seq_len: int, causal: bool) -> None:
        super().__init__(d_model, layer, max_seq_len, causal)
        gen = torch.Generator().manual_seed(layer.seed)
        n_blocks = -(-max_seq_len // layer.block)
        # Drawn on the CPU whatever the default device (a model built under
        # `torch.device("meta")` must still get its pattern), and kept as a plain
        # attribute, not a buffer: the seed determines it, so it is not in the
        # state dict, and `to_empty()` (meta init, then load_state_dict) would
        # leave a non-persistent buffer as uninitialised memory.
        self._random_bits_cpu = torch.randint(0, 2**31, (n_blocks, layer.random_blocks), generator=gen,
                                              dtype=torch.int64, device="cpu")
        self._random_bits_on: dict[torch.device, Tensor] = {}

    def _random_bits(self, device: torch.device) -> Tensor:
        """The drawn integers on `device`, copied there once."""
        bits = self._random_bits_on.get(device)
        if bits is None:
            bits = self._random_bits_on[device] = self._random_bits_cpu.to(device)
        return bits

    def random_block_table(self, n: int, lengths: Tensor | None = None, device: torch.device | None = None) -> Tensor:
        """(ceil(n / block), random_blocks) LongTensor: row qb lists the key blocks
        query block qb attends to (may repeat; repeats count once). Bidirectional,
        given `lengths` (b,), the sequences' own lengths (`real_lengths`): one table
        per sequence, (b, ceil(n / block), random_blocks), each over its own blocks."""
        nqb = -(-n // self.layer.block)
        bits = self._random_bits(self.qkv.weight.device if device is None else device)[:nqb]
        # floor(u * choices), u = bits / 2^31 in [0, 1)
        if self.causal:
            return (bits * torch.arange(1, nqb + 1, device=bits.device).view(nqb, 1)) >> 31
        if lengths is None:
            return (bits * nqb) >> 31
        blocks = (-(-lengths.to(device=bits.device, dtype=torch.int64) // self.layer.block)).clamp(1, nqb)
        return (bits.unsqueeze(0) * blocks.view(-1, 1, 1)) >> 31

    def chunk(self, n: int) -> int:
        return self.layer.block  # the query blocks the random table is drawn for

    def key_sets(self, k, v, kpm, n, nq, chunk):
        sets = super().key_sets(k, v, kpm, n, nq, chunk)
        if self.layer.random_blocks > 0:
            g = min(self.layer.global_tokens, n)
            lengths = None if self.causal or kpm is None else real_lengths(kpm)
            sets.append(_random_keys(k, v, kpm, n, nq, chunk, self.random_block_table(n, lengths, k.device),
                                     self.layer.window, g, self.causal))
        return sets


def _bool(mask: Tensor | None) -> Tensor | None:
    return None if mask is None else mask.to(torch.bool)
