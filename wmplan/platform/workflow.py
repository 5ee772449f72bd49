"""From a task name to a trained model and judged episodes, in one process, for any caller.

``prepare_model`` makes sure a trained world model exists (generating the data set and training
on it when not), ``episode_specs`` draws a task's seeded start/goal pairs, and ``plan_task`` runs
every (planner, horizon) pair on a model object held in memory (the Python API, e.g. for a
benchmark that has just trained one). The commands do not use ``plan_task``: ``wmplan plan`` and
``wmplan run`` are one path, :func:`wmplan.jobs.runner.run_experiment`, with a local or a Ray
executor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from wmplan.platform.data import DataConfig, Dataset, generate_dataset, read_dataset
from wmplan.platform.envs import Env, PixelRecipe
from wmplan.platform.episode import (
    EpisodeRecord,
    EpisodeSpec,
    Mode,
    exploitation_gap,
    make_episode_specs,
    run_episodes,
    summarize,
)
from wmplan.platform.errors import ConfigError, unknown_name_error
from wmplan.platform.models import (
    JEPA_PRESETS,
    EnsembleTrainConfig,
    JepaTrainConfig,
    TrainConfig,
    VisualTrainConfig,
    evaluate_model,
    jepa_train_config,
    load_world_model,
    save_checkpoint,
    train_ensemble_model,
    train_jepa_model,
    train_state_model,
    train_visual_model,
)
from wmplan.platform.planners import make_planner
from wmplan.platform.progress import Progress as Reporter
from wmplan.platform.progress import StageProgress
from wmplan.platform.registry import make_task, task_class
from wmplan.platform.world_model import WorldModel

Progress = Callable[[str], None]
TrainProgress = Callable[[str, int, int, float], None]


OBS = ("state", "pixels")
"""What a task's default world model sees: env states, or rendered frames (a visual model)."""

PIXEL_KINDS = ("visual", "jepa")
"""Model kinds of pictures ``wmplan train --obs pixels --kind`` trains: ``visual`` (a frozen
autoencoder, then a predictor on its latent) or ``jepa`` (encoder and predictor trained together,
:mod:`wmplan.platform.models.jepa`)."""

DEFAULT_PIXEL_KIND = "visual"
"""The kind of a task's default model of pictures (``obs='pixels'``, no ``kind`` given) when its
``pixel_recipe`` names none (a recipe may carry a ``kind``, one of :data:`PIXEL_KINDS`)."""


_RECIPE_OPTIONS = ("proprio", "env_step_predictor", "activation")
"""The training options a pixel recipe sets; those left at :class:`PixelRecipe`'s defaults are not passed
on (the visual kind has none of them)."""


def _check_obs(obs: str) -> None:
    if obs not in OBS:
        raise unknown_name_error("obs", obs, OBS)


def pixel_kind(env: str, kind: str | None = None) -> str:
    """The kind of a model of pictures for task ``env``: ``kind`` when given, else the task's
    ``pixel_recipe.kind``, else :data:`DEFAULT_PIXEL_KIND` (not checked against :data:`PIXEL_KINDS`)."""
    return kind or task_class(env).pixel_recipe.kind or DEFAULT_PIXEL_KIND


def default_data_path(env: str, root: str | Path = ".", *, obs: str = "state") -> Path:
    """Where ``wmplan data`` writes a task's data set by default (``data/ENV-pixels.parquet`` with frames)."""
    _check_obs(obs)
    return Path(root) / "data" / f"{env}{'-pixels' if obs == 'pixels' else ''}.parquet"


def default_checkpoint(env: str, root: str | Path = ".", *, obs: str = "state") -> Path:
    """Where ``wmplan train`` writes a task's model by default (``checkpoints/ENV-pixels`` for a visual one)."""
    _check_obs(obs)
    return Path(root) / "checkpoints" / f"{env}{'-pixels' if obs == 'pixels' else ''}"


