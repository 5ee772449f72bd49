"""A study's trials within a budget of model transitions: fitted iterations, aligned syncs, recorded compute."""

from __future__ import annotations

import optuna
import pytest

from wmplan.platform.errors import ConfigError
from wmplan.platform.planners import make_planner
from wmplan.tuning.study import TuneConfig
from wmplan.tuning.trials import compute_attrs, sync_ratio, trial_options

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _draw(config: TuneConfig, n: int) -> list[dict]:
    """The options of ``n`` random trials of ``config``'s space, as the study driver makes them."""
    from wmplan.tuning.spaces import suggest

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        try:
            out.append(config.trial_options(suggest(trial, config.search_space())))
        except ConfigError:  # a budget too small for the drawn options: the driver fails such a trial
            pass
        study.tell(trial, 0.0)
    return out


@pytest.mark.parametrize("planner", ["grasp", "gd", "cem", "mppi", "latco"])
def test_with_a_budget_every_trial_spends_at_most_it(planner):
    config = TuneConfig(planner=planner, horizon=5, budget=200_000)
    assert "iterations" not in {p.name for p in config.search_space()}
    drawn = _draw(config, 12)
    assert len(drawn) >= 8
    for options in drawn:
        p = make_planner(planner, horizon=5, **options)
        assert p.transitions() <= 200_000 < p.replace(iterations=p.options.iterations + p.iteration_period()).transitions()
        assert p.options.iterations % p.iteration_period() == 0


def test_without_a_budget_grasps_iterations_end_on_a_sync():
    drawn = _draw(TuneConfig(planner="grasp", horizon=5, space=("+iterations=100:1000:int",)), 10)
    intervals = {o["sync_interval"] for o in drawn}
    assert len(intervals - {0}) >= 2
    for options in drawn:
        if options["sync_interval"]:
            assert options["iterations"] % options["sync_interval"] == 0, options
    # The default iterations (750) are aligned too; other planners' options are left alone.
    assert trial_options("grasp", {"sync_interval": 200}, horizon=5, budget=0)["iterations"] == 800
    assert trial_options("grasp", {"sync_interval": 0}, horizon=5, budget=0) == {"sync_interval": 0}
    assert trial_options("gd", {"iterations": 77}, horizon=5, budget=0) == {"iterations": 77}


def test_trials_record_their_compute():
    options = {"iterations": 40, "sync_interval": 10, "sync_steps": 5, "end": "sync"}
    attrs = compute_attrs("grasp", options, horizon=4, budget=3000)
    assert attrs == {"budget": 3000, "predicted_transitions": make_planner("grasp", horizon=4, **options).transitions(),
                     "sync_ratio": pytest.approx(5 * 4 / 40)}
    # end='sync' after a loop that did not end on one adds a final phase.
    assert sync_ratio(make_planner("grasp", horizon=4, **{**options, "iterations": 45})) == pytest.approx(5 * 5 / 45)
    assert compute_attrs("cem", {}, horizon=4, budget=0)["sync_ratio"] is None


def test_a_budget_rules_out_searching_iterations():
    with pytest.raises(ConfigError, match=r"space item '\+iterations=100:1000:int'.*fitted to it"):
        TuneConfig(planner="grasp", budget=1000, space=("+iterations=100:1000:int",))
    with pytest.raises(ConfigError, match="budget must be >= 0"):
        TuneConfig(budget=-1)
    assert TuneConfig(planner="gd", budget=1000, space=("-iterations",)).budget == 1000
    with pytest.raises(ConfigError, match=r"'cem'.*too small for one iteration; the minimum is 1500"):
        TuneConfig(planner="cem", horizon=5, budget=100).trial_options({"samples": 300, "elites": 30})
