"""A learned state-space world model that works in a normalised state space.

The model predicts one *model step* (``frameskip`` env steps) at a time::

    z  = (s - state_mean) / state_std                   # encode
    z' = z + MLP([z, (a - action_mean) / action_std])   # step
    s' = state_mean + state_std * z'                    # decode

so planners search ``z`` (where every state dimension has unit scale, which keeps terminal costs
and learning rates meaningful on every task) while actions stay in env units: a model action is
``frameskip`` env actions concatenated (:func:`wmplan.platform.envs.pack_actions`) and its bounds
are the env's bounds tiled ``frameskip`` times. Action normalisation is internal to ``step``.

With ``env_step`` the MLP predicts one env step from one env action instead, and ``step`` applies it
``frameskip`` times, one packed env action after the other: a function of ``D + A / frameskip``
inputs that the data show ``frameskip`` times as often, and that stops at a wall at the env step
where the simulator does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from wmplan.platform.models.mlp import ACTIVATIONS, mlp_layers, register_normalization
from wmplan.platform.options import require

__all__ = ["PackedActionConfig", "StateModelConfig", "StateWorldModel"]


@dataclass(frozen=True, kw_only=True)
class PackedActionConfig:
    """What every learned model's config says about its task and its frameskip-packed actions."""

    env: str
    """Task the model was trained on (wall, pointmaze, pusht, or a user's own name)."""
    state_dim: int
    """Length of an env state vector (wall 2, pointmaze 4, pusht 7)."""
    action_dim: int
    """``A``: length of one packed model action, ``frameskip`` times the env action length."""
    frameskip: int = 5
    """Env steps per model step; ``action_dim`` must be a multiple of it."""
    env_action_low: tuple[float, ...] = (-1.0, -1.0)
    """Lower bound of one env action (length ``action_dim / frameskip``), in env units."""
    env_action_high: tuple[float, ...] = (1.0, 1.0)
    """Upper bound of one env action, in env units."""

    def __post_init__(self) -> None:
        require(self.state_dim >= 1, f"state_dim must be >= 1, got {self.state_dim}")
        require(self.frameskip >= 1, f"frameskip must be >= 1, got {self.frameskip}")
        require(
            self.action_dim >= 1 and self.action_dim % self.frameskip == 0,
            f"action_dim must be a positive multiple of frameskip={self.frameskip}, got {self.action_dim}",
        )
        per_env = self.action_dim // self.frameskip
        require(
            len(self.env_action_low) == per_env and len(self.env_action_high) == per_env,
            f"env_action_low/high must have {per_env} values (action_dim / frameskip), "
            f"got {len(self.env_action_low)} and {len(self.env_action_high)}",
        )
        require(
            all(math.isfinite(lo) and math.isfinite(hi) and hi > lo for lo, hi in zip(self.env_action_low, self.env_action_high)),
            f"env action bounds must be finite with high > low, got {self.env_action_low} and {self.env_action_high}",
        )

    def action_bounds(self) -> tuple[Tensor, Tensor]:
        """The packed action bounds ``[A]``: the env bounds tiled ``frameskip`` times."""
        low = torch.tensor(self.env_action_low, dtype=torch.float32).repeat(self.frameskip)
        high = torch.tensor(self.env_action_high, dtype=torch.float32).repeat(self.frameskip)
        return low, high


