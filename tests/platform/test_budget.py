"""Fitting a planner's iterations to a budget of model transitions (fit_budget)."""

from __future__ import annotations

import pytest

from tests.platform.plugin_fixtures import RANDOM_SHOOTING
from wmplan.platform.errors import ConfigError
from wmplan.platform.planners import fit_budget, make_planner
from wmplan.platform.problems import reachable_problems
from wmplan.platform.world_model import LinearModel

CASES = [
    ("gd", {}),
    ("cem", dict(samples=16, elites=4)),
    ("mppi", dict(samples=16, elites=4)),
    ("latco", {}),
    ("grasp", dict(sync_interval=0)),
    ("grasp", dict(sync_interval=7, sync_steps=3)),
    ("grasp", dict(sync_interval=5, sync_steps=2, end="best", rollout_states=True)),
    ("grasp", dict(sync_interval=4, sync_steps=2, sync_mode="cem", sync_samples=8, sync_elites=2, end="sync")),
]


@pytest.mark.parametrize(("name", "options"), CASES)
@pytest.mark.parametrize("budget", [1_000, 12_345])
def test_fitted_iterations_are_the_most_that_fit(name, options, budget):
    fitted = fit_budget(name, {**options, "iterations": 3}, horizon=5, budget=budget)
    assert {k: v for k, v in fitted.items() if k != "iterations"} == options  # the other options are kept
    planner = make_planner(name, horizon=5, **fitted)
    period = planner.iteration_period()
    assert fitted["iterations"] % period == 0
    assert planner.transitions() <= budget < planner.replace(iterations=fitted["iterations"] + period).transitions()


def test_grasp_ends_on_a_sync():
    fitted = fit_budget("grasp", dict(sync_interval=50, sync_steps=10), horizon=10, budget=100_000)
    # A period is 50 lifted iterations (2 x 10 transitions each) and 10 sync steps (2 x 10 each): 1200.
    assert fitted["iterations"] == 50 * (100_000 // 1200)


def test_a_fitted_plan_spends_what_was_predicted():
    model = LinearModel.rotation(dim=2)
    start, goal = reachable_problems(model, 2, 3)
    fitted = fit_budget("grasp", dict(sync_interval=3, sync_steps=2, end="best"), horizon=3, budget=200)
    r = make_planner("grasp", horizon=3, **fitted).plan(model, start, goal, seed=0)
    # A period: 3 lifted iterations (18), a sync phase (12) and the rollout of its iterate (3): 33.
    assert r.iterations == fitted["iterations"] == 18 and r.transitions == 6 * 33


def test_a_budget_below_one_iteration_names_the_minimum():
    with pytest.raises(ConfigError, match=r"planner 'cem': a budget of 100 transitions is too small for one iteration; the minimum is 1500"):
        fit_budget("cem", dict(samples=300, elites=30), horizon=5, budget=100)
    with pytest.raises(ConfigError, match=r"'grasp'.*budget of 500 .*one sync period \(50 iterations\); the minimum is 600"):
        fit_budget("grasp", dict(sync_interval=50, sync_steps=10), horizon=5, budget=500)
    with pytest.raises(ConfigError, match="budget must be >= 1"):
        fit_budget("gd", {}, horizon=5, budget=0)


def test_bad_requests_are_config_errors():
    with pytest.raises(ConfigError, match=r"declares no transition count"):
        fit_budget(RANDOM_SHOOTING, {}, horizon=3, budget=10_000)
    with pytest.raises(ConfigError, match=r"horizon 4 but the budget is for horizon 5"):
        fit_budget("gd", {"horizon": 4}, horizon=5, budget=10_000)
    with pytest.raises(ConfigError, match=r"did you mean 'samples'"):
        fit_budget("cem", {"sampels": 8}, horizon=5, budget=10_000)
    assert fit_budget("gd", {"horizon": 5}, horizon=5, budget=100) == {"horizon": 5, "iterations": 10}
