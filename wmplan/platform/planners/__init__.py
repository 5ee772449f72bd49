"""Planners: GRASP and its baselines behind one interface.

>>> planner = make_planner("grasp", horizon=20, iterations=200, noise_scale=0.01)
>>> result = planner.plan(model, start, goal, seed=0)  # doctest: +SKIP

Every function here takes a planner's built-in name or a plug-in ``package.module:Class``
(:mod:`wmplan.platform.registry`).
"""

from __future__ import annotations

from typing import Any

from wmplan.platform.options import build_options
from wmplan.platform.planners.base import (
    CountedModel,
    Optimized,
    Planner,
    PlannerOptions,
    PlanResult,
    PlanTrace,
    Problem,
    randn,
    rollout,
    terminal_cost,
)
from wmplan.platform.planners.budget import fit_budget
from wmplan.platform.planners.cem import CEM, CEMOptions
from wmplan.platform.planners.gd import GD, GDOptions
from wmplan.platform.planners.grasp import GRASP, GRASPOptions, lifted_loss
from wmplan.platform.planners.latco import LatCo, LatCoOptions
from wmplan.platform.planners.mppi import MPPI, MPPIOptions
from wmplan.platform.registry import PLANNERS, planner_class

__all__ = [
    "PLANNERS", "make_planner", "planner_class", "Planner", "PlannerOptions", "PlanResult", "PlanTrace",
    "Problem", "Optimized", "CountedModel", "randn", "fit_budget",
    "GRASP", "GRASPOptions", "GD", "GDOptions", "CEM", "CEMOptions", "LatCo", "LatCoOptions",
    "MPPI", "MPPIOptions", "lifted_loss", "rollout", "terminal_cost",
]



def make_planner(name: str, /, **options: Any) -> Planner[Any]:
    """Create the planner ``name`` (a name in :data:`PLANNERS` or ``package.module:Class``) with ``options``.

    Raises:
        ConfigError: for an unknown planner or option (the message lists the valid ones), an
            invalid option value, or a plug-in spec that cannot be imported or is no planner.
    """
    cls = planner_class(name)
    return cls(build_options(cls.Options, options, owner=f"planner {name!r}"))
