"""Rules about a study's trials that the study driver and its MLflow records share."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.trial import FrozenTrial

from wmplan.platform.planners import GRASP, Planner, fit_budget, make_planner

__all__ = ["best_trial", "trial_options", "compute_attrs", "sync_ratio", "COMPUTE_ATTRS"]

COMPUTE_ATTRS = ("budget", "predicted_transitions", "sync_ratio")
"""The user attributes of every trial that record its compute (:func:`compute_attrs`)."""


def best_trial(complete: Sequence[FrozenTrial]) -> FrozenTrial:
    """The best of complete trials: the highest tuning success; on a tie (or on the Pareto front
    of a time objective) the faster one. The one rule for the held-out test and the records."""
    return max(complete, key=lambda t: (t.values[0], -(t.values[1] if len(t.values) > 1 else 0.0)))


def trial_options(planner: str, suggested: Mapping[str, Any], *, horizon: int, budget: int) -> dict[str, Any]:
    """The options a trial runs with, from the options its search space suggested.

    With a budget (model transitions per planner call), ``iterations`` are fitted to it
    (:func:`~wmplan.platform.planners.fit_budget`: the most that fit, whole sync periods for
    GRASP). Without one, the iterations (suggested, or the planner's default) are rounded to the
    nearest multiple of the planner's :meth:`~wmplan.platform.planners.Planner.iteration_period`
    (at least one period), so a GRASP run ends on a sync; other planners' options are unchanged.

    Raises:
        ConfigError: invalid options, or a budget too small for them (the message names the minimum).
    """
    if budget:
        return fit_budget(planner, suggested, horizon=horizon, budget=budget)
    options = dict(suggested)
    p = make_planner(planner, horizon=horizon, **options)
    period = p.iteration_period()
    if period > 1:
        options["iterations"] = max(1, math.floor(p.options.iterations / period + 0.5)) * period
    return options


def sync_ratio(planner: Planner[Any]) -> float | None:
    """GRASP's serial (sync) steps per lifted step, ``sync_steps x sync phases / iterations``; None for other planners."""
    if not isinstance(planner, GRASP):
        return None
    return planner.options.sync_steps * planner.sync_phases() / planner.options.iterations


def compute_attrs(planner: str, options: Mapping[str, Any], *, horizon: int, budget: int) -> dict[str, Any]:
    """What a trial records of its compute: ``budget`` (0: none), ``predicted_transitions`` per
    problem and planner call (None for a planner that declares no count) and GRASP's ``sync_ratio``."""
    p = make_planner(planner, horizon=horizon, **options)
    return {"budget": budget, "predicted_transitions": p.transitions(), "sync_ratio": sync_ratio(p)}
