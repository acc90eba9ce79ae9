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
   marks and the new values are chosen again, up to 8 times: a repeat teaches the
   search nothing. (Without a ``child_check`` the repeat test is exact for marks
   that keep the conditional structure; a child whose structure changes is not
   tested. The objective replays a repeat that gets through anyway, see
   `nas.objective`.)

5. **Child check** (optional, ``child_check``): a test every proposed candidate
   must pass, e.g. "measured within the hardware budget". The sampler calls it
   with a function ``suggest(name, distribution)`` that returns exactly the value
   the trial will get for that parameter (the draws are seeded per trial, so the
   dry run and the trial agree, new layers and knobs included); the check walks
   the objective's parameters with it and returns False to refuse the candidate.
   A refused child gets new marks and new values, like a repeat, within the same
   8 attempts (with ``on_refusal="extend"``: its own marks plus one more, chosen
   uniformly among the parent's other changeable parameters, all re-drawn; so a
   child that added a layer and came out over the budget keeps the new layer and
   may cheapen another choice to fit); a random candidate (population not yet
   full) is drawn again, up to 8 times. When every attempt is refused the last
   one is the trial (the objective then records it as it would without the
   check; ``evolution:refused`` then lists 8 refusals). This is how the
   evolutionary search of Once-for-All (Cai, Gan, Wang, Zhang and Han, ICLR 2020,
   arXiv:1908.09791) meets a latency constraint: mutate, and mutate again while
   the child's latency is over it (there without a bound, here 8 attempts, since
   each is a measurement). Without a check, at a tight budget many children come
   out over it (90% of those that added a layer to a feasible parent, in a
   measured run at half the vanilla latency, README): they cost no training but
   take population slots and teach nothing.

The decisions are stored in the child's system attrs, so they survive in
storage and the lineage is visible in any Optuna tool:
``evolution:parent`` (the parent's trial number, ``None`` for a random or
enqueued trial), ``evolution:mutated`` (the marked parameter names),
``evolution:attempt`` (which attempt became the trial: its draws depend on it)
and ``evolution:refused`` (why each earlier attempt was refused: "repeat" or
"check").

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
from dataclasses import dataclass
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

__all__ = ["EvolutionSampler", "PARENT_KEY", "MUTATED_KEY", "ATTEMPT_KEY", "REFUSED_KEY", "Suggest", "ChildCheck"]

PARENT_KEY = "evolution:parent"
MUTATED_KEY = "evolution:mutated"
ATTEMPT_KEY = "evolution:attempt"
REFUSED_KEY = "evolution:refused"

