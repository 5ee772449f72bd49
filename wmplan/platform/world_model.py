"""The world-model interface that planners use, and two analytic models for tests and demos.

A world model is a differentiable transition function ``F(s, a) -> s'``. Planners see nothing
else: no simulator, no reward, no environment. Anything with these attributes is a world model
(structural typing), including the learned models of :mod:`wmplan.platform.models`. Two optional
parts extend the contract, each a :class:`~typing.Protocol` of its own, checked like the base:

- :class:`ObservationModel`: a model that plans from observations (pictures) rather than from
  the simulator's states; the episode runner renders starts and goals and calls its ``encode``.
- :class:`CostModel`: a model that supplies its own planning cost (e.g. DINO-WM's patch MSE
  plus a proprioception term); planners reach it only through
  :meth:`wmplan.platform.planners.base.Problem.cost`, and use the terminal MSE without it.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Protocol, TypeGuard, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "WorldModel", "ObservationModel", "CostModel", "LinearModel", "PointMass",
    "check_world_model", "check_observation_model", "is_observation_model", "OBSERVATIONS",
    "rollout", "to_model_space", "from_model_space",
]

OBSERVATIONS: tuple[str, ...] = ("state", "pixels")
"""What a model may declare as its ``observation``: ``'state'`` (the default, for a model without
the attribute) or ``'pixels'`` (an :class:`ObservationModel`)."""


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


@runtime_checkable
class ObservationModel(WorldModel, Protocol):
    """A world model that plans from observations: its states are latents of pictures.

    The episode runner never gives it a simulator state: starts and goals are rendered at
    ``frame_size`` pixels and encoded, so a goal is an image. The model may also define
    ``decode(z [..., D]) -> [..., D_env]``, an estimate of the simulator state used only for
    reporting (never in planning); it is optional and so not part of the protocol's members.

    Attributes:
        observation: ``'pixels'``.
        frame_size: ``S``, the side of the square RGB frames ``encode`` takes, in pixels.
    """

    observation: Literal["pixels"]
    frame_size: int

    def encode(self, frames: Any) -> Tensor:
        """Frames ``[..., S, S, 3]`` (uint8 RGB, or float in [0, 1]; a tensor or numpy array) to
        latent states ``[..., D]`` on the model's device. No gradient is needed."""
        ...


@runtime_checkable
class CostModel(Protocol):
    """A world model that supplies its own planning cost (an optional method beside ``step``)."""

    def cost(self, final_states: Tensor, goal_states: Tensor) -> Tensor:
        """The cost of ending in ``final_states`` when the goal is ``goal_states``.

        Args:
            final_states: ``[..., D]`` predicted states (model space).
            goal_states: ``[..., D]`` goals, with the same shape as ``final_states``.

        Returns:
            ``[...]``, lower is better, differentiable with respect to ``final_states``.
        """
        ...


def check_world_model(model: object) -> WorldModel:
    """Return ``model`` if it satisfies :class:`WorldModel` with consistent bounds, else raise TypeError."""
    missing = [n for n in ("state_dim", "action_dim", "action_low", "action_high", "step") if not hasattr(model, n)]
    if missing:
        raise TypeError(f"{type(model).__name__} is not a world model: it lacks {', '.join(missing)}")
    assert isinstance(model, WorldModel)  # the members are there (runtime_checkable checks just that)
    low, high, a = model.action_low, model.action_high, model.action_dim
    if not isinstance(low, Tensor) or not isinstance(high, Tensor):
        raise TypeError(f"action bounds must be tensors, got {type(low).__name__} and {type(high).__name__}")
    if tuple(low.shape) != (a,) or tuple(high.shape) != (a,):
        raise TypeError(f"action bounds must have shape [{a}], got {tuple(low.shape)} and {tuple(high.shape)}")
    if not (torch.isfinite(low).all() and torch.isfinite(high).all() and (high > low).all()):
        raise TypeError("action bounds must be finite with action_high > action_low")
    cost = getattr(model, "cost", None)
    if cost is not None and not callable(cost):
        raise TypeError(f"{type(model).__name__}.cost must be a method cost(final_states, goal_states), got {type(cost).__name__}")
    return model


