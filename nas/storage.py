"""Where studies live: storage URLs, their checks, and Optuna's RDB storage.

Default: `sqlite:///studies/<name>.db`, one file per study; the same code takes a
PostgreSQL URL for many machines. A URL's password never leaves this module in
clear text: everything printed or stored uses `redact(url)`.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Callable, TypeVar

import optuna
from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError

from nas.errors import NasError

STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
SQLITE_MAGIC = b"SQLite format 3\x00"
STUDIES_DIR = "studies"

# A worker that stops beating for GRACE_PERIOD seconds is considered dead: its
# RUNNING trial is marked FAIL and re-queued (same params) by the retry callback.
# Both can be shortened through the environment (NAS_HEARTBEAT_INTERVAL,
# NAS_GRACE_PERIOD, seconds), e.g. for tests that kill workers on purpose.
HEARTBEAT_INTERVAL = int(os.environ.get("NAS_HEARTBEAT_INTERVAL", 5))
GRACE_PERIOD = int(os.environ.get("NAS_GRACE_PERIOD", 20))
MAX_RETRY = 3
# How often opening a new database is retried when another process is creating
# its schema at the same moment (see `retry_schema_race`).
SCHEMA_RACE_RETRIES = 5

T = TypeVar("T")
# What a lost schema-creation race says: a table created meanwhile (SQLite,
# PostgreSQL), Alembic's version row inserted meanwhile (SQLite), PostgreSQL's
# catalogue row of a type created meanwhile.
_SCHEMA_RACE_SIGNS = ("already exists", "alembic_version", "pg_type_typname_nsp_index")


class StorageError(NasError):
    """A storage that cannot hold a study. The message names the fix."""


def check_study_name(name: str) -> str:
    if not isinstance(name, str) or not STUDY_NAME.match(name):
        raise StorageError(
            f"study name {name!r} is not allowed; use letters, digits, '_', '.', '-' (at most 100, not starting with a symbol)"
        )
    return name


def default_url(study: str, root: str | os.PathLike = STUDIES_DIR) -> str:
    check_study_name(study)
    return f"sqlite:///{Path(root) / f'{study}.db'}"


def redact(url: str) -> str:
    """The URL with any password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Not parseable: hide anything between ':' and '@' in the authority part.
        return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)


