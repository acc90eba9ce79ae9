"""Search strategies compared on training steps spent, at equal step budget.

Runs, for each seed, four searches on the default task and space under one
latency budget, each until it has spent --step-budget training steps (or, with
--trials instead, for N trials each):
  evolution+hurdles   EvolutionSampler + ProgressiveHurdlePruner (on -loss, progressive: the defaults)
  evolution           EvolutionSampler, every feasible candidate fully trained
  tpe                 Optuna's TPESampler, fully trained
  random              Optuna's RandomSampler, fully trained
and prints best feasible fitness against cumulative training steps, the total
steps, and the ratios the hurdles are judged by (for evolution+hurdles against
evolution, and likewise for any other method with hurdles whose sampler ran
without them too, e.g. tpe+hurdles against tpe):
  - the cut at equal fitness: evolution's total steps over the steps
    evolution+hurdles needed to reach evolution's final best within 1%;
  - the cut at equal trial count: evolution's total steps over those of
    evolution+hurdles' first as many trials, with the best fitness of both;
  - steps evolution+hurdles needed to reach random search's final best, as a
    fraction of random's total steps;
  - both targets once more on the mean curves (mean over seeds of the best
    found within S steps, a seed without a trained candidate yet counting 0):
    the steps by which evolution+hurdles' mean came within 1% of evolution's
    mean final best, and reached random's mean final best;
  - how far those two can be trusted: a paired bootstrap over the seeds, with the
    share of draws meeting each target (>= 2.5x; <= half of random's steps).
It also prints each method's best within its first N trials, which is what a user
running `nas search --trials N` gets, with how many of its trials were over budget.
With a step budget, hurdles spend fewer steps per trial and so run more trials:
the comparison the Evolved Transformer made (So et al. 2019, section 3).

All studies share one SQLite file, hence one measurement cache: an architecture
has the same measured latency in every run, so the strategies face exactly the
same feasible set. The budget is the measured latency of the space's vanilla
transformer (the `nas search` default), or --latency-ms, or --latency-fraction F:
F times that vanilla latency, measured by the first run (F = 0.5: the searches
must find an architecture twice as fast as the vanilla transformer, the case
the tool exists for; at F = 1 many architectures that solve MQAR are feasible and
random search finds one in every seed, README).

The searches start from scratch: `nas search` enqueues that vanilla transformer
as its first trial, but here it would hand every method the same (on MQAR, the
best) architecture at trial 0 and the comparison would say nothing; pass
--warm-start to include it anyway.

Seeds can run in parallel processes on one --db (SQLite takes concurrent
writers; the measurement cache is then shared): give each process its
--seeds and the same --latency-ms, then run once more with all seeds and the
same arguments: finished studies are only read back, and the tables cover all.
(With --latency-fraction, run it once first to print the budget in ms, or read it
from the first process's output, and give the others that --latency-ms: each
process would otherwise measure the vanilla transformer itself.)

    python benchmarks/search.py --seeds 0 1 2 --step-budget 16000 --steps 400
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from nas.hurdles import HURDLE_SIGNALS, signal_label  # noqa: E402
from nas.results import fitness, is_feasible, steps_spent  # noqa: E402
from nas.search import Search, SearchConfig  # noqa: E402
from nas.stage_signal import StageSignal, stage_signals  # noqa: E402

METHODS = {
    "evolution+hurdles": dict(sampler="evolution", pruner="hurdles"),
    "evolution": dict(sampler="evolution", pruner="none"),
    "tpe": dict(sampler="tpe", pruner="none"),
    "random": dict(sampler="random", pruner="none"),
    # Not in the comparison (pass --methods to add them): does TPE gain from
    # hurdles too? What did hurdles on the fitness (accuracy on MQAR) give?
    "tpe+hurdles": dict(sampler="tpe", pruner="hurdles"),
    # The fixed hurdle rule (nas.hurdles): the first --hurdle-trials trials train through and
    # set every hurdle; the default before the progressive rule.
    "evolution+fixed-hurdles": dict(sampler="evolution", pruner="hurdles", hurdle_rule="fixed"),
    "evolution+fitness-hurdles": dict(sampler="evolution", pruner="hurdles", hurdle_signal="fitness"),
    # Evolution whose tournament compares the fitness (--selection-signal fitness),
    # the default before minus the loss.
    "fitness-evolution+hurdles": dict(sampler="evolution", pruner="hurdles", selection_signal="fitness"),
    "fitness-evolution": dict(sampler="evolution", pruner="none", selection_signal="fitness"),
    # One hurdle only, at a third of the steps (133 of 400), whatever --stages says: nas
    # search's default stages since 2026-12-01 (on MQAR the loss at steps 25 and 50 comes
    # before the phase change and ranks candidates poorly). Its studies keep their own
    # stages, so they compare in one read-back with runs given other --stages.
    "evolution+late-hurdles": dict(sampler="evolution", pruner="hurdles", stage_fractions=(1 / 3, 1)),
    # Evolution whose children re-draw each choice with probability 0.5 instead of 0.2:
    # closer to random search, for a task where the solvers are rare and the fittest
    # non-solvers do not point at them.
    "evolution-explore": dict(sampler="evolution", pruner="none", mutation_prob=0.5),
    # Evolution that tries its children as drawn, over the budget or not (--no-budget-check):
    # nas search's evolution until 2026-12-02, so the studies named evolution+hurdles and
    # evolution in files made before then ran this way.
    "blind-evolution+hurdles": dict(sampler="evolution", pruner="hurdles", budget_aware=False),
    "blind-evolution": dict(sampler="evolution", pruner="none", budget_aware=False),
    # Children measured within the budget before they are proposed, a refused child
    # followed by fresh marks (--on-refusal fresh).
    "checked-evolution+hurdles": dict(sampler="evolution", pruner="hurdles", on_refusal="fresh"),
    "checked-evolution": dict(sampler="evolution", pruner="none", on_refusal="fresh"),
    # The same, a refused child followed by its own marks plus one more (--on-refusal
    # extend): a child that added a layer keeps it and may cheapen another choice to fit.
    # nas search's default since 2026-12-02, under names of its own for files made
    # before, whose evolution+hurdles and evolution studies are blind ones.
    "extend-evolution+hurdles": dict(sampler="evolution", pruner="hurdles", on_refusal="extend"),
    "extend-evolution": dict(sampler="evolution", pruner="none", on_refusal="extend"),
}
DEFAULT_METHODS = ["evolution+hurdles", "evolution", "tpe", "random"]


def trajectory(study: optuna.Study) -> list[tuple[int, float | None]]:
    """(cumulative training steps, best feasible fully trained fitness) after each trial, in order."""
    steps, best, out = 0, None, []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if not t.state.is_finished():
            continue
        steps += steps_spent(t)
        if t.state == optuna.trial.TrialState.COMPLETE and is_feasible(t) and fitness(t) is not None:
            best = fitness(t) if best is None else max(best, fitness(t))
        out.append((steps, best))
    return out


def steps_to_reach(traj: list[tuple[int, float | None]], target: float) -> int | None:
    for steps, best in traj:
        if best is not None and best >= target - 1e-12:
            return steps
    return None


def best_within(traj: list[tuple[int, float | None]], budget: int) -> float | None:
    """Best feasible fitness reached by the time `budget` training steps were spent."""
    best = None
    for steps, b in traj:
        if steps > budget:
            break
        best = b
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--step-budget", type=int, default=None, help="training steps each run may spend (the default mode)")
    ap.add_argument("--trials", type=int, default=None, help="trials per run instead of a step budget")
    ap.add_argument("--steps", type=int, default=240, help="steps of a fully trained candidate")
    ap.add_argument("--stages", default=None, help="hurdle stages, default steps/3, steps (nas search's)")
    ap.add_argument("--latency-ms", type=float, default=None)
    ap.add_argument("--latency-fraction", type=float, default=None,
                    help="budget = this fraction of the vanilla transformer's latency, measured by the first run")
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    ap.add_argument("--warm-start", action="store_true", help="enqueue the vanilla transformer first, as nas search does")
    ap.add_argument("--db", default=None, help="SQLite file to keep (default: a temporary one)")
    args = ap.parse_args()
    if args.trials is None and args.step_budget is None:
        args.step_budget = 40 * args.steps  # what 40 fully trained candidates cost
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp()) / "bench.db"
    url = f"sqlite:///{db}"
    stages = tuple(int(s) for s in args.stages.split(",")) if args.stages else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, list[list[tuple[int, float | None]]]] = {m: [] for m in args.methods}
    over_budget: dict[str, list[int]] = {m: [] for m in args.methods}  # trials measured over the budget, per run
    signals: dict[tuple[str, str], list[list[StageSignal]]] = {}
    budget = args.latency_ms
    if args.latency_fraction is not None and budget is not None:
        raise SystemExit("--latency-fraction and --latency-ms both set the budget; give one")
    t_start = time.time()
    for seed in args.seeds:
        for method in args.methods:
            name = f"{method.replace('+', '_')}-s{seed}"
            options = dict(METHODS[method])
            fractions = options.pop("stage_fractions", None)
            method_stages = tuple(sorted({max(1, round(args.steps * f)) for f in fractions})) if fractions else stages
            cfg = SearchConfig(study=name, storage=url, trials=args.trials, step_budget=args.step_budget, seed=seed, steps=args.steps,
                               stages=method_stages, latency_ms=budget, warm_start=args.warm_start, **options,
                               latency_fraction=args.latency_fraction if budget is None else None)
            t0 = time.time()
            log = io.StringIO()
            search = Search(cfg, log=log)
            if budget is None:
                print(log.getvalue().splitlines()[0], flush=True)  # how the budget was derived
            budget = search.budget.latency_ms  # the first run fixes the budget for all
            study = search.run(progress=False)
            traj = trajectory(study)
            results[method].append(traj)
            over_budget[method].append(sum(str(t.user_attrs.get("stopped", "")).startswith("over budget")
                                           for t in study.get_trials(deepcopy=False)))
            for signal in HURDLE_SIGNALS:
                signals.setdefault((method, signal), []).append(
                    stage_signals(study, search.stages, search.cfg.hurdle_trials, signal))
            print(f"seed {seed} {method:<24} trials {len(traj):>3}  steps {traj[-1][0]:>6}  "
                  f"best {traj[-1][1] if traj[-1][1] is not None else float('nan'):.4f}  ({time.time() - t0:.0f} s)",
                  flush=True)
    limit = f"{args.step_budget} training steps" if args.step_budget else f"{args.trials} trials"
    print(f"\nbudget {budget:.3f} ms per batch; {limit} per run; seeds {args.seeds}; "
          f"total {time.time() - t_start:.0f} s\n")
    print("| method | trials (mean) | total training steps (mean) | best feasible fitness (mean) | per seed: steps / best |")
    print("|---|---|---|---|---|")
    for method, runs in results.items():
        steps = [r[-1][0] for r in runs]
        bests = [r[-1][1] or 0.0 for r in runs]
        per = "; ".join(f"{s} / {b:.4f}" for s, b in zip(steps, bests))
        print(f"| {method} | {statistics.mean(len(r) for r in runs):.1f} | {statistics.mean(steps):.0f} | "
              f"{statistics.mean(bests):.4f} | {per} |")
    # The same runs read at equal training-step budgets: best fitness each method had
    # found by the time it had spent S steps (mean over seeds; a seed with no fully
    # trained feasible trial by then counts as "-" and is left out of the mean).
    top = max(r[-1][0] for runs in results.values() for r in runs)
    grid = sorted({max(1, int(top * f)) for f in (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1)})
    print("\nbest feasible fitness within S training steps (mean over seeds, [seeds with one])\n")
    print("| method | " + " | ".join(f"S={g}" for g in grid) + " |")
    print("|---|" + "---|" * len(grid))
    for method, runs in results.items():
        cells = []
        for g in grid:
            vals = [v for v in (best_within(r, g) for r in runs) if v is not None]
            cells.append(f"{statistics.mean(vals):.4f} [{len(vals)}]" if vals else "-")
        print(f"| {method} | " + " | ".join(cells) + " |")
    print_equal_trials(results, over_budget)
    if "random" in results:
        print("\n" + bootstrap_against_random(results))
    # Each method with hurdles against the same sampler without them, and against random.
    for hurdled, plain in hurdle_pairs(list(results)):
        print(f"\n{hurdled} against {plain}:")
        print(equal_fitness_cut(results[hurdled], results[plain], hurdled, plain))
        print(equal_trials_cut(results[hurdled], results[plain], plain))
        if "random" in results:
            for tol, what in ((0.0, "exactly"), (0.01, "within 1%")):
                print(reach_fraction(results[hurdled], results["random"], tol, what, hurdled))
        print(mean_curve_cuts(results[hurdled], results[plain], results.get("random"), hurdled, plain))
        print(bootstrap_mean_curves(results[hurdled], results[plain], results.get("random"), hurdled, plain))
    print_stage_signals({k: v for k, v in signals.items() if METHODS[k[0]]["pruner"] == "none"})


def print_equal_trials(results: dict[str, list[Traj]], over_budget: dict[str, list[int]]) -> None:
    """The same runs read at equal trial counts, which is what `nas search --trials N`
    gives a user: best feasible fitness among each run's first N finished trials
    (mean over seeds; a seed without a trained feasible trial by then counts 0; a run
    that ended with fewer than N trials counts with all of them, and the brackets say
    how many runs had N). Over-budget trials count as trials here, as they do for
    --trials, though they cost no training steps."""
    grid = (10, 20, 30, 40, 60)
    print("\nbest feasible fitness within the first N trials (mean over seeds, [runs with N trials])\n")
    print("| method | trials over the budget (mean) | " + " | ".join(f"N={n}" for n in grid) + " |")
    print("|---|---|" + "---|" * len(grid))
    for method, runs in results.items():
        cells = [f"{statistics.mean((r[min(n, len(r)) - 1][1] or 0.0) for r in runs):.4f} "
                 f"[{sum(len(r) >= n for r in runs)}]" for n in grid]
        print(f"| {method} | {statistics.mean(over_budget[method]):.1f} | " + " | ".join(cells) + " |")


def print_stage_signals(signals: dict[tuple[str, str], list[list[StageSignal]]]) -> None:
    """What the hurdles would have cut in the runs that trained every candidate to
    the end (`nas.stage_signal`), pooled over seeds, with hurdles on either signal:
    does the fitness, or minus the loss, at each hurdle stage predict the final
    fitness on this task?"""
    if not signals:
        return
    print("\nstage signal of the runs without hurdles (each run's own hurdle: mean of its first trials there)\n")
    print("| method | signal | step | cleared | rank corr. with final (mean over seeds) | top quarter cleared | "
          "seeds whose best final was below the hurdle |")
    print("|---|---|---|---|---|---|---|")
    for (method, signal), runs in signals.items():
        for k in range(min(len(r) for r in runs)):
            sig = [r[k] for r in runs if r[k].hurdle is not None]
            corr = [r[k].rank_corr for r in runs if r[k].rank_corr is not None]
            lost = sum(bool(s.best_lost) for s in sig)
            print(f"| {method} | {signal_label(signal)} | {runs[0][k].step} | "
                  f"{sum(s.cleared for s in sig)} of {sum(s.reported for s in sig)} | "
                  f"{statistics.mean(corr) if corr else float('nan'):.2f} | "
                  f"{sum(s.top_cleared for s in sig)} of {sum(s.top for s in sig)} | {lost} of {len(sig)} |")


Traj = list[tuple[int, float | None]]


def hurdle_pairs(methods: list[str]) -> list[tuple[str, str]]:
    """(method with hurdles, the same sampler and selection without them), both run."""
    return [(m, m.split("+")[0]) for m in methods
            if METHODS[m]["pruner"] == "hurdles" and m.split("+")[0] in methods]  # e.g. evolution+late-hurdles: evolution


def _ratio(num: list[int], den: list[int | None]) -> str:
    """mean(num) / mean(den), or why there is none (a seed that never got there)."""
    if any(d is None for d in den):
        return "undefined (" + ", ".join(f"run {i + 1} never" for i, d in enumerate(den) if d is None) + ")"
    return f"{statistics.mean(num) / statistics.mean(den):.2f}x"


def equal_fitness_cut(h: list[Traj], e: list[Traj], hurdled: str, plain: str) -> str:
    """The run without hurdles' total steps over the steps the run with hurdles spent
    to reach its final best within 1%, per seed and as a ratio of the means."""
    reach = [steps_to_reach(h_r, 0.99 * e_r[-1][1]) if e_r[-1][1] is not None else None for h_r, e_r in zip(h, e)]
    per = ", ".join("never" if r is None else f"{e_r[-1][0] / r:.2f}x" for r, e_r in zip(reach, e))
    return (f"cut at equal fitness ({plain}'s total steps / steps {hurdled} needed to come within 1% of "
            f"{plain}'s final best): {_ratio([e_r[-1][0] for e_r in e], reach)}; per seed {per}")


def equal_trials_cut(h: list[Traj], e: list[Traj], plain: str) -> str:
    """Steps and best fitness of the hurdled run's first n trials, n = the trials the plain run ran."""
    e_steps, h_steps, gaps, e_best = [], [], [], []
    for h_r, e_r in zip(h, e):
        n = min(len(e_r), len(h_r))
        e_steps.append(e_r[n - 1][0])
        h_steps.append(h_r[n - 1][0])
        e_best.append(e_r[n - 1][1] or 0.0)
        gaps.append(e_best[-1] - (h_r[n - 1][1] or 0.0))
    per = ", ".join(f"{a / max(1, b):.2f}x" for a, b in zip(e_steps, h_steps))
    return (f"cut at equal trial count (the first n trials of both, n = {plain}'s): "
            f"{_ratio(e_steps, h_steps)} (per seed {per}); "
            f"best fitness without hurdles minus with: {statistics.mean(gaps):+.4f} "
            f"({statistics.mean(gaps) / max(1e-9, statistics.mean(e_best)) * 100:+.2f}% of the no-hurdle best)")


