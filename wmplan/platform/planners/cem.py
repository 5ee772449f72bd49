"""Cross-entropy method over action sequences (DINO-WM's planning baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from wmplan.platform.options import require
from wmplan.platform.planners.base import PlannerOptions
from wmplan.platform.planners.sampling import SamplingPlanner, SamplingSchedule


@dataclass(frozen=True, kw_only=True)
class CEMOptions(PlannerOptions):
    """CEM options; defaults are DINO-WM's."""

    iterations: int = 30
    """CEM iterations (DINO-WM: 30 on Push-T, 10 on PointMaze and Wall)."""
    samples: int = 300
    """Action sequences sampled per problem and iteration (sample 0 is the mean)."""
    elites: int = 30
    """Best samples the distribution is refitted to."""
    init_std: float = 1.0
    """Initial standard deviation in the unit action space ([-1, 1] spans the bounds)."""
    rows_per_call: int = 0
    """Most (problem, sample) pairs rolled out in one model call; 0: automatic (all at once on a GPU,
    1024 on a CPU, where a smaller working set is faster). Plans do not depend on it beyond float rounding."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.samples >= 2, f"samples must be >= 2, got {self.samples}")
        require(1 <= self.elites <= self.samples, f"elites must be in [1, samples={self.samples}], got {self.elites}")
        require(self.init_std > 0, f"init_std must be > 0, got {self.init_std}")
        require(self.rows_per_call >= 0, f"rows_per_call must be >= 0 (0: automatic), got {self.rows_per_call}")


class CEM(SamplingPlanner[CEMOptions]):
    """Cross-entropy method: refit a diagonal Gaussian over action sequences to the elites.

    Returns the final mean. Reference: Rubinstein (1999); as used by DINO-WM (Zhou et al., 2024).
    """

    name = "cem"
    Options = CEMOptions

    def schedule(self) -> SamplingSchedule:
        o = self.options
        return SamplingSchedule(samples=o.samples, elites=o.elites, iterations=o.iterations, init_std=o.init_std,
                                rows_per_call=o.rows_per_call)
