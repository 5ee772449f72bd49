"""Rounds of plan / execute / retrain for state models (data aggregation, as in DAgger and MBRL).

A state model trained on the task's data is fooled by planners where the data are thin: the leaky
band a smooth MLP draws at Wall's wall, the corners of the action box. The remedy of DAgger (Ross et
al. 2011, arXiv:1011.0686) and of model-based RL's data aggregation (e.g. PETS, arXiv:1805.12114;
MBPO, arXiv:1906.08253) is to show the model exactly those places: each round

1. draws problems from the task's own distribution (its goal mode) from a seed stream of its own,
   which no evaluation draws from (:func:`round_specs`);
2. plans them open loop with each of the round's planners on the current model;
3. executes the plans in the real simulator and adds the executed transitions to the data (they are
   where the model was wrong whenever a plan failed);
4. fine-tunes the model on the aggregated data (:func:`run_rounds`).

The aggregated data (the original trajectories as round 0, then each round's executed ones) are
written by :func:`wmplan.platform.data.write_trajectories` with a ``round`` column, beside the
original data set, which is left unchanged; the checkpoint's metrics record the rounds (``rounds``:
count, problems, planners, per-round real and in-model success, seconds).
"""

from __future__ import annotations

import dataclasses
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmplan.platform.data import Dataset, Trajectory, write_trajectories
from wmplan.platform.envs import Env
from wmplan.platform.episode import EpisodeRecord, EpisodeSpec, run_episodes, summarize
from wmplan.platform.errors import ConfigError
from wmplan.platform.models.ensemble import EnsembleTrainConfig, EnsembleWorldModel, train_ensemble_model
from wmplan.platform.models.state_model import StateWorldModel
from wmplan.platform.models.training import TrainConfig, one_step_mse, train_state_model, transition_windows
from wmplan.platform.options import require
from wmplan.platform.threads import torch_threads

__all__ = ["RoundsConfig", "RoundsResult", "round_specs", "round_problem_seed", "executed_trajectories", "run_rounds",
           "aggregated_data_path", "write_aggregated", "train_rounds", "ROUND_STREAM"]

ROUND_STREAM = 0x726F756E64
"""The first entropy word of every round problem's seed ("round" in ASCII). Evaluation episodes
(:func:`wmplan.platform.episode.make_episode_specs`, which ``wmplan run``, ``plan``, ``tune`` and the
sweeps use) derive theirs from the 4 words ``(seed, task, horizon, episode)``; round problems from
the 6 words ``(ROUND_STREAM, seed, task, horizon, round, problem)``: another stream of seeds. Goals
that replay data replay the training split in rounds, and the validation split in evaluation."""


