"""One contract suite that every planner passes (shapes, bounds, determinism, batch independence,
NaN isolation, option errors, reaching a reachable goal, and the model's own planning cost).

It runs over wmplan's planners and a plug-in planner named ``package.module:Class``."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor

from tests.platform.helpers import PoisonModel
from tests.platform.plugin_fixtures import RANDOM_SHOOTING
from wmplan.platform.errors import ConfigError
from wmplan.platform.planners import PLANNERS, Problem, make_planner, rollout, terminal_cost
from wmplan.platform.problems import reachable_problems
from wmplan.platform.world_model import LinearModel

# Small budgets so the suite stays fast; the last test uses each planner's defaults.
FAST = {
    "grasp": dict(iterations=60, sync_interval=20, sync_steps=3),
    "gd": dict(iterations=60),
    "cem": dict(iterations=4, samples=64, elites=8),
    "latco": dict(iterations=60),
    "mppi": dict(iterations=4, samples=64, elites=8),
    RANDOM_SHOOTING: dict(iterations=4, samples=64),
}
# Options that remove every source of randomness, where a planner has them.
NO_RANDOMNESS = {
    "grasp": dict(noise_scale=0.0),
    "gd": dict(action_noise=0.0, init_std=0.0),
    "latco": {},
}
ALL = sorted(PLANNERS) + [RANDOM_SHOOTING]  # PLANNERS[spec] resolves the plug-in


def test_every_planner_is_covered():
    assert set(FAST) == set(SMALL_STEP) == set(PLANNERS) | {RANDOM_SHOOTING}
    assert RANDOM_SHOOTING in PLANNERS and RANDOM_SHOOTING not in list(PLANNERS)


@pytest.fixture
def skewed_model():
    """A model with asymmetric, non-unit action bounds, so bounds are really exercised."""
    m = LinearModel(torch.tensor([[1.0, 0.1], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.5, 2.0]]))
    m.action_low.copy_(torch.tensor([-0.2, -3.0]))
    m.action_high.copy_(torch.tensor([0.5, 1.0]))
    return m


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("batch", [1, 5])
def test_shapes_bounds_and_rollout(name, batch, skewed_model):
    h = 7
    start, goal = torch.randn(batch, 2), 5 * torch.randn(batch, 2)  # far goals push actions to the bounds
    start0, goal0 = start.clone(), goal.clone()
    r = make_planner(name, horizon=h, **FAST[name]).plan(skewed_model, start, goal, seed=0)
    assert r.actions.shape == (batch, h, 2)
    assert r.states.shape == (batch, h + 1, 2)
    assert r.final_distance.shape == (batch,) and r.failed.shape == (batch,)
    assert not r.failed.any()
    assert (r.actions >= skewed_model.action_low - 1e-6).all() and (r.actions <= skewed_model.action_high + 1e-6).all()
    torch.testing.assert_close(r.states, rollout(skewed_model, start, r.actions))
    torch.testing.assert_close(r.final_distance, (r.states[:, -1] - goal).norm(dim=-1))
    assert r.iterations == FAST[name]["iterations"]
    assert r.trace.loss.shape == (r.iterations, batch) and r.trace.goal_distance.shape == (r.iterations, batch)
    assert r.wall_time_s > 0
    if PLANNERS[name].lifted:
        assert r.trace.residual.shape == (r.iterations, batch, h)
        assert r.virtual_states.shape == (batch, h + 1, 2)
    else:
        assert r.trace.residual is None
    torch.testing.assert_close(start, start0)  # inputs left untouched
    torch.testing.assert_close(goal, goal0)


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_plan(name, linear_model):
    start, goal = reachable_problems(linear_model, 4, 6)
    planner = make_planner(name, horizon=6, **FAST[name])
    a = planner.plan(linear_model, start, goal, seed=3)
    b = planner.plan(linear_model, start, goal, seed=3)
    assert torch.equal(a.actions, b.actions) and a.seed == b.seed == 3
    if PLANNERS[name].stochastic_by_default:
        c = planner.plan(linear_model, start, goal, seed=4)
        assert not torch.equal(a.actions, c.actions)


@pytest.mark.parametrize("name", sorted(NO_RANDOMNESS))
def test_batch_independence(name, linear_model):
    start, goal = reachable_problems(linear_model, 6, 8, seed=1)
    planner = make_planner(name, horizon=8, **FAST[name], **NO_RANDOMNESS[name])
    whole = planner.plan(linear_model, start, goal, seed=0)
    for subset in ([2], [4, 0], [5, 1, 3]):
        part = planner.plan(linear_model, start[subset], goal[subset], seed=123)
        torch.testing.assert_close(part.actions, whole.actions[subset], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(part.trace.loss, whole.trace.loss[:, subset], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_nan_in_one_problem_fails_only_that_problem(name, linear_model):
    model = PoisonModel(linear_model)
    start, goal = reachable_problems(linear_model, 4, 6, seed=2)
    healthy = make_planner(name, horizon=6, **FAST[name]).plan(model, start, goal, seed=9)
    poisoned_start, poisoned_goal = start.clone(), goal.clone()
    poisoned_start[1, 0] = poisoned_goal[1, 0] = 1e4  # the model returns NaN for problem 1 only
    r = make_planner(name, horizon=6, **FAST[name]).plan(model, poisoned_start, poisoned_goal, seed=9)
    assert r.failed.tolist() == [False, True, False, False]
    assert not healthy.failed.any()
    assert torch.isinf(r.final_distance[1])
    assert torch.isfinite(r.actions).all()
    assert (r.actions.abs() <= 1 + 1e-6).all()
    keep = [0, 2, 3]
    # Same seed, same noise shapes: the other problems' plans are exactly what they were.
    torch.testing.assert_close(r.actions[keep], healthy.actions[keep], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(r.final_distance[keep], healthy.final_distance[keep], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_option_errors_name_the_problem(name):
    with pytest.raises(ConfigError, match=r"horizn.*did you mean 'horizon'.*iterations"):
        make_planner(name, horizn=5)
    with pytest.raises(ConfigError, match="horizon must be >= 1"):
        make_planner(name, horizon=0)
    with pytest.raises(ConfigError, match="'iterations' must be an int"):
        make_planner(name, iterations="many")
    planner = make_planner(name, horizon=4)
    assert planner.options.horizon == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        planner.options.horizon = 5  # options are frozen


def test_unknown_planner_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown planner 'gras' \(did you mean 'grasp'\?\); valid: cem, gd, grasp, latco, mppi"):
        make_planner("gras")


@pytest.mark.parametrize("name", ALL)
def test_bad_inputs_are_rejected(name, linear_model):
    planner = make_planner(name, horizon=4, **FAST[name])
    with pytest.raises(ValueError, match=r"start must have shape \[B, 2\]"):
        planner.plan(linear_model, torch.zeros(3, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="init_actions must have shape"):
        planner.plan(linear_model, torch.zeros(3, 2), torch.zeros(3, 2), init_actions=torch.zeros(3, 5, 2))


@pytest.mark.integration  # every planner at its full default budget (750-1000 iterations): 2-16 s each
@pytest.mark.parametrize("name", ALL)
def test_reaches_reachable_goal_with_default_options(name, linear_model):
    """With its default options, every planner gets far closer to a reachable goal than doing nothing."""
    start, goal = reachable_problems(linear_model, 8, 10, seed=5)
    r = make_planner(name, horizon=10).plan(linear_model, start, goal, seed=0)
    with torch.no_grad():
        idle = (rollout(linear_model, start, torch.zeros(8, 10, 2))[:, -1] - goal).norm(dim=-1)
    assert r.final_distance.median() < idle.median() / 3, (r.final_distance, idle)  # GD at DINO-WM's lr 1: 0.27 of idle


# One small step from the initial guess: the plan must stay next to it.
SMALL_STEP = {
    "grasp": dict(iterations=1),
    "gd": dict(iterations=1, lr=1e-3, action_noise=0.0),
    "cem": dict(iterations=1, samples=32, elites=4, init_std=1e-3),
    "latco": dict(iterations=1, lr=1e-3),
    "mppi": dict(iterations=1, samples=32, elites=4, init_std=1e-3, min_std=0.0),
    RANDOM_SHOOTING: dict(iterations=1, samples=32, std=1e-3),
}


@pytest.mark.parametrize("name", ALL)
def test_init_actions_are_the_starting_point(name, linear_model):
    start = torch.zeros(6, 2)
    g = torch.Generator().manual_seed(0)
    actions = torch.rand(6, 8, 2, generator=g) * 2 - 1
    goal = rollout(linear_model, start, actions)[:, -1]
    planner = make_planner(name, horizon=8, **SMALL_STEP[name])
    warm = planner.plan(linear_model, start, goal, seed=0, init_actions=actions)
    cold = planner.plan(linear_model, start, goal, seed=0)
    assert (warm.actions - actions).abs().max() < 0.02
    assert warm.final_distance.max() < 0.05 < cold.final_distance.mean()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALL)
def test_plans_on_cuda(name, linear_model):
    model = linear_model.to("cuda")
    start, goal = reachable_problems(linear_model.cpu(), 4, 6)
    r = make_planner(name, horizon=6, **FAST[name]).plan(model, start.cuda(), goal.cuda(), seed=0)
    assert r.actions.device.type == "cuda" and not r.failed.any()


@pytest.mark.parametrize("name", ALL)
def test_snapshots_hold_the_plan_after_the_asked_iterations(name, linear_model):
    start, goal = reachable_problems(linear_model, 3, 5)
    planner = make_planner(name, horizon=5, **FAST[name])
    last = planner.options.iterations
    r = planner.plan(linear_model, start, goal, seed=0, snapshot_iterations=[1, last])
    assert sorted(r.action_snapshots) == [1, last]
    torch.testing.assert_close(r.action_snapshots[last], r.actions)  # the last snapshot is the plan
    assert (r.action_snapshots[1].abs() <= 1 + 1e-6).all()
    shorter = planner.replace(iterations=1).plan(linear_model, start, goal, seed=0)
    torch.testing.assert_close(r.action_snapshots[1], shorter.actions)  # the plan after one iteration
    with pytest.raises(ValueError, match="snapshot_iterations must lie in"):
        planner.plan(linear_model, start, goal, seed=0, snapshot_iterations=[last + 1])


# -- the model's own planning cost -------------------------------------------------------------------


class FirstCoordinateModel(LinearModel):
    """``s' = s + [a, a]`` with a planning cost that counts only the first state coordinate."""

    def cost(self, final_states: Tensor, goal_states: Tensor) -> Tensor:
        return (final_states[..., 0] - goal_states[..., 0]).pow(2)


