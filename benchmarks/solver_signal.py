"""Where do the architectures that learn the task sit at each hurdle stage?

Reads every study of a benchmark database (e.g. `benchmarks/search.py --db`) whose
trials were all trained through (no trial stopped by a pruner: the runs without
hurdles), takes one curve per distinct architecture (its validation loss at each
stage, from the `stage_metrics` user attribute, and its final fitness), splits them
into solvers (final fitness >= --solved) and the rest (one layer deep, or deeper),
and prints, per stage:

- the median loss of each group;
- how many solvers had a loss below the mean loss of all curves there, the bar a
  hurdle on -loss sets (it is the mean of the first trials to get there);

and, for the studies whose names start with --depth-prefix (random search by
default: an unbiased sample of the feasible set), the share of trained candidates
one layer deep, per study. Nothing is trained; it reads the file only.

    python benchmarks/solver_signal.py --db bench.db
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

Curve = tuple[int, float, dict[str, float]]  # depth, final fitness, loss per stage


def unpruned_studies(url: str) -> list[optuna.Study]:
    """The studies in which no trial was stopped by a pruner after training."""
    out = []
    for summary in optuna.get_all_study_summaries(url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        if not any(t.state == TrialState.PRUNED and t.intermediate_values for t in study.get_trials(deepcopy=False)):
            out.append(study)
    return out


def one_layer_share(trials: list[optuna.trial.FrozenTrial]) -> float | None:
    """Share of the trained candidates among `trials` (finished, with a report) that
    are one layer deep; None if none was trained."""
    trained = [t for t in trials if t.state.is_finished() and t.intermediate_values]
    return sum(t.params["depth"] == 1 for t in trained) / len(trained) if trained else None


def curves(studies: list[optuna.Study], last: str) -> dict[str, Curve]:
    """One curve per distinct architecture trained through to stage `last`."""
    out: dict[str, Curve] = {}
    for study in studies:
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            metrics = t.user_attrs.get("stage_metrics") or {}
            if t.value is None or last not in metrics:
                continue
            out[t.user_attrs["arch_hash"]] = (t.params["depth"], t.value, {k: v["loss"] for k, v in metrics.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="SQLite file with recorded studies")
    ap.add_argument("--stages", default="25,50,133,400", help="the stages the studies reported at")
    ap.add_argument("--solved", type=float, default=0.9, help="final fitness from which an architecture counts as a solver")
    ap.add_argument("--depth-prefix", nargs="+", default=["random"],
                    help="study-name prefixes of the runs whose depth mix is printed (any of them)")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{Path(args.db).resolve()}"
    stages = args.stages.split(",")
    studies = unpruned_studies(url)
    by_arch = list(curves(studies, stages[-1]).values())
    groups = {
        "one layer": [c for c in by_arch if c[0] == 1 and c[1] < args.solved],
        "deeper, not solved": [c for c in by_arch if c[0] > 1 and c[1] < args.solved],
        f"solvers (final >= {args.solved})": [c for c in by_arch if c[1] >= args.solved],
    }
    print(f"{len(by_arch)} distinct architectures trained through in {len(studies)} studies without hurdles\n")
    print("| group | n | " + " | ".join(f"median loss at {s}" for s in stages) + " |")
    print("|---|---|" + "---|" * len(stages))
    for name, group in groups.items():
        cells = " | ".join(f"{statistics.median(c[2][s] for c in group):.3f}" if group else "-" for s in stages)
        print(f"| {name} | {len(group)} | {cells} |")
    solvers = groups[f"solvers (final >= {args.solved})"]
    print()
    for s in stages[:-1]:
        mean = statistics.fmean(c[2][s] for c in by_arch)
        below = sum(c[2][s] < mean for c in solvers)
        print(f"step {s}: mean loss {mean:.3f}; solvers below it: {below} of {len(solvers)}")
    shares = []
    for study in studies:
        if study.study_name.startswith(tuple(args.depth_prefix)) and (share := one_layer_share(study.get_trials(deepcopy=False))) is not None:
            shares.append(share)
    if shares:
        print(f"\none layer deep, share of the trained candidates of the {len(shares)} studies "
              f"{', '.join(p + '*' for p in args.depth_prefix)}: "
              + ", ".join(f"{x:.0%}" for x in sorted(shares)))


if __name__ == "__main__":
    main()
