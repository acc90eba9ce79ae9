"""One trial slot at a time: the lock that keeps `--trials N` exact with many workers.

`nas search` starts no trial once the study's finished trials plus those running
in other workers make N. Read and acted on separately, that rule lets two workers
that read the study in the same few milliseconds both start one, ending the study
one trial past N. So a worker counts and creates a new trial under a lock held
by one worker of the study at a time (`study_lock`):

- SQLite: `flock` on a lock file beside the database (`<file>-naslock`, as SQLite
  names its `-wal` and `-journal` files). Not the database file itself: closing
  another descriptor of it would drop SQLite's own POSIX locks in this process.
  SQLite studies live on one machine's disk, so a local lock covers every worker.
- PostgreSQL: a transaction-level advisory lock (`pg_advisory_xact_lock`) keyed by
  the study name, which covers workers on every machine.
- Other databases: no lock (the race stays possible, and rare).

Either lock is released by the operating system or the server when its process
dies, so a killed worker cannot hold the others back.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterator

from sqlalchemy import text
from sqlalchemy.engine import Engine

from nas.storage import sqlite_path

try:
    import fcntl
except ImportError:  # not on Windows: SQLite studies there go without the lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["TargetReached", "study_lock"]


class TargetReached(Exception):
    """The study's finished and running trials already make its target: no new trial."""


def _advisory_key(study: str) -> int:
    """A stable signed 64-bit key for `pg_advisory_lock`, from the study name."""
    return int.from_bytes(hashlib.sha256(f"nas-trial-slots:{study}".encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def study_lock(url: str, study: str, engine: Engine | None) -> Iterator[None]:
    """Hold the study's trial-slot lock (see the module docstring) for the block."""
    path = sqlite_path(url)
    if path is not None:
        if fcntl is None:
            yield
            return
        real = Path(os.path.realpath(path))  # one lock file for every path to the database (symlinks)
        with open(real.with_name(real.name + "-naslock"), "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    if engine is None or engine.dialect.name != "postgresql":
        yield
        return
    # A transaction-level lock: released at the transaction's end whatever happens (an
    # error, Ctrl-C), so a pooled connection never goes back to the pool still holding it.
    with engine.begin() as con:
        con.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _advisory_key(study)})
        yield
