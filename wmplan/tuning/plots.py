"""Figures of an Optuna study, as PNG bytes: no MLflow here (:mod:`wmplan.tuning.tracking` logs them).

Parameter importances and the slice plot are Optuna's own (``optuna.visualization.matplotlib``),
drawn for the success objective. The optimisation history is drawn here: Optuna's shows only
complete trials (and no best-so-far line once a target is chosen, as on a two-objective study),
while a study's pruned and failed trials are much of its story.

Optuna draws with pyplot and sets its own style; each figure is drawn inside
``matplotlib.rc_context()`` (the style is undone afterwards) and closed once saved.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from wmplan.storage.plots import figure, png_bytes

__all__ = [
    "SLICE_PARAMS",
    "optimization_history_png",
    "param_importances_png",
    "slice_png",
    "slice_params",
    "importances_possible",
]

SLICE_PARAMS = ("noise_scale", "sync_interval")
"""The parameters the slice plot shows when the study has them."""

_SUCCESS = "tuning success rate"


def optimization_history_png(trials: Sequence[FrozenTrial]) -> bytes:
    """Success per trial number: complete trials as dots with the best-so-far line, pruned ones at
    their last reported success (crosses), failed ones as ticks at the bottom."""
    fig = figure(width_in=6.5, height_in=4.0)
    ax = fig.add_subplot(1, 1, 1)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.values), key=lambda t: t.number)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if complete:
        xs = [t.number for t in complete]
        ys = [t.values[0] for t in complete]
        ax.plot(xs, ys, "o", color="tab:blue", label="complete")
        ax.step(xs, np.maximum.accumulate(ys), where="post", color="tab:red", label="best so far")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.plot([t.number for t in pruned], last, "x", color="tab:gray", label="pruned (last report)")
    if failed:
        ax.plot([t.number for t in failed], [0.0] * len(failed), "|", color="black", markersize=12, label="failed")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(_SUCCESS)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    if complete or pruned or failed:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


def param_importances_png(study: optuna.Study) -> bytes:
    """Optuna's parameter-importance chart (``plot_param_importances``, its default evaluator) for
    the success objective, the study's first."""
    from optuna.visualization.matplotlib import plot_param_importances

    if len(study.directions) == 1:
        return _optuna_png(lambda: plot_param_importances(study, target_name=_SUCCESS))
    # A target on a multi-objective study: Optuna's default evaluator (PED-ANOVA) explains *low*
    # targets, so a maximised success rate is negated; it warns about exactly this whenever a target is given.
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*achieve low `target` values.*")
        return _optuna_png(lambda: plot_param_importances(study, target=lambda t: sign * t.values[0], target_name=_SUCCESS))


def slice_png(study: optuna.Study, *, params: Sequence[str]) -> bytes:
    """Optuna's slice plot (``plot_slice``): success of the complete trials against each of
    ``params`` (one panel each; log and categorical axes as the search space has them)."""
    from optuna.visualization.matplotlib import plot_slice

    if not params:
        raise ValueError("the slice plot needs at least one parameter")
    target = None if len(study.directions) == 1 else (lambda t: t.values[0])
    return _optuna_png(lambda: plot_slice(study, params=list(params), target=target, target_name=_SUCCESS))


def slice_params(trials: Sequence[FrozenTrial]) -> list[str]:
    """The slice plot's parameters: :data:`SLICE_PARAMS` when the study has them, else its first two (by name)."""
    present: list[str] = []
    for t in trials:
        for name in t.distributions:
            if name not in present:
                present.append(name)
    preferred = [n for n in SLICE_PARAMS if n in present]
    return preferred if preferred else sorted(present)[:2]


def importances_possible(complete: Sequence[FrozenTrial]) -> bool:
    """At least two complete trials, and a param that took more than one value among them."""
    if len(complete) < 2:
        return False
    names = {n for t in complete for n in t.params}
    return any(len({repr(t.params.get(n)) for t in complete if n in t.params}) > 1 for n in names)


def _optuna_png(draw: Callable[[], Any]) -> bytes:
    """The PNG of the figure an ``optuna.visualization.matplotlib`` function draws (its Axes, or an array of them)."""
    import matplotlib
    import matplotlib.pyplot as plt

    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Attempting to set identical")  # a slice over one value
        axes = draw()
        fig = (axes.flat[0] if isinstance(axes, np.ndarray) else axes).figure
        try:
            return png_bytes(fig, tight=True)  # Optuna's figures leave long parameter names outside
        finally:
            plt.close(fig)
