"""The search: a real (tiny) study in SQLite, read back through Optuna's public
API; the budget-first constraint path; the measurement cache; resume rules."""

from __future__ import annotations

import io
import json
import math
import sqlite3
import threading
import time
import warnings

import optuna
import pytest
import torch

from nas.objective import Budget, Objective
from nas.results import FINISHED, steps_spent, total_steps_spent
from nas.search import Search, SearchConfig, SearchError
from fixture_spaces import TWO_ARCH_SPACE
from nas.show import show
from nas.storage import default_url
from nas.tables import Tables
from evaluators.hardware import resolve_device
from evaluators.tasks import get_task
from evaluators.training import Trainer
from search_spaces import ArchSpec, build_model, load_space

TINY_TASK = dict(vocab_size=16, seq_len=16, num_kv_pairs=2, n_valid=64, batch_size=16)


def tiny_config(tmp_path, name="t", **over) -> SearchConfig:
    cfg = dict(study=name, storage=default_url(name, tmp_path), space="tiny", task="mqar", task_options=TINY_TASK,
               latency_ms=1000.0, trials=6, stages=(4, 8), population=3, tournament=2, hurdle_trials=2)
    cfg.update(over)
    return SearchConfig(**cfg)


def test_search_runs_and_optuna_reads_everything_back(tmp_path):
    cfg = tiny_config(tmp_path)
    log = io.StringIO()
    Search(cfg, log=log).run()
    # A fresh Optuna handle (no nas code involved) sees everything.
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(finished) == 6
    assert study.trials[0].user_attrs.get("warm_start") == "vanilla transformer"
    for t in finished:
        a = t.user_attrs
        for key in ("arch", "arch_hash", "latency_ms", "device", "seed", "steps_trained"):
            assert key in a, key
        assert a["latency_ms"] > 0
        assert set(t.constraints) == {"latency_ms"}
        assert "depth" in t.params and "layer0.attention" in t.params
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == [4, 8]
            assert t.value == t.intermediate_values[8]
            assert a["steps_trained"] == 8 and a["params"] > 0 and a["memory_mb"] > 0
    cfg_attr = study.user_attrs["nas:config"]
    assert cfg_attr["task"]["name"] == "mqar" and cfg_attr["stages"] == [4, 8]
    assert "best" in log.getvalue()


def test_over_budget_is_recorded_infeasible_and_not_trained(tmp_path):
    task = get_task("mqar", **TINY_TASK)
    space = load_space("tiny").for_task(task.shape)
    elapsed = []
    # Three fresh studies (fresh measurement caches): the median time is the claim,
    # so one slow moment of a shared CI machine does not fail it.
    for i in range(3):
        url = default_url(f"b{i}", tmp_path)
        study = optuna.create_study(study_name=f"b{i}", storage=url, direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=i))
        objective = Objective(study_name=f"b{i}", task=task, space=space, budget=Budget(latency_ms=1e-6),
                              device=resolve_device("cpu"), stages=(4, 8), tables=Tables(url), checkpoint_dir=None,
                              threads=1)
        t0 = time.perf_counter()
        study.optimize(objective, n_trials=1)
        elapsed.append(time.perf_counter() - t0)
        (t,) = study.trials
        assert t.state == optuna.trial.TrialState.PRUNED
        assert t.constraints["latency_ms"] > 0
        assert t.user_attrs["steps_trained"] == 0 and not t.intermediate_values
        assert t.user_attrs["stopped"].startswith("over budget: latency")
        assert "params" not in t.user_attrs  # never built for training
    elapsed.sort()
    print(f"over-budget candidates: {', '.join(f'{e:.3f}' for e in elapsed)} s")
    assert elapsed[1] < 1.0, f"an over-budget candidate took {elapsed[1]:.2f} s (median of 3)"


def test_repeated_architecture_is_measured_once(tmp_path):
    task = get_task("mqar", **TINY_TASK)
    space = load_space("tiny").for_task(task.shape)
    url = default_url("c", tmp_path)
    study = optuna.create_study(study_name="c", storage=url, direction="maximize")
    params = {"d_model": 16, "depth": 1, "layer0.attention": "local", "layer0.heads": 2, "layer0.ffn_mult": 2, "layer0.window": 4}
    study.enqueue_trial(params)
    study.enqueue_trial(params)
    tables = Tables(url)
    objective = Objective(study_name="c", task=task, space=space, budget=Budget(latency_ms=1e-6),
                          device=resolve_device("cpu"), stages=(4,), tables=tables, checkpoint_dir=None, threads=1)
    study.optimize(objective, n_trials=2)
    first, second = study.trials
    assert first.user_attrs["arch_hash"] == second.user_attrs["arch_hash"]
    assert first.user_attrs["measure_cached"] is False
    assert second.user_attrs["measure_cached"] is True
    assert second.user_attrs["latency_ms"] == first.user_attrs["latency_ms"]
    assert tables.count_measurements() == 1


def test_resume_continues_to_the_total_and_refuses_other_settings(tmp_path):
    cfg = tiny_config(tmp_path, trials=3)
    Search(cfg, log=io.StringIO()).run()
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    before = {t.number: (t.state, t.value, t.params) for t in study.trials}
    Search(tiny_config(tmp_path, trials=5), log=io.StringIO()).run()
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    assert sum(t.state.is_finished() for t in study.trials) >= 5
    for t in study.trials:
        if t.number in before:
            assert (t.state, t.value, t.params) == before[t.number]
    with pytest.raises(SearchError, match="task"):
        Search(tiny_config(tmp_path, task_options={**TINY_TASK, "num_kv_pairs": 3}), log=io.StringIO())
    with pytest.raises(SearchError, match="budget"):
        Search(tiny_config(tmp_path, latency_ms=999.0), log=io.StringIO())


def test_default_stages_are_a_third_of_the_steps_then_all_and_a_stored_study_keeps_its_own(tmp_path):
    # No --stages: one hurdle at a third of the steps (12 steps: 4 then 12), stored with
    # the study, and every trial reports there.
    cfg = tiny_config(tmp_path, stages=None, steps=12, trials=3, pruner="none")
    Search(cfg, log=io.StringIO()).run()
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    assert study.user_attrs["nas:config"]["stages"] == [4, 12]
    trained = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.intermediate_values]
    assert trained and all(set(t.intermediate_values) == {4, 12} for t in trained)
    # A study made under the earlier default (four stages at 400 steps) resumes with
    # its stored stages when none are asked for: changing the default moves no study.
    old = tiny_config(tmp_path, name="old", stages=(25, 50, 133, 400), steps=400)
    Search(old, log=io.StringIO())
    resumed = Search(tiny_config(tmp_path, name="old", stages=None), log=io.StringIO())
    assert resumed.stages == (25, 50, 133, 400)
    stored = optuna.load_study(study_name="old", storage=old.storage).user_attrs["nas:config"]["stages"]
    assert stored == [25, 50, 133, 400]
    # --steps asked for by name is a request, even at the default's value: 400 steps
    # are (133, 400) by the default rule, not the stored stages, so it is refused.
    with pytest.raises(SearchError, match="stages"):
        Search(tiny_config(tmp_path, name="old", stages=None, steps=400), log=io.StringIO())


def test_impossible_budget_is_refused_before_anything_is_stored(tmp_path):
    cfg = tiny_config(tmp_path, latency_ms=1e-6)
    with pytest.raises(SearchError, match="cannot be met"):
        Search(cfg, log=io.StringIO())
    assert not (tmp_path / "t.db").exists()


def test_a_budget_only_another_kind_meets_is_accepted(tmp_path):
    # The cost order puts the linear kinds first, but at 16 tokens another kind may
    # peak lower. Peak memory (deterministic, unlike time) of the smallest architecture
    # of each kind, measured here: a budget between the lowest and the first kind's is
    # accepted, one below the lowest is refused and names it.
    from nas.objective import measure

    space = load_space("tiny").for_task(get_task("mqar", **TINY_TASK).shape)
    peaks = [measure(spec, device=resolve_device("cpu"), batch_size=16, tables=None, threads=1).memory_mb
             for spec in space.cheapest_of_each_kind(get_task("mqar", **TINY_TASK).shape)]
    if min(peaks) == peaks[0]:
        pytest.skip(f"the first kind in cost order is also the smallest here ({peaks})")
    between = (min(peaks) + peaks[0]) / 2
    search = Search(tiny_config(tmp_path, memory_mb=between, measure_threads=1), log=io.StringIO())
    assert search.budget.memory_mb == between
    with pytest.raises(SearchError, match=rf"peaks at least at {min(peaks):.3f} MiB"):
        Search(tiny_config(tmp_path, name="below", memory_mb=min(peaks) * 0.99, measure_threads=1), log=io.StringIO())


def test_default_budget_is_the_vanilla_transformers_own_measured_latency(tmp_path):
    # No --latency-ms: the budget is the vanilla transformer's measured latency, and
    # the warm-start trial (that same transformer) reuses that measurement from the
    # cache, so it is exactly at the budget, hence feasible.
    cfg = tiny_config(tmp_path, latency_ms=None, trials=1, pruner="none")
    search = Search(cfg, log=io.StringIO())
    study = search.run(progress=False)
    t0 = study.trials[0]
    assert t0.user_attrs["warm_start"] == "vanilla transformer"
    assert t0.user_attrs["latency_ms"] <= search.budget.latency_ms < t0.user_attrs["latency_ms"] + 1e-3
    assert t0.constraints["latency_ms"] == pytest.approx(t0.user_attrs["latency_ms"] - search.budget.latency_ms)
    assert t0.constraints["latency_ms"] <= 0
    out = io.StringIO()
    show(study, out=out)
    assert f"budget: {search.budget.latency_ms:g} ms per batch of 16 on cpu:1threads (the vanilla transformer's measured latency)" in out.getvalue()


