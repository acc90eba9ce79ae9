"""`--keep-checkpoints K`: the weights of the K best trials and of the Pareto front
stay on disk, the others go; checked against sets computed here by hand and
against the database and folder read back directly."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from nas.checkpoints import kept_trials
from nas.cli import main
from nas.search import Search, SearchConfig, SearchError
from nas.storage import default_url

TINY_TASK = dict(vocab_size=16, seq_len=16, num_kv_pairs=2, n_valid=64, batch_size=16)


def trial(number: int, value: float | None, latency: float, *, feasible: bool = True,
          state: TrialState = TrialState.COMPLETE) -> optuna.trial.FrozenTrial:
    t = create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                     user_attrs={"latency_ms": latency},
                     system_attrs={"constraints": (0.0,) if feasible else (1.0,)})
    t.number = number
    return t


TRIALS = [
    trial(0, 0.90, 5.0),
    trial(1, 0.95, 8.0),   # the best
    trial(2, 0.50, 1.0),   # the fastest
    trial(3, 0.80, 6.0),   # beaten by trial 0 on both
    trial(4, 0.99, 12.0, feasible=False),  # best fitness, over the budget
    trial(5, 0.70, 2.0),
    trial(6, None, 3.0, state=TrialState.PRUNED),
    trial(7, 0.93, 9.0),   # second best, beaten by trial 1 on both
    trial(8, 0.90, 5.0),   # ties trial 0: the earlier one ranks first
]
FRONT = {2, 5, 0, 1}  # by hand: sorted by latency, each fitter than all faster ones


@pytest.mark.parametrize("keep, expected", [(1, FRONT), (2, FRONT | {7}), (3, FRONT | {7}), (4, FRONT | {7, 8}),
                                            (100, FRONT | {3, 7, 8})])
def test_kept_trials_are_the_best_k_and_the_pareto_front(keep, expected):
    assert kept_trials(TRIALS, keep) == expected


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        kept_trials(TRIALS, 0)
    with pytest.raises(SearchError, match="--keep-checkpoints"):
        Search(SearchConfig(study="k", storage=default_url("k", tmp_path), space="tiny", task_options=TINY_TASK,
                            latency_ms=1000.0, keep_checkpoints=0), log=io.StringIO())


def stored_checkpoints(db: Path) -> dict[int, str]:
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT trial_number, path FROM nas_checkpoints WHERE study = 'k'").fetchall())
    finally:
        con.close()


def by_hand(study: optuna.Study, keep: int) -> set[int]:
    """The K best complete feasible trials and the Pareto front, by brute force."""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE
            and all(c <= 0 for c in t.system_attrs.get("constraints", ()))]
    best = sorted(done, key=lambda t: (-t.value, t.user_attrs["latency_ms"], t.number))[:keep]
    front = [t for t in done if not any(
        (o.value >= t.value and o.user_attrs["latency_ms"] <= t.user_attrs["latency_ms"])
        and (o.value > t.value or o.user_attrs["latency_ms"] < t.user_attrs["latency_ms"]) for o in done)]
    return {t.number for t in best} | {t.number for t in front}


def test_a_search_keeps_the_best_and_the_front_and_a_resume_applies_a_lower_limit(tmp_path, capsys):
    db = tmp_path / "k.db"
    cfg = SearchConfig(study="k", storage=f"sqlite:///{db}", space="tiny", task="mqar", task_options=TINY_TASK,
                       latency_ms=1000.0, trials=10, stages=(8,), pruner="none", sampler="random",
                       measure_threads=1)
    Search(cfg, log=io.StringIO()).run()
    study = optuna.load_study(study_name="k", storage=cfg.storage)
    trained = {t.number for t in study.trials if t.state == TrialState.COMPLETE}
    everything = stored_checkpoints(db)
    assert set(everything) == trained  # no limit: every trained trial's weights
    assert all(Path(p).exists() for p in everything.values())

    # The same study resumed with a limit: applied before any new trial.
    Search(SearchConfig(**{**cfg.__dict__, "keep_checkpoints": 1}), log=io.StringIO()).run()
    kept = stored_checkpoints(db)
    assert set(kept) == by_hand(study, 1) and len(kept) < len(everything)
    on_disk = {str(p.resolve()) for p in (tmp_path / "k" / "checkpoints").glob("*.pt")}
    assert on_disk == set(kept.values())  # replays share their twin's file: sets, not counts

    removed = min(set(everything) - set(kept))
    code = main(["export", "k", "--storage", cfg.storage, "--trial", str(removed), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "--keep-checkpoints" in err and "--retrain" in err
    best = min(by_hand(study, 1), key=lambda n: (-study.trials[n].value, study.trials[n].user_attrs["latency_ms"], n))
    assert main(["export", "k", "--storage", cfg.storage, "--trial", str(best), "--out", str(tmp_path / "b")]) == 0

    # Trials run under the limit are pruned as they finish (weights removed before stay removed).
    Search(SearchConfig(**{**cfg.__dict__, "keep_checkpoints": 2, "trials": 16}), log=io.StringIO()).run()
    study = optuna.load_study(study_name="k", storage=cfg.storage)
    assert set(stored_checkpoints(db)) == by_hand(study, 2) & (set(kept) | {t.number for t in study.trials
                                                                             if t.number > max(trained)})

    # `nas show` marks the trials whose weights are on disk: the rows read back above
    # whose file is there after one file is removed (rows of replays may share it), and
    # the replays of those (they export with their twin's weights).
    saved = stored_checkpoints(db)
    Path(saved[min(saved)]).unlink()
    there = {n for n, path in saved.items() if Path(path).is_file()}
    assert there != set(saved)
    capsys.readouterr()
    assert main(["show", "k", "--storage", cfg.storage, "--top", "100"]) == 0
    marks = shown_weights(capsys.readouterr().out)
    assert set(marks) == {t.number for t in study.trials if t.state.is_finished()}
    replays = {t.number for t in study.trials if t.user_attrs.get("replayed_from") in there}
    assert {n for n, mark in marks.items() if mark} == there | replays


def shown_weights(out: str) -> dict[int, bool]:
    """Trial number -> whether `nas show`'s top list says its weights are saved."""
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("trial ") and " weights " in line)
    col = lines[head].index(" weights ") + 1
    marks = {}
    for line in lines[head + 2:]:
        if not line[:1].isdigit():
            break
        marks[int(line.split()[0])] = line[col:].startswith("saved")
    return marks


