"""MLflow tracking against a real SQLite store: runs, metrics, params, artifacts and plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from wmplan.platform.episode import EpisodeRecord, summarize
from wmplan.storage.mlflow import (
    EXPERIMENT_KIND,
    MAX_PARAM_VALUE,
    TAG_EXPERIMENT_KIND,
    TrackingError,
    artifact_root,
    flatten_params,
    get_or_create_experiment,
    runs_page_url,
    tracking_uri,
)
from wmplan.storage.parquet import read_table, write_records
from wmplan.storage.plots import (
    draw_trajectory,
    planner_offsets,
    residual_grid,
    success_time_vs_horizon_figure,
    success_vs_horizon_figure,
    success_vs_horizon_png,
)
from wmplan.storage.tracking import ExperimentTracker

mlflow = pytest.importorskip("mlflow")


# -- fixtures ------------------------------------------------------------------------------------------




def record(episode_id: int, *, planner: str, horizon: int, success: bool, residual: bool, time_s: float = 1.0) -> EpisodeRecord:
    rng = np.random.default_rng(episode_id + 10 * horizon)
    batch = int(episode_id >= 3)  # episodes 0-2 and 3-5 were planned as two batches (two planner calls)
    steps = 5 * horizon
    start = np.array([8.0 + episode_id, 10.0])
    end = np.array([25.0, 50.0 - episode_id])
    states = start + np.linspace(0.0, 1.0, steps + 1)[:, None] * (end - start)  # left of the wall: valid
    res = None
    if residual:
        res = (rng.random((4, horizon)) + 0.1).astype(np.float32)
        res[:, -1] = np.nan  # a padded step: NaN-aware means
    return EpisodeRecord(
        task="wall", planner=planner, horizon=horizon, episode_id=episode_id, seed=100 + episode_id,
        mode="open_loop", plan_seed=7 + batch, success=success, model_success=episode_id % 3 == 0,
        final_distance=0.5 if success else 9.0, model_final_distance=1.0, planning_time_s=time_s + batch,
        iterations=4, replans=1, failed=episode_id == 5, error="model produced NaN or inf" if episode_id == 5 else None,
        executed_states=states, actions=rng.normal(size=(steps, 2)), residual=res,
    )


GROUPS = {
    ("grasp", 3): [record(i, planner="grasp", horizon=3, success=i % 2 == 0, residual=True) for i in range(6)],
    ("cem", 5): [record(i, planner="cem", horizon=5, success=i < 2, residual=False, time_s=2.0) for i in range(4)],
}
def batch_seconds(records) -> float:
    """Planning seconds of the batches the records came from, each batch counted once."""
    return sum(t for _, t in {(r.plan_seed, r.planning_time_s) for r in records})


CONFIG = {"task": "wall", "planner": {"grasp": {"iterations": 300, "lr": 0.05}}, "horizons": [3, 5], "seed": 0}


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for a in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


def _png_array(client, run_id: str, path: str, dst: Path) -> np.ndarray:
    import matplotlib.image

    local = client.download_artifacts(run_id, path, str(dst))
    with open(local, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(local)


def _preview(client, run_id: str, dst: Path):
    import pandas as pd

    dst.mkdir(parents=True, exist_ok=True)
    return pd.read_json(client.download_artifacts(run_id, "preview/episodes.json", str(dst)), orient="split")


def _run_experiment(uri: str, results: Path, *, run_id: str = "run-1") -> ExperimentTracker:
    tracker = ExperimentTracker(tracking_uri=uri, experiment="test-exp")
    tracker.start_run(run_id=run_id, task="wall", code_version="0123abcd", checkpoint_sha256="f" * 64, config=CONFIG)
    for (planner, horizon), recs in GROUPS.items():
        write_records(results, run_id, recs[:3])
        write_records(results, run_id, recs[3:])
        goals = {r.episode_id: np.array([50.0, 50.0]) for r in recs}
        tracker.log_group(planner=planner, horizon=horizon, options={"iterations": 4, "lr": 0.1},
                          results_dir=results, goals=goals)
    return tracker


# -- a whole run ---------------------------------------------------------------------------------------


def test_run_with_two_groups(uri, tmp_path):
    results = tmp_path / "results"
    tracker = _run_experiment(uri, results)
    tracker.finish(status="FINISHED")
    client = mlflow.MlflowClient(tracking_uri=uri)

    runs = client.search_runs([tracker.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == tracker.parent_run_id]
    assert len(runs) == 3 and len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.run_id == tracker.parent_run_id and parent.info.run_name == "run-1"
    assert parent.info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in children)
    assert parent.data.tags["wmplan.run_id"] == "run-1"
    assert parent.data.tags["wmplan.code_version"] == "0123abcd"
    assert parent.data.tags["wmplan.checkpoint_sha256"] == "f" * 64
    assert parent.data.params["planner.grasp.iterations"] == "300"
    assert parent.data.params["planner.grasp.lr"] == "0.05"
    assert parent.data.params["horizons"] == "[3,5]"

    for child in children:
        key = (child.data.tags["wmplan.planner"], int(child.data.tags["wmplan.horizon"]))
        s = summarize(GROUPS[key])
        m = child.data.metrics
        assert child.info.run_name == f"{key[0]}-h{key[1]}"
        assert child.data.params["iterations"] == "4" and child.data.params["horizon"] == str(key[1])
        assert m["success_rate"] == pytest.approx(s["success_rate"])
        assert m["success_ci_low"] == pytest.approx(s["success_low"])
        assert m["success_ci_high"] == pytest.approx(s["success_high"])
        assert m["model_success_rate"] == pytest.approx(s["model_success_rate"])
        assert m["median_success_time_s"] == pytest.approx(s["median_planning_time_s"])
        assert m["mean_planning_time_s"] == pytest.approx(np.mean([r.planning_time_s for r in GROUPS[key]]))
        assert m["episodes"] == s["count"] and m["failures"] == s["failures"]
        assert m["episodes_per_s"] == pytest.approx(s["count"] / batch_seconds(GROUPS[key]))
        arts = _artifacts(client, child.info.run_id)
        assert {"preview/episodes.json", "preview/episodes.html", "plots/trajectories.png"} <= set(arts)
        assert ("plots/residual_heatmap.png" in arts) == (key[0] == "grasp")  # only a lifted planner has residuals

    everything = [r for recs in GROUPS.values() for r in recs]
    overall = summarize(everything)
    assert parent.data.metrics["success_rate"] == pytest.approx(overall["success_rate"])
    assert parent.data.metrics["episodes"] == len(everything)
    assert parent.data.metrics["episodes_per_s"] == pytest.approx(len(everything) / sum(batch_seconds(g) for g in GROUPS.values()))
    history = client.get_metric_history(parent.info.run_id, "grasp/success_rate")
    assert [(h.step, h.value) for h in history] == [(3, pytest.approx(summarize(GROUPS[("grasp", 3)])["success_rate"]))]

    arts = _artifacts(client, parent.info.run_id)
    for name in ("episodes", "residuals", "trajectories"):
        parts = sorted(p.name for p in (results / name).glob("part-*.parquet"))
        assert len(parts) == 4 if name != "residuals" else len(parts) == 2
        assert sorted(a.rsplit("/", 1)[1] for a in arts if a.startswith(f"results/{name}/")) == parts
    assert {"preview/episodes.json", "plots/success_vs_horizon.png", "plots/final_residual_vs_horizon.png"} <= set(arts)

    # artifacts land beside the store, not in the cwd's ./mlruns
    assert (tmp_path / "mlartifacts").is_dir() and any((tmp_path / "mlartifacts").rglob("part-*.parquet"))

    # the logged Parquet reads back as the results
    local = client.download_artifacts(parent.info.run_id, "results", str(tmp_path / "dl"))
    assert read_table(local).num_rows == len(everything)

    # the preview is a table of the first rows, not appended to on every group
    preview = _preview(client, parent.info.run_id, tmp_path / "pv")
    assert '"type": "table"' in parent.data.tags["mlflow.loggedArtifacts"]  # the UI shows it as a table
    assert len(preview) == len(everything) and set(preview["planner"]) == {"grasp", "cem"}

    # the plots are real pictures
    for run_id, path in [(parent.info.run_id, "plots/success_vs_horizon.png")] + [
        (c.info.run_id, p) for c in children for p in ("plots/trajectories.png", "plots/residual_heatmap.png")
        if p in _artifacts(client, c.info.run_id)
    ]:
        img = _png_array(client, run_id, path, tmp_path / "png")
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        colours = np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
        assert len(colours) > 20, path


def test_failed_run_keeps_its_metrics(uri, tmp_path):
    tracker = ExperimentTracker(tracking_uri=uri, experiment="test-exp")
    tracker.start_run(run_id="run-f", task="wall", code_version="dev", checkpoint_sha256=None, config={"a": 1})
    recs = GROUPS[("cem", 5)]
    write_records(tmp_path / "r", "run-f", recs)
    child = tracker.log_group(planner="cem", horizon=5, options={}, results_dir=tmp_path / "r")
    tracker.finish(status="FAILED")
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(tracker.parent_run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["success_rate"] == pytest.approx(summarize(recs)["success_rate"])
    assert client.get_run(child).data.metrics["episodes"] == len(recs)
    assert "wmplan.checkpoint_sha256" not in parent.data.tags
    with pytest.raises(ValueError, match="status"):
        tracker.finish(status="DONE")  # type: ignore[arg-type]


def test_a_continued_run_reuses_its_mlflow_runs(uri, tmp_path):
    results = tmp_path / "results"
    first = _run_experiment(uri, results)
    first.finish(status="FAILED")
    again = ExperimentTracker(tracking_uri=uri, experiment="test-exp")
    assert again.start_run(run_id="run-1", task="wall", code_version="0123abcd", checkpoint_sha256=None, config=CONFIG) == first.parent_run_id
    assert again.child_run_ids == first.child_run_ids
    again.log_group(planner="cem", horizon=5, options={"iterations": 4, "lr": 0.1}, results_dir=results)
    again.finish(status="FINISHED")
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert len(client.search_runs([again.experiment_id])) == 3
    assert client.get_run(first.parent_run_id).info.status == "FINISHED"
    preview = _preview(client, first.parent_run_id, tmp_path / "pv")
    assert len(preview) == sum(len(r) for r in GROUPS.values())  # replaced, not appended
    with pytest.raises(TrackingError, match="seed"):
        ExperimentTracker(tracking_uri=uri, experiment="test-exp").start_run(
            run_id="run-1", task="wall", code_version="x", checkpoint_sha256=None, config={**CONFIG, "seed": 1})


# -- experiments and the store -------------------------------------------------------------------------


def test_experiment_created_twice_does_not_fail(uri):
    a = ExperimentTracker(tracking_uri=uri, experiment="twice")
    b = ExperimentTracker(tracking_uri=uri, experiment="twice")
    assert a.experiment_id == b.experiment_id

    # a process that lost the race: the experiment appeared between its look-up and its create
    client = mlflow.MlflowClient(tracking_uri=uri)
    real = client.get_experiment_by_name
    calls = []

    def stale_first(name):
        calls.append(name)
        return None if len(calls) == 1 else real(name)

    client.get_experiment_by_name = stale_first
    assert get_or_create_experiment(client, name="twice") == a.experiment_id
    assert len(calls) == 2

    client.delete_experiment(a.experiment_id)
    with pytest.raises(TrackingError, match="deleted"):
        ExperimentTracker(tracking_uri=uri, experiment="twice")


def test_experiments_are_marked_as_model_development(uri):
    """MLflow's experiment-kind tag says "runs with metrics" (custom_model_development), not a GenAI app."""
    assert (TAG_EXPERIMENT_KIND, EXPERIMENT_KIND) == ("mlflow.experimentKind", "custom_model_development")
    client = mlflow.MlflowClient(tracking_uri=uri)
    tracker = ExperimentTracker(tracking_uri=uri, experiment="kind")
    assert client.get_experiment(tracker.experiment_id).tags.get(TAG_EXPERIMENT_KIND) == EXPERIMENT_KIND

    # an experiment made before (or by plain MLflow) gets the tag; one marked otherwise keeps its mark
    old = client.create_experiment("made-elsewhere")
    assert TAG_EXPERIMENT_KIND not in client.get_experiment(old).tags
    assert get_or_create_experiment(client, name="made-elsewhere") == old
    assert client.get_experiment(old).tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND
    genai = client.create_experiment("an-agent", tags={TAG_EXPERIMENT_KIND: "genai_development"})
    assert get_or_create_experiment(client, name="an-agent") == genai
    assert client.get_experiment(genai).tags[TAG_EXPERIMENT_KIND] == "genai_development"

    assert runs_page_url(base_url="http://127.0.0.1:5000/", experiment_id="3") == (
        "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning")


