"""`nas show STUDY`: the top trials, the Pareto front of fitness against latency,
the hurdles, and optionally a plot (matplotlib, an optional extra)."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TextIO

import optuna

from nas.checkpoints import weights_on_disk
from nas.errors import NasError
from nas.hurdles import DEFAULT_MIN_TRIALS, signal_label
from nas.search import BUDGET_ORIGIN_ATTR, CONFIG_ATTR, TRAIN_ATTR, schedule_options
from nas.results import HEADER, _row, failures_table, fitness, format_table, is_feasible, pareto_front, summary_table, total_steps_spent
from nas.stage_signal import format_stage_signals, stage_signals
from nas.storage import default_url, open_storage, redact, sqlite_path


def open_study(study: str, storage: str | None = None) -> optuna.Study:
    """Load an existing study read-only in spirit (nothing is written), with a clear
    error when it does not exist."""
    url = storage or default_url(study)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise NasError(f"no study {study!r}: {path} does not exist; run nas search --study {study} first or pass --storage")
    st = open_storage(url, heartbeat=False, read_only=True)
    names = [s.study_name for s in st.get_all_studies()]
    if study not in names:
        raise NasError(f"no study {study!r} in {redact(url)}; studies there: {', '.join(names) or 'none'}")
    return optuna.load_study(study_name=study, storage=st)


def resolve_study(study: str, storage: str | None = None) -> tuple[str, str | None]:
    """(study name, storage URL) from a study name (with an optional storage URL), or
    from a storage URL alone when that database holds exactly one study."""
    if storage is None and "://" in study:
        names = [s.study_name for s in open_storage(study, heartbeat=False, read_only=True).get_all_studies()]
        if len(names) != 1:
            raise NasError(f"{redact(study)} holds {len(names)} studies ({', '.join(names) or 'none'}); "
                           f"name one, with the URL as its storage (--storage URL, or load_best(NAME, storage=URL))")
        return names[0], study
    return study, storage


def open_nas_study(study: str, storage: str | None = None) -> optuna.Study:
    """`open_study`, refusing a study nas did not make (there is no architecture to
    export from it)."""
    s = open_study(study, storage)
    if not isinstance(s.user_attrs.get(CONFIG_ATTR), dict):
        raise NasError(f"study {study!r} was not made by nas search (no {CONFIG_ATTR}); nothing to export from it")
    return s


def show(study: optuna.Study, *, top: int = 10, out: TextIO | None = None, weights: set[int] | None = None) -> None:
    """Print the study's summary. `weights`: the trials whose weights are on disk (a
    column of the top list), when known."""
    out = sys.stdout if out is None else out  # looked up now: a redirected stdout is honoured
    print(summary_table(study, top=top, weights=weights), file=out)
    print(budget_line(study), file=out)
    front = pareto_front(study)
    print("\nPareto front (fitness against measured latency):", file=out)
    print(format_table([_row(t) for t in front], HEADER) if front else "empty", file=out)
    stages = study.user_attrs.get("nas:config", {}).get("stages")
    if stages and len(stages) > 1:
        print("\n" + hurdles_summary(study, stages), file=out)
    trials = study.get_trials(deepcopy=False)
    steps = total_steps_spent(study)
    replays = sum("replayed_from" in t.user_attrs for t in trials)
    replayed = f" ({replays} {'trial' if replays == 1 else 'trials'} replayed an architecture trained before)"
    failures = failures_table(trials)
    if failures:
        print("\n" + failures, file=out)
    print(f"training steps spent: {steps}" + (replayed if replays else ""), file=out)
    print(training_schedule(study), file=out)


def budget_line(study: optuna.Study) -> str:
    """The hardware budget the study searches under, and where it came from when it
    was derived from a measurement (`--latency-fraction`, or no --latency-ms)."""
    attrs = study.user_attrs  # one storage read
    config = attrs.get(CONFIG_ATTR) or {}
    budget = config.get("budget") or {}
    if budget.get("latency_ms") is None:
        return "budget: not recorded (study not made by nas search)"
    line = f"budget: {budget['latency_ms']:g} ms per batch"
    if config.get("measure_batch"):
        line += f" of {config['measure_batch']}"
    if config.get("device"):
        line += f" on {config['device']}"
    if config.get("measure_dtype", "float32") != "float32":
        line += f" in {config['measure_dtype']}"
    origin = attrs.get(BUDGET_ORIGIN_ATTR)
    if origin and origin["latency_fraction"] == 1:
        line += f" (the {origin['reference']}'s measured latency)"
    elif origin:
        line += (f" ({origin['latency_fraction']:g} x the {origin['reference']}'s measured "
                 f"{origin['reference_latency_ms']:.3f} ms)")
    mem = budget.get("memory_mb")
    return line + (f"; memory {mem:g} MiB" if mem is not None else "; no memory limit")


def training_schedule(study: optuna.Study) -> str:
    """How the study trains its candidates: the options it stored (a study made before
    they were stored, none) over the Trainer's own defaults."""
    attrs = study.user_attrs
    if CONFIG_ATTR not in attrs:
        return "training: not recorded (study not made by nas search)"
    options = schedule_options(attrs.get(TRAIN_ATTR) or {})
    ratio = float(options["min_lr_ratio"])
    after = "a constant rate" if ratio == 1.0 else f"a cosine down to {ratio:g} x the peak"
    return f"training: AdamW, peak learning rate {float(options['lr']):g}, a warm-up, then {after}"


