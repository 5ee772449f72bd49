"""The Ray actor that plans episodes: it loads the world model once and plans a batch per call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from wmplan.platform.envs import make_env
from wmplan.platform.episode import EpisodeRecord, EpisodeSpec, run_episodes
from wmplan.platform.models import load_world_model
from wmplan.platform.planners import make_planner

__all__ = ["WorkItem", "PlanActor"]


@dataclass(frozen=True)
class WorkItem:
    """One actor call: a batch of episodes of one planner and horizon, planned as one batched call."""

    planner: str
    options: dict[str, Any]
    horizon: int
    specs: Sequence[EpisodeSpec]
    mode: str
    replan_every: int
    plan_seed: int
    snapshot_iterations: tuple[int, ...] = ()


class PlanActor:
    """Holds one task simulator and one world-model replica; plans :class:`WorkItem` batches.

    Args:
        task: the task's name.
        checkpoint: the world model's checkpoint directory (loaded once, here).
        device: ``cpu`` or ``cuda`` (Ray gives a GPU actor exactly one visible device).
        threads: torch CPU threads for this actor (its share of the node's cores).
        allow_code: the ``package.module:callable`` code the user named, which the checkpoint may run.
    """

    def __init__(self, *, task: str, checkpoint: str, device: str, threads: int, allow_code: tuple[str, ...] = ()) -> None:
        torch.set_num_threads(max(1, threads))
        self.device = "cuda" if device == "cuda" else "cpu"
        self.env = make_env(task)
        self.model = load_world_model(checkpoint, device=self.device, allow_code=allow_code)

    def run(self, item: WorkItem) -> list[EpisodeRecord]:
        planner = make_planner(item.planner, horizon=item.horizon, **item.options)
        return run_episodes(
            self.env, self.model, planner, item.specs, planner_name=item.planner, mode=item.mode,  # type: ignore[arg-type]
            replan_every=item.replan_every, device=self.device, plan_seed=item.plan_seed,
            snapshot_iterations=item.snapshot_iterations,
        )

    def ping(self) -> str:
        """The device this actor plans on (answers once the model is loaded)."""
        return self.device
