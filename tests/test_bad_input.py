"""Bad input, as a user meets it: one line naming the problem, a non-zero exit, nothing started.

Every case runs the ``wmplan`` command (its ``main``, in this process: each case fails before Ray or
MLflow would start, so a subprocess would only add seconds of imports; the binary config cases run
the real command in a subprocess) and checks its exit status, that stderr is exactly one line (no
traceback), what that line names, and that nothing was written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wmplan.cli import main

WMPLAN = [sys.executable, "-m", "wmplan"]


def command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command in a subprocess."""
    environment = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    environment.pop("WMPLAN_DEBUG", None)
    return subprocess.run([*WMPLAN, *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=environment)


def wmplan(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``wmplan ARGS`` through its ``main`` in this process (the ``home`` fixture made ``cwd`` the working directory)."""
    assert Path.cwd() == cwd
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(list(args))
    return subprocess.CompletedProcess(args, status, "", err.getvalue())


def one_line_error(out: subprocess.CompletedProcess, status: int = 2) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == status, out.stderr
    assert len(lines) == 1 and lines[0].startswith("wmplan: error: "), out.stderr
    return lines[0]


def copy_checkpoint(source: Path, dest: Path, **config: object) -> Path:
    """A copy of a checkpoint whose config.json says other things (the weights file stays the same)."""
    shutil.copytree(source, dest)
    info = json.loads((dest / "config.json").read_text())
    info.update(config.pop("_top", {}))  # type: ignore[arg-type]
    for key in config.pop("_drop", ()):  # type: ignore[attr-defined]
        info["config"].pop(key, None)
    info["config"].update(config)
    (dest / "config.json").write_text(json.dumps(info))
    return dest


@pytest.fixture
def home(tmp_path, monkeypatch):
    """The working directory, with an MLflow store of its own."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv("WMPLAN_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_planner_options_must_be_finite(home):
    for value in ("inf", "-inf", "nan"):
        line = one_line_error(wmplan("run", "--set", f"planners.grasp.state_lr={value}", "--set", f"output={home}/runs", cwd=home))
        assert "'state_lr' must be a finite number" in line
    line = one_line_error(wmplan("plan", "--env", "wall", "--set", "planners.gd.lr=inf", cwd=home))
    assert "'lr' must be a finite number" in line
    assert not (home / "runs").exists() and not (home / "checkpoints").exists()


def test_data_with_zero_episodes_is_refused(home):
    line = one_line_error(wmplan("data", "--env", "wall", "--episodes", "0", "--out", str(home / "d.parquet"), cwd=home))
    assert "episodes must be >= 1, got 0" in line and not (home / "d.parquet").exists()


@pytest.mark.integration  # a subprocess of the command, or a Ray cluster
@pytest.mark.parametrize("content, message", [
    (bytes(range(256)) * 4, "is not UTF-8 text"),
    ("task: w\u00e9ll\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 7)"),
    (b"task: wall\x00\x00\n", "is binary"),
])
def test_binary_or_non_utf8_config_files(home, content, message):
    path = home / "exp.yaml"
    path.write_bytes(content)
    line = one_line_error(command("run", str(path), "--set", f"output={home}/runs", cwd=home))
    assert message in line and not (home / "runs").exists()


def test_a_checkpoint_of_another_task_is_caught_before_ray(home, tiny_wall_model):
    ckpt, data = tiny_wall_model
    line = one_line_error(wmplan("run", "--set", "task=pointmaze", "--set", f"model={ckpt}", "--set", f"output={home}/runs", cwd=home))
    assert "was trained for another task: task 'wall' (the task needs 'pointmaze'), state size 2 (the task needs 4)" in line
    skipped = copy_checkpoint(ckpt, home / "fs2", frameskip=2, action_dim=4)
    line = one_line_error(wmplan("run", "--set", f"model={skipped}", "--set", f"output={home}/runs", cwd=home))
    assert "frameskip 2 (the task needs 5)" in line
    line = one_line_error(wmplan("run", "--set", f"model={ckpt}", "--set", "obs=pixels", "--set", f"output={home}/runs", cwd=home))
    assert "observation 'state' (the task needs 'pixels')" in line
    line = one_line_error(wmplan("plan", "--env", "pusht", "--model", str(ckpt), cwd=home))
    assert "task 'wall' (the task needs 'pusht')" in line
    line = one_line_error(wmplan("tune", "--task", "pointmaze", "--model", str(ckpt), "--storage", str(home / "s.journal"), cwd=home))
    assert "task 'wall' (the task needs 'pointmaze')" in line
    assert not (home / "runs").exists() and not (home / "s.journal").exists()


def test_code_named_in_a_checkpoint_never_runs(home, tiny_wall_model):
    """A checkpoint whose config names an encoder 'module:factory' is refused unless the user names it."""
    ckpt, _ = tiny_wall_model
    trap = "tests.platform.code_trap:make"  # importing it raises: a run that imported it would fail differently
    named = copy_checkpoint(ckpt, home / "named", _top={"kind": "visual"}, _drop=("action_low", "action_high", "activation", "env_step"),
                            frame_size=64,
                            encoder=trap, encoder_latent_shape=[4, 4, 4], decoder=False)
    for args in (("run", "--set", f"model={named}", "--set", f"output={home}/runs"),
                 ("plan", "--env", "wall", "--model", str(named)),
                 ("eval-model", "--model", str(named), "--data", str(tiny_wall_model[1])),
                 ("tune", "--model", str(named), "--storage", str(home / "s.journal"))):
        line = one_line_error(wmplan(*args, cwd=home))
        assert f"names code to run ('{trap}' as its encoder)" in line and f"--encoder {trap}" in line, args
    assert not (home / "runs").exists() and "tests.platform.code_trap" not in sys.modules


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    import wmplan.cli as cli

    def broken(args):
        raise RuntimeError("the model server went away\nand Ray wrote a page about it")

    monkeypatch.setattr(cli, "_run_planners", broken)
    monkeypatch.delenv("WMPLAN_DEBUG", raising=False)
    assert main(["planners"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["wmplan: error: RuntimeError: the model server went away "
                                        "(run again with --debug for the traceback)"]
    assert main(["planners", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().endswith("the model server went away")
    monkeypatch.setenv("WMPLAN_DEBUG", "1")
    assert main(["planners"]) == 1 and "Traceback" in capsys.readouterr().err