def hurdle_setting(study: optuna.Study) -> tuple[int, str, bool | None, list[str]]:
    """(min_trials, hurdle signal, whether any trial ran under the hurdles, the
    pruners trials ran under) from the trials' `search` attribute, the most common
    setting where workers differed; trials recorded before the signal existed ran
    with hurdles on the fitness. (5, "fitness", None, []) for a study whose trials
    predate the attribute."""
    infos = [t.user_attrs["search"] for t in study.get_trials(deepcopy=False)
             if isinstance(t.user_attrs.get("search"), dict)]
    if not infos:
        return DEFAULT_MIN_TRIALS, "fitness", None, []
    pruners = sorted({str(i.get("pruner")) for i in infos})
    hurdled = [i for i in infos if i.get("pruner") == "hurdles"]
    counts = Counter(int(i["hurdle_trials"]) for i in (hurdled or infos) if "hurdle_trials" in i)
    signals = Counter(str(i.get("hurdle_signal", "fitness")) for i in (hurdled or infos))
    return ((counts.most_common(1)[0][0] if counts else DEFAULT_MIN_TRIALS), signals.most_common(1)[0][0],
            bool(hurdled), pruners)


def hurdles_summary(study: optuna.Study, stages: list[int]) -> str:
    """The hurdles' values (or, for a study searched without them, what they would
    have been) and the stage signal table (`nas.stage_signal`)."""
    m, signal, applied, pruners = hurdle_setting(study)
    signals = stage_signals(study, stages, m, signal)  # computes the hurdles too: read their values from it
    values = ", ".join(f"{s.step}: {s.hurdle:.4f}" for s in signals if s.hurdle is not None) or "none set yet"
    what = signal_label(signal)
    if applied is False:
        head = (f"hurdles: none applied (trials ran with --pruner {', '.join(pruners)}); "
                f"the mean {what} of the first {m} trials at each stage: {values}")
    else:
        head = f"hurdles (step: mean {what} of the first {m} trials to reach it): {values}"
        if _ran_progressive(study):
            head += "\n(progressive: training past a stage waited for its hurdle; the trials that set it stopped there)"
    return (head + f"\nstage signal (does {what} at a hurdle stage predict the final fitness? "
            "see nas/stage_signal.py):\n" + format_stage_signals(signals))


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NasError("--plot needs matplotlib; install it with pip install 'nas[plot]'") from None
    return plt


# The labels of the plot's point sets (tests find them by these).
FEASIBLE, TRAINED_OTHER, UNTRAINED = "feasible", "over budget / pruned", "measured over budget, not trained"