def coupled(cls: type[LinearModel]) -> LinearModel:
    """One action moves both coordinates alike, so the two coordinates of a goal ``(g, -g)`` conflict."""
    return cls(torch.eye(2), torch.ones(2, 1), action_bound=1.0)


# Budgets for the cost test: enough to converge on a 1-D action over 4 steps.
CONVERGE = {
    "grasp": dict(iterations=300, action_lr=0.05, sync_interval=0),  # the lifted loss alone, no sync
    "gd": dict(iterations=200, lr=0.1, action_noise=0.0),
    "cem": dict(iterations=10, samples=128, elites=16),
    "latco": dict(iterations=500, lr=0.1),  # its states start on the wrong side in coordinate 1
    "mppi": dict(iterations=10, samples=128, elites=16),
    RANDOM_SHOOTING: dict(iterations=30, samples=128),
}


def test_every_planner_has_a_convergent_budget():
    assert set(CONVERGE) == set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_planners_honour_the_models_cost(name):
    """With the model's cost (first coordinate only) the plan reaches coordinate 0 of the goal and
    ignores coordinate 1; without one the terminal MSE splits the difference (coordinate 0 near 0)."""
    a = torch.tensor([1.5, -1.0, 2.0])
    start, goal = torch.zeros(3, 2), torch.stack([a, -a], dim=1)
    planner = make_planner(name, horizon=4, **CONVERGE[name])
    own = planner.plan(coupled(FirstCoordinateModel), start, goal, seed=0)
    mse = planner.plan(coupled(LinearModel), start, goal, seed=0)
    assert not own.failed.any() and not mse.failed.any()
    x_own, x_mse = own.states[:, -1], mse.states[:, -1]
    assert (x_own[:, 0] - a).abs().max() < 0.1, x_own  # reached in coordinate 0 ...
    assert (x_own[:, 1] + a).abs().min() > 1.5, x_own  # ... at the price of coordinate 1
    assert x_mse[:, 0].abs().max() < 0.15, x_mse  # the MSE optimum: sum of actions 0
    # The trace's goal distance stays Euclidean (here about 2|a|), whatever the planning cost.
    assert own.trace.goal_distance.shape == own.trace.loss.shape
    assert (own.trace.goal_distance[-1] > 1.5).all(), own.trace.goal_distance[-1]


