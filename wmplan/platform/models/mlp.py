"""A residual MLP world model over state vectors, and the MLP that every learned model here uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

ACTIVATIONS: Mapping[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU}
"""The hidden layers' activations by name: ``silu`` (smooth, the default) and ``relu`` (piecewise linear: it
draws a sharp edge such as Wall's, where a smooth MLP blends "blocked" and "passes" into a leaky band)."""


def mlp_layers(width_in: int, width_out: int, *, extra_in: int = 0, hidden: int, depth: int, activation: str = "silu") -> nn.Sequential:
    """``depth`` hidden layers of width ``hidden`` (``activation``, :data:`ACTIVATIONS`) from ``width_in + extra_in``
    inputs to ``width_out`` outputs."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    width = width_in + extra_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
        width = hidden
    layers.append(nn.Linear(width, width_out))
    return nn.Sequential(*layers)


class ResidualMLP(nn.Module):
    """``F(s, a) = s + MLP([s, a])``, a state-space world model.

    Args:
        state_dim: ``D``.
        action_dim: ``A`` (frameskip-packed actions count as one wider action).
        hidden: width of the hidden layers.
        depth: number of hidden layers (>= 1).
        action_bound: actions lie in ``[-action_bound, action_bound]``.
        seed: seed of the weight initialisation (None: torch's global generator).
    """

    def __init__(self, state_dim: int, action_dim: int, *, hidden: int = 256, depth: int = 3, action_bound: float = 1.0,
                 seed: int | None = None) -> None:
        super().__init__()
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.register_buffer("action_low", torch.full((action_dim,), -float(action_bound)))
        self.register_buffer("action_high", torch.full((action_dim,), float(action_bound)))
        self.net = mlp_layers(state_dim, state_dim, extra_in=action_dim, hidden=hidden, depth=depth)
        if seed is not None:
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.empty_like(p).uniform_(-1, 1, generator=g) / max(1, p.shape[-1]) ** 0.5)

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        return state + self.net(torch.cat([state, action], dim=-1))

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        return self.step(state, action)


def register_normalization(module: nn.Module, *, state_dim: int, action_dim: int, bounds: tuple[Tensor, Tensor]) -> None:
    """The buffers of a model over normalised states: ``state_mean``, ``state_std`` ``[D]``, ``action_mean``,
    ``action_std`` ``[A]`` (fitted, saved in checkpoints; 0 and 1 until set) and the action bounds ``action_low``,
    ``action_high`` ``[A]`` (derived from the config, so not persistent)."""
    module.register_buffer("state_mean", torch.zeros(state_dim))
    module.register_buffer("state_std", torch.ones(state_dim))
    module.register_buffer("action_mean", torch.zeros(action_dim))
    module.register_buffer("action_std", torch.ones(action_dim))
    low, high = bounds
    module.register_buffer("action_low", low, persistent=False)
    module.register_buffer("action_high", high, persistent=False)


def set_buffers(module: nn.Module, values: Mapping[str, Any]) -> None:
    """Set ``module``'s fitted buffers by name (``action_mean``, ``state_std``, ...), each shape-checked and finite.

    Raises:
        ValueError: a value of another shape than its buffer, or not finite.
    """
    for name, value in values.items():
        buf = getattr(module, name)
        t = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value, dtype=buf.dtype)
        if tuple(t.shape) != tuple(buf.shape) or not torch.isfinite(t).all():
            raise ValueError(f"{name} must be finite with shape {tuple(buf.shape)}, got {tuple(t.shape)}")
        buf.copy_(t.to(buf.device))