def test_a_second_study_in_a_database_takes_its_budget_from_the_cache(tmp_path):
    # Two studies in one file (as every study on one PostgreSQL database is): the
    # second's default budget is the vanilla transformer's latency as the file's cache
    # holds it, the figure its warm start reads, so that trial stays within it however
    # a fresh timing would come out. Here the cached figure is set by hand to 50 s, far
    # from any real timing.
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    Search(tiny_config(tmp_path, name="a", storage=url, trials=1, pruner="none"), log=io.StringIO()).run(progress=False)
    con = sqlite3.connect(tmp_path / "shared.db")
    rows = con.execute("SELECT arch_hash, latency FROM nas_measurements").fetchall()
    vanilla = optuna.load_study(study_name="a", storage=url).trials[0].user_attrs["arch_hash"]
    (latency,) = [json.loads(lat) for h, lat in rows if h == vanilla]
    latency["median_ms"] = 50_000.0
    con.execute("UPDATE nas_measurements SET latency = ? WHERE arch_hash = ?", (json.dumps(latency), vanilla))
    con.commit()
    con.close()
    log = io.StringIO()
    search = Search(tiny_config(tmp_path, name="b", storage=url, latency_ms=None, trials=1, pruner="none"), log=log)
    assert search.budget.latency_ms == 50_000.0 and "this database's cache" in log.getvalue()
    t0 = search.run(progress=False).trials[0]
    assert t0.user_attrs["warm_start"] == "vanilla transformer" and t0.user_attrs["latency_ms"] == 50_000.0
    assert t0.constraints["latency_ms"] <= 0 and t0.state == optuna.trial.TrialState.COMPLETE


def test_an_explicit_budget_is_checked_against_the_cached_figure_the_trials_will_read(tmp_path):
    # The smallest architecture of each kind as the file's cache holds it (set by hand to
    # 50 s) is what every trial there reads; a fresh timing under the budget must not
    # let the budget pass.
    from nas.objective import measure

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    search = Search(tiny_config(tmp_path, name="a", storage=url, trials=1, pruner="none"), log=io.StringIO())
    tables = Tables(url)
    for spec in search.space.cheapest_of_each_kind(search.task.shape):
        measure(spec, device=search.device, batch_size=search.measure_batch, tables=tables, threads=search.threads)
    tables.dispose()
    con = sqlite3.connect(tmp_path / "shared.db")
    con.execute("UPDATE nas_measurements SET latency = json_set(latency, '$.median_ms', 50000.0)")
    con.commit()
    con.close()
    with pytest.raises(SearchError, match=r"measures at least 50000.000 ms on cpu \(as this database measured it before\)"):
        Search(tiny_config(tmp_path, name="b", storage=url, latency_ms=1000.0), log=io.StringIO())


def test_a_budget_measured_now_is_not_called_cached(tmp_path):
    # A one-architecture space: the vanilla transformer is the cheapest, timed a moment
    # before into an existing file's cache; that is no earlier measurement.
    space = tmp_path / "one.toml"
    space.write_text(TWO_ARCH_SPACE.replace('["full", "linear"]', '["full"]'))
    (tmp_path / "new.db").write_bytes(b"")
    log = io.StringIO()
    Search(tiny_config(tmp_path, name="n", storage=f"sqlite:///{tmp_path / 'new.db'}", space=str(space),
                       latency_ms=None), log=log)
    assert "budget = measured latency of the vanilla transformer" in log.getvalue()
    assert "cache" not in log.getvalue()


def test_latency_fraction_scales_the_vanilla_transformers_measured_latency(tmp_path):
    # --latency-fraction F: budget = F x the vanilla transformer's latency, measured once when
    # the study is made. The warm-start trial (that transformer) reads its latency from the
    # same cached measurement, so the budget must be F times it (rounded up to a microsecond).
    # F = 2 keeps the test independent of how the tiny space's architectures time.
    cfg = tiny_config(tmp_path, latency_ms=None, latency_fraction=2.0, trials=1, pruner="none")
    log = io.StringIO()
    Search(cfg, log=log).run(progress=False)
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    vanilla_ms = study.trials[0].user_attrs["latency_ms"]
    budget = study.user_attrs["nas:config"]["budget"]["latency_ms"]
    assert budget == math.ceil(2.0 * vanilla_ms * 1000) / 1000
    assert study.trials[0].constraints["latency_ms"] == pytest.approx(vanilla_ms - budget)
    assert f"= {budget:.3f} ms per batch" in log.getvalue()
    out = io.StringIO()
    show(study, out=out)
    assert f"budget: {budget:g} ms per batch of 16 on cpu:1threads (2 x the vanilla transformer's measured {vanilla_ms:.3f} ms)" in out.getvalue()
    # Resuming: without the flag, or with the same fraction, keeps the stored budget (no new
    # measurement); another fraction is refused, and nothing is stored.
    for again in (dict(latency_fraction=None), dict(latency_fraction=2.0)):
        resumed = Search(tiny_config(tmp_path, latency_ms=None, trials=2, pruner="none", **again), log=io.StringIO())
        assert resumed.budget.latency_ms == budget
    with pytest.raises(SearchError, match=r"latency_fraction: stored 2.0 .* vs asked 0.5"):
        Search(tiny_config(tmp_path, latency_ms=None, latency_fraction=0.5, trials=2), log=io.StringIO())
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    assert len(study.trials) == 1 and study.user_attrs["nas:config"]["budget"]["latency_ms"] == budget
    # A study made with --latency-ms has no fraction to match.
    Search(tiny_config(tmp_path, name="ms", trials=1, pruner="none"), log=io.StringIO())
    with pytest.raises(SearchError, match="latency_fraction: stored None"):
        Search(tiny_config(tmp_path, name="ms", latency_ms=None, latency_fraction=1.0), log=io.StringIO())


def test_retried_trial_keeps_its_constraint_without_a_warning(tmp_path):
    # A retry (RetryHeartbeatStaleTrialCallback) starts with the failed trial's
    # system attrs, constraints included; measuring the same architecture again
    # must leave the value as it is and not make Optuna warn.
    task = get_task("mqar", **TINY_TASK)
    space = load_space("tiny").for_task(task.shape)
    url = default_url("r", tmp_path)
    study = optuna.create_study(study_name="r", storage=url, direction="maximize")
    params = {"d_model": 16, "depth": 1, "layer0.attention": "full", "layer0.heads": 1, "layer0.ffn_mult": 2}
    tables = Tables(url)
    objective = Objective(study_name="r", task=task, space=space, budget=Budget(latency_ms=1e-6),
                          device=resolve_device("cpu"), stages=(4,), tables=tables, checkpoint_dir=None, threads=1)
    study.enqueue_trial(params)
    study.optimize(objective, n_trials=1)
    first = study.trials[0]
    study.enqueue_trial(params)  # a retry runs its trial's params again (fixed_params)
    retry = study.ask()
    key = "constraints:latency_ms"  # what a retry copies over from the failed trial
    study._storage.set_trial_system_attr(retry._trial_id, key, first.system_attrs[key])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(optuna.TrialPruned):
            objective(retry)
    assert study.trials[1].constraints == first.constraints


# ---- an architecture trained before is replayed, not trained again -----------------
REPEATED = {"d_model": 16, "depth": 1, "layer0.attention": "local", "layer0.heads": 2, "layer0.ffn_mult": 2,
            "layer0.window": 4}


class _PruneTrials(optuna.pruners.BasePruner):
    """Prunes the listed trial numbers at their first report (a stand-in for a hurdle)."""

    def __init__(self, numbers: set[int]) -> None:
        self.numbers = numbers

    def prune(self, study, trial) -> bool:
        return trial.number in self.numbers


