"""Wrapper world models shared by the planner tests."""

from __future__ import annotations

import torch


class PoisonModel(torch.nn.Module):
    """Wraps a model; returns NaN for every row whose first state coordinate exceeds ``threshold``."""

    def __init__(self, inner, threshold: float = 1e3) -> None:
        super().__init__()
        self.inner = inner
        self.threshold = threshold
        self.state_dim, self.action_dim = inner.state_dim, inner.action_dim
        self.action_low, self.action_high = inner.action_low, inner.action_high

    def step(self, state, action):
        out = self.inner.step(state, action)
        bad = (state[..., :1] > self.threshold) | ~torch.isfinite(state[..., :1])
        return torch.where(bad, torch.nan, out)


class CountingModel(torch.nn.Module):
    """Wraps a model and counts its calls and the transitions they covered."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner
        self.state_dim, self.action_dim = inner.state_dim, inner.action_dim
        self.action_low, self.action_high = inner.action_low, inner.action_high
        self.calls = 0
        self.shapes: list[tuple[int, ...]] = []

    def step(self, state, action):
        self.calls += 1
        self.shapes.append(tuple(state.shape))
        return self.inner.step(state, action)
