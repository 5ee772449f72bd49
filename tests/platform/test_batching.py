"""Batching: a problem planned in a batch gets the plan it gets alone (sampling planners and GRASP's
CEM sync), whatever the slices its samples are rolled out in; and benchmarks/batching.py's smoke run."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from wmplan.platform.errors import ConfigError
from wmplan.platform.models import ResidualMLP
from wmplan.platform.planners import PLANNERS, make_planner
from wmplan.platform.planners.sampling import CPU_ROWS_PER_CALL, _slices
from wmplan.platform.problems import reachable_problems

ROOT = Path(__file__).resolve().parents[2]

# Every planner whose only randomness is refine_by_sampling's (GRASP without its state noise, with a CEM sync).
SAMPLING = {
    "cem": dict(iterations=4, samples=48, elites=6),
    "mppi": dict(iterations=4, samples=48, elites=6),
    "grasp": dict(iterations=6, sync_interval=3, sync_mode="cem", sync_steps=2, sync_samples=24, sync_elites=4, noise_scale=0.0),
}


@pytest.fixture
def mlp():
    return ResidualMLP(6, 3, hidden=32, depth=2, seed=0)


@pytest.mark.parametrize("name", sorted(SAMPLING))
def test_a_batched_problem_gets_the_plan_it_gets_alone(name, mlp):
    start, goal = reachable_problems(mlp, 5, 6, seed=3)
    planner = make_planner(name, horizon=6, **SAMPLING[name])
    whole = planner.plan(mlp, start, goal, seed=11)
    for i in range(5):
        alone = planner.plan(mlp, start[i : i + 1], goal[i : i + 1], seed=11)
        torch.testing.assert_close(alone.actions, whole.actions[i : i + 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone.trace.loss, whole.trace.loss[:, i : i + 1], atol=1e-5, rtol=1e-4)
    assert not torch.equal(whole.actions[0], whole.actions[1])  # the problems differ, so equal plans mean something


@pytest.mark.parametrize("name", ["cem", "mppi"])
@pytest.mark.parametrize("rows", [1, 7, 100])
def test_plans_do_not_depend_on_the_rows_per_model_call(name, rows, mlp):
    start, goal = reachable_problems(mlp, 4, 5, seed=1)
    one_call = make_planner(name, horizon=5, **SAMPLING[name], rows_per_call=10**6).plan(mlp, start, goal, seed=2)
    sliced = make_planner(name, horizon=5, **SAMPLING[name], rows_per_call=rows).plan(mlp, start, goal, seed=2)
    torch.testing.assert_close(sliced.actions, one_call.actions, atol=1e-5, rtol=1e-5)
    assert sliced.transitions == one_call.transitions  # the same work, counted the same


def test_slices_keep_each_model_call_within_the_rows():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert _slices(16, 300, 0, cpu) == math.ceil(16 * 300 / CPU_ROWS_PER_CALL)
    assert _slices(1, 300, 0, cpu) == 1  # a small batch goes in one call
    assert _slices(16, 300, 0, cuda) == 1  # a GPU takes the whole batch at once
    assert _slices(16, 300, 1000, cuda) == 5
    assert _slices(64, 300, 10, cpu) == 300  # never thinner than one sample of every problem


@pytest.mark.parametrize("name", ["cem", "mppi"])
def test_negative_rows_per_call_is_refused(name):
    with pytest.raises(ConfigError, match="rows_per_call must be >= 0"):
        make_planner(name, rows_per_call=-1)


def test_the_batching_benchmark_has_a_row_per_planner_and_batch(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("batching_benchmark", ROOT / "benchmarks" / "batching.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclass looks its module up
    spec.loader.exec_module(bench)
    rows = bench.main(["--quick"])
    out = capsys.readouterr().out
    assert {(r.planner, r.batch) for r in rows} == {(n, b) for n in PLANNERS for b in (1, 2)}
    for r in rows:
        assert f"| {r.planner} | {r.iterations} | {r.batch} |" in out
        assert r.batched_ms > 0 and r.looped_ms > 0 and math.isfinite(r.ratio)
        if r.planner in ("cem", "mppi") or r.batch == 1:
            assert r.plan_diff <= 1e-5, r  # the same seed gives a problem the same plan in a batch or alone
    assert "machine:" in out and "load average" in out
