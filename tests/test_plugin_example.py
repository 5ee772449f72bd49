"""The worked plug-in example (``examples/plugin``) through every command, on a real local Ray.

A user's own task (the Wall with its door low), world model (a small DINO-WM-style transformer over
patch tokens, with its own checkpoint format) and planner (random shooting) live in the installable
package ``wmplan_plugin_example``. As a user ships it, the package is installed in wmplan's
environment (``pip install -e examples/plugin``; done here when it is not importable, in seconds),
so the commands and the Ray workers they start import it like any package. The model is trained by
the example's own script on a tiny budget; then ``wmplan run``, ``wmplan tune`` and ``wmplan bench
sweep`` run with all three plug-ins, each a subprocess of the real command that joins (``RAY_ADDRESS``)
one local Ray head started for this module after the example was installed, without ``PYTHONPATH``
(a local Ray of their own would cost each command about 10 s of a busy 2-core machine). Wrong specs
fail before Ray in one line with exit status 2 (the command's ``main`` in this process, Ray's start
replaced by a recorder that fails the test).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import site
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin"
TASK = "wmplan_plugin_example.task:LowDoorWall"
MODEL = "wmplan_plugin_example.model:load_model"
PLANNER = "wmplan_plugin_example.planner:RandomShooting"
TIMEOUT = 900  # seconds per command: the machine has 2 shared cores


def command(*args: str, cwd: Path, env: dict[str, str] | None = None, module: str = "wmplan") -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in ``cwd`` with its own MLflow store (no PYTHONPATH: the example is installed)."""
    environment = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db", **(env or {})}
    environment.pop("WMPLAN_DEBUG", None)
    if "PYTHONPATH" not in (env or {}):
        environment.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=cwd, env=environment)


