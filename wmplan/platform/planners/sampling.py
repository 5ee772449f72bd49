"""The sampling loop shared by CEM, MPPI and GRASP's CEM sync.

Each iteration draws ``N`` action sequences around a per-problem mean, clips them to the bounds,
scores them by the planning cost of their final state (:meth:`Problem.cost`; NaN and inf become
+inf, so they never win),
keeps the ``K`` elites and refits mean and standard deviation from them, with uniform weights
(CEM) or softmax weights on their normalised costs (MPPI). Sample 0 is always the current mean.

Batching: each iteration draws one ``[N, H, A]`` block of standard normal noise that every problem
of the batch scales by its own mean and standard deviation, so a problem's samples, and so its
plan, are exactly those it gets when planned alone with the same seed (the batch semantics of
:mod:`~wmplan.platform.planners.base`), and the draws cost ``1/B`` of one block per problem. (The
problems of one call thus share their random numbers; problems that must be searched with
independent noise are planned with different seeds.) On a CPU the samples are rolled out in slices
of at most ``rows_per_call`` (problem, sample) pairs, so that the model's activations stay in cache
and its buffers are reused instead of being taken fresh from the operating system at every step
(residual MLP, 3 x 256: the 4800 rows of ``B = 16``, ``N = 300`` in one call took 730 page faults
and 10% more CPU time per 300 rows than slices of 1200 rows); on a GPU they go in one call.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from wmplan.platform.options import require
from wmplan.platform.planners.base import Optimized, OptionsT, Planner, Problem, randn

CPU_ROWS_PER_CALL = 1024
"""Default most (problem, sample) pairs per model call on a CPU: for the residual MLP of the
benchmarks (hidden width 256) an activation is 1 MiB, an L2 cache here (of 300, 600, 1200, 2400 and
4800 rows per call, 1200 cost the least CPU time; the whole 4800 in one call, the most)."""


@dataclass(frozen=True)
class SamplingSchedule:
    """How a sampling planner refines its Gaussian, from the planner's options."""

    samples: int
    """``N``: action sequences per problem and iteration."""
    elites: int
    """``K``: best samples the distribution is refitted to."""
    iterations: int
    """Refinement iterations."""
    temperature: float | None = None
    """None: uniform elite weights (CEM); else softmax of ``-normalised cost / temperature`` (MPPI)."""
    min_std: float = 0.0
    """Lower clamp of the refitted standard deviation (unit action space)."""
    max_std: float = float("inf")
    """Upper clamp of the refitted standard deviation (unit action space)."""
    init_std: float = 1.0
    """Initial standard deviation of a planner's own search (unit action space)."""
    rows_per_call: int = 0
    """Most (problem, sample) pairs whose rollouts share one model call; 0: automatic (all at once on
    a GPU, :data:`CPU_ROWS_PER_CALL` elsewhere)."""

    def __post_init__(self) -> None:
        require(self.samples >= 1 and 1 <= self.elites <= self.samples, f"need 1 <= elites <= samples, got {self.elites}, {self.samples}")
        require(self.rows_per_call >= 0, f"rows_per_call must be >= 0 (0: automatic), got {self.rows_per_call}")


class Refined(NamedTuple):
    """What :func:`refine_by_sampling` returns."""

    mean: Tensor
    """``[B, H, A]`` the refined means (unit actions)."""
    std: Tensor
    """``[B, H, A]`` the refined standard deviations (unit actions)."""
    best_cost: Tensor
    """``[I, B]`` the best sample's cost in each iteration (+inf where no sample was finite)."""
    mean_elite_cost: Tensor
    """``[I, B]`` the mean cost of the finite elites in each iteration."""
    best_distance: Tensor
    """``[I, B]`` the Euclidean goal distance of the best sample's final state (+inf where no sample was finite)."""


