"""Killing a search mid-trial without a race.

A test that reads "trial 3 is RUNNING" from the database and then sends SIGKILL
can kill a process that finished trial 3 in between: CI once saw the trial it
aimed at recorded PRUNED. Here the processes are stopped with SIGSTOP first, the
database is read while nothing in them can run, and the kill (or SIGCONT) acts
on the state that was read. A stopped writer may hold the SQLite lock, so the
read gives up after a short timeout instead of waiting the stopped process out.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def stopped(pid: int, group: bool = False) -> Iterator[None]:
    """Hold process `pid` (its whole process group when `group`) stopped for the
    block; continue it afterwards (a no-op where the block killed it)."""
    send = os.killpg if group else os.kill
    send(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        try:
            send(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def trial_states(db: Path, attr: str) -> tuple[int, dict[int, object]] | None:
    """(number of COMPLETE or PRUNED trials, {number: value of user attribute
    `attr`} of the RUNNING trials that have it) read straight from Optuna's
    tables, or None when the file is missing, not yet created or locked."""
    if not db.exists():
        return None
    try:
        con = sqlite3.connect(db, timeout=0.2)
    except sqlite3.Error:
        return None
    try:
        finished = con.execute("SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()[0]
        rows = con.execute(
            "SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id"
            " WHERE t.state = 'RUNNING' AND a.key = ?", (attr,)).fetchall()
    except sqlite3.Error:  # no schema yet, or a stopped writer holds the lock
        return None
    finally:
        con.close()
    return finished, {number: json.loads(value) for number, value in rows}
