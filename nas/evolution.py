"""Regularized (aging) evolution as an Optuna sampler.

Real, Aggarwal, Huang and Le, "Regularized Evolution for Image Classifier
Architecture Search", AAAI 2019 (arXiv:1802.01548), with the tournament
selection and the per-parameter mutation that So, Liang and Le used to search
"The Evolved Transformer", ICML 2019 (arXiv:1901.11117).

The rule, for a single-objective study (``study.direction`` respected):

1. **Population** = the ``population_size`` most recently *finished* trials of
   the study (states COMPLETE and PRUNED), ordered by ``datetime_complete``,
   ties broken by trial number. It is read from storage for every new trial:
   the oldest member drops out as a new one finishes (aging), and no state
   lives in memory, so a resumed process or a second worker on the same
   storage continues the same evolution.
2. While fewer than ``population_size`` trials have finished, every parameter
   is drawn independently at random (:class:`optuna.samplers.RandomSampler`).
3. Otherwise a **tournament**: ``tournament_size`` members drawn uniformly
   without replacement from the population; the winner (the *parent*) is the
   fittest by the key, compared in this order:

   a. a trial with a value beats one with none (a COMPLETE trial's value; a
      PRUNED trial's value if Optuna stored one, else its intermediate value
      at the largest step; NaN counts as no value);
   b. feasible beats infeasible (feasible: every constraint value <= 0, see
      :meth:`optuna.trial.FrozenTrial.constraints`; a trial without
      constraints is feasible; with ``constraints_aware=False`` every trial is);
   c. smaller total violation ``sum(max(0, c))`` wins;
   d. the better value wins (higher for ``maximize``, lower for ``minimize``);
      with a ``score`` function given, the higher score wins instead, and a
      trial whose score is None or NaN counts as one without a value in (a)
      (the Evolved Transformer's tournament compared negative log perplexity,
      a loss, while its winner was reported on the task metric: ``score``
      lets the selection read a signal other than the study's value);
   e. on a full tie, the member drawn first wins.

4. **Mutation**: each parameter of the parent is marked *mutated* with
   probability ``mutation_prob``; if none is marked (and the parent has a
   parameter that can change), one parameter is chosen uniformly among those
   that can change and marked. The child then asks its parameters in the
   objective's own order (conditional spaces work naturally):

   - a parameter the parent has, with a compatible distribution (same type,
     parent's value contained), not marked: the parent's value;
   - marked: a random value *different* from the parent's (when the
     distribution holds more than one value);
   - a parameter the parent lacks (a new layer after ``depth`` grew, a knob of
     a newly chosen attention kind) or whose old value no longer fits: random.

   If the child these marks give (parent's values with the marked ones re-drawn,
   as above) has exactly the parameters of a trial already in the study, the
   marks are chosen again, up to 8 times: a repeat teaches the search nothing.
   (The check is exact for marks that keep the conditional structure; a child
   whose structure changes is not checked. The objective replays a repeat that
   gets through anyway, see `nas.objective`.)

The decisions are stored in the child's system attrs, so they survive in
storage and the lineage is visible in any Optuna tool:
``evolution:parent`` (the parent's trial number, ``None`` for a random or
enqueued trial) and ``evolution:mutated`` (the marked parameter names).

Every random draw (tournament, mutation marks, new values) comes from a
generator seeded by a hash of ``(seed, trial number, purpose)``, so a seeded
run makes the same decision for the same trial number and population whatever
process makes it. (With ``seed=None`` a random base seed is drawn once.)

Enqueued trials (``study.enqueue_trial(params)``, e.g. a vanilla Transformer
as warm start) are honoured by Optuna before the sampler is asked; the sampler
treats such a trial as user-given: no parent, and any parameter the user left
out is drawn at random.

Only single-objective studies are supported: sampling in a multi-objective
study raises :class:`ValueError`.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import threading
from typing import Any, Callable

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

__all__ = ["EvolutionSampler", "PARENT_KEY", "MUTATED_KEY"]

PARENT_KEY = "evolution:parent"
MUTATED_KEY = "evolution:mutated"

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_MAX_REDRAWS = 32
_MUTATION_ATTEMPTS = 8  # mutation choices tried before a repeat of a known trial is accepted
_CACHE_SIZE = 64  # plans of trials in flight (one per thread or so)


class EvolutionSampler(BaseSampler):
    """Regularized evolution with tournament selection (see the module docstring
    for the exact rule and the papers).

    Args:
        population_size: how many of the most recently finished trials form the
            population; until that many have finished, sampling is random.
        tournament_size: how many population members compete for parenthood
            (``1 <= tournament_size <= population_size``).
        mutation_prob: probability that each parameter of the parent is re-drawn
            (at least one always is).
        seed: base seed of every random decision; ``None`` draws one.
        constraints_aware: rank feasible trials above infeasible ones using the
            trials' Optuna constraints; ``False`` ignores constraints.
        score: what the tournament compares instead of the study's value: a
            function of the finished trial, higher is fitter, None (or NaN) for
            a trial without one. ``None`` (the default) compares the value.
    """

    def __init__(
        self,
        population_size: int = 20,
        tournament_size: int = 5,
        mutation_prob: float = 0.2,
        seed: int | None = None,
        constraints_aware: bool = True,
        score: Callable[[FrozenTrial], float | None] | None = None,
    ) -> None:
        if not _is_int(population_size) or population_size < 1:
            raise ValueError(f"population_size must be an integer >= 1, got {population_size!r}")
        if not _is_int(tournament_size) or not 1 <= tournament_size <= population_size:
            raise ValueError(
                f"tournament_size must be an integer in [1, population_size={population_size}], "
                f"got {tournament_size!r}"
            )
        if (
            isinstance(mutation_prob, bool)
            or not isinstance(mutation_prob, (int, float))
            or not 0.0 <= float(mutation_prob) <= 1.0
        ):
            raise ValueError(f"mutation_prob must be a number in [0, 1], got {mutation_prob!r}")
        if seed is not None and (not _is_int(seed) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        if not isinstance(constraints_aware, bool):
            raise ValueError(f"constraints_aware must be True or False, got {constraints_aware!r}")
        if score is not None and not callable(score):
            raise ValueError(f"score must be a function of a FrozenTrial or None, got {score!r}")
        self._population_size = int(population_size)
        self._tournament_size = int(tournament_size)
        self._mutation_prob = float(mutation_prob)
        self._seed = seed
        self._base_seed = int(seed) if seed is not None else _fresh_seed()
        self._constraints_aware = constraints_aware
        self._score = score
        self._cache: dict[tuple[int, int], tuple[Any, FrozenTrial | None, frozenset[str]]] = {}
        self._cache_lock = threading.Lock()

    # ---- Optuna's sampler interface ---------------------------------------------
    def reseed_rng(self) -> None:
        # Draws already differ per trial number; only an unseeded sampler changes base.
        if self._seed is None:
            self._base_seed = _fresh_seed()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._raise_error_if_multi_objective(study)
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        # Decide the parent when the trial starts (the population as it is now).
        # A multi-objective study gets its ValueError when a parameter is sampled,
        # so that the trial is recorded as failed rather than left running.
        if not study._is_multi_objective():
            self._plan(study, trial)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        self._raise_error_if_multi_objective(study)
        parent, mutated = self._parent_and_mutations(study, trial)
        if parent is None:
            return self._random(trial, param_name, param_distribution)
        old = _compatible_value(parent, param_name, param_distribution)
        if old is _MISSING:
            return self._random(trial, param_name, param_distribution)
        if param_name not in mutated:
            return old
        return self._random_other(trial, param_name, param_distribution, old)

    # ---- selection ---------------------------------------------------------------
    def population(self, study: Study) -> list[FrozenTrial]:
        """The `population_size` most recently finished trials, oldest first."""
        finished = study.get_trials(deepcopy=False, states=_FINISHED)
        finished = sorted(finished, key=lambda t: (_completed_at(t), t.number))
        return finished[-self._population_size :]

    def fitness(self, study: Study, trial: FrozenTrial) -> tuple:
        """The sort key of a trial: larger is fitter (see the module docstring)."""
        if self._score is None:
            value = _value_of(trial)
            signed = None if value is None else (value if study.direction == StudyDirection.MAXIMIZE else -value)
        else:
            score = self._score(trial)
            signed = None if score is None or math.isnan(float(score)) else float(score)
        if self._constraints_aware:
            constraints = trial.constraints.values()
            violation = sum(max(0.0, float(c)) for c in constraints)
            feasible = all(float(c) <= 0.0 for c in constraints)
        else:
            violation, feasible = 0.0, True
        if signed is None:
            return (False, feasible, -violation, -math.inf)
        return (True, feasible, -violation, signed)

    def _plan(self, study: Study, trial: FrozenTrial) -> tuple[int | None, frozenset[str]]:
        """The trial's parent number and mutated names: from storage if decided,
        else decided now and stored."""
        attrs = study._storage.get_trial_system_attrs(trial._trial_id)
        if PARENT_KEY in attrs:
            return attrs[PARENT_KEY], frozenset(attrs.get(MUTATED_KEY) or ())

        parent_number: int | None = None
        mutated: list[str] = []
        population = self.population(study)
        if not attrs.get("fixed_params") and len(population) >= self._population_size:
            rng = self._rng(trial.number, "select")
            picks = rng.choice(len(population), size=self._tournament_size, replace=False)
            contestants = [population[int(i)] for i in picks]
            # max() keeps the first of equal keys: the member drawn first wins a tie.
            parent = max(contestants, key=lambda t: self.fitness(study, t))
            parent_number = parent.number
            mutated = self._choose_mutations(parent, rng)
            seen = [t.params for t in study.get_trials(deepcopy=False) if t.number != trial.number and t.params]
            for attempt in range(1, _MUTATION_ATTEMPTS):
                if self._child_params(trial, parent, mutated) not in seen:
                    break
                mutated = self._choose_mutations(parent, self._rng(trial.number, "mutate", attempt))

        study._storage.set_trial_system_attr(trial._trial_id, PARENT_KEY, parent_number)
        study._storage.set_trial_system_attr(trial._trial_id, MUTATED_KEY, mutated)
        return parent_number, frozenset(mutated)

    def _choose_mutations(self, parent: FrozenTrial, rng: np.random.Generator) -> list[str]:
        names = sorted(parent.params)
        marks = rng.random(len(names)) < self._mutation_prob
        changeable = [n for n in names if _n_values(parent.distributions[n]) > 1]
        mutated = [n for n, m in zip(names, marks) if m and n in changeable]
        if not mutated and changeable:
            mutated = [changeable[int(rng.integers(len(changeable)))]]
        return mutated

    def _child_params(self, trial: FrozenTrial, parent: FrozenTrial, mutated: list[str]) -> dict[str, Any]:
        """The parent's parameters as the child will draw them with `mutated`
        marked (the same draws `sample_independent` makes). Exact when the marked
        parameters leave the conditional structure as it is; otherwise the child
        asks for other names and this dict equals no trial's parameters."""
        return {
            name: value if name not in mutated else self._random_other(trial, name, parent.distributions[name], value)
            for name, value in parent.params.items()
        }

    def _parent_and_mutations(
        self, study: Study, trial: FrozenTrial
    ) -> tuple[FrozenTrial | None, frozenset[str]]:
        """The trial's plan with the parent trial itself, cached per trial.

        The cache only mirrors what `_plan` has read from or written to storage
        (and a finished parent's params never change), so it saves queries
        without holding any state that storage lacks.
        """
        key = (study._study_id, trial._trial_id)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is study._storage:
            return hit[1], hit[2]
        number, mutated = self._plan(study, trial)
        parent = None
        if number is not None:
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
            parent = study._storage.get_trial(trial_id)
        with self._cache_lock:
            while len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (study._storage, parent, mutated)
        return parent, mutated

    # ---- random draws ------------------------------------------------------------
    def _derived_seed(self, number: int, *purpose: object) -> int:
        text = repr((self._base_seed, number) + purpose).encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "little")

    def _rng(self, number: int, *purpose: object) -> np.random.Generator:
        return np.random.default_rng(self._derived_seed(number, *purpose))

    def _random(self, trial: FrozenTrial, name: str, dist: BaseDistribution, attempt: int = 0) -> Any:
        seed = self._derived_seed(trial.number, "param", name, attempt)
        return RandomSampler(seed=seed).sample_independent(None, trial, name, dist)  # type: ignore[arg-type]

    def _random_other(self, trial: FrozenTrial, name: str, dist: BaseDistribution, old: Any) -> Any:
        """A random value of `dist` other than `old` (when `dist` has another)."""
        if _n_values(dist) <= 1:
            return self._random(trial, name, dist)
        if isinstance(dist, CategoricalDistribution):
            old_index = dist.to_internal_repr(old)
            others = [i for i in range(len(dist.choices)) if i != old_index]
            rng = self._rng(trial.number, "param", name, "other")
            return dist.choices[others[int(rng.integers(len(others)))]]
        value = old
        for attempt in range(_MAX_REDRAWS):
            value = self._random(trial, name, dist, attempt)
            if value != old:
                break
        return value


