"""Names to things: built-in names, registered names and ``package.module:callable`` plug-ins, and
the message of every way a plug-in can be wrong."""

from __future__ import annotations

import pytest
import torch

from tests.platform.plugin_fixtures import RANDOM_SHOOTING, RandomShooting, point_mass, shifted_wall
from wmplan.platform import registry
from wmplan.platform.envs import ENV_NAMES
from wmplan.platform.envs.wall import WallEnv
from wmplan.platform.errors import ConfigError
from wmplan.platform.models import VisualModelConfig, VisualWorldModel, is_pixel_model, save_checkpoint
from wmplan.platform.planners import GRASP, PLANNERS, Planner, make_planner, planner_class
from wmplan.platform.world_model import (
    ObservationModel,
    PointMass,
    WorldModel,
    check_observation_model,
    is_observation_model,
)

FIXTURES = "tests.platform.plugin_fixtures"


# -- planners ---------------------------------------------------------------------------------------


def test_builtin_planners_by_name():
    assert registry.names("planner") == ("cem", "gd", "grasp", "latco", "mppi")
    assert sorted(PLANNERS) == list(registry.names("planner")) and len(PLANNERS) == 5
    assert planner_class("grasp") is GRASP is PLANNERS["grasp"]
    assert "grasp" in PLANNERS and "gras" not in PLANNERS and 3 not in PLANNERS
    with pytest.raises(KeyError):
        PLANNERS["gras"]
    with pytest.raises(ConfigError, match=r"unknown planner 'gras' \(did you mean 'grasp'\?\); valid: cem, gd, grasp, latco, mppi"):
        planner_class("gras")


def test_plugin_planner_by_spec_everywhere_a_name_goes():
    assert planner_class(RANDOM_SHOOTING) is RandomShooting
    assert PLANNERS[RANDOM_SHOOTING] is RandomShooting and RANDOM_SHOOTING in PLANNERS
    assert RANDOM_SHOOTING not in list(PLANNERS)  # iterating lists names, not every importable spec
    planner = make_planner(RANDOM_SHOOTING, horizon=3, samples=16)
    assert isinstance(planner, RandomShooting) and planner.options.samples == 16
    # wmplan's own planner named by its spec is the same class
    assert planner_class("wmplan.platform.planners.grasp:GRASP") is GRASP
    with pytest.raises(ConfigError, match=rf"unknown option 'sample' for planner '{RANDOM_SHOOTING}' \(did you mean 'samples'\?\)"):
        make_planner(RANDOM_SHOOTING, sample=3)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("tests.platform.no_such_module:Planner", r"planner cannot import module 'tests.platform.no_such_module' of .*installed"),
        (f"{FIXTURES}:RandomShootin", r"has no attribute 'RandomShootin' \(did you mean 'RandomShooting'\?\)"),
        (f"{FIXTURES}:RandomShooting.nothing", r"'tests.platform.plugin_fixtures.RandomShooting' has no attribute 'nothing'"),
        (f"{FIXTURES}:NOT_A_PLANNER", r"is an int, not a subclass of wmplan.platform.planners.Planner"),
        (f"{FIXTURES}:a_function", r"is the function 'a_function', not a subclass of wmplan.platform.planners.Planner"),
        (f"{FIXTURES}:PointMass", r"is the class PointMass, not a subclass"),
        (f"{FIXTURES}:WithoutOptions", r"needs a class attribute Options: a frozen dataclass deriving from .*PlannerOptions"),
        (f"{FIXTURES}:WithoutOptimize", r"is abstract: it does not implement _optimize"),
    ],
)
def test_wrong_planner_specs_name_the_spec_and_the_fault(spec, needle):
    for call in (lambda: planner_class(spec), lambda: make_planner(spec, horizon=2), lambda: spec in PLANNERS):
        with pytest.raises(ConfigError, match=needle) as info:
            call()
        assert repr(spec) in str(info.value) or spec.partition(":")[0] in str(info.value)