@dataclass(frozen=True, kw_only=True)
class RoundsConfig:
    """How to run rounds of plan / execute / retrain on a trained state model."""

    rounds: int = 3
    """Rounds (0: none)."""
    episodes: int = 100
    """Problems each planner plans per round (each planner its own problems)."""
    planners: tuple[str, ...] = ("cem", "gd", "grasp")
    """Planners whose executed plans are added to the data, each at its default options."""
    horizon: int = 5
    """``H`` of the rounds' problems, in model steps (the evaluation protocol's)."""
    steps: int = 2000
    """Gradient steps of the fine-tuning after each round (on the aggregated data)."""
    lr: float = 3e-4
    """Peak learning rate of each round's fine-tuning (cosine decay over ``steps``)."""
    repeat: int = 4
    """Times each executed trajectory is counted in the fine-tuning data (1: aggregated as is; more
    weighs the few executed transitions against the many of the original data)."""
    seed: int = 0
    """Seed of the rounds' problems, plans and fine-tuning batches (a stream no evaluation uses)."""
    goal_mode: str | None = None
    """How problems are drawn (None: the task's default goal mode, as evaluation draws them)."""

    def __post_init__(self) -> None:
        from wmplan.platform.planners import planner_class

        require(self.rounds >= 0, f"rounds must be >= 0, got {self.rounds}")
        require(self.episodes >= 1, f"episodes (problems per planner per round) must be >= 1, got {self.episodes}")
        require(len(self.planners) >= 1, "planners must name at least one planner")
        require(len(set(self.planners)) == len(self.planners), f"planners must not repeat, got {list(self.planners)}")
        for name in self.planners:
            planner_class(name)  # an unknown planner fails here, naming the known ones
        require(self.horizon >= 1, f"horizon must be >= 1, got {self.horizon}")
        require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        require(math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(self.repeat >= 1, f"repeat must be >= 1, got {self.repeat}")


@dataclass(frozen=True)
class RoundsResult:
    """What :func:`run_rounds` returns."""

    model: StateWorldModel
    """The fine-tuned model (eval mode, parameters frozen)."""
    trajectories: tuple[Trajectory, ...]
    """The aggregated data: the original trajectories (round 0), then every round's executed ones."""
    record: dict[str, Any]
    """What the checkpoint stores under ``rounds``: the config, ``seconds`` in all, and ``per_round``."""


def round_problem_seed(*, seed: int, task: str, horizon: int, round_index: int, problem: int) -> int:
    """The 63-bit seed of round problem ``problem`` (see :data:`ROUND_STREAM`)."""
    words = [ROUND_STREAM, int(seed) & ((1 << 63) - 1), zlib.crc32(task.encode("utf-8")), horizon, round_index, problem]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def round_specs(env: Env, *, horizon: int, count: int, seed: int, round_index: int, dataset: Dataset | None,
                goal_mode: str | None = None, first: int = 0) -> list[EpisodeSpec]:
    """``count`` problems of round ``round_index`` (ids ``first .. first+count-1``), drawn as evaluation
    draws its episodes (``env.draw_start_goal`` in the goal mode) but from the rounds' own seeds.

    Args:
        env: the task simulator (a replayed goal changes its current state).
        horizon: ``H`` in model steps.
        count: problems.
        seed: the rounds' seed.
        round_index: the round (1-based).
        dataset: the data set whose *training* split a replaying goal mode replays (never the
            validation split, which evaluation replays).
        goal_mode: None: the task's default.
        first: the first problem's index in the round (so that planners get different problems).

    Raises:
        ConfigError: the goal mode replays data and there are no training trajectories long enough.
    """
    mode = goal_mode or env.default_goal_mode
    if mode not in env.goal_modes:
        raise ConfigError(f"task {env.name!r} has no goal mode {mode!r}; its modes: {', '.join(env.goal_modes)}")
    segments: list[tuple[np.ndarray, np.ndarray]] = []
    if env.needs_dataset_for_goals(mode):
        need = env.frameskip * horizon
        segments = [(t.states, t.actions) for t in (dataset.split("train") if dataset else []) if len(t.actions) >= need]
        if not segments:
            raise ConfigError(f"{env.name} goals ({mode!r}) replay data: the rounds need training trajectories of at "
                              f"least {need} env steps")
    specs = []
    for i in range(first, first + count):
        ep_seed = round_problem_seed(seed=seed, task=env.name, horizon=horizon, round_index=round_index, problem=i)
        pair = env.draw_start_goal(np.random.default_rng(ep_seed), horizon=horizon, goal_mode=mode, segments=segments)
        specs.append(EpisodeSpec(env.name, horizon, i, ep_seed, pair.start, pair.goal, pair.source))
    return specs


def executed_trajectories(records: Sequence[EpisodeRecord], *, first_id: int, round_index: int) -> list[Trajectory]:
    """The executed transitions of ``records`` as training trajectories of round ``round_index``, with
    episode ids from ``first_id``. Episodes that executed no action, or whose states are not finite,
    give none."""
    out: list[Trajectory] = []
    for r in records:
        states, actions = np.array(r.executed_states, dtype=np.float64), np.array(r.actions, dtype=np.float64)
        if len(actions) == 0 or len(states) != len(actions) + 1 or not (np.isfinite(states).all() and np.isfinite(actions).all()):
            continue
        out.append(Trajectory(episode=first_id + len(out), split="train", states=states, actions=actions, round=round_index))
    return out


def _transition_mse(model: StateWorldModel, trajectories: Sequence[Trajectory], frameskip: int) -> float | None:
    """One-step MSE of ``model`` (normalised space) on every model step of ``trajectories``."""
    states, actions = transition_windows(trajectories, frameskip, 1)
    if len(states) == 0:
        return None
    with torch.no_grad():
        z = model.encode(torch.as_tensor(states, dtype=torch.float32, device=model.state_mean.device))
        return one_step_mse(model, z, torch.as_tensor(actions, dtype=torch.float32, device=z.device))


def run_rounds(
    dataset: Dataset,
    model: StateWorldModel,
    train_config: TrainConfig,
    config: RoundsConfig,
    *,
    env: Env,
    device: str | torch.device = "cpu",
    progress: Callable[[str], None] | None = None,
) -> RoundsResult:
    """Rounds of plan / execute / retrain on ``model`` (one state MLP or an ensemble), trained on ``dataset``.

    Each round: every planner of ``config.planners`` plans ``config.episodes`` problems of its own
    (:func:`round_specs`) on the current model, open loop at ``config.horizon``; the plans are
    executed in ``env``; the executed transitions join the training data (round ``r``); the model is
    fine-tuned from its current weights for ``config.steps`` steps (``train_config``'s other options,
    the seed shifted by the round) on the original training split plus every round's trajectories
    (each counted ``config.repeat`` times). The model's one-step MSE on the round's transitions is
    measured before and after its fine-tuning.

    Args:
        dataset: the model's training data (its validation split stays the validation split).
        model: the trained model; left untouched (rounds fine-tune copies).
        train_config: the options it was trained with (``EnsembleTrainConfig`` for an ensemble).
        config: the rounds.
        env: the task simulator the plans are executed in.
        device: where ``model`` lives and planning runs.
        progress: called with a line after each round.

    Returns:
        The fine-tuned model, the aggregated trajectories and the record the checkpoint stores.
    """
    train_config = _fine_tuning_config(model, train_config)
    if env.name != dataset.env:
        raise ConfigError(f"run_rounds: the env is {env.name!r}, the data set's task {dataset.env!r}")
    from wmplan.platform.planners import make_planner

    say = progress or (lambda msg: None)
    t_all = time.perf_counter()
    original = tuple(dataclasses.replace(t, round=0) for t in dataset.trajectories)
    added: list[Trajectory] = []
    next_id = max((t.episode for t in original), default=-1) + 1
    per_round: list[dict[str, Any]] = []
    for r in range(1, config.rounds + 1):
        t0 = time.perf_counter()
        planners: dict[str, dict[str, float]] = {}
        new: list[Trajectory] = []
        with torch_threads(train_config.threads):
            for k, name in enumerate(config.planners):
                specs = round_specs(env, horizon=config.horizon, count=config.episodes, seed=config.seed, round_index=r,
                                    dataset=dataset, goal_mode=config.goal_mode, first=k * config.episodes)
                planner = make_planner(name, horizon=config.horizon)
                records = run_episodes(env, model, planner, specs, planner_name=name, device=device,
                                       plan_seed=round_problem_seed(seed=config.seed, task=env.name, horizon=config.horizon,
                                                                    round_index=r, problem=2**32 - 1 - k))
                s = summarize(records)
                planners[name] = {"success": float(s["success_rate"]), "model_success": float(s["model_success_rate"])}
                new += executed_trajectories(records, first_id=next_id + len(new), round_index=r)
        plan_seconds = time.perf_counter() - t0
        next_id += len(new)
        mse_before = _transition_mse(model, new, dataset.frameskip)
        added += new
        train_set = list(original) + [t for t in added for _ in range(config.repeat)]
        aggregated = Dataset(path=dataset.path, meta=dataset.meta, trajectories=tuple(train_set))
        tune = dataclasses.replace(train_config, steps=config.steps, lr=config.lr, seed=train_config.seed + 7919 * r)
        if isinstance(model, EnsembleWorldModel):
            assert isinstance(tune, EnsembleTrainConfig)
            model, metrics = train_ensemble_model(aggregated, tune, init=model)
        else:
            model, metrics = train_state_model(aggregated, tune, init=model)
        mse_after = _transition_mse(model, new, dataset.frameskip)
        per_round.append({
            "round": r, "planners": planners, "trajectories": len(new),
            "transitions": int(sum(len(t.actions) for t in new)),
            "mse_round_data_before": mse_before, "mse_round_data_after": mse_after,
            "val_mse_after": metrics["val_mse_after"],
            "plan_seconds": plan_seconds, "train_seconds": metrics["train_seconds"],
        })
        shown = ", ".join(f"{p} {100 * v['success']:.0f}% real / {100 * v['model_success']:.0f}% in model" for p, v in planners.items())
        say(f"round {r}/{config.rounds}: {shown}; +{len(new)} trajectories; one-step MSE on them "
            f"{_num(mse_before)} -> {_num(mse_after)}; planning {plan_seconds:.1f} s, fine-tuning {metrics['train_seconds']:.1f} s")
    record = {
        "count": config.rounds, "episodes": config.episodes, "planners": list(config.planners), "horizon": config.horizon,
        "steps": config.steps, "lr": config.lr, "repeat": config.repeat, "seed": config.seed, "goal_mode": config.goal_mode,
        "added_trajectories": len(added), "added_transitions": int(sum(len(t.actions) for t in added)),
        "seconds": time.perf_counter() - t_all, "per_round": per_round,
    }
    return RoundsResult(model=model, trajectories=original + tuple(added), record=record)


def _fine_tuning_config(model: StateWorldModel, config: TrainConfig) -> TrainConfig:
    """``config`` as the config class of ``model``'s kind (an ensemble's architecture options are its own)."""
    shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)}
    if isinstance(model, EnsembleWorldModel):
        if isinstance(config, EnsembleTrainConfig):
            return config
        c = model.config
        return EnsembleTrainConfig(**shared, members=c.members, judge=c.judge, disagreement_weight=c.disagreement_weight)
    return TrainConfig(**shared) if isinstance(config, EnsembleTrainConfig) else config


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def aggregated_data_path(data: str | Path, checkpoint: str | Path) -> Path:
    """Where the aggregated data of a checkpoint trained with rounds go by default: beside the original
    data set, named after both (``data/wall.parquet`` and ``checkpoints/wall-r3`` give
    ``data/wall.wall-r3-rounds.parquet``)."""
    data = Path(data)
    return data.with_name(f"{data.stem}.{Path(checkpoint).name}-rounds.parquet")


