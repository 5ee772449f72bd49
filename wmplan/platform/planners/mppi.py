"""Model-predictive path integral control over action sequences, in TD-MPC2's form."""

from __future__ import annotations

from dataclasses import dataclass

from wmplan.platform.options import require
from wmplan.platform.planners.base import PlannerOptions
from wmplan.platform.planners.sampling import SamplingPlanner, SamplingSchedule


@dataclass(frozen=True, kw_only=True)
class MPPIOptions(PlannerOptions):
    """MPPI options; defaults follow TD-MPC2's planner."""

    iterations: int = 6
    """Refinement iterations."""
    samples: int = 512
    """Action sequences sampled per problem and iteration (sample 0 is the mean)."""
    elites: int = 64
    """Best samples that receive a weight."""
    temperature: float = 0.5
    """Softmax temperature on elite costs normalised to [0, 1] per problem (smaller is greedier)."""
    init_std: float = 2.0
    """Initial standard deviation in the unit action space."""
    min_std: float = 0.05
    """Lower clamp of the refitted standard deviation."""
    max_std: float = 2.0
    """Upper clamp of the refitted standard deviation."""
    rows_per_call: int = 0
    """Most (problem, sample) pairs rolled out in one model call; 0: automatic (all at once on a GPU,
    1024 on a CPU, where a smaller working set is faster). Plans do not depend on it beyond float rounding."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.samples >= 2, f"samples must be >= 2, got {self.samples}")
        require(1 <= self.elites <= self.samples, f"elites must be in [1, samples={self.samples}], got {self.elites}")
        require(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        require(self.init_std > 0, f"init_std must be > 0, got {self.init_std}")
        require(self.rows_per_call >= 0, f"rows_per_call must be >= 0 (0: automatic), got {self.rows_per_call}")
        require(0 <= self.min_std <= self.max_std, f"need 0 <= min_std <= max_std, got {self.min_std}, {self.max_std}")


class MPPI(SamplingPlanner[MPPIOptions]):
    """MPPI: a softmax-weighted refit of a Gaussian over action sequences to the elite samples.

    Costs are normalised to [0, 1] over each problem's elites before the softmax, so the
    temperature does not depend on the scale of the state space. Returns the final mean.
    Reference: Williams et al. (2017); Hansen et al., TD-MPC2 (2024).
    """

    name = "mppi"
    Options = MPPIOptions

    def schedule(self) -> SamplingSchedule:
        o = self.options
        return SamplingSchedule(
            samples=o.samples, elites=o.elites, iterations=o.iterations, init_std=o.init_std,
            temperature=o.temperature, min_std=o.min_std, max_std=o.max_std, rows_per_call=o.rows_per_call,
        )
