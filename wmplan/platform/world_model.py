"""The world-model interface that planners use, and two analytic models for tests and demos.

A world model is a differentiable transition function ``F(s, a) -> s'``. Planners see nothing
else: no simulator, no reward, no environment. Anything with these attributes is a world model
(structural typing), including the learned models of :mod:`wmplan.platform.models`.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = ["WorldModel", "LinearModel", "PointMass", "check_world_model"]


@runtime_checkable
class WorldModel(Protocol):
    """A batched, differentiable transition function.

    Attributes:
        state_dim: ``D``, the size of a state vector.
        action_dim: ``A``, the size of one (frameskip-packed) model action.
        action_low: lower action bounds, shape ``[A]``, finite.
        action_high: upper action bounds, shape ``[A]``, finite and above ``action_low``.
    """

    state_dim: int
    action_dim: int
    action_low: Tensor
    action_high: Tensor

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        """Predict the next state.

        Args:
            state: ``[..., D]``.
            action: ``[..., A]``, with the same leading dimensions as ``state``.

        Returns:
            ``[..., D]``, differentiable with respect to both inputs.
        """
        ...


def check_world_model(model: object) -> WorldModel:
    """Return ``model`` if it satisfies :class:`WorldModel` with consistent bounds, else raise TypeError."""
    missing = [n for n in ("state_dim", "action_dim", "action_low", "action_high", "step") if not hasattr(model, n)]
    if missing:
        raise TypeError(f"{type(model).__name__} is not a world model: it lacks {', '.join(missing)}")
    low, high = model.action_low, model.action_high  # type: ignore[attr-defined]
    a = model.action_dim  # type: ignore[attr-defined]
    if tuple(low.shape) != (a,) or tuple(high.shape) != (a,):
        raise TypeError(f"action bounds must have shape [{a}], got {tuple(low.shape)} and {tuple(high.shape)}")
    if not (torch.isfinite(low).all() and torch.isfinite(high).all() and (high > low).all()):
        raise TypeError("action bounds must be finite with action_high > action_low")
    return model  # type: ignore[return-value]


class _BoundedModel(nn.Module):
    """Shared plumbing: action bounds as buffers so that ``.to(device)`` moves them."""

    def __init__(self, state_dim: int, action_dim: int, action_low: Tensor, action_high: Tensor) -> None:
        super().__init__()
        self.state_dim = int(state_dim)
        self.action_dim = int(action_dim)
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32).reshape(action_dim).clone())
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32).reshape(action_dim).clone())

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        return self.step(state, action)


class LinearModel(_BoundedModel):
    """``F(s, a) = A s + B a``.

    Args:
        A: ``[D, D]`` state transition matrix.
        B: ``[D, A]`` control matrix.
        action_bound: actions lie in ``[-action_bound, action_bound]`` in every dimension.
    """

    def __init__(self, A: Tensor, B: Tensor, *, action_bound: float = 1.0) -> None:
        A = torch.as_tensor(A, dtype=torch.float32)
        B = torch.as_tensor(B, dtype=torch.float32)
        if A.ndim != 2 or A.shape[0] != A.shape[1] or B.ndim != 2 or B.shape[0] != A.shape[0]:
            raise ValueError(f"need A [D, D] and B [D, A], got {tuple(A.shape)} and {tuple(B.shape)}")
        d, a = B.shape
        super().__init__(d, a, torch.full((a,), -action_bound), torch.full((a,), action_bound))
        self.register_buffer("A", A.clone())
        self.register_buffer("B", B.clone())

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        return state @ self.A.T + action @ self.B.T

    @classmethod
    def rotation(cls, *, dim: int = 2, radius: float = 1.0, angle: float = 0.3, action_bound: float = 1.0) -> LinearModel:
        """A model whose ``A`` is ``radius`` times a block rotation (spectral radius ``radius``), ``B = I``.

        ``dim`` must be even.
        """
        if dim % 2:
            raise ValueError("dim must be even")
        c, s = math.cos(angle), math.sin(angle)
        block = torch.tensor([[c, -s], [s, c]]) * radius
        A = torch.block_diag(*[block] * (dim // 2))
        return cls(A, torch.eye(dim), action_bound=action_bound)


class PointMass(_BoundedModel):
    """A damped point mass in ``n`` dimensions; state ``[position (n), velocity (n)]``, action a force.

    One step of semi-implicit Euler: ``v' = (1 - damping * dt) v + dt * gain * a``, ``x' = x + dt v'``.

    Args:
        dims: ``n``, the number of spatial dimensions.
        dt: time step in seconds.
        damping: velocity damping rate in 1/s.
        gain: acceleration per unit action.
        action_bound: actions lie in ``[-action_bound, action_bound]``.
    """

    def __init__(self, *, dims: int = 2, dt: float = 0.1, damping: float = 0.5, gain: float = 1.0, action_bound: float = 1.0) -> None:
        super().__init__(2 * dims, dims, torch.full((dims,), -action_bound), torch.full((dims,), action_bound))
        self.dims, self.dt, self.damping, self.gain = dims, dt, damping, gain

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        x, v = state[..., : self.dims], state[..., self.dims :]
        v = (1.0 - self.damping * self.dt) * v + self.dt * self.gain * action
        return torch.cat([x + self.dt * v, v], dim=-1)