def test_problem_cost_uses_the_models_cost_or_the_terminal_mse():
    start, goal = torch.zeros(2, 2), torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    states = torch.randn(2, 5, 2)
    plain = Problem(coupled(LinearModel), start, goal, horizon=3)
    assert plain.model_cost is None
    torch.testing.assert_close(plain.cost(states, goal[:, None]), terminal_cost(states, goal[:, None]))
    own = Problem(coupled(FirstCoordinateModel), start, goal, horizon=3)
    torch.testing.assert_close(own.cost(states, goal[:, None]), (states[..., 0] - goal[:, None, :1].squeeze(-1)).pow(2))
    u = torch.zeros(2, 7, 3, 1)  # [B, N, H, A]: the shooting cost is the cost of the final states
    torch.testing.assert_close(own.shooting_cost(u), (goal[:, None, 0] - 0.0).pow(2).expand(2, 7))


def test_a_cost_of_the_wrong_shape_is_reported():
    class Summed(LinearModel):
        def cost(self, final_states: Tensor, goal_states: Tensor) -> Tensor:
            return (final_states - goal_states).pow(2).sum()

    model = coupled(Summed)
    with pytest.raises(ValueError, match=r"Summed.cost must return one value per state, shape \(1,\), got \(\)"):
        make_planner("gd", horizon=2, iterations=1).plan(model, torch.zeros(1, 2), torch.ones(1, 2))


