"""Scoring a candidate: tasks (data, loss, metric), training, and (in
`evaluators.hardware`) latency and memory on a device.

Imports are lazy so that `import evaluators` stays cheap and a module under
construction elsewhere does not break the others:

    from evaluators.tasks import get_task
    from evaluators.training import Trainer
"""

from __future__ import annotations

import importlib
from typing import Any

from evaluators.errors import DeviceOutOfMemory, TaskError, TrainingDiverged, TrialFailure

_LAZY = {
    "get_task": "evaluators.tasks",
    "available_tasks": "evaluators.tasks",
    "Task": "evaluators.tasks",
    "EvalResult": "evaluators.tasks",
    "Trainer": "evaluators.training",
    "measure_latency": "evaluators.hardware",  # written separately; imported only when asked for
    "measure_memory": "evaluators.hardware",
}

__all__ = ["DeviceOutOfMemory", "TaskError", "TrainingDiverged", "TrialFailure", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'evaluators' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