def _run_enqueued(tmp_path, name: str, n: int, pruner: optuna.pruners.BasePruner, checkpoints: bool = False):
    task = get_task("mqar", **TINY_TASK)
    space = load_space("tiny").for_task(task.shape)
    url = default_url(name, tmp_path)
    study = optuna.create_study(study_name=name, storage=url, direction="maximize", pruner=pruner)
    for _ in range(n):
        study.enqueue_trial(REPEATED)
    objective = Objective(study_name=name, task=task, space=space, budget=Budget(latency_ms=1000.0),
                          device=resolve_device("cpu"), stages=(4, 8), tables=Tables(url),
                          checkpoint_dir=tmp_path / f"ckpt-{name}" if checkpoints else None, threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Optuna's "step already reported"
        study.optimize(objective, n_trials=n)
    return study.trials


def test_repeated_architecture_is_trained_once_and_replayed(tmp_path):
    # The reference: the architecture trained alone, in a study of its own.
    (ref,) = _run_enqueued(tmp_path, "ref", 1, optuna.pruners.NopPruner())
    first, second = _run_enqueued(tmp_path, "dup", 2, optuna.pruners.NopPruner(), checkpoints=True)
    assert first.user_attrs["steps_spent"] == 8 and "replayed_from" not in first.user_attrs
    assert second.state == optuna.trial.TrialState.COMPLETE
    assert second.user_attrs["replayed_from"] == 0 and second.user_attrs["steps_spent"] == 0
    assert second.user_attrs["steps_trained"] == 8
    assert second.intermediate_values == ref.intermediate_values and second.value == ref.value
    assert second.user_attrs["checkpoint"] == first.user_attrs["checkpoint"]  # the same weights
    # Every metric at every stage is kept; the fitness the pruner saw (MQAR: accuracy) is one of them.
    stages = ref.user_attrs["stage_metrics"]
    assert set(stages) == {"4", "8"}
    for step, metrics in stages.items():
        assert metrics["accuracy"] == ref.intermediate_values[int(step)]
        assert math.isfinite(metrics["loss"]) and metrics["loss"] > 0
    assert ref.user_attrs["metrics"] == stages["8"]
    assert second.user_attrs["stage_metrics"] == stages and second.user_attrs["metrics"] == stages["8"]


def test_replay_meets_the_pruner_of_now(tmp_path):
    # Trial 0 trains through; the pruner stops trial 1 at its first report, which is
    # a replayed one: it ends PRUNED at step 4 with trial 0's fitness there, untrained.
    first, second = _run_enqueued(tmp_path, "p", 2, _PruneTrials({1}))
    assert first.state == optuna.trial.TrialState.COMPLETE
    assert second.state == optuna.trial.TrialState.PRUNED
    assert second.intermediate_values == {4: first.intermediate_values[4]}
    assert second.user_attrs["steps_spent"] == 0 and "replayed" in second.user_attrs["stopped"]
    # Only the metrics of the stage it reached, as if it had trained there.
    assert second.user_attrs["stage_metrics"] == {"4": first.user_attrs["stage_metrics"]["4"]}
    assert second.user_attrs["metrics"] == first.user_attrs["stage_metrics"]["4"]


def test_replay_of_a_twin_that_stopped_early_trains_the_rest(tmp_path):
    # Trial 0 is stopped at step 4; trial 1 (same architecture) is not: it replays
    # step 4, then trains from scratch to step 8 and reports only the new stage.
    (ref,) = _run_enqueued(tmp_path, "ref", 1, optuna.pruners.NopPruner())
    first, second = _run_enqueued(tmp_path, "e", 2, _PruneTrials({0}))
    assert first.state == optuna.trial.TrialState.PRUNED and first.user_attrs["steps_spent"] == 4
    assert second.state == optuna.trial.TrialState.COMPLETE
    assert second.user_attrs["replayed_from"] == 0 and second.user_attrs["steps_spent"] == 8
    assert second.intermediate_values == ref.intermediate_values


def test_progress_line_says_a_trial_was_replayed(tmp_path):
    from nas.search import _Progress

    first, second = _run_enqueued(tmp_path, "line", 2, optuna.pruners.NopPruner())
    study = optuna.load_study(study_name="line", storage=default_url("line", tmp_path))
    out = io.StringIO()
    progress = _Progress(study, 2, None, out)
    progress.update(study, first)
    progress.update(study, second)
    lines = out.getvalue().splitlines()
    assert "replayed" not in lines[0]
    assert "replayed trial 0" in lines[1]


def test_progress_line_reads_the_study_once_and_reports_hand_counted_figures():
    from optuna.distributions import CategoricalDistribution

    from nas.search import _Progress

    study = optuna.create_study(direction="maximize")
    dist = {"x": CategoricalDistribution([0, 1, 2, 3])}
    specs = [  # state, value, latency_ms, constraint, steps_spent
        (optuna.trial.TrialState.COMPLETE, 0.5, 3.0, -1.0, 400),
        (optuna.trial.TrialState.COMPLETE, 0.9, 9.0, 1.0, 400),  # over budget: not the best
        (optuna.trial.TrialState.PRUNED, None, 2.0, -2.0, 25),
        (optuna.trial.TrialState.FAIL, None, 2.0, -2.0, 50),
    ]
    for i, (state, value, lat, c, spent) in enumerate(specs):
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value, params={"x": i}, distributions=dist,
            user_attrs={"latency_ms": lat, "steps_spent": spent}, constraints={"latency_ms": c}))
    calls = []
    real = study.get_trials
    study.get_trials = lambda *a, **k: calls.append(k) or real(*a, **k)
    out = io.StringIO()
    progress = _Progress(study, 10, 1000, out)
    calls.clear()
    progress.update(study, study.trials[2])
    assert len(calls) == 2  # study.trials above (the argument) and one read for the line
    line = out.getvalue()
    assert progress.done == 3  # COMPLETE and PRUNED, not FAIL
    assert "[  3/10] [steps 875/1000]" in line  # 400 + 400 + 25 + 50
    assert "best 0.5000 @ 3.000 ms (trial 0)" in line


def _spent_in_order(url: str, name: str) -> list[int]:
    """Each trial's `steps_spent`, by trial number, read back with plain Optuna."""
    study = optuna.load_study(study_name=name, storage=url)
    return [int(t.user_attrs.get("steps_spent", 0)) for t in sorted(study.trials, key=lambda t: t.number)]


def test_step_budget_stops_starting_trials_once_spent_and_resume_continues_to_it(tmp_path):
    # No pruner and a space of distinct architectures: a trained trial costs 8 steps,
    # a replayed one 0. The budget is checked before each trial starts, so the study
    # stops with the first trial that reaches it: spent before that trial < budget <= total.
    cfg = tiny_config(tmp_path, trials=None, step_budget=20, pruner="none")
    log = io.StringIO()
    Search(cfg, log=log).run()
    spent = _spent_in_order(cfg.storage, "t")
    assert sum(spent[:-1]) < 20 <= sum(spent), spent
    assert all(s in (0, 8) for s in spent), spent
    assert "[steps " in log.getvalue() and "/20]" in log.getvalue()
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    before = {t.number: (t.state, t.value, t.params) for t in study.trials}

    Search(tiny_config(tmp_path, trials=None, step_budget=44, pruner="none"), log=io.StringIO()).run()
    spent = _spent_in_order(cfg.storage, "t")
    assert sum(spent[:-1]) < 44 <= sum(spent), spent
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    assert len(study.trials) > len(before)
    for t in study.trials:
        if t.number in before:
            assert (t.state, t.value, t.params) == before[t.number]


def _other_workers_trial(cfg: SearchConfig) -> tuple[optuna.Study, optuna.Trial]:
    """A trial RUNNING in "another worker": asked through a second handle on the
    storage, with one heartbeat recorded (as Optuna's worker loop does)."""
    from nas.storage import open_storage
    storage = open_storage(cfg.storage)
    study = optuna.load_study(study_name=cfg.study, storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Heartbeat ... supposed to be used with Study.optimize"
        trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    return study, trial


def _finished(cfg: SearchConfig) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=cfg.study, storage=cfg.storage)
    return [t for t in study.trials if t.state in FINISHED]


def test_a_worker_does_not_start_a_trial_that_would_overshoot_the_target(tmp_path):
    # 2 finished + 1 running elsewhere = the target of 3: this worker waits; the
    # other trial finishes; the study ends with exactly 3 and this worker trained none.
    cfg = tiny_config(tmp_path, trials=2)
    Search(cfg, log=io.StringIO()).run()
    other, trial = _other_workers_trial(cfg)
    threading.Timer(1.5, lambda: other.tell(trial, 0.5)).start()
    log = io.StringIO()
    t0 = time.time()
    Search(tiny_config(tmp_path, trials=3), log=log).run()
    assert time.time() - t0 >= 1.4  # it did wait for the other trial
    finished = _finished(cfg)
    assert len(finished) == 3, [t.number for t in finished]
    assert finished[-1].number == trial.number  # the other worker's, not a new one
    assert "waiting for 1 trial(s) running in other workers" in log.getvalue()


