"""The interchangeable samplers and pruners, by the names the command line uses."""

from __future__ import annotations

import importlib.util
from typing import Any, Callable, Sequence

import optuna

from nas.hurdles import (DEFAULT_HURDLE_RULE, DEFAULT_HURDLE_SIGNAL, DEFAULT_MIN_TRIALS, DEFAULT_SELECTION_SIGNAL,
                         HURDLE_RULES, HURDLE_SIGNALS, ProgressiveHurdlePruner, minus_last_loss)

SAMPLERS = ("evolution", "tpe", "nsga2", "cmaes", "gp", "random")
PRUNERS = ("hurdles", "median", "hyperband", "none")
# --measure-dtype (evaluators.hardware.resolve_dtype takes the same names; not imported
# from there so that `nas --help` does not load torch).
MEASURE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def require_sampler_package(name: str) -> None:
    """ValueError, naming the install, when sampler `name` needs a package that is
    missing (checked before a study is made for it)."""
    if name == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise ValueError("--sampler cmaes needs the 'cmaes' package; install it with pip install 'nas[cmaes]' "
                         "or pick another sampler")


def make_sampler(name: str, *, seed: int | None, population: int = 20, tournament: int = 5,
                 mutation_prob: float = 0.2, selection: str = DEFAULT_SELECTION_SIGNAL,
                 child_check: Callable[[Callable[[str, Any], Any]], bool] | None = None,
                 on_refusal: str = "fresh") -> optuna.samplers.BaseSampler:
    """Our evolution or one of Optuna's own samplers. All read the trials'
    constraints (`trial.set_constraint`) where they support constraints.
    `selection` (what evolution's tournament compares: "fitness" or "loss",
    minus the validation loss at the trial's last stage), `child_check` (a test
    each proposed candidate must pass, e.g. `Objective.within_budget`) and
    `on_refusal` (see `EvolutionSampler`) apply to "evolution" only."""
    if selection not in HURDLE_SIGNALS:
        raise ValueError(f"unknown selection signal {selection!r}; choose one of {', '.join(HURDLE_SIGNALS)}")
    if name == "evolution":
        from nas.evolution import EvolutionSampler

        return EvolutionSampler(population_size=population, tournament_size=tournament,
                                mutation_prob=mutation_prob, seed=seed,
                                score=minus_last_loss if selection == "loss" else None, child_check=child_check,
                                on_refusal=on_refusal)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, population))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    if name == "cmaes":
        require_sampler_package(name)
        # CMA-ES models numeric parameters only; our space is categorical, so it
        # samples those through its independent sampler (Optuna's documented behaviour).
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=min(10, population))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def make_pruner(name: str, *, stages: Sequence[int], min_trials: int = DEFAULT_MIN_TRIALS,
                signal: str = DEFAULT_HURDLE_SIGNAL, rule: str = DEFAULT_HURDLE_RULE) -> optuna.pruners.BasePruner:
    """The pruner by name; `signal` (what the hurdles compare) and `rule` (whether
    training past a stage waits for its hurdle) apply to "hurdles" only."""
    if rule not in HURDLE_RULES:
        raise ValueError(f"unknown hurdle rule {rule!r}; choose one of {', '.join(HURDLE_RULES)}")
    if name == "hurdles":
        return ProgressiveHurdlePruner(stages=tuple(stages), min_trials=min_trials, signal=signal,
                                       progressive=rule == "progressive")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=min_trials, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=stages[0], max_resource=stages[-1])
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")
