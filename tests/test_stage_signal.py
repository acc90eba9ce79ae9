"""The stage signal (`nas.stage_signal`) against figures computed by hand on a
hand-built study, and `nas show` on real tiny studies searched with and without
the hurdles."""

from __future__ import annotations

import io
import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from nas.search import Search
from nas.show import hurdle_setting, show
from nas.stage_signal import stage_signals
from tests.test_search import tiny_config

STAGES = (10, 20, 40)


def _add(study, state, reports, value=None, **attrs):
    study.add_trial(create_trial(
        state=state, value=value, intermediate_values=reports, user_attrs=attrs,
        params={"x": 0.0}, distributions={"x": FloatDistribution(0.0, 1.0)}))


@pytest.fixture
def study():
    s = optuna.create_study(direction="maximize")
    C, P = TrialState.COMPLETE, TrialState.PRUNED
    # Dyadic values, so the hurdles' means are exact and "equal passes" is tested as such.
    _add(s, C, {10: 0.25, 20: 0.25, 40: 0.5}, 0.5)       # 0: with 1, defines both hurdles (m=2)
    _add(s, C, {10: 0.5, 20: 0.5, 40: 0.9}, 0.9)         # 1
    _add(s, P, {10: 0.125}, 0.125)                       # 2: stopped at 10
    _add(s, C, {10: 0.4375, 20: 0.4375, 40: 0.6}, 0.6)   # 3
    _add(s, P, {10: 0.375, 20: 0.3125}, 0.3125)          # 4: equal to the hurdle at 10 (clears), below at 20
    _add(s, C, {10: 0.625, 20: 0.625, 40: 0.7}, 0.7, replayed_from=3)  # 5: a replay: judged, never paired
    _add(s, C, {10: 0.3125, 20: 0.125, 40: 0.95}, 0.95)  # 6: a late bloomer, below both hurdles
    _add(s, P, {10: math.nan}, None)                  # 7: diverged: no finite report anywhere
    _add(s, TrialState.FAIL, {10: 0.9, 20: 0.9}, None)  # 8: failed: never counts
    return s


def test_figures_match_the_hand_computed_ones(study):
    at10, at20 = stage_signals(study, STAGES, min_trials=2)
    # Step 10: hurdle mean(0.25, 0.5) = 0.375; reporters 0-6; >= 0.375: trials 1, 3, 4, 5.
    # Paired (complete, not replayed): 0, 1, 3, 6; ranks at 10: 1, 4, 3, 2; final: 1, 3, 2, 4;
    # differences 0, 1, 1, -2 -> rho = 1 - 6 * 6 / (4 * 15) = 0.4.
    assert at10.step == 10 and at10.hurdle == 0.375
    assert (at10.reported, at10.cleared, at10.paired) == (7, 4, 4)
    assert at10.rank_corr == pytest.approx(0.4)
    assert (at10.top, at10.top_cleared) == (1, 0)  # the top quarter is trial 6, below the hurdle
    assert at10.best_cleared == pytest.approx(0.9) and at10.best_below == pytest.approx(0.95)
    assert at10.best_lost is True
    # Step 20: hurdle 0.375 again; reporters 0, 1, 3, 4, 5, 6; >= 0.375: 1, 3, 5.
    # Ranks at 20 of 0, 1, 3, 6: 2, 4, 3, 1; differences 1, 1, 1, -3 -> rho = 1 - 6 * 12 / 60 = -0.2.
    assert at20.hurdle == 0.375
    assert (at20.reported, at20.cleared, at20.paired) == (6, 3, 4)
    assert at20.rank_corr == pytest.approx(-0.2)
    assert (at20.top, at20.top_cleared) == (1, 0)
    assert at20.best_cleared == pytest.approx(0.9) and at20.best_below == pytest.approx(0.95)


def test_unset_hurdles_leave_only_the_correlation(study):
    (at10, _) = stage_signals(study, STAGES, min_trials=50)
    assert at10.hurdle is None and at10.cleared is None and at10.top_cleared is None
    assert at10.best_cleared is None and at10.best_below is None and at10.best_lost is None
    assert at10.rank_corr == pytest.approx(0.4)
    assert stage_signals(study, (40,)) == []  # one stage: no hurdle at all


def test_a_minimizing_study_clears_at_or_below_the_hurdle():
    s = optuna.create_study(direction="minimize")
    for v10, v40 in ((1.0, 1.0), (3.0, 3.0), (2.0, 2.5), (2.5, 0.5)):  # hurdle at 10: 2.0
        _add(s, TrialState.COMPLETE, {10: v10, 40: v40}, v40)
    (sig,) = stage_signals(s, (10, 40), min_trials=2)
    assert sig.hurdle == pytest.approx(2.0) and sig.cleared == 2  # 1.0 and 2.0 (equal passes)
    assert sig.top_cleared == 0  # the best (lowest) final, 0.5, was at 2.5 > 2.0
    assert sig.best_cleared == pytest.approx(1.0) and sig.best_below == pytest.approx(0.5)
    assert sig.best_lost is True  # 0.5 below the hurdle beat 1.0 above it