def test_a_malformed_spec_is_an_unknown_name():
    with pytest.raises(ConfigError, match="unknown planner 'pkg.mod:'"):
        planner_class("pkg.mod:")
    assert not registry.is_plugin_spec("pkg/mod:X") and registry.is_plugin_spec("pkg.mod:X.make")


def test_plugin_imports_are_cached(monkeypatch):
    calls = []
    real = registry.importlib.import_module
    monkeypatch.setattr(registry.importlib, "import_module", lambda name: calls.append(name) or real(name))
    spec = f"{FIXTURES}:Unsearchable"
    for _ in range(3):
        planner_class(spec)
        registry.load_model(f"{FIXTURES}:point_mass", device="cpu")
    assert calls.count(FIXTURES) <= 2  # one import per spec, not per use


def test_register_planner_adds_a_name_and_undoes():
    @registry.register_planner
    class Shooter(RandomShooting):
        name = "shooter"

    try:
        assert planner_class("shooter") is Shooter and "shooter" in list(PLANNERS)
        assert registry.register_planner(Shooter) is Shooter  # again: a no-op
        with pytest.raises(ConfigError, match="planner name 'shooter' is taken by"):
            registry.register_planner(type("Other", (RandomShooting,), {"name": "shooter"}))
    finally:
        registry.unregister("planner", "shooter")
    assert "shooter" not in PLANNERS
    with pytest.raises(ConfigError, match="'grasp' is wmplan's own"):
        registry.unregister("planner", "grasp")
    with pytest.raises(ConfigError, match="needs its own class attribute name"):
        registry.register_planner(type("Nameless", (Planner,), {"Options": RandomShooting.Options, "_optimize": RandomShooting._optimize}))
    with pytest.raises(ConfigError, match="not a subclass"):
        registry.register_planner(PointMass)  # type: ignore[type-var]
    with pytest.raises(ConfigError, match="a planner name is a word"):
        registry.register_planner(type("Colon", (RandomShooting,), {"name": "a:b"}))


# -- tasks ------------------------------------------------------------------------------------------


def test_builtin_tasks_by_name():
    for name in ENV_NAMES:
        assert registry.make_task(name).name == name
    assert registry.make_task("wall", seed=3).reset().tolist() == registry.make_task("wall", seed=3).reset().tolist()
    valid = "linear, obstacles, pointmass, pointmaze, pusht, wall"
    with pytest.raises(ConfigError, match=rf"unknown task 'wal' \(did you mean 'wall'\?\); valid: {valid}"):
        registry.make_task("wal")
    with pytest.raises(ConfigError, match="task 'wall': .*'sed'"):
        registry.make_task("wall", sed=3)


def test_plugin_task_by_spec_and_by_registered_name():
    env = registry.make_task(f"{FIXTURES}:shifted_wall", door_y=25.0, seed=1)
    assert isinstance(env, WallEnv) and env.wall_x == 40.0 and env.door_y == 25.0
    registry.register_task("shifted", shifted_wall)
    try:
        assert registry.make_task("shifted").wall_x == 40.0
        assert "shifted" in registry.names("task")
        with pytest.raises(ConfigError, match="task name 'shifted' is taken"):
            registry.register_task("shifted", lambda: WallEnv())
    finally:
        registry.unregister("task", "shifted")
    with pytest.raises(ConfigError, match="task name 'wall' is taken"):
        registry.register_task("wall", shifted_wall)


@pytest.mark.parametrize(
    ("spec", "options", "needle"),
    [
        (f"{FIXTURES}:shifted_wall", {"door": 25.0},
         r"unknown option 'door' for task '.*:shifted_wall' \(did you mean 'door_y'\?\); valid: door_y, seed"),
        (f"{FIXTURES}:not_a_task", {}, r"task '.*:not_a_task' returned a dict, not an Env"),
        (f"{FIXTURES}:NOT_A_PLANNER", {}, r"task '.*:NOT_A_PLANNER' is an int, not a callable that returns an Env"),
        (f"{FIXTURES}:no_task", {}, r"task '.*:no_task': 'tests.platform.plugin_fixtures' has no attribute 'no_task'"),
        ("tests.nowhere:task", {}, r"task cannot import module 'tests.nowhere'"),
    ],
)
def test_wrong_task_specs_name_the_spec_and_the_fault(spec, options, needle):
    with pytest.raises(ConfigError, match=needle):
        registry.make_task(spec, **options)


