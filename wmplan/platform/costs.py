"""Planning costs that look at what success looks at.

A task judges success on some state coordinates only (``Env.success_coords``; PointMaze: the
ball's position, not its velocity), while a planner's default cost is the terminal MSE over the
whole model state (:func:`wmplan.platform.planners.base.terminal_cost`). A goal's velocity then
pulls the plan toward something success ignores. :func:`success_cost_model` gives a planner a
model whose cost (:class:`~wmplan.platform.world_model.CostModel`) is the MSE over the success
coordinates, when the model's state space makes those coordinates known.

Whether it does is declared by the model class, never guessed: a model class sets
``coordinatewise_state = True`` (see :data:`COORDINATEWISE`) when model coordinate ``i`` is an
affine map of env coordinate ``i`` alone (the learned state model normalises each coordinate;
an analytic model that plans on env states is the identity map).

A model of pictures trained with proprio (DINO-WM's ``[visual latent, proprio]`` state) plans on
:func:`proprio_cost_model`'s view: the latent MSE plus ``proprio_weight`` x the proprio MSE
(DINO-WM's ``alpha``), the weight 0 unless a run sets it.
"""

from __future__ import annotations

import math
from typing import Any, cast

from torch import Tensor, nn

from wmplan.platform.envs import Env
from wmplan.platform.world_model import CostModel, WorldModel, check_world_model, is_observation_model

__all__ = ["COORDINATEWISE", "SuccessCoordsCost", "ProprioCost", "is_coordinatewise", "success_cost_model", "proprio_cost_model"]

COORDINATEWISE = "coordinatewise_state"
"""The class attribute (a bool) by which a model class declares that its state coordinate ``i`` is
an affine function of the env state's coordinate ``i`` alone (``state_dim`` equal to the env's)."""


def is_coordinatewise(model: object) -> bool:
    """Whether ``model``'s class declares ``coordinatewise_state = True`` (absent: False)."""
    return getattr(type(model), COORDINATEWISE, False) is True


def _coordinate_indices(coords: slice, dim: int) -> list[int]:
    return list(range(dim))[coords]


class _CostView(nn.Module):
    """A world model with its own planning cost around another model, which supplies everything else."""

    def __init__(self, model: WorldModel) -> None:
        super().__init__()
        if isinstance(model, nn.Module):
            self.inner = model
        else:
            self.__dict__["inner"] = model  # a plain object: kept, not registered
        self.state_dim = int(model.state_dim)
        self.action_dim = int(model.action_dim)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # parameters, buffers and submodules (the model itself)
        except AttributeError:
            if name == "inner":
                raise
            return getattr(self.inner, name)

    @property
    def action_low(self) -> Tensor:
        low: Tensor = self.inner.action_low
        return low

    @property
    def action_high(self) -> Tensor:
        high: Tensor = self.inner.action_high
        return high

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        """The wrapped model's ``step``: ``[..., D]``, ``[..., A]`` to ``[..., D]``."""
        out: Tensor = self.inner.step(state, action)
        return out

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        return self.step(state, action)


class SuccessCoordsCost(_CostView):
    """A world model whose planning cost is the MSE over some state coordinates only.

    Everything else is the wrapped model's: ``step`` (and ``forward``), ``state_dim`` and
    ``action_dim`` (copied), ``action_low`` / ``action_high`` (read from the model each time, so they follow
    ``.to(device)``), and any other attribute (``encode`` / ``decode``, so
    :func:`~wmplan.platform.world_model.to_model_space` and ``from_model_space`` work as on the
    model; ``config``; ...). A model that is an ``nn.Module`` is a submodule, so ``.to``,
    ``.eval`` and ``parameters()`` reach it.

    Args:
        model: the world model; its state coordinates ``coords`` are the ones that count.
        coords: the coordinates the cost looks at, a slice of ``[0, state_dim)`` (not empty).
    """

    def __init__(self, model: WorldModel, *, coords: slice) -> None:
        if not _coordinate_indices(coords, model.state_dim):
            raise ValueError(f"coords {coords} select no coordinate of a {model.state_dim}-D state")
        super().__init__(model)
        self.coords = coords

    def cost(self, final_states: Tensor, goal_states: Tensor) -> Tensor:
        """``mean over coords of (final - goal)^2``: ``[..., D]``, ``[..., D]`` to ``[...]`` (model units squared)."""
        return (final_states[..., self.coords] - goal_states[..., self.coords]).pow(2).mean(-1)

    def extra_repr(self) -> str:
        return f"coords={self.coords}"


