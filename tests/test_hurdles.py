"""Tests for the progressive dynamic hurdles pruner, against hurdles computed by hand."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from nas.hurdles import ProgressiveHurdlePruner, minus_last_loss

optuna.logging.set_verbosity(optuna.logging.WARNING)

STAGES = (10, 30, 90)


def _study(direction: str = "maximize", storage: str | None = None, name: str | None = None,
           min_trials: int = 3) -> optuna.Study:
    return optuna.create_study(
        direction=direction,
        storage=storage,
        study_name=name,
        pruner=ProgressiveHurdlePruner(STAGES, min_trials=min_trials),
    )


def _add(study: optuna.Study, ivs: dict[int, float], state: TrialState = TrialState.COMPLETE,
         value: float | None = None) -> None:
    if state == TrialState.COMPLETE and value is None:
        value = ivs[max(ivs)] if ivs else 0.0
    study.add_trial(create_trial(state=state, value=value, intermediate_values=ivs))


def _judge(study: optuna.Study, value: float, step: int) -> bool:
    """Ask a fresh trial, report ``value`` at ``step``, return should_prune (and
    check it against a direct prune() call on the stored frozen trial)."""
    trial = study.ask()
    trial.report(value, step)
    decision = trial.should_prune()
    frozen = study._storage.get_trial(trial._trial_id)
    assert study.pruner.prune(study, frozen) == decision
    study.tell(trial, state=TrialState.PRUNED)  # close it so later judges see only the base trials
    return decision


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    "stages, min_trials",
    [
        ((), 3),
        ((10, 10), 3),
        ((30, 10), 3),
        ((0, 10), 3),
        ((10.5, 20), 3),
        ((True, 20), 3),
        ("10", 3),
        (10, 3),
        ((10, 30), 0),
        ((10, 30), 2.0),
    ],
)
def test_invalid_arguments(stages, min_trials):
    with pytest.raises(ValueError):
        ProgressiveHurdlePruner(stages, min_trials=min_trials)


def test_properties():
    p = ProgressiveHurdlePruner([10, 30, 90], min_trials=4)
    assert p.stages == (10, 30, 90)
    assert p.hurdle_stages == (10, 30)
    assert p.min_trials == 4
    assert ProgressiveHurdlePruner((5,)).min_trials == 5
    assert "min_trials=4" in repr(p)
    assert p.progressive is False
    assert ProgressiveHurdlePruner((5,), progressive=True).progressive is True
    with pytest.raises(ValueError, match="progressive"):
        ProgressiveHurdlePruner((5,), progressive=1)


# ------------------------------------------------------------------ hand-computed hurdles


def _base(study: optuna.Study) -> None:
    # numbers 0..3; hurdle at 10 from trials 0,1,2: (0.4 + 0.5 + 0.6) / 3 = 0.5
    # hurdle at 30 from the first three with a value at 30: trials 0, 2, 3 (1 was pruned at 10)
    #   (0.7 + 0.8 + 0.3) / 3 = 0.6
    _add(study, {10: 0.4, 30: 0.7, 90: 0.9})
    _add(study, {10: 0.5}, state=TrialState.PRUNED)
    _add(study, {10: 0.6, 30: 0.8}, state=TrialState.PRUNED)
    _add(study, {10: 0.9, 30: 0.3, 90: 0.95})


def test_hurdles_by_hand_maximize():
    study = _study()
    _base(study)
    pruner = study.pruner
    assert pruner.hurdles(study) == pytest.approx({10: 0.5, 30: 0.6})
    details = pruner.hurdle_details(study)
    assert details[10].trial_numbers == (0, 1, 2)
    assert details[30].trial_numbers == (0, 2, 3)

    assert _judge(study, 0.49, 10) is True
    assert _judge(study, 0.5, 10) is False  # equal passes
    assert _judge(study, 0.51, 10) is False
    assert _judge(study, 0.59, 30) is True
    assert _judge(study, 0.61, 30) is False
    # the judged (pruned) trials above reported at 10/30 but come after the first three: no change
    assert pruner.hurdles(study) == pytest.approx({10: 0.5, 30: 0.6})


def test_no_pruning_at_final_stage_or_non_stage_steps():
    study = _study()
    _base(study)
    assert _judge(study, -100.0, 90) is False  # final stage: no hurdle
    assert _judge(study, -100.0, 11) is False  # not a stage
    assert _judge(study, -100.0, 0) is False
    assert 90 not in study.pruner.hurdles(study)


def test_no_hurdle_before_min_trials_reporters():
    study = _study()
    _add(study, {10: 0.4})
    _add(study, {10: 0.5})
    assert study.pruner.hurdles(study) == {}
    assert _judge(study, -1.0, 10) is False  # only two earlier reporters: this one is the third
    # that judged trial (number 2, PRUNED at 10 with value -1.0) now counts as the 3rd reporter:
    # hurdle = (0.4 + 0.5 - 1.0) / 3
    assert study.pruner.hurdles(study) == pytest.approx({10: (0.4 + 0.5 - 1.0) / 3})
    assert _judge(study, -0.1, 10) is True
    assert _judge(study, 0.0, 10) is False


def test_defining_trial_is_never_pruned_by_its_own_hurdle():
    study = _study()
    _add(study, {10: 0.9})
    _add(study, {10: 0.8})
    trial = study.ask()  # number 2, one of the three defining trials
    trial.report(0.1, 10)  # hurdle = 0.6, its own value is below, yet it defines the hurdle
    assert study.pruner.hurdles(study) == pytest.approx({10: 0.6})
    assert trial.should_prune() is False


def test_minimize_direction():
    study = _study("minimize")
    _base(study)
    assert study.pruner.hurdles(study) == pytest.approx({10: 0.5, 30: 0.6})
    assert _judge(study, 0.51, 10) is True
    assert _judge(study, 0.5, 10) is False
    assert _judge(study, 0.49, 10) is False
    assert _judge(study, 0.61, 30) is True
    assert _judge(study, 0.59, 30) is False


def test_nan_is_pruned_and_never_defines_a_hurdle():
    study = _study()
    _add(study, {10: float("nan")}, state=TrialState.PRUNED)
    _add(study, {10: 0.4})
    assert _judge(study, float("nan"), 10) is True  # pruned even before the hurdle is set
    assert _judge(study, float("nan"), 90) is False  # not at the final stage
    _add(study, {10: 0.5})
    assert study.pruner.hurdles(study) == {}  # NaN reporters skipped: only two finite ones
    _add(study, {10: 0.6})
    h = study.pruner.hurdle_details(study)[10]
    assert h.value == pytest.approx(0.5)
    assert all(not math.isnan(study.trials[n].intermediate_values[10]) for n in h.trial_numbers)


def test_failed_and_waiting_trials_do_not_define():
    study = _study()
    _add(study, {10: 100.0}, state=TrialState.FAIL, value=None)
    _add(study, {10: 0.4})
    _add(study, {10: 0.5})
    _add(study, {10: 0.6})
    assert study.pruner.hurdles(study) == pytest.approx({10: 0.5})


# ------------------------------------------------------------------ parallel workers: stability


def test_lower_numbered_running_trial_blocks_until_it_reports():
    study = _study()
    slow = study.ask()  # number 0, running, has not reached step 10 yet
    slow.report(0.0, 5)  # a non-stage report does not count
    _add(study, {10: 0.5})  # 1
    _add(study, {10: 0.6})  # 2
    _add(study, {10: 0.7})  # 3
    # first three reporters are 1,2,3 but trial 0 may still report at 10: not set
    assert study.pruner.hurdles(study) == {}
    assert _judge(study, -5.0, 10) is False
    slow.report(0.1, 10)
    # now the first three by number are 0,1,2: (0.1 + 0.5 + 0.6) / 3 = 0.4
    details = study.pruner.hurdle_details(study)
    assert details[10].trial_numbers == (0, 1, 2)
    assert details[10].value == pytest.approx(0.4)
    assert slow.should_prune() is False  # defining trial
    # later events (more reports, the slow trial finishing) do not move it
    _add(study, {10: 99.0})
    study.tell(slow, 1.0)
    assert study.pruner.hurdles(study) == pytest.approx({10: 0.4})


def test_lower_numbered_trial_finishing_without_report_unblocks():
    study = _study()
    slow = study.ask()  # number 0
    _add(study, {10: 0.5})
    _add(study, {10: 0.6})
    _add(study, {10: 0.7})
    assert study.pruner.hurdles(study) == {}
    study.tell(slow, state=TrialState.FAIL)  # never reached step 10
    assert study.pruner.hurdles(study) == pytest.approx({10: 0.6})


def test_lower_numbered_waiting_trial_blocks():
    study = _study()
    study.enqueue_trial({})  # number 0, WAITING
    _add(study, {10: 0.5})
    _add(study, {10: 0.6})
    _add(study, {10: 0.7})
    assert study.pruner.hurdles(study) == {}


def test_higher_numbered_running_trial_does_not_block():
    study = _study()
    _add(study, {10: 0.5})
    _add(study, {10: 0.6})
    _add(study, {10: 0.7})
    study.ask()  # number 3, running, no report: irrelevant to the first three
    assert study.pruner.hurdles(study) == pytest.approx({10: 0.6})


def test_stateless_across_reopened_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    study = _study(storage=url, name="s")
    _base(study)
    before = study.pruner.hurdles(study)
    del study
    reopened = optuna.load_study(
        study_name="s", storage=url, pruner=ProgressiveHurdlePruner(STAGES, min_trials=3)
    )
    assert reopened.pruner.hurdles(reopened) == before == pytest.approx({10: 0.5, 30: 0.6})
    assert _judge(reopened, 0.49, 10) is True
    assert _judge(reopened, 0.51, 10) is False
    # a second handle on the same storage (another worker) agrees
    other = optuna.load_study(
        study_name="s", storage=url, pruner=ProgressiveHurdlePruner(STAGES, min_trials=3)
    )
    assert other.pruner.hurdles(other) == before


# ------------------------------------------------------------------ end to end


def test_optimize_end_to_end_prunes_and_saves_steps():
    stages = (10, 30, 90)
    pruner = ProgressiveHurdlePruner(stages, min_trials=3)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    quality = [0.5, 0.6, 0.7, 0.1, 0.9, 0.2, 0.65, 0.3]
    for q in quality:
        study.enqueue_trial({"q": q})
    steps_trained: dict[int, int] = {}

    def objective(trial: optuna.Trial) -> float:
        q = trial.suggest_float("q", 0.0, 1.0)
        done = 0
        fitness = 0.0
        for step in stages:
            done = step  # "train" up to this step
            fitness = q * step / stages[-1]  # fitness grows with training, ranks by q
            steps_trained[trial.number] = done
            trial.report(fitness, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return fitness

    study.optimize(objective, n_trials=len(quality))

    states = [t.state for t in study.trials]
    # hurdle at 10 from trials 0-2: mean(q)*10/90 = 0.6/9; at 30 from 0-2: 0.6/3
    assert pruner.hurdles(study) == pytest.approx({10: 0.6 * 10 / 90, 30: 0.6 * 30 / 90})
    expected = [TrialState.COMPLETE] * 3 + [
        TrialState.PRUNED,  # q=0.1 < 0.6 at step 10
        TrialState.COMPLETE,  # 0.9
        TrialState.PRUNED,  # 0.2
        TrialState.COMPLETE,  # 0.65
        TrialState.PRUNED,  # 0.3
    ]
    assert states == expected
    assert [steps_trained[n] for n in range(len(quality))] == [90, 90, 90, 10, 90, 10, 90, 10]
    assert sum(steps_trained.values()) < len(quality) * stages[-1]

    # a pruned trial keeps its fitness: Optuna stores its last intermediate value as its value
    t3 = study.trials[3]
    assert t3.state == TrialState.PRUNED
    assert t3.last_step == 10
    assert t3.intermediate_values == {10: pytest.approx(0.1 * 10 / 90)}
    assert t3.value == pytest.approx(0.1 * 10 / 90)
    assert study.best_trial.number == 4


def test_pruned_with_nan_has_no_value_but_keeps_intermediate():
    study = _study()

    def objective(trial: optuna.Trial) -> float:
        trial.report(float("nan"), 10)
        if trial.should_prune():
            raise optuna.TrialPruned()
        return 1.0

    study.optimize(objective, n_trials=1)
    t = study.trials[0]
    assert t.state == TrialState.PRUNED
    assert t.value is None
    assert math.isnan(t.intermediate_values[10])


# ------------------------------------------------------------------ hurdles on the loss


def _add_with_loss(study: optuna.Study, ivs: dict[int, float], losses: dict[int, float],
                   state: TrialState = TrialState.COMPLETE) -> None:
    value = ivs[max(ivs)] if state == TrialState.COMPLETE else None
    study.add_trial(create_trial(state=state, value=value, intermediate_values=ivs,
                                 user_attrs={"stage_metrics": {str(s): {"loss": v} for s, v in losses.items()}}))


def _judge_with_loss(study: optuna.Study, fitness: float, loss: float | None, step: int) -> bool:
    """Like _judge, with the loss written where nas's objective writes it: before the report."""
    trial = study.ask()
    if loss is not None:
        trial.set_user_attr("stage_metrics", {str(step): {"loss": loss}})
    trial.report(fitness, step)
    decision = trial.should_prune()
    assert study.pruner.prune(study, study._storage.get_trial(trial._trial_id)) == decision
    study.tell(trial, state=TrialState.PRUNED)
    return decision


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_loss_hurdle_by_hand(direction):
    # The loss ranks the other way round from the fitness: trials 0-2 define the hurdle
    # at 10 on -loss: mean(-2, -3, -4) = -3 (a loss of 3). The study's direction is the
    # fitness's; the loss is lower-is-better either way.
    pruner = ProgressiveHurdlePruner(STAGES, min_trials=3, signal="loss")
    s = optuna.create_study(direction=direction, pruner=pruner)
    _add_with_loss(s, {10: 0.1}, {10: 2.0}, TrialState.PRUNED)
    _add_with_loss(s, {10: 0.2}, {10: 3.0}, TrialState.PRUNED)
    _add_with_loss(s, {10: 0.3}, {10: 4.0}, TrialState.PRUNED)
    assert pruner.hurdles(s) == {10: pytest.approx(-3.0)}
    assert pruner.signal == "loss" and "signal='loss'" in repr(pruner)
    assert _judge_with_loss(s, 0.9, 3.5, 10)  # best fitness, loss above 3: stopped
    assert not _judge_with_loss(s, 0.0, 2.5, 10)  # worst fitness, loss below 3: goes on
    assert not _judge_with_loss(s, 0.0, 3.0, 10)  # equal passes
    assert _judge_with_loss(s, 0.5, math.inf, 10)  # an infinite loss is below any hurdle
    assert not _judge_with_loss(s, 0.5, 9.0, 90)  # never at the final stage


