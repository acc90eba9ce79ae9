"""What would the hurdles have cut, and lost, on fitness curves already recorded?

Reads every fully trained trial (COMPLETE, with a fitness at each of the given
stages) from the studies of a benchmark database (e.g. the one
`benchmarks/search.py --db` keeps: its no-hurdle runs train every feasible
candidate through all stages), one curve per distinct architecture. Then, for
many random orders of N of those architectures, it replays the curves through
the real `ProgressiveHurdlePruner` (an in-memory Optuna study: report the
fitness at each stage, stop where the pruner says so) and prints, per setting:

- the mean cut: N x the last stage over the steps spent with hurdles;
- how often the best final fitness with hurdles fell more than 1% below the
  best of the same N architectures all trained through (the best was pruned);
- where the trials after the first `min_trials` stopped (share per stage), in
  the random orders and, with --searched PREFIX, in the recorded studies whose
  names start with PREFIX (e.g. the search benchmark's evolution+hurdles runs);

and, about the curves themselves, where the mean fitness at the first stage
sits among them (its percentile) and where the "solvers" (final fitness above
--solved) sat at the first stage.

--step-budget S also replays searches that each spend S training steps (random
orders of all the curves, until S steps are spent), without hurdles and with
each rule, and prints the trials they ran and the best final fitness they found:
the equal-compute comparison of benchmarks/search.py, without the sampler.

--rules picks the hurdle rules to replay (both by default): progressive
(training past a stage waits for its hurdle, nas search's default; see
nas/hurdles.py) and fixed (the first min_trials trials train through and define
every hurdle).

--signal loss replays the same trials with hurdles on minus the validation
loss instead of the fitness (the Evolved Transformer's hurdles compared negative
log perplexity; on MQAR the fitness is accuracy, which stays flat until a late
jump): the pruner sees -loss at each stage before the last, and the best is
still judged on the final fitness. It needs trials that recorded
`stage_metrics` (every trial trained by nas since that attribute exists).

This isolates the hurdle rule from the sampler: the orders are random, so no
evolution is involved, and no training is run (seconds, not hours).

    python benchmarks/hurdle_replay.py --db search.db --stages 50,133,400 --min-trials 2 3 5 8 \
        --searched evolution_hurdles
    python benchmarks/hurdle_replay.py --db curves.db --stages 25,133,400 --signal loss
    python benchmarks/hurdle_replay.py --db search.db --stages 25,50,133,400 --signal loss --min-trials 5 \
        --n 100 --step-budget 16000 --solved 0.99
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from nas.hurdles import ProgressiveHurdlePruner, signal_label  # noqa: E402


def recorded_curves(url: str, stages: tuple[int, ...], signal: str = "fitness",
                    max_latency_ms: float | None = None) -> list[tuple[float, ...]]:
    """One curve per distinct fully trained architecture: the hurdle signal at each
    stage but the last (the fitness, or with signal "loss" minus the validation
    loss), then the final fitness. With `max_latency_ms`, only architectures
    measured within that budget (a tighter one than the studies ran under)."""
    read = ProgressiveHurdlePruner(stages=stages, signal=signal).signal_value  # what the pruner compares
    curves: dict[str, tuple[float, ...]] = {}
    for summary in optuna.get_all_study_summaries(url):
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            iv = t.intermediate_values
            head = [read(t, s) for s in stages[:-1]]
            if stages[-1] not in iv or None in head:
                continue  # not trained through, or recorded before stage_metrics (no loss per stage)
            if max_latency_ms is not None and t.user_attrs.get("latency_ms", float("inf")) > max_latency_ms:
                continue
            key = t.user_attrs.get("arch_hash") or json.dumps(t.params, sort_keys=True)
            curves[key] = (*head, float(iv[stages[-1]]))
    return list(curves.values())


def replay(curves: list[tuple[float, ...]], stages: tuple[int, ...], min_trials: int | None,
           stops: Counter | None = None, progressive: bool = False,
           step_budget: int | None = None) -> tuple[int, float, int]:
    """Steps spent, best final fitness and trials run when `curves`, in this order,
    meet the hurdles (``min_trials=None``: no hurdles, every curve trained through);
    with `step_budget`, no trial starts once that many steps are spent. The stage
    where each trial after the first `min_trials` stopped is counted into `stops`."""
    pruner = (optuna.pruners.NopPruner() if min_trials is None
              else ProgressiveHurdlePruner(stages=stages, min_trials=min_trials, progressive=progressive))
    study = optuna.create_study(direction="maximize", pruner=pruner)
    spent, best = 0, float("-inf")
    for number, curve in enumerate(curves):
        if step_budget is not None and spent >= step_budget:
            return spent, best, number
        trial = study.ask()
        for step, value in zip(stages, curve):
            trial.report(value, step)
            spent_here = step
            if step < stages[-1] and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, curve[-1])
            best = max(best, curve[-1])
        spent += spent_here
        if stops is not None and min_trials is not None and number >= min_trials:
            stops[spent_here] += 1
    return spent, best, len(curves)


def searched_stops(url: str, prefix: str, min_trials: int) -> Counter:
    """Where the trials after the first `min_trials` (of those that trained at all)
    stopped, in the recorded studies whose names start with `prefix`."""
    stops: Counter = Counter()
    for summary in optuna.get_all_study_summaries(url):
        if summary.study_name.startswith(prefix):
            study = optuna.load_study(study_name=summary.study_name, storage=url)
            trained = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and t.intermediate_values]
            stops.update(max(t.intermediate_values) for t in trained[min_trials:])
    return stops


def shares(stops: Counter, stages: tuple[int, ...]) -> str:
    n = sum(stops.values())
    return ", ".join(f"{s}: {stops[s] / n:.0%}" for s in stages) if n else "none"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="SQLite file with recorded studies")
    ap.add_argument("--stages", default="50,133,400", help="stages to replay (the curves must hold them all)")
    ap.add_argument("--min-trials", type=int, nargs="+", default=[2, 3, 5, 8])
    ap.add_argument("--n", type=int, default=35, help="architectures per replayed search")
    ap.add_argument("--orders", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--solved", type=float, default=0.9, help="final fitness above which a curve counts as a solver")
    ap.add_argument("--signal", choices=["fitness", "loss"], default="fitness",
                    help="what the hurdles compare before the last stage: the fitness, or minus the validation loss")
    ap.add_argument("--rules", nargs="+", choices=["progressive", "fixed"], default=["progressive", "fixed"],
                    help="progressive: training past a stage opens once its hurdle is set (nas search's default); "
                         "fixed: the first min_trials trials train through and define every hurdle")
    ap.add_argument("--step-budget", type=int, default=None,
                    help="also replay searches that each spend this many training steps (random orders of all "
                         "the curves), with each rule and without hurdles, as benchmarks/search.py compares them")
    ap.add_argument("--max-latency-ms", type=float, default=None,
                    help="replay only architectures measured within this latency (a tighter budget than recorded)")
    ap.add_argument("--searched", default=None, help="study-name prefix of recorded runs with hurdles, to compare")
    ap.add_argument("--searched-min-trials", type=int, default=5, help="the min_trials those runs used")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stages = tuple(int(s) for s in args.stages.split(","))
    url = f"sqlite:///{Path(args.db).resolve()}"
    curves = recorded_curves(url, stages, args.signal, args.max_latency_ms)
    if len(curves) < args.n:
        why = " with stage_metrics" if args.signal == "loss" else ""
        raise SystemExit(f"only {len(curves)} fully trained architectures{why} at stages {stages} in {args.db}; "
                         f"lower --n")
    finals = np.array([c[-1] for c in curves])
    print(f"{len(curves)} distinct fully trained architectures; final fitness p50 {np.median(finals):.3f}, "
          f"p90 {np.percentile(finals, 90):.3f}, max {finals.max():.3f}; {args.orders} random orders of {args.n}\n")
    first = np.array([c[0] for c in curves])
    pct = lambda x: (first < x).mean()  # noqa: E731
    solvers = sorted(pct(c[0]) for c in curves if c[-1] > args.solved)
    print(f"{signal_label(args.signal)} at step {stages[0]}: the mean sits at the {pct(first.mean()):.0%} percentile; "
          f"{len(solvers)} solvers (final > {args.solved}) sat at percentiles "
          + ", ".join(f"{p:.0%}" for p in solvers) + "\n")
    print(f"hurdles on: {signal_label(args.signal)}\n")
    print("| rule | stages | min_trials | cut (mean) | best lost by > 1% | stopped at (random orders) |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(args.seed)
    orders = [rng.choice(len(curves), args.n, replace=False) for _ in range(args.orders)]
    for rule in args.rules:
        for m in args.min_trials:
            cuts, lost, stops = [], 0, Counter()
            for order in orders:
                chosen = [curves[i] for i in order]
                spent, best, _ = replay(chosen, stages, m, stops, progressive=rule == "progressive")
                full_best = max(c[-1] for c in chosen)
                cuts.append(args.n * stages[-1] / spent)
                lost += best < full_best * 0.99
            print(f"| {rule} | {','.join(map(str, stages))} | {m} | {statistics.fmean(cuts):.2f}x "
                  f"| {lost / len(orders):.0%} | {shares(stops, stages)} |")
    if args.step_budget:
        print(f"\nat an equal budget of {args.step_budget} training steps ({args.orders} random orders of all "
              f"{len(curves)} curves):\n")
        print(f"| hurdles | min_trials | trials (mean) | best final fitness (mean) | best > {args.solved} |")
        print("|---|---|---|---|---|")
        perms = [rng.permutation(len(curves)) for _ in range(args.orders)]
        settings = [("none", None)] + [(rule, m) for rule in args.rules for m in args.min_trials]
        for rule, m in settings:
            runs = [replay([curves[i] for i in perm], stages, m, progressive=rule == "progressive",
                           step_budget=args.step_budget) for perm in perms]
            bests = [best for _, best, _ in runs]
            # An order whose trials all stopped at a hurdle has no final fitness (-inf): say how
            # many, rather than let one of them turn the mean into -inf.
            trained = [b for b in bests if b != float("-inf")]
            mean = f"{statistics.fmean(trained):.3f}" if trained else "-"
            if len(trained) < len(bests):
                mean += f" (in {len(bests) - len(trained)} of {len(bests)} orders none trained through)"
            print(f"| {rule} | {m if m is not None else '-'} | {statistics.fmean(n for _, _, n in runs):.1f} "
                  f"| {mean} | {sum(b > args.solved for b in bests) / len(bests):.0%} |")
    if args.searched:
        m = args.searched_min_trials
        print(f"\nrecorded studies {args.searched}*: trials after the first {m} stopped at "
              f"{shares(searched_stops(url, args.searched, m), stages)}")


if __name__ == "__main__":
    main()