def sqlite_path(url: str) -> Path | None:
    """The database file of a sqlite URL, None for other backends or in-memory."""
    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        raise StorageError(f"storage URL {redact(url)!r} is malformed; use e.g. sqlite:///studies/NAME.db or postgresql://user:pass@host/db") from None
    if not u.drivername.startswith("sqlite"):
        return None
    if not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def driver_url(url: str) -> str:
    """The URL SQLAlchemy is given: a bare `postgresql://` gets the driver that is
    installed (SQLAlchemy 2.1 defaults to psycopg 3; `nas[postgres]` installs
    psycopg2). Everything shown or stored keeps the user's own URL, redacted."""
    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        return url
    if u.drivername in ("postgresql", "postgres"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return u.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url


def check_storage(url: str, *, must_exist: bool = False, read_only: bool = False) -> None:
    """Refuse, with one clear line, a storage that cannot work: a sqlite file in a
    folder that does not exist or is read-only (unless the caller only reads,
    `read_only`), or a file that is not a sound SQLite database. Nothing is
    created or changed by the check."""
    path = sqlite_path(url)
    if path is None:
        if _in_memory_sqlite(url):
            raise StorageError(f"storage {redact(url)!r} is an in-memory SQLite database, lost when the process ends "
                               f"(and invisible to workers); give a file, e.g. sqlite:///studies/NAME.db")
        return
    if path.is_dir():
        raise StorageError(f"storage path {path} is a folder, not a database file; give a file in it, "
                           f"e.g. sqlite:///{path / 'NAME.db'}")
    folder = path.parent if str(path.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"storage folder {folder} is a file, not a folder; pass another --storage")
    if not folder.is_dir():
        raise StorageError(f"storage folder {folder} does not exist; create it (mkdir -p {folder}) or pass another --storage")
    if path.exists():
        if not os.access(path, os.R_OK):
            raise StorageError(f"database file {path} is not readable; fix its permissions")
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
        if head and head != SQLITE_MAGIC:
            raise StorageError(f"database file {path} is not an SQLite database (corrupt or another format); move it away or pass another --storage")
        folder_writable = os.access(folder, os.W_OK)
        if head and read_only and not folder_writable and _wal_mode(path) and not path.with_name(path.name + "-shm").exists():
            raise StorageError(f"database file {path} is in WAL mode and its folder is read-only, so SQLite cannot "
                               f"open it; copy it to a writable folder and pass that --storage")
        if head:
            ok = _quick_check(path)
            if ok != "ok":
                raise StorageError(f"database file {path} failed its integrity check ({ok}); restore it from a copy or pass another --storage")
        if not read_only and (not os.access(path, os.W_OK) or not folder_writable):
            raise StorageError(f"database file {path} or its folder is read-only; make it writable or pass another --storage")
        if head and not read_only:
            # Another program's database (a search would add Optuna's 16 tables beside its own).
            names = _table_names(path)
            foreign = sorted(n for n in names - OPTUNA_SCHEMA if not n.startswith(("nas_", "sqlite_")))
            if foreign and not _OPTUNA_TABLES <= names:
                raise StorageError(f"database file {path} holds another program's tables ({', '.join(foreign[:4])}"
                                   f"{', ...' if len(foreign) > 4 else ''}) and no Optuna study; pass another --storage file")
    else:
        if must_exist:
            raise StorageError(f"no database at {path}; check the study name or --storage")
        if not os.access(folder, os.W_OK):
            raise StorageError(f"storage folder {folder} is read-only; make it writable or pass another --storage")


def _wal_mode(path: Path) -> bool:
    """Whether the SQLite file's header says WAL journal (its read/write format bytes are 2)."""
    with open(path, "rb") as f:
        header = f.read(20)
    return len(header) == 20 and header[18] == 2 and header[19] == 2


def _in_memory_sqlite(url: str) -> bool:
    u = make_url(url)  # parseable: sqlite_path has checked it
    return u.drivername.startswith("sqlite") and (not u.database or u.database == ":memory:")


def has_optuna_schema(path: Path) -> bool:
    """Whether the SQLite file at `path` holds Optuna's tables, read without
    changing it (a new or foreign file gets Optuna's schema on opening through
    `open_storage`: fine for a search, not for commands that only read)."""
    return _OPTUNA_TABLES <= _table_names(path)


def _table_names(path: Path) -> set[str]:
    """The tables of the SQLite file at `path`, read without changing it."""
    if path.stat().st_size == 0:
        return set()
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
        try:
            return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise StorageError(f"database file {path} cannot be read ({' '.join(str(e).split())}); "
                           f"retry when no other process holds it, or pass another --storage") from None


_OPTUNA_TABLES = {"studies", "trials", "version_info"}
# Every table Optuna's RDB schema makes (a test keeps this equal to Optuna's models), and
# its migrations' bookkeeping: a file holding only these, nas_ ones and SQLite's own is
# a study database, also while another process is still creating the schema in it.
OPTUNA_SCHEMA = frozenset({
    "studies", "study_directions", "study_system_attributes", "study_user_attributes", "trial_heartbeats",
    "trial_intermediate_values", "trial_params", "trial_system_attributes", "trial_user_attributes",
    "trial_values", "trials", "version_info", "alembic_version"})


def _server_has_optuna_schema(url: str) -> bool:
    """Whether the database behind a server URL (PostgreSQL, MySQL) holds Optuna's
    tables, read without creating any: Optuna's RDBStorage creates its schema in
    whatever database it opens."""
    engine = create_engine(driver_url(url), pool_pre_ping=True)
    try:
        return _OPTUNA_TABLES <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _quick_check(path: Path, attempts: int = 3) -> str:
    """SQLite's `PRAGMA quick_check` of `path`, in one read transaction: "ok" or the
    first problem found.

    Another worker may be committing meanwhile. Once, during a benchmark with
    three processes on one WAL file, a check reported "2nd reference to page"
    errors on a file that checked "ok" before and after and that every process
    went on using (SQLite 3.40.1: the WAL-reset bug, see `journal_mode`). A real
    corruption persists, so a failed check is repeated, a second apart, before
    it counts."""
    result = "ok"
    for attempt in range(attempts):
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60, isolation_level=None)
            try:
                con.execute("BEGIN")  # one snapshot for the whole check
                # (Its lines hold newlines of their own: flattened, the message stays one line.)
                result = "; ".join(" ".join(str(r[0]).split()) for r in con.execute("PRAGMA quick_check(3)").fetchall())
                con.execute("ROLLBACK")
            finally:
                con.close()
        except sqlite3.DatabaseError as e:
            if "locked" in str(e) or "busy" in str(e):
                result = "ok"  # a writer held it too long: not evidence of corruption
            else:
                result = f"corrupt: {e}"
        if result == "ok":
            return result
        if attempt + 1 < attempts:
            time.sleep(1.0)
    return result


