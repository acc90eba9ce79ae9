"""Progressive dynamic hurdles as an Optuna pruner.

So, Liang & Le, "The Evolved Transformer" (ICML 2019), section 3.2: instead of
training every candidate for the full budget, train it to a first step count,
compare its fitness with a *hurdle* (the mean fitness of the candidates that
already got there) and only let it train on if it clears the hurdle; repeat at
the next step count, and so on. Weak candidates are stopped early, and the
saved steps go to more candidates.

The exact rule implemented here
===============================

Let ``stages = (s_1 < s_2 < ... < s_K)`` be the training steps at which an
objective reports its fitness (``trial.report(fitness, s_k)``); ``s_K`` is the
full training budget. Let ``m = min_trials``.

*The signal.* What a hurdle compares is set by ``signal``:

- ``"fitness"``: the value the trial reported at ``s_k``
  (``trial.report(fitness, s_k)``), compared in the study's direction;
- ``"loss"``: minus the validation loss at ``s_k``, read from the trial's user
  attribute ``stage_metrics`` (``{"<s_k>": {"loss": ..., ...}}``, which nas's
  objective writes before it reports), higher is better whatever the study's
  direction. The Evolved Transformer's hurdles compared negative log
  perplexity, a loss, not accuracy; on a task whose accuracy stays flat until
  a late jump (MQAR: an induction head forming) the loss already separates the
  candidates that will jump (README, "hurdle signal"). The trial must also
  have reported at ``s_k``; a trial without a loss there is neither a
  reporter nor judged.

*Reporters at s_k.* The trials of the study in state COMPLETE, PRUNED or
RUNNING that reported at ``s_k`` and whose signal there is **finite** (a
trial pruned *at* ``s_k`` reported there, so it counts). Trials in state FAIL
or WAITING never count; a NaN or infinite signal is never used to define a
hurdle.

*Hurdle k* (only for ``k < K``; there is no hurdle at the final stage). Sort
the reporters at ``s_k`` by trial number and take the first ``m``; call the
number of the m-th one ``n_m``. Hurdle k **is set** when

1. at least ``m`` trials have reported at ``s_k``, and
2. no trial numbered below ``n_m`` that is RUNNING or WAITING is still
   without a report at ``s_k`` (such a trial could still report at ``s_k``
   and would then belong to the first ``m``).

Its value is the arithmetic mean of those ``m`` signals. Condition 2 is what
makes the hurdle *stable* under parallel workers: trial numbers only grow,
finished trials can no longer report, so once set, the defining ``m`` trials
and the hurdle's value never change (the one exception: a defining trial that
was still RUNNING and later ends FAIL, e.g. a killed worker, drops out, and the
next reporter by number takes its place).

*Progressive opening* (``progressive=True``; `nas search`'s default, see
``DEFAULT_HURDLE_RULE``). In the Evolved Transformer the first ``m`` children
trained only ``s_1`` steps; once they had, hurdle 1 was created and later
children that cleared it trained on to ``s_2``; after ``m`` more had, hurdle 2
was created from the candidates trained that far, and so on: the training
budget grows as the hurdles appear (hence *progressive*), and each hurdle is
the mean of candidates that cleared the ones before it. Here: training beyond
``s_k`` opens only once hurdle k is set, and the ``m`` trials defining it
stop at ``s_k``. The first ``m`` trials to reach ``s_{k+1}`` have therefore
all cleared hurdle k. One exception: a trial the user enqueued
(``study.enqueue_trial``, Optuna's ``fixed_params`` system attribute; `nas
search`'s vanilla warm start) is not stopped for want of a hurdle, only by a
set hurdle it falls below, so a baseline the user gave is trained through
unless it is beaten.

With ``progressive=False`` (the pruner's own default, the rule as first
written) the defining trials, and any trial reporting before the hurdle is
set, train on: the first ``m`` trials of a study then define every hurdle, all
from the same (in evolution: random) candidates, and later children, better
than those, clear them more and more often.

Which does better is an empirical matter (README, "the search"). In the
search benchmark on MQAR (evolution, 16,000 training steps, 6 seeds on one
host) the progressive rule ran about 1.8x the trials of the fixed one
for the same steps and found the recall solvers sooner; replaying recorded
curves in *random* orders (``benchmarks/hurdle_replay.py --rules``, no
evolution) it stopped solvers at the later hurdles more often, where the mean
of candidates that already cleared one is a high bar.

*Pruning.* ``prune(study, trial)`` looks only at the trial's latest report,
at step ``s = trial.last_step``, with signal ``v`` there:

- ``s`` is not a stage, or ``s == s_K`` (final stage): never pruned;
- ``s = s_k`` with ``k < K`` and ``v`` or the reported value is NaN: pruned
  (whether or not the hurdle is set: a diverged run is not worth training
  further);
- with signal ``"loss"``, a trial without a loss at ``s_k``: not pruned;
- progressive, the trial not enqueued, and hurdle k not set or the trial one
  of the ``m`` defining it: pruned (stopped at ``s_k``, see above);
- otherwise pruned iff hurdle k is set, the trial is not one of the ``m``
  trials defining it, and ``v < hurdle`` when the signal is maximized
  (``v > hurdle`` for the fitness of a minimizing study). A value equal to
  the hurdle passes.

The pruner keeps no state: everything is recomputed from the study's storage
on each call, so resumed studies and parallel workers (same SQLite or
PostgreSQL storage) agree. The decision is taken when the trial reports; a
trial that reported before its hurdle was set is not pruned retroactively.

When a trial is pruned (the objective raises :class:`optuna.TrialPruned`),
Optuna 5 stores it as PRUNED with its last intermediate value as its value
(``optuna/study/_tell.py``; left ``None`` when that value is NaN), so its
fitness at the stage where it stopped stays readable, also from
``trial.intermediate_values``.

Usage::

    pruner = ProgressiveHurdlePruner(stages=(1_000, 3_000, 9_000), min_trials=5)
    study = optuna.create_study(direction="maximize", pruner=pruner)

    def objective(trial):
        done = 0
        for step in pruner.stages:
            task.train(model, step - done)
            done = step
            fitness = task.evaluate(model)
            trial.report(fitness, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return fitness
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

# The trials whose mean sets each hurdle unless told otherwise: `nas search
# --hurdle-trials`, SearchConfig, make_pruner and stage_signals all default to it.
DEFAULT_MIN_TRIALS = 5
# What the hurdles compare (see "The signal" above), and what `nas search
# --hurdle-signal`, SearchConfig and make_pruner default to.
HURDLE_SIGNALS = ("loss", "fitness")
DEFAULT_HURDLE_SIGNAL = "loss"
# What evolution's tournament compares by default (`--selection-signal`): one
# of the same two signals, read at the trial's last stage. Minus the loss, as the
# Evolved Transformer's tournament compared negative log perplexity; on MQAR it
# let evolution+hurdles find the recall solvers in 3 of 4 seeds against 1 of 4
# on accuracy (README, "the search").
DEFAULT_SELECTION_SIGNAL = "loss"
# How training opens past a stage (see "Progressive opening" above): "progressive"
# (only once its hurdle is set) or "fixed" (the first min_trials trials train
# through). `nas search --hurdle-rule`, SearchConfig and make_pruner default to it;
# the pruner class itself keeps the fixed rule unless given progressive=True.
HURDLE_RULES = ("progressive", "fixed")
DEFAULT_HURDLE_RULE = "progressive"
# The trial user attribute holding every metric at every stage, {"<step>": {name: value}}.
STAGE_METRICS_ATTR = "stage_metrics"

__all__ = ["DEFAULT_HURDLE_RULE", "DEFAULT_HURDLE_SIGNAL", "DEFAULT_SELECTION_SIGNAL", "HURDLE_RULES", "HURDLE_SIGNALS", "Hurdle", "ProgressiveHurdlePruner",
           "STAGE_METRICS_ATTR", "minus_last_loss", "signal_label"]


def signal_label(signal: str) -> str:
    """How tables name a signal: "-loss" (what is compared is minus the loss) or "fitness"."""
    return "-loss" if signal == "loss" else signal


def minus_last_loss(trial: FrozenTrial) -> float | None:
    """Minus the validation loss at the last stage the trial recorded one
    (its ``stage_metrics``), or None when it recorded none (a trial over budget,
    never trained, or recorded before stage metrics existed). A stopped trial
    counts with its loss where it stopped, as it counts with its fitness there."""
    losses = _stage_losses(trial)
    return -losses[max(losses)] if losses else None


def _stage_losses(trial: FrozenTrial) -> dict[int, float]:
    """The validation loss at each stage the trial recorded one (``stage_metrics``)."""
    stage_metrics = trial.user_attrs.get(STAGE_METRICS_ATTR) or {}
    return {int(step): float(m["loss"]) for step, m in stage_metrics.items() if (m or {}).get("loss") is not None}


# Trials whose report at a stage may define its hurdle.
_REPORTER_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
# Unfinished trials that may still report at a stage.
_PENDING_STATES = (TrialState.RUNNING, TrialState.WAITING)


@dataclass(frozen=True)
class Hurdle:
    """A set hurdle: the stage's step, its value, and the trials defining it."""

    step: int
    value: float
    trial_numbers: tuple[int, ...]


