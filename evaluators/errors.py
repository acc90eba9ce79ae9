"""Errors the evaluators raise.

- `TaskError`: a task that cannot be built (unknown name, bad option, unreadable
  file). A `ValueError`: the user's input is wrong, and the message says the fix.
- `TrialFailure`: a candidate that could not be scored on this machine. Its short
  `reason` (e.g. "diverged", "out_of_memory") is what a search records on the
  trial before moving on; the message is for people.
"""

from __future__ import annotations


class TaskError(ValueError):
    """A task name or option that cannot work. One line naming the problem and the fix."""


class TrialFailure(RuntimeError):
    """A candidate failed during evaluation; `reason` is a short machine-readable tag."""

    reason: str = "failed"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class TrainingDiverged(TrialFailure):
    """The training loss became NaN or infinite. `step` is the (1-based) step whose
    loss was first non-finite."""

    reason = "diverged"

    def __init__(self, step: int, loss: float, lr: float | None = None) -> None:
        self.step = step
        self.loss = loss
        at = f" (learning rate {lr:.3g} at that step)" if lr is not None else ""
        super().__init__(
            f"training diverged: loss is {loss} at step {step}{at}; "
            f"try a lower learning rate (lr=...) or a longer warm-up (warmup_steps=...)"
        )


class DeviceOutOfMemory(TrialFailure):
    """The device ran out of memory for this candidate (wraps torch's
    OutOfMemoryError, which stays available as `__cause__`)."""

    reason = "out_of_memory"

    def __init__(self, message: str) -> None:
        super().__init__(message)


def oom_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes torch raises when a device runs out of memory."""
    import torch

    types: list[type[BaseException]] = []
    for owner, name in ((torch, "OutOfMemoryError"), (getattr(torch, "cuda", None), "OutOfMemoryError")):
        cls = getattr(owner, name, None) if owner is not None else None
        if isinstance(cls, type) and cls not in types:
            types.append(cls)
    return tuple(types)
