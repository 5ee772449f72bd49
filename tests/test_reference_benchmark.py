"""benchmarks/reference.py at tiny sizes: it runs the README's commands, writes the table it prints, reuses what exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _reference(*args: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, "benchmarks/reference.py", "--out", str(out), *args], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600, check=False)


@pytest.mark.integration
def test_reference_quick_runs_the_readme_commands_and_tabulates(tmp_path):
    out = tmp_path / "ref"
    done = _reference("--quick", "--recipes", "wall-state,pointmaze-pixels,wall-exact", out=out)
    assert done.returncode == 0, done.stdout[-4000:]
    commands = [line[2:] for line in done.stdout.splitlines() if line.startswith("$ ")]
    assert any(re.search(r"-m wmplan data --env wall --policy uniform ", c) for c in commands)
    assert any(re.search(r"-m wmplan train --env wall --obs state .* --env-step-predictor --activation relu", c) for c in commands)
    assert any(re.search(r"-m wmplan train --env pointmaze --obs pixels .*--predictor-steps 3", c) for c in commands)
    assert sum("-m wmplan plan " in c for c in commands) == 3
    assert any(re.search(r"-m wmplan plan --task wall --model exact --planners cem,gd,grasp ", c) for c in commands)
    assert not any("--env wall --obs exact" in c for c in commands)  # Wall's own dynamics: no data, no training
    table = (out / "reference.md").read_text()
    assert table.strip() in done.stdout
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| recipe")]
    assert [r.split(" | ")[0:2] for r in rows] == [["| wall-state", p] for p in ("cem", "gd", "grasp")] + [
        ["| pointmaze-pixels", p] for p in ("cem", "gd", "grasp")] + [["| wall-exact", p] for p in ("cem", "gd", "grasp")]
    for row in rows[:6]:
        assert re.search(r"\| \d+\.\d% \[\d+\.\d, \d+\.\d\] \(2\) \| \d+% \| [+-]\d+ \| (-|0) \| \d+\.\d s \|", row), row
    for row in rows[6:]:  # the exact dynamics predict what the simulator does: no gap, no training
        assert re.search(r"\| \d+\.\d% \[\d+\.\d, \d+\.\d\] \(2\) \| \d+% \| \+0 \| - \| - \| ceiling \(no model error\) \|", row), row
    assert "80% (DINO-WM, pixels)" in rows[3] and "90% (issue 14)" in rows[0]
    again = _reference("--quick", "--recipes", "wall-state", out=out)  # data, model and runs exist: nothing is redone
    assert again.returncode == 0 and "$ " not in again.stdout and rows[0] in again.stdout
    bad = _reference("--recipes", "wall-pictures", out=out)
    assert bad.returncode == 2 and "unknown recipe 'wall-pictures'" in bad.stdout


def test_reference_recipes_follow_dino_wm_and_the_measured_recipes(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("reference_benchmark", ROOT / "benchmarks" / "reference.py")
    assert spec is not None and spec.loader is not None
    reference = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "reference_benchmark", reference)  # its dataclasses look their module up
    spec.loader.exec_module(reference)
    cpu, gpu = reference.recipes(gpu=False), reference.recipes(gpu=True)
    assert {name: r.proprio_weight for name, r in cpu.items() if r.obs == "pixels"} == {
        "wall-pixels": 1.0, "pointmaze-pixels": 0.0, "pusht-pixels": 1.0}  # DINO-WM's alpha per task
    assert "--policy" in cpu["wall-state"].data and "--env-step-predictor" in cpu["pointmaze-state"].train
    train = gpu["pusht-pixels"].train
    assert "18500" in gpu["pusht-pixels"].data and train[train.index("--preset") + 1] == "gpu"
    assert "cuda" in gpu["pusht-pixels"].train and "cuda" not in cpu["pusht-pixels"].train
    assert reference.quick_train(cpu["wall-pixels"])[:2] == ("--steps", "3")  # Wall's recipe is the JEPA: no encoder steps
    assert "--encoder-steps" not in reference.quick_train(cpu["wall-pixels"])