def test_a_waiting_worker_retries_the_trial_of_a_worker_that_died(tmp_path, monkeypatch):
    # The "other worker" records one heartbeat and dies. Without waiting, this run would
    # start a fresh trial at once and leave, the dead one still RUNNING. Waiting, it sees
    # the heartbeat go stale (grace period 2 s), and runs the re-queued retry itself.
    import nas.search
    import nas.storage
    monkeypatch.setattr(nas.storage, "GRACE_PERIOD", 2)
    monkeypatch.setattr(nas.storage, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(nas.search, "GRACE_PERIOD", 2)
    cfg = tiny_config(tmp_path, trials=2)
    Search(cfg, log=io.StringIO()).run()
    _, dead = _other_workers_trial(cfg)
    Search(tiny_config(tmp_path, trials=3), log=io.StringIO()).run()
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    assert study.trials[dead.number].state == optuna.trial.TrialState.FAIL
    finished = _finished(cfg)
    assert len(finished) == 3, [(t.number, t.state.name) for t in study.trials]
    assert finished[-1].system_attrs.get("failed_trial") == dead.number  # the retry, run here
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def test_trials_and_step_budget_whichever_comes_first(tmp_path):
    cfg = tiny_config(tmp_path, trials=2, step_budget=10_000, pruner="none")
    Search(cfg, log=io.StringIO()).run()
    assert len(_spent_in_order(cfg.storage, "t")) == 2
    with pytest.raises(SearchError, match="--step-budget"):
        Search(tiny_config(tmp_path, name="u", trials=None, step_budget=0), log=io.StringIO())
    with pytest.raises(SearchError, match="--trials N, --step-budget"):
        Search(tiny_config(tmp_path, name="u", trials=None, step_budget=None), log=io.StringIO())


def test_step_budget_alone_stops_when_the_space_is_exhausted(tmp_path):
    # Two architectures: after both are trained every trial is a free replay, so
    # the budget would never be spent. The search must stop, and say why.
    from nas.search import IDLE_TRIALS_LIMIT

    space = tmp_path / "two.toml"
    space.write_text(TWO_ARCH_SPACE)
    cfg = tiny_config(tmp_path, space=str(space), trials=None, step_budget=10**9, pruner="none", sampler="random")
    log = io.StringIO()
    Search(cfg, log=log).run(progress=False)
    spent = _spent_in_order(cfg.storage, "t")
    assert sum(spent) == 16  # each of the two trained once, for 8 steps
    trailing = len(spent) - max(i for i, s in enumerate(spent) if s > 0) - 1
    assert trailing == IDLE_TRIALS_LIMIT, spent
    assert "space looks exhausted" in log.getvalue()


def test_fixed_hurdles_stop_exactly_the_trials_whose_loss_is_above_the_hurdle(tmp_path):
    # Recomputed by hand from what Optuna stored: the hurdle at step 4 is the mean of
    # minus the loss of the first 2 trials to report there; every later trial that
    # reported there went on iff its -loss was at or above it.
    cfg = tiny_config(tmp_path, trials=10, hurdle_trials=2, seed=1, hurdle_rule="fixed")
    Search(cfg, log=io.StringIO()).run()
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    at4 = [t for t in sorted(study.trials, key=lambda t: t.number)
           if t.state.is_finished() and 4 in t.intermediate_values]
    assert all(t.user_attrs["search"]["hurdle_signal"] == "loss" for t in at4)
    neg_loss = {t.number: -t.user_attrs["stage_metrics"]["4"]["loss"] for t in at4}
    hurdle = (neg_loss[at4[0].number] + neg_loss[at4[1].number]) / 2
    judged = at4[2:]
    for t in judged:
        went_on = 8 in t.intermediate_values
        assert went_on == (neg_loss[t.number] >= hurdle), (t.number, neg_loss[t.number], hurdle)
    # The same rule on the fitness would have decided some of them otherwise (seed 1 of
    # the tiny search: 7 of 8), so this checks the loss, not a coincidence of the two.
    fit_hurdle = (at4[0].intermediate_values[4] + at4[1].intermediate_values[4]) / 2
    assert any((t.intermediate_values[4] >= fit_hurdle) != (8 in t.intermediate_values) for t in judged)
    from nas.show import show

    out = io.StringIO()
    show(study, out=out)
    assert "hurdles (step: mean -loss of the first 2 trials" in out.getvalue() and "progressive" not in out.getvalue()


def test_selection_on_loss_picks_the_parent_with_the_lowest_last_loss(tmp_path):
    # Tournament of the whole population (3): every child's parent must be, among
    # the 3 trials finished before it, the one with the lowest validation loss at
    # its last stage, recomputed from what Optuna stored (all trials are feasible
    # under the 1 s budget). On accuracy the same rule would pick another parent
    # at least once, so the test tells the two signals apart.
    from nas.evolution import PARENT_KEY

    cfg = tiny_config(tmp_path, trials=12, population=3, tournament=3, selection_signal="loss", seed=1)
    Search(cfg, log=io.StringIO()).run(progress=False)
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert all(t.state.is_finished() for t in trials)

    def last(t, metric):
        stages = t.user_attrs["stage_metrics"]
        return stages[str(max(int(s) for s in stages))][metric]

    children = [t for t in trials if t.system_attrs.get(PARENT_KEY) is not None]
    assert len(children) >= 5
    differs_from_accuracy = 0
    for child in children:
        before = sorted((t for t in trials if t.number < child.number), key=lambda t: (t.datetime_complete, t.number))[-3:]
        lowest = min(last(t, "loss") for t in before)
        parent = next(t for t in before if t.number == child.system_attrs[PARENT_KEY])
        # Equal losses (a replayed twin) tie: the member drawn first wins, any of them.
        assert last(parent, "loss") == lowest, (child.number, parent.number, [(t.number, last(t, "loss")) for t in before])
        differs_from_accuracy += last(parent, "accuracy") < max(last(t, "accuracy") for t in before)
    assert differs_from_accuracy >= 1
    assert all(t.user_attrs["search"]["selection_signal"] == "loss" for t in trials)
    with pytest.raises(SearchError, match="--selection-signal"):
        Search(tiny_config(tmp_path, name="u", selection_signal="perplexity"), log=io.StringIO())


def test_progressive_hurdles_stop_the_trials_that_set_them_and_train_the_warm_start_through(tmp_path):
    # `nas search` with the default --hurdle-rule progressive, recomputed by
    # hand from what Optuna stored: the vanilla warm start (trial 0, enqueued) trains
    # through although no hurdle is set when it reports; the first other trial to
    # report at step 4 sets the hurdle with it (2 trials) and stops there; every
    # later one goes on iff its -loss at step 4 is at or above their mean.
    from nas.cli import _search_config, build_parser

    # The command line passes the rule asked for, or None: the study's own, progressive for a new one.
    for argv, rule in ((["search", "--study", "t"], None),
                       (["search", "--study", "t", "--hurdle-rule", "fixed"], "fixed")):
        assert _search_config(build_parser().parse_args(argv), argv).hurdle_rule == rule
    cfg = tiny_config(tmp_path, trials=10, hurdle_trials=2, seed=1)  # the default rule: progressive
    Search(cfg, log=io.StringIO()).run()
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    at4 = [t for t in sorted(study.trials, key=lambda t: t.number)
           if t.state.is_finished() and 4 in t.intermediate_values]
    assert at4[0].number == 0 and at4[0].user_attrs.get("warm_start") == "vanilla transformer"
    assert all(t.user_attrs["search"]["hurdle_rule"] == "progressive" for t in at4)
    assert sorted(at4[0].intermediate_values) == [4, 8]
    setter = at4[1]
    assert sorted(setter.intermediate_values) == [4] and setter.state == optuna.trial.TrialState.PRUNED
    assert "defining the hurdle at step 4" in setter.user_attrs["stopped"]
    neg_loss = {t.number: -t.user_attrs["stage_metrics"]["4"]["loss"] for t in at4}
    hurdle = (neg_loss[at4[0].number] + neg_loss[setter.number]) / 2
    judged = at4[2:]
    assert judged
    for t in judged:
        went_on = 8 in t.intermediate_values
        assert went_on == (neg_loss[t.number] >= hurdle), (t.number, neg_loss[t.number], hurdle)
        if not went_on:
            assert t.user_attrs["stopped"].startswith("below the hurdle at step 4")
    from nas.show import show

    out = io.StringIO()
    show(study, out=out)
    assert "progressive: training past a stage waited for its hurdle" in out.getvalue()


def _retrained_loss(trial: optuna.trial.FrozenTrial, steps: int, **trainer_options) -> float:
    """An independent training of `trial`'s architecture, seeded as a study seeds it."""
    spec = ArchSpec.from_json(trial.user_attrs["arch"])
    torch.manual_seed(trial.user_attrs["seed"])
    trainer = Trainer(build_model(spec), get_task("mqar", **TINY_TASK), max_steps=steps,
                      seed=trial.user_attrs["seed"], **trainer_options)
    trainer.train(steps)
    return trainer.evaluate().metrics["loss"]


def test_new_studies_train_at_a_constant_rate_after_warm_up_and_older_ones_keep_their_schedule(tmp_path):
    # A study made now stores the default schedule, and its candidates train with it.
    cfg = tiny_config(tmp_path, trials=2, pruner="none", stages=(16,))
    Search(cfg, log=io.StringIO()).run()
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    assert study.user_attrs["nas:train_options"] == {"min_lr_ratio": 1.0}
    trained = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and "replayed_from" not in t.user_attrs]
    loss = trained[0].user_attrs["metrics"]["loss"]
    assert loss == pytest.approx(_retrained_loss(trained[0], 16, min_lr_ratio=1.0), rel=1e-4)
    assert loss != pytest.approx(_retrained_loss(trained[0], 16, min_lr_ratio=0.1), rel=1e-3)
    # Asking a stored study for another schedule is refused; asking for its own is not.
    with pytest.raises(SearchError, match="train_options"):
        Search(tiny_config(tmp_path, trials=2, pruner="none", stages=(16,), train_options={"min_lr_ratio": 0.1}),
               log=io.StringIO())
    Search(tiny_config(tmp_path, trials=2, pruner="none", stages=(16,), train_options={"min_lr_ratio": 1.0}),
           log=io.StringIO())
    # The trainer's default rate, asked for by name, is what the study trains with
    # (it stored no lr); another rate is refused.
    assert Trainer.__init__.__kwdefaults__["lr"] == 3e-3
    Search(tiny_config(tmp_path, trials=2, pruner="none", stages=(16,), train_options={"lr": 3e-3}), log=io.StringIO())
    with pytest.raises(SearchError, match="train_options"):
        Search(tiny_config(tmp_path, trials=2, pruner="none", stages=(16,), train_options={"lr": 1e-3}), log=io.StringIO())
    # A study stored before the default (no schedule recorded) resumes with the trainer's cosine.
    study.set_user_attr("nas:train_options", {})
    Search(tiny_config(tmp_path, trials=6, pruner="none", stages=(16,)), log=io.StringIO()).run()
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    assert study.user_attrs["nas:train_options"] == {}
    later = [t for t in study.trials if t.number >= 2 and t.state == optuna.trial.TrialState.COMPLETE
             and "replayed_from" not in t.user_attrs]
    assert later, "the resumed study trained no new architecture"
    assert later[0].user_attrs["metrics"]["loss"] == pytest.approx(_retrained_loss(later[0], 16), rel=1e-4)
    out = io.StringIO()
    show(study, out=out)
    assert "warm-up, then a cosine down to 0.1 x the peak" in out.getvalue()
    study.set_user_attr("nas:train_options", {"min_lr_ratio": 1.0, "lr": 0.01})
    out = io.StringIO()
    show(study, out=out)
    assert "peak learning rate 0.01, a warm-up, then a constant rate" in out.getvalue()


