"""Equal compute: fit a planner's iterations to a budget of model transitions.

A budget is the model transitions per problem that one :meth:`~wmplan.platform.planners.Planner.plan`
call may spend, forward and backward (see :mod:`wmplan.platform.planners.base`); every planner
predicts its own count (:meth:`~wmplan.platform.planners.Planner.transitions`), so one budget means
the same compute for all of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from wmplan.platform.errors import ConfigError
from wmplan.platform.options import build_options
from wmplan.platform.planners.base import Planner
from wmplan.platform.registry import planner_class

__all__ = ["fit_budget"]


def fit_budget(planner: str, options: Mapping[str, Any], *, horizon: int, budget: int) -> dict[str, Any]:
    """``options`` with ``iterations`` set to the most whose predicted transitions fit ``budget``.

    The iterations are a multiple of the planner's :meth:`~wmplan.platform.planners.Planner.iteration_period`
    (GRASP with ``sync_interval > 0``: the run ends on a sync). Predicted transitions are assumed
    to grow with the iterations, and a cold start (no ``init_actions``) is assumed.

    Args:
        planner: a built-in name or ``package.module:Class``.
        options: the planner's other options (an ``iterations`` there is replaced; no ``horizon``,
            or the same as ``horizon``).
        horizon: the planning horizon H.
        budget: model transitions per problem and planner call, forward plus backward.

    Raises:
        ConfigError: invalid options; a planner that declares no transition count; a budget too
            small for one iteration (one sync period for GRASP), naming the minimum.
    """
    if budget < 1:
        raise ConfigError(f"planner {planner!r}: budget must be >= 1 model transition, got {budget}")
    if "horizon" in options and options["horizon"] != horizon:
        raise ConfigError(f"planner {planner!r}: options set horizon {options['horizon']} but the budget is for horizon {horizon}")
    cls = planner_class(planner)
    probe = cls(build_options(cls.Options, {**options, "horizon": horizon, "iterations": 1}, owner=f"planner {planner!r}"))
    period = probe.iteration_period()

    def cost(periods: int) -> int:
        return _predict(cls(dataclasses.replace(probe.options, iterations=periods * period)), planner)

    least = cost(1)
    if least > budget:
        what = "one iteration" if period == 1 else f"one sync period ({period} iterations)"
        raise ConfigError(
            f"planner {planner!r}: a budget of {budget} transitions is too small for {what}; the minimum is {least}"
        )
    lo, hi = 1, 2  # cost(lo) <= budget; find hi with cost(hi) > budget (at most `budget` periods)
    while hi <= budget and cost(hi) <= budget:
        lo, hi = hi, 2 * hi
    hi = min(hi, budget + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid)
    return {**options, "iterations": lo * period}


def _predict(planner: Planner[Any], name: str) -> int:
    count = planner.transitions()
    if count is None:
        raise ConfigError(
            f"planner {name!r} declares no transition count ({type(planner).__name__}.transitions returns None), "
            "so it cannot be fitted to a budget"
        )
    return count
