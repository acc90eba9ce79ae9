"""Many workers on one study, through the real commands (`nas search --workers K`,
`nas worker`): SQLite under concurrency, and SIGKILL of one worker and of the
whole process group followed by a resume."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import torch
import pytest
from fixture_spaces import TWO_ARCH_SPACE
from stopped_process import stopped, trial_states

ROOT = Path(__file__).resolve().parents[1]
TASK = ["--task", "mqar", "--task-option", "vocab_size=16", "--task-option", "seq_len=16", "--task-option", "num_kv_pairs=2",
        "--task-option", "n_valid=64", "--task-option", "batch_size=16"]
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def env(fast_heartbeat: bool = False) -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for k in ("NAS_HEARTBEAT_INTERVAL", "NAS_GRACE_PERIOD", "NAS_STORAGE"):
        e.pop(k, None)
    if fast_heartbeat:  # a killed worker's trial is noticed after 4 s instead of 20
        e.update(NAS_HEARTBEAT_INTERVAL="1", NAS_GRACE_PERIOD="4")
    return e


def search_cmd(url: str, study: str, trials: int, stages: str, *extra: str, space: str = "tiny") -> list[str]:
    return [sys.executable, "-m", "nas.cli", "search", "--study", study, "--storage", url, "--space", space, *TASK,
            "--latency-ms", "1000", "--trials", str(trials), "--stages", stages, "--population", "3",
            "--tournament", "2", "--hurdle-trials", "2", "--quiet", *extra]


def load(url: str, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=url)


def pragma(db: Path, name: str) -> str:
    """`PRAGMA name` of `db`, read through a connection of its own."""
    con = sqlite3.connect(db)
    try:
        return con.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        con.close()


def integrity(db: Path) -> str:
    return pragma(db, "integrity_check")


def assert_numbers_dense(study: optuna.Study) -> None:
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(len(numbers))), f"duplicate or missing trial numbers: {numbers}"
    ids = [t._trial_id for t in study.trials]
    assert len(set(ids)) == len(ids)


_OPEN_AT = """
import sys, time
from nas.storage import open_storage
from nas.tables import Tables
url, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:  # all processes open the new file at the same moment
    pass
