"""Reading a study's results: feasibility, the best feasible trial, the Pareto
front of fitness against latency, and the tables `nas search` and `nas show` print.
Everything here reads Optuna's public API only, so what we show is what any Optuna
tool (optuna-dashboard, optuna.visualization) sees."""

from __future__ import annotations

import math
from typing import Sequence, Union

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.evolution import REFUSED_KEY

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# A study, or its trials read once (one storage query serves several of the
# functions below, e.g. for the progress line printed after every trial).
Trials = Union[optuna.Study, Sequence[FrozenTrial]]


def _trials(source: Trials, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
    if isinstance(source, optuna.Study):
        return source.get_trials(deepcopy=False, states=states)
    return [t for t in source if states is None or t.state in states]


def finished_count(study: Trials) -> int:
    return len(_trials(study, FINISHED))


def is_feasible(trial: FrozenTrial) -> bool:
    """All constraints <= 0, and the trial was measured (has a latency)."""
    return "latency_ms" in trial.user_attrs and all(v <= 0 for v in trial.constraints.values())


def fitness(trial: FrozenTrial) -> float | None:
    """The trial's fitness: its value, or for a pruned trial its last reported one."""
    if trial.value is not None:
        return trial.value
    if trial.intermediate_values:
        return trial.intermediate_values[max(trial.intermediate_values)]
    return None


def steps_spent(trial: FrozenTrial) -> int:
    """Training steps this trial cost: 0 for one that replayed an architecture
    trained before (`steps_trained` is then the steps its fitness stands for);
    studies written before `steps_spent` existed hold only `steps_trained`. A
    queued trial has spent nothing, whatever it carries: Optuna's retry of a dead
    worker's trial copies that trial's user attributes, its steps among them."""
    if trial.state == TrialState.WAITING:
        return 0
    a = trial.user_attrs
    return int(a.get("steps_spent", a.get("steps_trained", 0)))


def total_steps_spent(study: Trials) -> int:
    """Training steps the whole study has cost so far: every trial in any state
    (a pruned or failed trial spent its steps too; a running one counts the
    stages it has reached)."""
    return sum(steps_spent(t) for t in _trials(study))


def fully_trained(study: Trials) -> list[FrozenTrial]:
    """COMPLETE, feasible trials: trained through every stage."""
    return [t for t in _trials(study, (TrialState.COMPLETE,))
            if t.value is not None and is_feasible(t)]


def best_first(study: Trials) -> list[FrozenTrial]:
    """COMPLETE feasible trials, best first: highest fitness, then lower latency, then
    the earlier trial."""
    return sorted(fully_trained(study), key=lambda t: (-t.value, t.user_attrs.get("latency_ms", math.inf), t.number))


def best_feasible(study: Trials) -> FrozenTrial | None:
    """The best COMPLETE feasible trial (highest fitness; lower latency breaks ties)."""
    ranked = best_first(study)
    return ranked[0] if ranked else None


def pareto_front(study: Trials) -> list[FrozenTrial]:
    """Fully trained feasible trials that no other beats on both fitness (higher)
    and latency (lower), sorted by latency."""
    trials = sorted(fully_trained(study), key=lambda t: (t.user_attrs["latency_ms"], -t.value))
    front, best = [], -math.inf
    for t in trials:
        if t.value > best:
            front.append(t)
            best = t.value
    return front


def _row(t: FrozenTrial) -> list[str]:
    a = t.user_attrs
    f = fitness(t)
    return [
        str(t.number), t.state.name.lower(), "-" if f is None else f"{f:.4f}",
        f"{a['latency_ms']:.3f}" if "latency_ms" in a else "-",
        f"{a['memory_mb']:.2f}" if "memory_mb" in a else "-",
        f"{a['params']:,}" if "params" in a else "-",
        str(a.get("steps_trained", "-")),
        "yes" if is_feasible(t) else "no",
        a.get("attention_mix", "-"),
    ]


HEADER = ["trial", "state", "fitness", "latency ms", "memory MiB", "params", "steps", "feasible", "attention per layer"]


def format_table(rows: list[list[str]], header: list[str] = HEADER) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def top_trials(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """Feasible fully trained first by fitness, then the rest by fitness."""
    trials = study.get_trials(deepcopy=False, states=FINISHED)
    key = lambda t: (t.state == TrialState.COMPLETE and is_feasible(t), fitness(t) if fitness(t) is not None else -math.inf)  # noqa: E731
    return sorted(trials, key=key, reverse=True)[:top]


def refused_by_check(study: Trials) -> int:
    """Candidates evolution's child check refused (measured over the budget, or not
    buildable) before they could become trials: they are in no trial's parameters,
    only counted in each trial's `evolution:refused`."""
    return sum(list(t.system_attrs.get(REFUSED_KEY) or ()).count("check") for t in _trials(study))


def summary_table(study: optuna.Study, top: int = 5, weights: set[int] | None = None) -> str:
    """The finished count, the top trials and the best feasible one. `weights`: the
    trials whose trained weights are on disk (`nas.checkpoints.weights_on_disk`),
    shown as a column, so a user sees which export without `--retrain`."""
    best = best_feasible(study)
    refused = refused_by_check(study)
    full = fully_trained(study)
    replays = sum("replayed_from" in t.user_attrs for t in full)
    lines = [f"study {study.study_name}: {finished_count(study)} finished trials, "
             f"{len(full)} trained to the end and feasible"
             + (f" ({replays} of them {'a replay' if replays == 1 else 'replays'} of an architecture trained before)"
                if replays else "")
             + (f"; evolution set aside {refused} more candidates measured over the budget" if refused else "")]
    rows = [_row(t) for t in top_trials(study, top)]
    if weights is None:
        lines.append(format_table(rows))
    else:
        # before the attention mix, the one wide column
        mark = lambda r: r[:-1] + ["saved" if int(r[0]) in weights else "-", r[-1]]  # noqa: E731
        lines.append(format_table([mark(r) for r in rows], HEADER[:-1] + ["weights", HEADER[-1]]))
    if best is None:
        lines.append("no feasible fully trained architecture yet")
    else:
        a, row = best.user_attrs, _row(best)  # the row's cells: "-" where a study not made by nas lacks one
        lines.append(f"best feasible: trial {best.number}, fitness {best.value:.4f}, measured latency "
                     f"{row[3]} ms, memory {row[4]} MiB on {a.get('device', '?')}")
        lines.append(f"architecture: {a.get('arch', '?')}")
    return "\n".join(lines)


def failures_table(study: Trials) -> str | None:
    """The failed trials by reason (the `failure` user attribute): how many, the
    latest, and its message; None when no trial failed."""
    failed = _trials(study, (TrialState.FAIL,))
    if not failed:
        return None
    by_reason: dict[str, list[FrozenTrial]] = {}
    for t in failed:
        by_reason.setdefault(str(t.user_attrs.get("failure", "not recorded")), []).append(t)
    rows = []
    for reason, trials in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        last = max(trials, key=lambda t: t.number)
        message = " ".join(str(last.user_attrs.get("failure_message", "-")).split())
        rows.append([reason, str(len(trials)), str(last.number), message[:117] + "..." if len(message) > 120 else message])
    return f"failed trials: {len(failed)}\n" + format_table(rows, ["failure", "trials", "latest", "its message"])