def test_tracking_uri_and_artifact_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(tmp_path / "work")
    assert uri == f"sqlite:///{(tmp_path / 'work').resolve() / 'mlflow.db'}" and uri.startswith("sqlite:////")
    assert artifact_root(uri) == ((tmp_path / "work").resolve() / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(tmp_path) == "http://127.0.0.1:5000"
    assert artifact_root("http://127.0.0.1:5000") is None
    assert artifact_root("sqlite:///:memory:") is None


# -- params --------------------------------------------------------------------------------------------


def test_flattened_params_survive_long_values(uri):
    long_a, long_b = "x" * 9000 + "a", "x" * 9000 + "b"
    params = flatten_params({"a": {"b": {"c": 1}, "empty": {}}, "long": {"one": long_a, "two": long_b},
                             "lst": [1, "two", 3.5], "k" * 300: 1, "bad key!": True})
    assert params["a.b.c"] == "1" and params["a.empty"] == "{}" and params["lst"] == '[1,"two",3.5]'
    assert params["bad key_"] == "True"
    assert len(params["long.one"]) == MAX_PARAM_VALUE and params["long.one"] != params["long.two"]
    assert "9001 chars" in params["long.one"]
    assert all(len(k) <= 250 for k in params)
    with pytest.raises(ValueError, match="collide"):
        flatten_params({"a.b": 1, "a": {"b": 2}})

    many = {f"p{i}": i for i in range(250)}  # more than one log_batch of params
    tracker = ExperimentTracker(tracking_uri=uri, experiment="params")
    tracker.start_run(run_id="p", task="wall", code_version="dev", checkpoint_sha256=None, config={**many, "long": {"one": long_a}})
    logged = mlflow.MlflowClient(tracking_uri=uri).get_run(tracker.parent_run_id).data.params
    assert logged["long.one"] == params["long.one"] and logged["p249"] == "249" and len(logged) == 251


# -- drawing -------------------------------------------------------------------------------------------


def _centroid(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.mean(), rows.mean()])


