"""The built-in comparison: every planner on the same batch of reachable problems of an analytic model."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from wmplan.platform.errors import ConfigError, unknown_name_error
from wmplan.platform.planners import make_planner
from wmplan.platform.problems import reachable_problems
from wmplan.platform.stats import wald_interval
from wmplan.platform.world_model import LinearModel, PointMass

ANALYTIC_MODELS: dict[str, Callable[[], LinearModel | PointMass]] = {
    "linear": lambda: LinearModel.rotation(dim=2, radius=1.0, angle=0.3),
    "pointmass": lambda: PointMass(dims=2, dt=0.2, damping=0.2),
}


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; anything else must exist on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for, but this machine has no CUDA device")
    return device


@dataclass(frozen=True)
class DemoRow:
    planner: str
    horizon: int
    problems: int
    successes: int
    failed: int
    median_distance: float
    wall_time_s: float
    iterations: int


def run_demo(
    *,
    model: str,
    planners: Sequence[str],
    horizons: Sequence[int],
    problems: int,
    tolerance: float,
    seed: int,
    device: str,
    overrides: Mapping[str, Mapping[str, object]],
    progress: Callable[[str], None] | None = None,
) -> list[DemoRow]:
    """Plan ``problems`` reachable problems per horizon with each planner; one row per pair.

    All planners are built (and their options validated) before any planning starts.
    """
    if model not in ANALYTIC_MODELS:
        raise unknown_name_error("analytic model", model, ANALYTIC_MODELS)
    if problems < 1:
        raise ConfigError(f"problems must be >= 1, got {problems}")
    if not planners or not horizons:
        raise ConfigError("need at least one planner and one horizon")
    dev = resolve_device(device)
    world = ANALYTIC_MODELS[model]().to(dev)
    built = {(p, h): make_planner(p, horizon=h, **overrides.get(p, {})) for h in horizons for p in planners}
    rows = []
    for h in horizons:
        start, goal = reachable_problems(world, problems, h, seed=seed, device=dev)
        for p in planners:
            result = built[p, h].plan(world, start, goal, seed=seed)
            dist = result.final_distance.cpu()
            finite = dist[torch.isfinite(dist)].tolist()
            rows.append(DemoRow(
                planner=p, horizon=h, problems=problems,
                successes=int((dist < tolerance).sum()), failed=int(result.failed.sum()),
                median_distance=statistics.median(finite) if finite else float("inf"),
                wall_time_s=result.wall_time_s, iterations=result.iterations,
            ))
            if progress:
                progress(f"planned {p} H={h}: {result.wall_time_s:.2f} s")
    return rows


def format_table(rows: Sequence[DemoRow], *, tolerance: float) -> str:
    """A Markdown table of the rows."""
    lines = [
        f"| planner | H | success (dist < {tolerance:g}) [95% CI] | median distance | time (s) | ms / iteration |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate, lo, hi = wald_interval(r.successes, r.problems)
        lines.append(
            f"| {r.planner} | {r.horizon} | {100 * rate:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] | {r.median_distance:.4f} | "
            f"{r.wall_time_s:.2f} | {1000 * r.wall_time_s / r.iterations:.2f} |"
        )
    return "\n".join(lines)
