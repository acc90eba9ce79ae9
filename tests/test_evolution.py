"""Tests of `nas.evolution.EvolutionSampler`: Optuna's own reusable sampler test
cases, then the evolution rule on hand-built studies."""

from __future__ import annotations

import datetime
import shutil
import warnings
from typing import Any, Callable

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    MultiObjectiveSamplerTestCase,
    RelativeSamplerTestCase,
    SingleOnlySamplerTestCase,
)
from optuna.trial import TrialState

from nas.evolution import ATTEMPT_KEY, MUTATED_KEY, PARENT_KEY, REFUSED_KEY, EvolutionSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

# Two configurations: the default (the short Optuna cases stay in the random
# phase) and a tiny population, so that the same cases run through tournaments
# and mutation after two finished trials.
SAMPLER_CONFIGS = {
    "default": dict(seed=0),
    "tiny-population": dict(population_size=2, tournament_size=2, mutation_prob=0.5, seed=0),
}


@pytest.fixture(params=list(SAMPLER_CONFIGS), ids=list(SAMPLER_CONFIGS))
def evolution_sampler(request: pytest.FixtureRequest):
    return lambda: EvolutionSampler(**SAMPLER_CONFIGS[request.param])


# ---- Optuna's reusable sampler test cases ----------------------------------------------
class TestOptunaBasic(BasicSamplerTestCase):
    @pytest.fixture
    def sampler(self, evolution_sampler):
        return evolution_sampler


class TestOptunaSingleOnly(SingleOnlySamplerTestCase):
    @pytest.fixture
    def sampler(self, evolution_sampler):
        return evolution_sampler


class TestOptunaRelative(RelativeSamplerTestCase):
    @pytest.fixture
    def sampler(self, evolution_sampler):
        return evolution_sampler

    _NOT_RELATIVE = (
        "EvolutionSampler samples every parameter independently (conditional per-layer "
        "spaces); its sample_relative returns {} by design, so cases asserting relative "
        "params for a given search space cannot apply"
    )

    @pytest.mark.skip(reason=_NOT_RELATIVE)
    def test_sample_relative_numerical(self) -> None: ...

    @pytest.mark.skip(reason=_NOT_RELATIVE)
    def test_sample_relative_categorical(self) -> None: ...

    @pytest.mark.skip(reason=_NOT_RELATIVE)
    def test_sample_relative_mixed(self) -> None: ...


class TestOptunaMultiObjective(MultiObjectiveSamplerTestCase):
    @pytest.fixture
    def sampler(self, evolution_sampler):
        return evolution_sampler

    @pytest.mark.skip(
        reason="EvolutionSampler is single-objective only: it raises ValueError in a "
        "multi-objective study (checked by TestOptunaSingleOnly)"
    )
    def test_multi_objective_sample_independent(self) -> None: ...


# ---- a toy space with the conditional shape of search_spaces.space ---------------------
KIND_KNOBS = {"full": (), "local": ("window",), "linear": ("rank",)}
CHOICES: dict[str, list[Any]] = {
    "d_model": [32, 64],
    "depth": [1, 2, 3, 4],
    "attention": list(KIND_KNOBS),
    "heads": [1, 2, 4],
    "ffn_mult": [2, 4],
    "window": [8, 16, 32],
    "rank": [4, 8],
}


def dist_of(name: str, choices: dict[str, list[Any]] = CHOICES) -> CategoricalDistribution:
    return CategoricalDistribution(choices[name.split(".")[-1]])


def walk(choose: Callable[[str], Any]) -> dict[str, Any]:
    """d_model, depth, then per layer below depth: attention, heads, ffn_mult and the
    knobs of the chosen kind only (the walk of SearchSpace.sample)."""
    params = {name: choose(name) for name in ("d_model", "depth")}
    for i in range(params["depth"]):
        kind = params[f"layer{i}.attention"] = choose(f"layer{i}.attention")
        for key in ("heads", "ffn_mult", *KIND_KNOBS[kind]):
            params[f"layer{i}.{key}"] = choose(f"layer{i}.{key}")
    return params


def toy_space(trial: optuna.Trial) -> dict[str, Any]:
    return walk(lambda name: trial.suggest_categorical(name, CHOICES[name.split(".")[-1]]))