def is_observation_model(model: object) -> TypeGuard[ObservationModel]:
    """Whether ``model`` plans from pictures (it declares ``observation = 'pixels'``).

    A model without ``observation`` (or with ``'state'``) is a state model. One that declares
    pictures is checked with :func:`check_observation_model`, so a half-made pixel model is an
    error rather than a state model.

    Raises:
        TypeError: the model declares an unknown observation, or pictures without the protocol.
    """
    observation = getattr(model, "observation", "state")
    if observation == "state":
        return False
    check_observation_model(model)
    return True


def check_observation_model(model: object) -> ObservationModel:
    """Return ``model`` if it satisfies :class:`ObservationModel`, else raise TypeError naming what is wrong."""
    check_world_model(model)
    name = type(model).__name__
    missing = [n for n in ("observation", "frame_size", "encode") if not hasattr(model, n)]
    if missing:
        raise TypeError(f"{name} is not an observation model: it lacks {', '.join(missing)}")
    assert isinstance(model, ObservationModel)
    if model.observation != "pixels":
        raise TypeError(f"{name}.observation must be one of {', '.join(map(repr, OBSERVATIONS))}, got {model.observation!r}")
    size = model.frame_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise TypeError(f"{name}.frame_size must be a positive int (pixels), got {size!r}")
    if not callable(model.encode):
        raise TypeError(f"{name}.encode must be a method encode(frames) -> latents")
    decode = getattr(model, "decode", None)
    if decode is not None and not callable(decode):
        raise TypeError(f"{name}.decode must be a method decode(latents) -> states, got {type(decode).__name__}")
    return model


class _BoundedModel(nn.Module):
    """Shared plumbing: action bounds as buffers so that ``.to(device)`` moves them."""

    action_low: Tensor
    action_high: Tensor

    def __init__(self, state_dim: int, action_dim: int, action_low: Tensor, action_high: Tensor) -> None:
        super().__init__()
        self.state_dim = int(state_dim)
        self.action_dim = int(action_dim)
        self.register_buffer("action_low", torch.as_tensor(action_low, dtype=torch.float32).reshape(action_dim).clone())
        self.register_buffer("action_high", torch.as_tensor(action_high, dtype=torch.float32).reshape(action_dim).clone())

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        return self.step(state, action)


class LinearModel(_BoundedModel):
    """``F(s, a) = A s + B a``.

    Args:
        A: ``[D, D]`` state transition matrix.
        B: ``[D, A]`` control matrix.
        action_bound: actions lie in ``[-action_bound, action_bound]`` in every dimension.
    """

    A: Tensor
    B: Tensor

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


def rollout(model: WorldModel, start: Tensor, actions: Tensor) -> Tensor:
    """Roll ``actions [..., H, A]`` out from ``start [..., D]`` with ``model.step``; returns ``[..., H+1, D]``
    (the start first). The one rollout planners, problem generators and model evaluation share."""
    states = [start]
    s = start
    for t in range(actions.shape[-2]):
        s = model.step(s, actions[..., t, :])
        states.append(s)
    return torch.stack(states, dim=-2)


def to_model_space(model: object, states: Tensor) -> Tensor:
    """Env states ``[..., D_env]`` to model states ``[..., D]`` with ``model.encode`` (identity without one).

    For models that plan on (normalised) states; an :class:`ObservationModel` encodes frames instead
    (see :func:`wmplan.platform.episode.observe`).
    """
    encode = getattr(model, "encode", None)
    return encode(states) if callable(encode) else states


def from_model_space(model: object, states: Tensor) -> Tensor:
    """Model states ``[..., D]`` to env states ``[..., D_env]`` with ``model.decode`` (identity without one)."""
    decode = getattr(model, "decode", None)
    return decode(states) if callable(decode) else states