# ---- helpers ---------------------------------------------------------------------
_MISSING = object()


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _fresh_seed() -> int:
    return int(np.random.SeedSequence().generate_state(1)[0])


def _completed_at(trial: FrozenTrial) -> datetime.datetime:
    return trial.datetime_complete or datetime.datetime.min


def _value_of(trial: FrozenTrial) -> float | None:
    """The trial's fitness value: its value, else (pruned) the last intermediate one."""
    value = trial.values[0] if trial.values else None
    if value is None and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _n_values(dist: BaseDistribution) -> float:
    """How many values `dist` holds (inf for a continuous float range)."""
    if isinstance(dist, CategoricalDistribution):
        return len(dist.choices)
    if isinstance(dist, IntDistribution):
        if dist.log:
            return dist.high - dist.low + 1
        return (dist.high - dist.low) // dist.step + 1
    if isinstance(dist, FloatDistribution):
        if dist.step is not None:
            return round((dist.high - dist.low) / dist.step) + 1
        return 1 if dist.low == dist.high else math.inf
    return 0 if dist.single() else math.inf


def _compatible_value(parent: FrozenTrial, name: str, dist: BaseDistribution) -> Any:
    """The parent's value of `name` in `dist`'s external form, or _MISSING when the
    parent lacks it or its distribution changed so that the value no longer fits."""
    if name not in parent.params:
        return _MISSING
    old_dist = parent.distributions[name]
    if type(old_dist) is not type(dist):
        return _MISSING
    try:
        internal = dist.to_internal_repr(parent.params[name])
        if not dist._contains(internal):
            return _MISSING
        return dist.to_external_repr(internal)
    except (ValueError, TypeError):
        return _MISSING
