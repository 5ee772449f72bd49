"""Planners: GRASP and its baselines behind one interface.

>>> planner = make_planner("grasp", horizon=20, iterations=200, noise_scale=0.01)
>>> result = planner.plan(model, start, goal, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from wmplan.platform.errors import unknown_name_error
from wmplan.platform.options import build_options
from wmplan.platform.planners.base import Planner, PlannerOptions, PlanResult, PlanTrace, rollout, terminal_cost
from wmplan.platform.planners.cem import CEM, CEMOptions
from wmplan.platform.planners.gd import GD, GDOptions
from wmplan.platform.planners.grasp import GRASP, GRASPOptions, lifted_loss
from wmplan.platform.planners.latco import LatCo, LatCoOptions
from wmplan.platform.planners.mppi import MPPI, MPPIOptions

__all__ = [
    "PLANNERS", "make_planner", "planner_class", "Planner", "PlannerOptions", "PlanResult", "PlanTrace",
    "GRASP", "GRASPOptions", "GD", "GDOptions", "CEM", "CEMOptions", "LatCo", "LatCoOptions",
    "MPPI", "MPPIOptions", "lifted_loss", "rollout", "terminal_cost",
]

PLANNERS: dict[str, type[Planner]] = {cls.name: cls for cls in (GRASP, GD, CEM, LatCo, MPPI)}
"""Every planner by name."""


def planner_class(name: str) -> type[Planner]:
    """The planner class called ``name``; raises ConfigError listing the valid names."""
    try:
        return PLANNERS[name]
    except KeyError:
        raise unknown_name_error("planner", name, PLANNERS) from None


def make_planner(name: str, /, **options: Any) -> Planner:
    """Create the planner ``name`` (one of :data:`PLANNERS`) with ``options``.

    Raises:
        ConfigError: for an unknown planner or option (the message lists the valid ones) or an
            invalid option value.
    """
    cls = planner_class(name)
    return cls(build_options(cls.Options, options, owner=f"planner {name!r}"))
