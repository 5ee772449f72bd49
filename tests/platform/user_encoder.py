"""A user's own frozen encoder, as a user would write it: a module with a factory (see README)."""

from torch import nn


def make_encoder() -> nn.Module:
    """``[B, 3, S, S]`` frames to ``[B, 4, S/4, S/4]`` features."""
    return nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Tanh(), nn.Conv2d(8, 4, 1))