def write_aggregated(path: str | Path, result: RoundsResult, dataset: Dataset) -> Path:
    """Write :attr:`RoundsResult.trajectories` to ``path`` (the original data set's metadata, plus
    ``aggregated_from``, the original file, and ``rounds_record``)."""
    meta = {**dataset.meta, "aggregated_from": str(dataset.path), "rounds_record": {k: v for k, v in result.record.items()
                                                                                   if k != "per_round"}}
    return write_trajectories(path, result.trajectories, meta=meta)


def train_rounds(
    dataset: Dataset,
    model: StateWorldModel,
    metrics: dict[str, Any],
    train_config: TrainConfig,
    config: RoundsConfig,
    *,
    checkpoint: str | Path,
    data_out: str | Path,
    env: Env,
    device: str | torch.device = "cpu",
    progress: Callable[[str], None] | None = None,
) -> tuple[StateWorldModel, dict[str, Any]]:
    """:func:`run_rounds` on a model just trained on ``dataset`` (with ``metrics``), then the aggregated
    data written to ``data_out``, the final model evaluated on the validation split and saved to
    ``checkpoint`` with the metrics of its first training, updated: ``rounds`` (the record),
    ``rounds_data`` (the aggregated file), ``val_mse_after`` and ``evaluation`` of the final model,
    ``first_train_seconds`` and ``total_seconds`` (the first training plus every round's planning and
    fine-tuning: the model's training cost)."""
    from wmplan.platform.models.checkpoint import save_checkpoint
    from wmplan.platform.models.evaluation import evaluate_model

    result = run_rounds(dataset, model, train_config, config, env=env, device=device, progress=progress)
    path = write_aggregated(data_out, result, dataset)
    val = dataset.split("val")
    k = min([10] + [len(t.actions) // dataset.frameskip for t in val])
    final = _transition_mse(result.model, val, dataset.frameskip) if val else None
    first = float(metrics.get("total_seconds", metrics["train_seconds"]))
    out = {
        **metrics,
        "rounds": result.record,
        "rounds_data": str(path),
        "val_mse_after": final,
        "first_train_seconds": first,
        "total_seconds": first + float(result.record["seconds"]),
        "evaluation": evaluate_model(result.model, dataset, k=k, task=env) if val and k >= 1 else None,
    }
    save_checkpoint(result.model, checkpoint, metrics=out)
    return result.model, out