def check_min_trials(min_trials: object, name: str = "min_trials") -> None:
    """ValueError unless `min_trials` (the trials whose mean sets a hurdle) is a
    positive integer; `name`: the argument's, or `nas search`'s flag."""
    if isinstance(min_trials, bool) or not isinstance(min_trials, numbers.Integral) or min_trials < 1:
        raise ValueError(f"{name} must be a positive integer (the trials whose mean sets a hurdle), got {min_trials!r}")


class ProgressiveHurdlePruner(optuna.pruners.BasePruner):
    """Prune trials that fall below the progressive dynamic hurdles.

    See the module docstring for the exact rule.

    Args:
        stages: Strictly increasing positive step counts at which the objective
            reports its fitness; the last one is the full training budget (no
            hurdle there).
        min_trials: How many trials (the lowest-numbered to report at a stage)
            define that stage's hurdle; until that many have reported, nobody
            is pruned there.
        signal: What the hurdles compare: ``"fitness"`` (the reported values,
            the default here) or ``"loss"`` (minus the validation loss from the
            trial's ``stage_metrics`` attribute; `nas search`'s default).
        progressive: Open training beyond a stage only once its hurdle is set,
            stopping the trials that define it there, as the Evolved Transformer
            did (module docstring, "Progressive opening"); ``False`` (the
            class's default; `nas search` passes True) lets them train on.
    """

    def __init__(self, stages: Sequence[int], min_trials: int = DEFAULT_MIN_TRIALS, signal: str = "fitness",
                 progressive: bool = False) -> None:
        if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence):
            raise ValueError(f"stages must be a sequence of step counts, got {stages!r}")
        if len(stages) == 0:
            raise ValueError("stages must not be empty")
        for s in stages:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral):
                raise ValueError(f"stages must be integers, got {s!r} in {tuple(stages)!r}")
            if s < 1:
                raise ValueError(f"stages must be positive step counts, got {s!r}")
        if any(b <= a for a, b in zip(stages, stages[1:])):
            raise ValueError(f"stages must be strictly increasing, got {tuple(stages)!r}")
        check_min_trials(min_trials)
        if signal not in HURDLE_SIGNALS:
            raise ValueError(f"signal must be one of {', '.join(HURDLE_SIGNALS)}, got {signal!r}")
        self._stages: tuple[int, ...] = tuple(int(s) for s in stages)
        self._min_trials = int(min_trials)
        if not isinstance(progressive, bool):
            raise ValueError(f"progressive must be True or False, got {progressive!r}")
        self._signal = signal
        self._progressive = progressive
        # The latest stop prune() decided: ((study name, trial number, step), why), for
        # stop_reason: the decision itself, without reading the study a second time (a
        # second read could also see a hurdle another worker set meanwhile). One slot:
        # the objective asks right after should_prune, and a caller that never asks
        # (e.g. a replay of thousands of trials) keeps nothing.
        self._last_stop: tuple[tuple[str, int, int], str] | None = None

    @property
    def stages(self) -> tuple[int, ...]:
        """The reporting steps; the last is the full budget."""
        return self._stages

    @property
    def hurdle_stages(self) -> tuple[int, ...]:
        """The steps that carry a hurdle (every stage but the last)."""
        return self._stages[:-1]

    @property
    def min_trials(self) -> int:
        """How many trials define each hurdle."""
        return self._min_trials

    @property
    def progressive(self) -> bool:
        """Whether training beyond a stage waits for its hurdle (module docstring)."""
        return self._progressive

    @property
    def signal(self) -> str:
        """What the hurdles compare: "fitness" or "loss" (minus the validation loss)."""
        return self._signal

    def signal_value(self, trial: FrozenTrial, step: int) -> float | None:
        """The trial's signal at ``step`` (NaN and infinities included), or None
        when it did not report there or, for "loss", recorded no loss there."""
        if step not in trial.intermediate_values:
            return None
        if self._signal == "fitness":
            return float(trial.intermediate_values[step])
        loss = _stage_losses(trial).get(step)
        return None if loss is None else -loss

    def maximizes(self, study: optuna.study.Study) -> bool:
        """Whether a higher signal is better (the loss signal always: it is negated)."""
        return self._signal != "fitness" or study.direction != StudyDirection.MINIMIZE

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(stages={self._stages!r}, min_trials={self._min_trials}, "
                f"signal={self._signal!r}, progressive={self._progressive})")

    # ------------------------------------------------------------------ hurdles

    def _hurdle(self, trials: Sequence[FrozenTrial], step: int) -> Hurdle | None:
        """The hurdle at ``step`` computed from ``trials``, or None if not set."""
        signals = {t.number: self.signal_value(t, step) for t in trials if t.state in _REPORTER_STATES}
        reporters = sorted(
            (t for t in trials if (v := signals.get(t.number)) is not None and math.isfinite(v)),
            key=lambda t: t.number,
        )
        if len(reporters) < self._min_trials:
            return None
        defining = reporters[: self._min_trials]
        last_number = defining[-1].number
        for t in trials:
            if (
                t.number < last_number
                and t.state in _PENDING_STATES
                and step not in t.intermediate_values
            ):
                return None  # a lower-numbered trial may still report here
        values = [signals[t.number] for t in defining]
        return Hurdle(
            step=step,
            value=math.fsum(values) / len(values),
            trial_numbers=tuple(t.number for t in defining),
        )

    def hurdle_details(self, study: optuna.study.Study) -> dict[int, Hurdle]:
        """Stage step -> :class:`Hurdle` for each hurdle that is set."""
        trials = study.get_trials(deepcopy=False, states=_REPORTER_STATES + (TrialState.WAITING,))
        out: dict[int, Hurdle] = {}
        for step in self.hurdle_stages:
            h = self._hurdle(trials, step)
            if h is not None:
                out[step] = h
        return out

    def hurdles(self, study: optuna.study.Study) -> dict[int, float]:
        """Stage step -> hurdle value, for the hurdles that are set (for display)."""
        return {step: h.value for step, h in self.hurdle_details(study).items()}

    # ------------------------------------------------------------------ pruning

    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        reason = self._judge(study, trial)
        if reason is not None:
            self._last_stop = ((study.study_name, trial.number, trial.last_step), reason)
        return reason is not None

    def stop_reason(self, study: optuna.study.Study, trial: FrozenTrial) -> str:
        """Why `trial`, pruned at its latest report, stopped there, in words."""
        return self.stopped_because(study, trial.number, trial.last_step) or (
            self._judge(study, trial) or f"not stopped by the hurdles at step {trial.last_step}")

    def stopped_because(self, study: optuna.study.Study, number: int, step: int | None) -> str | None:
        """The reason this pruner gave when it last stopped a trial, if that was trial
        `number` at `step` (None otherwise), forgotten once read."""
        last = self._last_stop
        if last is None or last[0] != (study.study_name, number, step):
            return None
        self._last_stop = None
        return last[1]

    def _judge(self, study: optuna.study.Study, trial: FrozenTrial) -> str | None:
        """Why `trial` stops at its latest report, or None when it goes on (the
        module docstring's "Pruning" rule)."""
        step = trial.last_step
        if step is None or step not in self.hurdle_stages:
            return None
        if math.isnan(trial.intermediate_values[step]):
            return f"diverged (NaN) at step {step}"
        value = self.signal_value(trial, step)
        if value is None:
            return None  # the loss signal, and no loss recorded: not judged (module docstring)
        if math.isnan(value):
            return f"diverged (NaN) at step {step}"
        trials = study.get_trials(deepcopy=False, states=_REPORTER_STATES + (TrialState.WAITING,))
        hurdle = self._hurdle(trials, step)
        if hurdle is None or trial.number in hurdle.trial_numbers:
            # Progressive opening: wait for the hurdle, unless the user enqueued the trial.
            if not self._progressive or "fixed_params" in trial.system_attrs:
                return None
            if hurdle is None:
                return (f"no hurdle at step {step} yet: progressive hurdles open training past a stage "
                        f"once {self._min_trials} trials have reported there")
            return f"one of the {self._min_trials} trials defining the hurdle at step {step} (progressive hurdles)"
        below = value > hurdle.value if not self.maximizes(study) else value < hurdle.value
        return f"below the hurdle at step {step}" if below else None
