"""The Ray actor that plans episodes: it loads the world model once and plans a batch per call."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from wmplan.platform.episode import EpisodeRecord, EpisodeSpec, Mode, run_episodes
from wmplan.platform.planners import make_planner
from wmplan.platform.registry import load_model, make_task, register_model
from wmplan.platform.threads import set_process_threads
from wmplan.platform.world_model import WorldModel

__all__ = ["WorkItem", "PlanActor"]


@dataclass(frozen=True)
class WorkItem:
    """One actor call: a batch of episodes of one planner and horizon, planned as one batched call."""

    planner: str
    options: dict[str, Any]
    horizon: int
    specs: Sequence[EpisodeSpec]
    mode: Mode
    replan_every: int
    plan_seed: int
    snapshot_iterations: tuple[int, ...] = ()
    budget: int = 0
    """The transitions per planner call ``options`` were fitted to (recorded with each episode; 0: none)."""


class PlanActor:
    """Holds one task simulator and one world-model replica; plans :class:`WorkItem` batches.

    The task and the model are built here, in the actor's own process, through
    :mod:`wmplan.platform.registry`: a ``package.module:callable`` is imported here, so its package
    must be installed on every node (or shipped in the job's runtime environment).

    Args:
        task: the task's name or ``package.module:factory``.
        model: the world model, loaded once, here: a checkpoint directory, a ``package.module:callable``
            factory, a registered name, or ``exact``, the task's own dynamics (see
            :meth:`wmplan.config.Settings.model_arguments`).
        device: ``cpu`` or ``cuda`` (Ray gives a GPU actor exactly one visible device).
        threads: torch CPU threads for this actor (its share of the node's cores), intra-op and inter-op
            alike, set as it starts (:func:`wmplan.platform.threads.set_process_threads`).
        model_options: keyword options of the factory, or of the checkpoint loader (``allow_code``: the
            ``package.module:callable`` code the user named, which the checkpoint may run).
        factory: for a model name registered in the driver, its factory (registered here under ``model``).
        loaded: ``model`` already loaded on the CPU by the driver, used instead of loading it here: the
            driver puts it in Ray's object store once and every actor (a replacement too) is given that
            reference, which Ray resolves to the model before the constructor runs.
    """

    def __init__(self, *, task: str, model: str, device: str, threads: int, model_options: Mapping[str, Any] | None = None,
                 factory: Callable[..., Any] | None = None, loaded: WorldModel | None = None) -> None:
        set_process_threads(max(1, threads))
        self.device = "cuda" if device == "cuda" else "cpu"
        self.env = make_task(task)
        if factory is not None:
            register_model(model, factory)
        if loaded is not None and self.device != "cpu":
            raise ValueError(f"a model loaded by the driver is given to CPU actors only; this actor plans on {self.device}")
        self.model = loaded if loaded is not None else load_model(model, device=self.device, options=model_options, task=self.env)

    def run(self, item: WorkItem) -> list[EpisodeRecord]:
        planner = make_planner(item.planner, horizon=item.horizon, **item.options)
        return run_episodes(
            self.env, self.model, planner, item.specs, planner_name=item.planner, mode=item.mode,
            replan_every=item.replan_every, device=self.device, plan_seed=item.plan_seed,
            snapshot_iterations=item.snapshot_iterations, budget=item.budget,
        )

    def ping(self) -> str:
        """The device this actor plans on (answers once the model is loaded)."""
        return self.device

    def torch_threads(self) -> tuple[int, int]:
        """The intra-op and inter-op torch threads this actor plans with."""
        return torch.get_num_threads(), torch.get_num_interop_threads()
