"""The `Task` protocol: what a search needs to know about a problem.

A task fixes the shape every architecture must have (`shape`: vocabulary,
length, causality, head), makes training batches as a pure function of
(task seed, trainer seed, step) so that training can stop and resume exactly,
holds a fixed validation set (the same for every trial of a study), and scores
a model on it (`evaluate` -> `EvalResult`, fitness higher-is-better).

`TaskBase` is the shared implementation: option checking, seed mixing, the
batched evaluation loop.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from evaluators.errors import TaskError
from search_spaces.space import TaskShape

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EvalResult:
    """A model's score on a task's validation set. `fitness` is higher-is-better
    (accuracy, or minus bits per byte); `metrics` holds everything measured."""

    fitness: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Batch:
    """tokens (batch, length) int64; targets: (batch, length) int64 with
    IGNORE_INDEX where there is nothing to predict (token head) or (batch,)
    (pooled head); padding_mask (batch, length) bool, True = real token, or None."""

    tokens: Tensor
    targets: Tensor
    padding_mask: Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        mask = None if self.padding_mask is None else self.padding_mask.to(device, non_blocking=True)
        return Batch(self.tokens.to(device, non_blocking=True), self.targets.to(device, non_blocking=True), mask)

    def __len__(self) -> int:
        return self.tokens.shape[0]


@runtime_checkable
class Task(Protocol):
    name: str
    description: str
    shape: TaskShape
    batch_size: int

    def options(self) -> dict[str, Any]:
        """JSON-able options; `get_task(task.name, **task.options())` rebuilds this task."""
        ...

    def train_batch(self, step: int, seed: int = 0) -> Batch:
        """Training batch number `step` (0-based) for a trainer seeded `seed`: a pure
        function of (task seed, seed, step)."""
        ...

    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """Scalar training loss of the model's output on `batch`."""
        ...

    def evaluate(self, model: nn.Module, device: torch.device | str = "cpu") -> EvalResult:
        """Score `model` on the fixed validation set."""
        ...


def mix_seed(*parts: Any) -> int:
    """A stable 63-bit seed from any parts (same on every machine and Python run,
    unlike `hash`)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & (2**63 - 1)


def generator(*parts: Any) -> torch.Generator:
    """A CPU torch.Generator seeded from `parts` (see `mix_seed`)."""
    g = torch.Generator(device="cpu")
    g.manual_seed(mix_seed(*parts))
    return g


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU that runs bf16 natively (Ampere and later); nothing
    elsewhere: the CPU, and older GPUs (V100, T4), where bf16 would be emulated
    (slower than fp32) and fp16 would need loss scaling, run in fp32."""
    if native_bf16(device):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` is a GPU that computes in bf16 natively (compute capability
    8.0 or later: A100, H100, RTX 30xx and newer)."""
    if device.type != "cuda":
        return False
    return _native_bf16(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _native_bf16(index: int) -> bool:  # asked once per GPU: autocast() runs every step
    return torch.cuda.get_device_capability(index) >= (8, 0)


def check_int(task: str, name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaskError(f"task {task}: option {name} must be an integer, got {value!r}")
    if value < minimum:
        raise TaskError(f"task {task}: option {name}={value} is too small; use at least {minimum}")
    if maximum is not None and value > maximum:
        raise TaskError(f"task {task}: option {name}={value} is too large; use at most {maximum}")
    return value


class TaskBase:
    """Shared implementation. A subclass sets `name`, `DEFAULTS` (every option and
    its default; option values must be JSON-able), builds `shape`, `description`
    and its validation set (`self._valid`: a list of CPU `Batch`es) in `_setup`,
    and implements `train_batch`, `loss` and `_score`."""

    name: ClassVar[str] = ""
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    description: str
    shape: TaskShape

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.DEFAULTS))
        if unknown:
            allowed = ", ".join(f"{k}={v!r}" for k, v in self.DEFAULTS.items())
            raise TaskError(f"task {self.name}: unknown option(s) {unknown}; its options (with defaults): {allowed}")
        self._options = {**self.DEFAULTS, **options}
        self.batch_size = check_int(self.name, "batch_size", self._options["batch_size"])
        self.seed = check_int(self.name, "seed", self._options["seed"], minimum=0)
        self._valid: list[Batch] = []
        self._valid_on: dict[str, list[Batch]] = {}
        self._setup()

    def _setup(self) -> None:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return dict(self._options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self._options.items())
        return f"{type(self).__name__}({opts})"

    # ---- evaluation ----------------------------------------------------------
    def valid_batches(self, device: torch.device | str = "cpu") -> list[Batch]:
        """The fixed validation set, in evaluation-sized batches, on `device`."""
        device = torch.device(device)
        key = str(device)
        if key not in self._valid_on:
            self._valid_on = {key: [b.to(device) for b in self._valid]}  # keep one device's copy
        return self._valid_on[key]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device | str = "cpu") -> EvalResult:
        device = torch.device(device)
        was_training = model.training
        model.eval()
        try:
            totals: dict[str, float] = {}
            for batch in self.valid_batches(device):
                with autocast(device):
                    logits = model(batch.tokens, batch.padding_mask)
                for k, v in self._score(logits.float(), batch).items():
                    totals[k] = totals.get(k, 0.0) + float(v)
        finally:
            model.train(was_training)
        return self._summarise(totals)

    def _score(self, logits: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Sums over one validation batch (e.g. correct, count, loss_sum)."""
        raise NotImplementedError

    def _summarise(self, totals: dict[str, float]) -> EvalResult:
        raise NotImplementedError


def batches(tokens: Tensor, targets: Tensor, mask: Tensor | None, size: int) -> Iterator[Batch]:
    for i in range(0, tokens.shape[0], size):
        yield Batch(tokens[i:i + size], targets[i:i + size], None if mask is None else mask[i:i + size])
