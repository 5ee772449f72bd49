"""benchmarks/gpu_check.sh on CPU in quick mode: it writes its tables, they hold numbers, GPU parts say they skip."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path (a CUDA machine runs the whole check by hand)")
def test_gpu_check_quick_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "RAY_AUTH_MODE": "disabled",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--quick"], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "no CUDA device: skipping the CUDA contract tests" in done.stdout
    assert "no CUDA device: skipping the ray part" in done.stdout
    for part in ("planners", "visual", "sweep"):
        table = (tmp_path / "out" / f"{part}.md").read_text()
        assert table in done.stdout  # printed as written
        _header, *body = [line for line in table.splitlines() if line.startswith("|") and not line.startswith("|---")]
        assert body, table
        for row in body:
            assert re.search(r"\d", row) and "nan" not in row.lower(), row
    planners = (tmp_path / "out" / "planners.md").read_text()
    assert re.search(r"\| 10 \| 16 \| 160 \| [\d.]+ \|", planners)  # H, B, B x H, then times
    assert not (tmp_path / "out" / "ray.md").exists() and not (tmp_path / "out" / "contract.md").exists()