def toy_objective(trial: optuna.Trial) -> float:
    p = toy_space(trial)
    score = p["d_model"] / 64 + 0.3 * p["depth"]
    score += sum(0.2 for i in range(p["depth"]) if p[f"layer{i}.attention"] == "local")
    return score


def arch_params(depth: int = 2, kind: str = "full", heads: int = 2, ffn: int = 2, d_model: int = 32,
                **knobs: int) -> dict[str, Any]:
    params: dict[str, Any] = {"d_model": d_model, "depth": depth}
    for i in range(depth):
        params.update({f"layer{i}.attention": kind, f"layer{i}.heads": heads, f"layer{i}.ffn_mult": ffn})
        for knob in KIND_KNOBS[kind]:
            params[f"layer{i}.{knob}"] = knobs.get(knob, CHOICES[knob][0])
    return params


def add(study: optuna.Study, params: dict[str, Any] | None = None, *, value: float | None = None,
        state: TrialState = TrialState.COMPLETE, constraints: dict[str, float] | None = None,
        intermediate: dict[int, float] | None = None, choices: dict[str, list[Any]] = CHOICES,
        completed: datetime.datetime | None = None, user_attrs: dict[str, Any] | None = None) -> None:
    params = params if params is not None else arch_params()
    trial = optuna.trial.create_trial(
        state=state, value=value, params=params,
        distributions={k: dist_of(k, choices) for k in params},
        constraints=constraints, intermediate_values=intermediate, user_attrs=user_attrs,
    )
    if completed is not None:
        trial.datetime_start = trial.datetime_complete = completed
    study.add_trial(trial)


def parent_of(study: optuna.Study, sampler: EvolutionSampler) -> int | None:
    """The parent the sampler picks for a new trial of `study`."""
    study.sampler = sampler
    trial = study.ask()
    return study._storage.get_trial_system_attrs(trial._trial_id)[PARENT_KEY]


def values_study(values: list[float | None], direction: str = "maximize", **kw: Any) -> optuna.Study:
    study = optuna.create_study(direction=direction)
    for v in values:
        add(study, value=v, **kw)
    return study


# ---- construction ---------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(population_size=0), "population_size"),
    (dict(population_size=2.5), "population_size"),
    (dict(population_size=4, tournament_size=5), "tournament_size"),
    (dict(tournament_size=0), "tournament_size"),
    (dict(mutation_prob=1.5), "mutation_prob"),
    (dict(mutation_prob=-0.1), "mutation_prob"),
    (dict(seed=-1), "seed"),
    (dict(seed="a"), "seed"),
    (dict(constraints_aware="yes"), "constraints_aware"),
    (dict(score="loss"), "score"),
])
def test_invalid_arguments_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EvolutionSampler(**kwargs)


def test_multi_objective_optimize_raises_clear_error() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=EvolutionSampler(seed=0))
    with pytest.raises(ValueError, match="multi-objective"):
        study.optimize(lambda t: (toy_objective(t), 0.0), n_trials=1)


# ---- selection ------------------------------------------------------------------------
def test_random_phase_until_population_full() -> None:
    study = optuna.create_study(direction="maximize", sampler=EvolutionSampler(population_size=5, seed=1))
    study.optimize(toy_objective, n_trials=6)
    parents = [t.system_attrs[PARENT_KEY] for t in study.trials]
    assert parents[:5] == [None] * 5
    assert parents[5] is not None


def test_tournament_of_whole_population_picks_best() -> None:
    study = values_study([1.0, 5.0, 3.0, 2.0, 4.0])
    assert parent_of(study, EvolutionSampler(population_size=5, tournament_size=5, seed=0)) == 1


def test_minimize_direction_picks_lowest() -> None:
    study = values_study([1.0, 5.0, -3.0, 2.0], direction="minimize")
    assert parent_of(study, EvolutionSampler(population_size=4, tournament_size=4, seed=0)) == 2


def test_tournament_winner_is_best_of_its_contestants() -> None:
    # With tournament_size < population_size the parent is never one of the
    # (tournament_size - 1) worst members, and over seeds more than one parent wins.
    values = [float(v) for v in range(10)]
    winners = set()
    for seed in range(30):
        study = values_study(values)
        winner = parent_of(study, EvolutionSampler(population_size=10, tournament_size=3, seed=seed))
        assert winner >= 2
        winners.add(winner)
    assert len(winners) > 1


