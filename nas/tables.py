"""Our own tables, in the study's database beside Optuna's (prefix `nas_`).

They hold only what Optuna's schema cannot:
- `nas_measurements`: measured latency and memory, keyed by (arch hash, device,
  batch size, sequence length, dtype), so a repeated architecture is not measured
  twice (the evolution re-visits architectures often);
- `nas_checkpoints`: where a trial's trained weights were saved.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    inspect,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from nas.storage import driver_url, retry_schema_race, serialize_sqlite_writes, sqlite_engine_options, sqlite_path

metadata = MetaData()

measurements = Table(
    "nas_measurements",
    metadata,
    Column("arch_hash", String(32), primary_key=True),
    Column("device", String(128), primary_key=True),
    Column("batch_size", Integer, primary_key=True),
    Column("seq_len", Integer, primary_key=True),
    Column("dtype", String(16), primary_key=True),
    Column("latency", Text, nullable=False),  # LatencyResult.to_dict() as JSON
    Column("memory", Text, nullable=True),  # MemoryResult.to_dict() as JSON; NULL until measured
    Column("created", Float, nullable=False),
)

checkpoints = Table(
    "nas_checkpoints",
    metadata,
    Column("study", String(512), primary_key=True),
    Column("trial_number", Integer, primary_key=True),
    Column("path", Text, nullable=False),
    Column("arch_hash", String(32), nullable=False),
    Column("step", Integer, nullable=False),
    Column("created", Float, nullable=False),
)


@dataclass(frozen=True)
class MeasureKey:
    arch_hash: str
    device: str
    batch_size: int
    seq_len: int
    dtype: str


def make_engine(url: str) -> Engine:
    """An engine on the database of `url`, with the `nas_` tables created there."""
    engine = _engine(url, writes=True)
    retry_schema_race(lambda: metadata.create_all(engine, checkfirst=True))
    return engine


def _engine(url: str, *, writes: bool) -> Engine:
    """`writes`: every SQLite transaction takes the write lock at once (BEGIN
    IMMEDIATE, `serialize_sqlite_writes`); a reader's does not, so it also reads a
    file it cannot write."""
    kwargs: dict[str, Any] = {}
    sqlite = sqlite_path(url) is not None
    if sqlite:
        kwargs.update(sqlite_engine_options())
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(driver_url(url), **kwargs)
    if sqlite and writes:
        serialize_sqlite_writes(engine)
    return engine


def read_checkpoints(url: str, study: str) -> list[dict]:
    """`Tables.checkpoints_of` without creating anything, for the read-only `nas
    show`: [] when the database has no `nas_` tables yet."""
    tables = Tables.existing(url)
    if tables is None:
        return []
    try:
        return tables.checkpoints_of(study)
    finally:
        tables.dispose()


class Tables:
    """Access to the `nas_` tables of one database."""

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.engine = make_engine(url) if engine is None else engine

    @classmethod
    def existing(cls, url: str) -> "Tables | None":
        """The tables of a database that already has them, opened for reading without
        creating anything (a refused command, or `nas show`, leaves the file as it
        was); None otherwise."""
        path = sqlite_path(url)
        if path is not None and not path.exists():
            return None
        engine = _engine(url, writes=False)
        if not all(inspect(engine).has_table(t.name) for t in (measurements, checkpoints)):
            engine.dispose()
            return None
        return cls(url, engine=engine)

    # ---- measurement cache ---------------------------------------------------
    def _where(self, key: MeasureKey):
        m = measurements.c
        return (m.arch_hash == key.arch_hash, m.device == key.device, m.batch_size == key.batch_size,
                m.seq_len == key.seq_len, m.dtype == key.dtype)

    def get_measurement(self, key: MeasureKey) -> tuple[dict, dict | None] | None:
        """(latency, memory or None when not measured yet), or None if never measured."""
        m = measurements.c
        with self.engine.connect() as con:
            row = con.execute(select(m.latency, m.memory).where(*self._where(key))).first()
        if row is None:
            return None
        return json.loads(row[0]), (None if row[1] is None else json.loads(row[1]))

    def put_measurement(self, key: MeasureKey, latency: dict, memory: dict | None) -> None:
        row = dict(key.__dict__, latency=json.dumps(latency),
                   memory=None if memory is None else json.dumps(memory), created=time.time())
        try:
            with self.engine.begin() as con:
                con.execute(measurements.insert().values(**row))
        except IntegrityError:
            # Measured already (by us or another worker): keep that latency, fill in memory.
            if memory is not None:
                with self.engine.begin() as con:
                    con.execute(measurements.update().where(*self._where(key), measurements.c.memory.is_(None))
                                .values(memory=json.dumps(memory)))

    def count_measurements(self) -> int:
        with self.engine.connect() as con:
            return len(con.execute(select(measurements.c.arch_hash)).all())

    # ---- checkpoints ---------------------------------------------------------
    def put_checkpoint(self, study: str, trial_number: int, path: str, arch_hash: str, step: int) -> None:
        with self.engine.begin() as con:
            con.execute(checkpoints.delete().where(
                checkpoints.c.study == study, checkpoints.c.trial_number == trial_number))
            con.execute(checkpoints.insert().values(
                study=study, trial_number=trial_number, path=path, arch_hash=arch_hash, step=step, created=time.time()))

    def get_checkpoint(self, study: str, trial_number: int) -> dict | None:
        c = checkpoints.c
        with self.engine.connect() as con:
            row = con.execute(select(c.path, c.arch_hash, c.step).where(
                c.study == study, c.trial_number == trial_number)).first()
        return None if row is None else {"path": row[0], "arch_hash": row[1], "step": row[2]}

    def checkpoints_of(self, study: str) -> list[dict]:
        """Every checkpoint row of `study`: trial_number and path."""
        c = checkpoints.c
        with self.engine.connect() as con:
            rows = con.execute(select(c.trial_number, c.path).where(c.study == study)).all()
        return [{"trial_number": r[0], "path": r[1]} for r in rows]

    def delete_checkpoints(self, study: str, trial_numbers: list[int]) -> None:
        with self.engine.begin() as con:
            con.execute(checkpoints.delete().where(checkpoints.c.study == study,
                                                   checkpoints.c.trial_number.in_(trial_numbers)))

    def dispose(self) -> None:
        self.engine.dispose()
