"""Rules about a study's trials that the study driver and its MLflow records share."""

from __future__ import annotations

from collections.abc import Sequence

from optuna.trial import FrozenTrial

__all__ = ["best_trial"]


def best_trial(complete: Sequence[FrozenTrial]) -> FrozenTrial:
    """The best of complete trials: the highest tuning success; on a tie (or on the Pareto front
    of a time objective) the faster one. The one rule for the held-out test and the records."""
    return max(complete, key=lambda t: (t.values[0], -(t.values[1] if len(t.values) > 1 else 0.0)))