CURVE_RESOLUTION = 25  # steps between the points at which the mean curves are read
CUT_TARGET, REACH_TARGET = 2.5, 0.5  # issue 4: cut >= 2.5x; random's best within <= half its steps


def curve_matrix(runs: list[Traj], top: int, resolution: int = CURVE_RESOLUTION) -> tuple[np.ndarray, np.ndarray]:
    """(S, B): S = resolution, 2*resolution, ... up to `top`; B[i, j] = the best feasible
    fitness run i had found within S[j] steps, 0 before its first fully trained candidate."""
    grid = np.arange(resolution, top + resolution, resolution)
    return grid, np.array([[best_within(r, int(s)) or 0.0 for s in grid] for r in runs])


def first_reaching(grid: np.ndarray, mean_curve: np.ndarray, target: float) -> int | None:
    """The first S on `grid` where `mean_curve` reaches `target`, None if it never does."""
    hit = np.flatnonzero(mean_curve >= target - 1e-12)
    return int(grid[hit[0]]) if hit.size else None


def mean_curve_steps(runs: list[Traj], target: float, resolution: int = CURVE_RESOLUTION) -> int | None:
    """The fewest training steps S (a multiple of `resolution`) by which the mean over
    seeds of the best feasible fitness found within S steps reaches `target`; a seed
    with no fully trained feasible trial by then counts 0. None if it never does."""
    grid, curves = curve_matrix(runs, max(r[-1][0] for r in runs), resolution)
    return first_reaching(grid, curves.mean(axis=0), target)