def test_the_best_is_lost_only_when_something_below_beats_everything_above():
    s = optuna.create_study(direction="maximize")  # the same curves as the minimizing test
    for v10, v40 in ((1.0, 1.0), (3.0, 3.0), (2.0, 2.5), (2.5, 0.5)):
        _add(s, TrialState.COMPLETE, {10: v10, 40: v40}, v40)
    (sig,) = stage_signals(s, (10, 40), min_trials=2)  # hurdle 2.0: 1.0 (final 1.0) below
    assert sig.best_cleared == pytest.approx(3.0) and sig.best_below == pytest.approx(1.0)
    assert sig.best_lost is False
    _add(s, TrialState.COMPLETE, {10: 0.0, 40: 3.0}, 3.0)  # below, and ties the best: not lost
    (sig,) = stage_signals(s, (10, 40), min_trials=2)
    assert sig.best_below == pytest.approx(3.0) and sig.best_lost is False
    _add(s, TrialState.COMPLETE, {10: 0.0, 40: 3.5}, 3.5)  # below, and better than all above: lost
    assert stage_signals(s, (10, 40), min_trials=2)[0].best_lost is True


def test_show_says_which_hurdles_applied(tmp_path):
    Search(tiny_config(tmp_path, "h", hurdle_trials=3), log=io.StringIO()).run()
    Search(tiny_config(tmp_path, "n", pruner="none"), log=io.StringIO()).run()
    h = optuna.load_study(study_name="h", storage=tiny_config(tmp_path, "h").storage)
    n = optuna.load_study(study_name="n", storage=tiny_config(tmp_path, "n").storage)
    assert hurdle_setting(h) == (3, "loss", True, ["hurdles"])
    assert hurdle_setting(n) == (2, "loss", False, ["none"])
    out_h, out_n = io.StringIO(), io.StringIO()
    show(h, out=out_h)
    show(n, out=out_n)
    assert "mean -loss of the first 3 trials to reach it" in out_h.getvalue()
    assert "none applied (trials ran with --pruner none)" in out_n.getvalue()
    # The pruner none run trained every feasible trial to the end: all are paired.
    complete = [t for t in n.get_trials(states=(TrialState.COMPLETE,)) if "replayed_from" not in t.user_attrs
                and 4 in t.intermediate_values]
    (sig,) = stage_signals(n, (4, 8), min_trials=2)
    assert sig.paired == len(complete) > 0
    assert "stage signal" in out_n.getvalue() and f"(n={sig.paired})" in out_n.getvalue()


def test_show_of_a_study_searched_with_hurdles_on_the_fitness(tmp_path):
    Search(tiny_config(tmp_path, "f", hurdle_signal="fitness"), log=io.StringIO()).run()
    f = optuna.load_study(study_name="f", storage=tiny_config(tmp_path, "f").storage)
    assert hurdle_setting(f) == (2, "fitness", True, ["hurdles"])
    out = io.StringIO()
    show(f, out=out)
    assert "mean fitness of the first 2 trials to reach it" in out.getvalue()


def test_loss_signal_figures_match_the_hand_computed_ones():
    # Fitness and loss disagree at step 10: the loss (lower is better) ranks trial 3,
    # the best final, first; the fitness ranks it last.
    s = optuna.create_study(direction="maximize")
    for f10, loss10, final in ((0.5, 2.0, 0.5), (0.75, 3.0, 0.25), (0.625, 2.5, 0.375), (0.25, 1.0, 0.875)):
        _add(s, TrialState.COMPLETE, {10: f10, 40: final}, final, stage_metrics={"10": {"loss": loss10}})
    (sig,) = stage_signals(s, (10, 40), min_trials=2, signal="loss")
    # Hurdle on -loss: mean(-2, -3) = -2.5; cleared (-loss >= -2.5): trials 0, 2, 3.
    assert sig.hurdle == pytest.approx(-2.5) and (sig.reported, sig.cleared) == (4, 3)
    # -loss ranks 0..3 as 3, 1, 2, 4 and the final as 3, 1, 2, 4: rho = 1.
    assert sig.rank_corr == pytest.approx(1.0)
    assert (sig.top, sig.top_cleared) == (1, 1) and sig.best_lost is False
    (fit,) = stage_signals(s, (10, 40), min_trials=2)  # the same trials on the fitness
    assert fit.hurdle == pytest.approx(0.625) and fit.cleared == 2 and fit.best_lost is True
