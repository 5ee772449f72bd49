"""Training a :class:`~wmplan.platform.models.state_model.StateWorldModel` on a trajectory data set.

One model step covers ``frameskip`` env steps: the model learns ``s_t -> s_{t+frameskip}`` given the
``frameskip`` env actions in between, packed into one model action. Every start offset ``t`` is
used (sliding windows), so no transition of the data set is wasted. The loss is the mean squared
error in the normalised state space of an open-loop unroll of ``rollout_steps`` model steps,
which trains the model on its own predictions as planners will use it. A model that predicts one
env step at a time (``env_step``) is unrolled over the same windows env step by env step, and every
env step's state is in the loss.

Training is deterministic for a given seed on the CPU: the weight initialisation and the batch
order come from private generators, never from torch's global one.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch

from wmplan.platform.envs import make_env, pack_actions
from wmplan.platform.errors import ConfigError
from wmplan.platform.models.mlp import ACTIVATIONS
from wmplan.platform.models.state_model import StateModelConfig, StateWorldModel
from wmplan.platform.options import require
from wmplan.platform.threads import torch_threads

if TYPE_CHECKING:  # pyarrow is imported only by code that reads data sets
    from wmplan.platform.data import Dataset, Trajectory
    from wmplan.platform.models.visual import VisualWorldModel

__all__ = ["TrainConfig", "train_state_model", "fit_rollouts", "descend", "one_step_mse", "transition_windows", "normalization_stats",
           "data_action_bounds", "state_model_config", "initial_bounds_record"]

STD_FLOOR = 1e-6
"""Smallest standard deviation used for normalisation (a constant dimension would divide by 0)."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train a state-space world model."""

    steps: int = 8000
    """Gradient steps (a fixed budget; one step sees ``batch_size`` windows)."""
    batch_size: int = 256
    """Training windows per gradient step."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    """Learning-rate schedule over ``steps``: cosine decay to zero, or constant."""
    weight_decay: float = 1e-5
    """AdamW's decoupled weight decay."""
    grad_clip: float = 1.0
    """Clip the gradient's global norm to this value (0: no clipping)."""
    rollout_steps: int = 3
    """Model steps unrolled open loop in the loss (1: plain one-step prediction)."""
    seed: int = 0
    """Seed of the weight initialisation and the batch order."""
    hidden: int = 256
    """Width of the model's hidden layers."""
    depth: int = 3
    """Number of hidden layers of the model."""
    activation: Literal["silu", "relu"] = "silu"
    """Activation of the model's hidden layers (:data:`~wmplan.platform.models.mlp.ACTIVATIONS`)."""
    env_step: bool = False
    """Train a model that predicts one env step from one env action, composed ``frameskip`` times per
    model step (:class:`~wmplan.platform.models.state_model.StateModelConfig`'s ``env_step``)."""
    device: str = "cpu"
    """Torch device to train on (``cpu``, ``cuda``, ``cuda:1``, ...); the model is returned there."""
    threads: int = 1
    """Torch CPU threads while training (0: one per core available to the process). One is the
    measured default: fastest on a busy machine, and the weights do not depend on the machine's core
    count (see :mod:`wmplan.platform.threads`)."""
    action_bounds: Literal["env", "data"] = "env"
    """The action bounds planners search within (state models): ``env``, the task's bounds; ``data``,
    the training data's support, per packed action dimension the ``action_percentile`` and
    ``100 - action_percentile`` percentiles of the packed training actions (planners then never try
    actions the model never saw). Stored in the model's config and in the metrics."""
    action_percentile: float = 0.5
    """Lower percentile of the data bounds (``action_bounds = 'data'``); 0: the data's min and max."""

    def __post_init__(self) -> None:
        require(0.0 <= self.action_percentile < 50.0, f"action_percentile must be in [0, 50), got {self.action_percentile}")
        require(self.threads >= 0, f"threads must be >= 0 (0: one per core), got {self.threads}")
        require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        require(self.grad_clip >= 0, f"grad_clip must be >= 0 (0: off), got {self.grad_clip}")
        require(self.rollout_steps >= 1, f"rollout_steps must be >= 1, got {self.rollout_steps}")
        require(self.hidden >= 1, f"hidden must be >= 1, got {self.hidden}")
        require(self.depth >= 1, f"depth must be >= 1, got {self.depth}")
        require(self.activation in ACTIVATIONS, f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")


class StatesAndActions(Protocol):
    """What :func:`transition_windows` reads of a trajectory: a data set's :class:`Trajectory`, or its
    latents paired with its actions."""

    @property
    def states(self) -> np.ndarray: ...

    @property
    def actions(self) -> np.ndarray: ...


def transition_windows(trajectories: Sequence[StatesAndActions], frameskip: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """All windows of ``k`` model steps, from every start offset of every trajectory.

    Args:
        trajectories: states ``[T+1, D]`` and env actions ``[T, 2]`` each.
        frameskip: env steps per model step.
        k: model steps per window.

    Returns:
        ``states [N, k+1, D]`` (``s_t, s_{t+f}, ..., s_{t+kf}``) and packed model actions
        ``[N, k, frameskip * 2]`` (the ``k * frameskip`` env actions in between), float64.
        Trajectories shorter than ``k * frameskip`` env steps contribute nothing.
    """
    span = k * frameskip
    states, actions = [], []
    for traj in trajectories:
        n = len(traj.actions) - span + 1
        if n <= 0:
            continue
        starts = np.arange(n)[:, None]
        states.append(traj.states[starts + frameskip * np.arange(k + 1)[None]])
        actions.append(pack_actions(traj.actions[starts + np.arange(span)[None]], frameskip))
    if not states:
        d = trajectories[0].states.shape[1] if trajectories else 0
        a = trajectories[0].actions.shape[1] if trajectories else 2
        return np.zeros((0, k + 1, d)), np.zeros((0, k, frameskip * a))
    return np.concatenate(states), np.concatenate(actions)


def normalization_stats(trajectories: Sequence[Trajectory], frameskip: int) -> tuple[np.ndarray, ...]:
    """``state_mean, state_std [D]`` over every state and ``action_mean, action_std [frameskip*2]``
    over every env action (tiled ``frameskip`` times), with standard deviations floored."""
    states = np.concatenate([t.states for t in trajectories])
    actions = np.concatenate([t.actions for t in trajectories])
    s_std = np.maximum(states.std(0), STD_FLOOR)
    a_std = np.maximum(actions.std(0), STD_FLOOR)
    return states.mean(0), s_std, np.tile(actions.mean(0), frameskip), np.tile(a_std, frameskip)


def data_action_bounds(trajectories: Sequence[StatesAndActions], frameskip: int, percentile: float,
                       env_low: Sequence[float], env_high: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The packed action bounds ``[frameskip * action_dim]`` the data support: per dimension the
    ``percentile`` and ``100 - percentile`` percentiles of the packed actions of every model step
    (every start offset; 0: min and max), clipped to the env bounds (``env_low`` / ``env_high`` of one
    env action, tiled). A dimension whose data do not spread (high <= low) keeps the env bounds."""
    _, packed = transition_windows(trajectories, frameskip, 1)
    tiled_low, tiled_high = np.tile(np.asarray(env_low, dtype=np.float64), frameskip), np.tile(np.asarray(env_high, dtype=np.float64), frameskip)
    if len(packed) == 0:
        return tuple(map(float, tiled_low)), tuple(map(float, tiled_high))
    low, high = np.percentile(packed[:, 0], [percentile, 100.0 - percentile], axis=0)
    low, high = np.clip(low, tiled_low, tiled_high), np.clip(high, tiled_low, tiled_high)
    flat = high <= low
    low, high = np.where(flat, tiled_low, low), np.where(flat, tiled_high, high)
    return tuple(map(float, low)), tuple(map(float, high))


def state_model_config(dataset: Dataset, config: TrainConfig, train: Sequence[Trajectory]) -> tuple[StateModelConfig, dict[str, Any]]:
    """The architecture of a state model trained on ``dataset`` with ``config``, and the record of its
    action bounds (``action_bounds`` in the metrics: ``source`` env or data, ``percentile``, ``low``, ``high``)."""
    f = dataset.frameskip
    env = make_env(dataset.env)
    env_low = tuple(float(x) for x in env.action_low)
    env_high = tuple(float(x) for x in env.action_high)
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    if config.action_bounds == "data":
        low, high = data_action_bounds(train, f, config.action_percentile, env_low, env_high)
    model_config = StateModelConfig(
        env=dataset.env,
        state_dim=int(dataset.meta["state_dim"]),
        action_dim=f * len(env_low),
        frameskip=f,
        env_action_low=env_low,
        env_action_high=env_high,
        hidden=config.hidden,
        depth=config.depth,
        activation=config.activation,
        env_step=config.env_step,
        action_low=low,
        action_high=high,
    )
    bound_low, bound_high = model_config.action_bounds()
    record = {"source": config.action_bounds, "percentile": config.action_percentile if low else None,
              "low": [float(x) for x in bound_low], "high": [float(x) for x in bound_high]}
    return model_config, record


def one_step_mse(model: StateWorldModel | VisualWorldModel, z_windows: torch.Tensor, actions: torch.Tensor, batch: int = 8192) -> float:
    """Mean over transitions and dimensions of the squared one-step error in model space.

    ``z_windows [N, 2, D]`` are model-space states one model step apart, ``actions [N, 1, A]``.
    """
    total, count = 0.0, 0
    with torch.no_grad():
        for lo in range(0, len(z_windows), batch):
            z = z_windows[lo : lo + batch]
            pred = model.step(z[:, 0], actions[lo : lo + batch, 0])
            total += (pred - z[:, 1]).pow(2).sum().item()
            count += pred.numel()
    return total / count if count else math.nan


def train_state_model(
    dataset: Dataset,
    config: TrainConfig | None = None,
    *,
    progress: Callable[[int, int, float], None] | None = None,
    init: StateWorldModel | None = None,
) -> tuple[StateWorldModel, dict[str, Any]]:
    """Train a :class:`StateWorldModel` on the train split of ``dataset``.

    Args:
        dataset: a data set from :func:`wmplan.platform.data.read_dataset`.
        config: the training options (None: the defaults).
        progress: called after every gradient step with ``(step, total_steps, loss)``; the only
            output of the loop (computing ``loss`` as a float synchronises the device).
        init: fine-tune a copy of this model (its architecture, normalisation and action bounds;
            ``hidden``, ``depth`` and ``action_bounds`` of ``config`` are not used) instead of training
            a new one from ``config.seed``'s initialisation; ``init`` itself is left untouched.

    Returns:
        The model (on ``config.device``, eval mode, parameters frozen) and metrics:
        ``train_loss`` (mean of the last 5% of steps) and ``train_loss_first`` (the first step),
        ``val_mse_before`` / ``val_mse_after`` (one-step MSE in normalised space on the val split,
        None without one), ``train_seconds``, ``transitions_per_s`` (model transitions unrolled per
        second), ``train_windows``, ``val_transitions``, ``epochs``, ``steps``.
    """
    config = config if config is not None else TrainConfig()
    with torch_threads(config.threads):
        return _train_state_model(dataset, config, progress=progress, init=init)


def initial_bounds_record(model: StateWorldModel) -> dict[str, Any]:
    """The ``action_bounds`` record of a model fine-tuned from ``model``: its own bounds, kept."""
    low, high = model.config.action_bounds()
    return {"source": "data" if model.config.action_low else "env", "percentile": None, "kept_from_initial_model": True,
            "low": [float(x) for x in low], "high": [float(x) for x in high]}


def _train_state_model(dataset: Dataset, config: TrainConfig, *, progress: Callable[[int, int, float], None] | None,
                       init: StateWorldModel | None = None) -> tuple[StateWorldModel, dict[str, Any]]:
    train = dataset.split("train")
    val = dataset.split("val")
    f, k = dataset.frameskip, config.rollout_steps
    if not train:
        raise ConfigError(f"data set {str(dataset.path)!r} has no training trajectories")
    w_states, w_actions = transition_windows(train, f, k)
    if len(w_states) == 0:
        steps = len(train[0].actions)
        raise ConfigError(
            f"trajectories of {steps} env steps are too short for rollout_steps={k} at frameskip {f} "
            f"(need at least {k * f}); lower rollout_steps or generate longer trajectories"
        )
    device = torch.device(config.device)
    if init is not None:
        if type(init) is not StateWorldModel:
            raise ConfigError(f"init must be a StateWorldModel (one state MLP), got {type(init).__name__}")
        model = copy.deepcopy(init).to(device).requires_grad_(True)
        bounds = initial_bounds_record(init)
    else:
        model_config, bounds = state_model_config(dataset, config, train)
        model = StateWorldModel(model_config, seed=config.seed)
        model.set_normalization(*normalization_stats(train, f))
        model.to(device)

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32, device=device)

    if model.config.env_step:  # the same windows, every env step's state in the loss
        w_states, w_actions = transition_windows(train, 1, k * f)
    z_all = model.encode(tensor(w_states))  # [N, k+1, D] (env_step: [N, k*f+1, D]), normalised once
    a_all = tensor(w_actions)
    v_states, v_actions = transition_windows(val, f, 1) if val else (np.zeros((0, 2, 1)), np.zeros((0, 1, 1)))
    v_z, v_actions_t = model.encode(tensor(v_states)), tensor(v_actions)
    val_before = one_step_mse(model, v_z, v_actions_t) if len(v_states) else None

    fit = fit_rollouts(model, z_all, a_all, config, progress=progress, step=model.env_step if model.config.env_step else None)
    if model.config.env_step:  # the unroll counted env steps; the record keeps model steps, as the config says
        fit.update(rollout_steps=k, env_steps_unrolled=k * f)

    model.eval()
    model.requires_grad_(False)
    val_after = one_step_mse(model, v_z, v_actions_t) if len(v_states) else None
    metrics: dict[str, Any] = {
        **fit,
        "val_mse_before": val_before,
        "val_mse_after": val_after,
        "val_transitions": len(v_states),
        "action_bounds": bounds,
    }
    return model, metrics


def make_optimizer(params: list[torch.nn.Parameter], *, lr: float, weight_decay: float, steps: int,
                   schedule: str = "cosine") -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a cosine decay to zero over ``steps`` (or a constant rate), stepped once per gradient step."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if schedule == "cosine":
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1.0 + math.cos(math.pi * i / max(1, steps))))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)


def descend(
    params: list[torch.nn.Parameter],
    batch_loss: Callable[[int], torch.Tensor],
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    grad_clip: float = 0.0,
    schedule: str = "cosine",
    device: torch.device,
    progress: Callable[[int, int, float], None] | None = None,
    clip_grads: Callable[[], None] | None = None,
) -> tuple[float | None, float | None, float]:
    """The one gradient-descent loop of every training stage: ``steps`` AdamW steps on ``batch_loss(step)``.

    Clips the gradient's global norm to ``grad_clip`` (0: off), or calls ``clip_grads()`` after each
    backward pass instead when given (e.g. an ensemble clipping each member's gradient on its own),
    and calls ``progress(step, steps, loss)`` after every step (reading the loss synchronises the
    device; nothing else does).

    Returns:
        The first step's loss, the mean loss of the last 5% of steps (None for no steps) and the
        seconds the loop took.
    """
    opt, sched = make_optimizer(params, lr=lr, weight_decay=weight_decay, steps=steps, schedule=schedule)
    tail = max(1, steps // 20)
    tail_sum = torch.zeros((), device=device)
    first = None
    t0 = time.perf_counter()
    for step in range(steps):
        loss = batch_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grads is not None:
            clip_grads()
        elif grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        detached = loss.detach()
        if step == 0:
            first = detached.clone()
        if step >= steps - tail:
            tail_sum += detached
        if progress is not None:
            progress(step + 1, steps, float(detached))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return (float(first) if first is not None else None), (float(tail_sum) / tail if steps else None), seconds


def fit_rollouts(
    model: StateWorldModel | VisualWorldModel,
    z_all: torch.Tensor,
    a_all: torch.Tensor,
    config: TrainConfig,
    *,
    progress: Callable[[int, int, float], None] | None = None,
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Fit ``model.step`` to windows of model-space states by open-loop unrolls (the shared training loop).

    Args:
        model: a world model whose trainable parameters are the ones to fit (frozen ones stay).
        z_all: ``[N, k+1, D]`` windows of model-space states on the training device.
        a_all: ``[N, k, A]`` packed actions of the windows.
        config: steps, batch size, learning rate and schedule, weight decay, clipping, seed.
        progress: called after every step with ``(step, total_steps, loss)``.
        step: the transition the windows are unrolled through (None: ``model.step``; e.g. an
            ``env_step`` model's ``env_step`` over windows one env step apart).

    Returns:
        ``train_loss`` (mean of the last 5% of steps), ``train_loss_first``, ``train_seconds``,
        ``transitions_per_s``, ``train_windows``, ``epochs``, ``steps``, ``rollout_steps``.
    """
    device = z_all.device
    k = a_all.shape[1]
    advance = step if step is not None else model.step
    gen = torch.Generator().manual_seed(config.seed + 1)  # batch order; init used `seed`
    n = len(z_all)
    batch = min(config.batch_size, n)
    perm, pos = torch.randperm(n, generator=gen), 0  # the epoch's order, and where the next batch starts

    def batch_loss(step: int) -> torch.Tensor:
        nonlocal perm, pos
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos : pos + batch].to(device)
        pos += batch
        z_true, a = z_all[idx], a_all[idx]
        z = z_true[:, 0]
        loss = torch.zeros((), device=device)
        for j in range(k):
            z = advance(z, a[:, j])
            loss = loss + (z - z_true[:, j + 1]).pow(2).mean()
        return loss / k

    model.train()
    first_loss, tail_loss, seconds = descend(
        [p for p in model.parameters() if p.requires_grad], batch_loss, steps=config.steps, lr=config.lr,
        weight_decay=config.weight_decay, grad_clip=config.grad_clip, schedule=config.lr_schedule, device=device,
        progress=progress)
    model.eval()
    return {
        "train_loss": tail_loss,
        "train_loss_first": first_loss,
        "train_seconds": seconds,
        "transitions_per_s": config.steps * batch * k / seconds if seconds > 0 else math.inf,
        "train_windows": n,
        "epochs": config.steps * batch / n,
        "steps": config.steps,
        "rollout_steps": k,
    }
