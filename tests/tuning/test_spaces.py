"""Search spaces of ``wmplan tune``: suggestions, overrides and config files."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import optuna
import pytest

from wmplan.platform.errors import ConfigError
from wmplan.platform.planners import PLANNERS, make_planner
from wmplan.platform.registry import planner_class, register_planner, unregister
from wmplan.tuning.spaces import (
    BUILTIN_SPACES,
    DEFAULT_SPACES,
    Param,
    default_space,
    describe,
    distributions,
    options_from_params,
    parse_space_overrides,
    space_from_config,
    suggest,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
HORIZON = 8


def sample(space: tuple[Param, ...], n: int = 50, seed: int = 0, sampler: optuna.samplers.BaseSampler | None = None) -> list[dict[str, Any]]:
    """Options of ``n`` trials drawn from ``space`` by a seeded in-memory study."""
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=seed))
    drawn: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        options = suggest(trial, space)
        assert options == options_from_params(trial.params, space)  # the params map back
        drawn.append(options)
        return float(len(drawn) % 7)

    study.optimize(objective, n_trials=n)
    return drawn


def assert_in_space(options: dict[str, Any], space: tuple[Param, ...]) -> None:
    assert set(options) == {p.name for p in space}
    for p in space:
        v = options[p.name]
        if p.kind == "categorical":
            assert v in p.choices, (p.name, v)
        elif p.fraction_of is not None:
            total = options[p.fraction_of]
            assert isinstance(v, int) and 1 <= v <= total, (p.name, v, total)
            assert max(1, math.floor(p.low * total + 0.5)) <= v <= math.floor(p.high * total + 0.5), (p.name, v, total)
        else:
            assert isinstance(v, int if p.kind == "int" else float), (p.name, v)
            assert (p.zero and v == 0) or p.low <= v <= p.high, (p.name, v)


def test_default_spaces_cover_every_planner() -> None:
    assert set(DEFAULT_SPACES) == set(PLANNERS)
    required = {
        "grasp": {"noise_scale", "sync_interval", "sync_steps", "sync_lr", "end", "rollout_states", "state_lr", "action_lr",
                  "goal_weight"},
        "cem": {"samples", "elites", "iterations", "init_std"},
        "gd": {"lr", "iterations", "action_noise", "init_std"},
        "latco": {"lr", "iterations", "multiplier_lr"},
        "mppi": {"temperature", "samples", "elites", "init_std"},
    }
    for planner, names in required.items():
        assert names <= {p.name for p in DEFAULT_SPACES[planner]}, planner
    assert "iterations" not in {p.name for p in DEFAULT_SPACES["grasp"]}


@pytest.mark.parametrize("planner", sorted(DEFAULT_SPACES))
def test_random_trials_give_valid_options_in_range(planner: str) -> None:
    space = DEFAULT_SPACES[planner]
    for options in sample(space):
        assert_in_space(options, space)
        planner_obj = make_planner(planner, horizon=HORIZON, **options)
        for name, value in options.items():
            assert getattr(planner_obj.options, name) == value


def test_grasp_zero_including_parameters_take_zero_and_nonzero_values() -> None:
    drawn = sample(DEFAULT_SPACES["grasp"])
    for name in ("noise_scale", "sync_interval"):
        values = [o[name] for o in drawn]
        assert any(v == 0 for v in values), name
        assert any(v > 0 for v in values), name
    noise = [o["noise_scale"] for o in drawn]
    assert 0.1 < sum(v == 0 for v in noise) / len(noise) < 0.5  # the zero bucket is about a quarter


def test_zero_bucket_maps_raw_values_deterministically() -> None:
    p = Param(name="noise_scale", kind="float", low=1e-3, high=0.1, log=True, zero=True)
    dist = p.distribution()
    assert dist.log and dist.low < 1e-3 and dist.high == 0.1
    # a quarter of the raw log range is the zero bucket
    assert math.log(1e-3 / dist.low) / math.log(0.1 / dist.low) == pytest.approx(0.25)
    assert p.value(dist.low) == 0.0 and p.value(9.99e-4) == 0.0
    assert p.value(1e-3) == 1e-3 and p.value(0.05) == 0.05
    q = Param(name="sync_interval", kind="int", low=10, high=200, log=True, zero=True)
    assert q.value(3.2) == 0 and q.value(10.4) == 10 and q.value(199.7) == 200


@pytest.mark.parametrize("planner", ["cem", "mppi"])
def test_elites_never_exceed_samples(planner: str) -> None:
    for options in sample(DEFAULT_SPACES[planner], n=50, seed=1):
        assert 1 <= options["elites"] <= options["samples"]
    # absolute elites (not a fraction) are clamped to the trial's samples
    space = parse_space_overrides(planner, ["samples=8:64:int", "elites=16:128"])
    drawn = sample(space, n=50)
    assert all(1 <= o["elites"] <= o["samples"] for o in drawn)
    assert any(o["elites"] == o["samples"] for o in drawn)  # the clamp did act
    for options in drawn:
        make_planner(planner, horizon=HORIZON, **options)


def test_dropping_elites_or_samples_keeps_the_other_consistent() -> None:
    space = parse_space_overrides("cem", ["-samples"])
    assert next(p for p in space if p.name == "samples").choices == (300,)  # fixed at the default
    space = parse_space_overrides("cem", ["-elites", "samples=4:40:int"])
    for options in sample(space, n=30):
        assert options["elites"] == min(30, options["samples"])
        make_planner("cem", horizon=HORIZON, **options)


def test_same_seed_same_suggestions() -> None:
    for planner, space in DEFAULT_SPACES.items():
        a = sample(space, n=20, seed=3)
        assert a == sample(space, n=20, seed=3), planner
        assert a != sample(space, n=20, seed=4), planner


def test_tpe_samples_the_spaces_without_warnings() -> None:
    for planner, space in DEFAULT_SPACES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            drawn = sample(space, n=14, sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5, multivariate=True))
        for options in drawn:
            assert_in_space(options, space)
            make_planner(planner, horizon=HORIZON, **options)


def by_name(space: tuple[Param, ...]) -> dict[str, Param]:
    return {p.name: p for p in space}


def test_overrides_narrow_fix_drop_and_add() -> None:
    default = by_name(DEFAULT_SPACES["grasp"])
    space = parse_space_overrides(
        "grasp",
        ["noise_scale=0.001:0.1:log", "sync_interval=0,25,50,100", "state_lr=0.05", "-goal_weight", "+iterations=100:1000:int"],
    )
    params = by_name(space)
    assert params["noise_scale"] == Param(name="noise_scale", kind="float", low=0.001, high=0.1, log=True)
    assert params["sync_interval"].choices == (0, 25, 50, 100)
    assert params["state_lr"].fixed and params["state_lr"].choices == (0.05,)
    assert "goal_weight" not in params
    assert params["iterations"] == Param(name="iterations", kind="int", low=100, high=1000)
    assert params["action_lr"] == default["action_lr"]  # untouched
    assert [p.name for p in space][:3] == ["noise_scale", "sync_interval", "sync_steps"]  # order kept
    for options in sample(space, n=30):
        assert options["state_lr"] == 0.05 and "goal_weight" not in options
        assert 100 <= options["iterations"] <= 1000 and options["noise_scale"] >= 0.001
        make_planner("grasp", horizon=HORIZON, **options)


def test_overrides_widen_keep_zero_and_set_fractions() -> None:
    params = by_name(parse_space_overrides("grasp", ["noise_scale=1e-5:1:log:zero", "+sync_mode=gd,cem", "+sync_elites=0.05:0.5:frac"]))
    assert params["noise_scale"].zero and params["noise_scale"].high == 1.0
    assert params["sync_mode"].choices == ("gd", "cem")
    assert params["sync_elites"].fraction_of == "sync_samples"
    assert params["sync_samples"].choices == (64,)  # its total joins the space, fixed at the default
    for options in sample(tuple(params.values()), n=20):
        assert 1 <= options["sync_elites"] <= 64
        make_planner("grasp", horizon=HORIZON, **options)
    params = by_name(parse_space_overrides("cem", ["elites=0.05:0.2:frac", "samples=100,200"]))
    assert params["elites"].fraction_of == "samples" and params["elites"].log is False
    assert params["samples"].choices == (100, 200)


@pytest.mark.parametrize(
    ("planner", "item", "needle"),
    [
        ("grasp", "noise=0.1", "valid: action_lr"),
        ("grasp", "-goal_wieght", "did you mean 'goal_weight'"),
        ("grasp", "state_lr=0.1:0.01:log", "low 0.1 > high 0.01"),
        ("grasp", "state_lr=0:0.1:log", "low > 0"),
        ("grasp", "state_lr=0.01:0.1:log:zero", "state_lr must be > 0"),
        ("grasp", "state_lr=fast", "cannot be read"),
        ("grasp", "+iterations=a:b:int", "not an integer"),
        ("grasp", "+iterations=100:1000:float", "drop the 'float' kind"),
        ("grasp", "noise_scale=0.001:0.1:cubic", "unknown range flag 'cubic'"),
        ("grasp", "iterations=100:200", "+iterations"),
        ("grasp", "+noise_scale=0.1", "already searched"),
        ("grasp", "-sync_mode", "not in the search space"),
        ("grasp", "horizon=5", "set by the task"),
        ("grasp", "+sync_mode=0:1", "not a number"),
        ("grasp", "+sync_mode=gd,cma", "must be one of"),
        ("grasp", "sync_interval=0,-5", "sync_interval must be >= 0"),
        ("grasp", "noise_scale", "expected name=SPEC"),
        ("cem", "samples=1:100:int", "samples must be >= 2"),
        ("cem", "elites=0.1:0.2", ":frac"),
        ("cem", "elites=0:0.5:frac", "0 < low <= high <= 1"),
        ("gd", "action_noise=0.01:0.01:log:zero", "use choices"),
        ("mppi", "+min_std=0.01:3", "min_std must be <= max_std"),
    ],
)
def test_bad_overrides_name_the_item(planner: str, item: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_space_overrides(planner, [item])
    message = str(info.value)
    assert item in message or item.lstrip("+-").split("=")[0] in message
    assert needle in message, message


def test_unknown_planner_lists_the_valid_ones() -> None:
    for call in (lambda: parse_space_overrides("grsp", []), lambda: space_from_config("grsp", {})):
        with pytest.raises(ConfigError, match=r"did you mean 'grasp'.*valid: cem, gd, grasp, latco, mppi"):
            call()


def test_config_form_matches_cli_form() -> None:
    cli = parse_space_overrides(
        "grasp",
        ["noise_scale=0.001:0.1:log:zero", "sync_interval=0,25,50", "state_lr=0.05", "-goal_weight",
         "+iterations=100:1000:int", "+noise_decay=true,false"],
    )
    config = space_from_config(
        "grasp",
        {
            "noise_scale": {"low": 1e-3, "high": 0.1, "log": True, "zero": True},
            "sync_interval": {"choices": [0, 25, 50]},
            "state_lr": 0.05,
            "goal_weight": None,
            "iterations": {"low": 100, "high": 1000, "kind": "int"},
            "noise_decay": [True, False],
        },
    )
    assert cli == config
    assert parse_space_overrides("cem", ["elites=0.05:0.2:frac:log"]) == space_from_config(
        "cem", {"elites": {"low": 0.05, "high": 0.2, "log": True, "fraction": True}}
    ) == space_from_config("cem", {"elites": "0.05:0.2:frac:log"})


@pytest.mark.parametrize(
    ("mapping", "needle"),
    [
        ({"noise_scale": {"low": 0.1, "high": 0.001, "log": True}}, "low 0.1 > high 0.001"),
        ({"noise_scale": {"low": 0.001, "hi": 0.1}}, "unknown key 'hi'"),
        ({"state_lr": {"low": 0.0, "high": 0.1, "log": True}}, "low > 0"),
        ({"sync_interval": {"choices": [0, 2.5]}}, "must be an int"),
        ({"nois_scale": 0.1}, "did you mean 'noise_scale'"),
        ({"state_lr": {"low": "x", "high": 1}}, "not a number"),
    ],
)
def test_bad_config_raises_config_error(mapping: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        space_from_config("grasp", mapping)
    assert needle in str(info.value)
    assert next(iter(mapping)) in str(info.value)


def test_hand_built_spaces_are_checked() -> None:
    with pytest.raises(ConfigError, match="low 2 > high 1"):
        Param(name="iterations", kind="int", low=2, high=1)
    with pytest.raises(ConfigError, match="more than once"):
        distributions((Param(name="lr", kind="float", low=0.1, high=1.0),) * 2)
    with pytest.raises(ConfigError, match="fraction of 'samples', which the space lacks"):
        distributions((Param(name="elites", kind="float", low=0.1, high=0.2, fraction_of="samples"),))


def test_describe_lists_every_parameter() -> None:
    text = describe(parse_space_overrides("cem", ["init_std=0.5", "iterations=5,10,20"]))
    lines = text.splitlines()
    assert lines[0].split() == ["option", "kind", "values", "notes"]
    assert len(lines) == 1 + 4
    assert any(line.split()[:3] == ["init_std", "fixed", "0.5"] for line in lines)
    assert any("fraction of samples" in line and line.startswith("elites") for line in lines)
    assert any(line.startswith("iterations") and "5, 10, 20" in line for line in lines)
    grasp = describe(DEFAULT_SPACES["grasp"])
    assert "or 0" in next(line for line in grasp.splitlines() if line.startswith("noise_scale"))
    assert all(line == line.rstrip() for line in grasp.splitlines())


# -- plug-in planners: their own search space, or --space -------------------------------------------

PLUGIN = "tests.platform.plugin_fixtures:RandomShooting"
UNSEARCHABLE = "tests.platform.plugin_fixtures:Unsearchable"


def test_builtin_planners_keep_their_written_spaces() -> None:
    for name, space in BUILTIN_SPACES.items():
        assert DEFAULT_SPACES[name] is space and default_space(name) is space
    assert default_space("wmplan.platform.planners.grasp:GRASP") is BUILTIN_SPACES["grasp"]  # by class
    assert PLUGIN not in list(DEFAULT_SPACES)
    with pytest.raises(KeyError):
        DEFAULT_SPACES["gras"]


def test_a_plugin_planner_brings_its_search_space() -> None:
    space = default_space(PLUGIN)
    assert DEFAULT_SPACES[PLUGIN] == space and PLUGIN in DEFAULT_SPACES
    params = by_name(space)
    assert params["samples"] == Param(name="samples", kind="int", low=16, high=512, log=True)
    assert params["std"] == Param(name="std", kind="float", low=0.05, high=1.0, log=True)
    assert params["decay"].choices == (0.5, 0.9, 1.0)
    for options in sample(space, n=20):
        assert_in_space(options, space)
        planner = make_planner(PLUGIN, horizon=HORIZON, **options)
        assert planner.options.samples == options["samples"]
    # --space items go on top of the hook, with the grammar and checks of wmplan's own planners
    edited = by_name(parse_space_overrides(PLUGIN, ["std=0.1:0.5:log", "-decay", "+iterations=5:20:int"]))
    assert edited["std"].high == 0.5 and "decay" not in edited and edited["iterations"].kind == "int"
    with pytest.raises(ConfigError, match=r"std must be > 0"):
        parse_space_overrides(PLUGIN, ["std=0:0.5"])


def test_a_plugin_planner_without_a_space_needs_space_items() -> None:
    message = (
        f"planner '{UNSEARCHABLE}' has no search space: give one with --space NAME=SPEC or define "
        "Unsearchable.search_space"
    )
    for call in (lambda: default_space(UNSEARCHABLE), lambda: DEFAULT_SPACES[UNSEARCHABLE],
                 lambda: parse_space_overrides(UNSEARCHABLE, []), lambda: space_from_config(UNSEARCHABLE, {})):
        with pytest.raises(ConfigError) as info:
            call()
        assert str(info.value) == message
    assert UNSEARCHABLE not in DEFAULT_SPACES
    # with nothing to replace, name=SPEC adds
    space = parse_space_overrides(UNSEARCHABLE, ["samples=8:64:int", "std=0.1,0.3"])
    assert [p.name for p in space] == ["samples", "std"]
    assert space == space_from_config(UNSEARCHABLE, {"samples": "8:64:int", "std": [0.1, 0.3]})
    for options in sample(space, n=10):
        make_planner(UNSEARCHABLE, horizon=HORIZON, **options)
    with pytest.raises(ConfigError, match=r"unknown option 'sample' in search space item 'sample=8:64:int'"):
        parse_space_overrides(UNSEARCHABLE, ["sample=8:64:int"])


def test_a_malformed_search_space_hook_names_its_item() -> None:
    with pytest.raises(ConfigError, match=r"search space item 'std=1:0.1:log' in BadlySearchable.search_space for planner "
                                          r"'tests.platform.plugin_fixtures:BadlySearchable': low 1.0 > high 0.1"):
        default_space("tests.platform.plugin_fixtures:BadlySearchable")


def test_a_registered_plugin_planner_is_tuned_by_name() -> None:
    from tests.platform.plugin_fixtures import RandomShooting

    class Registered(RandomShooting):
        name = "registered_shooting"

    register_planner(Registered)
    try:
        assert "registered_shooting" in list(DEFAULT_SPACES)
        assert default_space("registered_shooting") == default_space(PLUGIN)
    finally:
        unregister("planner", "registered_shooting")
    assert set(DEFAULT_SPACES) == set(PLANNERS)


@pytest.mark.parametrize("planner", ["cem", "gd", "grasp", "latco", "mppi"])
def test_default_params_give_the_planners_defaults(planner):
    from wmplan.tuning.spaces import default_params

    space = DEFAULT_SPACES[planner]
    options = options_from_params(default_params(planner, space), space)
    defaults = {f.name: f.default for f in dataclasses.fields(planner_class(planner).Options)}
    assert options == {name: defaults[name] for name in options}
    if planner == "gd":  # an option fixed by the config keeps its fixed value; a narrowed range clamps the default
        space = parse_space_overrides("gd", ["lr=0.5", "init_std=0.01:0.1:log"])
        assert {k: options_from_params(default_params("gd", space), space)[k] for k in ("lr", "init_std")} == {"lr": 0.5, "init_std": 0.1}