SHALLOW_OR_DEEP_SPACE = """
name = "shallow-or-deep"
description = "one layer or six: a latency budget between them refuses every six-layer candidate"
[model]
d_model = [16]
depth = [1, 6]
[layer]
attention = ["full", "local", "linear"]
heads = [1, 2]
ffn_mult = [2, 4]
[knobs]
window = [4, 8]
"""


def test_evolution_proposes_only_children_measured_within_the_budget(tmp_path):
    # A budget between one-layer and six-layer candidates (the geometric mean of the
    # largest of each): the default evolution measures each candidate before proposing
    # it and draws again while it is over; with --no-budget-check it tries what it
    # draws, and records those over the budget infeasible.
    task = get_task("mqar", **TINY_TASK)
    space_file = tmp_path / "sd.toml"
    space_file.write_text(SHALLOW_OR_DEEP_SPACE)
    space = load_space(str(space_file)).for_task(task.shape)
    from nas.objective import measure

    def latency(depth: int) -> float:
        spec = space.sample(lambda name, choices: depth if name == "depth" else max(choices), task.shape)
        return measure(spec, device=resolve_device("cpu"), batch_size=task.batch_size, tables=None, threads=1,
                       memory=False).latency_ms

    budget = math.sqrt(latency(1) * latency(6))
    runs = {}
    for name, aware in (("checked", True), ("blind", False)):
        cfg = tiny_config(tmp_path, name=name, space=str(space_file), latency_ms=budget, trials=10, pruner="none",
                          stages=(2,), steps=2, warm_start=False, budget_aware=aware, measure_threads=1)
        Search(cfg, log=io.StringIO()).run(progress=False)
        runs[name] = optuna.load_study(study_name=name, storage=cfg.storage).trials
    checked = [t for t in runs["checked"] if len(t.system_attrs["evolution:refused"]) < 8]
    assert len(checked) >= 7  # a candidate passed within 8 draws (the rest: every draw over or a repeat)
    for t in checked:
        assert t.user_attrs["latency_ms"] <= budget and t.constraints["latency_ms"] <= 0
        assert t.user_attrs["measure_cached"] is True  # the check's measurement, read from the cache
        assert t.user_attrs["search"]["budget_aware"] is True
    assert any("check" in t.system_attrs["evolution:refused"] for t in runs["checked"])
    blind = runs["blind"]
    assert all(t.system_attrs["evolution:refused"] == [] for t in blind)
    assert sum(t.constraints["latency_ms"] > 0 for t in blind) >= 2
    # The summary says how many candidates the check set aside (counted here by hand).
    from nas.results import summary_table

    set_aside = sum(t.system_attrs["evolution:refused"].count("check") for t in runs["checked"])
    first_line = {name: summary_table(optuna.load_study(study_name=name, storage=default_url(name, tmp_path)))
                  .splitlines()[0] for name in runs}
    assert first_line["checked"].endswith(f"evolution set aside {set_aside} more candidates measured over the budget")
    assert "set aside" not in first_line["blind"]


def test_budget_check_measures_once_into_the_cache_and_refuses_what_is_over_or_invalid(tmp_path):
    task = get_task("mqar", **TINY_TASK)
    space = load_space("tiny").for_task(task.shape)
    url = default_url("w", tmp_path)
    optuna.create_study(study_name="w", storage=url)  # the schema the tables sit beside
    tables = Tables(url)
    params = {"d_model": 16, "depth": 1, "layer0.attention": "local", "layer0.heads": 2, "layer0.ffn_mult": 2,
              "layer0.window": 4}
    asked = []

    def suggest(name, dist):
        asked.append((name, tuple(dist.choices)))
        return params[name]

    def objective(budget: Budget) -> Objective:
        return Objective(study_name="w", task=task, space=space, budget=budget, device=resolve_device("cpu"),
                         stages=(4,), tables=tables, checkpoint_dir=None, threads=1)

    assert objective(Budget(latency_ms=1e6)).within_budget(suggest) is True
    assert tables.count_measurements() == 1
    # The distributions the check is shown are those the trial will suggest.
    assert ("layer0.window", (4, 8)) in asked and ("depth", (1, 2)) in asked
    assert objective(Budget(latency_ms=1e-6)).within_budget(suggest) is False
    assert objective(Budget(latency_ms=1e6, memory_mb=1e-6)).within_budget(suggest) is False
    assert objective(Budget(latency_ms=1e6, memory_mb=1e6)).within_budget(suggest) is True
    assert tables.count_measurements() == 1  # one architecture, measured once
    params["layer0.heads"] = 3  # 16 is not divisible by 3 heads: the space cannot build it
    assert objective(Budget(latency_ms=1e6)).within_budget(suggest) is False


def test_unknown_on_refusal_is_refused_before_anything_is_stored(tmp_path):
    with pytest.raises(SearchError, match="--on-refusal must be one of fresh, extend"):
        Search(tiny_config(tmp_path, on_refusal="grow"), log=io.StringIO())
    assert not (tmp_path / "t.db").exists()


def _oom_for_two_layers(real):
    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    def measure_latency(model, **kw):
        if len(model.spec.layers) == 2:
            model.forward = out_of_memory  # what measure_latency runs hits the device's limit
        return real(model, **kw)
    return measure_latency


