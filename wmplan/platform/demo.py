"""The built-in comparison: every planner on the same batch of reachable problems of an analytic model.

The analytic models are the tasks that plan with their exact dynamics by default
(:func:`wmplan.platform.registry.default_model_is_exact`:
``linear``, ``pointmass`` and ``obstacles`` of :mod:`wmplan.platform.envs.analytic`, or a user's), built
with their parameters as task options (``radius``, ``dt``, ``obstacles``, ...). The problems are the
task's own goal mode ``reachable`` (goals ``H`` steps of correlated random actions away), so the demo
plans exactly what ``wmplan run --task NAME`` plans.
"""

from __future__ import annotations

import inspect
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from wmplan.platform.envs import Env
from wmplan.platform.errors import ConfigError, unknown_name_error
from wmplan.platform.planners import make_planner
from wmplan.platform.problems import far_problems
from wmplan.platform.registry import default_model_is_exact, make_task, names, task_class
from wmplan.platform.stats import wald_interval
from wmplan.platform.world_model import WorldModel


def analytic_models() -> tuple[str, ...]:
    """The names of the tasks that plan with their exact dynamics by default (the demo's models; not Wall,
    whose exact dynamics are a ceiling to measure), sorted."""
    found = []
    for name in names("task"):
        try:
            if default_model_is_exact(task_class(name)):
                found.append(name)
        except Exception:  # noqa: BLE001 - a task that cannot be resolved here is not an analytic model
            continue
    return tuple(found)


def model_parameters(model: str) -> tuple[str, ...]:
    """The parameters of analytic model ``model``: its task's keyword options other than ``seed``."""
    signature = inspect.signature(task_class(model))
    return tuple(p.name for p in signature.parameters.values()
                 if p.name != "seed" and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))


def build_analytic(model: str, parameters: Mapping[str, Any]) -> Env:
    """The analytic task ``model`` built with ``parameters`` (its task options).

    Raises:
        ConfigError: ``model`` is no task with exact dynamics, a parameter it does not take (named as
            its flag, with the ones it takes), or a value it refuses.
    """
    valid = analytic_models()
    if model not in valid:
        raise unknown_name_error("analytic model", model, valid)
    takes = model_parameters(model)
    wrong = [k for k in parameters if k not in takes]
    if wrong:
        flag = "--" + wrong[0].replace("_", "-")
        its = ", ".join("--" + p.replace("_", "-") for p in takes) or "none"
        raise ConfigError(f"model {model!r} takes no {flag}; its parameters: {its}")
    try:
        return make_task(model, **parameters)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"model {model!r}: {exc}") from None


def demo_problems(env: Env, world: WorldModel, count: int, horizon: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` problems ``(start [B, D], goal [B, D])`` of ``horizon`` steps on ``world``'s device: the
    task's ``reachable_problems`` when it has them, else :func:`far_problems` from standard normal starts."""
    own = getattr(env, "reachable_problems", None)
    if callable(own):
        start, goal = own(count, horizon, seed=seed, model=world)
        return start, goal
    return far_problems(world, count, horizon, seed=seed, device=world.action_low.device)


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
    parameters: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[DemoRow]:
    """Plan ``problems`` reachable problems per horizon with each planner; one row per pair.

    ``model`` is an analytic model (:func:`analytic_models`) built with ``parameters``
    (:func:`build_analytic`). The model, its parameters and all planners are built (and their options
    validated) before any planning starts.
    """
    env = build_analytic(model, parameters or {})
    if problems < 1:
        raise ConfigError(f"problems must be >= 1, got {problems}")
    if not planners or not horizons:
        raise ConfigError("need at least one planner and one horizon")
    dev = resolve_device(device)
    world: WorldModel = cast(Any, env).exact_model(device=dev)  # build_analytic checked that it has one
    built = {(p, h): make_planner(p, horizon=h, **overrides.get(p, {})) for h in horizons for p in planners}
    rows = []
    for h in horizons:
        start, goal = demo_problems(env, world, problems, h, seed=seed)
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
