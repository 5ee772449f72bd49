"""The paper's figure in one command: success and time to success against horizon, equal compute.

``wmplan bench horizon CONFIG [CONFIG ...]`` runs one sweep (:func:`~wmplan.tuning.sweep.run_sweep`) per
config file: for every planner and horizon an Optuna study on the tuning problems, every trial's
iterations fitted to the same budget of model transitions per planner call (``budget_per_step`` x H),
then the best options on held-out problems, each episode judged in the task's simulator with plan
snapshots every ``1/snapshots`` of the budget (time to success: the first snapshot that succeeds).
Each sweep records its own MLflow run (tables, episodes, plots) and resumes where it stopped; this
module then writes one Markdown report over all of them (default ``runs/horizon.md``) with, per
config, success against horizon (Wald 95% intervals) and median time (and transitions) to success
against horizon, and the plots beside it (``SWEEP/plots/*.png``).

The CPU configs are ``benchmarks/horizon/*.yaml``; ``benchmarks/horizon_gpu.yaml`` is the paper-sized
one for a machine with a GPU.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmplan.platform.errors import ConfigError
from wmplan.tuning.sweep import SweepConfig, SweepResult, load_sweep_config, run_sweep

__all__ = ["HorizonReport", "run_horizon", "format_report"]

DEFAULT_REPORT = Path("runs/horizon.md")


@dataclass(frozen=True)
class HorizonReport:
    """What ``wmplan bench horizon`` produced."""

    sweeps: list[SweepResult]
    """One per config, in the order given."""
    markdown: str
    """The report's text."""
    path: Path
    """Where the report was written."""


def _pct(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.0f}%"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None or math.isnan(x) else format(x, fmt)


def _table(result: SweepResult, planners: Sequence[str], horizons: Sequence[int], cell: Callable[[Mapping[str, Any]], str]) -> list[str]:
    rows = {(r["planner"], r["horizon"]): r for r in result.rows}
    lines = ["| H | " + " | ".join(planners) + " |", "|---|" + "---|" * len(planners)]
    for h in horizons:
        lines.append(f"| {h} | " + " | ".join(cell(rows[p, h]) for p in planners) + " |")
    return lines


def format_report(configs: Sequence[SweepConfig], results: Sequence[SweepResult], *, relative_to: Path) -> str:
    """The Markdown report: per sweep, success and time to success against horizon, every cell's budget."""
    lines = ["# Success and time to success against horizon", "",
             "Each section is one sweep (`wmplan bench horizon`): per planner and horizon an Optuna study on tuning "
             "problems, then the best options on held-out problems. Success is judged in the task's simulator; time "
             "to success is the median, over the successful episodes, of the wall time until the first plan snapshot "
             "that succeeds (the fixed budget's whole time in brackets).", ""]
    for config, result in zip(configs, results):
        planners, horizons = list(config.planners), list(config.horizons)
        budget = (f"{config.budget_per_step} x H model transitions per planner call" if config.budget_per_step
                  else "each planner's own iterations (no common budget)")
        lines += [f"## {config.name}: task {config.task}, model {config.model_label()}", "",
                  f"Device {result.device}; {config.trials} trials per cell on {config.tuning_episodes} tuning problems; "
                  f"{config.test_episodes} held-out problems per cell; budget {budget}; goals: "
                  f"{config.goal_mode or 'the task default'}.", "",
                  "Success [95% interval]:", ""]
        lines += _table(result, planners, horizons,
                        lambda r: f"{_pct(r['success_rate'])} [{_pct(r['success_low'])}, {_pct(r['success_high'])}]")
        lines += ["", "Median time to success, s (whole budget, s):", ""]
        lines += _table(result, planners, horizons,
                        lambda r: f"{_num(r['median_time_to_success_s'], '.3g')} ({_num(r['median_planning_time_s'], '.3g')})")
        lines += ["", "Median transitions to success / budget per call:", ""]
        lines += _table(result, planners, horizons,
                        lambda r: f"{_num(r['median_transitions_to_success'], ',.0f')} / {r['budget'] or '-'}")
        plots = result.directory / "plots"
        for name in ("success_vs_horizon.png", "success_time_vs_horizon.png"):
            if (plots / name).exists():
                lines += ["", f"![{config.name} {name[:-4]}]({Path(os.path.relpath(plots / name, relative_to)).as_posix()})"]
        lines += ["", f"Tables with options, trials and sync/lifted ratios: `{(result.directory / 'sweep.md').as_posix()}`.", ""]
    return "\n".join(lines)


def run_horizon(
    configs: Sequence[str | Path],
    *,
    overrides: Sequence[str] = (),
    report: str | os.PathLike[str] = DEFAULT_REPORT,
    say: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> HorizonReport:
    """Run (or resume) one sweep per config file, then write the report.

    Every config is read and validated (``overrides`` applied to each) before any sweep starts, so a
    typo in the last file fails in seconds, not after hours.

    Raises:
        ConfigError: no config given, or a config that does not validate.
    """
    if not configs:
        raise ConfigError("give at least one sweep config, e.g. benchmarks/horizon/linear.yaml")
    loaded = [load_sweep_config(path, overrides) for path in configs]
    names = [c.name for c in loaded]
    if len(set(names)) != len(names):
        raise ConfigError(f"two configs share a sweep name ({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
                          f"their studies would mix: give each its own name")
    results = []
    for k, config in enumerate(loaded):
        say(f"horizon benchmark {k + 1}/{len(loaded)}: sweep {config.name!r} ({config.task}, H = "
            f"{', '.join(map(str, config.horizons))})")
        results.append(run_sweep(config, say=say))
    path = Path(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    markdown = format_report(loaded, results, relative_to=path.parent)
    path.write_text(markdown)
    return HorizonReport(sweeps=results, markdown=markdown, path=path)
