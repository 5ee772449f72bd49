"""The task contract: every task (wmplan's three and a user's) provides every piece wmplan asks of it.

One suite, every task: the built-in tasks by name, a user's variant of a built-in task
(``shifted_wall``, a factory) and a user's own ``Env`` subclass (``Drift``: three-value actions,
Env's defaults wherever it can), all built through the registry as a command would. A guard below
checks the other half of "one task, one place": no module outside ``wmplan/platform/envs/``
names a task.
"""

from __future__ import annotations

import ast
import copy
import hashlib
from pathlib import Path

import numpy as np
import pytest

from wmplan.platform.data import DataConfig, generate_dataset, read_dataset
from wmplan.platform.envs import ENV_NAMES, GOAL_MODES, Env, PixelRecipe
from wmplan.platform.episode import make_episode_specs
from wmplan.platform.registry import make_task, task_class
from wmplan.platform.workflow import default_data_config, default_train_config, episode_specs

FIXTURES = "tests.platform.plugin_fixtures"
TASKS = [*ENV_NAMES, f"{FIXTURES}:shifted_wall", f"{FIXTURES}:Drift"]
"""Every task the contract is checked on: wmplan's own and two plug-ins."""

WMPLAN = Path(__file__).resolve().parents[2] / "wmplan"


@pytest.fixture(params=TASKS)
def spec(request: pytest.FixtureRequest) -> str:
    return request.param