def test_loss_hurdle_skips_trials_without_a_loss_and_prunes_nan():
    pruner = ProgressiveHurdlePruner(STAGES, min_trials=2, signal="loss")
    s = optuna.create_study(direction="maximize", pruner=pruner)
    _add(s, {10: 0.9}, TrialState.PRUNED)  # recorded before stage_metrics: no loss, not a reporter
    _add_with_loss(s, {10: 0.1}, {10: math.nan}, TrialState.PRUNED)  # NaN loss: never defines
    assert pruner.hurdles(s) == {}
    _add_with_loss(s, {10: 0.1}, {10: 1.0}, TrialState.PRUNED)
    _add_with_loss(s, {10: 0.1}, {10: 2.0}, TrialState.PRUNED)
    h = pruner.hurdle_details(s)[10]
    assert h.value == pytest.approx(-1.5) and h.trial_numbers == (2, 3)
    assert not _judge_with_loss(s, 0.0, None, 10)  # no loss recorded: not judged
    assert _judge_with_loss(s, 0.9, math.nan, 10)  # a NaN loss: diverged
    assert _judge_with_loss(s, math.nan, 0.5, 10)  # a NaN fitness: diverged, whatever the loss


def test_invalid_signal():
    with pytest.raises(ValueError, match="signal must be one of loss, fitness"):
        ProgressiveHurdlePruner(STAGES, signal="accuracy")