def test_show_of_a_study_without_checkpoints_creates_no_table(tmp_path, capsys):
    """A study nas did not train (no `nas_checkpoints` table): `nas show` marks no
    weights and leaves the file's tables as they were (it opens studies read-only)."""
    db = tmp_path / "o.db"
    study = optuna.create_study(study_name="o", storage=f"sqlite:///{db}")
    study.add_trial(create_trial(value=0.5, user_attrs={"latency_ms": 1.0}))
    before = tables_of(db)
    assert main(["show", "o", "--storage", f"sqlite:///{db}"]) == 0
    out = capsys.readouterr().out
    assert shown_weights(out) == {0: False}
    assert "training: not recorded" in out and "budget: not recorded" in out  # nothing made up
    assert tables_of(db) == before and "nas_checkpoints" not in before


def tables_of(db: Path) -> set[str]:
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        con.close()


def test_prune_spares_running_trials_unremovable_and_other_machines_files(tmp_path):
    """Rows and files read back directly: a RUNNING trial's weights (saved before it is
    stored COMPLETE) stay; a file that cannot be removed keeps its row and is reported;
    a file not on this machine keeps its row; a file a kept trial shares stays."""
    import shutil
    import subprocess

    from nas.checkpoints import prune_checkpoints
    from nas.tables import Tables

    url = f"sqlite:///{tmp_path / 'k.db'}"
    study = optuna.create_study(study_name="k", storage=url, direction="maximize")
    for t in TRIALS:
        study.add_trial(create_trial(state=t.state, value=t.value, user_attrs=t.user_attrs,
                                     system_attrs=t.system_attrs))
    running = study.ask()  # trial 9, mid-training elsewhere
    tables = Tables(url)
    folder = tmp_path / "checkpoints"
    folder.mkdir()

    def save(number: int, name: str | None = None) -> Path:
        path = folder / (name or f"trial_{number}.pt")
        path.write_bytes(b"weights")
        tables.put_checkpoint("k", number, str(path), "hash", 8)
        return path

    for n in (0, 1, 2, 5):  # kept with keep=1 (FRONT)
        save(n)
    save(3)  # to remove
    shared = save(7, "shared.pt")
    tables.put_checkpoint("k", 1, str(shared), "hash", 8)  # kept trial 1 now points at trial 7's file
    elsewhere = folder / "other-machine" / "trial_8.pt"
    tables.put_checkpoint("k", 8, str(elsewhere), "hash", 8)  # never on this disk
    save(running.number)

    locked = save(4)  # over the budget, so not kept
    immutable = bool(shutil.which("chattr")) and subprocess.run(["chattr", "+i", str(locked)],
                                                                capture_output=True).returncode == 0
    try:
        removed, problems = prune_checkpoints(study, tables, 1)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
    rows = {r["trial_number"]: r["path"] for r in tables.checkpoints_of("k")}
    assert 3 not in rows and not (folder / "trial_3.pt").exists()
    assert 7 not in rows and shared.exists() and rows[1] == str(shared)
    assert rows[8] == str(elsewhere)
    assert rows[running.number] == str(folder / f"trial_{running.number}.pt")
    assert all(Path(rows[n]).exists() for n in (0, 2, 5, running.number))
    if immutable:
        assert 4 in rows and locked.exists()
        assert len(problems) == 1 and "cannot remove checkpoint" in problems[0] and str(locked) in problems[0]
        assert removed == [3, 7]
    else:
        assert 4 not in rows and problems == [] and removed == [3, 4, 7]