def refine_by_sampling(
    problem: Problem,
    mean: Tensor,
    std: Tensor,
    schedule: SamplingSchedule,
    generator: torch.Generator,
    *,
    snapshot: bool = False,
) -> Refined:
    """Refine unit-action means by sampling.

    Args:
        problem: the batch of problems.
        mean: ``[B, H, A]`` initial means (unit actions).
        std: ``[B, H, A]`` initial standard deviations (unit actions).
        schedule: sample counts and weighting.
        generator: the planner's random generator.
        snapshot: offer the mean after each iteration to :meth:`Problem.snapshot` (the planner's
            own iterations, not a sync phase's).

    Returns:
        The refined distribution and per-iteration diagnostics (:class:`Refined`).
    """
    b, h, a = mean.shape
    n, k, iters = schedule.samples, schedule.elites, schedule.iterations
    best = torch.empty(iters, b, device=problem.device, dtype=mean.dtype)
    elite_mean = torch.empty_like(best)
    best_distance = torch.empty_like(best)
    slices = _slices(b, n, schedule.rows_per_call, problem.device)
    for i in range(iters):
        noise = randn((n, h, a), problem, generator)  # shared by the problems: see the module docs
        samples = (mean[:, None] + std[:, None] * noise).clamp_(-1.0, 1.0)
        samples[:, 0] = mean
        with torch.no_grad():
            if slices == 1:
                final = problem.final_states(samples)  # [B, N, D]
            else:
                final = torch.cat([problem.final_states(part) for part in samples.tensor_split(slices, dim=1)], dim=1)
            cost = problem.cost(final, problem.goal_like(final))  # [B, N]
        cost = torch.where(torch.isfinite(cost), cost, torch.inf)
        elite_cost, idx = torch.topk(cost, k, dim=1, largest=False)  # [B, K], ascending
        elites = torch.gather(samples, 1, idx[:, :, None, None].expand(b, k, h, a))
        finite = torch.isfinite(elite_cost)
        if schedule.temperature is None:
            logits = torch.zeros_like(elite_cost)
        else:
            lo = elite_cost[:, :1]
            spread = torch.where(finite, elite_cost, lo).amax(1, keepdim=True) - lo
            logits = -(elite_cost - lo) / (schedule.temperature * spread.clamp_min(1e-12))
        weights = torch.softmax(torch.where(finite, logits, -torch.inf), dim=1)
        weights = torch.nan_to_num(weights, nan=0.0)[:, :, None, None]  # all-inf rows get 0 weight
        new_mean = (weights * elites).sum(1)
        new_std = (weights * (elites - new_mean[:, None]).pow(2)).sum(1).sqrt()
        new_std = new_std.clamp(schedule.min_std, schedule.max_std)
        any_ok = finite[:, 0].view(b, 1, 1)  # problems with no finite sample keep their distribution
        mean = torch.where(any_ok, new_mean, mean)
        std = torch.where(any_ok, new_std, std)
        if snapshot:
            problem.snapshot(i + 1, mean)
        best[i] = elite_cost[:, 0]
        distance = problem.goal_distance(torch.gather(final, 1, idx[:, :1, None].expand(b, 1, final.shape[-1])))[:, 0]
        best_distance[i] = torch.where(finite[:, 0], distance, torch.inf)
        elite_mean[i] = torch.where(finite, elite_cost, 0.0).sum(1) / finite.sum(1).clamp_min(1)
        elite_mean[i] = torch.where(finite[:, 0], elite_mean[i], torch.inf)
    return Refined(mean, std, best, elite_mean, best_distance)


def _slices(batch: int, samples: int, rows_per_call: int, device: torch.device) -> int:
    """Into how many slices along the samples the ``batch x samples`` rollouts go (1: one model call per step)."""
    limit = rows_per_call or (0 if device.type == "cuda" else CPU_ROWS_PER_CALL)
    if limit == 0 or batch * samples <= limit:
        return 1
    return min(samples, -(-batch * samples // limit))


class SamplingPlanner(Planner[OptionsT]):
    """A planner that refines a Gaussian over action sequences by sampling; subclasses give the schedule."""

    stochastic_by_default = True

    @abc.abstractmethod
    def schedule(self) -> SamplingSchedule:
        """Sample counts, iterations and weighting, from the planner's options."""

    def transitions(self, *, warm_start: bool = False) -> int | None:
        """Per iteration, the H forward transitions of each sample's rollout (no gradients)."""
        schedule = self.schedule()
        return schedule.iterations * schedule.samples * self.options.horizon

    def _optimize(self, problem: Problem, generator: torch.Generator, init_u: Tensor | None) -> Optimized:
        schedule = self.schedule()
        mean = problem.zeros() if init_u is None else init_u
        std = torch.full_like(mean, schedule.init_std)
        refined = refine_by_sampling(problem, mean, std, schedule, generator, snapshot=True)
        problem.record_failures(refined.best_cost[-1])
        return Optimized(u=refined.mean, loss=refined.mean_elite_cost, goal_distance=refined.best_distance)