def plot_figure(study: optuna.Study):
    """Fitness against measured latency: feasible fully trained trials, the others
    with a fitness (pruned, or trained and over the memory budget), the Pareto
    front, the budget, and, as marks along the bottom, the candidates measured over
    the budget and never trained (they have a latency but no fitness: without them
    a study of only such candidates drew empty axes)."""
    plt = _pyplot()
    measured = [t for t in study.get_trials(deepcopy=False) if "latency_ms" in t.user_attrs and t.state.is_finished()]
    trials = [t for t in measured if fitness(t) is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    for feas, color, label in ((True, "tab:blue", FEASIBLE), (False, "tab:gray", TRAINED_OTHER)):
        pts = [(t.user_attrs["latency_ms"], fitness(t)) for t in trials
               if (is_feasible(t) and t.state == optuna.trial.TrialState.COMPLETE) == feas]
        if pts:
            ax.scatter(*zip(*pts), s=14, color=color, label=label)
    # Over the budget and so never trained (a failed trial within it is not one of them).
    untrained = [t.user_attrs["latency_ms"] for t in measured
                 if fitness(t) is None and not is_feasible(t) and t.state != optuna.trial.TrialState.FAIL]
    if untrained:
        # x in data units, y in axes units: a rug just above the bottom edge.
        ax.scatter(untrained, [0.02] * len(untrained), transform=ax.get_xaxis_transform(), marker="x", s=14,
                   color="tab:orange", label=UNTRAINED)
    front = pareto_front(study)
    if front:
        ax.plot([t.user_attrs["latency_ms"] for t in front], [t.value for t in front], "-o", color="tab:red", ms=4, label="Pareto front")
    budget = study.user_attrs.get("nas:config", {}).get("budget", {}).get("latency_ms")
    if budget:
        ax.axvline(budget, ls="--", color="k", lw=1, label=f"budget {budget:g} ms")
    ax.set_xlabel("measured latency per batch (ms)")
    ax.set_ylabel("fitness")
    ax.set_title(study.study_name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot(study: optuna.Study, path: str) -> None:
    """`plot_figure`, written to `path`."""
    plt = _pyplot()
    fig = plot_figure(study)
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise NasError(f"cannot write the plot to {path}: {e.strerror or e}; give another --plot path") from None
    finally:
        plt.close(fig)


# Image formats matplotlib's Agg backend writes (checked before any work, without importing it).
PLOT_FORMATS = (".png", ".pdf", ".svg", ".svgz", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp")


def check_plot_path(path: str) -> None:
    """Refuse, before the study is read, a --plot path that cannot be written, or a
    plot without matplotlib (found without importing it)."""
    if importlib.util.find_spec("matplotlib") is None:
        raise NasError("--plot needs matplotlib; install it with pip install 'nas[plot]'")
    p = Path(path)
    if p.is_dir():
        raise NasError(f"--plot {path} is a folder; give a file name in it, e.g. {p / 'study.png'}")
    if p.suffix.lower() not in PLOT_FORMATS:
        raise NasError(f"--plot {path}: unknown image format {p.suffix or '(none)'!r}; end the name with .png, .pdf or .svg")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise NasError(f"--plot: folder {folder} does not exist; create it (mkdir -p {folder}) or give another path")
    if not os.access(folder, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise NasError(f"--plot {path} is not writable; give another path")


def show_main(study_name: str, *, storage: str | None = None, top: int = 10, plot_path: str | None = None) -> int:
    if plot_path:
        check_plot_path(plot_path)
    study_name, storage = resolve_study(study_name, storage)
    study = open_study(study_name, storage)
    show(study, top=top, weights=weights_on_disk(storage or default_url(study_name), study))
    if plot_path:
        plot(study, plot_path)
        print(f"plot written to {plot_path}")
    return 0


def _ran_progressive(study: optuna.Study) -> bool:
    """Whether any trial ran under progressive hurdles (`--hurdle-rule progressive`)."""
    return any(isinstance(i := t.user_attrs.get("search"), dict) and i.get("pruner") == "hurdles"
               and i.get("hurdle_rule") == "progressive" for t in study.get_trials(deepcopy=False))
