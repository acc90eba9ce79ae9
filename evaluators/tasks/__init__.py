"""Tasks: `get_task(name, **options)` and `available_tasks()`.

- `mqar` (default): multi-query associative recall (Zoology), accuracy.
- `listops`: Long Range Arena ListOps, 10-way classification, accuracy.
- `text`: byte-level language modelling on a local file, -bits per byte.

Every task is generated or read locally; nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

from evaluators.errors import TaskError, is_out_of_memory
from evaluators.tasks.base import Batch, EvalResult, Task, TaskBase, mix_seed
from evaluators.tasks.listops import ListOpsTask
from evaluators.tasks.mqar import MQARTask
from evaluators.tasks.text import TextTask

DEFAULT_TASK = "mqar"
TASKS: dict[str, type[TaskBase]] = {cls.name: cls for cls in (MQARTask, ListOpsTask, TextTask)}


def available_tasks() -> list[str]:
    return sorted(TASKS)


def get_task(name: str, **options: Any) -> Task:
    """Build task `name` with `options` (each task's defaults fill the rest).
    `get_task(task.name, **task.options())` rebuilds the same task."""
    cls = TASKS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise TaskError(f"unknown task {name!r}; choose one of {available_tasks()}")
    try:
        return cls(**options)
    except RuntimeError as e:  # the task's data is built here: options too large to fit
        if not is_out_of_memory(e):
            raise
        raise TaskError(f"task {name}: its data does not fit in memory with options {options}; "
                        f"lower the sizes (seq_len, vocab_size, n_valid, ...)") from None


def task_defaults(name: str) -> dict[str, Any]:
    """The options of task `name` with their defaults."""
    cls = TASKS.get(name)
    if cls is None:
        raise TaskError(f"unknown task {name!r}; choose one of {available_tasks()}")
    return dict(cls.DEFAULTS)


__all__ = ["Batch", "DEFAULT_TASK", "EvalResult", "Task", "TaskBase", "TASKS", "available_tasks", "get_task",
           "mix_seed", "task_defaults"]