def test_feasible_beats_infeasible_with_higher_value() -> None:
    study = optuna.create_study(direction="maximize")
    add(study, value=10.0, constraints={"latency": 1.0})
    add(study, value=1.0, constraints={"latency": -0.5})
    add(study, value=0.5, constraints={"latency": 0.0})  # exactly on budget: feasible
    add(study, value=0.7)  # no constraint: feasible
    assert parent_of(study, EvolutionSampler(population_size=4, tournament_size=4, seed=0)) == 1


def test_smaller_total_violation_wins_among_infeasible() -> None:
    study = optuna.create_study(direction="maximize")
    add(study, value=10.0, constraints={"latency": 3.0, "memory": -5.0})
    add(study, value=0.0, constraints={"latency": 0.5, "memory": 0.5})
    add(study, value=5.0, constraints={"latency": 2.0, "memory": 0.0})
    assert parent_of(study, EvolutionSampler(population_size=3, tournament_size=3, seed=0)) == 1


def test_constraints_ignored_when_not_aware() -> None:
    study = optuna.create_study(direction="maximize")
    add(study, value=10.0, constraints={"latency": 1.0})
    add(study, value=1.0, constraints={"latency": -1.0})
    sampler = EvolutionSampler(population_size=2, tournament_size=2, seed=0, constraints_aware=False)
    assert parent_of(study, sampler) == 0


def test_pruned_trial_counts_with_last_intermediate_value() -> None:
    study = optuna.create_study(direction="maximize")
    add(study, value=8.0)
    add(study, state=TrialState.PRUNED, intermediate={0: 1.0, 5: 9.0, 2: 3.0})
    assert study.trials[1].value is None  # not stored by create_trial: the sampler reads step 5
    assert parent_of(study, EvolutionSampler(population_size=2, tournament_size=2, seed=0)) == 1


def test_pruned_trial_pruned_by_optuna_counts() -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        toy_space(trial)
        if trial.number == 1:
            trial.report(3.0, 0)
            trial.report(7.0, 1)
            raise optuna.TrialPruned()
        return 5.0

    study.optimize(objective, n_trials=2)
    assert study.trials[1].state == TrialState.PRUNED
    assert parent_of(study, EvolutionSampler(population_size=2, tournament_size=2, seed=0)) == 1


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_score_replaces_the_value_higher_wins_in_either_direction(direction: str) -> None:
    # Values say trial 0 (maximize) or 1 (minimize); the score says trial 2.
    study = optuna.create_study(direction=direction)
    for value, s in [(5.0, 0.1), (1.0, 0.2), (3.0, 0.9), (4.0, 0.5)]:
        add(study, value=value, user_attrs={"s": s})
    sampler = EvolutionSampler(population_size=4, tournament_size=4, seed=0, score=lambda t: t.user_attrs["s"])
    assert parent_of(study, sampler) == 2


def test_score_none_or_nan_loses_and_feasibility_comes_first() -> None:
    study = optuna.create_study(direction="maximize")
    add(study, value=9.0, user_attrs={"s": None})
    add(study, value=9.0, user_attrs={"s": float("nan")})
    add(study, value=0.0, user_attrs={"s": 7.0}, constraints={"latency": 0.5})  # best score, infeasible
    add(study, value=0.0, user_attrs={"s": -3.0})
    add(study, value=0.0, user_attrs={"s": -4.0})
    sampler = EvolutionSampler(population_size=5, tournament_size=5, seed=0, score=lambda t: t.user_attrs["s"])
    assert parent_of(study, sampler) == 3
    # Having a score is compared first, as having a value is: an infeasible trial
    # with a score beats a feasible one without.
    study = optuna.create_study(direction="maximize")
    add(study, value=9.0, user_attrs={"s": None})
    add(study, value=0.0, user_attrs={"s": 1.0}, constraints={"latency": 0.5})
    assert parent_of(study, EvolutionSampler(population_size=2, tournament_size=2, seed=0,
                                             score=lambda t: t.user_attrs["s"])) == 1