def succeeded(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, f"exit {out.returncode}\nstdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-6000:]}"
    return out.stdout


def files_sha256(name: str, directory: Path) -> str:
    """What a run records for a plug-in model whose option ``name`` is ``directory`` (wmplan.config.files_sha256)."""
    lines = [f"{name}\t{p.relative_to(directory).as_posix()}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
             for p in sorted(directory.rglob("*"), key=lambda p: p.relative_to(directory).as_posix()) if p.is_file()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@pytest.fixture(scope="module")
def installed() -> None:
    """The example installed in wmplan's environment, as a user installs it (editable: seconds, nothing downloaded)."""
    probe = subprocess.run([sys.executable, "-c", "import wmplan_plugin_example"], capture_output=True, cwd="/",
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    if probe.returncode != 0:
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(EXAMPLE)]
        # The environment's own setuptools first (offline); else pip's isolated build, as scripts/setup.sh installs wmplan.
        done = subprocess.run([*pip, "--no-build-isolation"], capture_output=True, text=True, timeout=TIMEOUT)
        if done.returncode != 0:
            done = subprocess.run(pip, capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 0, f"pip install -e examples/plugin failed:\n{done.stderr[-3000:]}"
        site.addsitedir(sysconfig.get_paths()["purelib"])  # this process too (its .pth files were read at start)


@pytest.fixture(scope="module")
def checkpoint(installed, ray_head_process, tmp_path_factory) -> Path:
    """The example's model, trained by its own script on a tiny budget (a poor model, but a real one),
    while the commands' Ray head starts."""
    work = tmp_path_factory.mktemp("plugin-train")
    out = succeeded(command("--out", str(work / "ckpt"), "--trajectories", "24", "--trajectory-steps", "50",
                            "--steps", "40", "--batch", "32", cwd=work, module="wmplan_plugin_example.train"))
    assert "checkpoint:" in out and (work / "ckpt" / "config.json").is_file() and (work / "ckpt" / "model.safetensors").is_file()
    assert (work / "ckpt-data.parquet").is_file()  # the data stay outside the checkpoint
    info = json.loads((work / "ckpt" / "config.json").read_text())
    assert info["format"] == "wmplan-plugin-example/patch-world-model" and info["metrics"]["steps"] == 40
    return work / "ckpt"


HEAD = """import os, sys, ray
ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, object_store_memory=512 * 1024**2)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(ray.get_runtime_context().gcs_address)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
sys.stdin.read()  # until the test closes it; then ray.shutdown at exit
"""


@pytest.fixture(scope="module")
def ray_head_process(installed, tmp_path_factory):
    """A local Ray head (as ``wmplan run`` starts one: this machine's cores) for the commands to join, starting:
    (process, file its address is written to, its log). Not waited for here: it starts while the model trains.

    Started after the example is installed and without ``PYTHONPATH``, so its workers import the plug-ins as
    installed, as those of a command's own local Ray do. Every process it starts carries a marker in its
    environment and is ended by process id afterwards.
    """
    from tests.jobs.test_cluster import MARKER, end_processes

    folder = tmp_path_factory.mktemp("plugin-ray")
    address, log = folder / "address", folder / "head.log"
    token = secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update({"RAY_AUTH_MODE": "disabled", MARKER: token})
    with log.open("wb") as out:
        head = subprocess.Popen([sys.executable, "-c", HEAD, str(address)], stdin=subprocess.PIPE, stdout=out,
                                stderr=subprocess.STDOUT, cwd=folder, env=env, start_new_session=True)
    try:
        yield head, address, log
    finally:
        head.stdin.close()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=30)
        leftover = end_processes(token, grace=5)
    assert not leftover, f"processes of the plug-in tests' Ray head outlived SIGKILL: {leftover}"


@pytest.fixture(scope="module")
def ray_head(ray_head_process) -> str:
    """The address of :func:`ray_head_process`'s head, once it answers (``RAY_ADDRESS`` for the commands)."""
    from tests.jobs.servers import tail

    head, address, log = ray_head_process
    deadline = time.monotonic() + TIMEOUT  # seconds when idle; generous for a busy machine
    while not address.exists():
        assert head.poll() is None, f"the Ray head exited with {head.returncode}:\n{tail(log)}"
        assert time.monotonic() < deadline, f"the Ray head did not start in {TIMEOUT} s:\n{tail(log)}"
        time.sleep(0.2)
    return address.read_text()


def test_the_model_plugs_in_as_a_world_model_with_its_own_cost(checkpoint):
    import torch

    from wmplan.platform.episode import observe
    from wmplan.platform.planners import Problem
    from wmplan.platform.registry import load_model, make_task
    from wmplan.platform.world_model import CostModel, is_observation_model

    model = load_model(MODEL, device="cpu", options={"checkpoint": str(checkpoint)})
    env = make_task(TASK)
    assert env.name == "low_door_wall" and env.door_y == 46.0 and is_observation_model(model) and isinstance(model, CostModel)
    states = torch.tensor([[10.0, 10.0], [50.0, 50.0]])
    z = observe(env, model, states)  # rendered at the model's frame size, then encoded
    assert z.shape == (2, model.state_dim) == (2, 128)
    nxt = model.step(z, torch.zeros(2, model.action_dim))
    assert nxt.shape == z.shape and model.decode(z).shape == (2, 2)
    problem = Problem(model, z, z.flip(0), horizon=2)
    cost = problem.cost(z, z.flip(0))
    assert cost.shape == (2,) and torch.all(cost > 0) and torch.allclose(problem.cost(z, z), torch.zeros(2))


def test_a_registered_model_name_reaches_the_process_that_plans(checkpoint, tmp_path):
    from wmplan_plugin_example.model import load_model

    from wmplan.jobs.experiment import ExperimentConfig
    from wmplan.jobs.runner import run_experiment
    from wmplan.platform import registry

    registry.register_model("patch-example", load_model)
    try:
        config = ExperimentConfig(task=TASK, model="patch-example", model_options={"checkpoint": str(checkpoint)},
                                  planners={PLANNER: {"iterations": 2, "samples": 8}}, horizons=[2], episodes=2,
                                  batch_size=2, snapshots=0, executor="local", tracking=False, output=str(tmp_path / "runs"))
        arguments = config.model_arguments()  # what a Ray actor is given: the factory travels pickled
        assert arguments["model"] == "patch-example" and arguments["factory"] is load_model
        result = run_experiment(config, say=lambda message: None)
    finally:
        registry.unregister("model", "patch-example")
    assert result.failed_batches == 0 and result.summaries[PLANNER, 2]["count"] == 2
    assert json.loads((result.directory / "run.json").read_text())["checkpoint_sha256"] == files_sha256("checkpoint", checkpoint)


def test_run_with_the_plugin_task_model_and_planner_on_ray(checkpoint, ray_head, tmp_path):
    from wmplan_plugin_example.task import LowDoorWall

    from wmplan.platform.workflow import episode_specs
    from wmplan.storage.parquet import read_table

    (tmp_path / "plugin.yaml").write_text(f"""
name: plugin-example
task: {TASK}
model: {MODEL}
model_options: {{checkpoint: {checkpoint}}}
planners:
  {PLANNER}: {{iterations: 5, samples: 32}}
horizons: [4]
episodes: 6
batch_size: 3
actors: 2
snapshots: 2
""")
    out = succeeded(command("run", "plugin.yaml", cwd=tmp_path, env={"RAY_ADDRESS": ray_head}))
    assert PLANNER in out
    (run,) = (tmp_path / "runs").iterdir()
    meta = json.loads((run / "run.json").read_text())
    sha = files_sha256("checkpoint", checkpoint)
    assert meta["config"]["model"] == MODEL and meta["config"]["model_options"] == {"checkpoint": str(checkpoint)}
    assert meta["config"]["task"] == TASK and meta["checkpoint_sha256"] == sha

    episodes = read_table(run, "episodes").to_pylist()
    assert sorted(e["episode_id"] for e in episodes) == list(range(6))  # every episode stored once
    assert {e["planner"] for e in episodes} == {PLANNER} and {e["task"] for e in episodes} == {"low_door_wall"}
    assert not any(e["failed"] for e in episodes)

    # Success is the task's simulator's verdict: replaying each stored plan in a fresh LowDoorWall from
    # the episode's start reaches the stored final state, and success is its test against the goal.
    env = LowDoorWall()
    goals = {s.episode_id: s.goal for s in episode_specs(env, horizon=4, count=6, seed=0, dataset=None)}
    trajectories = read_table(run, "trajectories").to_pylist()
    for e in episodes:
        steps = sorted((t for t in trajectories if t["episode_id"] == e["episode_id"]), key=lambda t: t["step"])
        assert len(steps) == 4 * env.frameskip + 1 == e["executed_steps"] + 1
        env.reset(state=np.array(steps[0]["state"]))
        final = env.rollout(np.array([t["action"] for t in steps[:-1]]))[-1]
        np.testing.assert_allclose(final, steps[-1]["state"], atol=1e-9)
        assert e["success"] == env.is_success(final, goals[e["episode_id"]])
        assert e["final_distance"] == pytest.approx(env.goal_distance(final, goals[e["episode_id"]]))

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("plugin-example")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`wmplan.role` = 'parent'")
    assert parent.data.params["model"] == MODEL and parent.data.params["model_options.checkpoint"] == str(checkpoint)
    assert parent.data.params["task"] == TASK and parent.data.tags["wmplan.checkpoint_sha256"] == sha
    (group,) = client.search_runs([experiment.experiment_id], "tags.`wmplan.role` = 'group'")
    assert group.data.tags["wmplan.planner"] == PLANNER and group.data.metrics["episodes"] == 6


def test_tune_searches_the_plugin_planners_own_space(checkpoint, ray_head, tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    from wmplan.storage.parquet import read_table

    succeeded(command("tune", "--task", TASK, "--model", MODEL, "--set", f"model_options.checkpoint={checkpoint}",
                      "--planner", PLANNER, "--study", "plugin-study", "--horizon", "4", "--trials", "2", "--parallel", "2",
                      "--tuning-episodes", "4", "--batch-size", "2", "--test-episodes", "4", "--space", "+iterations=5",
                      cwd=tmp_path, env={"RAY_ADDRESS": ray_head}))
    study = optuna.load_study(study_name="plugin-study",
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "studies.journal"))))
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:  # RandomShooting.search_space (samples 32:256:log:int, std 0.2:1.0:log, decay 0.7:1.0), iterations fixed
        assert set(t.params) == {"samples", "std", "decay", "iterations"}
        options = t.user_attrs["options"]
        assert 32 <= options["samples"] <= 256 and 0.2 <= options["std"] <= 1.0 and 0.7 <= options["decay"] <= 1.0
        assert options["iterations"] == 5
    test = read_table(tmp_path / "studies" / "plugin-study" / "test", "episodes").to_pylist()
    assert sorted(e["episode_id"] for e in test) == list(range(4)) and {e["planner"] for e in test} == {PLANNER}

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("wmplan-studies").experiment_id], "tags.`wmplan.role` = 'study'")
    assert [r.data.params["model"] for r in runs] == [MODEL]