@pytest.mark.parametrize("stage_metrics, expected", [
    # The last stage by number, not by string order ("50" > "133" as strings).
    ({"25": {"loss": 3.0, "accuracy": 0.1}, "133": {"loss": 1.5}, "50": {"loss": 2.0}}, -1.5),
    # A stage without a loss is skipped; the last one with a loss counts.
    ({"25": {"loss": 3.0}, "50": {"accuracy": 0.3}}, -3.0),
    ({"25": {"accuracy": 0.3}}, None),
    ({}, None),
    (None, None),
])
def test_minus_last_loss(stage_metrics, expected):
    attrs = {} if stage_metrics is None else {"stage_metrics": stage_metrics}
    trial = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs=attrs)
    assert minus_last_loss(trial) == expected


# ------------------------------------------------------------------ progressive opening

# Each trial's fitness at the stages 10, 30 and 90.
_CURVES = [
    (0.5, 0.55, 0.6),
    (0.3, 0.35, 0.4),
    (0.35, 0.9, 0.9),
    (0.6, 0.7, 0.75),
    (0.45, 0.5, 0.55),
    (0.9, 0.65, 0.8),
    (0.5, 0.55, 0.95),
]


def _stops(pruner: ProgressiveHurdlePruner, enqueued: tuple[int, ...] = ()) -> tuple[list[int], dict[int, float]]:
    """Run _CURVES in order through `pruner` (the trials in `enqueued` given by the
    user through enqueue_trial); the step where each stopped, and the hurdles."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    stops = []
    for number, curve in enumerate(_CURVES):
        if number in enqueued:
            study.enqueue_trial({"x": number})
        trial = study.ask()
        trial.suggest_int("x", 0, 100)
        for step, value in zip(STAGES, curve):
            trial.report(value, step)
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            study.tell(trial, curve[-1])
        stops.append(step)
    return stops, pruner.hurdles(study)


def test_fixed_rule_by_hand():
    # Trials 0 and 1 define both hurdles: 10 -> (0.5 + 0.3) / 2 = 0.4,
    # 30 -> (0.55 + 0.35) / 2 = 0.45; only trial 2 (0.35 at 10) falls below one.
    stops, hurdles = _stops(ProgressiveHurdlePruner(STAGES, min_trials=2))
    assert stops == [90, 90, 10, 90, 90, 90, 90]
    assert hurdles == pytest.approx({10: 0.4, 30: 0.45})


def test_progressive_opening_by_hand():
    # Trial 0 stops at 10 (no hurdle yet), trial 1 sets it, 0.4, and stops too;
    # trial 2 is below it (0.35). Trial 3 clears it and stops at 30 (no hurdle
    # there yet); trial 4 clears 10, sets the hurdle at 30 from the two trials
    # that cleared 10, (0.7 + 0.5) / 2 = 0.6, and stops. Trial 5 clears both
    # (0.9, 0.65) and is the first trained through; trial 6 is below 0.6 at 30.
    stops, hurdles = _stops(ProgressiveHurdlePruner(STAGES, min_trials=2, progressive=True))
    assert stops == [10, 10, 10, 30, 30, 90, 30]
    assert hurdles == pytest.approx({10: 0.4, 30: 0.6})


def test_progressive_opening_trains_an_enqueued_trial_through_unless_a_hurdle_stops_it():
    # Trial 0, enqueued, trains through though no hurdle is set, and counts in
    # both hurdles: 10 -> (0.5 + 0.3) / 2 = 0.4, 30 -> (0.55 + 0.7) / 2 = 0.625
    # (with trial 3, the first other trial to get there). Trial 2, enqueued
    # too, is below the hurdle at 10 and stops there all the same.
    stops, hurdles = _stops(ProgressiveHurdlePruner(STAGES, min_trials=2, progressive=True), enqueued=(0, 2))
    assert stops == [90, 10, 10, 30, 30, 90, 30]
    assert hurdles == pytest.approx({10: 0.4, 30: 0.625})


def test_stop_reason_is_the_decision_taken_without_reading_the_study_again(monkeypatch):
    # Trial 1 reports at step 10 when only trial 0 has: no hurdle yet, so the
    # progressive rule stops it. Then trial 2 reports there and sets the hurdle, with
    # trial 1 among its three. The reason stored for trial 1 must still be the one it
    # was stopped for, given without another read of the study's trials.
    study = optuna.create_study(direction="maximize",
                                pruner=ProgressiveHurdlePruner(STAGES, min_trials=3, progressive=True))
    _add(study, {10: 0.9, 30: 0.9, 90: 0.9})
    trial = study.ask()
    trial.report(0.5, 10)
    assert trial.should_prune()
    _add(study, {10: 0.7}, state=TrialState.PRUNED, value=0.7)
    frozen = study._storage.get_trial(trial._trial_id)
    reads = []
    real = study._storage.get_all_trials
    monkeypatch.setattr(study._storage, "get_all_trials", lambda *a, **k: reads.append(1) or real(*a, **k))
    assert study.pruner.stop_reason(study, frozen).startswith("no hurdle at step 10 yet")
    assert reads == []
    # Asked again, the decision is gone: the pruner judges anew, from storage as it is now.
    assert study.pruner.stop_reason(study, frozen) == "one of the 3 trials defining the hurdle at step 10 (progressive hurdles)"
    assert reads
