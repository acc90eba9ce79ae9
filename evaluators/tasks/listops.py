"""`listops`: the Long Range Arena ListOps task (Tay et al. 2020, after Nangia &
Bowman 2018), with LRA's generator scaled down for a CPU.

An expression is a digit 0-9 or `[OP a1 a2 ... ]` with OP one of MAX, MIN, MED
(median; for an even count the mean of the two middle values rounded down, as
LRA's `int(np.median(...))`) and SM (sum modulo 10). LRA's generator: below
`max_depth` a node is an operator with probability 0.25 and then takes 2 to
`max_args` arguments; expressions of `min_length` to `max_length` tokens are
kept. The tokens keep the closing brackets. The answer (0-9) is predicted from
the whole sequence: 10-way classification, pooled head, bidirectional, with
padding (id 0) and a padding mask. Metric: accuracy.

Token ids: 0 padding, 1-10 the digits 0-9, 11 [MIN, 12 [MAX, 13 [MED, 14 [SM, 15 ].
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from evaluators.errors import TaskError
from evaluators.tasks.base import Batch, EvalResult, TaskBase, check_int, mix_seed
from search_spaces.space import TaskShape

PAD = 0
DIGIT0 = 1
OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VOCAB = ("<pad>", *map(str, range(10)), *OPERATORS, END)
TOKEN_ID = {t: i for i, t in enumerate(VOCAB)}
VALUE_P = 0.25  # LRA: below max_depth, a node is an operator when random() <= VALUE_P


def _apply(op: str, args: list[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        s = sorted(args)
        mid = len(s) // 2
        return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2
    return sum(args) % 10  # [SM


class _TooLong(Exception):
    pass


def generate_tree(rng: random.Random, depth: int, max_depth: int, max_args: int,
                  max_tokens: int | None = None) -> tuple[list[str], int]:
    """LRA's `generate_tree`, returning (tokens, value). With `max_tokens`, a tree
    that grows longer raises `_TooLong` as soon as it does (it would be rejected
    anyway; this only saves the time of finishing it)."""
    out: list[str] = []
    limit = max_tokens if max_tokens is not None else float("inf")

    def grow(depth: int) -> int:
        r = rng.random() if depth < max_depth else 1.0
        if r > VALUE_P:
            v = rng.randrange(10)
            out.append(str(v))
            if len(out) > limit:
                raise _TooLong
            return v
        n_args = rng.randint(2, max_args)
        at = len(out)
        out.append("")  # the operator, chosen after its arguments as in LRA
        values = [grow(depth + 1) for _ in range(n_args)]
        op = rng.choice(OPERATORS)
        out[at] = op
        out.append(END)
        if len(out) > limit:
            raise _TooLong
        return _apply(op, values)

    value = grow(depth)
    return out, value


def generate_examples(rng: random.Random, n: int, max_depth: int, max_args: int,
                      min_length: int, max_length: int, max_tries: int = 1_000_000) -> list[tuple[list[str], int]]:
    """`n` expressions of min_length..max_length tokens (both inclusive), by rejection."""
    out: list[tuple[list[str], int]] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > max_tries:
            raise TaskError(
                f"task listops: only {len(out)} of {max_tries} generated expressions have {min_length}-{max_length} "
                f"tokens with max_depth={max_depth}, max_args={max_args}; widen the length range or change "
                f"max_depth/max_args")
        try:
            tokens, value = generate_tree(rng, 1, max_depth, max_args, max_length)
        except _TooLong:
            continue
        if len(tokens) >= min_length:
            out.append((tokens, value))
    return out


def encode(examples: list[tuple[list[str], int]], length: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(tokens (n, L) padded with 0, answers (n,), padding mask (n, L) True = real);
    L = `length` or the longest expression."""
    width = length or max(len(t) for t, _ in examples)
    tokens = torch.zeros(len(examples), width, dtype=torch.long)
    for i, (t, _) in enumerate(examples):
        tokens[i, : len(t)] = torch.tensor([TOKEN_ID[s] for s in t])
    answers = torch.tensor([v for _, v in examples], dtype=torch.long)
    return tokens, answers, tokens != PAD


def decode(tokens: Tensor) -> list[str]:
    """Token ids of one sequence back to strings, padding dropped."""
    return [VOCAB[i] for i in tokens.tolist() if i != PAD]


class ListOpsTask(TaskBase):
    name = "listops"
    DEFAULTS: dict[str, Any] = {
        "max_depth": 6,
        "max_args": 10,
        "min_length": 32,
        "max_length": 128,
        "n_valid": 1000,
        "batch_size": 64,
        "seed": 0,
    }

    def _setup(self) -> None:
        o, t = self._options, self.name
        self.max_depth = check_int(t, "max_depth", o["max_depth"], minimum=2, maximum=30)
        self.max_args = check_int(t, "max_args", o["max_args"], minimum=2)
        self.min_length = check_int(t, "min_length", o["min_length"], minimum=1)
        self.max_length = check_int(t, "max_length", o["max_length"], minimum=4)
        self.n_valid = check_int(t, "n_valid", o["n_valid"], minimum=1)
        if self.min_length > self.max_length:
            raise TaskError(f"task listops: min_length={self.min_length} exceeds max_length={self.max_length}; "
                            f"lower min_length or raise max_length")
        self.shape = TaskShape(vocab_size=len(VOCAB), max_seq_len=self.max_length, causal=False,
                               head="pooled", n_classes=10)
        self.description = (
            f"ListOps (LRA generator): nested MAX/MIN/MED/SM expressions of {self.min_length}-{self.max_length} "
            f"tokens, depth <= {self.max_depth}, <= {self.max_args} arguments; 10-way classification, "
            f"fitness = accuracy")
        rng = random.Random(mix_seed(self.name, "valid", self.seed))
        examples = generate_examples(rng, self.n_valid, self.max_depth, self.max_args, self.min_length, self.max_length)
        examples.sort(key=lambda e: len(e[0]))  # similar lengths per batch: less padding
        size = max(256, self.batch_size)
        self._valid = [Batch(*encode(examples[i:i + size])) for i in range(0, len(examples), size)]

    def train_batch(self, step: int, seed: int = 0) -> Batch:
        rng = random.Random(mix_seed(self.name, "train", self.seed, seed, step))
        examples = generate_examples(rng, self.batch_size, self.max_depth, self.max_args,
                                     self.min_length, self.max_length)
        return Batch(*encode(examples))

    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(logits.float(), batch.targets)

    def _score(self, logits: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {"correct": (logits.argmax(-1) == batch.targets).sum(),
                "count": torch.tensor(len(batch)),
                "loss_sum": F.cross_entropy(logits, batch.targets, reduction="sum")}

    def _summarise(self, totals: dict[str, float]) -> EvalResult:
        acc = totals["correct"] / totals["count"]
        return EvalResult(fitness=acc, metrics={"accuracy": acc, "loss": totals["loss_sum"] / totals["count"]})