def test_trial_without_value_loses() -> None:
    study = optuna.create_study(direction="maximize")
    add(study, state=TrialState.PRUNED)  # pruned before any report
    add(study, value=-100.0)
    add(study, state=TrialState.PRUNED, intermediate={0: float("nan")})
    assert parent_of(study, EvolutionSampler(population_size=3, tournament_size=3, seed=0)) == 1


def test_failed_and_running_trials_are_not_in_population() -> None:
    study = optuna.create_study(direction="maximize")
    add(study, value=1.0)
    add(study, state=TrialState.FAIL)
    study.ask()  # a running trial
    sampler = EvolutionSampler(population_size=2, tournament_size=2, seed=0)
    assert parent_of(study, sampler) is None  # one finished trial: still random
    add(study, value=2.0)
    assert [t.number for t in sampler.population(study)] == [0, 4]


def test_aging_population_is_most_recent_finished() -> None:
    study = optuna.create_study(direction="maximize")
    add(study, value=100.0)  # the best ever, but the oldest
    for v in (1.0, 2.0, 3.0):
        add(study, value=v)
    sampler = EvolutionSampler(population_size=3, tournament_size=3, seed=0)
    assert [t.number for t in sampler.population(study)] == [1, 2, 3]
    assert parent_of(study, sampler) == 3


def test_population_ordered_by_completion_time_not_number() -> None:
    study = optuna.create_study(direction="maximize")
    now = datetime.datetime.now()
    add(study, value=100.0, completed=now + datetime.timedelta(seconds=10))  # finished last
    for k, v in enumerate((1.0, 2.0, 3.0)):
        add(study, value=v, completed=now + datetime.timedelta(seconds=k))
    sampler = EvolutionSampler(population_size=3, tournament_size=3, seed=0)
    assert [t.number for t in sampler.population(study)] == [2, 3, 0]
    assert parent_of(study, sampler) == 0


