"""The `nas` command line: search, worker, show, export.

Every user error ends as one line on stderr, `nas: error: <problem>; <fix>`, and
exit status 2, before anything stored is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

from nas.choices import MEASURE_DTYPES, PRUNERS, SAMPLERS
from nas.evolution import ON_REFUSAL
from nas.hurdles import (DEFAULT_HURDLE_RULE, DEFAULT_HURDLE_SIGNAL, DEFAULT_MIN_TRIALS, DEFAULT_SELECTION_SIGNAL,
                         HURDLE_RULES, HURDLE_SIGNALS)

EXIT_USAGE = 2
DEFAULT_TRIALS = 30
STORAGE_ENV = "NAS_STORAGE"  # every command reads its storage URL from here when --storage is not given


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other user error:
    `nas: error: <problem> (see nas <command> --help)`, exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"nas: error: {message.strip().splitlines()[0]} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def _unit_fraction(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text} must be in (0, 1]: a share of the peak learning rate")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _duration(text: str) -> float:
    from nas.search import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _stages(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated step counts, e.g. 50,150,400") from None


# Task options whose values are text whatever they look like: a corpus file named
# 123 or null is still a file (JSON would make them a number and None).
TEXT_OPTIONS = ("path", "sha256")


def _task_options(items: Sequence[str]) -> dict:
    """--task-option NAME=VALUE pairs; VALUE read as JSON (numbers, true/false),
    else as text, and always as text for TEXT_OPTIONS."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--task-option {item!r} must look like NAME=VALUE")
        k, v = item.split("=", 1)
        if k in TEXT_OPTIONS:
            out[k] = v
            continue
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v  # a plain string
    return out


def _add_storage_arg(p: argparse.ArgumentParser) -> None:
    """--storage, the same for every command: a multi-machine setup exports the URL
    once (README, "Many machines") and search, worker, show and export all use it."""
    p.add_argument("--storage", default=os.environ.get(STORAGE_ENV) or None,
                   help=f"database URL of the study (default: ${STORAGE_ENV} if set, else sqlite:///studies/NAME.db; "
                        f"postgresql://... for many machines); put a URL with a password in ${STORAGE_ENV} "
                        f"to keep it out of the process list")


