"""PostgreSQL: a real server started for the test (initdb in a temporary folder,
pg_ctl on a free loopback port, stopped afterwards whatever happens), two workers
on one study, every trial finished exactly once; and a storage password never
shows in output, logs or stored attributes."""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest

from nas.cli import main

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cret"
TASK = ["--task", "mqar", "--task-option", "vocab_size=16", "--task-option", "seq_len=16", "--task-option", "num_kv_pairs=2",
        "--task-option", "n_valid=64", "--task-option", "batch_size=16"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path | None:
    """The folder of initdb/pg_ctl: $PG_BIN, the PATH, or Debian's /usr/lib/postgresql/N/bin."""
    candidates = [os.environ.get("PG_BIN")]
    if shutil.which("pg_ctl"):
        candidates.append(str(Path(shutil.which("pg_ctl")).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    return None


@pytest.fixture(scope="module")
def postgres_url():
    try:
        import psycopg2
    except ImportError:
        pytest.skip("psycopg2 is not installed (pip install 'nas[postgres]')")
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; set PG_BIN or install postgresql")
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the postgres system user
        if not shutil.which("runuser"):
            pytest.skip("running as root and no runuser to start postgres as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
    # Not under pytest's tmp_path: its parents are private to root, and the server
    # runs as `postgres`, which must reach the data and socket folders.
    base = Path(tempfile.mkdtemp(prefix="nas-pg-"))
    data, log = base / "data", base / "server.log"
    pwfile = base / "pw"
    pwfile.write_text(SECRET + "\n")
    if as_user:
        shutil.chown(base, "postgres")
        shutil.chown(pwfile, "postgres")
    port = free_port()
    started = False
    try:
        subprocess.run(as_user + [str(bin_dir / "initdb"), "-D", str(data), "-U", "nas", "--pwfile", str(pwfile),
                                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
        subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start"],
                       check=True, capture_output=True, timeout=90)
        started = True

        con = psycopg2.connect(host="127.0.0.1", port=port, user="nas", password=SECRET, dbname="postgres")
        con.autocommit = True
        con.cursor().execute("CREATE DATABASE nasdb")
        con.close()
        yield f"postgresql://nas:{SECRET}@127.0.0.1:{port}/nasdb"
    finally:
        if started:
            subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    e.pop("NAS_STORAGE", None)
    e.update(extra)
    return e


@pytest.mark.slow
def test_two_workers_on_postgres(postgres_url, tmp_path):
    cmd = [sys.executable, "-m", "nas.cli", "search", "--study", "p", "--storage", postgres_url, "--space", "tiny", *TASK,
           "--latency-ms", "1000", "--trials", "8", "--stages", "1,4", "--population", "3", "--tournament", "2",
           "--hurdle-trials", "2", "--workers", "2", "--keep-checkpoints", "1"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:].replace(SECRET, "<leaked>")
    # A worker joining "from another machine" with the URL in the environment only.
    joined = subprocess.run([sys.executable, "-m", "nas.cli", "worker", "--study", "p", "--trials", "8"], cwd=tmp_path,
                            env=env(NAS_STORAGE=postgres_url), capture_output=True, text=True, timeout=200)
    assert joined.returncode == 0, joined.stderr[-3000:].replace(SECRET, "<leaked>")
    shown = subprocess.run([sys.executable, "-m", "nas.cli", "show", "p"], cwd=tmp_path,
                           env=env(NAS_STORAGE=postgres_url), capture_output=True, text=True, timeout=200)
    assert shown.returncode == 0 and "best feasible" in shown.stdout
    for p in (done, joined, shown):
        assert SECRET not in p.stdout + p.stderr

    import psycopg2

    from nas.storage import open_storage

    study = optuna.load_study(study_name="p", storage=open_storage(postgres_url, heartbeat=False))
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(len(numbers))), numbers
    states = [t.state for t in study.trials]
    finished = sum(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states)
    assert finished == len(states) == 8, [s.name for s in states]  # exactly --trials (nas.trial_slots)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2

    # --keep-checkpoints 1, applied by two workers at once: only the best's and the
    # Pareto front's weights are left, rows and files alike.
    from nas.checkpoints import kept_trials
    from nas.results import best_feasible

    con = psycopg2.connect(postgres_url)
    cur = con.cursor()
    cur.execute("SELECT trial_number, path FROM nas_checkpoints WHERE study = 'p'")
    rows = dict(cur.fetchall())
    con.close()
    assert set(rows) <= kept_trials(study.trials, 1) and best_feasible(study).number in rows, rows
    assert {str(p.resolve()) for p in (tmp_path / "studies" / "p" / "checkpoints").glob("*.pt")} == set(rows.values())

    # The password is nowhere in what was stored.
    assert "***" in study.user_attrs["nas:command"]
    blob = json.dumps([study.user_attrs] +
                      [[t.user_attrs, t.system_attrs, t.params] for t in study.trials], default=str)
    assert SECRET not in blob
    con = psycopg2.connect(postgres_url)
    cur = con.cursor()
    for table in ("studies", "study_user_attributes", "study_system_attributes", "trial_user_attributes", "trial_system_attributes", "nas_checkpoints",
                  "nas_measurements"):
        cur.execute(f"SELECT * FROM {table}")
        assert SECRET not in repr(cur.fetchall()), table
    con.close()


@pytest.mark.parametrize("argv", [
    ["search", "--study", "x", "--space", "tiny", *TASK, "--latency-ms", "1000", "--storage"],
    ["worker", "--study", "x", "--storage"],
    ["show", "x", "--storage"],
], ids=["search", "worker", "show"])
def test_password_of_unreachable_server_is_not_printed(capsys, argv):
    url = f"postgresql://user:{SECRET}@127.0.0.1:{free_port()}/db"
    code = main(argv + [url])
    out = capsys.readouterr()
    assert code != 0
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas: error: cannot open storage postgresql://user:***@"), out.err
    assert SECRET not in out.out + out.err


def test_show_and_export_leave_a_foreign_database_alone(postgres_url, capsys, tmp_path):
    """A URL naming another application's database: refused, and no Optuna table is
    created in it (Optuna's RDBStorage creates its schema in whatever it opens)."""
    import psycopg2

    admin = postgres_url.rsplit("/", 1)[0] + "/postgres"
    con = psycopg2.connect(admin)
    con.autocommit = True
    con.cursor().execute("CREATE DATABASE otherapp")
    con.close()
    foreign = postgres_url.rsplit("/", 1)[0] + "/otherapp"
    con = psycopg2.connect(foreign)
    con.autocommit = True
    con.cursor().execute("CREATE TABLE accounts (id integer primary key, name text)")
    con.close()

    for argv in (["show", "p", "--storage", foreign], ["export", "p", "--storage", foreign, "--out", str(tmp_path / "x")],
                 ["export", foreign, "--out", str(tmp_path / "x")]):
        code = main(argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "is not a study database" in lines[0], err
        assert SECRET not in err

    con = psycopg2.connect(foreign)
    cur = con.cursor()
    cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    assert [r[0] for r in cur.fetchall()] == ["accounts"]
    con.close()
    assert not (tmp_path / "x").exists()


def test_the_last_slot_is_taken_once_on_postgres(postgres_url, tmp_path):
    """The advisory lock: a second worker that reaches the last slot while the first is
    between counting and creating its trial is refused once the first has created it."""
    from slot_race import race_for_last_slot

    from nas.search import Search, SearchConfig
    from nas.storage import open_storage

    cfg = SearchConfig(study="slot", storage=postgres_url, space="tiny", latency_ms=1000.0, trials=2,
                       warm_start=False, measure_threads=1)
    searches = [Search(cfg, log=io.StringIO()), Search(cfg, log=io.StringIO())]
    study = optuna.load_study(study_name="slot", storage=open_storage(postgres_url, heartbeat=False))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=0.5))
    assert race_for_last_slot(searches, study._study_id) == "refused"
    assert len(optuna.load_study(study_name="slot", storage=open_storage(postgres_url, heartbeat=False)).trials) == 2