# ---- mutation -------------------------------------------------------------------------
def run_children(sampler: EvolutionSampler, n: int, population: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(toy_objective, n_trials=population + n)
    return study


def test_child_differs_from_parent_and_keeps_most_params() -> None:
    study = run_children(EvolutionSampler(population_size=8, tournament_size=3, mutation_prob=0.05, seed=3),
                         n=40, population=8)
    kept = total = 0
    for child in study.trials[8:]:
        parent = study.trials[child.system_attrs[PARENT_KEY]]
        mutated = child.system_attrs[MUTATED_KEY]
        assert mutated and set(mutated) <= set(parent.params)
        assert child.params != parent.params
        for name in mutated:  # a mutated param the child still has was re-drawn differently
            if name in child.params:
                assert child.params[name] != parent.params[name]
        for name, value in parent.params.items():
            if name in child.params and name not in mutated:
                total += 1
                kept += child.params[name] == value
    # every param the child shares with its parent and that was not mutated is inherited
    assert total > 0 and kept == total
    # mostly one mutation per child at mutation_prob=0.05
    n_mut = [len(c.system_attrs[MUTATED_KEY]) for c in study.trials[8:]]
    assert sum(n_mut) / len(n_mut) < 2.0


def test_exactly_one_forced_mutation_at_zero_prob() -> None:
    study = run_children(EvolutionSampler(population_size=5, tournament_size=2, mutation_prob=0.0, seed=5),
                         n=15, population=5)
    for child in study.trials[5:]:
        assert len(child.system_attrs[MUTATED_KEY]) == 1
        parent = study.trials[child.system_attrs[PARENT_KEY]]
        assert child.params != parent.params


def test_high_mutation_prob_changes_many_params() -> None:
    study = run_children(EvolutionSampler(population_size=5, tournament_size=2, mutation_prob=1.0, seed=5),
                         n=5, population=5)
    for child in study.trials[5:]:
        parent = study.trials[child.system_attrs[PARENT_KEY]]
        assert set(child.system_attrs[MUTATED_KEY]) == set(parent.params)
        assert child.params["d_model"] != parent.params["d_model"]
        assert child.params["depth"] != parent.params["depth"]


def test_depth_mutation_upward_adds_random_new_layers() -> None:
    # The parent's only changeable param is depth (every other choice was single), so
    # the forced mutation re-draws depth to a different, here larger, value.
    single = dict(CHOICES, d_model=[32], attention=["local"], heads=[2], ffn_mult=[2], window=[16])
    study = optuna.create_study(direction="maximize")
    parent_params = arch_params(depth=1, kind="local", window=16)
    add(study, parent_params, value=1.0, choices=single)
    sampler = EvolutionSampler(population_size=1, tournament_size=1, mutation_prob=0.0, seed=0)
    study.sampler = sampler
    study.optimize(toy_objective, n_trials=1)
    child = study.trials[1]
    assert child.system_attrs[PARENT_KEY] == 0
    assert child.system_attrs[MUTATED_KEY] == ["depth"]
    depth = child.params["depth"]
    assert depth > 1
    for name, value in parent_params.items():  # layer 0 and d_model inherited
        if name != "depth":
            assert child.params[name] == value
    for i in range(1, depth):  # new layers exist, with their kind's knobs
        kind = child.params[f"layer{i}.attention"]
        for key in ("heads", "ffn_mult", *KIND_KNOBS[kind]):
            assert child.params[f"layer{i}.{key}"] in CHOICES[key]


def test_new_kind_gets_its_knobs_at_random() -> None:
    study = optuna.create_study(direction="maximize")
    single = dict(CHOICES, d_model=[32], depth=[1], heads=[2], ffn_mult=[2])
    add(study, arch_params(depth=1, kind="full"), value=1.0, choices=single)
    study.sampler = EvolutionSampler(population_size=1, tournament_size=1, mutation_prob=0.0, seed=1)
    study.optimize(toy_objective, n_trials=1)
    child = study.trials[1]
    assert child.system_attrs[MUTATED_KEY] == ["layer0.attention"]
    kind = child.params["layer0.attention"]
    assert kind != "full"
    for knob in KIND_KNOBS[kind]:
        assert child.params[f"layer0.{knob}"] in CHOICES[knob]


def test_parent_value_outside_new_choices_is_redrawn() -> None:
    # The space changed since the parent ran: its d_model choice is no longer offered.
    study = optuna.create_study(direction="maximize")
    add(study, arch_params(d_model=128), value=1.0, choices=dict(CHOICES, d_model=[128, 256]))
    study.sampler = EvolutionSampler(population_size=1, tournament_size=1, mutation_prob=0.0, seed=0)
    study.optimize(toy_objective, n_trials=3)
    assert all(t.params["d_model"] in CHOICES["d_model"] for t in study.trials[1:])


# ---- reproducibility, storage ---------------------------------------------------------
def test_same_seed_same_run() -> None:
    runs = [run_children(EvolutionSampler(population_size=4, tournament_size=2, seed=11), n=8, population=4)
            for _ in range(2)]
    assert [t.params for t in runs[0].trials] == [t.params for t in runs[1].trials]
    assert [t.system_attrs for t in runs[0].trials] == [t.system_attrs for t in runs[1].trials]


def test_new_sampler_on_same_storage_continues_identically(tmp_path) -> None:
    db = tmp_path / "a.db"
    sampler_a = EvolutionSampler(population_size=3, tournament_size=2, seed=7)
    study_a = optuna.create_study(study_name="s", storage=f"sqlite:///{db}", direction="maximize",
                                  sampler=sampler_a)
    study_a.optimize(toy_objective, n_trials=4)  # trial 3 is already a child
    shutil.copy(db, tmp_path / "b.db")

    # The process that ran the study goes on ...
    study_a.optimize(toy_objective, n_trials=1)
    # ... and, on an identical copy, a fresh process (new sampler object) resumes.
    study_b = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'b.db'}",
                                sampler=EvolutionSampler(population_size=3, tournament_size=2, seed=7))
    study_b.optimize(toy_objective, n_trials=1)
    ta, tb = study_a.trials[-1], study_b.trials[-1]
    assert ta.number == tb.number == 4
    assert ta.system_attrs[PARENT_KEY] is not None
    assert ta.system_attrs[PARENT_KEY] == tb.system_attrs[PARENT_KEY]
    assert ta.system_attrs[MUTATED_KEY] == tb.system_attrs[MUTATED_KEY]
    assert ta.params == tb.params


