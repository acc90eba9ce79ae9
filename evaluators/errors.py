"""Errors the evaluators raise.

- `TaskError`: a task that cannot be built (unknown name, bad option, unreadable
  file). A `ValueError`: the user's input is wrong, and the message says the fix.
- `TrialFailure`: a candidate that could not be scored on this machine. Its short
  `reason` (e.g. "diverged", "out_of_memory") is what a search records on the
  trial before moving on; the message is for people.
"""

from __future__ import annotations

import contextlib
import traceback
from typing import Any, Iterator


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
            f"try a lower learning rate (nas search --lr; Trainer(lr=...)) or a longer warm-up (Trainer(warmup_steps=...))"
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


# Allocation failures torch reports as a plain RuntimeError rather than its
# OutOfMemoryError: cuBLAS/cuDNN failing to allocate a handle's workspace, the CUDA
# runtime's own "out of memory", and the CPU allocator refusing a request.
_OOM_MESSAGES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                 "can't allocate memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` says the device ran out of memory: torch's OutOfMemoryError,
    or a RuntimeError whose message names an allocation failure (see _OOM_MESSAGES).
    A `TrialFailure` is never one: it has been classified already."""
    if isinstance(error, TrialFailure):
        return False
    if isinstance(error, oom_error_types()):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in _OOM_MESSAGES)


@contextlib.contextmanager
def out_of_memory_as_trial_failure(where: str, fix: str, device: Any = None) -> Iterator[None]:
    """Turn an out-of-memory error (`is_out_of_memory`) raised inside into
    `DeviceOutOfMemory`, so a search records the candidate as failed and goes on;
    the message says `where` it happened and the `fix`. On a CUDA `device` the
    allocator's cached blocks go back to the device too."""
    try:
        yield
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise
        traceback.clear_frames(e.__traceback__)  # drop the tensors the frames hold
        if getattr(device, "type", None) == "cuda":
            import torch

            torch.cuda.empty_cache()
        raise DeviceOutOfMemory(f"out of memory during {where}; {fix}") from e