def default_data_config(env: str, *, obs: str = "state") -> DataConfig:
    """The data set a task's default model is trained on: the task's ``default_trajectories``
    trajectories of its ``default_trajectory_steps`` env steps (with frames for ``obs='pixels'``:
    as many trajectories as the task's ``pixel_recipe`` says)."""
    _check_obs(obs)
    task = task_class(env)
    if obs == "pixels":
        return DataConfig(env=env, episodes=task.pixel_recipe.trajectories, frames=True, policy=task.pixel_recipe.policy)
    return DataConfig(env=env, episodes=task.default_trajectories)


def default_train_config(env: str, *, obs: str = "state", kind: str | None = None, preset: str = "cpu", device: str = "cpu",
                         **options: Any) -> TrainConfig:
    """The training options of a task's default model; ``options`` override them (checked by the
    config). An option ``members`` (state models) makes it an ensemble's (:class:`EnsembleTrainConfig`).

    For ``obs='pixels'``, ``kind`` (None: the ``kind`` of the task's ``pixel_recipe`` where it has
    one, with the recipe's ``proprio``, ``env_step_predictor`` and ``activation`` unless ``options``
    say otherwise, else
    :data:`DEFAULT_PIXEL_KIND`) picks the model of
    pictures: ``visual`` with the predictor steps of the task's ``pixel_recipe``, or ``jepa`` with
    the recipe ``preset`` (``cpu`` or ``gpu``, :data:`~wmplan.platform.models.JEPA_PRESETS`).

    Raises:
        ConfigError: an unknown kind or preset, a kind or preset for ``obs='state'``, or a bad option.
    """
    _check_obs(obs)
    if obs == "state" and (kind is not None or preset != "cpu"):
        raise ConfigError(f"kind {kind!r} and preset {preset!r} are for models of pictures: add --obs pixels")
    if obs == "pixels" and kind is None:  # the recipe's own kind comes with its proprio, predictor step and activation
        recipe = task_class(env).pixel_recipe
        off = {f.name: f.default for f in fields(PixelRecipe) if f.name in _RECIPE_OPTIONS}
        own = {name: getattr(recipe, name) for name in _RECIPE_OPTIONS if getattr(recipe, name) != off[name]}
        options = {**own, **options}
        kind = pixel_kind(env)
    if obs == "pixels" and kind not in PIXEL_KINDS:
        raise unknown_name_error("kind", str(kind), PIXEL_KINDS)
    if obs == "pixels" and kind == "jepa":
        return jepa_train_config(preset, **{"device": device, **options})
    if obs == "pixels" and preset != "cpu":
        raise ConfigError(f"preset {preset!r} is for kind 'jepa' (presets: {', '.join(JEPA_PRESETS)})")
    if obs == "pixels":
        return VisualTrainConfig(**{"steps": task_class(env).pixel_recipe.predictor_steps, "device": device, **options})
    if "members" in options:
        return EnsembleTrainConfig(**{"device": device, **options})
    return TrainConfig(**{"device": device, **options})


