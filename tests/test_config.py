"""One configuration core: the shared settings, the one --set grammar, the generated flags, and
``wmplan plan`` and ``wmplan run`` as one path with a local or a Ray executor."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from wmplan.cli import DemoConfig, build_parser
from wmplan.config import Settings, apply_overrides, load
from wmplan.jobs.experiment import ExperimentConfig, load_config
from wmplan.platform.errors import ConfigError
from wmplan.platform.options import option_docs
from wmplan.tuning.study import TuneConfig
from wmplan.tuning.sweep import SweepConfig, load_sweep_config

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "tests.platform.plugin_fixtures:RandomShooting"


# -- the grammar ---------------------------------------------------------------------------------------


def test_scalars_are_typed_by_their_fields():
    values = apply_overrides(ExperimentConfig, {}, ["episodes=7", "tracking=false", "task=pointmaze", "executor=local"])
    assert values == {"episodes": 7, "tracking": False, "task": "pointmaze", "executor": "local"}
    config = load(ExperimentConfig, None, ["seed=3", "batch_size=4"])
    assert (config.seed, config.batch_size, config.executor) == (3, 4, "ray")


def test_lists_are_comma_separated_and_typed():
    assert apply_overrides(ExperimentConfig, {}, ["horizons=5, 10"]) == {"horizons": [5, 10]}
    assert apply_overrides(SweepConfig, {}, ["planners=cem,grasp"])["planners"] == ["cem", "grasp"]
    with pytest.raises(ConfigError, match=r"experiment config: horizons must be comma-separated integers, got 'ten'"):
        apply_overrides(ExperimentConfig, {}, ["horizons=ten"])


def test_planner_options_are_set_by_path_and_typed_by_the_planners_options():
    config = load(ExperimentConfig, None, ["planners.grasp.iterations=30", "planners.cem.samples=64"])
    assert config.planners == {"cem": {"samples": 64}, "gd": {}, "grasp": {"iterations": 30}}  # the defaults stay
    sweep = load(SweepConfig, None, ["options.grasp.noise_scale=0.01", "space.grasp=-goal_weight", "space.grasp=sync_lr=0.5"])
    assert sweep.options == {"grasp": {"noise_scale": 0.01}}
    assert sweep.space == {"grasp": ["-goal_weight", "sync_lr=0.5"]}  # each item added
    with pytest.raises(ConfigError, match=r"option 'iterations' cannot be read from 'ten' \(expected int\)"):
        apply_overrides(ExperimentConfig, {}, ["planners.grasp.iterations=ten"])


def test_a_plugin_planner_name_with_dots_and_a_colon():
    config = load(ExperimentConfig, None, [f"planners={PLUGIN},grasp", f"planners.{PLUGIN}.samples=64",
                                           f"planners.{PLUGIN}.std=0.25"])
    assert config.planners == {PLUGIN: {"samples": 64, "std": 0.25}, "grasp": {}}
    sweep = load(SweepConfig, None, [f"planners={PLUGIN}", f"options.{PLUGIN}.iterations=3", f"space.{PLUGIN}=-decay"])
    assert sweep.options == {PLUGIN: {"iterations": 3}} and sweep.space == {PLUGIN: ["-decay"]}
    with pytest.raises(ConfigError, match=r"unknown option 'sample' for planner '.*RandomShooting' \(did you mean 'samples'\?\)"):
        apply_overrides(ExperimentConfig, {}, [f"planners.{PLUGIN}.sample=3"])


def test_setting_the_planners_keeps_their_options_and_drops_the_others_everywhere():
    config = load(ExperimentConfig, None, ["planners.grasp.iterations=30", "planners=grasp,mppi"])
    assert config.planners == {"grasp": {"iterations": 30}, "mppi": {}}
    values = {"planners": ["cem", "grasp"], "options": {"grasp": {"iterations": 30}}, "space": {"grasp": ["-goal_weight"]}}
    assert apply_overrides(SweepConfig, values, ["planners=cem"]) == {"planners": ["cem"], "options": {}, "space": {}}
    with pytest.raises(ConfigError, match=r"unknown planner 'grasp' in options \(not among planners\)"):
        load(SweepConfig, None, ["planners=cem", "options.grasp.iterations=20"])


@pytest.mark.parametrize("cls, item, message", [
    (ExperimentConfig, "tsk=wall", "unknown key 'tsk' for experiment config (did you mean 'task'?)"),
    (SweepConfig, "trails=2", "unknown key 'trails' for sweep config (did you mean 'trials'?)"),
    (TuneConfig, "planer=cem", "unknown key 'planer' for study config (did you mean 'planner'?)"),
    (DemoConfig, "grasp.iterations=3", "unknown key 'grasp' for demo config (by planner: planners.PLANNER.OPTION=VALUE)"),
    (SweepConfig, "grasp.iterations=3", "(by planner: options.PLANNER.OPTION=VALUE, space.PLANNER=ITEM)"),
    (ExperimentConfig, "planners.grasp.noise_scal=0.1", "unknown option 'noise_scal' for planner 'grasp' (did you mean 'noise_scale'?)"),
    (ExperimentConfig, "planners.gras.iterations=3", "unknown planner 'gras' (did you mean 'grasp'?)"),
    (ExperimentConfig, "planners.grasp=3", "planner options are set as planners.PLANNER.OPTION=VALUE"),
    (ExperimentConfig, "episodes.x=3", "'episodes' has no parts to set"),
    (ExperimentConfig, "episodes", "--set expects KEY=VALUE, got 'episodes'"),
])
def test_unknown_keys_and_bad_items_name_the_problem(cls, item, message):
    with pytest.raises(ConfigError) as raised:
        apply_overrides(cls, {}, [item])
    assert message in str(raised.value)


def test_one_item_per_setting_where_items_hold_commas():
    config = load(TuneConfig, None, ["space=samples=8,16", "planner=cem", "space=-init_std"])
    assert config.space == ("samples=8,16", "-init_std")


def test_earlier_key_names_still_read():
    assert load(TuneConfig, None, ["chunk=3"]).batch_size == 3
    assert load_sweep_config(ROOT / "benchmarks" / "sweep_pusht_paper.yaml").batch_size == 50  # chunk: 50 in the file


# -- the configs that exist ----------------------------------------------------------------------------


def test_the_example_and_benchmark_configs_load():
    wall = load_config(ROOT / "examples" / "wall.yaml")
    assert (wall.name, wall.horizons, wall.episodes, wall.batch_size) == ("wall-horizons", [5, 10], 100, 25)
    assert wall.planners["grasp"] == {"noise_scale": 0.005, "sync_interval": 50}
    for path in sorted((ROOT / "benchmarks").glob("sweep_*.yaml")):
        config = load_sweep_config(path)
        assert config.batch_size == config.tune_config(config.planners[0], config.horizons[0]).batch_size


def test_the_run_json_of_an_earlier_run_still_loads():
    """run.json as runs wrote it before the configuration core (``--resume`` reads it back)."""
    from wmplan.platform.options import build_options

    earlier = {"name": "wmplan", "task": "wall", "model": "auto", "obs": "state", "encoder": "", "data": "",
               "planners": {"grasp": {"iterations": 40}}, "horizons": [2], "episodes": 4, "mode": "open_loop",
               "replan_every": 1, "seed": 0, "actors": 2, "batch_size": 2, "device": "auto", "output": "runs",
               "address": "", "max_attempts": 3, "snapshots": 8, "tracking": True}
    config = build_options(ExperimentConfig, earlier, owner="run", item="key")
    assert {k: v for k, v in config.to_dict().items() if k in earlier} == earlier and config.executor == "ray"


def test_the_shared_settings_are_one_dataclass_composed_into_each_config():
    shared = {f.name for f in dataclasses.fields(Settings)}
    assert {"task", "model", "obs", "data", "device", "actors", "batch_size", "output", "tracking", "seed"} <= shared
    for cls in (ExperimentConfig, TuneConfig, SweepConfig):
        assert issubclass(cls, Settings)
    sweep = load(SweepConfig, None, ["task=pointmaze", "actors=3", "device=cpu", "batch_size=4", "address=10.0.0.5:6379",
                                     "obs=pixels", "encoder=a.b:c", "seed=5"])
    derived = [sweep.tune_config("grasp", 5), sweep.tune_config("grasp", 5).experiment(), sweep.experiment("gd", 5)]
    for config in derived:
        assert (config.task, config.actors, config.device, config.batch_size, config.address, config.obs, config.encoder) == (
            "pointmaze", 3, "cpu", 4, "10.0.0.5:6379", "pixels", "a.b:c")
    assert derived[2].seed == 5 + 1_000_003  # the held-out pairs


# -- the generated flags -------------------------------------------------------------------------------


def _help(*command: str) -> str:
    parser = build_parser(command[0])
    sub = parser._subparsers._group_actions[0].choices[command[0]]  # noqa: SLF001 - argparse keeps them there
    for name in command[1:]:
        sub = sub._subparsers._group_actions[0].choices[name]  # noqa: SLF001
    return " ".join(sub.format_help().split())


@pytest.mark.parametrize("command, cls", [
    (("run",), ExperimentConfig), (("plan",), ExperimentConfig), (("tune",), TuneConfig),
    (("bench", "sweep"), SweepConfig), (("demo",), DemoConfig),
])
def test_every_field_has_a_flag_with_its_default_and_docstring(command, cls):
    text = _help(*command)
    docs = option_docs(cls)
    for f in dataclasses.fields(cls):
        flag = f"--{f.name.replace('_', '-')}"
        assert flag in text, f"{flag} missing from wmplan {' '.join(command)} --help"
        doc = " ".join(docs[f.name].split())
        assert doc[:40] in text, f"the docstring of {f.name} is not the help of {flag}"
        after = text[text.index(doc[:40]):]
        assert re.search(r"\(default: [^)]*\)", after[: len(doc) + 80]), f"{flag} shows no default"


def test_a_commands_own_defaults_and_aliases_are_in_its_help():
    plan = _help("plan")
    assert "--executor {ray,local}" in plan and "--env TASK" in plan and "--planner PLANNERS" in plan
    assert re.search(r"in this process by the same actor class.*\(default: local\)", plan)
    assert "(default: cem,gd,grasp)" in plan and "(default: wall)" in plan
    assert "--chunk" in _help("tune") and "(default: studies)" in _help("tune")


def test_flags_a_file_and_set_build_one_config_in_that_order(tmp_path):
    from wmplan.config import config_from_args

    path = tmp_path / "exp.yaml"
    path.write_text("episodes: 9\nhorizons: [3]\nplanners: {grasp: {iterations: 7}}\n")
    args = build_parser("run").parse_args(["run", str(path), "--episodes", "11", "--planner", "grasp,cem",
                                            "--no-tracking", "--set", "planners.cem.samples=32", "--set", "episodes=12"])
    config = config_from_args(ExperimentConfig, args, args.config)
    assert (config.episodes, config.horizons, config.tracking) == (12, [3], False)
    assert config.planners == {"grasp": {"iterations": 7}, "cem": {"samples": 32}}
    args = build_parser("plan").parse_args(["plan", "--env", "pointmaze", "--horizon", "2,4"])
    config = config_from_args(ExperimentConfig, args, defaults={"executor": "local", "tracking": False})
    assert (config.task, config.horizons, config.executor, config.tracking) == ("pointmaze", [2, 4], "local", False)
    args = build_parser("tune").parse_args(["tune", "--task", "wall", "--planner", "cem", "--horizon", "3", "--trials", "4",
                                             "--chunk", "5", "--space", "samples=8,16", "--space=-init_std", "--time-objective"])
    tune = config_from_args(TuneConfig, args)
    assert (tune.planner, tune.horizon, tune.trials, tune.batch_size, tune.space, tune.time_objective) == (
        "cem", 3, 4, 5, ("samples=8,16", "-init_std"), True)


# -- plan and run: one path, two executors -------------------------------------------------------------


TIMES = ("planning_time_s", "run_id", "snapshot_seconds", "time_to_success_s")


def _rows(directory: Path) -> list[dict]:
    from wmplan.storage.parquet import read_table

    rows = [{k: v for k, v in r.items() if k not in TIMES} for r in read_table(directory).to_pylist()]
    return sorted(rows, key=lambda r: (r["planner"], r["horizon"], r["episode_id"]))


def test_plan_and_run_give_the_same_records_in_process_and_on_ray(ray_cluster, tmp_path, tiny_wall_model, monkeypatch):
    from wmplan.jobs.runner import run_experiment
    from wmplan.storage.parquet import read_table

    monkeypatch.chdir(tmp_path)  # nothing lands in the checkout
    ckpt, data = tiny_wall_model
    common = [f"model={ckpt}", f"data={data}", f"output={tmp_path / 'runs'}", "horizons=2", "episodes=5", "batch_size=2",
              "planners=grasp,cem", "planners.grasp.iterations=12", "planners.cem.iterations=2", "planners.cem.samples=32",
              "tracking=false", "seed=3", "device=cpu"]
    local = run_experiment(load_config(None, [*common, "executor=local"]), run_id="local", say=lambda m: None)
    on_ray = run_experiment(load_config(None, [*common, "executor=ray"]), run_id="ray", say=lambda m: None)
    assert local.planned == on_ray.planned == 10 and local.failed_batches == on_ray.failed_batches == 0
    local_rows, ray_rows = _rows(local.directory), _rows(on_ray.directory)
    assert len(local_rows) == 10 and local_rows == ray_rows
    for table in ("trajectories", "residuals"):
        keys = ("planner", "horizon", "episode_id", "step", "iteration")
        rows = [sorted(([r[k] for k in keys if k in r], r) for r in read_table(d, table).to_pylist())
                for d in (local.directory, on_ray.directory)]
        assert [r for _, r in rows[0]] == [{**r, "run_id": "local"} for _, r in rows[1]], table
    meta = json.loads((local.directory / "run.json").read_text())
    assert meta["config"]["executor"] == "local"


def test_wmplan_plan_is_run_with_the_local_executor(tmp_path, tiny_wall_model, monkeypatch, capsys):
    from wmplan.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    ckpt, data = tiny_wall_model
    args = ["--model", str(ckpt), "--data", str(data), "--horizon", "2", "--episodes", "3", "--planner", "gd",
            "--set", "planners.gd.iterations=5", "--output", str(tmp_path / "runs"), "--run-id", "p", "--seed", "1"]
    assert main(["plan", *args]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\| gd \| 2 \| 3 \|", out) and "run p: 3 episodes planned" in out
    config = json.loads((tmp_path / "runs" / "p" / "run.json").read_text())["config"]
    assert (config["executor"], config["tracking"]) == ("local", False)
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow record unless asked
    assert main(["run", *args[:-4], "--run-id", "r", "--seed", "1", "--executor", "local", "--no-tracking"]) == 0
    assert _rows(tmp_path / "runs" / "p") == _rows(tmp_path / "runs" / "r")


# -- equal compute and goal modes ------------------------------------------------------------------------


def test_a_budget_fits_every_planners_iterations_and_snapshots_follow_them():
    from wmplan.platform.planners import make_planner

    config = load(ExperimentConfig, None, ["budget=6000", "horizons=5,10", "planners=cem,gd,grasp", "snapshots=20"])
    for planner in config.planners:
        for h in config.horizons:
            options = config.planner_options(planner, h)
            spent = make_planner(planner, horizon=h, **options).transitions()
            more = make_planner(planner, horizon=h, **{**options, "iterations": options["iterations"] + 1}).transitions()
            assert spent <= 6000 < more or planner == "grasp"  # the most iterations that fit
            snaps = config.snapshot_iterations(planner, h)
            assert snaps[-1] == options["iterations"] and len(snaps) == min(20, options["iterations"])
    gd5, gd10 = (config.planner_options("gd", h)["iterations"] for h in (5, 10))
    assert (gd5, gd10) == (600, 300)  # 2 H transitions per step: a longer horizon gets fewer steps
    with pytest.raises(ConfigError, match="too small"):
        load(ExperimentConfig, None, ["budget=5", "planners=gd"])
    assert load(ExperimentConfig, None, ["planners=gd"]).planner_options("gd", 5) == {}  # no budget: untouched


def test_goal_mode_is_one_of_the_tasks_and_sweeps_scale_the_budget_with_the_horizon():
    assert load(ExperimentConfig, None, ["goal_mode=replay"]).goal_mode_used == "replay"
    assert load(ExperimentConfig, None, []).goal_mode_used == "random"  # wall's default
    with pytest.raises(ConfigError, match=r"unknown goal mode 'replya' for task 'wall' \(did you mean 'replay'\?\)"):
        load(ExperimentConfig, None, ["goal_mode=replya"])
    sweep = load_sweep_config(None, ["budget_per_step=500", "horizons=5,10", "planners=gd", "trials=2"])
    assert [sweep.tune_config("gd", h).budget for h in (5, 10)] == [2500, 5000]
    assert sweep.experiment("gd", 10).budget == 5000 and sweep.experiment("gd", 10).snapshots == 20