def _segments(env: Env, *, count: int, steps: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Recorded trajectories ``(states [steps+1, D], actions [steps, A])`` from the task's own data policy."""
    out = []
    for k in range(count):
        rng = np.random.default_rng([seed, k])
        env.reset(seed=int(rng.integers(1 << 30)))
        policy = env.data_policy(rng, steps=steps)
        states, actions = [env.state], []
        for t in range(steps):
            actions.append(np.clip(policy(states[-1], t), env.action_low, env.action_high))
            states.append(env.step(actions[-1]))
        out.append((np.stack(states), np.stack(actions)))
    return out


# -- every piece ------------------------------------------------------------------------------------------


def test_every_task_provides_every_piece(spec: str) -> None:
    env = make_task(spec)
    assert task_class(spec) is type(env)
    assert isinstance(env.action_dim, int) and env.action_dim >= 1 and isinstance(env.frameskip, int) and env.frameskip >= 1
    assert env.action_low.shape == env.action_high.shape == (env.action_dim,)
    state = env.reset(seed=0)
    assert isinstance(env.success_coords, slice) and state[env.success_coords].size >= 1
    assert env.success_threshold is not None and env.success_threshold > 0
    assert set(GOAL_MODES) <= set(env.goal_modes) and env.default_goal_mode in env.goal_modes
    assert isinstance(env.default_trajectory_steps, int) and env.default_trajectory_steps >= 1
    assert isinstance(env.pixel_recipe, PixelRecipe)
    assert env.world_extent is not None and env.world_extent[0] < env.world_extent[1] and isinstance(env.y_up, bool)

    policy = env.data_policy(np.random.default_rng(0), steps=4)
    action = np.asarray(policy(state, 0))
    assert action.shape == (env.action_dim,) and np.all(np.isfinite(action))

    states = env.rollout(np.zeros((3, env.action_dim)))
    tracks = env.plot_tracks(states)
    assert tracks and all(xy.shape == (4, 2) for xy in tracks.values())
    lo, hi = env.world_extent
    corners = env.pixel_coords(np.array([[lo, lo], [hi, hi]]), size=32)
    np.testing.assert_allclose(corners[:, 0], [-0.5, 31.5])
    np.testing.assert_allclose(corners[:, 1], [31.5, -0.5] if env.y_up else [-0.5, 31.5])
    assert env.render(32).shape == (32, 32, 3)

    crossed = env.obstacle_crossings(states[None])
    assert crossed is None or (crossed.shape == (1,) and crossed.dtype == bool)

    recipe = env.pixel_recipe
    assert default_data_config(spec, obs="pixels").episodes == recipe.trajectories
    pixels = default_train_config(spec, obs="pixels")
    if recipe.kind == "jepa":  # the JEPA preset's steps, the recipe's proprio
        assert getattr(pixels, "proprio", None) is recipe.proprio
    else:
        assert pixels.steps == recipe.predictor_steps


def test_built_in_tasks_keep_their_values() -> None:
    """The values that moved onto the Env classes are DINO-WM's and the README's."""
    wall, maze, pusht = (task_class(n) for n in ("wall", "pointmaze", "pusht"))
    assert (wall.success_coords, wall.success_threshold, wall.world_extent, wall.y_up) == (slice(0, 2), 4.5, (-0.5, 64.5), False)
    assert (maze.success_coords, maze.success_threshold, maze.world_extent, maze.y_up) == (slice(0, 2), 0.5, (-0.7, 4.3), True)
    assert (pusht.success_coords, pusht.success_threshold, pusht.world_extent, pusht.y_up) == (slice(0, 4), 20.0, (0.0, 512.0), False)
    assert [c.default_goal_mode for c in (wall, maze, pusht)] == ["random", "random", "replay"]
    assert [c.needs_dataset_for_goals() for c in (wall, maze, pusht)] == [False, False, True]
    assert [(c.pixel_recipe.trajectories, c.pixel_recipe.predictor_steps) for c in (wall, maze, pusht)] == [
        (50, 4000), (250, 4000), (1000, 12000)]  # as many frames as before, in 400-step trajectories on wall and pointmaze
    assert [(c.pixel_recipe.kind, c.pixel_recipe.proprio) for c in (wall, maze, pusht)] == [
        ("jepa", True), ("jepa", True), ("jepa", True)]  # PointMaze: the JEPA kind seeing the ball's velocity (84% against 25% without)
    assert [(c.pixel_recipe.policy, c.pixel_recipe.env_step_predictor, c.pixel_recipe.activation) for c in (wall, maze, pusht)] == [
        ("uniform", True, "relu"), ("task", False, "silu"), ("task", False, "silu")]  # Wall: 74% (visual on the walk: 22-52%); Push-T 50% (visual 7%)
    assert [c.default_trajectory_steps for c in (wall, maze, pusht)] == [400, 400, 100]  # replayed goals up to H = 80 / 20
    assert [c.default_trajectories for c in (wall, maze, pusht)] == [250, 250, 1000]


# -- start/goal pairs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("goal_mode", GOAL_MODES)
def test_pairs_are_reproducible_by_seed(spec: str, goal_mode: str) -> None:
    env = make_task(spec)
    h = 2
    segments = _segments(copy.deepcopy(env), count=3, steps=env.frameskip * h + 4, seed=1) if goal_mode == "replay" else None
    a = make_episode_specs(env, horizon=h, count=5, seed=7, segments=segments, goal_mode=goal_mode)
    b = make_episode_specs(make_task(spec), horizon=h, count=5, seed=7, segments=segments, goal_mode=goal_mode)
    c = make_episode_specs(env, horizon=h, count=5, seed=8, segments=segments, goal_mode=goal_mode)
    assert [s.seed for s in a] == [s.seed for s in b] and [s.source for s in a] == [s.source for s in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.start, y.start)
        np.testing.assert_array_equal(x.goal, y.goal)
    assert not all(np.array_equal(x.goal, z.goal) for x, z in zip(a, c))
    # One episode regenerated alone, from its own seed.
    alone = env.draw_start_goal(np.random.default_rng(a[3].seed), horizon=h, goal_mode=goal_mode, segments=segments or ())
    np.testing.assert_array_equal(alone.start, a[3].start)
    np.testing.assert_array_equal(alone.goal, a[3].goal)
    if goal_mode == "replay":  # the goal is exactly H model steps of recorded actions away
        assert segments is not None
        fresh = make_task(spec)
        for s in a:
            assert s.source is not None
            k, offset = s.source
            states, actions = segments[k]
            np.testing.assert_array_equal(s.start, fresh.reset(state=states[offset]))
            np.testing.assert_allclose(fresh.rollout(actions[offset : offset + env.frameskip * h])[-1], s.goal)
    else:
        assert all(s.source is None for s in a)


def test_the_default_goal_mode_asks_for_data_only_when_it_replays(spec: str) -> None:
    env = make_task(spec)
    if env.needs_dataset_for_goals():
        with pytest.raises(ValueError, match="segments"):
            make_episode_specs(env, horizon=2, count=2, seed=0)
    else:
        assert len(episode_specs(env, horizon=2, count=2, seed=0, dataset=None)) == 2
    with pytest.raises(ValueError, match=f"no goal mode 'teleport'; its modes: {', '.join(env.goal_modes)}"):
        make_episode_specs(env, horizon=2, count=2, seed=0, goal_mode="teleport")


# -- success ----------------------------------------------------------------------------------------------


def test_success_agrees_with_the_threshold(spec: str) -> None:
    env = make_task(spec)
    goal = env.reset(seed=3)
    coords = np.arange(env.state_dim)[env.success_coords]
    direction = np.zeros(env.state_dim)
    direction[coords] = 1.0 / np.sqrt(len(coords))  # a unit step spread over the success coordinates
    thr = env.success_threshold
    assert thr is not None
    inside, outside = goal + 0.99 * thr * direction, goal + 1.01 * thr * direction
    assert env.is_success(goal, goal) is True
    assert env.is_success(inside, goal) is True and env.is_success(outside, goal) is False
    np.testing.assert_array_equal(env.is_success(np.stack([inside, outside]), goal), [True, False])
    assert env.goal_distance(outside, goal) == pytest.approx(1.01 * thr)
    np.testing.assert_allclose(env.goal_distance(np.stack([inside, outside]), goal), np.array([0.99, 1.01]) * thr)


# -- data -------------------------------------------------------------------------------------------------


def test_data_are_generated_through_the_tasks_policy(spec: str, tmp_path: Path) -> None:
    env = make_task(spec)
    config = DataConfig(env=spec, episodes=3, steps=2 * env.frameskip, seed=5, val_fraction=0.34)
    path = generate_dataset(config, tmp_path / "d.parquet", workers=1)
    ds = read_dataset(path)
    assert ds.env == spec and ds.meta["action_dim"] == env.action_dim and ds.frameskip == env.frameskip
    for traj in ds.trajectories:
        assert traj.states.shape == (2 * env.frameskip + 1, env.state_dim)
        assert traj.actions.shape == (2 * env.frameskip, env.action_dim)
        # The stored actions are the env's data policy, drawn from the trajectory's own seed.
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, traj.episode]))
        sim = make_task(spec)
        state = sim.reset(seed=int(rng.integers(2**63)))
        policy = sim.data_policy(rng, steps=len(traj.actions))
        for t, recorded in enumerate(traj.actions):
            np.testing.assert_array_equal(np.clip(policy(state, t), sim.action_low, sim.action_high), recorded)
            state = sim.step(recorded)
        np.testing.assert_array_equal(traj.states[-1], state)
    assert DataConfig(env=spec).steps_per_episode == env.default_trajectory_steps


