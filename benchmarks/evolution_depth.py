"""Does evolution change depth under a tight latency budget?

Reads the studies of a benchmark database (e.g. `benchmarks/search.py --db`)
whose names start with any of --prefix, takes every child the EvolutionSampler
bred (the trials with an `evolution:parent` system attribute), and prints, by
how the child's depth compares with its parent's (deeper, the same, shallower):
how many children there were, how many were over the latency budget (so never
trained; the objective records a budget violation as a constraint above 0,
`trial.set_constraint`), and how many were trained; then the share of one-layer
candidates among the trained ones, per study. Nothing is trained; it reads the
file only.

    python benchmarks/evolution_depth.py --db long.db --prefix evolution-s30 evolution-s31
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna  # noqa: E402

from nas.evolution import PARENT_KEY  # noqa: E402
from solver_signal import one_layer_share  # noqa: E402  (this script's folder is on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="SQLite file with recorded studies")
    ap.add_argument("--prefix", nargs="+", required=True, help="study-name prefixes of the evolution runs to read")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{Path(args.db).resolve()}"
    children: Counter[str] = Counter()
    over: Counter[str] = Counter()
    trained: Counter[str] = Counter()
    shares = []
    for summary in optuna.get_all_study_summaries(url):
        if not summary.study_name.startswith(tuple(args.prefix)):
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=url)
        trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        depth = {t.number: t.params.get("depth") for t in trials}
        for t in trials:
            parent = t.system_attrs.get(PARENT_KEY)
            if parent is None or depth.get(parent) is None:
                continue
            change = ("deeper" if depth[t.number] > depth[parent]
                      else "shallower" if depth[t.number] < depth[parent] else "same depth")
            children[change] += 1
            over[change] += max((t.constraints or {}).values(), default=0.0) > 0 and not t.intermediate_values
            trained[change] += bool(t.intermediate_values)
        if (share := one_layer_share(trials)) is not None:
            shares.append(f"{summary.study_name} {share:.0%}")
    print("| child's depth against its parent's | children | over budget (not trained) | trained |")
    print("|---|---|---|---|")
    for change in ("deeper", "same depth", "shallower"):
        n = children[change]
        print(f"| {change} | {n} | {over[change]} ({over[change] / max(n, 1):.0%}) | {trained[change]} |")
    print("\none layer deep, share of the trained candidates: " + ", ".join(shares))


if __name__ == "__main__":
    main()