# -- models -----------------------------------------------------------------------------------------


def test_plugin_model_by_spec_and_by_registered_name():
    model = registry.load_model(f"{FIXTURES}:point_mass", device="cpu", options={"dims": 3})
    assert isinstance(model, PointMass) and model.state_dim == 6 and isinstance(model, WorldModel)
    registry.register_model("pm", point_mass)
    try:
        assert registry.load_model("pm", device=torch.device("cpu")).state_dim == 4
        assert registry.names("model") == ("pm",)
    finally:
        registry.unregister("model", "pm")


def test_checkpoint_directories_load_as_before(tmp_path):
    config = VisualModelConfig(env="wall", state_dim=2, action_dim=10, frameskip=5, frame_size=16, channels=4,
                               latent_channels=2, hidden=8, depth=1, probe_hidden=8)
    save_checkpoint(VisualWorldModel(config, seed=0), tmp_path / "ckpt")
    model = registry.load_model(str(tmp_path / "ckpt"), device="cpu")
    assert isinstance(model, VisualWorldModel) and is_observation_model(model) and is_pixel_model(model)
    with pytest.raises(ConfigError, match=r"unknown option 'allow' for a checkpoint \(did you mean 'allow_code'\?\)"):
        registry.load_model(tmp_path / "ckpt", options={"allow": []})


@pytest.mark.parametrize(
    ("spec", "options", "needle"),
    [
        (f"{FIXTURES}:point_mass", {"dim": 3}, r"unknown option 'dim' for model '.*:point_mass' \(did you mean 'dims'\?\)"),
        (f"{FIXTURES}:point_mass", {"device": "cpu"}, r"give device as load_model's own argument"),
        (f"{FIXTURES}:model_without_device", {}, r"unknown option 'device' for model '.*:model_without_device'"),
        (f"{FIXTURES}:not_a_model", {},
         r"model '.*:not_a_model' returned a Linear, which is not a usable world model: Linear is not a world model: it lacks state_dim"),
        (f"{FIXTURES}:half_pixel_model", {}, r"not a usable world model: HalfPixelModel is not an observation model: it lacks frame_size, encode"),
        (f"{FIXTURES}:NOT_A_PLANNER", {}, r"model '.*:NOT_A_PLANNER' is an int, not a callable that returns a world model"),
        ("tests.nowhere:model", {}, r"model cannot import module 'tests.nowhere'"),
    ],
)
def test_wrong_model_specs_name_the_spec_and_the_fault(spec, options, needle):
    with pytest.raises(ConfigError, match=needle):
        registry.load_model(spec, device="cpu", options=options)


# -- the observation contract -----------------------------------------------------------------------


def test_observation_models_are_checked_not_guessed():
    config = VisualModelConfig(env="wall", state_dim=2, action_dim=10, frameskip=5, frame_size=16, channels=4,
                               latent_channels=2, hidden=8, depth=1, probe_hidden=8)
    visual = VisualWorldModel(config, seed=0)
    assert check_observation_model(visual) is visual and isinstance(visual, ObservationModel)
    assert not is_observation_model(PointMass()) and not isinstance(PointMass(), ObservationModel)

    class Odd(PointMass):
        observation = "sonar"
        frame_size = 8

        def encode(self, frames):
            return frames

    with pytest.raises(TypeError, match="Odd.observation must be one of 'state', 'pixels', got 'sonar'"):
        is_observation_model(Odd())

    class Zero(Odd):
        observation = "pixels"
        frame_size = 0

    with pytest.raises(TypeError, match="Zero.frame_size must be a positive int"):
        check_observation_model(Zero())