def mean_curve_cuts(h: list[Traj], e: list[Traj], r: list[Traj] | None, hurdled: str, plain: str) -> str:
    """The two targets read on the mean curves (what the table above prints) rather
    than seed by seed: the cut at equal fitness, and the share of random's steps."""
    e_final = statistics.mean(run[-1][1] or 0.0 for run in e)
    e_steps = statistics.mean(run[-1][0] for run in e)
    s = mean_curve_steps(h, 0.99 * e_final)
    lines = [f"on the mean curves (a seed without a trained candidate yet counts 0): {hurdled} came within 1% of "
             f"{plain}'s mean final best ({e_final:.4f}) after "
             + ("never" if s is None else f"{s} steps: a cut of {e_steps / s:.2f}x")]
    if r is not None:
        r_final = statistics.mean(run[-1][1] or 0.0 for run in r)
        r_steps = statistics.mean(run[-1][0] for run in r)
        s = mean_curve_steps(h, r_final)
        lines.append(f"on the mean curves: {hurdled} reached random's mean final best ({r_final:.4f}) after "
                     + ("never" if s is None else f"{s} steps, {s / r_steps:.2f} of random's"))
    return "\n".join(lines)


def bootstrap_against_random(results: dict[str, list[Traj]], n: int = 2000, seed: int = 0) -> str:
    """Each method's mean final best minus random search's, with a paired bootstrap
    over seeds (as in `bootstrap_mean_curves`): the 5th, 50th and 95th percentiles of
    the difference and the share of draws in which the method was ahead. Outcomes on
    MQAR are bimodal (a run finds a solver or stays near 0.27), so with ten seeds a
    difference of one seed's flip is about 0.07."""
    r_final = np.array([run[-1][1] or 0.0 for run in results["random"]])
    lines = [f"final best against random search (paired bootstrap over seeds, {n} draws of {len(r_final)}):"]
    for method, runs in results.items():
        if method == "random" or len(runs) != len(r_final):
            continue
        m_final = np.array([run[-1][1] or 0.0 for run in runs])
        rng = np.random.default_rng(seed)
        diffs = np.array([(m_final[idx] - r_final[idx]).mean()
                          for idx in (rng.integers(0, len(r_final), len(r_final)) for _ in range(n))])
        q = np.percentile(diffs, [5, 50, 95])
        lines.append(f"  {method}: {m_final.mean() - r_final.mean():+.4f} (5th/50th/95th percentile "
                     f"{q[0]:+.4f}, {q[1]:+.4f}, {q[2]:+.4f}); ahead in {np.mean(diffs > 0):.0%} of draws")
    return "\n".join(lines)