# -- compute: model transitions, predicted and counted ----------------------------------------------------


def _grasp_cases() -> list[tuple[str, dict]]:
    cases = []
    for end in ("last", "sync", "best"):
        for rollout_states in (False, True):
            for iterations, interval in ((5, 2), (4, 2), (3, 0), (1, 1)):
                cases.append(("grasp", dict(iterations=iterations, sync_interval=interval, sync_steps=2, end=end,
                                            rollout_states=rollout_states)))
        cases.append(("grasp", dict(iterations=5, sync_interval=2, sync_steps=2, end=end, rollout_states=True,
                                    sync_mode="cem", sync_samples=6, sync_elites=2)))
    return cases


COUNTED = [
    ("gd", dict(iterations=3)),
    ("gd", dict(iterations=2, action_noise=0.0, init_std=0.0)),
    ("cem", dict(iterations=2, samples=8, elites=2)),
    ("mppi", dict(iterations=3, samples=6, elites=2)),
    ("latco", dict(iterations=3)),
    *_grasp_cases(),
]


def test_every_builtin_planner_is_counted():
    assert {name for name, _ in COUNTED} == set(PLANNERS)


@pytest.mark.parametrize("horizon", [1, 3])
@pytest.mark.parametrize(("name", "options"), COUNTED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(COUNTED)])
def test_predicted_transitions_are_the_counted_ones(name, options, horizon, linear_model):
    planner = make_planner(name, horizon=horizon, **options)
    iterations = planner.options.iterations
    predicted = planner.transitions()
    assert isinstance(predicted, int) and predicted > 0
    counts = set()
    for batch in (1, 3):
        start, goal = reachable_problems(linear_model, batch, horizon, seed=batch)
        r = planner.plan(linear_model, start, goal, seed=0, snapshot_iterations=[1, iterations])
        assert r.transitions == r.forward_transitions + r.backward_transitions == predicted, (batch, r.forward_transitions,
                                                                                           r.backward_transitions)
        counts.add((r.forward_transitions, r.backward_transitions))
        # Snapshots: what was spent by then, the last one everything; seconds grow and stay in the call.
        assert sorted(r.snapshot_transitions) == sorted(r.snapshot_seconds) == sorted({1, iterations})
        assert 0 < r.snapshot_transitions[1] <= r.snapshot_transitions[iterations] == predicted
        assert 0 < r.snapshot_seconds[1] <= r.snapshot_seconds[iterations] <= r.wall_time_s
    assert len(counts) == 1  # the per-problem count does not depend on the batch size
    start, goal = reachable_problems(linear_model, 2, horizon)
    warm = planner.plan(linear_model, start, goal, seed=0, init_actions=torch.zeros(2, horizon, 2))
    assert warm.transitions == planner.transitions(warm_start=True)
    # A lifted planner rolls its initial guess out once (H forward transitions); the others do not.
    assert warm.transitions - predicted == (horizon if PLANNERS[name].lifted else 0)


