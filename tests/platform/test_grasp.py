"""GRASP's own semantics: stop-gradient, sync schedule, where the noise goes, residuals."""

from __future__ import annotations

import pytest
import torch

from tests.platform.helpers import CountingModel
from wmplan.platform.planners import make_planner, rollout
from wmplan.platform.planners.grasp import lifted_loss
from wmplan.platform.problems import reachable_problems
from wmplan.platform.world_model import LinearModel


@pytest.mark.parametrize("stop", [True, False])
def test_stop_gradient_cuts_the_models_state_input(stop):
    """With sg on, a virtual state's gradient comes only from being a target; with it off, also through F."""
    model = LinearModel(torch.tensor([[1.2, 0.3], [-0.4, 0.9]]), torch.eye(2))
    b, h, d = 3, 5, 2
    g = torch.Generator().manual_seed(0)
    start, goal = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    states = torch.randn(b, h - 1, d, generator=g, requires_grad=True)
    actions = torch.randn(b, h, 2, generator=g)
    loss, _, pred = lifted_loss(model, start, goal, states, actions, goal_weight=1.0, stop_state_grad=stop)
    (grad,) = torch.autograd.grad(loss.sum(), states)
    # The target term alone: d/ds_{t+1} mean_d (F(s_t, a_t) - s_{t+1})^2 = -2 (F(s_t, a_t) - s_{t+1}) / D.
    target_only = -2.0 * (pred[:, :-1] - states.detach()) / d
    if stop:
        torch.testing.assert_close(grad, target_only)
    else:
        assert (grad - target_only).abs().max() > 1e-2


def test_sync_fires_after_exactly_every_interval():
    inner = LinearModel.rotation(dim=2)
    start, goal = reachable_problems(inner, 3, 4)
    h, steps = 4, 2
    model = CountingModel(inner)
    r = make_planner("grasp", horizon=h, iterations=25, sync_interval=10, sync_steps=steps).plan(model, start, goal, seed=0)
    assert torch.nonzero(r.trace.synced).flatten().tolist() == [9, 19]  # after iterations 10 and 20
    # 25 batched lifted calls covering all B x H steps, H serial calls per sync step, H for the final rollout.
    assert model.calls == 25 + 2 * steps * h + h
    assert model.shapes.count((3, h, 2)) == 25

    model = CountingModel(inner)
    r = make_planner("grasp", horizon=h, iterations=25, sync_interval=0).plan(model, start, goal, seed=0)
    assert not r.trace.synced.any() and model.calls == 25 + h


def test_cem_sync_mode_runs_on_schedule():
    model = LinearModel.rotation(dim=2)
    start, goal = reachable_problems(model, 3, 6)
    r = make_planner("grasp", horizon=6, iterations=20, sync_interval=5, sync_mode="cem", noise_scale=0.0).plan(model, start, goal, seed=0)
    assert r.trace.synced.sum() == 4 and not r.failed.any()


def test_noise_touches_only_states():
    model = LinearModel.rotation(dim=2)
    start, goal = reachable_problems(model, 4, 6)
    frozen = dict(horizon=6, iterations=20, sync_interval=0, state_lr=1e-12, action_lr=1e-12)
    noisy = make_planner("grasp", noise_scale=0.1, **frozen).plan(model, start, goal, seed=0)
    quiet = make_planner("grasp", noise_scale=0.0, **frozen).plan(model, start, goal, seed=0)
    assert noisy.actions.abs().max() < 1e-9  # actions get no noise: they stay at their zero start
    deviation = noisy.virtual_states - quiet.virtual_states
    assert deviation[:, 1:-1].std() == pytest.approx(0.1 * 20**0.5, rel=0.2)  # a random walk of 20 steps
    assert deviation[:, 0].abs().max() == 0 and deviation[:, -1].abs().max() == 0  # start and goal fixed
    assert (quiet.virtual_states - noisy.virtual_states)[:, 1:-1].abs().min() > 0


def test_noise_decay_shrinks_noise_within_a_phase():
    model = LinearModel.rotation(dim=2)
    start, goal = reachable_problems(model, 4, 6)
    frozen = dict(horizon=6, iterations=20, sync_interval=0, state_lr=1e-12, action_lr=1e-12, noise_scale=0.1)
    quiet = make_planner("grasp", **{**frozen, "noise_scale": 0.0}).plan(model, start, goal, seed=0)
    flat = make_planner("grasp", **frozen).plan(model, start, goal, seed=0)
    decayed = make_planner("grasp", noise_decay=True, **frozen).plan(model, start, goal, seed=0)
    spread = lambda r: (r.virtual_states - quiet.virtual_states)[:, 1:-1].std()  # noqa: E731
    # sum_k (1 - k/20)^2 over k < 20 is about a third of 20.
    assert spread(decayed) == pytest.approx(spread(flat) * (sum((1 - k / 20) ** 2 for k in range(20)) / 20) ** 0.5, rel=0.25)