def test_world_to_pixel_matches_the_renders():
    from wmplan.platform.envs import make_env

    env = make_env("wall")
    env.reset(state=np.array([12.0, 47.0]))
    img = env.render(256).astype(float)
    dot = img[..., 1] < 80  # the red dot's core: low green on a white floor (walls are black: all low)
    dot &= img[..., 0] > 150
    np.testing.assert_allclose(_centroid(dot), env.pixel_coords(np.array([12.0, 47.0]), size=256), atol=1.0)

    pytest.importorskip("pymunk")
    env = make_env("pusht")
    env.reset(state=np.array([100.0, 400.0, 300.0, 300.0, 0.3, 0.0, 0.0]))
    img = env.render(256).astype(int)
    agent = (img[..., 2] > 200) & (img[..., 0] < 90)  # the royal-blue agent (65, 105, 225)
    np.testing.assert_allclose(_centroid(agent), env.pixel_coords(np.array([100.0, 400.0]), size=256), atol=1.0)

    pytest.importorskip("mujoco")
    env = make_env("pointmaze")
    state = env.reset(seed=3)
    img = env.render(256).astype(int)
    ball = (img[..., 1] > 120) & (img[..., 0] < 110)  # d4rl's green particle on the blue-grey floor
    np.testing.assert_allclose(_centroid(ball), env.pixel_coords(state[:2], size=256), atol=1.0)


