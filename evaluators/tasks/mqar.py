"""`mqar`: multi-query associative recall (Arora et al. 2023, "Zoology: Measuring
and Improving Recall in Efficient Language Models").

Each sequence opens with `num_kv_pairs` key-value pairs (k1 v1 k2 v2 ...), keys
drawn from the lower half of the vocabulary (token 0 excluded) and values from
the upper half, no key or value repeated within a sequence. Then every key is
queried once, at positions drawn with Zoology's power law (small gaps likelier);
the model must output the key's value *at the query position* (causal, token
head). Other positions hold random tokens and carry no loss (ignore index).
The metric is accuracy over query positions.

Training batches are generated fresh for every step (n_train=0) from
(seed, trainer seed, step), or drawn from a fixed pool of n_train sequences.
The validation set (n_valid sequences) depends on `seed` only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from evaluators.errors import TaskError
from evaluators.tasks.base import IGNORE_INDEX, Batch, EvalResult, TaskBase, batches, check_int, generator
from search_spaces.space import TaskShape


def mqar_examples(
    g: torch.Generator, n: int, vocab_size: int, seq_len: int, num_kv_pairs: int,
    power_a: float = 0.01, random_non_queries: bool = True,
) -> tuple[Tensor, Tensor]:
    """`n` MQAR sequences: (inputs (n, seq_len), labels (n, seq_len)), labels
    IGNORE_INDEX except at query positions, where they hold the queried key's value."""
    key_vocab = vocab_size // 2
    context = 2 * num_kv_pairs
    space = (seq_len - context) // 2
    keys = torch.rand(n, key_vocab - 1, generator=g).argsort(dim=1)[:, :num_kv_pairs] + 1
    values = torch.rand(n, vocab_size - key_vocab, generator=g).argsort(dim=1)[:, :num_kv_pairs] + key_vocab
    inputs = torch.zeros(n, seq_len, dtype=torch.long)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    # Zoology's query placement: gap i (0-based) drawn with probability ~ (i+1)^(a-1).
    p = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    gaps = torch.multinomial((p / p.sum()).expand(n, space), num_kv_pairs, replacement=False, generator=g)
    query_pos = context + 2 * gaps
    inputs.scatter_(1, query_pos, keys)
    labels = torch.full((n, seq_len), IGNORE_INDEX, dtype=torch.long)
    labels.scatter_(1, query_pos, values)
    noise = torch.randint(vocab_size, (n, seq_len), generator=g)
    if random_non_queries:
        inputs = torch.where(inputs == 0, noise, inputs)
    return inputs, labels


class MQARTask(TaskBase):
    name = "mqar"
    DEFAULTS: dict[str, Any] = {
        # Sized for a CPU demo: a 2-layer full-attention model of width 64 learns
        # this in ~300 steps (benchmarks/mqar_speed.py); 8 pairs in 64 tokens took
        # ~550 steps past a long plateau, too slow for a few-minute search on 2 cores.
        "vocab_size": 64,
        "seq_len": 32,
        "num_kv_pairs": 4,
        "n_train": 0,
        "n_valid": 1000,
        "batch_size": 32,
        "power_a": 0.01,
        "seed": 0,
    }

    def _setup(self) -> None:
        o, t = self._options, self.name
        self.vocab_size = check_int(t, "vocab_size", o["vocab_size"], minimum=8)
        self.seq_len = check_int(t, "seq_len", o["seq_len"], minimum=4)
        self.num_kv_pairs = check_int(t, "num_kv_pairs", o["num_kv_pairs"], minimum=1)
        self.n_train = check_int(t, "n_train", o["n_train"], minimum=0)
        self.n_valid = check_int(t, "n_valid", o["n_valid"], minimum=1)
        power_a = o["power_a"]
        if isinstance(power_a, bool) or not isinstance(power_a, (int, float)) or not 0 < power_a <= 1:
            raise TaskError(f"task mqar: option power_a must be a number in (0, 1], got {power_a!r}")
        self.power_a = float(power_a)
        pairs = self.num_kv_pairs
        if 4 * pairs > self.seq_len:
            raise TaskError(
                f"task mqar: num_kv_pairs={pairs} needs seq_len >= {4 * pairs} (pairs, then room for the queries); "
                f"raise seq_len or lower num_kv_pairs")
        if self.vocab_size // 2 - 1 < pairs or self.vocab_size - self.vocab_size // 2 < pairs:
            raise TaskError(
                f"task mqar: vocab_size={self.vocab_size} is too small for {pairs} distinct keys and values "
                f"(keys and values use disjoint halves); use vocab_size >= {2 * pairs + 2}")
        self.shape = TaskShape(vocab_size=self.vocab_size, max_seq_len=self.seq_len, causal=True,
                               head="token", n_classes=self.vocab_size)
        self.description = (
            f"multi-query associative recall (Zoology): {pairs} key-value pairs then {pairs} queries "
            f"in {self.seq_len} tokens, vocabulary {self.vocab_size}; fitness = accuracy at query positions")
        vx, vy = self._make(generator(self.name, "valid", self.seed), self.n_valid)
        self._valid = list(batches(vx, vy, None, max(256, self.batch_size)))
        self._pool = self._make(generator(self.name, "train-pool", self.seed), self.n_train) if self.n_train else None

    def _make(self, g: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
        return mqar_examples(g, n, self.vocab_size, self.seq_len, self.num_kv_pairs, self.power_a)

    def train_batch(self, step: int, seed: int = 0) -> Batch:
        g = generator(self.name, "train", self.seed, seed, step)
        if self._pool is None:
            x, y = self._make(g, self.batch_size)
        else:
            idx = torch.randint(self.n_train, (self.batch_size,), generator=g)
            x, y = self._pool[0][idx], self._pool[1][idx]
        return Batch(x, y)

    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch.targets.reshape(-1),
                               ignore_index=IGNORE_INDEX)

    def _score(self, logits: Tensor, batch: Batch) -> dict[str, Tensor]:
        mask = batch.targets != IGNORE_INDEX
        correct = ((logits.argmax(-1) == batch.targets) & mask).sum()
        loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.targets.reshape(-1),
                                   ignore_index=IGNORE_INDEX, reduction="sum")
        return {"correct": correct, "count": mask.sum(), "loss_sum": loss_sum}

    def _summarise(self, totals: dict[str, float]) -> EvalResult:
        count = max(totals["count"], 1.0)
        acc = totals["correct"] / count
        loss = totals["loss_sum"] / count
        return EvalResult(fitness=acc, metrics={"accuracy": acc, "loss": loss if math.isfinite(loss) else float("inf")})