def _add_search_args(p: argparse.ArgumentParser, *, worker: bool) -> None:
    p.add_argument("--study", required=True, help="study name (its SQLite file is studies/NAME.db by default)")
    _add_storage_arg(p)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto: cuda when there is one)")
    p.add_argument("--trials", type=int, default=None,
                   help=f"finished trials in total (resume counts those already done; default {DEFAULT_TRIALS}, "
                        "or no limit when --step-budget or --timeout is given)")
    p.add_argument("--step-budget", type=_positive_int, metavar="STEPS",
                   help="training steps the study may spend in total, all trials and workers together; no trial starts "
                        "once they are spent (with --trials too, whichever comes first)")
    p.add_argument("--timeout", type=_duration, metavar="DURATION",
                   help="wall-clock time this run may start trials for, e.g. 3600, 90m or 8h; the trial running then "
                        "finishes, and the same command continues the study (with --trials or --step-budget too, "
                        "whichever comes first)")
    # Set by `--workers K` for its worker processes: the command's start, which --timeout counts from.
    p.add_argument("--started-at", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--keep-checkpoints", type=_positive_int, metavar="K",
                   help="keep the trained weights of the K best trials and of the Pareto front only (default: every "
                        "trained trial's); the others still export with --retrain")
    p.add_argument("--sampler", default=None, choices=SAMPLERS,
                   help="default evolution; a resumed study (or a worker) keeps the one it was made with")
    p.add_argument("--pruner", default=None, choices=PRUNERS,
                   help="default hurdles; a resumed study (or a worker) keeps the one it was made with")
    p.add_argument("--seed", type=int, default=None,
                   help="training seed of every candidate (default 0; a resumed study keeps its own)")
    # Set by `--workers K` for its workers: each samples with its own seed.
    p.add_argument("--sampler-seed", type=int, default=None, help=argparse.SUPPRESS)
    # The search's choices default to None: a new study's defaults, a resumed study's (or a
    # worker's) own (nas.search.DEFAULT_CHOICES).
    kept = "a resumed study (or a worker) keeps its own"
    p.add_argument("--population", type=int, help=f"evolution population size P (default 12; {kept})")
    p.add_argument("--tournament", type=int, help=f"evolution tournament size S (default 4; {kept})")
    p.add_argument("--mutation-prob", type=float,
                   help=f"evolution: the chance each choice of a child is drawn again (default 0.2; {kept})")
    p.add_argument("--no-budget-check", dest="budget_aware", action="store_const", const=False,
                   help="evolution: try every child as drawn, instead of drawing again (up to 8 times) while its "
                        f"measured latency or memory is over the budget ({kept})")
    p.add_argument("--budget-check", dest="budget_aware", action="store_const", const=True,
                   help="evolution: draw a child over the budget again (the default; undoes a study's --no-budget-check)")
    p.add_argument("--on-refusal", choices=ON_REFUSAL,
                   help="evolution, after a child over the budget: extend its re-drawn choices by one (default; a "
                        f"child that added a layer keeps it and may get cheaper elsewhere) or draw fresh ones ({kept})")
    p.add_argument("--hurdle-trials", type=int,
                   help=f"trials whose mean sets each hurdle (default {DEFAULT_MIN_TRIALS}; {kept})")
    p.add_argument("--hurdle-signal", choices=HURDLE_SIGNALS,
                   help="what the hurdles compare: minus the validation loss (default, as the Evolved Transformer "
                        f"compared log perplexity) or the fitness ({kept})")
    p.add_argument("--hurdle-rule", choices=HURDLE_RULES,
                   help="progressive: training past a stage opens once its hurdle is set, and the trials that set it "
                        "stop there, as in the Evolved Transformer; fixed: the first --hurdle-trials trials train "
                        f"through and set every hurdle (default {DEFAULT_HURDLE_RULE}; {kept})")
    p.add_argument("--selection-signal", choices=HURDLE_SIGNALS,
                   help=f"what the evolution tournament compares: the fitness or minus the validation loss at the "
                        f"trial's last stage (default {DEFAULT_SELECTION_SIGNAL}; {kept})")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    if worker:
        return
    p.add_argument("--space", help="built-in space name or a .toml file (default: default; a resumed study keeps its own)")
    p.add_argument("--task", help="mqar | listops | text (default mqar; a resumed study keeps its own, with its options)")
    p.add_argument("--task-option", action="append", metavar="NAME=VALUE", help="a task knob, e.g. num_kv_pairs=16 or path=corpus.txt")
    p.add_argument("--latency-ms", type=_positive_float, help="latency budget per batch in ms (default: the measured latency of a vanilla transformer)")
    p.add_argument("--latency-fraction", type=_positive_float,
                   help="latency budget as a share of the vanilla transformer's latency, measured when the study is "
                        "made (0.5: twice as fast); instead of --latency-ms")
    p.add_argument("--memory-mb", type=_positive_float, help="peak inference memory budget in MiB (default: none)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps of a candidate that clears every hurdle (default 400; with --stages, its last)")
    p.add_argument("--stages", type=_stages, help="hurdle stages as step counts, e.g. 50,130,400 (default: steps/3, steps)")
    p.add_argument("--no-warm-start", action="store_true", help="do not seed the search with a vanilla transformer")
    p.add_argument("--lr", type=_positive_float, help="peak learning rate of every candidate's training (default: the trainer's, 3e-3)")
    p.add_argument("--min-lr-ratio", type=_unit_fraction,
                   help="after the warm-up the learning rate follows a cosine down to this share of the peak (default 1: "
                        "constant, with which capable architectures learn the default task far more often; 0.1 was the default before)")
    p.add_argument("--workers", type=_positive_int, default=1, help="worker processes on this machine (one per GPU, or CPU threads split)")
    p.add_argument("--measure-threads", type=int, help="CPU threads for latency measurement (default 1: the most repeatable)")
    p.add_argument("--measure-batch", type=_positive_int, metavar="B",
                   help="batch size latency and memory are measured at: the one you deploy at, e.g. 1 (default: the "
                        "task's training batch; a resumed study keeps its own)")
    p.add_argument("--measure-dtype", choices=MEASURE_DTYPES, default="auto",
                   help="precision latency and memory are measured in (default auto: bfloat16 on a GPU that "
                        "supports it, as training runs there; float32 on the CPU; a resumed study keeps its own)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nas", description="Search efficient transformer architectures under a measured hardware budget.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("search", help="create or resume a study and run it to --trials finished trials")
    _add_search_args(p, worker=False)
    p = sub.add_parser("worker", help="join an existing study (any machine) and run trials until it has --trials")
    _add_search_args(p, worker=True)
    p = sub.add_parser("show", help="top trials, Pareto front of fitness against latency, hurdles")
    p.add_argument("study", help="study name, or the URL of a database that holds one study")
    _add_storage_arg(p)
    p.add_argument("--top", type=_positive_int, default=10, help="how many of the best trials to list (default 10)")
    p.add_argument("--plot", metavar="FILE.png", help="write fitness-vs-latency plot (needs matplotlib: pip install 'nas[plot]')")
    p = sub.add_parser("export", help="write the best (or a given) trial as a standalone PyTorch module")
    p.add_argument("study", help="study name, or the URL of a database that holds one study")
    _add_storage_arg(p)
    p.add_argument("--trial", type=int, help="the trial to export (default: the best feasible fully trained one)")
    p.add_argument("--out", default=None, help="output folder (default exports/STUDY)")
    p.add_argument("--retrain", type=int, metavar="STEPS", help="train the architecture for STEPS steps first")
    p.add_argument("--device", default="auto", help="with --retrain: where to train (auto | cpu | cuda)")
    p.add_argument("--force", action="store_true", help="replace an export already in the --out folder")
    return parser


def trials_limit(args: argparse.Namespace) -> int | None:
    """--trials as given; if none of it, --step-budget and --timeout is, the default count."""
    if args.trials is None and args.step_budget is None and args.timeout is None:
        return DEFAULT_TRIALS
    return args.trials


def _search_config(args: argparse.Namespace, argv: Sequence[str]):
    from nas.export import command_line
    from nas.search import SearchConfig

    if args.steps is not None and args.stages and args.steps != args.stages[-1]:
        raise ValueError(f"--steps {args.steps} and --stages {','.join(map(str, args.stages))} disagree: the last "
                         f"stage is a candidate's full training; give --stages alone, or end it at {args.steps}")
    return SearchConfig(
        study=args.study, storage=args.storage, space=args.space, task=args.task,
        task_options=_task_options(args.task_option), latency_ms=args.latency_ms, latency_fraction=args.latency_fraction, memory_mb=args.memory_mb,
        trials=trials_limit(args), step_budget=args.step_budget, timeout_s=args.timeout, keep_checkpoints=args.keep_checkpoints,
        started_at=args.started_at if args.started_at is not None else time.time(),
        sampler=args.sampler, pruner=args.pruner, device=args.device, seed=args.seed, sampler_seed=args.sampler_seed,
        steps=args.steps, stages=args.stages, population=args.population, tournament=args.tournament,
        mutation_prob=args.mutation_prob, budget_aware=args.budget_aware, on_refusal=args.on_refusal,
        hurdle_trials=args.hurdle_trials,
        hurdle_signal=args.hurdle_signal, hurdle_rule=args.hurdle_rule,
        selection_signal=args.selection_signal, warm_start=not args.no_warm_start,
        command=command_line(list(argv)), measure_threads=args.measure_threads, measure_dtype=args.measure_dtype,
        measure_batch=args.measure_batch,
        train_options={k: v for k, v in (("lr", args.lr), ("min_lr_ratio", args.min_lr_ratio)) if v is not None},
    )


def _given(argv: Sequence[str], flag: str) -> bool:
    """Whether `flag` is on the command line (as `--flag VALUE` or `--flag=VALUE`)."""
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "search":
        cfg = _search_config(args, argv)
        if args.workers > 1:
            from nas.workers import run_parallel

            return run_parallel(cfg, args.workers, quiet=args.quiet)
        from nas.search import search_main

        return search_main(cfg, quiet=args.quiet)
    if args.command == "worker":
        from nas.workers import worker_main

        return worker_main(args)
    if args.command in ("show", "export") and "://" in args.study and not _given(argv, "--storage"):
        args.storage = None  # a database URL in place of the study name: $NAS_STORAGE does not apply
    if args.command == "show":
        from nas.show import show_main

        return show_main(args.study, storage=args.storage, top=args.top, plot_path=args.plot)
    if args.command == "export":
        from nas.export import export_main

        return export_main(args.study, storage=args.storage, trial=args.trial, out=args.out,
                           retrain=args.retrain, device=args.device, force=args.force)
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        import optuna

        from nas.errors import USER_ERRORS, one_line
    except KeyboardInterrupt:  # Ctrl-C while the libraries load: nothing started yet
        print("nas: interrupted", file=sys.stderr)
        return 130

    # Our own lines say what happens; Optuna's INFO lines ("A new study created ...") would repeat it.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        code = run(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error, already printed on one line
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except USER_ERRORS as e:
        print(f"nas: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nas: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`nas show demo | head`): stop quietly, as
        # a command killed by SIGPIPE does. stdout goes to devnull so that the
        # interpreter's own flush at exit does not raise again (the Python docs'
        # recipe, signal module, "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    return code


if __name__ == "__main__":
    sys.exit(main())