def test_draw_trajectory_puts_the_markers_at_the_states():
    from wmplan.platform.envs import make_env

    wall, pusht = make_env("wall"), make_env("pusht")
    white = np.full((256, 256, 3), 255, dtype=np.uint8)
    states = np.array([[10.0, 50.0], [20.0, 40.0], [30.0, 30.0]])
    goal = np.array([55.0, 8.0])
    out = draw_trajectory(white, env=wall, states=states, goal=goal)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    c, r = np.round(wall.pixel_coords(states[0], size=256)).astype(int)
    assert tuple(out[r, c]) == pytest.approx((0, 191, 0), abs=25)  # the green start marker
    c, r = np.round(wall.pixel_coords(goal, size=256)).astype(int)
    assert tuple(out[r, c]) == pytest.approx((255, 0, 255), abs=25)  # the magenta goal star
    assert tuple(out[5, 250]) == (255, 255, 255)  # far from everything: the image itself

    # Push-T: the block's path is drawn too, in its own colour
    out = draw_trajectory(np.full((128, 128, 3), 255, np.uint8), env=pusht,
                          states=np.array([[100.0, 100.0, 400.0, 400.0, 0, 0, 0], [120.0, 100.0, 300.0, 400.0, 0, 0, 0]]))
    c, r = np.round(pusht.pixel_coords(np.array([350.0, 400.0]), size=128)).astype(int)
    assert out[r, c, 0] > 200 and out[r, c, 2] < 100  # orange block path


def test_residual_grid_is_nan_aware():
    table = pa.table({
        "iteration": pa.array([0, 0, 0, 0, 1, 1], pa.int32()),
        "step": pa.array([0, 1, 0, 1, 0, 1], pa.int32()),
        "residual": pa.array([1.0, None, 3.0, None, 5.0, 7.0], pa.float32()),
    })
    grid = residual_grid(table)
    assert grid.shape == (2, 2)
    assert grid[0, 0] == 2.0 and math.isnan(grid[0, 1]) and grid[1, 0] == 5.0 and grid[1, 1] == 7.0