def test_out_of_memory_while_measuring_fails_that_candidate_and_the_search_goes_on(tmp_path, monkeypatch):
    # Two-layer candidates run out of memory when measured. The evolution's budget check
    # measures candidates while Optuna starts a trial, outside what study.optimize
    # catches: there it must count as a refusal, not end the search.
    import nas.objective

    monkeypatch.setattr(nas.objective, "measure_latency", _oom_for_two_layers(nas.objective.measure_latency))
    cfg = tiny_config(tmp_path, trials=8, pruner="none")
    Search(cfg, log=io.StringIO()).run(progress=False)
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.COMPLETE) + states.count(optuna.trial.TrialState.PRUNED) == 8
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed  # the enqueued two-layer vanilla transformer is not checked: it fails when measured
    for t in failed:
        assert t.params["depth"] == 2
        assert t.user_attrs["failure"] == "out_of_memory"
        assert "building" not in t.user_attrs["failure_message"] and "measurement" in t.user_attrs["failure_message"]
    assert all(t.params["depth"] == 1 for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert any("check" in t.system_attrs["evolution:refused"] for t in study.trials)


def test_a_failed_trial_gives_its_model_back_before_the_next_one(tmp_path, monkeypatch):
    import gc
    import weakref

    from evaluators.errors import DeviceOutOfMemory

    models = []

    def train(self, *args, **kwargs):
        models.append(weakref.ref(self.model))
        raise DeviceOutOfMemory("out of memory on cuda during training step 1 (simulated)")

    monkeypatch.setattr(Trainer, "train", train)
    alive_after = []
    gc.disable()  # no routine collection: only the search's own may free the model
    try:
        Search(tiny_config(tmp_path, trials=1)).run(
            progress=False, on_trial=lambda study, trial: alive_after.append(models[-1]() is not None))
    finally:
        gc.enable()
    assert alive_after and not any(alive_after)


def test_measure_dtype_is_what_every_measurement_ran_in_and_part_of_the_study(tmp_path):
    import json
    import sqlite3

    cfg = tiny_config(tmp_path, trials=2, pruner="none", measure_dtype="bfloat16")
    Search(cfg, log=io.StringIO()).run(progress=False)
    db = tmp_path / "t.db"
    rows = sqlite3.connect(db).execute("SELECT dtype, latency, memory FROM nas_measurements").fetchall()
    assert rows
    for dtype, latency, memory in rows:
        assert dtype == "bfloat16" and json.loads(latency)["dtype"] == "bfloat16"
        assert memory is None or json.loads(memory)["dtype"] == "bfloat16"
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    assert study.user_attrs["nas:config"]["measure_dtype"] == "bfloat16"
    n = len(study.trials)
    # Resumed without asking: the study's own dtype. Asked for another: refused, nothing run.
    Search(tiny_config(tmp_path, trials=3, pruner="none"), log=io.StringIO()).run(progress=False)
    assert {r[0] for r in sqlite3.connect(db).execute("SELECT dtype FROM nas_measurements")} == {"bfloat16"}
    with pytest.raises(SearchError, match='measure_dtype: stored "bfloat16" vs asked "float32"'):
        Search(tiny_config(tmp_path, trials=4, measure_dtype="float32"), log=io.StringIO())
    assert len(optuna.load_study(study_name="t", storage=cfg.storage).trials) == n + 1


def test_a_study_stored_before_the_measure_dtype_resumes_in_float32(tmp_path):
    cfg = tiny_config(tmp_path, trials=1, pruner="none")
    Search(cfg, log=io.StringIO()).run(progress=False)
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    config = dict(study.user_attrs["nas:config"])
    assert config.pop("measure_dtype") == "float32"  # auto, on the CPU
    study.set_user_attr("nas:config", config)  # as studies made before the key was stored
    Search(tiny_config(tmp_path, trials=2, pruner="none"), log=io.StringIO()).run(progress=False)
    assert len(optuna.load_study(study_name="t", storage=cfg.storage).trials) == 2
    with pytest.raises(SearchError, match='measure_dtype: stored "float32" vs asked "bfloat16"'):
        Search(tiny_config(tmp_path, trials=3, measure_dtype="bfloat16"), log=io.StringIO())


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # autocast on "cuda" built on a CPU-only machine
def test_measure_dtype_names():
    from evaluators.hardware import DTYPE_NAMES, resolve_dtype
    from nas.choices import MEASURE_DTYPES

    assert MEASURE_DTYPES == DTYPE_NAMES
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) is torch.float32
    assert [resolve_dtype(n, cpu) for n in ("float32", "bfloat16", "float16")] == [
        torch.float32, torch.bfloat16, torch.float16]
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", cpu)
    # auto on a GPU: bfloat16 where it runs natively (compute capability 8.0 on), float32
    # where it would be emulated; training's autocast follows the same rule.
    from unittest import mock

    from evaluators.tasks.base import _native_bf16, autocast

    for capability, expected in (((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16), ((7, 5), torch.float32)):
        _native_bf16.cache_clear()
        with mock.patch("torch.cuda.get_device_capability", return_value=capability), \
                mock.patch("torch.cuda.current_device", return_value=0):
            assert resolve_dtype("auto", torch.device("cuda")) is expected
            ctx = autocast(torch.device("cuda:1"))
            assert (getattr(ctx, "fast_dtype", None) == torch.bfloat16) == (expected == torch.bfloat16)
    _native_bf16.cache_clear()


def test_ctrl_c_while_a_trial_is_sampled_leaves_no_trial_running(tmp_path, monkeypatch):
    # Optuna creates the trial before the sampler runs; evolution's budget check then
    # measures candidates. A Ctrl-C there used to leave the trial RUNNING with no
    # heartbeat, and every later run waited on it as if another worker ran it.
    calls = []

    def interrupted(self, suggest):
        calls.append(1)
        raise KeyboardInterrupt

    cfg = tiny_config(tmp_path, trials=4, pruner="none")
    with monkeypatch.context() as m:
        m.setattr(Objective, "within_budget", interrupted)
        with pytest.raises(KeyboardInterrupt):
            Search(cfg, log=io.StringIO()).run(progress=False)
    assert calls == [1]
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    by_state = {t.number: t.state for t in study.trials}
    assert optuna.trial.TrialState.RUNNING not in by_state.values()
    cut = study.trials[-1]
    assert cut.state == optuna.trial.TrialState.FAIL and cut.user_attrs["failure"] == "interrupted"
    assert cut.params == {}  # it was interrupted before it drew anything
    log = io.StringIO()
    t0 = time.perf_counter()
    Search(cfg, log=log).run(progress=False)
    assert "waiting for" not in log.getvalue() and time.perf_counter() - t0 < 60
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    assert sum(t.state in FINISHED for t in study.trials) == 4
    for number, state in by_state.items():  # what the first run finished is untouched
        assert study.trials[number].state == state


def test_the_training_seed_is_the_studys(tmp_path):
    # Stored with the study: a resume (or worker) that asks for none trains with it, one
    # that asks for another is refused (mixed seeds would compare luck, not architectures).
    Search(tiny_config(tmp_path, seed=3, trials=2, pruner="none"), log=io.StringIO()).run(progress=False)
    resumed = Search(tiny_config(tmp_path, trials=3, pruner="none"), log=io.StringIO())
    assert resumed.seed == 3
    study = resumed.run(progress=False)
    assert {t.user_attrs["seed"] for t in study.trials} == {3}
    with pytest.raises(SearchError, match="seed: stored 3 vs asked 5"):
        Search(tiny_config(tmp_path, seed=5), log=io.StringIO())
    # A study made before the seed was stored trains with the one asked for, as then.
    config = dict(study.user_attrs["nas:config"])
    del config["seed"]
    study.set_user_attr("nas:config", config)
    assert Search(tiny_config(tmp_path, seed=5), log=io.StringIO()).seed == 5


def test_a_resume_keeps_the_studys_sampler_and_pruner(tmp_path):
    # A resume or worker that names none runs what the study was made with (they once
    # fell back to evolution and hurdles silently); one that names another says so.
    Search(tiny_config(tmp_path, sampler="tpe", pruner="median", trials=2), log=io.StringIO()).run(progress=False)
    resumed = Search(tiny_config(tmp_path, trials=3), log=io.StringIO())
    assert (resumed.cfg.sampler, resumed.cfg.pruner) == ("tpe", "median")
    study = resumed.run(progress=False)
    assert {(t.user_attrs["search"]["sampler"], t.user_attrs["search"]["pruner"]) for t in study.trials} == {("tpe", "median")}
    log = io.StringIO()
    switched = Search(tiny_config(tmp_path, sampler="random", trials=3), log=log)
    assert (switched.cfg.sampler, switched.cfg.pruner) == ("random", "median")
    assert "note: this run uses --sampler random (the study's: tpe)" in log.getvalue()
    # A study made before they were stored: as its latest trial ran.
    study.set_user_attr("nas:search", None)
    assert Search(tiny_config(tmp_path, trials=3), log=io.StringIO()).cfg.sampler == "tpe"
    # A new study: the defaults.
    fresh = Search(tiny_config(tmp_path, name="new"), log=io.StringIO())
    assert (fresh.cfg.sampler, fresh.cfg.pruner) == ("evolution", "hurdles")


SETTINGS = dict(population=4, tournament=3, mutation_prob=0.5, budget_aware=False, on_refusal="fresh",
                hurdle_trials=3, hurdle_signal="fitness", hurdle_rule="fixed", selection_signal="fitness")
UNNAMED = {k: None for k in SETTINGS}  # what a resume or `nas worker` that names none of them passes


def test_a_resume_keeps_the_studys_evolution_and_hurdle_settings(tmp_path):
    # They once took the defaults on a resume or in a hand-started worker that did not
    # name them, so a second worker ran another evolution (population 12, not the
    # study's 4) against other hurdles.
    Search(tiny_config(tmp_path, trials=2, **SETTINGS), log=io.StringIO()).run(progress=False)
    log = io.StringIO()
    resumed = Search(tiny_config(tmp_path, trials=4, **UNNAMED), log=log)
    assert "note:" not in log.getvalue()
    assert {k: getattr(resumed.cfg, k) for k in SETTINGS} == SETTINGS
    study = resumed.load(resumed.objective())
    sampler, pruner = study.sampler, study.pruner
    assert (sampler._population_size, sampler._tournament_size, sampler._mutation_prob) == (4, 3, 0.5)
    assert sampler._child_check is None and sampler._on_refusal == "fresh" and sampler._score is None
    assert (pruner._min_trials, pruner._signal, pruner._progressive) == (3, "fitness", False)
    study = resumed.run(progress=False)
    assert all({k: t.user_attrs["search"][k] for k in SETTINGS} == SETTINGS
               for t in study.trials if "search" in t.user_attrs)
    # One named on the command line is used, with a note; the others stay the study's.
    log = io.StringIO()
    switched = Search(tiny_config(tmp_path, trials=5, **{**UNNAMED, "population": 6, "budget_aware": True}), log=log)
    assert (switched.cfg.population, switched.cfg.tournament, switched.cfg.hurdle_rule) == (6, 3, "fixed")
    assert ("note: this run uses --population 6 (the study's: 4), --budget-check (the study's: --no-budget-check)"
            in log.getvalue())
    # Checked against the study's numbers: a tournament larger than its population is refused.
    with pytest.raises(SearchError, match=r"--tournament must be an integer from 1 to --population \(4\), got 5"):
        Search(tiny_config(tmp_path, **{**UNNAMED, "tournament": 5}), log=io.StringIO())
    # A study that stored only its sampler and pruner (made before the others were
    # stored): the rest as its latest trial ran (trials record them all).
    study.set_user_attr("nas:search", {"sampler": "evolution", "pruner": "hurdles"})
    old = Search(tiny_config(tmp_path, **UNNAMED), log=io.StringIO()).cfg
    assert {k: getattr(old, k) for k in SETTINGS} == SETTINGS
    # A new study: the defaults, stored whole.
    fresh = Search(tiny_config(tmp_path, name="new", **UNNAMED), log=io.StringIO())
    stored = optuna.load_study(study_name="new", storage=fresh.url).user_attrs["nas:search"]
    assert stored == {"sampler": "evolution", "pruner": "hurdles", "population": 12, "tournament": 4,
                      "mutation_prob": 0.2, "budget_aware": True, "on_refusal": "extend", "hurdle_trials": 5,
                      "hurdle_signal": "loss", "hurdle_rule": "progressive", "selection_signal": "loss"}
    assert (fresh.cfg.population, fresh.cfg.hurdle_rule, fresh.cfg.on_refusal) == (12, "progressive", "extend")


def test_a_settings_refusal_names_the_fields_that_differ_and_stays_short():
    from nas.search import _describe_diff

    stored = {"space": {"name": "tiny", "definition": {"depth": [1, 2], "d_model": [16], "heads": [1, 2]}},
              "task": {"name": "mqar", "options": {"seq_len": 16}}, "stages": [4, 8]}
    wanted = {"space": {"name": "tiny", "definition": {"depth": [1, 2, 3], "d_model": [16], "heads": [1, 2]}},
              "task": {"name": "mqar", "options": {"seq_len": 32}}, "stages": [4, 8]}
    assert _describe_diff(stored, wanted) == (
        "task.options.seq_len: stored 16 vs asked 32; space.definition.depth: stored [1, 2] vs asked [1, 2, 3]")
    wanted["stages"], wanted["space"]["name"] = [8], "other"
    assert _describe_diff(stored, wanted).endswith("; and 1 more")


def test_an_error_while_a_trial_is_sampled_fails_that_trial_and_is_raised(tmp_path, monkeypatch):
    def broken(self, suggest):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")

    cfg = tiny_config(tmp_path, trials=4, pruner="none")
    monkeypatch.setattr(Objective, "within_budget", broken)
    with pytest.raises(RuntimeError, match="CUDNN_STATUS_EXECUTION_FAILED"):
        Search(cfg, log=io.StringIO()).run(progress=False)
    trials = optuna.load_study(study_name="t", storage=cfg.storage).trials
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in trials]
    assert trials[-1].user_attrs["failure"] == "sampling_error"
    assert "CUDNN_STATUS_EXECUTION_FAILED" in trials[-1].user_attrs["failure_message"]


