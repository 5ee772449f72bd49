"""wmplan bench horizon: equal-budget studies per planner and horizon on real Ray and Optuna, one report."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from tests.conftest import ROOT
from wmplan.cli import main
from wmplan.platform.planners import make_planner
from wmplan.storage.parquet import read_table
from wmplan.tuning.horizon import run_horizon
from wmplan.tuning.study import open_study
from wmplan.tuning.sweep import load_sweep_config


def write_config(path, **values):
    path.write_text(yaml.safe_dump(values))
    return path


def test_every_horizon_config_loads_and_scales_its_budget_with_the_horizon():
    paths = sorted((ROOT / "benchmarks" / "horizon").glob("*.yaml")) + [ROOT / "benchmarks" / "horizon_gpu.yaml"]
    references = sorted((ROOT / "benchmarks" / "horizon" / "reference").glob("*.yaml"))
    tasks = set()
    names = set()
    for path in paths + references:
        config = load_sweep_config(path)
        tasks.add(config.task)
        names.add(config.name)
        assert config.budget_per_step > 0 and config.snapshots >= 20
        for h in config.horizons:
            assert config.tune_config(config.planners[0], h).budget == config.budget_per_step * h
    assert {"linear", "pointmass", "obstacles", "wall", "pointmaze", "pusht"} <= tasks
    assert len(names) == len(paths) + len(references)  # one sweep name each: their studies never mix
    # the reference configs plan on the checkpoints benchmarks/reference.py trains, named in their headers
    assert {p.stem for p in references} == {"wall_door_state", "wall_door_pixels", "wall_door_exact", "pointmaze_state", "pusht_pixels"}
    for path in references:
        config = load_sweep_config(path)
        assert config.model_is_exact or (config.model.startswith("reference/checkpoints/")
                                         and f"--recipes {Path(config.model).name}" in path.read_text())
        assert config.proprio_weight == (1.0 if config.obs == "pixels" and config.task in ("wall", "pusht") else 0.0)


def test_a_typo_in_the_last_config_fails_before_any_sweep(tmp_path, capsys):
    good = write_config(tmp_path / "a.yaml", name="a", task="linear", output=str(tmp_path / "a"))
    bad = write_config(tmp_path / "b.yaml", name="b", task="linear", budget_per_stp=10)
    assert main(["bench", "horizon", str(good), str(bad), "--report", str(tmp_path / "r.md")]) == 2
    assert "budget_per_stp" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # nothing ran
    same = write_config(tmp_path / "c.yaml", name="a", task="pointmass")
    assert main(["bench", "horizon", str(good), str(same)]) == 2
    assert "share a sweep name" in capsys.readouterr().err


def test_bench_horizon_spends_equal_budgets_and_reports_time_to_success(ray_cluster, tmp_path):
    budget_per_step = 300
    common = dict(budget_per_step=budget_per_step, trials=2, tuning_episodes=3, test_episodes=3, chunk=3, snapshots=5, actors=1,
                  tracking=False)
    paths = [  # the second config is as small as a sweep gets: the report must hold both
        write_config(tmp_path / "linear.yaml", name="h-linear", task="linear", planners=["cem", "gd", "grasp"], horizons=[2, 4],
                     output=str(tmp_path / "linear"), options={"cem": {"samples": 40}}, space={"cem": ["samples=40"]}, **common),
        write_config(tmp_path / "pointmass.yaml", name="h-pointmass", task="pointmass", planners=["gd", "grasp"], horizons=[2],
                     output=str(tmp_path / "pointmass"), **common),
    ]
    report = run_horizon(paths, report=tmp_path / "report.md", say=lambda m: None)
    text = (tmp_path / "report.md").read_text()
    assert report.markdown == text and text.count("\n## h-") == 2
    for result in report.sweeps:
        assert (result.directory / "plots" / "success_vs_horizon.png").read_bytes()[:4] == b"\x89PNG"
        assert (result.directory / "plots" / "success_time_vs_horizon.png").exists()
        summary = {(r["planner"], r["horizon"]): r for r in pq.read_table(result.directory / "summary.parquet").to_pylist()}
        assert len(summary) == (6 if result.name == "h-linear" else 2)
        for (planner, h), row in summary.items():
            budget = budget_per_step * h
            assert row["budget"] == budget
            episodes = read_table(result.directory / "heldout" / f"{result.name}-{planner}-h{h}").to_pylist()
            assert len(episodes) == 3
            options = json.loads(row["options"])
            spent = make_planner(planner, horizon=h, **options).transitions()
            for e in episodes:  # every episode records its budget and what it spent, which fits it
                assert e["budget"] == budget and e["transitions"] == spent <= budget
                assert len(e["snapshot_seconds"]) == len(e["snapshot_iterations"]) == min(5, options["iterations"])
                if e["success"]:
                    assert 0 < e["time_to_success_s"] <= e["planning_time_s"]
                    assert 0 < e["transitions_to_success"] <= e["transitions"]
                else:
                    assert math.isnan(e["time_to_success_s"]) and e["transitions_to_success"] == -1
            if planner == "grasp":
                assert row["sync_ratio"] is not None
                if options["sync_interval"] > 0:
                    assert options["iterations"] % options["sync_interval"] == 0  # the run ends on a sync
            else:
                assert row["sync_ratio"] is None
        assert "| 2 | " in text and f"/ {budget_per_step * 2}" in text
        for planner in ("gd", "grasp"):  # every study tried the planner's defaults first, fitted to the budget
            study = open_study(load_sweep_config(paths[0] if "linear" in result.name else paths[1]).tune_config(planner, 2))
            first = study.trials[0]
            assert first.user_attrs["defaults"] is True
            defaults = dataclasses.asdict(make_planner(planner, horizon=2).options)
            assert all(first.user_attrs["options"][k] == defaults[k] for k in first.user_attrs["options"] if k != "iterations")


def test_report_cells_show_success_time_to_success_and_budget():
    """format_report's cells carry a summary row's numbers (rows made here, no Ray)."""
    horizon = 3
    from wmplan.tuning.horizon import format_report
    from wmplan.tuning.sweep import SweepResult

    config = load_sweep_config(None, ["task=linear", "planners=gd", f"horizons={horizon}", "budget_per_step=100", "name=x"])
    row = {"planner": "gd", "horizon": horizon, "success_rate": 0.5, "success_low": 0.1, "success_high": 0.9,
           "median_time_to_success_s": 0.25, "median_planning_time_s": 1.5, "median_transitions_to_success": 120.0,
           "budget": 100 * horizon}
    result = SweepResult(name="x", directory=ROOT / "nowhere", rows=[row], markdown="", device="cpu", mlflow_run_id=None)
    text = format_report([config], [result], relative_to=ROOT)
    assert f"| {horizon} | 50% [10%, 90%] |" in text
    assert f"| {horizon} | 0.25 (1.5) |" in text
    assert f"| {horizon} | 120 / {100 * horizon} |" in text


def test_a_sweep_warns_about_a_visual_model_whose_latent_has_no_geometry(tmp_path):
    from wmplan.platform.models import VisualModelConfig, VisualWorldModel, save_checkpoint
    from wmplan.tuning.sweep import geometry_warning

    ckpt = tmp_path / "untrained"
    save_checkpoint(VisualWorldModel(VisualModelConfig(env="wall", state_dim=2, action_dim=10, frame_size=16, channels=4), seed=0), ckpt)
    config = load_sweep_config(None, [f"model={ckpt}", "obs=pixels"])
    warning = geometry_warning(config)  # an untrained encoder: distances in its latent do not rank pairs as the world does
    assert warning is not None and "0.9" in warning and str(ckpt) in warning
    assert geometry_warning(load_sweep_config(None, ["task=linear"])) is None  # exact dynamics: nothing to gate
