"""wmplan bench sweep on a real local Ray, real Optuna journal storage and a real MLflow store."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from optuna.trial import TrialState

from tests.conftest import ROOT
from wmplan.cli import main
from wmplan.platform.episode import summarize_rows
from wmplan.platform.errors import ConfigError
from wmplan.storage.parquet import read_table
from wmplan.tuning.study import open_study
from wmplan.tuning.sweep import SweepConfig, load_sweep_config, run_sweep

SPACE = {"cem": ["iterations=1:3:int", "init_std=0.1:2:log"], "gd": ["iterations=2:6:int"]}
CELL = re.compile(r"(\d+\.\d)% \[(\d+\.\d), (\d+\.\d)\] / (-|\d+\.\d\d s) \((-|\d+\.\d\d s)\)")


def sweep_config(tmp_path, model, **changes) -> SweepConfig:
    ckpt, data = model
    base = dict(name="t", task="wall", model=str(ckpt), data=str(data), planners=["cem", "gd"], horizons=[2, 3],
                trials=2, tuning_episodes=4, batch_size=2, test_episodes=4, options={"cem": {"samples": 32}}, space=SPACE,
                output=str(tmp_path / "out"))
    return SweepConfig(**{**base, **changes})


def paper_table(markdown: str) -> dict[tuple[str, int], tuple[float, float, float, float, float]]:
    """The first table of sweep.md: (planner, H) -> (success %, low, high, median time to success s or NaN,
    median time of the whole budget s or NaN)."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| H |"))
    planners = [c.strip() for c in lines[start].strip("|").split("|")][1:]
    out = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        h, *cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(planners)
        for planner, cell in zip(planners, cells):
            rate, low, high, to_success, time = CELL.fullmatch(cell).groups()
            out[planner, int(h)] = (float(rate), float(low), float(high), *(math.nan if t == "-" else float(t[:-2]) for t in (to_success, time)))
    return out


def test_sweep_tables_studies_mlflow_and_resume(ray_cluster, tmp_path, tiny_wall_model, uri):
    config = sweep_config(tmp_path, tiny_wall_model)
    result = run_sweep(config)
    out = tmp_path / "out"
    assert result.device == "cpu" and (out / "sweep.md").read_text() == result.markdown

    # The paper's table: a row per horizon, a column per planner, summarize() of the stored episodes.
    table = paper_table(result.markdown)
    assert sorted(table) == [("cem", 2), ("cem", 3), ("gd", 2), ("gd", 3)]
    stored = {}
    for planner, h in table:
        rows = read_table(out / "heldout" / f"t-{planner}-h{h}").to_pylist()
        assert len(rows) == 4 and {(r["planner"], r["horizon"]) for r in rows} == {(planner, h)}
        s = stored[planner, h] = summarize_rows(rows)
        rate, low, high, to_success, time = table[planner, h]
        assert rate == pytest.approx(100 * s["success_rate"], abs=0.05)
        assert (low, high) == pytest.approx((100 * s["success_low"], 100 * s["success_high"]), abs=0.05)
        assert math.isnan(time) == math.isnan(s["median_planning_time_s"]) == math.isnan(to_success)
        if not math.isnan(time):
            assert time == pytest.approx(s["median_planning_time_s"], abs=0.005)
            assert to_success == pytest.approx(s["median_time_to_success_s"], abs=0.005) and to_success <= time + 0.005
    for h in (2, 3):  # every planner ran on the same held-out pairs
        seeds = [sorted(r["seed"] for r in read_table(out / "heldout" / f"t-{p}-h{h}").to_pylist()) for p in ("cem", "gd")]
        assert seeds[0] == seeds[1]

    # summary.parquet: one row per cell with the same numbers, the study's trials and best options.
    summary = pq.read_table(out / "summary.parquet").to_pylist()
    assert len(summary) == 4
    for row in summary:
        s = stored[row["planner"], row["horizon"]]
        assert row["count"] == 4 and row["successes"] == s["successes"] and row["device"] == "cpu"
        assert row["model_success_rate"] == pytest.approx(s["model_success_rate"])
        study = open_study(config.tune_config(row["planner"], row["horizon"]))
        finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
        assert len(finished) == row["trials"] == 2  # the same budget for every planner and horizon
        assert json.loads(row["options"]) == study.trials[row["best_trial"]].user_attrs["options"]
        if row["planner"] == "cem":  # a fixed option is not searched
            assert {t.user_attrs["options"]["samples"] for t in finished} == {32}
    assert "## In-model success beside real success" in result.markdown
    assert f"Model {config.model}, device cpu;" in result.markdown  # the checkpoint the cells planned with

    # MLflow: one parent run with the config, per-cell metrics at step H, the tables and the two plots.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("wmplan-sweeps").experiment_id])
    assert [r.info.run_id for r in runs] == [result.mlflow_run_id]
    run = runs[0]
    assert run.data.params["device"] == "cpu" and run.data.params["trials"] == "2"
    for planner in ("cem", "gd"):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"{planner}/success_rate")}
        assert history == pytest.approx({h: stored[planner, h]["success_rate"] for h in (2, 3)})
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"sweep.md", "summary.parquet", "plots/success_vs_horizon.png", "plots/success_time_vs_horizon.png"} <= artifacts

    # Running the same sweep again resumes: no trial, no episode is added.
    parts = sorted(p.name for p in out.glob("heldout/*/episodes/*.parquet"))
    again = run_sweep(config)
    for row in summary:
        study = open_study(config.tune_config(row["planner"], row["horizon"]))
        assert len(study.trials) == 2
    assert sorted(p.name for p in out.glob("heldout/*/episodes/*.parquet")) == parts
    assert paper_table(again.markdown) == table