def wal_is_safe(version: tuple[int, int, int] | None = None) -> bool:
    """Whether SQLite `version` (default: the library Python uses) has the fix
    for the WAL-reset bug: https://sqlite.org/wal.html#walresetbug (3.7.0 to
    3.51.2 affected; fixed in 3.51.3, backported to 3.50.7 and 3.44.6). With
    several connections writing and checkpointing one WAL file, a race can let a
    reader see stale pages or a checkpoint skip pages (lost writes, corruption).
    """
    v = tuple(version or sqlite3.sqlite_version_info)[:3]
    return v >= (3, 51, 3) or (3, 50, 7) <= v < (3, 51, 0) or (3, 44, 6) <= v < (3, 45, 0)


def journal_mode() -> str:
    """The journal mode studies get: WAL (readers go on while a worker commits)
    where the SQLite library is free of the WAL-reset bug, else the rollback
    journal. Our workers' transactions are all `BEGIN IMMEDIATE` and short, so
    the rollback journal costs little; it was chosen after two benchmark runs
    with 2-3 processes on one WAL file under SQLite 3.40.1 each read a
    "malformed" database once (a reader saw pages that a check seconds later
    found fine), which is what the bug does."""
    return "wal" if wal_is_safe() else "delete"


def _set_journal_mode(path: Path) -> None:
    """Put the file in `journal_mode()`; the mode is stored in the file itself.

    Changing it needs the file to itself, and SQLite answers "database is locked"
    at once, without waiting out the busy timeout, while another process holds it
    (workers started together, or a worker of an older nas still running on a WAL
    file): the switch is retried for a few seconds, then the file keeps the mode
    it has, the one every connection to it must use anyway.
    """
    wanted = journal_mode()
    deadline = time.monotonic() + 5
    while True:
        con = sqlite3.connect(path, timeout=60)
        try:
            con.execute(f"PRAGMA journal_mode={wanted}")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e):
                raise
            if time.monotonic() > deadline:
                return
        finally:
            con.close()
        time.sleep(0.1)


def sqlite_engine_options() -> dict:
    """engine_kwargs for a SQLite file shared by several processes: wait up to
    120 s for a lock, and let `serialize_sqlite_writes` issue the BEGINs."""
    # isolation_level=None: the driver issues no BEGIN of its own (its default
    # begins only before the first INSERT/UPDATE, so a SELECT-then-UPDATE, e.g.
    # Optuna taking a WAITING trial, is not atomic: two workers took the same
    # enqueued trial and the second failed with "Cannot tell a COMPLETE trial").
    return {"connect_args": {"timeout": 120, "isolation_level": None}}


