"""Experiment runs on a real local Ray: every episode once, actors killed, drivers killed and resumed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from wmplan.jobs.experiment import load_config
from wmplan.jobs.runner import run_experiment
from wmplan.platform.errors import ConfigError
from wmplan.storage.parquet import read_table

FAST = ["planners.grasp.iterations=40", "planners.gd.iterations=20", "planners.cem.iterations=2",
        "planners.cem.samples=32", "planners.cem.elites=4"]


@pytest.fixture(autouse=True)
def mlflow_store(tmp_path, monkeypatch):
    """Every run records into a fresh SQLite store of its own, never the working directory's."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def config_for(tmp_path, model, *extra):
    ckpt, data = model
    return load_config(None, [f"model={ckpt}", f"data={data}", f"output={tmp_path}", "horizons=2", "actors=2", *FAST, *extra])


def assert_each_episode_once(directory, planners, horizons, episodes):
    rows = read_table(directory).to_pylist()
    keys = [(r["planner"], r["horizon"], r["episode_id"]) for r in rows]
    assert len(keys) == len(set(keys)), "an episode was stored twice"
    assert set(keys) == {(p, h, e) for p in planners for h in horizons for e in range(episodes)}
    return rows


def test_two_actors_plan_every_episode_once(ray_cluster, tmp_path, tiny_wall_model, mlflow_store):
    config = config_for(tmp_path, tiny_wall_model, "episodes=12", "batch_size=4")
    result = run_experiment(config, run_id="two-actors", say=lambda m: None)
    rows = assert_each_episode_once(result.directory, ["cem", "gd", "grasp"], [2], 12)
    assert result.planned == 36 and result.failed_batches == 0
    assert all(not r["failed"] and r["executed_steps"] == 10 for r in rows)
    meta = json.loads((result.directory / "run.json").read_text())
    assert meta["config"]["episodes"] == 12 and meta["checkpoint_sha256"] and meta["code_version"]
    training = meta["model_training"]  # what the model cost to build, from the checkpoint
    assert training["kind"] == "state_mlp" and training["training_seconds"] > 0 and training["rounds"] == 0
    assert result.summaries["grasp", 2]["count"] == 12
    assert len(read_table(result.directory, "residuals")) == 12 * 40 * 2  # GRASP's residual trace, long form

    # The run is recorded in MLflow: a parent with the config, a child per planner with its metrics.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_store)
    experiment = client.get_experiment_by_name("wmplan")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["wmplan.planner"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parent) == 1 and parent[0].info.run_name == "two-actors" and parent[0].info.status == "FINISHED"
    assert parent[0].data.params["episodes"] == "12"
    assert parent[0].data.tags["wmplan.model.kind"] == "state_mlp" and parent[0].data.tags["wmplan.model.rounds"] == "0"
    assert float(parent[0].data.tags["wmplan.model.training_seconds"]) == pytest.approx(training["training_seconds"], abs=0.05)
    assert set(children) == {"cem", "gd", "grasp"}
    for name, child in children.items():
        assert child.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert child.data.metrics["success_rate"] == pytest.approx(result.summaries[name, 2]["success_rate"])
        assert child.data.metrics["episodes"] == 12
    artifacts = [f.path for f in client.list_artifacts(parent[0].info.run_id, "results/episodes")]
    assert len(artifacts) == 9  # one Parquet part per batch: 3 planners x 12 episodes / 4
    assert any(f.path.endswith(".png") for f in client.list_artifacts(children["grasp"].info.run_id, "plots"))
    parent_plots = {f.path for f in client.list_artifacts(parent[0].info.run_id, "plots")}
    assert "plots/success_vs_iterations.png" in parent_plots and "plots/success_vs_horizon.png" in parent_plots
    # The anytime curve: every episode's plan was also executed after 8 evenly spaced iterations.
    grasp_rows = [r for r in rows if r["planner"] == "grasp"]
    assert all(r["snapshot_iterations"] == list(range(2, 41, 2)) for r in grasp_rows)  # 20 snapshots: every 5%
    assert all(r["success_by_iteration"][-1] == r["success"] for r in grasp_rows)


