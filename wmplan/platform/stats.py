"""Small statistics used to report results."""

from __future__ import annotations

import math

__all__ = ["wald_interval"]


def wald_interval(successes: int, trials: int, *, z: float = 1.959964) -> tuple[float, float, float]:
    """Success rate and its Wald interval (95% by default), clipped to [0, 1].

    Returns:
        ``(rate, low, high)``; all NaN when ``trials`` is 0.
    """
    if trials <= 0:
        return (math.nan, math.nan, math.nan)
    p = successes / trials
    half = z * math.sqrt(p * (1 - p) / trials)
    return p, max(0.0, p - half), min(1.0, p + half)