def test_untuned_sweep_runs_the_fixed_options_on_the_pool(ray_cluster, tmp_path, tiny_wall_model, uri):
    config = sweep_config(tmp_path, tiny_wall_model, planners=["cem"], horizons=[2], trials=0, test_episodes=3,
                          options={"cem": {"samples": 32, "iterations": 2}}, space={}, tracking=False)
    result = run_sweep(config)
    rows = read_table(tmp_path / "out" / "heldout" / "t-cem-h2").to_pylist()
    assert len(rows) == 3 and {r["iterations"] for r in rows} == {2}  # the fixed options, not CEM's 30
    assert result.rows[0]["trials"] == 0 and json.loads(result.rows[0]["options"]) == {"iterations": 2, "samples": 32}
    assert result.mlflow_run_id is None and not (tmp_path / "out" / "studies.journal").exists()


def test_a_horizon_too_long_for_the_data_fails_before_any_study(tmp_path, monkeypatch):
    from wmplan.platform.data import DataConfig, generate_dataset

    monkeypatch.chdir(tmp_path)
    data = generate_dataset(DataConfig(env="pusht", episodes=4, steps=20, val_fraction=0.5), tmp_path / "pusht.parquet", workers=1)
    config = SweepConfig(name="p", task="pusht", data=str(data), horizons=[2, 8], output=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"horizon 8 needs validation trajectories of at least 40 env steps .* "
                                          r"'wmplan data --env pusht --steps 40"):
        run_sweep(config)
    assert not (tmp_path / "out").exists() and not (tmp_path / "checkpoints").exists()  # nothing trained or started


@pytest.mark.parametrize("args, message", [
    (["--set", "trails=2"], "unknown key 'trails' for sweep config (did you mean 'trials'?)"),
    (["--set", "options.grasp.noise_scal=0.1"], "unknown option 'noise_scal' for planner 'grasp' (did you mean 'noise_scale'?)"),
    (["--set", "planners=cem,gdd"], "unknown planner 'gdd' (did you mean 'gd'?)"),
])
def test_bench_sweep_rejects_bad_input_in_one_line(args, message, capsys):
    assert main(["bench", "sweep", "--config", str(ROOT / "benchmarks" / "sweep_wall.yaml"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_config_file_keys_are_checked(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("name: x\nhorizon: [5]\n")
    with pytest.raises(ConfigError, match=r"unknown key 'horizon' for sweep config \(did you mean 'horizons'\?\)"):
        load_sweep_config(path)
    path.write_text("planners: [cem, grasp]\noptions: {grasp: {iterations: 30}}\n")
    assert load_sweep_config(path, ["planners=cem"]).options == {}  # the options leave with their planner
    with pytest.raises(ConfigError, match=r"unknown planner 'grasp' in options \(not among planners\)"):
        load_sweep_config(path, ["planners=cem", "options.grasp.iterations=20"])
    config = load_sweep_config(None, ["horizons=40,50", "trials=0", "options.grasp.iterations=200"])
    assert config.horizons == [40, 50] and config.options == {"grasp": {"iterations": 200}}
    assert "+iterations=200" in config.space_items("grasp")  # fixed, outside GRASP's default space


@pytest.mark.integration  # a subprocess of the command, or a Ray cluster
def test_device_auto_takes_the_gpus_of_the_cluster_and_names_them(tmp_path):
    script = (
        "import ray\n"
        "from wmplan.jobs.cluster import actor_resources\n"
        "from wmplan.tuning.sweep import SweepConfig, _device_name\n"
        "ray.init(num_cpus=1, num_gpus=1, resources={'accelerator_type:H100': 1}, include_dashboard=False)\n"
        "config = SweepConfig(device='auto').experiment()\n"
        "print(_device_name(ray, actor_resources(ray, config)[1]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "cuda (H100)"


def test_the_cpu_sweep_configs_name_a_visual_model_that_the_sweep_trains_when_missing():
    """One command from a clean checkout: the configs ask for the 'auto' visual model, not a path
    that only exists after the README's commands, and the sweep, its studies and its held-out runs
    all resolve it to the same checkpoint and frame data."""
    from wmplan.platform.registry import task_class
    from wmplan.platform.workflow import default_data_config, default_train_config

    for task in ("wall", "pusht"):
        config = load_sweep_config(ROOT / "benchmarks" / f"sweep_{task}.yaml")
        assert (config.model, config.obs) == ("auto", "pixels")
        runs = [config.experiment(), config.experiment("grasp", 5), config.tune_config("cem", 10).experiment()]
        assert {(str(r.checkpoint), str(r.data_path), r.obs) for r in runs} == {
            (f"checkpoints/{task}-pixels", f"data/{task}-pixels.parquet", "pixels")}
        data, train = default_data_config(task, obs="pixels"), default_train_config(task, obs="pixels")
        recipe = task_class(task).pixel_recipe
        assert data.frames and data.episodes == recipe.trajectories and data.policy == recipe.policy
        if recipe.kind == "jepa":  # the JEPA preset's steps, the recipe's options
            assert (train.proprio, train.env_step_predictor, train.activation) == (
                recipe.proprio, recipe.env_step_predictor, recipe.activation)
        else:
            assert train.steps == recipe.predictor_steps
    recipe = task_class("pusht").pixel_recipe
    assert (recipe.trajectories, recipe.predictor_steps) == (1000, 12000)  # the README's Push-T commands
    with pytest.raises(ConfigError, match=r"option 'obs' must be one of \['state', 'pixels'\], got 'pixel'"):
        load_sweep_config(None, ["obs=pixel"])
