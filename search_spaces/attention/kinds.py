"""Registers the built-in attention kinds (importing this module fills REGISTRY).

Exact patterns (key j visible to query i; every causal kind adds j <= i; padding
keys are never visible):
  local(window w)            |i - j| < w        (causal: 0 <= i - j < w)
  strided(stride s)          |i - j| < s  or  (i - j) mod s == 0
  block(block b)             i // b == j // b
  longformer(w, g)           local(w)  or  j < g  or  i < g
  bigbird(w, g, r, b)        longformer(w, g)  or  j // b in R[i // b], R = r random
                             key blocks per query block, drawn from layer.seed
"""

from __future__ import annotations

from search_spaces.attention.full import FullAttention
from search_spaces.attention.kernel import LinearAttention, PerformerAttention
from search_spaces.attention.lowrank import LinformerAttention, NystromAttention
from search_spaces.attention.patterns import (
    BigBirdAttention,
    BlockAttention,
    LocalAttention,
    LongformerAttention,
    StridedAttention,
)
from search_spaces.attention.registry import KindInfo, register

register(KindInfo("full", FullAttention, causal=True, bidirectional=True, knobs=(), cost="n^2",
                  paper="Vaswani et al. 2017, Attention Is All You Need"))
register(KindInfo("local", LocalAttention, causal=True, bidirectional=True, knobs=("window",), cost="n*w",
                  paper="Beltagy et al. 2020 (Longformer sliding window); Parmar et al. 2018 (local attention)"))
register(KindInfo("strided", StridedAttention, causal=True, bidirectional=True, knobs=("stride",), cost="n*sqrt(n)",
                  paper="Child et al. 2019, Generating Long Sequences with Sparse Transformers"))
register(KindInfo("block", BlockAttention, causal=True, bidirectional=True, knobs=("block",), cost="n*b",
                  paper="Qiu et al. 2020, Blockwise Self-Attention for Long Document Understanding (BlockBERT)"))
register(KindInfo("longformer", LongformerAttention, causal=True, bidirectional=True,
                  knobs=("window", "global_tokens"), cost="n*w",
                  paper="Beltagy et al. 2020, Longformer: The Long-Document Transformer"))
register(KindInfo("bigbird", BigBirdAttention, causal=True, bidirectional=True,
                  knobs=("window", "global_tokens", "random_blocks", "block"), cost="n*w",
                  paper="Zaheer et al. 2020, Big Bird: Transformers for Longer Sequences"))
register(KindInfo("linformer", LinformerAttention, causal=False, bidirectional=True, knobs=("rank",), cost="n*k",
                  paper="Wang et al. 2020, Linformer: Self-Attention with Linear Complexity"))
register(KindInfo("performer", PerformerAttention, causal=True, bidirectional=True, knobs=("rank",), cost="n*k",
                  paper="Choromanski et al. 2021, Rethinking Attention with Performers (FAVOR+)"))
register(KindInfo("linear", LinearAttention, causal=True, bidirectional=True, knobs=(), cost="n",
                  paper="Katharopoulos et al. 2020, Transformers are RNNs"))
register(KindInfo("nystrom", NystromAttention, causal=False, bidirectional=True, knobs=("rank",), cost="n*k",
                  paper="Xiong et al. 2021, Nystromformer"))
