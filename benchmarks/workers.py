"""Trials per minute with 1 and with K parallel workers (`nas search --workers K`)
on the CPU, default task (mqar, default options) and default space.

Short settings so it runs in minutes: --trials 8 --stages 5,20 by default, the
latency budget measured from the vanilla transformer (nas's default). Two rates:
`wall` counts everything from the command's start (process start-up, the
budget measurement, the workers' imports); `trials` counts from the first
trial's start to the last trial's end. Every run uses a fresh SQLite study. Caveat: K workers on fewer cores slow each
other's latency measurements, so more candidates come out over budget (and are
stopped untrained, which is cheap): the "over budget" count says how many.

    python benchmarks/workers.py [--trials 8] [--stages 5,20] [--workers 1,4]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]


def run(workers: int, trials: int, stages: str, folder: Path) -> dict:
    db = folder / f"w{workers}.db"
    cmd = [sys.executable, "-m", "nas.cli", "search", "--study", f"w{workers}", "--storage", f"sqlite:///{db}",
           "--device", "cpu", "--trials", str(trials), "--stages", stages, "--workers", str(workers), "--quiet"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=folder, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"workers={workers} failed:\n{done.stderr[-3000:]}")
    study = optuna.load_study(study_name=f"w{workers}", storage=f"sqlite:///{db}")
    ts = [t for t in study.trials if t.state.is_finished()]
    finished = sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in ts)
    span = (max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)).total_seconds()
    over = sum(str(t.user_attrs.get("stopped", "")).startswith("over budget") for t in ts)
    return {"workers": workers, "finished": finished, "over_budget": over, "wall_s": wall, "trial_span_s": span,
            "per_min_wall": finished / wall * 60, "per_min_trials": finished / span * 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--stages", default="5,20")
    ap.add_argument("--workers", default="1,4")
    args = ap.parse_args()
    print(f"cpu cores: {os.cpu_count()}; task mqar (defaults), space default, device cpu, "
          f"trials {args.trials}, stages {args.stages}, budget: vanilla transformer's measured latency")
    with tempfile.TemporaryDirectory() as tmp:
        for k in (int(x) for x in args.workers.split(",")):
            r = run(k, args.trials, args.stages, Path(tmp))
            print(f"workers {r['workers']}: {r['finished']} trials, {r['wall_s']:.1f} s wall -> "
                  f"{r['per_min_wall']:.1f} trials/min (wall), {r['per_min_trials']:.1f} trials/min "
                  f"(first trial start to last end, {r['trial_span_s']:.1f} s); {r['over_budget']} stopped over budget untrained",
                  flush=True)


if __name__ == "__main__":
    main()