# The value a candidate gets for a parameter (name, distribution), as the trial will draw it.
Suggest = Callable[[str, BaseDistribution], Any]
# A test of a proposed candidate: walks its parameters with a Suggest; False refuses it.
ChildCheck = Callable[[Suggest], bool]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_MAX_REDRAWS = 32
ON_REFUSAL = ("fresh", "extend")
_ATTEMPTS = 8  # candidates tried before a repeat, or one the check refuses, is accepted
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
        child_check: a test every proposed candidate must pass (rule 5 of the
            module docstring); ``None`` (the default) tests nothing.
        on_refusal: what the next attempt after a child the check refused marks:
            ``"fresh"`` new marks, as for a repeat; ``"extend"`` the refused
            child's marks and one more (rule 5).
    """

    def __init__(
        self,
        population_size: int = 20,
        tournament_size: int = 5,
        mutation_prob: float = 0.2,
        seed: int | None = None,
        constraints_aware: bool = True,
        score: Callable[[FrozenTrial], float | None] | None = None,
        child_check: ChildCheck | None = None,
        on_refusal: str = "fresh",
    ) -> None:
        check_evolution_numbers(population_size, tournament_size, mutation_prob, seed)
        if not isinstance(constraints_aware, bool):
            raise ValueError(f"constraints_aware must be True or False, got {constraints_aware!r}")
        if score is not None and not callable(score):
            raise ValueError(f"score must be a function of a FrozenTrial or None, got {score!r}")
        if on_refusal not in ON_REFUSAL:
            raise ValueError(f"on_refusal must be one of {', '.join(ON_REFUSAL)}, got {on_refusal!r}")
        if child_check is not None and not callable(child_check):
            raise ValueError(f"child_check must be a function of a suggest function or None, got {child_check!r}")
        self._population_size = int(population_size)
        self._tournament_size = int(tournament_size)
        self._mutation_prob = float(mutation_prob)
        self._seed = seed
        self._base_seed = int(seed) if seed is not None else _fresh_seed()
        self._constraints_aware = constraints_aware
        self._score = score
        self._child_check = child_check
        self._on_refusal = on_refusal
        self._cache: dict[tuple[int, int], tuple[Any, _Plan]] = {}
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
            self._plan_of(study, trial)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        self._raise_error_if_multi_objective(study)
        return self._draw(trial, self._plan_of(study, trial), param_name, param_distribution)

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

    def _plan(self, study: Study, trial: FrozenTrial) -> "_Plan":
        """The trial's plan (parent, mutated names, attempt): from storage if
        decided, else decided now and stored."""
        storage = study._storage
        attrs = storage.get_trial_system_attrs(trial._trial_id)
        if PARENT_KEY in attrs:
            number = attrs[PARENT_KEY]
            stored_parent = None
            if number is not None:
                stored_parent = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))
            return _Plan(stored_parent, frozenset(attrs.get(MUTATED_KEY) or ()), int(attrs.get(ATTEMPT_KEY) or 0))

        parent: FrozenTrial | None = None
        mutated: list[str] = []
        attempt = 0
        refused: list[str] = []
        population = self.population(study)
        if attrs.get("fixed_params"):
            pass  # enqueued: the user's candidate, neither bred nor tested
        elif len(population) >= self._population_size:
            rng = self._rng(trial.number, "select")
            picks = rng.choice(len(population), size=self._tournament_size, replace=False)
            contestants = [population[int(i)] for i in picks]
            # max() keeps the first of equal keys: the member drawn first wins a tie.
            parent = max(contestants, key=lambda t: self.fitness(study, t))
            seen = _known_params(study, trial)
            for attempt in range(_ATTEMPTS):
                if attempt == 0:
                    mutated = self._choose_mutations(parent, rng)
                elif self._on_refusal == "extend" and refused[-1] == "check":
                    mutated = self._extend_mutations(parent, mutated, self._rng(trial.number, "mutate", attempt))
                else:
                    mutated = self._choose_mutations(parent, self._rng(trial.number, "mutate", attempt))
                why = self._refusal(trial, _Plan(parent, frozenset(mutated), attempt), seen)
                if why is None:
                    break
                refused.append(why)
        elif self._child_check is not None:
            # A random candidate that repeats a known trial is drawn again too: the
            # repeat would be replayed, not trained, and its slot in the population lost.
            seen = _known_params(study, trial)
            for attempt in range(_ATTEMPTS):
                why = self._refusal(trial, _Plan(None, frozenset(), attempt), seen)
                if why is None:
                    break
                refused.append(why)

        storage.set_trial_system_attr(trial._trial_id, PARENT_KEY, None if parent is None else parent.number)
        storage.set_trial_system_attr(trial._trial_id, MUTATED_KEY, mutated)
        storage.set_trial_system_attr(trial._trial_id, ATTEMPT_KEY, attempt)
        storage.set_trial_system_attr(trial._trial_id, REFUSED_KEY, refused)
        return _Plan(parent, frozenset(mutated), attempt)

    def _extend_mutations(self, parent: FrozenTrial, mutated: list[str], rng: np.random.Generator) -> list[str]:
        """`mutated` and one more of the parent's changeable names, chosen uniformly
        (new marks from scratch when every one is marked already)."""
        rest = [n for n in sorted(parent.params) if n not in mutated and _n_values(parent.distributions[n]) > 1]
        if not rest:
            return self._choose_mutations(parent, rng)
        return sorted([*mutated, rest[int(rng.integers(len(rest)))]])

    def _refusal(self, trial: FrozenTrial, plan: "_Plan", seen: list[dict[str, Any]] | None) -> str | None:
        """Why the candidate `plan` gives would be refused ("repeat": it has the
        parameters of a trial in `seen`; "check": the child check said no), or None."""
        if self._child_check is None:
            # No dry run to walk the parameters: the parent's, with the marked ones re-drawn.
            assert plan.parent is not None and seen is not None
            child = {name: self._draw(trial, plan, name, plan.parent.distributions[name]) for name in plan.parent.params}
            return "repeat" if child in seen else None
        drawn: dict[str, Any] = {}

        def suggest(name: str, dist: BaseDistribution) -> Any:
            if name not in drawn:
                drawn[name] = self._draw(trial, plan, name, dist)
            return drawn[name]

        passed = self._child_check(suggest)
        if seen is not None and drawn in seen:
            return "repeat"
        return None if passed else "check"

    def _choose_mutations(self, parent: FrozenTrial, rng: np.random.Generator) -> list[str]:
        names = sorted(parent.params)
        marks = rng.random(len(names)) < self._mutation_prob
        changeable = [n for n in names if _n_values(parent.distributions[n]) > 1]
        mutated = [n for n, m in zip(names, marks) if m and n in changeable]
        if not mutated and changeable:
            mutated = [changeable[int(rng.integers(len(changeable)))]]
        return mutated

    def _plan_of(self, study: Study, trial: FrozenTrial) -> "_Plan":
        """The trial's plan, cached per trial from `before_trial` on.

        The cache only mirrors what `_plan` has read from or written to storage
        (and a finished parent's params never change), so it saves queries
        without holding any state that storage lacks.
        """
        key = (study._study_id, trial._trial_id)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is study._storage:
            return hit[1]
        plan = self._plan(study, trial)
        with self._cache_lock:
            while len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (study._storage, plan)
        return plan

    def _draw(self, trial: FrozenTrial, plan: "_Plan", name: str, dist: BaseDistribution) -> Any:
        """The value `plan` gives parameter `name` (rule 4 of the module docstring)."""
        if plan.parent is None:
            return self._random(trial, name, dist, attempt=plan.attempt)
        old = _compatible_value(plan.parent, name, dist)
        if old is _MISSING:
            return self._random(trial, name, dist, attempt=plan.attempt)
        if name not in plan.mutated:
            return old
        return self._random_other(trial, name, dist, old, attempt=plan.attempt)

    # ---- random draws ------------------------------------------------------------
    def _derived_seed(self, number: int, *purpose: object) -> int:
        text = repr((self._base_seed, number) + purpose).encode()
        return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "little")

    def _rng(self, number: int, *purpose: object) -> np.random.Generator:
        return np.random.default_rng(self._derived_seed(number, *purpose))

    def _random(self, trial: FrozenTrial, name: str, dist: BaseDistribution, redraw: int = 0, attempt: int = 0) -> Any:
        seed = self._derived_seed(trial.number, "param", name, redraw, *_attempt_tag(attempt))
        return RandomSampler(seed=seed).sample_independent(None, trial, name, dist)  # type: ignore[arg-type]

    def _random_other(self, trial: FrozenTrial, name: str, dist: BaseDistribution, old: Any, attempt: int = 0) -> Any:
        """A random value of `dist` other than `old` (when `dist` has another)."""
        if _n_values(dist) <= 1:
            return self._random(trial, name, dist, attempt=attempt)
        if isinstance(dist, CategoricalDistribution):
            old_index = dist.to_internal_repr(old)
            others = [i for i in range(len(dist.choices)) if i != old_index]
            rng = self._rng(trial.number, "param", name, "other", *_attempt_tag(attempt))
            return dist.choices[others[int(rng.integers(len(others)))]]
        value = old
        for redraw in range(_MAX_REDRAWS):
            value = self._random(trial, name, dist, redraw, attempt)
            if value != old:
                break
        return value


# ---- helpers ---------------------------------------------------------------------
_MISSING = object()


@dataclass(frozen=True)
class _Plan:
    """How a trial draws its parameters: its parent (None: at random), the
    parent's parameters marked for a new value, and the attempt (which seeds the
    draws, so that a refused candidate's successor draws other values)."""

    parent: FrozenTrial | None
    mutated: frozenset[str]
    attempt: int


def _attempt_tag(attempt: int) -> tuple[object, ...]:
    # Attempt 0 adds nothing to the seed: its draws are those studies made before attempts had seeds.
    return () if attempt == 0 else ("attempt", attempt)


def is_int(x: object) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _known_params(study: Study, trial: FrozenTrial) -> list[dict[str, Any]]:
    """The parameters of every other trial that drew some: a candidate equal to one is a repeat."""
    return [t.params for t in study.get_trials(deepcopy=False) if t.number != trial.number and t.params]


def check_evolution_numbers(population_size: object, tournament_size: object, mutation_prob: object, seed: object,
                            names: tuple[str, str, str, str] = ("population_size", "tournament_size", "mutation_prob",
                                                                "seed")) -> None:
    """ValueError for the first of evolution's numbers out of its range, under
    `names`: the constructor's arguments, or `nas search`'s flags, which check
    them before a study is stored."""
    population, tournament, mutation, seed_name = names
    if not is_int(population_size) or population_size < 1:
        raise ValueError(f"{population} must be a positive integer (the trials evolution breeds from), "
                         f"got {population_size!r}")
    if not is_int(tournament_size) or not 1 <= tournament_size <= population_size:
        raise ValueError(f"{tournament} must be an integer from 1 to {population} ({population_size}), "
                         f"got {tournament_size!r}")
    if isinstance(mutation_prob, bool) or not isinstance(mutation_prob, (int, float)) or not 0.0 <= mutation_prob <= 1.0:
        raise ValueError(f"{mutation} must be a probability between 0 and 1, got {mutation_prob!r}")
    if seed is not None and (not is_int(seed) or seed < 0):
        raise ValueError(f"{seed_name} must be a non-negative integer, got {seed!r}")


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