@pytest.mark.integration  # a subprocess of its own, or processes
def test_a_plug_in_tasks_data_are_the_same_bytes_in_parallel(tmp_path: Path) -> None:
    config = DataConfig(env=f"{FIXTURES}:Drift", episodes=40, steps=6, seed=2, frames=True, frame_size=16)
    a = generate_dataset(config, tmp_path / "a.parquet", workers=1)
    b = generate_dataset(config, tmp_path / "b.parquet", workers=2)
    assert hashlib.sha256(a.read_bytes()).hexdigest() == hashlib.sha256(b.read_bytes()).hexdigest()
    frames = read_dataset(a).trajectories[0].frames
    assert frames is not None and frames.shape == (7, 16, 16, 3)


# -- a task that leaves a piece out -----------------------------------------------------------------------


def test_a_missing_piece_is_a_clear_error() -> None:
    env = make_task(f"{FIXTURES}:DriftWithoutSuccess")
    goal = env.reset(seed=0)
    with pytest.raises(NotImplementedError, match="task 'drift' has no success test: set success_threshold"):
        env.is_success(goal, goal)
    with pytest.raises(ValueError, match="task 'drift' cannot be drawn on its render: set world_extent"):
        env.pixel_coords(goal, size=16)
    # What it did not override has a default.
    assert env.obstacle_crossings(goal[None, None]) is None and env.default_goal_mode == "random"
    assert len(make_episode_specs(env, horizon=1, count=2, seed=0)) == 2


