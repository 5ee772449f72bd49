"""The ``wmplan`` command as a user meets it: help, the demo, and errors that name the problem."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from wmplan.cli import main
from wmplan.storage.parquet import read_table

WMPLAN = [sys.executable, "-m", "wmplan"]
FAST = ["--set", "planners.grasp.iterations=30", "--set", "planners.gd.iterations=30", "--set", "planners.latco.iterations=30",
        "--set", "planners.cem.iterations=3", "--set", "planners.mppi.iterations=3"]


def run(*args: str) -> subprocess.CompletedProcess:
    # Seconds each when idle; the limit is for a machine busy with other work (no test fails for being slow).
    return subprocess.run([*WMPLAN, *args], capture_output=True, text=True, timeout=900)


@pytest.fixture
def cli(capsys, monkeypatch):
    """``wmplan ARGS`` through its ``main`` in this process, as a CompletedProcess (exit status, stdout, stderr).

    A subprocess would add seconds of imports per call and test nothing more here: the process boundary (the
    console script, ``python -m wmplan``) is test_console_script_is_installed's and test_help_lists_the_commands'.
    """
    monkeypatch.delenv("WMPLAN_DEBUG", raising=False)

    def call(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        try:
            status = main(list(args))
        except SystemExit as exc:  # argparse: --help, usage errors
            status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        said = capsys.readouterr()
        return subprocess.CompletedProcess(args, status, said.out, said.err)

    return call


def test_help_lists_the_commands():
    out = run("--help")
    assert out.returncode == 0
    assert "demo" in out.stdout and "planners" in out.stdout


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "wmplan"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.startswith("wmplan ")


def test_demo_prints_one_row_per_planner_and_horizon(capsys):
    assert main(["demo", "--problems", "6", "--horizons", "4,6", *FAST]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if re.match(r"\| (grasp|gd|cem|latco|mppi) \|", line)]
    assert len(rows) == 10
    for row in rows:
        rate = float(re.search(r"\| (\d+\.\d)% \[", row).group(1))
        assert 0.0 <= rate <= 100.0
    # CEM reaches these short-horizon reachable goals.
    cem = [r for r in rows if r.startswith("| cem | 4 |")][0]
    assert float(re.search(r"\| (\d+\.\d)% \[", cem).group(1)) >= 50.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "planners.grasp.noise_scal=0.1"], "unknown option 'noise_scal' for planner 'grasp' (did you mean 'noise_scale'?)"),
        (["--planners", "grasp,cme"], "unknown planner 'cme' (did you mean 'cem'?)"),
        (["--set", "planners.grasp.iterations=ten"], "option 'iterations' cannot be read from 'ten' (expected int)"),
        (["--set", "planners.gd.lr=-1", "--planners", "gd"], "lr must be > 0"),
        (["--set", "planners.grasp.sync_mode=cme"], "option 'sync_mode' must be one of ['gd', 'cem']"),
        (["--set", "noise_scale=0.1"], "unknown key 'noise_scale' for demo config"),
        (["--set", "grasp.noise_scale=0.1"], "unknown key 'grasp' for demo config (by planner: planners.PLANNER.OPTION=VALUE)"),
        (["--set", "planners.grasp"], "--set expects KEY=VALUE"),
        (["--horizons", "ten"], "horizons must be comma-separated integers, got 'ten'"),
    ],
)
def test_bad_demo_input_is_one_clear_line_and_exit_2(cli, args, message):
    out = cli("demo", *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""  # nothing was planned


def test_planners_lists_options_with_docs(cli):
    out = cli("planners", "grasp")
    assert out.returncode == 0
    assert "noise_scale = 0.005" in out.stdout
    assert "sync_interval = 50" in out.stdout
    assert "virtual states" in out.stdout  # the field docs are shown
    assert cli("planners", "nope").returncode == 2


def test_data_train_eval_plan_from_the_command_line(cli, tmp_path):
    run = cli  # the commands' main in this process: each subprocess would add seconds of imports
    data, ckpt = tmp_path / "wall.parquet", tmp_path / "ckpt"
    out = run("data", "--env", "wall", "--episodes", "8", "--steps", "30", "--workers", "1", "--out", str(data))
    assert out.returncode == 0 and data.exists() and "8 trajectories" in out.stdout
    out = run("train", "--env", "wall", "--data", str(data), "--out", str(ckpt), "--steps", "30", "--hidden", "32", "--depth", "1")
    assert out.returncode == 0, out.stderr
    assert (ckpt / "model.safetensors").exists() and "6-step error" in out.stdout
    out = run("eval-model", "--model", str(ckpt), "--data", str(data), "--k", "3")
    assert out.returncode == 0 and "| 3_step_error |" in out.stdout
    out = run("plan", "--env", "wall", "--model", str(ckpt), "--data", str(data), "--planner", "cem,grasp",
              "--horizon", "2", "--episodes", "4", "--set", "planners.cem.iterations=2", "--set", "planners.grasp.iterations=10",
              "--output", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("| cem |") or line.startswith("| grasp |")]
    assert len(rows) == 2 and all("| 2 | 4 |" in r for r in rows)
    (run_dir,) = (tmp_path / "runs").iterdir()  # the same Parquet as 'wmplan run', planned in this process
    assert (run_dir / "run.json").exists() and len(read_table(run_dir)) == 8


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path, capsys):
    def cli(*args: str) -> subprocess.CompletedProcess:  # main() in this process: each case ends before Ray
        status = main(list(args))
        return subprocess.CompletedProcess(args, status, "", capsys.readouterr().err)

    out = cli("plan", "--env", "wall", "--model", str(tmp_path / "nope"), "--episodes", "2")
    assert out.returncode == 2 and "does not exist (no config.json there)" in out.stderr and "Traceback" not in out.stderr
    data, ckpt = tmp_path / "wall.parquet", tmp_path / "ckpt"
    assert cli("data", "--env", "wall", "--episodes", "4", "--steps", "20", "--workers", "1", "--out", str(data)).returncode == 0
    assert cli("train", "--env", "wall", "--data", str(data), "--out", str(ckpt), "--steps", "2", "--hidden", "8", "--depth", "1").returncode == 0
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    out = cli("eval-model", "--model", str(ckpt), "--data", str(data))
    assert out.returncode == 2 and "corrupt" in out.stderr and "Traceback" not in out.stderr
    out = cli("train", "--env", "pusht", "--data", str(data), "--out", str(tmp_path / "x"), "--steps", "2")
    assert out.returncode == 2 and "is for task 'wall', not 'pusht'" in out.stderr
    out = cli("plan", "--env", "wal")
    assert out.returncode == 2 and "unknown task 'wal' (did you mean 'wall'?)" in out.stderr