def test_a_replay_exports_with_its_twins_weights(tmp_path, capsys):
    """A trial that replayed an architecture trained before has that trial's weights:
    when only the twin's checkpoint row is left, the replay still exports, without
    --retrain, with exactly those weights."""
    import torch

    from fixture_spaces import TWO_ARCH_SPACE
    from nas.tables import Tables

    space = tmp_path / "two.toml"
    space.write_text(TWO_ARCH_SPACE)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    Search(SearchConfig(study="k", storage=url, space=str(space), task="mqar", task_options=TINY_TASK,
                        latency_ms=1000.0, trials=6, stages=(4,), pruner="none", sampler="random",
                        measure_threads=1), log=io.StringIO()).run()
    study = optuna.load_study(study_name="k", storage=url)
    replay = next(t for t in study.trials if t.state == TrialState.COMPLETE and "replayed_from" in t.user_attrs)
    twin = replay.user_attrs["replayed_from"]
    tables = Tables(url)
    tables.delete_checkpoints("k", [replay.number])
    twin_path = tables.get_checkpoint("k", twin)["path"]
    tables.dispose()
    out = tmp_path / "x"
    assert main(["export", "k", "--storage", url, "--trial", str(replay.number), "--out", str(out)]) == 0
    exported = torch.load(out / "weights.pt", weights_only=True)
    saved = torch.load(twin_path, weights_only=True)
    assert exported.keys() == saved.keys() and all(torch.equal(exported[k], saved[k]) for k in saved)
    capsys.readouterr()
    assert main(["show", "k", "--storage", url, "--top", "100"]) == 0
    out = capsys.readouterr().out
    assert shown_weights(out)[replay.number]  # its twin's weights are there
    full = [t for t in study.trials if t.state == TrialState.COMPLETE]
    replays = sum("replayed_from" in t.user_attrs for t in full)
    assert f"{len(full)} trained to the end and feasible ({replays} of them" in out  # replays are not new trainings
