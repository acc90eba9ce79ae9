"""`--keep-checkpoints K`: which trials' trained weights a study keeps on disk.

Every trial that clears the last hurdle saves its weights, so that the winner
exports trained (`nas export`). On a GPU with a large space that is one file of
hundreds of MB per trained candidate. With a limit, a study keeps the weights of
the trials a user may still export:

- the K best fully trained feasible trials by fitness (`nas show`'s top list), and
- every trial on the Pareto front of fitness against measured latency (`nas
  show`'s front: each is the best choice for some tighter latency budget);

and removes the rest: the file (unless a kept trial shares it, as a trial that
replayed an architecture trained before shares its twin's) and its row in
`nas_checkpoints`. A removed trial still exports with `--retrain STEPS`.

Only finished trials are considered: a RUNNING trial of another worker may have
saved its weights already, before it is stored COMPLETE.
"""

from __future__ import annotations

from pathlib import Path

import optuna

from nas.results import Trials, best_first, pareto_front
from nas.tables import Tables, read_checkpoints

__all__ = ["kept_trials", "prune_checkpoints", "weights_on_disk"]


def weights_on_disk(url: str, study: optuna.Study) -> set[int]:
    """Numbers of the trials of `study` whose saved weights are on this machine, so
    that `nas export --trial N` needs no `--retrain`: their own, or for a replay its
    twin's. Reads without creating anything (`nas show` opens studies read-only)."""
    saved = {row["trial_number"] for row in read_checkpoints(url, study.study_name) if Path(row["path"]).is_file()}
    return saved | {t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get("replayed_from") in saved}


def kept_trials(trials: Trials, keep: int) -> set[int]:
    """Numbers of the trials whose weights `--keep-checkpoints keep` keeps: the
    `keep` best fully trained feasible ones, and the Pareto front's."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    return {t.number for t in best_first(trials)[:keep]} | {t.number for t in pareto_front(trials)}


def prune_checkpoints(study: optuna.Study, tables: Tables, keep: int) -> tuple[list[int], list[str]]:
    """Remove the checkpoints `kept_trials` does not keep, among finished trials.

    A file is removed first and its rows after, so a row never outlives its file
    unnoticed: a file that cannot be removed (permissions, an immutable file) keeps
    its rows, for a later prune, and is reported. A file that is not on this machine
    (another machine's worker on a shared PostgreSQL study saved it) keeps its rows
    too: that worker removes it when it next prunes. A file a kept row shares stays.
    Returns (trial numbers whose checkpoint was removed, one line per file that could
    not be)."""
    trials = study.get_trials(deepcopy=False)
    finished = {t.number for t in trials if t.state.is_finished()}
    kept = kept_trials(trials, keep)
    rows = tables.checkpoints_of(study.study_name)
    kept_paths = {r["path"] for r in rows if r["trial_number"] not in finished or r["trial_number"] in kept}
    by_path: dict[str, list[int]] = {}
    for r in rows:
        if r["trial_number"] in finished and r["trial_number"] not in kept:
            by_path.setdefault(r["path"], []).append(r["trial_number"])
    removed, problems = [], []
    for path, numbers in by_path.items():
        if path not in kept_paths:
            file = Path(path)
            if not file.exists():
                continue  # another machine's file, or removed by hand: its rows stay
            try:
                file.unlink()
            except OSError as e:
                problems.append(f"cannot remove checkpoint {path} ({e.strerror or e}); it stays, with its row")
                continue
        removed += numbers
    if removed:
        tables.delete_checkpoints(study.study_name, removed)
    return sorted(removed), problems