# -- no task named outside envs/ ----------------------------------------------------------------------------

_DISTINCTIVE = ("pusht", "push-t", "pointmaze")
"""Task names that never occur in other words (unlike "wall", as in "wall time")."""
_REGISTRATION = "wmplan/platform/registry.py"
"""The registry resolves task names: the one module outside envs/ that may list wmplan's own (ENV_NAMES)."""


def _documentation(tree: ast.AST) -> set[int]:
    """ids of string constants that are documentation: a statement made of one string (docstrings
    of modules, classes and functions, and the attribute docstrings under dataclass fields)."""
    return {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}


def task_names_in(source: str, *, where: str) -> list[str]:
    """Every place in ``source`` that names a task in code: a string that is a task's name or
    contains a distinctive one, the ENV_NAMES list (outside the registry), or an import of a task's
    module. Comments and documentation strings do not count."""
    tree = ast.parse(source)
    docs = _documentation(tree)
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value.lower()
            if node.value in ENV_NAMES or any(name in text for name in _DISTINCTIVE):
                found.append(f"{where}:{line}: string {node.value!r}")
        elif isinstance(node, (ast.Name, ast.Attribute, ast.alias)) and where != _REGISTRATION:
            name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else node.name
            if name == "ENV_NAMES":
                found.append(f"{where}:{line}: ENV_NAMES")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            modules += [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
            for module in modules:
                if any(module == f"wmplan.platform.envs.{task}" for task in ENV_NAMES):
                    found.append(f"{where}:{line}: import of {module}")
    return found


def test_the_guard_finds_a_task_named_in_code() -> None:
    """The guard below can fail: each way of naming a task in code is caught, documentation is not."""
    source = '''
"""Module docs may say wall, pointmaze and pusht."""
from wmplan.platform.envs import ENV_NAMES
from wmplan.platform.envs.pusht import PushTEnv
import wmplan.platform.envs.wall

@dataclass
class Config:
    task: str = "wall"
    """Task: wall or pusht (documentation)."""

def f(task):
    # a comment about "pusht" is not code
    if task == "pointmaze":
        return f"Push-T needs {task}"
    return task in ENV_NAMES
'''
    found = task_names_in(source, where="wmplan/x.py")
    assert sorted(f.split(": ", 1)[1] for f in found) == sorted([
        "ENV_NAMES", "ENV_NAMES", "import of wmplan.platform.envs.pusht", "import of wmplan.platform.envs.wall",
        "string 'wall'", "string 'pointmaze'", "string 'Push-T needs '",
    ])
    assert task_names_in("from wmplan.platform.envs import ENV_NAMES", where=_REGISTRATION) == []


def test_no_module_outside_envs_names_a_task() -> None:
    envs = WMPLAN / "platform" / "envs"
    files = [p for p in sorted(WMPLAN.rglob("*.py")) if envs not in p.parents]
    assert len(files) > 30  # the scan sees the package
    found = [f for p in files for f in task_names_in(p.read_text(), where=p.relative_to(WMPLAN.parent).as_posix())]
    assert found == [], "task knowledge outside wmplan/platform/envs/ (ask the task's Env instead):\n" + "\n".join(found)