def test_running_trial_decision_is_read_back_from_storage(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'c.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize",
                                sampler=EvolutionSampler(population_size=3, tournament_size=2, seed=2))
    study.optimize(toy_objective, n_trials=3)
    trial = study.ask()  # decision made in before_trial and stored
    attrs = study._storage.get_trial_system_attrs(trial._trial_id)
    plan = attrs[PARENT_KEY], attrs[MUTATED_KEY]
    assert plan[0] is not None
    # Another sampler (other seed, other process) asked about that trial reads the plan back.
    other = EvolutionSampler(population_size=3, tournament_size=2, seed=999)
    study2 = optuna.load_study(study_name="s", storage=storage, sampler=other)
    frozen = study2._storage.get_trial(trial._trial_id)
    parent = study2.trials[plan[0]]
    if "d_model" not in plan[1]:
        assert other.sample_independent(study2, frozen, "d_model", dist_of("d_model")) == parent.params["d_model"]
    read_back = other._plan(study2, frozen)
    assert (read_back.parent.number, read_back.mutated, read_back.attempt) == (
        plan[0], frozenset(plan[1]), attrs[ATTEMPT_KEY])
    assert read_back.parent.params == parent.params


# ---- warm start ------------------------------------------------------------------------
@pytest.mark.parametrize("n_before", [0, 4])
def test_enqueued_trial_is_honoured(n_before: int) -> None:
    study = optuna.create_study(direction="maximize",
                                sampler=EvolutionSampler(population_size=3, tournament_size=2, seed=0))
    study.optimize(toy_objective, n_trials=n_before)
    vanilla = arch_params(depth=3, kind="full", heads=4, ffn=4, d_model=64)
    study.enqueue_trial(vanilla)
    study.optimize(toy_objective, n_trials=1)
    trial = study.trials[-1]
    assert trial.params == vanilla
    assert trial.system_attrs[PARENT_KEY] is None and trial.system_attrs[MUTATED_KEY] == []


def test_partially_enqueued_trial_draws_the_rest() -> None:
    study = optuna.create_study(direction="maximize",
                                sampler=EvolutionSampler(population_size=3, tournament_size=2, seed=0))
    study.optimize(toy_objective, n_trials=3)
    study.enqueue_trial({"depth": 4})
    study.optimize(toy_objective, n_trials=1)
    trial = study.trials[-1]
    assert trial.params["depth"] == 4 and "layer3.attention" in trial.params


# ---- end to end -------------------------------------------------------------------------
def test_lineage_points_to_earlier_finished_trials_and_search_improves() -> None:
    sampler = EvolutionSampler(population_size=10, tournament_size=4, mutation_prob=0.2, seed=0)
    study = run_children(sampler, n=50, population=10)
    for t in study.trials:
        parent = t.system_attrs[PARENT_KEY]
        if parent is not None:
            assert parent < t.number and study.trials[parent].state == TrialState.COMPLETE
    first = max(t.value for t in study.trials[:10])
    last = sorted(t.value for t in study.trials[-10:])[5]  # median of the last 10 children
    assert study.best_value >= first and last >= first - 0.5


# ---- repeats of known trials --------------------------------------------------------
def _two_bits(trial: optuna.Trial) -> float:
    return trial.suggest_categorical("x", [0, 1]) + 10 * trial.suggest_categorical("y", [0, 1])