@dataclass(frozen=True, kw_only=True)
class StateModelConfig(PackedActionConfig):
    """Architecture of a :class:`StateWorldModel`; everything needed to rebuild it from its tensors."""

    hidden: int = 256
    """Width of the hidden layers of the residual MLP."""
    depth: int = 3
    """Number of hidden layers of the residual MLP (>= 1)."""
    activation: Literal["silu", "relu"] = "silu"
    """Activation of the hidden layers (:data:`~wmplan.platform.models.mlp.ACTIVATIONS`)."""
    env_step: bool = False
    """The MLP predicts one env step from one env action, applied ``frameskip`` times per model step
    (False: one model step from the packed model action)."""
    action_low: tuple[float, ...] = ()
    """Lower bounds of a packed model action (``action_dim`` values, env units) that planners search
    within; empty: the env bounds tiled ``frameskip`` times. Set from the training data's support by
    ``TrainConfig.action_bounds = 'data'`` (percentiles of the packed training actions)."""
    action_high: tuple[float, ...] = ()
    """Upper bounds of a packed model action, as ``action_low`` (both empty or both given)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.hidden >= 1, f"hidden must be >= 1, got {self.hidden}")
        require(self.depth >= 1, f"depth must be >= 1, got {self.depth}")
        require(self.activation in ACTIVATIONS, f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        given = (len(self.action_low), len(self.action_high))
        require(given in ((0, 0), (self.action_dim, self.action_dim)),
                f"action_low/high must both be empty (the env bounds) or have action_dim={self.action_dim} values, got {given}")
        require(all(math.isfinite(lo) and math.isfinite(hi) and hi > lo for lo, hi in zip(self.action_low, self.action_high)),
                f"action bounds must be finite with high > low, got {self.action_low} and {self.action_high}")

    def action_bounds(self) -> tuple[Tensor, Tensor]:
        """The packed action bounds ``[A]``: ``action_low`` / ``action_high`` when given, else the env
        bounds tiled ``frameskip`` times."""
        if not self.action_low:
            return super().action_bounds()
        return torch.tensor(self.action_low, dtype=torch.float32), torch.tensor(self.action_high, dtype=torch.float32)


class StateWorldModel(nn.Module):
    """``z' = z + MLP([z, normalised action])`` over normalised env states.

    Implements :class:`~wmplan.platform.world_model.WorldModel` in the normalised space: ``step``
    takes and returns ``z`` (see :meth:`encode` / :meth:`decode`), and takes packed actions in env
    units, inside ``[action_low, action_high]``.

    Args:
        config: the architecture.
        seed: seed of the weight initialisation (None: torch's global generator). The last layer
            starts at zero, so an untrained model predicts "nothing moves".

    Buffers (saved in checkpoints): ``state_mean``, ``state_std`` ``[D]`` and ``action_mean``,
    ``action_std`` ``[A]``, set by :meth:`set_normalization` (defaults 0 and 1).
    """

    coordinatewise_state: ClassVar[bool] = True
    """Model coordinate ``i`` is an affine map of env coordinate ``i`` alone (``z_i = (s_i - mean_i) /
    std_i``), so a slice of env coordinates picks the same model coordinates
    (:func:`wmplan.platform.costs.success_cost_model`)."""

    state_mean: Tensor
    state_std: Tensor
    action_mean: Tensor
    action_std: Tensor
    action_low: Tensor
    action_high: Tensor

    def __init__(self, config: StateModelConfig, *, seed: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.state_dim = config.state_dim
        self.action_dim = config.action_dim
        d, a = config.state_dim, config.action_dim
        register_normalization(self, state_dim=d, action_dim=a, bounds=config.action_bounds())
        self.env_action_dim = a // config.frameskip
        self.net = mlp_layers(d, d, extra_in=self.env_action_dim if config.env_step else a, hidden=config.hidden, depth=config.depth,
                              activation=config.activation)
        self._init_weights(seed)

    def _init_weights(self, seed: int | None) -> None:
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for m in linears[:-1]:
                bound = 1.0 / math.sqrt(m.in_features)
                m.weight.copy_(torch.empty_like(m.weight).uniform_(-math.sqrt(3) * bound, math.sqrt(3) * bound, generator=g))
                m.bias.zero_()
            linears[-1].weight.zero_()
            linears[-1].bias.zero_()

    def set_normalization(self, state_mean, state_std, action_mean, action_std) -> None:
        """Set the normalisation statistics (arrays or tensors of shape ``[D]``, ``[D]``, ``[A]``, ``[A]``).

        Standard deviations must be positive: a constant dimension should be given a floor first.
        """
        values = {"state_mean": state_mean, "state_std": state_std, "action_mean": action_mean, "action_std": action_std}
        for name, value in values.items():
            buf = getattr(self, name)
            t = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value, dtype=buf.dtype)
            if tuple(t.shape) != tuple(buf.shape):
                raise ValueError(f"{name} must have shape {tuple(buf.shape)}, got {tuple(t.shape)}")
            if not torch.isfinite(t).all() or (name.endswith("_std") and not (t > 0).all()):
                raise ValueError(f"{name} must be finite{' and positive' if name.endswith('_std') else ''}, got {t.tolist()}")
            buf.copy_(t.to(buf.device))

    def _as_state(self, x) -> Tensor:
        if isinstance(x, Tensor):
            return x
        return torch.as_tensor(np.asarray(x), dtype=self.state_mean.dtype, device=self.state_mean.device)

    def encode(self, env_state) -> Tensor:
        """Env states ``[..., D]`` (tensor or array, env units) to normalised states ``z [..., D]``."""
        s = self._as_state(env_state)
        return (s - self.state_mean.to(s.dtype)) / self.state_std.to(s.dtype)

    def decode(self, z: Tensor) -> Tensor:
        """Normalised states ``z [..., D]`` back to env states in env units."""
        z = self._as_state(z)
        return self.state_mean.to(z.dtype) + self.state_std.to(z.dtype) * z

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        """Predict the next normalised state.

        Args:
            state: ``z [..., D]`` normalised states.
            action: ``[..., A]`` packed model actions in env units.

        Returns:
            ``z' [..., D]``, differentiable with respect to both inputs.
        """
        a = ((action - self.action_mean) / self.action_std).to(state.dtype)
        if not self.config.env_step:
            return state + self.net(torch.cat([state, a], dim=-1))
        z = state
        for env_action in a.split(self.env_action_dim, dim=-1):
            z = z + self.net(torch.cat([z, env_action], dim=-1))
        return z

    def env_step(self, state: Tensor, action: Tensor) -> Tensor:
        """One env step of an ``env_step`` model: ``z [..., D]`` and one env action ``[..., A / frameskip]``
        (env units) to ``z' [..., D]``.

        Raises:
            ValueError: the model predicts whole model steps (``env_step`` is off).
        """
        if not self.config.env_step:
            raise ValueError("env_step needs a model with env_step=True (this one predicts whole model steps)")
        k = self.env_action_dim
        a = ((action - self.action_mean[:k]) / self.action_std[:k]).to(state.dtype)
        return state + self.net(torch.cat([state, a], dim=-1))

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        return self.step(state, action)

    def extra_repr(self) -> str:
        c = self.config
        return (f"env={c.env!r}, state_dim={c.state_dim}, action_dim={c.action_dim}, hidden={c.hidden}, depth={c.depth}, "
                f"activation={c.activation!r}, env_step={c.env_step}")
