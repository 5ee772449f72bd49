"""A user's own world model, task and planner for wmplan: the worked plug-in example.

Each is named in wmplan's configs and command lines by ``package.module:callable``, imported in
the driver and in every Ray actor (so this package must be installed where they run):

=======  =============================================================  ======================
kind     spec                                                           config key
=======  =============================================================  ======================
task     ``wmplan_plugin_example.task:LowDoorWall``                     ``task``
model    ``wmplan_plugin_example.model:load_model``                     ``model`` (and its
                                                                        ``model_options``)
planner  ``wmplan_plugin_example.planner:RandomShooting``               a ``planners`` key
=======  =============================================================  ======================

``python -m wmplan_plugin_example.train --out DIR`` trains the model (CPU, nothing downloaded).
"""

TASK = "wmplan_plugin_example.task:LowDoorWall"
"""The task's spec."""
MODEL = "wmplan_plugin_example.model:load_model"
"""The model factory's spec (its option: ``checkpoint``)."""
PLANNER = "wmplan_plugin_example.planner:RandomShooting"
"""The planner's spec."""

__all__ = ["TASK", "MODEL", "PLANNER"]
