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
from nas.tables import Tables

__all__ = ["kept_trials", "prune_checkpoints"]


def kept_trials(trials: Trials, keep: int) -> set[int]:
    """Numbers of the trials whose weights `--keep-checkpoints keep` keeps: the
    `keep` best fully trained feasible ones, and the Pareto front's."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    return {t.number for t in best_first(trials)[:keep]} | {t.number for t in pareto_front(trials)}


def prune_checkpoints(study: optuna.Study, tables: Tables, keep: int) -> list[int]:
    """Remove the checkpoints `kept_trials` does not keep, among finished trials;
    returns the trial numbers whose checkpoint was removed."""
    trials = study.get_trials(deepcopy=False)
    finished = {t.number for t in trials if t.state.is_finished()}
    kept = kept_trials(trials, keep)
    rows = tables.checkpoints_of(study.study_name)
    drop = [r for r in rows if r["trial_number"] in finished and r["trial_number"] not in kept]
    if not drop:
        return []
    tables.delete_checkpoints(study.study_name, [r["trial_number"] for r in drop])
    still_used = {r["path"] for r in tables.checkpoints_of(study.study_name)}
    for path in {r["path"] for r in drop} - still_used:
        Path(path).unlink(missing_ok=True)
    return sorted(r["trial_number"] for r in drop)