def serialize_sqlite_writes(engine: Engine) -> None:
    """Every transaction on `engine` starts with BEGIN IMMEDIATE: it takes the
    database's write lock at once (waiting up to the busy timeout), so a read
    followed by a write in one transaction is atomic across processes. (In WAL
    mode, plain reads from other connections go on meanwhile.) Transactions are short
    (one trial update each), so the serialisation costs little."""
    if getattr(engine, "_nas_immediate", False):
        return

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine._nas_immediate = True  # type: ignore[attr-defined]


def open_storage(url: str, *, heartbeat: bool = True, read_only: bool = False) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on `url`, with heartbeats so a killed worker's trial is
    detected (after GRACE_PERIOD s) and retried with the same parameters.
    `read_only`: for a caller that only reads an existing study (nas show, nas
    export): the SQLite file must exist and hold Optuna's tables (a foreign file
    is refused, not given them), a read-only one is accepted, and nothing is set
    on it."""
    check_storage(url, must_exist=read_only, read_only=read_only)
    path = sqlite_path(url)
    if read_only and path is not None and not has_optuna_schema(path):
        raise StorageError(f"{path} is not a study database (no Optuna tables); check --storage")
    engine_kwargs: dict = {}
    if path is not None and not read_only:
        try:
            _set_journal_mode(path)
        except sqlite3.Error as e:  # a folder that says it is writable and is not (/proc, root-squashed NFS)
            raise StorageError(f"cannot open database file {path} ({' '.join(str(e).split())}); "
                               f"pass another --storage") from None
        # Wait for a lock rather than fail at once; writers are short.
        engine_kwargs = sqlite_engine_options()
    else:
        engine_kwargs = {"pool_pre_ping": True}
    try:
        if read_only and path is None and not _server_has_optuna_schema(url):
            raise _NoStudyDatabase
        with warnings.catch_warnings():
            # Heartbeats are "experimental" in Optuna's terms since 2.8; we rely on them knowingly.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kwargs: dict = {}
            if heartbeat:
                kwargs = dict(
                    heartbeat_interval=HEARTBEAT_INTERVAL,
                    grace_period=GRACE_PERIOD,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                )
            storage = retry_schema_race(
                lambda: optuna.storages.RDBStorage(driver_url(url), engine_kwargs=dict(engine_kwargs), **kwargs))
        if path is not None and not read_only:
            serialize_sqlite_writes(storage.engine)
            storage.engine.dispose()  # connections made before the hook: drop them
        return storage
    except _NoStudyDatabase:
        raise StorageError(f"{redact(url)} is not a study database (no Optuna tables); check --storage and the "
                           f"database name") from None
    except Exception as e:  # sqlalchemy / driver errors carry the URL: never echo it raw
        raise StorageError(f"cannot open storage {redact(url)}: {type(e).__name__}: {_driver_message(e, url)}") from None


class _NoStudyDatabase(Exception):
    """A server database without Optuna's tables, met by a caller that only reads."""


def retry_schema_race(create: Callable[[], T]) -> T:
    """`create()` (opening a database and creating its tables), retried when
    another process was creating the same schema at the same moment.

    Optuna (and SQLAlchemy's ``create_all``) check which tables exist, then
    create the missing ones, so two workers started together on a new database
    can both try to create a table, and the later one fails with "table ...
    already exists" (seen with two processes on a new SQLite file). Once the
    first has finished, a retry finds the schema in place."""
    for attempt in range(SCHEMA_RACE_RETRIES):
        try:
            return create()
        except Exception as e:  # sqlalchemy OperationalError (SQLite), ProgrammingError (PostgreSQL), ...
            if not any(sign in str(e) for sign in _SCHEMA_RACE_SIGNS):
                raise
            time.sleep(0.2 * (attempt + 1))
    return create()


def _driver_message(e: BaseException, url: str) -> str:
    """The first line of a driver error, with the URL and its password scrubbed."""
    text = redact(str(e))
    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        password = None
    if password:
        text = text.replace(str(password), "***")
    return (text.strip().splitlines() or [type(e).__name__])[0]
