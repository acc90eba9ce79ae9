"""End to end through the command line: a search killed with SIGKILL mid-trial is
resumed by running the same command again; finished trials stay exactly as they
were, the interrupted trial is detected by Optuna's heartbeat and retried, the
target count is reached, and the SQLite file passes its integrity check."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from stopped_process import stopped, trial_states

ROOT = Path(__file__).resolve().parents[1]


def nas_command(db: Path, trials: int) -> list[str]:
    return [sys.executable, "-m", "nas.cli", "search", "--study", "k", "--storage", f"sqlite:///{db}",
            "--space", "tiny", "--task", "mqar", "--task-option", "vocab_size=16", "--task-option", "seq_len=16",
            "--task-option", "num_kv_pairs=2", "--task-option", "n_valid=64", "--task-option", "batch_size=16",
            "--latency-ms", "1000", "--trials", str(trials), "--stages", "30,400", "--population", "3",
            "--tournament", "2", "--hurdle-trials", "2"]


def env() -> dict[str, str]:
    e = dict(os.environ, NAS_HEARTBEAT_INTERVAL="1", NAS_GRACE_PERIOD="2", PYTHONPATH=str(ROOT))
    e["OMP_NUM_THREADS"] = "1"
    return e


def snapshot(db: Path) -> dict[int, tuple]:
    study = optuna.load_study(study_name="k", storage=f"sqlite:///{db}")
    return {t.number: (t.state, t.value, t.params, t.intermediate_values, t.user_attrs.get("arch"))
            for t in study.trials if t.state.is_finished()}


@pytest.mark.slow
def test_sigkill_mid_trial_then_resume(tmp_path):
    db = tmp_path / "k.db"
    proc = subprocess.Popen(nas_command(db, 5), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Wait until at least two trials finished and another is running (training); the
    # search is stopped while the database is read, so the trial is still running
    # when the kill lands.
    deadline = time.time() + 240
    killed_running = None
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        with stopped(proc.pid):
            state = trial_states(db, "latency_ms")
            if state is not None and state[0] >= 2 and state[1]:
                killed_running = min(state[1])
                os.kill(proc.pid, signal.SIGKILL)
                break
    proc.wait(timeout=30)
    assert killed_running is not None, f"the search never had a running trial to kill: {proc.stderr.read().decode()[-2000:]}"
    before = snapshot(db)
    study = optuna.load_study(study_name="k", storage=f"sqlite:///{db}")
    assert study.trials[killed_running].state == optuna.trial.TrialState.RUNNING

    time.sleep(3)  # past the grace period: the killed worker's heartbeat is stale
    done = subprocess.run(nas_command(db, 5), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]

    after = snapshot(db)
    for number, record in before.items():
        assert after[number] == record, f"finished trial {number} changed on resume"
    study = optuna.load_study(study_name="k", storage=f"sqlite:///{db}")
    states = [t.state for t in study.trials]
    assert sum(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states) == 5
    assert study.trials[killed_running].state == optuna.trial.TrialState.FAIL
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed_running]
    assert retried and retried[0].params == study.trials[killed_running].params
    assert retried[0].state.is_finished()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