@pytest.mark.parametrize("seed", range(10))
def test_child_that_repeats_a_known_trial_is_mutated_otherwise(seed):
    # Population 1 (the parent is the latest trial, (x=1, y=0)) and one mark per
    # child: flipping x gives (0, 0), which trial 0 already holds, flipping y gives
    # the new (1, 1). Left to chance, half the seeds would repeat trial 0.
    sampler = EvolutionSampler(population_size=1, tournament_size=1, mutation_prob=0.0, seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial({"x": 0, "y": 0})
    study.enqueue_trial({"x": 1, "y": 0})
    study.optimize(_two_bits, n_trials=3)
    child = study.trials[2]
    assert study.trials[2].system_attrs[PARENT_KEY] == 1
    assert child.params == {"x": 1, "y": 1}


def test_a_repeat_is_accepted_when_every_child_repeats():
    # Parent (1, 0) again, but both of its one-mark children exist already: the
    # sampler still proposes one of them (the objective replays it) and goes on.
    sampler = EvolutionSampler(population_size=1, tournament_size=1, mutation_prob=0.0, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for params in ({"x": 0, "y": 0}, {"x": 1, "y": 1}, {"x": 1, "y": 0}):
        study.enqueue_trial(params)
    study.optimize(_two_bits, n_trials=4)
    assert study.trials[3].params in ({"x": 0, "y": 0}, {"x": 1, "y": 1})


# ---- the child check ------------------------------------------------------------------
class DepthCheck:
    """A child check that walks the toy space with the sampler's suggest function and
    refuses more than `max_depth` layers (a stand-in for "over the latency budget"),
    keeping every candidate it was shown."""

    def __init__(self, max_depth: int = 2) -> None:
        self.max_depth = max_depth
        self.shown: list[dict[str, Any]] = []

    def __call__(self, suggest) -> bool:
        params = walk(lambda name: suggest(name, dist_of(name)))
        self.shown.append(params)
        return params["depth"] <= self.max_depth


def test_child_check_sees_exactly_the_candidate_the_trial_then_draws() -> None:
    # The check's dry run and the trial must agree on every parameter, the new layers
    # and knobs of a child whose depth or attention kind changed included; otherwise
    # a check could pass a candidate the trial does not become.
    check = DepthCheck(max_depth=2)
    sampler = EvolutionSampler(population_size=5, tournament_size=2, mutation_prob=0.5, seed=4, child_check=check)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    last_shown = []
    study.optimize(toy_objective, n_trials=40, callbacks=[lambda s, t: last_shown.append(check.shown[-1])])
    structure_changed = refused = 0
    for t, shown in zip(study.trials, last_shown):
        assert t.params == shown  # the last candidate the check saw is the trial
        attrs = t.system_attrs
        if len(attrs[REFUSED_KEY]) < 8:  # the check passed one: within the limit
            assert t.params["depth"] <= 2
        assert attrs[ATTEMPT_KEY] == min(len(attrs[REFUSED_KEY]), 7)
        refused += attrs[REFUSED_KEY].count("check")
        parent = attrs[PARENT_KEY]
        if parent is not None:
            structure_changed += set(t.params) != set(study.trials[parent].params)
    assert refused > 0 and structure_changed > 0  # both cases were exercised
    # Without the check, the same seed proposes deeper candidates (the check changed something).
    blind = optuna.create_study(direction="maximize",
                                sampler=EvolutionSampler(population_size=5, tournament_size=2, mutation_prob=0.5, seed=4))
    blind.optimize(toy_objective, n_trials=40)
    assert any(t.params["depth"] > 2 for t in blind.trials)


def test_child_check_also_screens_the_random_candidates_that_fill_the_population() -> None:
    check = DepthCheck(max_depth=1)  # a quarter of random draws pass
    sampler = EvolutionSampler(population_size=10, tournament_size=2, seed=0, child_check=check)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(toy_objective, n_trials=10)
    for t in study.trials:
        assert t.system_attrs[PARENT_KEY] is None
        if len(t.system_attrs[REFUSED_KEY]) < 8:
            assert t.params["depth"] == 1
    assert sum(t.params["depth"] == 1 for t in study.trials) >= 8  # 1 - 0.75**8 = 90% each


@pytest.mark.parametrize("seed", range(5))
def test_random_candidates_that_fill_the_population_do_not_repeat(seed) -> None:
    # Six architectures, five random candidates: drawn independently, all five are
    # distinct with probability 6!/6^5 = 9%. A repeat is drawn again, like a child's.
    def six(trial: optuna.Trial) -> float:
        return float(trial.suggest_categorical("x", [0, 1, 2]) + 3 * trial.suggest_categorical("y", [0, 1]))

    sampler = EvolutionSampler(population_size=5, tournament_size=2, seed=seed,
                               child_check=lambda suggest: (suggest("x", dist_x), suggest("y", dist_y)) is not None)
    dist_x = optuna.distributions.CategoricalDistribution([0, 1, 2])
    dist_y = optuna.distributions.CategoricalDistribution([0, 1])
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(six, n_trials=5)
    drawn = [(t.params["x"], t.params["y"]) for t in study.trials]
    assert len(set(drawn)) == 5, drawn
    assert all(t.system_attrs[PARENT_KEY] is None for t in study.trials)


def test_candidate_refused_every_time_is_still_tried_and_says_so() -> None:
    calls = []
    sampler = EvolutionSampler(population_size=2, tournament_size=1, seed=0,
                               child_check=lambda suggest: calls.append(1) and False)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(toy_objective, n_trials=4)
    assert len(calls) == 4 * 8
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        assert t.system_attrs[ATTEMPT_KEY] == 7
        assert set(t.system_attrs[REFUSED_KEY]) <= {"check", "repeat"} and len(t.system_attrs[REFUSED_KEY]) == 8


def test_enqueued_trial_is_not_checked() -> None:
    calls = []
    sampler = EvolutionSampler(population_size=2, tournament_size=1, seed=0,
                               child_check=lambda suggest: calls.append(1) and False)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    vanilla = arch_params(depth=4)
    study.enqueue_trial(vanilla)
    study.optimize(toy_objective, n_trials=1)
    assert study.trials[0].params == vanilla and calls == []
    assert study.trials[0].system_attrs[REFUSED_KEY] == []


def test_a_decided_plan_is_read_back_without_checking_again(tmp_path) -> None:
    # The plan (parent, marks, attempt) is stored when the trial starts; a process that
    # asks about that trial later (a retry, another worker) reads it and draws the same
    # parameters without calling its own check, which might measure differently.
    storage = f"sqlite:///{tmp_path / 'd.db'}"
    check = DepthCheck(max_depth=1)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize",
                                sampler=EvolutionSampler(population_size=3, tournament_size=2, seed=5, child_check=check))
    study.optimize(toy_objective, n_trials=6)
    trial = study.ask()
    attrs = study._storage.get_trial_system_attrs(trial._trial_id)
    assert attrs[PARENT_KEY] is not None
    planned = check.shown[-1]

    def must_not_run(suggest):
        raise AssertionError("the check ran again for a trial whose plan is stored")

    other = EvolutionSampler(population_size=3, tournament_size=2, seed=5, child_check=must_not_run)
    study2 = optuna.load_study(study_name="s", storage=storage, sampler=other)
    frozen = study2._storage.get_trial(trial._trial_id)
    again = walk(lambda name: other.sample_independent(study2, frozen, name, dist_of(name)))
    assert again == planned


def test_child_check_must_be_callable() -> None:
    with pytest.raises(ValueError, match="child_check"):
        EvolutionSampler(child_check=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("on_refusal", ["fresh", "extend"])
def test_extend_keeps_a_refused_childs_marks_and_adds_one(on_refusal: str) -> None:
    # The parent is one layer of width 64; only d_model, depth and heads can change,
    # and one is marked per child (mutation_prob 0). The check passes a child only if
    # it is deeper AND narrower (a deeper model fits the budget only if it is
    # narrower): no single mark gives that, so fresh marks are refused every time,
    # while extending the refused child's marks reaches both within 3 attempts.
    single = dict(CHOICES, attention=["full"], ffn_mult=[2])
    study = optuna.create_study(direction="maximize")
    add(study, arch_params(depth=1, d_model=64), value=1.0, choices=single)

    def deeper_and_narrower(suggest) -> bool:
        params = walk(lambda name: suggest(name, dist_of(name, single)))
        return params["depth"] > 1 and params["d_model"] == 32

    study.sampler = EvolutionSampler(population_size=1, tournament_size=1, mutation_prob=0.0, seed=0,
                                     child_check=deeper_and_narrower, on_refusal=on_refusal)
    study.optimize(lambda t: walk(lambda n: t.suggest_categorical(n, single[n.split(".")[-1]]))["depth"], n_trials=1)
    child = study.trials[1]
    refused, mutated = child.system_attrs[REFUSED_KEY], child.system_attrs[MUTATED_KEY]
    if on_refusal == "fresh":
        assert refused == ["check"] * 8 and len(mutated) == 1
    else:
        assert 1 <= len(refused) <= 2 and refused == ["check"] * len(refused)
        assert len(mutated) == len(refused) + 1 and {"depth", "d_model"} <= set(mutated)
        assert child.params["depth"] > 1 and child.params["d_model"] == 32


def test_on_refusal_must_be_known() -> None:
    with pytest.raises(ValueError, match="on_refusal"):
        EvolutionSampler(on_refusal="grow")