def _interrupt_the_warm_start(where: str, m: pytest.MonkeyPatch) -> None:
    """Ctrl-C on the first trial (the warm start): while it is sampled (in evolution's
    plan), or while it trains, right after its first stage's report."""
    from nas.evolution import EvolutionSampler

    if where == "sampled":
        real_plan = EvolutionSampler._plan_of

        def plan_of(self, study, trial):
            if trial.number == 0:
                raise KeyboardInterrupt
            return real_plan(self, study, trial)

        m.setattr(EvolutionSampler, "_plan_of", plan_of)
        return
    real_train, calls = Trainer.train, []

    def train(self, until_step, report_at=(), report=None):
        calls.append(1)

        def report_then_stop(step, result):
            report(step, result)
            raise KeyboardInterrupt

        return real_train(self, until_step, report_at, report_then_stop if len(calls) == 1 else report)

    m.setattr(Trainer, "train", train)


@pytest.mark.parametrize("where", ["sampled", "trained"])
def test_ctrl_c_during_the_warm_start_queues_it_again(tmp_path, monkeypatch, where):
    # Cut short while sampled, a trial is failed by us; while trained, by Optuna. Either
    # way it records why, and the vanilla warm start, the study's reference, is queued
    # again with the queue's own attributes only, not what the cut-short run recorded,
    # so its steps count once.
    cfg = tiny_config(tmp_path, trials=3, pruner="none")
    with monkeypatch.context() as m:
        _interrupt_the_warm_start(where, m)
        with pytest.raises(KeyboardInterrupt):
            Search(cfg, log=io.StringIO()).run(progress=False)
    trials = optuna.load_study(study_name="t", storage=cfg.storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    assert trials[0].user_attrs["failure"] == "interrupted" and where in trials[0].user_attrs["failure_message"]
    assert trials[1].system_attrs["fixed_params"] == trials[0].system_attrs["fixed_params"]
    assert trials[1].user_attrs == {"warm_start": "vanilla transformer"}
    assert trials[0].user_attrs.get("steps_spent", 0) == (4 if where == "trained" else 0)
    assert total_steps_spent(trials) == trials[0].user_attrs.get("steps_spent", 0)
    Search(cfg, log=io.StringIO()).run(progress=False)
    trials = optuna.load_study(study_name="t", storage=cfg.storage).trials
    warm = [t for t in trials if t.user_attrs.get("warm_start") and t.state in FINISHED]
    assert len(warm) == 1 and warm[0].params == trials[0].system_attrs["fixed_params"] and warm[0].number == 1
    assert sum(t.state in FINISHED for t in trials) == 3


def test_a_queued_trial_has_spent_no_steps():
    # Optuna's own retry of a dead worker's trial copies all its user attributes.
    copy = optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, user_attrs={"steps_spent": 7})
    assert steps_spent(copy) == 0


# ---- --timeout: a wall-clock limit per run ----------------------------------------------
def test_timeout_stops_starting_trials_and_the_same_command_continues(tmp_path, monkeypatch):
    # A clock that moves 60 s per finished trial: with a 100 s timeout the second trial
    # ends past it, so no third starts (the trial running at the deadline finishes).
    now = [1000.0]
    monkeypatch.setattr("nas.search._clock", lambda: now[0])

    def tick(study, trial):
        now[0] += 60.0

    cfg = tiny_config(tmp_path, trials=None, timeout_s=100.0, pruner="none", warm_start=False)
    log = io.StringIO()
    Search(cfg, log=log).run(on_trial=tick)
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert "stopped: --timeout reached with 2 finished trials; run the same command again" in log.getvalue()
    before = {t.number: (t.state, t.value, t.params) for t in study.trials}

    # The timeout is this run's, not the study's: a resume gets its own 100 s.
    Search(cfg, log=io.StringIO()).run(on_trial=tick)
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    assert len(study.trials) == 4
    assert {t.number: (t.state, t.value, t.params) for t in study.trials if t.number in before} == before

    # With --trials too, whichever comes first.
    Search(tiny_config(tmp_path, trials=5, timeout_s=1000.0, pruner="none"), log=io.StringIO()).run(on_trial=tick)
    assert len(optuna.load_study(study_name="t", storage=cfg.storage).trials) == 5


def test_timeout_counts_from_the_command_start(tmp_path):
    # A worker of `--workers K` gets the command's start: if the time is spent by the
    # time the worker is ready, it starts no trial (nothing past the command's timeout).
    cfg = tiny_config(tmp_path, trials=None, timeout_s=5.0, started_at=time.time() - 10.0, warm_start=False)
    log = io.StringIO()
    Search(cfg, log=log).run()
    assert optuna.load_study(study_name="t", storage=cfg.storage).trials == []
    assert "stopped: --timeout reached with 0 finished trials" in log.getvalue()


def test_seed_and_timeout_of_the_wrong_type_are_refused(tmp_path):
    with pytest.raises(SearchError, match="--seed must be a non-negative integer"):
        Search(tiny_config(tmp_path, seed="3"), log=io.StringIO())
    with pytest.raises(SearchError, match="--timeout must be a positive duration"):
        Search(tiny_config(tmp_path, timeout_s="1h"), log=io.StringIO())


def test_timeout_must_be_positive(tmp_path):
    with pytest.raises(SearchError, match="--timeout must be a positive duration"):
        Search(tiny_config(tmp_path, timeout_s=0.0), log=io.StringIO())
    with pytest.raises(SearchError, match="--timeout must be a positive duration"):
        Search(tiny_config(tmp_path, timeout_s=float("nan")), log=io.StringIO())


@pytest.mark.parametrize("text, seconds", [("3600", 3600.0), ("90s", 90.0), ("45m", 2700.0), ("8h", 28800.0),
                                           ("1.5h", 5400.0), ("2d", 172800.0), (" 10M ", 600.0)])
def test_parse_duration(text, seconds):
    from nas.search import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "abc", "10x", "0", "-5m", "inf", "nanh"])
def test_parse_duration_refuses(text):
    from nas.search import parse_duration

    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# ---- --measure-batch: the budget at the deployment's batch size ----------------------------
def _measured_batches(db) -> set[int]:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("SELECT batch_size FROM nas_measurements")}
    finally:
        con.close()


def test_measure_batch_is_where_latency_is_measured_and_is_kept_on_resume(tmp_path):
    cfg = tiny_config(tmp_path, trials=3, measure_batch=1, pruner="none")
    log = io.StringIO()
    Search(cfg, log=log).run()
    db = tmp_path / "t.db"
    assert _measured_batches(db) == {1}  # the task trains at batch 16; nothing was measured there
    study = optuna.load_study(study_name="t", storage=cfg.storage)
    assert study.user_attrs["nas:config"]["measure_batch"] == 1

    # A resume (or a worker) that does not ask keeps the study's batch ...
    resumed = Search(tiny_config(tmp_path, trials=5, pruner="none"), log=io.StringIO())
    assert resumed.measure_batch == 1
    resumed.run()
    assert _measured_batches(db) == {1}
    from nas.cli import build_parser
    from nas.cli import build_parser
    from nas.workers import config_from_study

    args = build_parser().parse_args(["worker", "--study", "t", "--storage", cfg.storage, "--trials", "5"])
    assert Search(config_from_study(study, args), create=False, log=io.StringIO()).measure_batch == 1
    # ... and one that asks for another is refused, naming it.
    with pytest.raises(SearchError, match="measure_batch"):
        Search(tiny_config(tmp_path, trials=5, measure_batch=16), log=io.StringIO())


def test_measure_batch_must_be_positive(tmp_path):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(SearchError, match="--measure-batch must be a positive integer"):
            Search(tiny_config(tmp_path, measure_batch=bad), log=io.StringIO())


@pytest.mark.parametrize("pruner, name", [(optuna.pruners.MedianPruner(), "median"),
                                          (optuna.pruners.HyperbandPruner(), "hyperband")])