def test_residuals_fall_on_a_reachable_problem():
    model = LinearModel.rotation(dim=2, angle=0.3)
    start, goal = reachable_problems(model, 8, 10, seed=5)
    planner = make_planner("grasp", horizon=10, iterations=300, state_lr=0.01, action_lr=0.05, goal_weight=0.1, noise_scale=0.001)
    r = planner.plan(model, start, goal, seed=0)
    first, last = r.trace.residual[0].mean(), r.trace.residual[-1].mean()
    assert last < 0.2 * first, (first, last)
    assert r.final_distance.median() < 0.3


# -- where the plan ends: end='last' | 'sync' | 'best', and rollout_states ------------------------------------


def _final_cost(model, start, goal, actions):
    with torch.no_grad():
        return (rollout(model, start, actions)[:, -1] - goal).pow(2).mean(-1)


ENDS = dict(horizon=6, iterations=35, sync_interval=10, sync_steps=3, noise_scale=0.01, action_lr=0.05)


def test_best_is_the_cheapest_of_the_synced_iterates_and_the_last():
    model = LinearModel.rotation(dim=2, radius=1.05)
    start, goal = reachable_problems(model, 6, 6, seed=3)
    last = make_planner("grasp", **ENDS).plan(model, start, goal, seed=1, snapshot_iterations=[10, 20, 30])
    best = make_planner("grasp", end="best", **ENDS).plan(model, start, goal, seed=1)
    # The candidates: the iterates right after each sync (the 'last' run's snapshots, same seed) and the last iterate.
    candidates = torch.stack([_final_cost(model, start, goal, a) for a in [*last.action_snapshots.values(), last.actions]])
    torch.testing.assert_close(_final_cost(model, start, goal, best.actions), candidates.min(0).values)
    assert (_final_cost(model, start, goal, best.actions) <= _final_cost(model, start, goal, last.actions) + 1e-7).all()
    assert (candidates.argmin(0) < 3).any(), "some problem should prefer a synced iterate to the last one"
    assert best.transitions == last.transitions + 4 * 6  # a rollout of each of the 4 candidates
    torch.testing.assert_close(best.trace.loss, last.trace.loss)  # the loop itself is the same


def test_sync_adds_a_final_sync_unless_the_loop_ended_on_one():
    model = LinearModel.rotation(dim=2)
    start, goal = reachable_problems(model, 4, 6, seed=2)
    aligned = {**ENDS, "iterations": 30}
    last = make_planner("grasp", **aligned).plan(model, start, goal, seed=0)
    synced = make_planner("grasp", end="sync", **aligned).plan(model, start, goal, seed=0)
    assert torch.equal(synced.actions, last.actions) and synced.transitions == last.transitions
    last = make_planner("grasp", **ENDS).plan(model, start, goal, seed=0)
    synced = make_planner("grasp", end="sync", **ENDS).plan(model, start, goal, seed=0, snapshot_iterations=[35])
    assert synced.transitions == last.transitions + 3 * 2 * 6  # one more sync phase of 3 gradient steps
    assert not torch.equal(synced.actions, last.actions)
    torch.testing.assert_close(synced.action_snapshots[35], synced.actions)  # the last snapshot is the plan
    assert synced.snapshot_transitions[35] == synced.transitions
    assert synced.trace.synced.sum() == 3  # the trace marks the loop's syncs only


@pytest.mark.parametrize("sync_mode", ["gd", "cem"])
def test_rollout_states_makes_the_residuals_zero_after_a_sync(sync_mode):
    model = LinearModel.rotation(dim=2)
    start, goal = reachable_problems(model, 3, 5, seed=4)
    options = dict(horizon=5, iterations=12, sync_interval=4, sync_steps=2, sync_mode=sync_mode, sync_samples=8, sync_elites=2)
    reset = make_planner("grasp", rollout_states=True, **options).plan(model, start, goal, seed=0)
    kept = make_planner("grasp", **options).plan(model, start, goal, seed=0)
    after = torch.nonzero(reset.trace.synced).flatten()[:-1] + 1  # the iterations right after a sync
    assert after.tolist() == [4, 8]
    # The residuals are computed before each iteration's step: on the rollout they vanish, except the
    # last step, whose target is the goal.
    assert reset.trace.residual[after, :, :-1].abs().max() < 1e-5
    assert (reset.trace.residual[after, :, -1] > 1e-3).all()
    assert kept.trace.residual[after, :, :-1].abs().max() > 1e-3
    assert reset.transitions == kept.transitions + 3 * (5 - 1)  # s_1..s_4 rolled out after each of 3 syncs