def test_success_curves_from_snapshots():
    import pyarrow as pa

    from wmplan.storage.plots import success_curves, success_vs_iterations_png
    from wmplan.storage.schemas import EPISODES

    base = dict(run_id="r", task="wall", horizon=5, mode="open_loop", seed=0, plan_seed=0, model_success=True,
                final_distance=1.0, model_final_distance=1.0, planning_time_s=1.0, iterations=40, replans=1,
                executed_steps=25, failed=False, error=None)
    rows = [
        {**base, "planner": "grasp", "episode_id": i, "success": i < 3,
         "snapshot_iterations": [10, 40], "success_by_iteration": [i < 1, i < 3]}
        for i in range(4)
    ] + [{**base, "planner": "cem", "episode_id": 0, "success": True, "snapshot_iterations": [], "success_by_iteration": []}]
    table = pa.Table.from_pylist(rows, schema=EPISODES)
    curves = success_curves(table)
    assert list(curves) == [("grasp", 5)]  # no snapshots, no curve
    iterations, rate, low, high = curves["grasp", 5]
    assert iterations == [10, 40] and rate == [0.25, 0.75] and low[1] < 0.75 < high[1]
    png = success_vs_iterations_png(table)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000



def _one_horizon_episodes(tmp_path: Path) -> tuple[list[EpisodeRecord], pa.Table]:
    """Three planners at one horizon: cem 2/4, gd 2/4 (the same rate), grasp 3/4; the records and their table."""
    wins = {"cem": 2, "gd": 2, "grasp": 3}
    records = [record(10 * k + i, planner=p, horizon=4, success=i < wins[p], residual=False, time_s=1.0 + k)
               for k, p in enumerate(wins) for i in range(4)]
    write_records(tmp_path / "one", "run-1", records)
    return records, read_table(tmp_path / "one", "episodes")


def test_planners_at_one_horizon_stand_side_by_side(tmp_path):
    """One bar per planner, apart and inside the horizon's slot, its height and error bar its success."""
    from matplotlib.container import BarContainer

    assert planner_offsets(planners=["a"]) == {"a": 0.0}
    offsets = planner_offsets(planners=["a", "b", "c"], slot=0.6)
    assert offsets == pytest.approx({"a": -0.2, "b": 0.0, "c": 0.2})

    records, episodes = _one_horizon_episodes(tmp_path)
    fig = success_vs_horizon_figure(episodes)
    ax = fig.axes[0]
    bars = {c.get_label(): c for c in ax.containers if isinstance(c, BarContainer)}
    assert sorted(bars) == ["cem", "gd", "grasp"]
    spans = sorted((b.patches[0].get_x(), b.patches[0].get_x() + b.patches[0].get_width()) for b in bars.values())
    assert all(len(b.patches) == 1 for b in bars.values())
    assert all(right <= nxt_left for (_, right), (nxt_left, _) in zip(spans, spans[1:])), spans  # no bar on another
    assert spans[0][0] >= -0.5 and spans[-1][1] <= 0.5  # all within the one horizon's slot
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4"]
    for planner, wins in {"cem": 2, "gd": 2, "grasp": 3}.items():
        s = summarize([r for r in records if r.planner == planner])
        bar = bars[planner].patches[0]
        assert bar.get_height() == pytest.approx(wins / 4)
        lo, hi = bars[planner].errorbar.lines[2][0].get_segments()[0][:, 1]  # the vertical error segment
        assert (lo, hi) == pytest.approx((s["success_low"], s["success_high"]))
    assert {t.get_text() for t in ax.texts} >= {"2/4", "3/4"}
    points = sorted(x for line in ax.get_lines() if line.get_marker() == "D" for x in line.get_xdata())
    assert points == pytest.approx(sorted((a + b) / 2 for a, b in spans))  # a rate of 0 would still show its point
    assert success_vs_horizon_png(episodes)[:8] == b"\x89PNG\r\n\x1a\n"

    # the time plot: each planner's point at its own x, near the tick
    ax = success_time_vs_horizon_figure(episodes).axes[0]
    xs = {line.get_label(): line.get_xdata()[0] for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert sorted(xs) == ["cem", "gd", "grasp"]
    assert len(set(np.round(list(xs.values()), 6))) == 3 and all(abs(x) < 0.5 for x in xs.values())