def test_bench_sweep_with_the_plugins(checkpoint, ray_head, tmp_path):
    import pyarrow.parquet as pq

    from wmplan.storage.parquet import read_table

    (tmp_path / "sweep.yaml").write_text(f"""
name: plugin-sweep
task: {TASK}
model: {MODEL}
model_options: {{checkpoint: {checkpoint}}}
planners: ['{PLANNER}']
options:
  {PLANNER}: {{iterations: 5}}
horizons: [4]
trials: 1
tuning_episodes: 4
test_episodes: 4
batch_size: 2
actors: 2
""")
    out = succeeded(command("bench", "sweep", "--config", "sweep.yaml", cwd=tmp_path, env={"RAY_ADDRESS": ray_head}))
    folder = tmp_path / "runs" / "sweep-plugin-sweep"
    markdown = (folder / "sweep.md").read_text()
    assert markdown in out and f"Model {MODEL} (checkpoint={checkpoint})" in markdown
    assert f"| {PLANNER} | 4 | 1 | 0 |" in markdown  # its row of the options table: 1 trial, the best is trial 0
    (row,) = pq.read_table(folder / "summary.parquet").to_pylist()
    assert row["planner"] == PLANNER and row["count"] == 4 and row["trials"] == 1 and row["failures"] == 0
    held = read_table(folder / "heldout" / f"plugin-sweep-{PLANNER}-h4", "episodes").to_pylist()
    assert sorted(e["episode_id"] for e in held) == list(range(4)) and {e["planner"] for e in held} == {PLANNER}
    recorded = json.loads((folder / "sweep.json").read_text())
    assert recorded["model"] == {"spec": MODEL, "options": {"checkpoint": str(checkpoint)}}
    assert recorded["checkpoint_sha256"] == files_sha256("checkpoint", checkpoint)


