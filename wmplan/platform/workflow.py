"""The single-process path from a task name to a judged set of episodes.

``prepare_model`` makes sure a trained world model exists (generating the data set and training
on it when not), and ``plan_task`` runs every (planner, horizon) pair of an experiment on the same
seeded episodes in one process. The Ray pool of :mod:`wmplan.jobs` runs the same episodes in
parallel; this module is what one actor (or a laptop without Ray) does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from wmplan.platform.data import DataConfig, Dataset, generate_dataset, read_dataset
from wmplan.platform.envs import Env, make_env
from wmplan.platform.episode import EpisodeRecord, EpisodeSpec, make_episode_specs, run_episodes, summarize
from wmplan.platform.errors import ConfigError
from wmplan.platform.models import TrainConfig, load_world_model, save_checkpoint, train_state_model
from wmplan.platform.planners import make_planner

Progress = Callable[[str], None]


def default_data_path(env: str, root: str | Path = ".") -> Path:
    """Where ``wmplan data`` writes a task's data set by default."""
    return Path(root) / "data" / f"{env}.parquet"


def default_checkpoint(env: str, root: str | Path = ".") -> Path:
    """Where ``wmplan train`` writes a task's state model by default."""
    return Path(root) / "checkpoints" / env


def prepare_model(
    env: str,
    *,
    data_path: Path,
    checkpoint: Path,
    data_config: DataConfig | None = None,
    train_config: TrainConfig | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> torch.nn.Module:
    """Load the checkpoint, or create it: generate the data set if it is missing, then train.

    An existing but broken checkpoint is an error (never silently overwritten).
    """
    say = progress or (lambda msg: None)
    if (checkpoint / "config.json").exists():
        return load_world_model(checkpoint, device=device)
    if not data_path.exists():
        config = data_config or DataConfig(env=env)
        if config.env != env:
            raise ConfigError(f"data config is for {config.env!r}, not {env!r}")
        t0 = time.perf_counter()
        say(f"no data set at {data_path}: generating {config.episodes} trajectories of {env} ...")
        generate_dataset(config, data_path)
        say(f"  data set written in {time.perf_counter() - t0:.1f} s")
    dataset = read_dataset(data_path)
    if dataset.env != env:
        raise ConfigError(f"data set {str(data_path)!r} is for task {dataset.env!r}, not {env!r}")
    say(f"no model at {checkpoint}: training a state model on {data_path} ...")
    model, metrics = train_state_model(dataset, train_config)
    save_checkpoint(model, checkpoint, metrics=metrics)
    say(f"  trained in {metrics['train_seconds']:.1f} s; validation one-step MSE {metrics['val_mse_before']:.4g} -> {metrics['val_mse_after']:.4g}")
    return model.to(device)


def episode_specs(env: Env, *, horizon: int, count: int, seed: int, dataset: Dataset | None) -> list[EpisodeSpec]:
    """The seeded start/goal pairs of a task (Push-T replays held-out segments of ``dataset``)."""
    segments = None
    if env.name == "pusht":
        if dataset is None:
            raise ConfigError("Push-T goals replay held-out trajectories: give the data set (--data)")
        segments = [(t.states, t.actions) for t in dataset.split("val")]
    return make_episode_specs(env, horizon=horizon, count=count, seed=seed, segments=segments)


@dataclass(frozen=True)
class PlanOutcome:
    """Every episode of one (planner, horizon) pair and their summary."""

    planner: str
    horizon: int
    records: list[EpisodeRecord]
    summary: dict


def plan_task(
    *,
    env_name: str,
    model: torch.nn.Module,
    planners: Sequence[str],
    options: Mapping[str, Mapping[str, object]],
    horizons: Sequence[int],
    episodes: int,
    seed: int,
    dataset: Dataset | None,
    mode: str = "open_loop",
    replan_every: int = 1,
    device: str = "cpu",
    progress: Progress | None = None,
) -> list[PlanOutcome]:
    """Run ``episodes`` episodes for each planner and horizon; all planners see the same pairs.

    Every planner is built (and its options validated) before any planning starts.
    """
    env = make_env(env_name)
    built = {(p, h): make_planner(p, horizon=h, **options.get(p, {})) for h in horizons for p in planners}
    outcomes = []
    for h in horizons:
        specs = episode_specs(env, horizon=h, count=episodes, seed=seed, dataset=dataset)
        for p in planners:
            records = run_episodes(env, model, built[p, h], specs, planner_name=p, mode=mode,  # type: ignore[arg-type]
                                   replan_every=replan_every, device=device, plan_seed=seed)
            summary = summarize(records)
            outcomes.append(PlanOutcome(p, h, records, summary))
            if progress:
                progress(f"{p} H={h}: success {100 * summary['success_rate']:.1f}% "
                         f"(model {100 * summary['model_success_rate']:.1f}%), planning {records[0].planning_time_s:.1f} s")
    return outcomes


def format_outcomes(outcomes: Sequence[PlanOutcome]) -> str:
    """A Markdown table: success with its 95% Wald interval, in-model success, times."""
    return format_summaries({(o.planner, o.horizon): o.summary for o in outcomes})


def format_summaries(summaries: Mapping[tuple[str, int], Mapping[str, float | int]]) -> str:
    """A Markdown table of :func:`wmplan.platform.episode.summarize` results keyed by (planner, horizon)."""
    lines = [
        "| planner | H | episodes | success [95% CI] | model success | median time of successes (s) | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for (planner, horizon), s in summaries.items():
        t = s["median_planning_time_s"]
        lines.append(
            f"| {planner} | {horizon} | {s['count']} | {100 * s['success_rate']:.1f}% "
            f"[{100 * s['success_low']:.1f}, {100 * s['success_high']:.1f}] | {100 * s['model_success_rate']:.1f}% | "
            f"{'-' if math.isnan(t) else f'{t:.2f}'} | {s['failures']} |"
        )
    return "\n".join(lines)