def success_cost_model(*, env: Env, model: WorldModel) -> WorldModel:
    """The model to plan on for ``env``: ``model`` itself, or ``model`` with a cost on the success coordinates.

    Wraps ``model`` in :class:`SuccessCoordsCost` (cost: the MSE over model coordinates
    ``env.success_coords``, in model units) exactly when all of these hold:

    - ``env.success_coords`` is not the whole state (it selects fewer than ``env.state_dim``
      coordinates);
    - the model has no ``cost`` of its own (it is not a
      :class:`~wmplan.platform.world_model.CostModel`);
    - the model plans on states, not pictures (not an
      :class:`~wmplan.platform.world_model.ObservationModel`);
    - the model's class declares ``coordinatewise_state = True`` (:data:`COORDINATEWISE`): its
      state coordinate ``i`` is an affine map of env coordinate ``i`` (the learned state model
      does; a model without the declaration, e.g. a latent model, is never wrapped).

    Otherwise ``model`` is returned unchanged (the same object). With the MSE over every
    coordinate, the wrapper's cost is what a planner uses without it.

    Raises:
        ValueError: the model declares a coordinatewise state of another size than the env's.
    """
    check_world_model(model)
    coords = env.success_coords
    if len(_coordinate_indices(coords, env.state_dim)) == env.state_dim:
        return model
    if isinstance(model, CostModel) or is_observation_model(model) or not is_coordinatewise(model):
        return model
    if model.state_dim != env.state_dim:
        raise ValueError(
            f"{type(model).__name__} declares {COORDINATEWISE} = True but has {model.state_dim} state "
            f"coordinates, and task {env.name!r} has {env.state_dim}"
        )
    # Its action bounds are read-only properties (they follow the model across devices).
    return cast(WorldModel, SuccessCoordsCost(model, coords=coords))



class ProprioCost(_CostView):
    """A model of pictures with proprio, planning on DINO-WM's cost: latent MSE plus ``weight`` x proprio MSE.

    The wrapped model's state is ``[z, p]``: a visual latent ``z`` (``D`` values) and the
    normalised proprio ``p`` (the last ``P`` values). The cost of a final state against a goal is
    ``mean_D (z - z_goal)^2 + weight * mean_P (p - p_goal)^2``, in model units (the proprio
    normalised by its training statistics); with ``weight = 0`` the proprio does not count, and
    the cost is the latent MSE alone. Everything else is the wrapped model's (as
    :class:`SuccessCoordsCost`).

    Args:
        model: a world model whose last ``proprio_dim`` state coordinates are the proprio.
        proprio_dim: ``P`` (>= 1, below ``state_dim``).
        weight: the proprio term's weight, DINO-WM's ``alpha`` (finite, >= 0).
    """

    def __init__(self, model: WorldModel, *, proprio_dim: int, weight: float) -> None:
        if not 1 <= proprio_dim < model.state_dim:
            raise ValueError(f"proprio_dim must be in [1, {model.state_dim}) for a {model.state_dim}-D state, got {proprio_dim}")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"proprio weight must be finite and >= 0, got {weight}")
        super().__init__(model)
        self.latent_dim = int(model.state_dim) - int(proprio_dim)
        self.weight = float(weight)

    def cost(self, final_states: Tensor, goal_states: Tensor) -> Tensor:
        """``[..., D + P]``, ``[..., D + P]`` to ``[...]``: latent MSE + ``weight`` x proprio MSE (model units squared)."""
        d = self.latent_dim
        latent = (final_states[..., :d] - goal_states[..., :d]).pow(2).mean(-1)
        if self.weight == 0:
            return latent
        return latent + self.weight * (final_states[..., d:] - goal_states[..., d:]).pow(2).mean(-1)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, proprio_dim={self.state_dim - self.latent_dim}, weight={self.weight:g}"


def proprio_cost_model(model: WorldModel) -> WorldModel:
    """The model to plan on for a model of pictures that may carry proprio.

    A model whose ``proprio_dim`` is ``P > 0`` (its state ``[z, p]``) is wrapped in
    :class:`ProprioCost` with its ``proprio_weight`` (0 unless set: then the cost is the latent
    MSE alone). Any other model is returned unchanged (the same object), so a model trained
    without proprio plans exactly as before.
    """
    p_dim = int(getattr(model, "proprio_dim", 0))
    if p_dim == 0:
        return model
    return cast(WorldModel, ProprioCost(model, proprio_dim=p_dim, weight=float(getattr(model, "proprio_weight", 0.0))))
