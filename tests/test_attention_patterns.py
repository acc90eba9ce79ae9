"""The sparse-pattern kinds against an independent dense reference.

The reference builds the boolean n x n pattern straight from the formulas in
`search_spaces/attention/kinds.py` and computes softmax(Q K^T * scale + mask) V in
float64; only BigBird's random block table is taken from the module.
"""

from __future__ import annotations

import pytest
import torch

from search_spaces.arch_spec import LayerSpec
from search_spaces.attention.patterns import (
    BigBirdAttention,
    BlockAttention,
    LocalAttention,
    LongformerAttention,
    StridedAttention,
)

MAX_LEN = 64
HEADS, HEAD_DIM = 2, 8
D_MODEL = HEADS * HEAD_DIM

CLASSES = {
    "local": LocalAttention,
    "strided": StridedAttention,
    "block": BlockAttention,
    "longformer": LongformerAttention,
    "bigbird": BigBirdAttention,
}

# (kind, knobs, lengths): lengths include ones that are not multiples of the knobs,
# shorter than the window, and 1.
CASES = [
    ("local", dict(window=1), (7,)),
    ("local", dict(window=3), (1, 16, 37)),
    ("local", dict(window=8), (5, 37)),
    ("local", dict(window=64), (64,)),
    ("strided", dict(stride=1), (9,)),
    ("strided", dict(stride=3), (10, 37)),
    ("strided", dict(stride=5), (4, 33)),
    ("block", dict(block=1), (6,)),
    ("block", dict(block=4), (16, 37)),
    ("block", dict(block=7), (3, 30)),
    ("longformer", dict(window=3, global_tokens=0), (20,)),
    ("longformer", dict(window=4, global_tokens=2), (1, 9, 37)),
    ("longformer", dict(window=2, global_tokens=5), (3, 29)),
    ("bigbird", dict(window=3, global_tokens=2, random_blocks=2, block=4), (9, 37)),
    ("bigbird", dict(window=2, global_tokens=0, random_blocks=3, block=3), (2, 31)),
    ("bigbird", dict(window=5, global_tokens=1, random_blocks=1, block=8), (40,)),
    ("bigbird", dict(window=1, global_tokens=3, random_blocks=4, block=2), (17,)),
    ("bigbird", dict(window=2, global_tokens=1, random_blocks=0, block=4), (12,)),
]


def make(kind: str, knobs: dict, causal: bool, seed: int = 0):
    layer = LayerSpec(attention=kind, heads=HEADS, ffn=4 * D_MODEL, seed=seed, **knobs)
    return CLASSES[kind](D_MODEL, layer, MAX_LEN, causal)


def reference_pattern(module, n: int, length: int | None = None) -> torch.Tensor:
    """(n, n) bool, [i, j] = key j visible to query i, from the formulas alone, for a
    sequence whose last real token is at `length` - 1 (None: n)."""
    layer, causal = module.layer, module.causal
    i = torch.arange(n).view(n, 1)
    j = torch.arange(n).view(1, n)
    d = i - j

    def local(w):
        return (d >= 0) & (d < w) if causal else d.abs() < w

    kind = module.kind or type(module).__name__
    if isinstance(module, BigBirdAttention):
        w, g, b = layer.window, layer.global_tokens, layer.block
        pat = local(w) | (j < g) | (i < g)
        table = module.random_block_table(n).cpu()
        if length is not None and not causal:  # bidirectional: drawn over the sequence's own blocks
            table = module.random_block_table(n, torch.tensor([length]))[0].cpu()
        rand = torch.zeros(n, n, dtype=torch.bool)
        for qi in range(n):
            for kb in table[qi // b].tolist():
                rand[qi, kb * b:(kb + 1) * b] = True
        pat = pat | rand
    elif isinstance(module, LongformerAttention):
        w, g = layer.window, layer.global_tokens
        pat = local(w) | (j < g) | (i < g)
    elif isinstance(module, LocalAttention):
        pat = local(layer.window)
    elif isinstance(module, StridedAttention):
        s = layer.stride
        pat = (d.abs() < s) | (d % s == 0)
    elif isinstance(module, BlockAttention):
        pat = (i // layer.block) == (j // layer.block)
    else:  # pragma: no cover
        raise AssertionError(kind)
    if causal:
        pat = pat & (j <= i)
    return pat


def reference_attend(module, q, k, v, kpm):
    n = q.shape[2]
    mask = reference_pattern(module, n).to(q.device)
    if kpm is not None:
        lengths = [max((j + 1 for j in range(n) if kpm[b, j]), default=0) for b in range(kpm.shape[0])]
        mask = torch.stack([reference_pattern(module, n, length) for length in lengths])[:, None]
        mask = mask & kpm[:, None, None, :]
    q, k, v = q.double(), k.double(), v.double()
    scores = (q @ k.transpose(-1, -2)) * module.scale
    p = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
    return p @ v


def inputs(n: int, padded: bool, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, HEADS, n, HEAD_DIM, generator=gen) for _ in range(3))
    kpm = None
    if padded:
        # Arbitrary holes (not only right padding), and batch 1 starts with padding so
        # that, causally, its first queries see no key at all.
        kpm = torch.rand(2, n, generator=gen) > 0.3
        kpm[1, : max(1, n // 4)] = False
        kpm[0, 0] = True
    return q, k, v, kpm


def _params():
    for kind, knobs, lengths in CASES:
        for n in lengths:
            for causal in (True, False):
                for padded in (False, True):
                    name = f"{kind}-{'-'.join(f'{k}{v}' for k, v in knobs.items())}-n{n}-{'causal' if causal else 'bidir'}{'-pad' if padded else ''}"
                    yield pytest.param(kind, knobs, n, causal, padded, id=name)


@pytest.mark.parametrize("kind,knobs,n,causal,padded", list(_params()))
def test_matches_dense_reference(kind, knobs, n, causal, padded):
    module = make(kind, knobs, causal, seed=n)
    q, k, v, kpm = inputs(n, padded, seed=n)
    q.requires_grad_(True)
    k.requires_grad_(True)
    v.requires_grad_(True)
    out = module.attend(q, k, v, kpm)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all(), "padding queries must give finite output"
    ref = reference_attend(module, q, k, v, kpm)
    real = torch.ones(2, n, dtype=torch.bool) if kpm is None else kpm
    real = real[:, None, :, None].expand_as(out)
    torch.testing.assert_close(out[real], ref[real].float(), atol=1e-5, rtol=1e-5)

    # Gradients at the real queries (what a loss sees) match the reference's.
    weight = torch.randn_like(out) * real
    grads = torch.autograd.grad((out * weight).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * weight.double()).sum(), (q, k, v))
    for got, want in zip(grads, ref_grads):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind,knobs", [(c[0], c[1]) for c in CASES[1::3]])
def test_bf16_close_to_float32(kind, knobs):
    module = make(kind, knobs, causal=True)
    q, k, v, kpm = inputs(37, padded=True, seed=1)
    out32 = module.attend(q, k, v, kpm)
    out16 = module.attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), kpm)
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16).all()
    real = kpm[:, None, :, None].expand_as(out32)
    torch.testing.assert_close(out16.float()[real], out32[real], atol=3e-2, rtol=3e-2)


