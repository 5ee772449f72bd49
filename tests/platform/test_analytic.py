"""The analytic models as models, problems, tasks and the demo: the obstacle field, goals H steps of
correlated actions away, model 'exact' (the task's own dynamics) and `wmplan demo --model ... --PARAM`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from wmplan.cli import main
from wmplan.jobs.experiment import ExperimentConfig
from wmplan.jobs.runner import run_experiment
from wmplan.platform.demo import analytic_models, build_analytic, run_demo
from wmplan.platform.envs.analytic import REACHABLE
from wmplan.platform.episode import make_episode_specs
from wmplan.platform.errors import ConfigError
from wmplan.platform.models.analytic import ObstacleField
from wmplan.platform.problems import correlated_actions, far_problems, obstacle_problems, reachable_problems
from wmplan.platform.registry import EXACT_MODEL, has_exact_model, load_model, make_task, task_class
from wmplan.platform.world_model import LinearModel, rollout

ANALYTIC = ("linear", "pointmass", "obstacles")


# -- the obstacle field ------------------------------------------------------------------------------------


def test_the_layout_is_a_function_of_its_seed_and_keeps_gaps() -> None:
    a, b, c = ObstacleField(layout_seed=3), ObstacleField(layout_seed=3), ObstacleField(layout_seed=4)
    assert torch.equal(a.centers, b.centers) and torch.equal(a.radii, b.radii)
    assert not torch.equal(a.centers, c.centers)
    assert a.centers.shape == (6, 2) and a.centers.dtype == a.radii.dtype == torch.float32
    gaps = torch.cdist(a.centers, a.centers) - a.radii[:, None] - a.radii[None, :]
    assert (gaps + 100 * torch.eye(6) >= 0.4 - 1e-6).all()


def test_a_step_into_an_obstacle_ends_on_the_side_it_came_from() -> None:
    field = ObstacleField(obstacles=1, layout_seed=0)
    c, r = field.centers[0], float(field.radii[0])
    start = c + torch.tensor([-(r + 0.05), 0.0])  # just left of the circle, moving right at full speed
    s = start.clone()
    for _ in range(20):  # pushing straight at the obstacle never gets through
        s = field.step(s, torch.tensor([1.0, 0.0]))
        assert float(torch.linalg.vector_norm(s - c)) > r - 0.01 and float(s[0]) < float(c[0])
    # Away from obstacles, a step is the displacement (the barrier's tail is below 1e-6).
    far = torch.tensor([50.0, 50.0])
    torch.testing.assert_close(field.step(far, torch.tensor([1.0, -1.0])), far + torch.tensor([0.2, -0.2]))


def test_the_dynamics_are_differentiable_and_batched() -> None:
    field = ObstacleField()
    s = field.free_points(5, generator=torch.Generator().manual_seed(0)).requires_grad_()
    a = torch.zeros(3, 5, 2, requires_grad=True)
    out = field.step(s.expand(3, 5, 2), a)
    assert out.shape == (3, 5, 2)
    out.sum().backward()
    assert s.grad is not None and a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_blocked_and_clearance() -> None:
    field = ObstacleField(obstacles=1, layout_seed=0)
    c, r = field.centers[0], float(field.radii[0])
    left, right, above = c - torch.tensor([2 * r, 0.0]), c + torch.tensor([2 * r, 0.0]), c + torch.tensor([0.0, 2 * r])
    assert field.blocked(torch.stack([left, left]), torch.stack([right, left + torch.tensor([0.0, 2 * r])])).tolist() == [True, False]
    assert field.blocked(above, above + torch.tensor([1.0, 0.0])).item() is False
    assert field.clearance(c[None])[0] == pytest.approx(-r) and field.clearance(right[None])[0] == pytest.approx(r)
    free = field.free_points(50, generator=torch.Generator().manual_seed(1))
    assert free.shape == (50, 2) and (ObstacleField().clearance(free) > -math.inf).all()
    assert (field.clearance(free) > 0.1).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"speed": 0.5}, "a step must not jump over"),
    ({"gap": 0.1}, "gap must be above"),
    ({"obstacles": 200}, "cannot place 200 obstacles"),  # refused at once: denser than any packing
])
def test_an_obstacle_field_that_could_be_crossed_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ObstacleField(**kwargs)


# -- problems ----------------------------------------------------------------------------------------------


def test_correlated_actions_stay_in_bounds_and_persist() -> None:
    model = LinearModel.rotation(radius=1.05)
    slow = correlated_actions(model, 64, 40, generator=torch.Generator().manual_seed(0), persistence=0.9)
    fresh = correlated_actions(model, 64, 40, generator=torch.Generator().manual_seed(0), persistence=0.0)
    assert slow.shape == (64, 40, 2) and slow.abs().max() <= 1.0
    change = lambda a: (a[:, 1:] - a[:, :-1]).abs().mean()  # noqa: E731
    assert change(slow) < 0.5 * change(fresh)


def test_far_goals_are_reached_by_their_actions_and_are_farther() -> None:
    model = LinearModel.rotation(radius=1.0)
    start, goal = far_problems(model, 200, 40, seed=1)
    again = far_problems(model, 200, 40, seed=1)
    assert torch.equal(start, again[0]) and torch.equal(goal, again[1])
    g = torch.Generator().manual_seed(1)
    redrawn = torch.randn(200, 2, generator=g)
    actions = correlated_actions(model, 200, 40, generator=g)
    torch.testing.assert_close(rollout(model, redrawn, actions)[:, -1], goal)
    _, near = reachable_problems(model, 200, 40, seed=1)
    far = float((goal - start).norm(dim=-1).median())
    assert far > 1.5 * float((near - start).norm(dim=-1).median())


def test_obstacle_problems_are_blocked_and_free() -> None:
    field = ObstacleField()
    start, goal = obstacle_problems(field, 32, 30, seed=0)
    assert start.shape == goal.shape == (32, 2)
    assert field.blocked(start, goal).all()  # with 8 candidates each, every pair has an obstacle in between
    assert (field.clearance(start) > 0.1).all() and (field.clearance(goal) > -0.01).all()
    again = obstacle_problems(field, 32, 30, seed=0)
    assert torch.equal(start, again[0]) and torch.equal(goal, again[1])


# -- the tasks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ANALYTIC)
def test_an_analytic_task_steps_its_exact_model(name: str) -> None:
    env = make_task(name)
    assert env.frameskip == 1 and env.success_threshold == 0.1 and env.default_goal_mode == REACHABLE
    assert not env.needs_dataset_for_goals() and has_exact_model(env) and has_exact_model(task_class(name))
    model = load_model(EXACT_MODEL, task=env)
    assert (model.state_dim, model.action_dim) == (env.state_dim, env.action_dim)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(12, env.action_dim))
    start = env.reset(seed=2)
    states = env.rollout(actions)
    assert states.dtype == np.float64
    predicted = rollout(model, torch.as_tensor(start, dtype=torch.float32), torch.as_tensor(actions, dtype=torch.float32))
    np.testing.assert_allclose(states, predicted.double().numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ANALYTIC)
def test_reachable_goals_are_h_steps_away_and_reproducible(name: str) -> None:
    env = make_task(name)
    a = make_episode_specs(env, horizon=20, count=6, seed=3)
    b = make_episode_specs(make_task(name), horizon=20, count=6, seed=3)
    assert all(np.array_equal(x.goal, y.goal) and np.array_equal(x.start, y.start) for x, y in zip(a, b))
    # Each pair is the task's reachable_problems from a seed the episode's own generator draws.
    seed = int(np.random.default_rng(a[2].seed).integers(2**31 - 1))
    start, goal = env.reachable_problems(1, 20, seed=seed)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(a[2].goal, goal[0].double().numpy())
    assert min(np.linalg.norm(s.goal - s.start) for s in a) > 0.1  # no pair starts solved


def test_task_parameters_reach_the_model() -> None:
    linear = load_model(EXACT_MODEL, task=make_task("linear", radius=1.2, angle=0.5))
    assert float(torch.linalg.eigvals(linear.A).abs().max()) == pytest.approx(1.2, rel=1e-5)  # type: ignore[attr-defined]
    mass = load_model(EXACT_MODEL, task=make_task("pointmass", dt=0.1, damping=0.5))
    assert (mass.dt, mass.damping) == (0.1, 0.5)  # type: ignore[attr-defined]
    field = load_model(EXACT_MODEL, task=make_task("obstacles", obstacles=3, layout_seed=7))
    assert field.centers.shape == (3, 2)  # type: ignore[attr-defined]
    assert make_task("obstacles", obstacles=3, layout_seed=7).obstacle_crossings(
        np.array([[[-9.0, 0.0], [9.0, 0.0]], [[-9.0, 20.0], [9.0, 20.0]]])).tolist() == [
        bool(ObstacleField(obstacles=3, layout_seed=7).blocked(torch.tensor([-9.0, 0.0]), torch.tensor([9.0, 0.0]))), False]


def test_exact_needs_a_task_that_has_it() -> None:
    with pytest.raises(ConfigError, match="no task was given"):
        load_model(EXACT_MODEL)
    with pytest.raises(ConfigError, match="task 'pointmaze' has no exact dynamics"):
        load_model(EXACT_MODEL, task=make_task("pointmaze"))
    with pytest.raises(ConfigError, match="takes no options"):
        load_model(EXACT_MODEL, task=make_task("linear"), options={"checkpoint": "x"})


def test_auto_on_an_analytic_task_is_its_exact_model() -> None:
    auto = ExperimentConfig(task="obstacles")
    assert auto.model_is_exact and auto.model_arguments() == {"model": EXACT_MODEL, "model_options": {}, "factory": None}
    assert auto.model_sha256() is None and auto.model_label() == "exact dynamics of task obstacles (auto)"
    auto.prepare_model()  # nothing to train
    assert ExperimentConfig(task="linear", model=EXACT_MODEL).model_is_exact
    assert not ExperimentConfig(task="wall").model_is_exact
    assert not ExperimentConfig(task="linear", obs="pixels").model_is_exact  # pictures need a visual model
    assert ExperimentConfig(task="wall", model=EXACT_MODEL).model_is_exact  # Wall's dynamics: only when asked for
    with pytest.raises(ConfigError, match="task 'pointmaze' has none"):
        ExperimentConfig(task="pointmaze", model=EXACT_MODEL)


def test_a_run_on_an_analytic_task_plans_with_the_exact_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = ExperimentConfig(task="linear", horizons=[10], episodes=4, executor="local", tracking=False,
                              planners={"cem": {"iterations": 10}}, output=str(tmp_path / "runs"))
    result = run_experiment(config, say=lambda m: None)
    summary = result.summaries["cem", 10]
    assert result.planned == 4 and result.failed_batches == 0 and summary["count"] == 4
    # The exact model: what the model predicts is what the simulator does, so both successes agree.
    assert summary["model_success_rate"] == summary["success_rate"] >= 0.75
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "data").exists()  # no training, no data


# -- the demo ----------------------------------------------------------------------------------------------


def test_the_demo_models_are_the_tasks_with_exact_dynamics() -> None:
    assert set(ANALYTIC) <= set(analytic_models()) and "wall" not in analytic_models()
    assert build_analytic("linear", {"radius": 1.1}).radius == 1.1  # type: ignore[attr-defined]


def test_the_demo_plans_the_obstacle_model_with_its_parameters() -> None:
    rows = run_demo(model="obstacles", planners=["cem"], horizons=[5], problems=8, tolerance=0.1, seed=0, device="cpu",
                    overrides={"cem": {"iterations": 5}}, parameters={"obstacles": 2, "speed": 0.25})
    assert [(r.planner, r.horizon, r.problems) for r in rows] == [("cem", 5, 8)] and rows[0].successes >= 4


@pytest.mark.parametrize("args, message", [
    (["--model", "pointmass", "--radius", "1.05"], "model 'pointmass' takes no --radius; its parameters: --dt, --damping, --persistence"),
    (["--model", "linear", "--obstacles", "3"], "model 'linear' takes no --obstacles"),
    (["--model", "linear", "--radius", "-1"], "model 'linear': linear: need radius > 0"),
    (["--model", "obstacles", "--speed", "1"], "a step must not jump over an obstacle"),
    (["--model", "wall"], "unknown analytic model 'wall'"),
])
def test_a_wrong_model_parameter_is_one_line_and_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", *args, "--planners", "cem", "--problems", "2", "--horizons", "2"]) == 2
    out = capsys.readouterr()
    assert message in out.err and out.err.count("\n") == 1 and out.out == ""


def test_the_demo_command_takes_a_models_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--model", "linear", "--radius", "1.05", "--angle", "0.3", "--planners", "cem", "--problems", "8",
                 "--horizons", "5", "--set", "planners.cem.iterations=5"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| cem | 5 |")]
    assert len(rows) == 1 and float(rows[0].split("|")[3].split("%")[0]) >= 50.0
