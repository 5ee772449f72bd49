"""Learned world models behind the :class:`~wmplan.platform.world_model.WorldModel` interface."""

from wmplan.platform.models.mlp import ResidualMLP

__all__ = ["ResidualMLP"]
