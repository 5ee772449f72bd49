"""A non-convex analytic world model: a point among circular obstacles behind a smooth barrier.

:class:`~wmplan.platform.world_model.LinearModel` and :class:`~wmplan.platform.world_model.PointMass`
are nearly convex planning problems (``../shared/design/PROTOCOL.md``): Adam absorbs their
conditioning and CEM solves them with few samples, so they cannot separate planners. Here the
rollout is non-convex: a straight push toward a goal behind an obstacle ends pressed against it,
where the barrier cancels the normal component of the gradient (a contact), and a goal right
behind an obstacle's centre is a saddle for gradient descent through the rollout (the tangential
gradient vanishes by symmetry). The dynamics stay smooth and differentiable everywhere.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ObstacleField"]


class ObstacleField(nn.Module):
    """A 2-D point moved by bounded displacements and pushed out of circular obstacles.

    State ``[x, y]`` (world units), action ``[-1, 1]^2``. One step::

        q  = s + speed * a
        s' = q + sum_k  softplus(sharpness * (r_k - d_k)) / sharpness * (q - c_k) / d_k,
             d_k = sqrt(|q - c_k|^2 + 1e-6)

    The barrier term is a smooth ReLU of the penetration: a point that a step put inside obstacle
    ``k`` is put back (about) on its circle, on the side it came from; outside it decays as
    ``exp(-sharpness * distance) / sharpness``. A step moves at most ``speed * sqrt(2)``, less
    than the smallest radius, so no step jumps over an obstacle; obstacles keep ``gap`` between
    each other, more than one step, so the point can pass between them.

    The layout is drawn from ``layout_seed`` alone: centres uniform in ``[-extent, extent]^2``,
    radii uniform in ``[min_radius, max_radius]``, redrawn until every pair keeps ``gap``.

    Args:
        obstacles: ``K``, the number of obstacles (0: free space).
        layout_seed: seed of the layout.
        speed: world units one unit of action moves, per coordinate.
        min_radius: smallest obstacle radius (world units); above ``speed * sqrt(2)``.
        max_radius: largest obstacle radius.
        extent: centres lie in ``[-extent, extent]^2``.
        gap: the least free distance between two obstacles (world units); above ``speed * sqrt(2)``.
        sharpness: the barrier's stiffness in 1/world units (larger: closer to a hard projection).

    Raises:
        ValueError: parameters that let a step cross an obstacle or leave no room for the layout.
    """

    state_dim = 2
    action_dim = 2
    action_low: Tensor
    action_high: Tensor
    centers: Tensor
    """``[K, 2]`` obstacle centres."""
    radii: Tensor
    """``[K]`` obstacle radii."""

    def __init__(self, *, obstacles: int = 6, layout_seed: int = 0, speed: float = 0.2, min_radius: float = 0.5,
                 max_radius: float = 0.9, extent: float = 3.0, gap: float = 0.4, sharpness: float = 20.0) -> None:
        super().__init__()
        step = speed * math.sqrt(2.0)
        if obstacles < 0 or speed <= 0 or sharpness <= 0 or extent <= 0:
            raise ValueError(f"need obstacles >= 0 and positive speed, sharpness and extent; got obstacles={obstacles}, "
                             f"speed={speed}, sharpness={sharpness}, extent={extent}")
        if not step < min_radius <= max_radius:
            raise ValueError(f"need speed * sqrt(2) = {step:.3g} < min_radius <= max_radius (a step must not jump over "
                             f"an obstacle); got min_radius={min_radius}, max_radius={max_radius}")
        if gap <= step:
            raise ValueError(f"gap must be above speed * sqrt(2) = {step:.3g} (room to pass between obstacles), got {gap}")
        self.obstacles, self.layout_seed, self.speed, self.sharpness = int(obstacles), int(layout_seed), float(speed), float(sharpness)
        self.extent = float(extent)
        centers, radii = _layout(obstacles, seed=layout_seed, lo=min_radius, hi=max_radius, extent=extent, gap=gap)
        self.register_buffer("centers", centers)
        self.register_buffer("radii", radii)
        self.register_buffer("action_low", -torch.ones(2))
        self.register_buffer("action_high", torch.ones(2))

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        """``state [..., 2]``, ``action [..., 2]`` to the next state ``[..., 2]`` (differentiable in both)."""
        q = state + self.speed * action
        if self.obstacles == 0:
            return q
        offset = q.unsqueeze(-2) - self.centers  # [..., K, 2]
        d = torch.sqrt((offset * offset).sum(-1) + 1e-6)  # [..., K]
        push = nn.functional.softplus(self.sharpness * (self.radii - d)) / self.sharpness
        return q + ((push / d).unsqueeze(-1) * offset).sum(-2)

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        return self.step(state, action)

    def clearance(self, points: Tensor) -> Tensor:
        """Distance from ``points [..., 2]`` to the nearest obstacle's circle, ``[...]`` (negative inside one;
        ``inf`` without obstacles)."""
        if self.obstacles == 0:
            return torch.full(points.shape[:-1], math.inf, device=points.device)
        return (torch.linalg.vector_norm(points.unsqueeze(-2) - self.centers, dim=-1) - self.radii).min(-1).values

    def blocked(self, start: Tensor, goal: Tensor) -> Tensor:
        """Whether the straight segment from ``start [..., 2]`` to ``goal [..., 2]`` passes through an
        obstacle (comes closer to a centre than its radius), ``[...]`` bool."""
        if self.obstacles == 0:
            return torch.zeros(start.shape[:-1], dtype=torch.bool, device=start.device)
        a, d = start.unsqueeze(-2), (goal - start).unsqueeze(-2)  # [..., 1, 2]
        t = (((self.centers - a) * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-12)).clamp(0.0, 1.0)  # [..., K]
        nearest = a + t.unsqueeze(-1) * d
        return (torch.linalg.vector_norm(nearest - self.centers, dim=-1) < self.radii).any(-1)

    def free_points(self, count: int, *, generator: torch.Generator, margin: float = 0.1) -> Tensor:
        """``count`` points ``[count, 2]`` (CPU) uniform in ``[-extent - 1, extent + 1]^2`` at least ``margin``
        outside every obstacle, drawn from ``generator`` by rejection."""
        out = torch.empty(0, 2)
        half = self.extent + 1.0
        for _ in range(1000):
            candidates = (torch.rand(4 * count + 16, 2, generator=generator) * 2 - 1) * half
            keep = candidates[self.clearance(candidates.to(self.centers.device)).cpu() > margin]
            out = torch.cat([out, keep])[:count]
            if len(out) == count:
                return out
        raise RuntimeError("the obstacles leave no free room to draw points in")  # pragma: no cover - layouts keep gaps

    def extra_repr(self) -> str:
        return f"obstacles={self.obstacles}, layout_seed={self.layout_seed}, speed={self.speed}, sharpness={self.sharpness}"


def _layout(count: int, *, seed: int, lo: float, hi: float, extent: float, gap: float) -> tuple[Tensor, Tensor]:
    """``count`` centres ``[K, 2]`` and radii ``[K]`` from ``seed`` with ``gap`` between circles (rejection).

    Raises:
        ValueError: the obstacles cannot fit (disks of radius ``r + gap / 2`` in the box that holds them would
            be packed denser than the densest circle packing), or rejection found no room in ``300 * K`` draws.
    """
    needed = count * math.pi * (lo + gap / 2) ** 2
    placed = _fill(count, seed, lo, hi, extent, gap) if needed <= 0.9069 * (2 * extent + 2 * hi + gap) ** 2 else None
    if placed is None:
        raise ValueError(f"cannot place {count} obstacles of radius {lo}-{hi} with gap {gap} in [-{extent}, {extent}]^2; "
                         "use fewer or smaller obstacles, or a larger extent")
    return placed


def _fill(count: int, seed: int, lo: float, hi: float, extent: float, gap: float) -> tuple[Tensor, Tensor] | None:
    g = torch.Generator().manual_seed(seed)
    centers, radii = torch.zeros(0, 2), torch.zeros(0)
    for _ in range(300 * max(1, count)):
        if len(radii) == count:
            return centers, radii
        c = (torch.rand(2, generator=g) * 2 - 1) * extent
        r = lo + (hi - lo) * torch.rand(1, generator=g)
        if bool((torch.linalg.vector_norm(centers - c, dim=-1) >= radii + r + gap).all()):
            centers, radii = torch.cat([centers, c[None]]), torch.cat([radii, r])
    return (centers, radii) if len(radii) == count else None