def test_killed_actor_loses_and_duplicates_nothing(ray_cluster, tmp_path, tiny_wall_model):
    config = config_for(tmp_path, tiny_wall_model, "episodes=16", "batch_size=2", "planners=grasp",
                        "planners.grasp.iterations=300")
    killed, messages = [], []

    def kill_one_actor():
        deadline = time.monotonic() + 600  # generous: a busy machine plans slowly
        while time.monotonic() < deadline and not killed:
            parts = list((tmp_path / "kill" / "episodes").glob("part-*.parquet"))
            if parts:
                actor = ray_cluster.get_actor("wmplan-kill-actor-0")
                ray_cluster.kill(actor, no_restart=True)
                killed.append(True)
            time.sleep(0.05)

    thread = threading.Thread(target=kill_one_actor)
    thread.start()
    result = run_experiment(config, run_id="kill", say=messages.append)
    thread.join()
    assert killed, "the run finished before an actor could be killed"
    assert any("actor lost" in m for m in messages)
    assert_each_episode_once(result.directory, ["grasp"], [2], 16)
    assert result.failed_batches == 0


def test_killed_driver_resumes_to_a_complete_run(ray_cluster, ray_head_address, tmp_path, tiny_wall_model, mlflow_store):
    ckpt, data = tiny_wall_model
    args = [sys.executable, "-m", "wmplan", "run", "--run-id", "driver", "--set", f"model={ckpt}", "--set", f"data={data}",
            "--set", f"output={tmp_path}", "--set", "horizons=2", "--set", "episodes=12", "--set", "batch_size=2",
            "--set", "planners=grasp", "--set", "planners.grasp.iterations=150", "--set", "actors=1"]
    # The driver joins the session's Ray (what a local Ray's start and reaper do for a killed driver is
    # tests/jobs/test_services.py's test): a killed driver's run is resumed, whatever Ray it ran on.
    driver = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**__import__("os").environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ray_head_address})
    parts = tmp_path / "driver" / "episodes"
    deadline = time.monotonic() + 600  # generous: a busy machine plans slowly
    while time.monotonic() < deadline and len(list(parts.glob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    driver.kill()
    driver.wait()
    stored = len(read_table(tmp_path / "driver"))
    assert 0 < stored < 12, "the driver must die part way"
    result = run_experiment(load_config(None, [f"output={tmp_path}", "actors=2"], check_model=False), resume="driver", say=lambda m: None)
    assert json.loads((tmp_path / "driver" / "run.json").read_text())["config"]["actors"] == 1  # as started
    assert result.planned == 12 - stored
    rows = assert_each_episode_once(result.directory, ["grasp"], [2], 12)

    # MLflow reports the whole run, not the resumed invocation: metrics from every stored episode,
    # episodes/s over the planning time of every stored batch (the first driver's included).
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_store)
    runs = client.search_runs([client.get_experiment_by_name("wmplan").experiment_id])
    child = [r for r in runs if r.data.tags.get("wmplan.planner") == "grasp"]
    parent = [r for r in runs if r.data.tags.get("wmplan.role") == "parent"]
    assert len(child) == 1 and len(parent) == 1 and parent[0].info.status == "FINISHED"
    batch_seconds = sum({r["plan_seed"]: r["planning_time_s"] for r in rows}.values())  # one time per batch
    for run in (child[0], parent[0]):
        m = run.data.metrics
        assert m["episodes"] == 12 and m["successes"] == sum(r["success"] for r in rows)
        assert m["success_rate"] == pytest.approx(sum(r["success"] for r in rows) / 12)
        assert m["episodes_per_s"] == pytest.approx(12 / batch_seconds)


@pytest.mark.parametrize("setting, message", [
    ("tsk=wall", "unknown key 'tsk' for experiment config (did you mean 'task'?)"),
    ("planners.grasp.noise_scal=0.1", "unknown option 'noise_scal' for planner 'grasp'"),
    ("planners=grasp,cme", "unknown planner 'cme'"),
    ("model=/no/such/checkpoint", "model checkpoint '/no/such/checkpoint' does not exist"),
    ("task=wal", "unknown task 'wal'"),
])
def test_bad_configs_fail_before_ray_starts(tmp_path, setting, message, monkeypatch, capsys):
    # The command's main in this process (a subprocess only adds seconds of imports): Ray's start is
    # replaced by a recorder, so "before Ray starts" is checked directly, not only by what stderr says.
    import wmplan.jobs.runner
    from wmplan.cli import main

    started = []
    monkeypatch.setattr(wmplan.jobs.runner, "start_ray", lambda *a, **k: started.append(a) or pytest.fail("Ray started"))
    monkeypatch.delenv("WMPLAN_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    status = main(["run", "--set", setting, "--set", f"output={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and "Traceback" not in err
    assert "Ray" not in err and not started and not any(tmp_path.iterdir())  # nothing started, nothing written


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: wall\nepisodes: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        load_config(bad)
    good = tmp_path / "exp.toml"
    good.write_text('task = "pointmaze"\nhorizons = [3, 6]\n[planners.grasp]\nnoise_scale = 0.01\n')
    config = load_config(good)
    assert config.task == "pointmaze" and config.horizons == [3, 6] and config.planners == {"grasp": {"noise_scale": 0.01}}
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_the_example_config_is_valid():
    from pathlib import Path

    config = load_config(Path(__file__).resolve().parents[2] / "examples" / "wall.yaml")
    assert config.task == "wall" and config.horizons == [5, 10] and set(config.planners) == {"cem", "gd", "grasp"}


@pytest.mark.parametrize("resources, actors, expected", [
    ({"CPU": 2.0}, 2, ({"num_cpus": 1.0}, "cpu", 1)),
    ({"CPU": 16.0}, 3, ({"num_cpus": 16.0 / 3}, "cpu", 5)),
    ({"CPU": 16.0, "GPU": 2.0}, 2, ({"num_gpus": 1.0, "num_cpus": 1.0}, "cuda", 1)),  # one GPU per actor
    ({"CPU": 16.0, "GPU": 1.0}, 2, ({"num_gpus": 0.5, "num_cpus": 1.0}, "cuda", 1)),  # never pending forever
])
def test_actor_resources_follow_the_cluster(resources, actors, expected):
    from wmplan.jobs.cluster import actor_resources

    class Cluster:
        @staticmethod
        def cluster_resources():
            return resources

    assert actor_resources(Cluster, load_config(None, [f"actors={actors}"])) == expected
    if "GPU" not in resources:
        with pytest.raises(ConfigError, match="has no GPU"):
            actor_resources(Cluster, load_config(None, [f"actors={actors}", "device=cuda"]))


def test_ctrl_c_leaves_a_resumable_run_and_one_line(ray_cluster, ray_head_address, tmp_path, tiny_wall_model, mlflow_store):
    import os
    import signal

    ckpt, data = tiny_wall_model
    args = [sys.executable, "-m", "wmplan", "run", "--run-id", "stopped", "--set", f"model={ckpt}", "--set", f"data={data}",
            "--set", f"output={tmp_path}", "--set", "horizons=2", "--set", "episodes=24", "--set", "batch_size=2",
            "--set", "planners=grasp", "--set", "planners.grasp.iterations=400", "--set", "actors=1"]
    # 12 batches of about half a second each on an idle machine: the interrupt lands while most are still to plan
    environment = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ray_head_address}  # the session's Ray
    environment.pop("WMPLAN_DEBUG", None)
    # An interactive shell's Ctrl-C: SIGINT at its default, even where this test runs in the background (a shell
    # without job control starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT ignored).
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    parts = tmp_path / "stopped" / "episodes"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(parts.glob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=300)
    stored = len(read_table(tmp_path / "stopped"))
    assert driver.returncode == 130 and 0 < stored < 24, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    assert last == (f"wmplan: interrupted: {stored} episodes of run stopped are stored in {tmp_path / 'stopped'}; "
                    f"continue with: wmplan run --resume stopped --set output={tmp_path}")
    result = run_experiment(load_config(None, [f"output={tmp_path}"], check_model=False), resume="stopped", say=lambda m: None)
    assert result.planned == 24 - stored
    assert_each_episode_once(result.directory, ["grasp"], [2], 24)


def test_resume_sets_aside_an_unreadable_part_and_plans_it_again(ray_cluster, tmp_path, tiny_wall_model):
    config = config_for(tmp_path, tiny_wall_model, "episodes=6", "batch_size=2", "planners=gd", "tracking=false")
    first = run_experiment(config, run_id="damaged", say=lambda m: None)
    part = sorted((first.directory / "episodes").glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:100])  # truncated, as a full disk or a killed copy leaves it
    with pytest.raises(Exception, match="cannot read"):
        read_table(first.directory)
    messages = []
    result = run_experiment(load_config(None, [f"output={tmp_path}"], check_model=False), resume="damaged", say=messages.append)
    assert result.planned == 2  # the damaged batch, planned again
    assert_each_episode_once(result.directory, ["gd"], [2], 6)
    assert any(f"set aside the unreadable episodes/{part.name}" in m for m in messages)
    for table in ("episodes", "trajectories"):  # the batch's other tables went aside with it: no duplicates
        assert (first.directory / table / (part.name + ".unreadable")).exists()
    traj = read_table(result.directory, "trajectories").to_pylist()
    assert len({(r["episode_id"], r["step"]) for r in traj}) == len(traj)