def test_gradient_planners_count_backward_transitions_and_sampling_ones_do_not(linear_model):
    start, goal = reachable_problems(linear_model, 2, 4)
    gd = make_planner("gd", horizon=4, iterations=3).plan(linear_model, start, goal, seed=0)
    assert gd.forward_transitions == gd.backward_transitions == 3 * 4
    cem = make_planner("cem", horizon=4, iterations=2, samples=8, elites=2).plan(linear_model, start, goal, seed=0)
    assert (cem.forward_transitions, cem.backward_transitions) == (2 * 8 * 4, 0)
    # GRASP's stop-gradient still sends the actions' gradient through the model: backward counts.
    grasp = make_planner("grasp", horizon=4, iterations=3, sync_interval=0, stop_state_grad=True)
    r = grasp.plan(linear_model, start, goal, seed=0)
    assert r.forward_transitions == r.backward_transitions == 3 * 4


def test_the_reporting_rollout_is_not_counted(linear_model):
    """result.states is rolled out after the search, on the plain model: only the search counts."""
    model = CallCounter(linear_model)
    start, goal = reachable_problems(linear_model, 2, 5)
    r = make_planner("gd", horizon=5, iterations=2).plan(model, start, goal, seed=0)
    assert r.forward_transitions == 2 * 5
    assert model.transitions == 2 * r.forward_transitions + 2 * 5  # B x the search's, plus B x H to report states


class CallCounter(LinearModel):
    """A linear model that also counts the transitions it is asked for (over all problems)."""

    def __init__(self, inner: LinearModel) -> None:
        super().__init__(inner.A.clone(), inner.B.clone())
        self.transitions = 0

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        self.transitions += state.shape[:-1].numel()
        return super().step(state, action)


def test_counted_model_keeps_what_planners_may_use(linear_model):
    own = coupled(FirstCoordinateModel)
    problem = Problem(own, torch.zeros(2, 2), torch.ones(2, 2), horizon=3)
    counted = problem.model
    assert counted.inner is own and counted.state_dim == 2 and counted.action_dim == 1
    assert torch.equal(counted.action_low, own.action_low) and torch.equal(counted.action_high, own.action_high)
    states = torch.randn(2, 4, 2)
    torch.testing.assert_close(counted.cost(states, states.flip(-1)), own.cost(states, states.flip(-1)))
    assert not hasattr(Problem(linear_model, torch.zeros(1, 2), torch.ones(1, 2), horizon=1).model, "cost")


def test_the_example_plugin_planner_predicts_its_count(monkeypatch, linear_model):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "examples" / "plugin"))
    planner = make_planner("wmplan_plugin_example.planner:RandomShooting", horizon=3, iterations=2, samples=5)
    start, goal = reachable_problems(linear_model, 2, 3)
    assert planner.plan(linear_model, start, goal, seed=0).transitions == planner.transitions() == 2 * 5 * 3
    assert make_planner(RANDOM_SHOOTING, horizon=3).transitions() is None  # a plug-in without a count