def bootstrap_mean_curves(h: list[Traj], e: list[Traj], r: list[Traj] | None, hurdled: str, plain: str,
                          n: int = 2000, seed: int = 0) -> str:
    """How far the mean-curve reading of the targets can be trusted, with this many seeds.

    A paired bootstrap over seeds (Efron & Tibshirani 1993, ch. 6): draw the seed
    indices with replacement, n times; every method takes the same draw, as they
    ran on the same seeds (one seed fixes the training randomness, so one seed's
    runs share their luck). Each draw gives both targets on its mean curves, as
    `mean_curve_cuts` reads them. Reported: the share of draws meeting each target
    and the 5th, 50th and 95th percentiles ("never" sorts as no cut, as infinitely
    many of random's steps)."""
    top = max(run[-1][0] for run in h)
    grid, hc = curve_matrix(h, top)
    e_final = np.array([run[-1][1] or 0.0 for run in e])
    e_steps = np.array([run[-1][0] for run in e], dtype=float)
    r_final = np.array([run[-1][1] or 0.0 for run in r]) if r is not None else None
    r_steps = np.array([run[-1][0] for run in r], dtype=float) if r is not None else None
    rng = np.random.default_rng(seed)
    cuts, fracs = [], []
    for _ in range(n):
        idx = rng.integers(0, len(h), len(h))
        curve = hc[idx].mean(axis=0)
        s = first_reaching(grid, curve, 0.99 * e_final[idx].mean())
        cuts.append(0.0 if s is None else e_steps[idx].mean() / s)
        if r_final is not None:
            s = first_reaching(grid, curve, r_final[idx].mean())
            fracs.append(np.inf if s is None else s / r_steps[idx].mean())

    def spread(values: list[float]) -> str:
        q = np.percentile(values, [5, 50, 95], method="nearest")  # no interpolating with "never"
        return ", ".join("never" if v in (0.0, np.inf) else f"{v:.2f}" for v in q)

    lines = [f"bootstrap over seeds ({n} paired draws of {len(h)}): the cut on the mean curves is "
             f">= {CUT_TARGET}x in {np.mean(np.array(cuts) >= CUT_TARGET):.0%} of draws "
             f"(5th/50th/95th percentile: {spread(cuts)}x)"]
    if fracs:
        lines.append(f"bootstrap over seeds: {hurdled} reached random's mean final best within "
                     f"{REACH_TARGET} of its steps in {np.mean(np.array(fracs) <= REACH_TARGET):.0%} of draws "
                     f"(5th/50th/95th percentile: {spread(fracs)})")
    return "\n".join(lines)


def reach_fraction(h: list[Traj], r: list[Traj], tol: float, what: str, hurdled: str) -> str:
    fracs = []
    for h_r, r_r in zip(h, r):
        target = r_r[-1][1]
        reach = steps_to_reach(h_r, (1 - tol) * target) if target is not None else None
        fracs.append(None if reach is None else reach / r_r[-1][0])
    shown = ", ".join("never" if f is None else f"{f:.2f}" for f in fracs)
    return f"{hurdled} reached random search's final best ({what}) after this fraction of random's steps, per seed: {shown}"


if __name__ == "__main__":
    main()