def test_bidirectional_bigbird_ignores_the_batchs_padding():
    # ListOps pads each batch to its longest sequence: a sequence's output must not
    # depend on that (the random blocks were once drawn over the padded length, and
    # outputs moved by up to 0.13). Checked against the same sequence unpadded.
    knobs = dict(window=2, global_tokens=1, random_blocks=2, block=4)
    module = make("bigbird", knobs, causal=False, seed=5)
    q, k, v, _ = inputs(21, padded=False, seed=3)
    alone = module.attend(q, k, v, None)
    for extra in (4, 12, 27):
        pad = [torch.cat([x, torch.randn(2, HEADS, extra, HEAD_DIM)], dim=2) for x in (q, k, v)]
        kpm = torch.ones(2, 21 + extra, dtype=torch.bool)
        kpm[:, 21:] = False
        torch.testing.assert_close(module.attend(*pad, kpm)[:, :, :21], alone, atol=1e-5, rtol=1e-5)


def test_module_forward_backward():
    for kind, knobs, _ in CASES[1::2]:
        for causal in (True, False):
            module = make(kind, knobs, causal)
            x = torch.randn(2, 23, D_MODEL, requires_grad=True)
            mask = torch.ones(2, 23, dtype=torch.bool)
            mask[1, 17:] = False
            y = module(x, mask)
            y[mask].sum().backward()
            assert torch.isfinite(x.grad).all()
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())


def test_random_block_table():
    knobs = dict(window=2, global_tokens=1, random_blocks=3, block=4)
    for causal in (True, False):
        a, b = make("bigbird", knobs, causal, seed=7), make("bigbird", knobs, causal, seed=7)
        table = a.random_block_table(50)
        assert table.shape == (13, 3) and table.dtype == torch.int64
        assert torch.equal(table, b.random_block_table(50)), "same seed, same pattern"
        assert table.min() >= 0
        if causal:
            assert (table <= torch.arange(13).view(13, 1)).all()
            # a prefix's pattern does not depend on the length
            assert torch.equal(a.random_block_table(20), table[:5])
        else:
            assert table.max() <= 12
    other = make("bigbird", knobs, False, seed=8).random_block_table(64)
    assert not torch.equal(other, make("bigbird", knobs, False, seed=7).random_block_table(64))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind,knobs", [(c[0], c[1]) for c in CASES[1::3]])
def test_cuda_matches_cpu(kind, knobs):
    for causal in (True, False):
        module = make(kind, knobs, causal)
        q, k, v, kpm = inputs(37, padded=True, seed=2)
        want = module.attend(q, k, v, kpm)
        got = module.cuda().attend(q.cuda(), k.cuda(), v.cuda(), kpm.cuda()).cpu()
        real = kpm[:, None, :, None].expand_as(want)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)
