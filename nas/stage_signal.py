"""Did the hurdles' early signal (fitness, or minus the loss) predict the final fitness?

Progressive dynamic hurdles (So, Liang & Le, "The Evolved Transformer", ICML
2019, section 3.2) save training steps only if a candidate's fitness at an
early stage ranks candidates roughly as their final fitness does; where it does
not (a task whose metric jumps late, like an induction head forming), a hurdle
stops candidates at random and costs the search its best ones. This module
measures that from a study's own trials, so a user can check the stages they
picked (`nas show` prints it):

The *signal* at a stage is what the hurdles compare there
(:class:`ProgressiveHurdlePruner`'s ``signal``): the fitness reported there, or
minus the validation loss recorded there. For each hurdle stage ``s`` (every
stage but the last):

- ``hurdle``: the hurdle's value (:meth:`ProgressiveHurdlePruner.hurdle_details`
  with the study's ``min_trials``), or None while it is not set;
- ``reported`` / ``cleared``: finished trials (COMPLETE or PRUNED) with a finite
  signal at ``s``, and how many of those were at or above the hurdle (at or
  below it for the fitness of a minimizing study), the pruner's own comparison;
- over the *paired* trials, COMPLETE ones with a finite signal at ``s`` and a
  finite fitness at the final stage (trials that replayed an architecture trained before
  are left out, as copies of another trial's curve):
  ``rank_corr``, Spearman's rank correlation between the two (ties get average
  ranks; None with fewer than 3 pairs or a constant side); ``top``, the top
  quarter of them by final fitness (at least one), and ``top_cleared``, how many
  of those cleared the hurdle; ``best_cleared`` / ``best_below``, the best final
  fitness among paired trials that cleared the hurdle / fell below it, and
  ``best_lost``, whether the best of all fell below it (the hurdle would have
  stopped the study's eventual winner; None while the hurdle is not set or
  no trial is paired).

In a study searched *with* hurdles, trials stopped at a hurdle have no final
fitness, so the paired figures describe the trials that went on (mostly those
that cleared). A run with ``--pruner none`` reports at the same stages and
trains everything to the end: its figures show what the hurdles would cut,
without that bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import spearmanr

from nas.hurdles import DEFAULT_MIN_TRIALS, ProgressiveHurdlePruner
from nas.results import format_table

__all__ = ["StageSignal", "stage_signals", "format_stage_signals"]


@dataclass(frozen=True)
class StageSignal:
    """How fitness at one hurdle stage related to the final fitness (see the module docstring)."""

    step: int
    hurdle: float | None
    reported: int
    cleared: int | None
    paired: int
    rank_corr: float | None
    top: int
    top_cleared: int | None
    best_cleared: float | None
    best_below: float | None
    best_lost: bool | None


def _finite_at(t: FrozenTrial, step: int) -> float | None:
    v = t.intermediate_values.get(step)
    return float(v) if v is not None and math.isfinite(v) else None


def _rank_corr(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(spearmanr(xs, ys).statistic)


def stage_signals(study: optuna.Study, stages: tuple[int, ...] | list[int], min_trials: int = DEFAULT_MIN_TRIALS,
                  signal: str = "fitness") -> list[StageSignal]:
    """One :class:`StageSignal` per hurdle stage of ``stages`` (all but the last),
    with the hurdles on ``signal`` ("fitness" or "loss")."""
    stages = tuple(int(s) for s in stages)
    if len(stages) < 2:
        return []
    final = stages[-1]
    pruner = ProgressiveHurdlePruner(stages=stages, min_trials=min_trials, signal=signal)
    hurdles = pruner.hurdle_details(study)
    final_max = study.direction != StudyDirection.MINIMIZE  # the final fitness's direction
    maximize = pruner.maximizes(study)  # the signal's

    def signal_at(t: FrozenTrial, step: int) -> float | None:
        v = pruner.signal_value(t, step)
        return v if v is not None and math.isfinite(v) else None
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    out = []
    for step in stages[:-1]:
        h = hurdles[step].value if step in hurdles else None
        clears = (lambda v: v >= h) if maximize else (lambda v: v <= h)  # the pruner's own rule: equal passes
        at_step = [v for v in (signal_at(t, step) for t in finished) if v is not None]
        pairs = [(signal_at(t, step), _finite_at(t, final)) for t in finished
                 if t.state == TrialState.COMPLETE and "replayed_from" not in t.user_attrs]
        pairs = [(v, f) for v, f in pairs if v is not None and f is not None]
        # Top quarter by final fitness; on ties at the cut the earlier-listed (lower number) trial stays.
        ranked = sorted(pairs, key=lambda p: p[1], reverse=final_max)
        top = ranked[: max(1, math.ceil(len(ranked) / 4))] if ranked else []
        pick = max if final_max else min
        above = [f for v, f in pairs if h is not None and clears(v)]
        below = [f for v, f in pairs if h is not None and not clears(v)]
        best_below = pick(below) if below else None
        best_cleared = pick(above) if above else None
        # Lost: something below the hurdle beat everything that cleared it (a tie is not a loss).
        best_lost = None if h is None or not pairs else best_below is not None and (
            best_cleared is None or pick(best_below, best_cleared) != best_cleared)
        out.append(StageSignal(
            step=step, hurdle=h, reported=len(at_step),
            cleared=None if h is None else sum(clears(v) for v in at_step),
            paired=len(pairs),
            rank_corr=_rank_corr([v for v, _ in pairs], [f for _, f in pairs]),
            top=len(top),
            top_cleared=None if h is None else sum(clears(v) for v, _ in top),
            best_cleared=best_cleared,
            best_below=best_below,
            best_lost=best_lost,
        ))
    return out


def format_stage_signals(signals: list[StageSignal]) -> str:
    """The table `nas show` prints."""
    def num(v: float | None, fmt: str = ".4f") -> str:
        return "-" if v is None else format(v, fmt)

    rows = []
    for s in signals:
        rows.append([
            str(s.step), num(s.hurdle),
            "-" if s.cleared is None else f"{s.cleared} of {s.reported}",
            f"{num(s.rank_corr, '.2f')} (n={s.paired})",
            "-" if s.top_cleared is None else f"{s.top_cleared} of {s.top}",
            f"{num(s.best_cleared)} / {num(s.best_below)}",
        ])
    header = ["step", "hurdle", "cleared", "rank corr. with final", "top quarter cleared", "best final: cleared / below"]
    return format_table(rows, header)
