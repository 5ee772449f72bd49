"""Training a :class:`~wmplan.platform.models.jepa.JepaWorldModel` end to end from a data set's frames.

One loss trains the encoder and the predictor together (no pixel reconstruction, no frozen
encoder, no stop-gradient, no target network, as in LeWM). A batch holds windows of
``rollout_steps + 1`` frames one model step (``frameskip`` env steps) apart, with the packed env
actions in between; every frame is encoded, the predictor unrolls open loop from the first latent
under the recorded actions, and

    loss = mean_j |z_hat_j - z_j|^2  +  sigreg_weight * SIGReg(all latents of the batch)

where the second term (:func:`~wmplan.platform.models.jepa.sigreg`) keeps the latents spread like
an isotropic standard Gaussian: without it the encoder could map every picture to one point and
predict it perfectly. Then the encoder is frozen (eval mode, as planners use it), every training
frame is encoded once, and the predictor alone is trained further on those latents with longer
open-loop unrolls (``predictor_rollout_steps``), which is cheap: no picture is encoded again.
Last, a small state probe (latents to env states) is fitted for reporting only.

With ``proprio`` (DINO-WM's proprioception), the planning state is ``[z, p]``: ``p`` is the
proprioceptive part of the data's simulator states (:meth:`wmplan.platform.envs.Env.proprio`),
normalised by its training mean and standard deviation, and the predictor predicts it too; each
unroll step's error is then the latent MSE plus the proprio MSE (as DINO-WM's teacher-forced
visual and proprio losses), and SIGReg looks at the latent only.

Deterministic for a seed on the CPU: the initialisation, the batch order and the SIGReg
directions come from private generators.

Two recipes (:data:`JEPA_PRESETS`): ``cpu``, the defaults, sized to train in minutes on two
cores; ``gpu``, a wider encoder and latent trained longer on larger batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from wmplan.platform.envs import make_env
from wmplan.platform.errors import ConfigError, unknown_name_error
from wmplan.platform.models.jepa import JepaModelConfig, JepaWorldModel, random_directions, sigreg
from wmplan.platform.models.training import STD_FLOOR, TrainConfig, descend, transition_windows
from wmplan.platform.models.visual import frames_to_tensor, state_mse
from wmplan.platform.models.visual_training import mean_picture
from wmplan.platform.options import require
from wmplan.platform.threads import torch_threads

if TYPE_CHECKING:
    from wmplan.platform.data import Dataset, Trajectory

__all__ = ["JepaTrainConfig", "JEPA_PRESETS", "jepa_train_config", "train_jepa_model", "jepa_loss"]

Progress = Callable[[str, int, int, float], None]
"""Called as ``progress(stage, step, total_steps, loss)`` after every gradient step, with stage
``'jepa'`` then ``'probe'``."""


@dataclass(frozen=True, kw_only=True)
class JepaTrainConfig(TrainConfig):
    """How to train a JEPA world model: the shared options (inherited) plus the encoder's and the loss's.

    ``steps``, ``batch_size`` (windows per step), ``lr``, ``rollout_steps``, ``hidden`` and
    ``depth`` (the predictor) keep their meaning; the defaults are the CPU recipe.
    """

    steps: int = 1000
    """Joint gradient steps of encoder and predictor."""
    batch_size: int = 32
    """Windows of ``rollout_steps + 1`` frames per step."""
    channels: int = 16
    """Encoder: channels of the first convolution."""
    keypoints: int = 16
    """Encoder: keypoint maps (the latent sees ``2 * keypoints`` coordinates)."""
    projector_hidden: int = 256
    """Encoder: hidden width of the projector."""
    latent_dim: int = 32
    """``D``: size of the latent state planners search."""
    env_step_predictor: bool = False
    """The predictor takes one env action at a time (see :class:`~wmplan.platform.models.jepa.JepaModelConfig`)."""
    sigreg_weight: float = 1.0
    """Weight of the SIGReg anti-collapse term (0: plain next-latent MSE, which collapses)."""
    sigreg_directions: int = 256
    """Random unit directions of each SIGReg evaluation (drawn anew every step)."""
    predictor_steps: int = 4000
    """Steps of the last stage: the predictor alone on the frozen encoder's latents (0: none)."""
    predictor_batch_size: int = 256
    """Windows per step of the last stage."""
    predictor_rollout_steps: int = 5
    """Model steps unrolled open loop in the last stage's loss (the planners' horizon; measured on Wall:
    CEM at H = 5 reached 36% of 50 episodes after 2000 more steps at 5, against 22% at 3)."""
    probe_steps: int = 2000
    """Gradient steps of the state probe (an MLP from latents to env states, for reporting only)."""
    proprio: bool = False
    """Carry the simulator's proprioceptive state beside the latent (DINO-WM's ``[visual, proprio]``
    state, predicted too), so that planning may weigh it (``proprio_weight``); the task must have one."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(not self.env_step, "env_step is for state models; a JEPA's predictor of one env step is env_step_predictor")
        require(self.channels >= 1 and self.keypoints >= 1, "channels and keypoints must be >= 1")
        require(self.projector_hidden >= 1 and self.latent_dim >= 1, "projector_hidden and latent_dim must be >= 1")
        require(self.sigreg_weight >= 0, f"sigreg_weight must be >= 0, got {self.sigreg_weight}")
        require(self.sigreg_directions >= 1, f"sigreg_directions must be >= 1, got {self.sigreg_directions}")
        require(self.probe_steps >= 1, f"probe_steps must be >= 1, got {self.probe_steps}")
        require(self.predictor_steps >= 0, f"predictor_steps must be >= 0, got {self.predictor_steps}")
        require(self.predictor_batch_size >= 1, f"predictor_batch_size must be >= 1, got {self.predictor_batch_size}")
        require(self.predictor_rollout_steps >= 1, f"predictor_rollout_steps must be >= 1, got {self.predictor_rollout_steps}")


JEPA_PRESETS: Mapping[str, Mapping[str, Any]] = {
    "cpu": {},
    "gpu": dict(steps=20000, batch_size=256, channels=64, keypoints=32, projector_hidden=512, latent_dim=64,
                hidden=512, depth=4, rollout_steps=4, predictor_steps=20000, predictor_batch_size=1024, probe_steps=5000),
}
"""Training recipes by name: ``cpu`` (the defaults: 1000 joint steps of 32 windows, then 4000
predictor steps of 256 windows; minutes on two cores) and ``gpu`` (20,000 joint steps of 256
windows with a wider encoder, latent and predictor, then 20,000 predictor steps of 1024 windows:
200x the CPU recipe's frames, each about 4-8x dearer to encode; not measured here, no GPU was lent).
The CPU recipe trained on Wall's 50 x 400-step frames in 399 s on two cores shared with other work
(137 s of CPU time)."""


def jepa_train_config(preset: str = "cpu", **options: Any) -> JepaTrainConfig:
    """The :class:`JepaTrainConfig` of a named preset (:data:`JEPA_PRESETS`), ``options`` overriding it.

    Raises:
        ConfigError: an unknown preset, or an option the config rejects.
    """
    if preset not in JEPA_PRESETS:
        raise unknown_name_error("preset", preset, tuple(JEPA_PRESETS))
    return JepaTrainConfig(**{**JEPA_PRESETS[preset], **options})


def jepa_loss(model: JepaWorldModel, frames: torch.Tensor, actions: torch.Tensor, directions: torch.Tensor,
              *, sigreg_weight: float, proprio: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training loss of one batch of windows.

    Args:
        model: the model (its encoder in training mode, for BatchNorm's batch statistics).
        frames: ``[B, k+1, S, S, 3]`` frames one model step apart (uint8 or floats in [0, 1]).
        actions: ``[B, k, A]`` packed env actions between them.
        directions: ``[D, M]`` unit directions of SIGReg.
        sigreg_weight: weight of the anti-collapse term.
        proprio: ``[B, k+1, P]`` normalised proprio of the frames, for a model with proprio (else None).

    Returns:
        ``(loss, prediction, regulariser)``: the total, the mean squared error of the open-loop
        predictions per latent dimension, and the SIGReg statistic.
    """
    z = model.embed(frames)  # [B, k+1, D]
    if (proprio is None) != (model.proprio_dim == 0):
        raise ValueError(f"proprio must be given exactly for a model with proprio (proprio_dim {model.proprio_dim})")
    states = z if proprio is None else torch.cat([z, proprio.to(z.dtype)], dim=-1)  # [B, k+1, D + P]
    k = actions.shape[1]
    pred = states[:, 0]
    prediction = torch.zeros((), device=z.device)
    for j in range(k):
        pred = model.step(pred, actions[:, j])
        prediction = prediction + state_mse(model, pred, states[:, j + 1])
    prediction = prediction / k
    regulariser = sigreg(z.reshape(-1, z.shape[-1]), directions)
    return prediction + sigreg_weight * regulariser, prediction, regulariser


def _frames_of(trajectories: list[Trajectory], dataset: Dataset) -> np.ndarray:
    if any(t.frames is None for t in trajectories):
        raise ConfigError(
            f"data set {str(dataset.path)!r} has no frames: generate one with "
            f"'wmplan data --env {dataset.env} --frames' for a model of pictures"
        )
    return np.concatenate([t.frames for t in trajectories])


def _index_windows(trajectories: list[Trajectory], frameskip: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows as indices into the trajectories' concatenated frames: ``[N, k+1]`` int64 and packed actions ``[N, k, A]``."""
    offsets = np.cumsum([0] + [len(t.states) for t in trajectories[:-1]])  # one frame per state
    indexed = [SimpleNamespace(states=(o + np.arange(len(t.states)))[:, None], actions=t.actions) for o, t in zip(offsets, trajectories)]
    idx, actions = transition_windows(indexed, frameskip, k)
    return idx[..., 0].astype(np.int64), actions


def fit_jepa_probe(model: JepaWorldModel, z: torch.Tensor, states: np.ndarray, config: JepaTrainConfig, *,
                   progress: Progress | None = None) -> float:
    """Fit the state probe (latents ``z [N, D]`` to env states ``[N, D_env]``) in normalised state
    units; returns the seconds it took. The probe is frozen afterwards."""
    device = z.device
    mean, std = states.mean(0), np.maximum(states.std(0), STD_FLOOR)
    model.set_buffers(state_mean=mean, state_std=std)
    y = torch.as_tensor((states - mean) / std, dtype=torch.float32, device=device)
    model.probe.requires_grad_(True)
    gen = torch.Generator().manual_seed(config.seed + 3)

    def batch_loss(step: int) -> torch.Tensor:
        idx = torch.randint(len(z), (min(256, len(z)),), generator=gen).to(device)
        return (model.probe(z[idx]) - y[idx]).pow(2).mean()

    _, _, seconds = descend(list(model.probe.parameters()), batch_loss, steps=config.probe_steps, lr=1e-3,
                            weight_decay=config.weight_decay, device=device,
                            progress=(lambda s, n, loss: progress("probe", s, n, loss)) if progress else None)
    model.probe.requires_grad_(False)
    return seconds


def fit_predictor(model: JepaWorldModel, z: torch.Tensor, windows: torch.Tensor, actions: torch.Tensor, config: JepaTrainConfig, *,
                  progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """The last stage: the predictor alone on the frozen encoder's latents.

    Args:
        model: the model; only its predictor is trained.
        z: ``[N, D + P]`` planning states of every training frame (eval-mode encoder, and proprio).
        windows: ``[W, n+1]`` indices into ``z`` of frames one model step apart (``n = predictor_rollout_steps``),
            or one env step apart for an ``env_step_predictor`` (``n = predictor_rollout_steps * frameskip``).
        actions: ``[W, n, A]`` the packed actions between them, or ``[W, n, A / frameskip]`` env actions.
        config: ``predictor_steps``, ``predictor_batch_size``, ``lr`` and the rest of the loop's options.
        progress: called after every step with ``(step, total_steps, loss)``.

    Returns:
        ``predictor_loss`` (open-loop MSE per latent dimension over the window's env steps, mean
        of the last 5% of steps), ``predictor_loss_first`` and ``predictor_seconds``.
    """
    device = z.device
    n = actions.shape[1]
    advance = model.env_step if model.config.env_step_predictor else model.step
    gen = torch.Generator().manual_seed(config.seed + 4)
    batch = min(config.predictor_batch_size, len(windows))

    def batch_loss(step: int) -> torch.Tensor:
        rows = torch.randint(len(windows), (batch,), generator=gen)
        z_true, a = z[windows[rows].to(device)], actions[rows.to(device)]
        pred = z_true[:, 0]
        loss = torch.zeros((), device=device)
        for j in range(n):
            pred = advance(pred, a[:, j])
            loss = loss + state_mse(model, pred, z_true[:, j + 1])
        return loss / n

    model.predictor.requires_grad_(True)
    first, last, seconds = descend(list(model.predictor.parameters()), batch_loss, steps=config.predictor_steps, lr=config.lr,
                                   weight_decay=config.weight_decay, grad_clip=config.grad_clip, schedule=config.lr_schedule,
                                   device=device, progress=progress)
    model.predictor.requires_grad_(False)
    return {"predictor_loss": last, "predictor_loss_first": first, "predictor_seconds": seconds}


def _one_step_mse(model: JepaWorldModel, z: torch.Tensor, actions: torch.Tensor) -> tuple[float, float]:
    """Mean squared one-step error per latent dimension of ``z [N, 2, D]`` under ``actions [N, 1, A]``,
    and that of predicting no motion."""
    with torch.no_grad():
        pred = model.step(z[:, 0], actions[:, 0])
        return float((pred - z[:, 1]).pow(2).mean()), float((z[:, 0] - z[:, 1]).pow(2).mean())


def train_jepa_model(
    dataset: Dataset,
    config: JepaTrainConfig | None = None,
    *,
    progress: Progress | None = None,
) -> tuple[JepaWorldModel, dict[str, Any]]:
    """Train a :class:`JepaWorldModel` on the train split of a data set with frames.

    Returns:
        The model (on ``config.device``, eval mode, every parameter frozen) and metrics:
        ``train_loss`` / ``train_loss_first`` (total loss, mean of the last 5% of steps and the
        first step), ``train_prediction_mse`` and ``train_sigreg`` (the two terms over the last 5%
        of steps), ``train_seconds``, ``frames_per_s`` (frames encoded per second of training),
        ``probe_seconds``, ``latent_std_min`` / ``latent_std_mean`` (per-dimension standard
        deviation of the training latents: near 0 is a collapse), ``val_mse_before`` (one-step
        MSE of predicting no motion, per latent dimension, val split) and ``val_mse_after`` (the
        model's), ``probe_val_rmse`` (env units per state dimension), ``latent_dim``,
        ``train_frames``, ``train_windows``, ``total_seconds``, ``proprio_dim`` (0 without proprio).

    Raises:
        ConfigError: the data set has no frames or no training trajectories, its trajectories
            are too short for ``rollout_steps``, or ``proprio`` is asked of a task without proprio.
    """
    config = config if config is not None else JepaTrainConfig()
    with torch_threads(config.threads):
        return _train(dataset, config, progress=progress)


def _train(dataset: Dataset, config: JepaTrainConfig, *, progress: Progress | None) -> tuple[JepaWorldModel, dict[str, Any]]:
    t_start = time.perf_counter()
    train, val = dataset.split("train"), dataset.split("val")
    if not train:
        raise ConfigError(f"data set {str(dataset.path)!r} has no training trajectories")
    f, k = dataset.frameskip, config.rollout_steps
    frames = _frames_of(train, dataset)
    val_frames = _frames_of(val, dataset) if val else None
    idx, win_actions = _index_windows(train, f, k)
    if len(idx) == 0:
        raise ConfigError(
            f"trajectories of {len(train[0].actions)} env steps are too short for rollout_steps={k} at frameskip {f} "
            f"(need at least {k * f}); lower rollout_steps or generate longer trajectories"
        )
    device = torch.device(config.device)
    env = make_env(dataset.env)
    if config.proprio and not env.has_proprio():
        raise ConfigError(f"task {dataset.env!r} has no proprioceptive state (its Env sets no proprio_coords): train without proprio")
    p_dim = env.proprio_dim() if config.proprio else 0
    model_config = JepaModelConfig(
        env=dataset.env, state_dim=int(dataset.meta["state_dim"]), action_dim=f * len(env.action_low), frameskip=f,
        env_action_low=tuple(float(x) for x in env.action_low), env_action_high=tuple(float(x) for x in env.action_high),
        frame_size=int(frames.shape[1]), channels=config.channels, keypoints=config.keypoints,
        projector_hidden=config.projector_hidden, latent_dim=config.latent_dim, hidden=config.hidden, depth=config.depth,
        env_step_predictor=config.env_step_predictor, proprio_dim=p_dim, activation=config.activation,
    )
    model = JepaWorldModel(model_config, seed=config.seed).to(device)
    actions = np.concatenate([t.actions for t in train])
    model.set_buffers(action_mean=np.tile(actions.mean(0), f), action_std=np.tile(np.maximum(actions.std(0), STD_FLOOR), f))
    with torch.no_grad():
        model.encoder.frame_mean.copy_(mean_picture(frames, device=device).permute(2, 0, 1))
    proprio = val_proprio = p_norm = None
    if p_dim:
        proprio = np.concatenate([env.proprio(t.states) for t in train])  # [N, P]: one per frame, env units
        val_proprio = np.concatenate([env.proprio(t.states) for t in val]) if val else None
        model.set_buffers(proprio_mean=proprio.mean(0), proprio_std=np.maximum(proprio.std(0), STD_FLOOR))
        p_norm = (torch.as_tensor(proprio, dtype=torch.float32, device=device) - model.proprio_mean) / model.proprio_std

    data = torch.as_tensor(frames)  # uint8 on the host; batches move to the device
    idx_t = torch.as_tensor(idx)
    act_t = torch.as_tensor(win_actions, dtype=torch.float32, device=device)
    gen = torch.Generator().manual_seed(config.seed + 1)  # batch order
    dir_gen = torch.Generator().manual_seed(config.seed + 2)  # SIGReg directions
    n = len(idx)
    batch = min(config.batch_size, n)
    perm, pos = torch.randperm(n, generator=gen), 0
    tail = max(1, config.steps // 20)
    terms = torch.zeros(2)

    def batch_loss(step: int) -> torch.Tensor:
        nonlocal perm, pos
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        rows = perm[pos : pos + batch]
        pos += batch
        x = frames_to_tensor(data[idx_t[rows]], device=device)  # [B, k+1, S, S, 3]
        directions = random_directions(config.latent_dim, config.sigreg_directions, dir_gen).to(device)
        p = None if p_norm is None else p_norm[idx_t[rows].to(device)]  # [B, k+1, P]
        loss, prediction, regulariser = jepa_loss(model, x, act_t[rows.to(device)], directions, sigreg_weight=config.sigreg_weight,
                                                  proprio=p)
        if step >= config.steps - tail:
            terms.add_(torch.stack([prediction.detach(), regulariser.detach()]).cpu())
        return loss

    model.train()
    first, last, seconds = descend(
        [p for n_, p in model.named_parameters() if not n_.startswith("probe.")], batch_loss, steps=config.steps,
        lr=config.lr, weight_decay=config.weight_decay, grad_clip=config.grad_clip, schedule=config.lr_schedule,
        device=device, progress=(lambda s, total, loss: progress("jepa", s, total, loss)) if progress else None)
    model.eval()
    model.requires_grad_(False)

    metrics: dict[str, Any] = {
        "train_loss": last, "train_loss_first": first,
        "train_prediction_mse": float(terms[0]) / tail, "train_sigreg": float(terms[1]) / tail,
        "train_seconds": seconds, "frames_per_s": config.steps * batch * (k + 1) / seconds if seconds > 0 else math.inf,
        "train_windows": n, "steps": config.steps, "rollout_steps": k,
    }
    z_train = model.encode(data, proprio=proprio)  # [N, D + P]: the frozen encoder's latents (and proprio), as planners see them
    std = z_train[:, : model.latent_dim].std(0)
    metrics.update(latent_std_min=float(std.min()), latent_std_mean=float(std.mean()))
    if config.predictor_steps:
        kp = config.predictor_rollout_steps
        p_idx, p_actions = _index_windows(train, 1, kp * f) if config.env_step_predictor else _index_windows(train, f, kp)
        if len(p_idx) == 0:
            raise ConfigError(f"trajectories of {len(train[0].actions)} env steps are too short for predictor_rollout_steps={kp} "
                              f"at frameskip {f} (need at least {kp * f})")
        metrics.update(fit_predictor(model, z_train, torch.as_tensor(p_idx), torch.as_tensor(p_actions, dtype=torch.float32, device=device), config,
                                     progress=(lambda s, total, loss: progress("predictor", s, total, loss)) if progress else None))
    metrics["probe_seconds"] = fit_jepa_probe(model, z_train, np.concatenate([t.states for t in train]), config, progress=progress)
    model.eval()
    model.requires_grad_(False)
    metrics["val_mse_before"] = metrics["val_mse_after"] = metrics["probe_val_rmse"] = None
    if val and val_frames is not None:
        z_val = model.encode(val_frames, proprio=val_proprio)
        v_idx, v_actions = _index_windows(val, f, 1)
        if len(v_idx):
            after, before = _one_step_mse(model, z_val[torch.as_tensor(v_idx, device=device)],
                                          torch.as_tensor(v_actions, dtype=torch.float32, device=device))
            metrics.update(val_mse_before=before, val_mse_after=after)
        with torch.no_grad():
            pred = model.decode(z_val).cpu().numpy()
        states = np.concatenate([t.states for t in val])
        metrics["probe_val_rmse"] = [float(x) for x in np.sqrt(((pred - states) ** 2).mean(0))]
    metrics.update(latent_dim=model_config.latent_dim, proprio_dim=p_dim, train_frames=len(frames),
                   total_seconds=time.perf_counter() - t_start)
    return model, metrics