open_storage(url, heartbeat=False)
Tables(url)
print("opened")
"""


def test_workers_started_together_on_a_new_database(tmp_path):
    # Each process creates the Optuna and nas_ schema if it is missing; started
    # together on a new file they race (without the retries, plain RDBStorage lost
    # 9 of 12 such openings: "table studies already exists", "database is locked").
    for round_ in range(2):
        db = tmp_path / f"new{round_}.db"
        url = f"sqlite:///{db}"
        start = time.time() + 3.0  # after every interpreter has imported torch and optuna
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT, url, str(start)], env=env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0 and out.strip() == "opened", err.strip().splitlines()[-1:]
        assert integrity(db) == "ok"
        optuna.create_study(study_name="s", storage=url)  # a usable storage


@pytest.mark.slow
def test_sqlite_four_workers_sixty_trials(tmp_path):
    """`nas search --workers 3` plus a fourth `nas worker` joining on its own: 60
    trials, no lock error, every trial number once, none left running."""
    db = tmp_path / "c.db"
    url = f"sqlite:///{db}"
    space = tmp_path / "two.toml"
    space.write_text(TWO_ARCH_SPACE)
    t0 = time.perf_counter()
    search = subprocess.Popen(search_cmd(url, "c", 60, "1", "--workers", "3", "--hurdle-signal", "fitness",
                                         "--selection-signal", "fitness", space=str(space)), cwd=tmp_path,
                              env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The fourth worker joins from "another machine": it knows only the name and the URL.
    deadline = time.time() + 120
    while time.time() < deadline and search.poll() is None:
        try:
            if "c" in [s.study_name for s in optuna.get_all_study_summaries(url)]:
                break
        except Exception:
            pass
        time.sleep(0.3)
    joiner = subprocess.run([sys.executable, "-m", "nas.cli", "worker", "--study", "c", "--storage", url, "--trials", "60",
                             "--quiet"], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=500)
    out, err = search.communicate(timeout=500)
    elapsed = time.perf_counter() - t0
    assert search.returncode == 0, err[-3000:]
    assert joiner.returncode == 0, joiner.stderr[-3000:]
    for text in (err, joiner.stderr, out, joiner.stdout):
        assert "locked" not in text.lower(), text[-3000:]
        assert "Traceback" not in text, text[-3000:]

    study = load(url, "c")
    assert_numbers_dense(study)
    states = [t.state for t in study.trials]
    finished = sum(s in FINISHED for s in states)
    # No worker starts a trial once 60 are finished or running, and the count and the new
    # trial are taken under the study's lock (nas.trial_slots): exactly 60. (Up to 63 before
    # workers counted running trials; 60 or 61 before the lock.)
    assert finished == 60, finished
    assert finished == len(states), [s.name for s in states]  # nothing RUNNING, FAIL or WAITING
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 4, workers
    # One training seed for the whole study: the search's default 0, the joiner's too
    # (the workers of --workers K once trained with seed + i each).
    assert {t.user_attrs["seed"] for t in study.trials if "seed" in t.user_attrs} == {0}
    # Every worker runs the search's pruner and selection settings: the spawned ones are
    # given them, the joiner, given none, takes the study's (it once took the defaults).
    signal = {t.user_attrs["worker"]: t.user_attrs["search"]["hurdle_signal"] for t in study.trials}
    assert sorted(signal.values()) == ["fitness"] * 4, signal
    selection = {t.user_attrs["worker"]: t.user_attrs["search"]["selection_signal"] for t in study.trials}
    assert sorted(selection.values()) == ["fitness"] * 4, selection
    assert integrity(db) == "ok"
    print(f"\n60 trials, 4 workers: {elapsed:.1f} s, trials per worker {sorted(sum(t.user_attrs['worker'] == w for t in study.trials) for w in workers)}")


def snapshot(url: str, study: str) -> dict[int, tuple]:
    return {t.number: (t.state, t.value, t.params, t.intermediate_values, t.user_attrs.get("arch"))
            for t in load(url, study).trials if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL}


@pytest.mark.slow
def test_sigkill_one_worker_then_the_whole_group_then_resume(tmp_path):
    """Kill one worker of `nas search --workers 2` mid-trial (the other goes on),
    then SIGKILL the whole process group (parent and workers) mid-trial, then run
    the same command again: finished trials keep their values, every interrupted
    trial ends FAIL with a finished retry of the parameters it had drawn, nothing is left
    RUNNING or WAITING, and the SQLite file passes its integrity check."""
    db = tmp_path / "k.db"
    url = f"sqlite:///{db}"
    cmd = search_cmd(url, "k", 8, "2,100", "--workers", "2")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env(fast_heartbeat=True), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    victim = None
    group_killed = False
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            # The whole group is stopped while the database is read: a trial read as
            # running is still running when the kill lands.
            with stopped(proc.pid, group=True):
                state = trial_states(db, "worker")
                if state is None:
                    continue
                finished, live = state
                if victim is None and finished >= 2 and live:
                    victim = min(live)
                    os.kill(int(live[victim].rsplit(":", 1)[1]), signal.SIGKILL)
                elif victim is not None and finished >= 4 and any(n != victim for n in live):
                    os.killpg(proc.pid, signal.SIGKILL)
                    group_killed = True
                    break
    finally:
        if proc.poll() is None and not group_killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert victim is not None and group_killed, f"never caught trials mid-run: {proc.stderr.read()[-2000:]}"
    time.sleep(0.5)
    before = snapshot(url, "k")
    interrupted = [t.number for t in load(url, "k").trials if t.state == optuna.trial.TrialState.RUNNING]
    assert interrupted, "the group kill left no RUNNING trial"

    time.sleep(5)  # past the 4 s grace period: every dead worker's heartbeat is stale
    done = subprocess.run(cmd, cwd=tmp_path, env=env(fast_heartbeat=True), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]

    after = snapshot(url, "k")
    for number, record in before.items():
        assert after[number] == record, f"finished trial {number} changed on resume"
    study = load(url, "k")
    assert_numbers_dense(study)
    by_number = {t.number: t for t in study.trials}
    for number in {victim, *interrupted}:
        t = by_number[number]
        assert t.state == optuna.trial.TrialState.FAIL, (number, t.state)
        root = t.system_attrs.get("failed_trial", number)
        retries = [r for r in study.trials if r.system_attrs.get("failed_trial") == root and r.state in FINISHED]
        # A worker can die between its first and last suggest: the retry then keeps
        # every parameter the dead trial had drawn and draws the rest anew.
        assert retries and all(r.params.items() >= t.params.items() for r in retries), (number, t.params)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states and optuna.trial.TrialState.WAITING not in states
    assert sum(s in FINISHED for s in states) >= 8
    assert integrity(db) == "ok"


# ---- the journal mode: WAL only where SQLite has the WAL-reset fix -----------------
def test_wal_only_with_a_sqlite_free_of_the_wal_reset_bug():
    from nas.storage import wal_is_safe

    # https://sqlite.org/wal.html#walresetbug: 3.7.0 to 3.51.2 affected, fixed in
    # 3.51.3 and in the 3.50.7 and 3.44.6 backports.
    for version, safe in [((3, 40, 1), False), ((3, 51, 2), False), ((3, 51, 3), True), ((3, 52, 0), True),
                          ((4, 0, 0), True), ((3, 50, 6), False), ((3, 50, 7), True), ((3, 44, 5), False),
                          ((3, 44, 6), True), ((3, 45, 0), False), ((3, 7, 0), False)]:
        assert wal_is_safe(version) is safe, version


@pytest.mark.parametrize("safe", [False, True])
def test_study_files_get_the_journal_mode_of_the_library(tmp_path, monkeypatch, safe):
    import nas.storage
    from nas.storage import open_storage

    monkeypatch.setattr(nas.storage, "wal_is_safe", lambda version=None: safe)
    db = tmp_path / "j.db"
    url = f"sqlite:///{db}"
    study = optuna.create_study(study_name="j", storage=open_storage(url, heartbeat=False))
    study.enqueue_trial({"x": 1})
    assert pragma(db, "journal_mode") == ("wal" if safe else "delete")
    # A file left in WAL mode (by an older nas) goes to the rollback journal on the
    # next open when the library has the bug, with its trials intact.
    if not safe:
        con = sqlite3.connect(db)
        con.execute("PRAGMA journal_mode=WAL")
        con.close()
        assert pragma(db, "journal_mode") == "wal"
        storage = open_storage(url, heartbeat=False)
        assert pragma(db, "journal_mode") == "delete"
        assert len(optuna.load_study(study_name="j", storage=storage).trials) == 1
        assert integrity(db) == "ok"


@pytest.mark.parametrize("trials, step_budget, timeout_s", [(None, 5000, None), (12, 5000, None), (12, None, None),
                                                          (None, None, 5400.0), (12, None, 0.125)])
def test_workers_get_the_search_limits(trials, step_budget, timeout_s):
    """The `nas worker` command line that `--workers K` starts carries --trials,
    --step-budget, --timeout and the command's start as given, and the worker parses
    them back to the same limits."""
    from nas.cli import build_parser, trials_limit
    from nas.search import SearchConfig
    from nas.workers import _worker_argv

    cfg = SearchConfig(study="s", trials=trials, step_budget=step_budget, timeout_s=timeout_s,
                       started_at=1_800_000_000.25)
    args = build_parser().parse_args(_worker_argv(cfg, quiet=True)[3:])
    assert (trials_limit(args), args.step_budget, args.timeout) == (trials, step_budget, timeout_s)
    assert args.started_at == (None if timeout_s is None else 1_800_000_000.25)


@pytest.mark.parametrize("over", [
    dict(sampler="tpe", pruner="median", seed=3, population=5, tournament=2, mutation_prob=0.4, hurdle_trials=3,
         hurdle_signal="fitness", hurdle_rule="fixed", selection_signal="fitness", budget_aware=False,
         on_refusal="fresh", keep_checkpoints=3, timeout_s=7200.0, started_at=1_800_000_000.5),
    dict(),  # the defaults
])
def test_workers_run_with_every_search_setting_of_the_command(tmp_path, over):
    """What `nas search --workers K ...` asks of the search reaches each worker: the
    worker's command line, parsed, and the study's stored settings give back every
    per-worker setting of the original command (a worker once fell back to the
    default --hurdle-rule)."""
    from nas.cli import build_parser
    from nas.search import Search, SearchConfig
    from nas.workers import _worker_argv, config_from_study

    cfg = SearchConfig(study="w", storage=f"sqlite:///{tmp_path / 'w.db'}", space="tiny", latency_ms=1000.0,
                       trials=4, **over)
    Search(cfg, log=io.StringIO())
    args = build_parser().parse_args(_worker_argv(cfg, quiet=True)[3:])
    args.storage = cfg.storage
    got = config_from_study(optuna.load_study(study_name="w", storage=cfg.storage), args)
    for name in ("sampler", "pruner", "seed", "population", "tournament", "mutation_prob", "hurdle_trials",
                 "hurdle_signal", "hurdle_rule", "selection_signal", "budget_aware", "on_refusal", "trials",
                 "keep_checkpoints", "timeout_s", "started_at"):
        assert getattr(got, name) == getattr(cfg, name), name


@pytest.mark.parametrize("workers, device, visible, count, expected", [
    (2, "cuda", None, 2, ["0", "1"]),
    (3, "cuda", None, 2, ["0", "1", "0"]),
    # The command's own mask is kept: workers go to physical GPUs 2 and 3, not 0 and 1.
    (2, "cuda", "2,3", 2, ["2", "3"]),
    (2, "cuda", "GPU-aaaa, GPU-bbbb", 2, ["GPU-aaaa", "GPU-bbbb"]),
    # --device cuda:1 is the command's second visible GPU: every worker there.
    (2, "cuda:1", "4,6", 2, ["6", "6"]),
    (2, "cuda:1", None, 2, ["1", "1"]),
])
def test_workers_go_to_the_gpus_the_command_sees(workers, device, visible, count, expected):
    from nas.workers import worker_gpus

    assert worker_gpus(workers, torch.device(device), visible, count) == expected


def test_no_visible_gpu_is_a_clear_error():
    from nas.errors import NasError
    from nas.workers import worker_gpus

    with pytest.raises(NasError, match="no CUDA device is visible"):
        worker_gpus(2, torch.device("cuda"), "", 0)


@pytest.mark.parametrize("through_symlink", [False, True])
def test_two_workers_cannot_both_take_the_last_slot(tmp_path, through_symlink):
    """Two workers (here threads, each with its own Search and database connection)
    reach the last slot together: the second counts only after the first has created
    its trial, so it is refused, and the study gets one trial, not two. Without the
    lock the second counts while the first is still between counting and creating.
    A worker that reaches the database through a symlink takes the same lock."""
    from slot_race import race_for_last_slot

    from nas.search import Search, SearchConfig

    cfg = SearchConfig(study="s", storage=f"sqlite:///{tmp_path / 's.db'}", space="tiny", latency_ms=1000.0,
                       trials=3, warm_start=False, measure_threads=1)
    other = cfg
    searches = [Search(cfg, log=io.StringIO())]
    if through_symlink:  # made once the database exists
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "s.db").symlink_to(tmp_path / "s.db")
        other = SearchConfig(**{**cfg.__dict__, "storage": f"sqlite:///{tmp_path / 'elsewhere' / 's.db'}"})
    searches.append(Search(other, log=io.StringIO()))
    study = optuna.load_study(study_name="s", storage=cfg.storage)
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=0.5))
    study_id = study._study_id
    assert race_for_last_slot(searches, study_id) == "refused"
    states = [t.state for t in optuna.load_study(study_name="s", storage=cfg.storage).trials]
    assert states.count(optuna.trial.TrialState.RUNNING) == 1 and len(states) == 3


def test_a_requeued_retry_holds_its_slot(tmp_path):
    """A dead worker's trial re-queued for retry will run: with it, the finished trials
    make the target, so no new trial is created beside it (the study would end one
    past --trials). Without --trials nothing is counted."""
    from nas.search import Search, SearchConfig
    from nas.trial_slots import TargetReached

    cfg = SearchConfig(study="s", storage=f"sqlite:///{tmp_path / 's.db'}", space="tiny", latency_ms=1000.0,
                       trials=3, warm_start=False, measure_threads=1)
    search = Search(cfg, log=io.StringIO())
    study = optuna.load_study(study_name="s", storage=cfg.storage)
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=0.5))
    dead = study.ask()
    study.tell(dead, state=optuna.trial.TrialState.FAIL)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING,
                                              system_attrs={"failed_trial": dead.number}))
    with pytest.raises(TargetReached):
        with search.trial_slot(study._study_id):
            pass
    search.cfg.trials = None  # a step budget instead: the slot never refuses
    with search.trial_slot(study._study_id):
        pass
