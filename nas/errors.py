"""The errors that are the user's to fix. The CLI prints each as one line."""

from __future__ import annotations

from evaluators.errors import TaskError
from search_spaces.arch_spec import SpecError
from search_spaces.space import SpaceError


class NasError(ValueError):
    """A request nas cannot carry out as asked (unknown study, no feasible trial, ...)."""


# SearchError (nas.search) is a ValueError too; StorageError (nas.storage) a NasError.
USER_ERRORS: tuple[type[BaseException], ...] = (NasError, TaskError, SpaceError, SpecError, ValueError)


def one_line(e: BaseException) -> str:
    """The first line of an error's message (messages carry the fix already)."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