def test_a_trial_stopped_by_optunas_pruners_names_them(pruner, name):
    # They keep no reason of their own; "below the hurdle" would name a rule they do not apply.
    from types import SimpleNamespace

    from nas.objective import _stop_reason

    trial = SimpleNamespace(study=SimpleNamespace(pruner=pruner))
    assert _stop_reason(trial, 5) == f"stopped by the {name} pruner at step 5"


def test_the_plot_draws_every_measured_trial_and_the_budget(tmp_path):
    # Read back from the figure, against the trials as stored: trained ones at (latency,
    # fitness), those measured over the budget and never trained as marks along the
    # bottom (a study of only such candidates once drew empty axes).
    pytest.importorskip("matplotlib")
    from nas.show import FEASIBLE, TRAINED_OTHER, UNTRAINED, plot_figure

    P = optuna.trial.TrialState.PRUNED
    study = optuna.create_study(study_name="p", storage=default_url("p", tmp_path), direction="maximize")
    study.set_user_attr("nas:config", {"budget": {"latency_ms": 10.0, "memory_mb": None}})

    def add(state, latency, value=None, steps=None):
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value, intermediate_values=steps, user_attrs={"latency_ms": latency},
            constraints={"latency": latency - 10.0}))

    add(P, 12.0)
    add(P, 15.0)
    add(optuna.trial.TrialState.FAIL, 4.0)  # within the budget, failed in training (out of memory, say): not drawn

    def drawn(fig):
        ax = fig.axes[0]
        points = {c.get_label(): c.get_offsets().data.tolist() for c in ax.collections}
        lines = {line.get_label(): [float(x) for x in line.get_xdata()] for line in ax.get_lines()}
        return points, lines

    points, lines = drawn(plot_figure(study))
    assert sorted(x for x, _ in points[UNTRAINED]) == [12.0, 15.0] and FEASIBLE not in points
    assert lines["budget 10 ms"] == [10, 10]
    add(optuna.trial.TrialState.COMPLETE, 5.0, value=0.9)
    add(P, 3.0, steps={4: 0.4})
    points, lines = drawn(plot_figure(study))
    assert points[FEASIBLE] == [[5.0, 0.9]] and points[TRAINED_OTHER] == [[3.0, 0.4]]
    assert sorted(x for x, _ in points[UNTRAINED]) == [12.0, 15.0]
    assert lines["Pareto front"] == [5.0]


def test_a_bare_resume_keeps_the_studys_task_and_space(tmp_path, monkeypatch):
    # `nas search --study NAME` with no --task or --space resumes a study made on another
    # task and space (it was refused: "stored listops vs asked mqar"); an option given
    # is compared over the stored ones.
    Search(tiny_config(tmp_path, trials=2, pruner="none"), log=io.StringIO()).run(progress=False)
    bare = dict(space=None, task=None, task_options={})
    resumed = Search(tiny_config(tmp_path, trials=3, **bare), log=io.StringIO())
    assert resumed.space.name == "tiny" and resumed.space.depth == load_space("tiny").depth
    assert resumed.task.options() == get_task("mqar", **TINY_TASK).options()
    study = resumed.run(progress=False)
    assert sum(t.state in FINISHED for t in study.trials) == 3
    with pytest.raises(SearchError, match="task.options.seq_len: stored 16 vs asked 32"):
        Search(tiny_config(tmp_path, **{**bare, "task_options": {"seq_len": 32}}), log=io.StringIO())
    # --task and --space named, no --task-option: the study's options still (a review found them dropped).
    named = Search(tiny_config(tmp_path, task="mqar", space="tiny", task_options={}), log=io.StringIO())
    assert named.task.options() == resumed.task.options()
    # A new study without them: the defaults.
    fresh = Search(tiny_config(tmp_path, name="new", latency_ms=None, **bare), log=io.StringIO())
    assert (fresh.space.name, fresh.task.name) == ("default", "mqar")
    # A space file without a name is named by its path as typed; the same file by
    # another path is the same space (same choices), not a refusal.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sp.toml").write_text(TWO_ARCH_SPACE.replace('name = "two"\n', ""))
    Search(tiny_config(tmp_path, name="f", space="sp.toml", trials=1, pruner="none"), log=io.StringIO()).run(progress=False)
    again = Search(tiny_config(tmp_path, name="f", space=str(tmp_path / "sp.toml"), trials=2, pruner="none"),
                   log=io.StringIO()).run(progress=False)
    assert sum(t.state in FINISHED for t in again.trials) == 2
    assert again.user_attrs["nas:config"]["space"]["name"] == "sp.toml"  # as stored


def test_a_space_whose_smallest_candidate_does_not_fit_is_refused_in_one_line(tmp_path, monkeypatch):
    # Measuring the smallest architecture ran out of memory: a 68-line traceback before.
    from evaluators.errors import DeviceOutOfMemory
    import nas.objective
    import nas.search

    def oom(spec, **kw):
        raise DeviceOutOfMemory("out of memory during building the model on cpu to measure it")

    monkeypatch.setattr(nas.search, "measure", oom)
    with pytest.raises(SearchError, match=r"^the smallest \w+ architecture of space tiny does not fit \(d_model .*; cpu "
                                          r"memory at batch 16\); use a space with smaller d_model"):
        Search(tiny_config(tmp_path), log=io.StringIO())
    # Only the vanilla transformer, measured for the default budget, does not fit: the
    # fix is a budget of one's own, not a smaller space.
    from nas.search import _vanilla_params
    real = nas.objective.measure
    space = load_space("tiny").for_task(get_task("mqar", **TINY_TASK).shape)
    widest = max(space.d_model)

    def vanilla_oom(spec, **kw):
        if spec.d_model == widest and all(layer.attention == "full" for layer in spec.layers):
            oom(spec)
        return real(spec, **kw)

    assert _vanilla_params(space) is not None
    monkeypatch.setattr(nas.search, "measure", vanilla_oom)
    with pytest.raises(SearchError, match=r"^the vanilla transformer of space tiny, whose latency would be the default "
                                          r"budget, does not fit .*; give the budget yourself with --latency-ms"):
        Search(tiny_config(tmp_path, latency_ms=None), log=io.StringIO())
    assert not (tmp_path / "t.db").exists() or "t" not in [s.study_name for s in optuna.get_all_study_summaries(default_url("t", tmp_path))]


def test_a_study_whose_space_lost_a_knob_to_the_task_resumes(tmp_path):
    # local's windows all exceed the 16 tokens: local and its knob are left out. The
    # knob was stored as an empty list, which no space can be rebuilt from: every
    # `nas worker` on such a study died, and so did a bare resume.
    from nas.search import CONFIG_ATTR
    from nas.cli import build_parser
    from nas.workers import config_from_study

    space = tmp_path / "s.toml"
    space.write_text('name = "s"\n[model]\nd_model = [16]\ndepth = [1]\n[layer]\nattention = ["local", "full"]\n'
                     'heads = [1]\nffn_mult = [2]\n[knobs]\nwindow = [32, 64]\n')
    Search(tiny_config(tmp_path, space=str(space), trials=1, pruner="none"), log=io.StringIO()).run(progress=False)
    study = optuna.load_study(study_name="t", storage=default_url("t", tmp_path))
    assert study.user_attrs[CONFIG_ATTR]["space"]["definition"]["knobs"] == {}
    bare = dict(space=None, task=None, task_options={})
    assert Search(tiny_config(tmp_path, trials=2, **bare), log=io.StringIO()).space.attention == ("full",)
    args = build_parser().parse_args(["worker", "--study", "t", "--storage", default_url("t", tmp_path)])
    assert Search(config_from_study(study, args), create=False, log=io.StringIO()).space.attention == ("full",)
    # A study made before: the empty list stored. The same space, not a refusal.
    config = dict(study.user_attrs[CONFIG_ATTR])
    config["space"] = {**config["space"], "definition": {**config["space"]["definition"], "knobs": {"window": []}}}
    study.set_user_attr(CONFIG_ATTR, config)
    Search(tiny_config(tmp_path, trials=2, **bare), log=io.StringIO()).run(progress=False)
    Search(tiny_config(tmp_path, space=str(space), trials=2), log=io.StringIO())


def test_a_study_that_never_recorded_evolutions_numbers_says_so(tmp_path):
    # Studies made before the settings were stored recorded the hurdle settings on each
    # trial, but never evolution's population, tournament and mutation rate: a resume
    # takes those from the latest trial, and names the ones it can only default.
    import dataclasses
    import types

    old_trial = types.SimpleNamespace(user_attrs={"search": {
        "sampler": "evolution", "pruner": "hurdles", "hurdle_trials": 3, "hurdle_signal": "fitness",
        "hurdle_rule": "fixed", "selection_signal": "fitness", "budget_aware": True, "on_refusal": "extend"}})
    old_study = types.SimpleNamespace(get_trials=lambda deepcopy=False: [old_trial])
    search = Search(tiny_config(tmp_path), log=io.StringIO())
    search.log = io.StringIO()
    search.cfg = dataclasses.replace(search.cfg, **UNNAMED)
    search._choose(old_study, {"nas:search": {"sampler": "evolution", "pruner": "hurdles"}})
    assert (search.cfg.hurdle_trials, search.cfg.hurdle_rule, search.cfg.population) == (3, "fixed", 12)
    assert ("did not record --population, --tournament, --mutation-prob; this run uses the defaults (--population 12, "
            "--tournament 4, --mutation-prob 0.2)") in search.log.getvalue()