BAD_PLUGINS = '''
import torch


def not_a_model(*, device: torch.device) -> torch.nn.Module:
    return torch.nn.Linear(2, 2).to(device)


def not_a_task(*, seed: int | None = None) -> dict:
    return {"seed": seed}


def a_function() -> None:
    pass


NOT_CALLABLE = 3
'''


@pytest.mark.parametrize(("args", "needle"), [
    (("run", "--set", "model=nowhere_pkg.model:load"), "model cannot import module 'nowhere_pkg.model'"),
    (("run", "--set", "model=bad_plugins:not_a_model"), "returns Module (as declared), which has no step method"),
    (("run", "--set", "model=bad_plugins:NOT_CALLABLE"), "model 'bad_plugins:NOT_CALLABLE' is an int, not a callable"),
    (("run", "--set", f"model={MODEL}", "--set", "model_options.checkpnt=x"), "unknown option 'checkpnt' for model"),
    (("run", "--set", "model_options.checkpoint=x"), "model_options are the options of a plug-in model"),
    (("run", "--set", "task=bad_plugins:not_a_task"), "task 'bad_plugins:not_a_task' returned a dict, not an Env"),
    (("run", "--set", "planners=bad_plugins:a_function"), "is the function 'a_function', not a subclass of"),
    (("tune", "--model", "nowhere_pkg.model:load"), "model cannot import module 'nowhere_pkg.model'"),
    (("bench", "sweep", "--set", "model=bad_plugins:not_a_model"), "returns Module (as declared)"),
])
def test_a_wrong_spec_fails_before_ray_in_one_line(installed, tmp_path, args, needle, monkeypatch, capsys):
    # The command's main in this process, run from tmp_path with tmp_path on the import path (as PYTHONPATH
    # puts it for a subprocess): a subprocess per case added seconds of imports. Ray's start is replaced
    # by a recorder that fails the test, so "before Ray" is checked directly.
    import wmplan.jobs.cluster
    from wmplan.cli import main

    started: list[tuple] = []

    def start_ray(*a, **k):
        started.append(a)
        pytest.fail("Ray was started")

    for module in ("wmplan.jobs.cluster", "wmplan.jobs.runner", "wmplan.tuning.study", "wmplan.tuning.sweep"):
        __import__(module)
        monkeypatch.setattr(sys.modules[module], "start_ray", start_ray)
    assert wmplan.jobs.cluster.start_ray is start_ray
    (tmp_path / "bad_plugins.py").write_text(BAD_PLUGINS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("WMPLAN_DEBUG", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    capsys.readouterr()
    try:
        status = main(list(args))
    finally:
        sys.modules.pop("bad_plugins", None)  # the next case's bad_plugins is another file
    out = subprocess.CompletedProcess(args, status, "", capsys.readouterr().err)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("wmplan: error: "), out.stderr
    assert not started
    assert needle in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["bad_plugins.py"]  # nothing started