def train_model(
    dataset: Dataset,
    config: TrainConfig,
    checkpoint: Path,
    *,
    progress: TrainProgress | None = None,
    task: Env | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train a state model (``TrainConfig``), a visual one (``VisualTrainConfig``) or a JEPA one
    (``JepaTrainConfig``) on ``dataset``,
    evaluate it on the validation split (k = 10 model steps, or fewer when trajectories are
    shorter) and save it with its metrics and evaluation under ``checkpoint``.

    ``progress(stage, step, total, loss)`` is called after every gradient step. ``task`` is the
    data set's task for the evaluation's obstacle test (None: wmplan's own task of that name).
    """
    model: torch.nn.Module
    if isinstance(config, JepaTrainConfig):
        model, metrics = train_jepa_model(dataset, config, progress=progress)
    elif isinstance(config, VisualTrainConfig):
        model, metrics = train_visual_model(dataset, config, progress=progress)
    elif isinstance(config, EnsembleTrainConfig):
        model, metrics = train_ensemble_model(
            dataset, config, progress=None if progress is None else lambda step, total, loss: progress("ensemble", step, total, loss))
    else:
        model, metrics = train_state_model(
            dataset, config, progress=None if progress is None else lambda step, total, loss: progress("model", step, total, loss))
    val = dataset.split("val")
    k = min([10] + [len(t.actions) // dataset.frameskip for t in val])
    metrics = {**metrics, "evaluation": evaluate_model(model, dataset, k=k, task=task) if val and k >= 1 else None}
    save_checkpoint(model, checkpoint, metrics=metrics)
    return model, metrics


def prepare_model(
    env: str,
    *,
    data_path: Path,
    checkpoint: Path,
    obs: str = "state",
    data_config: DataConfig | None = None,
    train_config: TrainConfig | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> torch.nn.Module:
    """Load the checkpoint, or create it: generate the data set if it is missing, then train.

    ``obs`` says what a model created here sees: ``state``, or ``pixels`` (frames are generated
    with the data, and a visual model is trained with the task's ``pixel_recipe``). An existing
    but broken checkpoint is an error (never silently overwritten). ``progress`` gets what is
    being done and, while data are generated and each training stage runs, a line with the rate
    and ETA at least every 10 s (:class:`~wmplan.platform.progress.Progress`).
    """
    say = progress or (lambda msg: None)
    _check_obs(obs)
    if (checkpoint / "config.json").exists():
        return load_world_model(checkpoint, device=device)
    if not data_path.exists():
        generation = data_config or default_data_config(env, obs=obs)
        if generation.env != env:
            raise ConfigError(f"data config is for {generation.env!r}, not {env!r}")
        frames = f" with {generation.frame_size}x{generation.frame_size} frames" if generation.frames else ""
        say(f"no data set at {data_path}: generating {generation.episodes} trajectories of {env}{frames} ...")
        shown = Reporter(stage="data", total=generation.episodes, unit="trajectories", say=say) if progress else None
        try:
            generate_dataset(generation, data_path, progress=(lambda done, total: shown.update_to(done)) if shown else None)
        finally:
            if shown:
                shown.close()
    dataset = read_dataset(data_path)
    if dataset.env != env:
        raise ConfigError(f"data set {str(data_path)!r} is for task {dataset.env!r}, not {env!r}")
    config = train_config or default_train_config(env, obs=obs, device=device)
    kind = "jepa" if isinstance(config, JepaTrainConfig) else "visual" if isinstance(config, VisualTrainConfig) else "state"
    say(f"no model at {checkpoint}: training a {kind} model on {data_path} ({config.steps} {'joint' if kind == 'jepa' else 'predictor'} steps) ...")
    stages = StageProgress(say=say) if progress else None  # a line per stage every 10 s, rate and ETA
    try:
        model, metrics = train_model(dataset, config, checkpoint, progress=stages, task=make_task(env))
    finally:
        if stages:
            stages.close()
    say(f"trained in {metrics.get('total_seconds', metrics['train_seconds']):.1f} s; validation one-step MSE "
        f"{metrics['val_mse_before']:.4g} -> {metrics['val_mse_after']:.4g}")
    return model.to(device)


def episode_specs(
    env: Env, *, horizon: int, count: int, seed: int, dataset: Dataset | None, goal_mode: str | None = None,
) -> list[EpisodeSpec]:
    """The seeded start/goal pairs of a task in ``goal_mode`` (None: the task's ``default_goal_mode``).

    A mode that replays data (``env.needs_dataset_for_goals``) replays the validation split of
    ``dataset``; the others ignore it.

    Raises:
        ConfigError: the mode needs the data set and none is given.
    """
    mode = goal_mode or env.default_goal_mode
    segments = None
    if env.needs_dataset_for_goals(mode):
        if dataset is None:
            raise ConfigError(f"{env.name} goals ({mode!r}) replay held-out trajectories: give the data set (--data)")
        segments = [(t.states, t.actions) for t in dataset.split("val")]
    return make_episode_specs(env, horizon=horizon, count=count, seed=seed, segments=segments, goal_mode=mode)


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
    model: WorldModel,
    planners: Sequence[str],
    options: Mapping[str, Mapping[str, object]],
    horizons: Sequence[int],
    episodes: int,
    seed: int,
    dataset: Dataset | None,
    mode: Mode = "open_loop",
    replan_every: int = 1,
    device: str = "cpu",
    progress: Progress | None = None,
) -> list[PlanOutcome]:
    """Run ``episodes`` episodes for each planner and horizon; all planners see the same pairs.

    Every planner is built (and its options validated) before any planning starts. ``progress``
    gets each pair's result and, while a pair plans, a line at least every 10 s with the time
    elapsed and the ETA.
    """
    env = make_task(env_name)
    built = {(p, h): make_planner(p, horizon=h, **options.get(p, {})) for h in horizons for p in planners}
    outcomes = []
    shown = Reporter(stage="planning", total=len(built) * episodes, unit="episodes", say=progress) if progress else None
    try:
        for h in horizons:
            specs = episode_specs(env, horizon=h, count=episodes, seed=seed, dataset=dataset)
            for p in planners:
                records = run_episodes(env, model, built[p, h], specs, planner_name=p, mode=mode,
                                       replan_every=replan_every, device=device, plan_seed=seed)
                summary = summarize(records)
                outcomes.append(PlanOutcome(p, h, records, summary))
                if progress and shown:
                    shown.update(len(records))
                    progress(f"{p} H={h}: success {100 * summary['success_rate']:.1f}% "
                             f"(model {100 * summary['model_success_rate']:.1f}%), planning {records[0].planning_time_s:.1f} s")
    finally:
        if shown:
            shown.close()
    return outcomes


def format_outcomes(outcomes: Sequence[PlanOutcome]) -> str:
    """A Markdown table: success with its 95% Wald interval, in-model success, times."""
    return format_summaries({(o.planner, o.horizon): o.summary for o in outcomes})


def format_summaries(summaries: Mapping[tuple[str, int], Mapping[str, float | int]]) -> str:
    """A Markdown table of :func:`wmplan.platform.episode.summarize` results keyed by (planner, horizon).

    ``gap`` is the exploitation gap: in-model minus real success, in percentage points (how often a
    plan fools the model, net). Times are medians over the successful episodes: the time to success
    (until the first plan snapshot that succeeds; the paper's measure, the headline) and the whole
    fixed budget's planning time. Where any episode planned with a proprio term (a model of
    pictures with proprio and a nonzero ``proprio_weight``), a ``proprio alpha`` column gives each
    row's weight (DINO-WM's ``alpha``; ``mixed`` when a row's episodes differ); otherwise the table
    has no such column."""
    weights = {key: float(s.get("proprio_weight", 0.0)) for key, s in summaries.items()}
    proprio = any(w != 0 for w in weights.values())  # NaN (mixed) counts as on
    lines = [
        "| planner | H | episodes | success [95% CI] | model success | gap (points) | time to success (s) | whole budget (s) | failed |"
        + (" proprio alpha |" if proprio else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if proprio else ""),
    ]
    for (planner, horizon), s in summaries.items():
        gap = exploitation_gap(s["model_success_rate"], s["success_rate"])
        times = [s.get("median_time_to_success_s", math.nan), s["median_planning_time_s"]]
        to_success, whole = ("-" if math.isnan(t) else f"{t:.2f}" for t in times)
        w = weights[planner, horizon]
        lines.append(
            f"| {planner} | {horizon} | {s['count']} | {100 * s['success_rate']:.1f}% "
            f"[{100 * s['success_low']:.1f}, {100 * s['success_high']:.1f}] | {100 * s['model_success_rate']:.1f}% | "
            f"{'-' if math.isnan(gap) else f'{100 * gap:+.1f}'} | {to_success} | {whole} | {s['failures']} |"
            + ((" mixed |" if math.isnan(w) else f" {w:g} |") if proprio else "")
        )
    return "\n".join(lines)
