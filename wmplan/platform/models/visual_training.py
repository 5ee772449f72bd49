"""Training a :class:`~wmplan.platform.models.visual.VisualWorldModel` from a data set's frames.

Three stages, each deterministic for a seed on the CPU:

1. **Encoder** (built-in only): a convolutional autoencoder learns to reconstruct the training
   frames. Small objects (the wall task's dot covers a few pixels) would be lost under a plain
   pixel loss, so each pixel's squared error is weighted by ``1 + foreground_weight * |x - mean
   frame|``: pixels that differ from the average picture count more. Then the encoder (and the
   decoder) are frozen, as DINO-WM's pretrained encoder is; a frozen encoder cannot collapse the
   latent space to make prediction easy. A user encoder (``encoder='module:factory'`` with
   ``encoder_weights``) is loaded frozen and this stage is skipped.
2. **Latents**: every frame is encoded once; the latent mean and one global scale are fitted on
   the training split, and a *state probe*, a small MLP regressing env states on latents (for
   reporting in-model success; it never enters planning).
3. **Predictor**: the residual MLP learns ``z_t -> z_{t+frameskip}`` by open-loop unrolls of
   ``rollout_steps`` model steps in the normalised latent space, with the same loop as the state
   models (:func:`~wmplan.platform.models.training.fit_rollouts`).

With ``proprio``, the planning state is ``[z, p]`` (DINO-WM's visual and proprio state): ``p`` is
the proprioceptive part of the data's simulator states (:meth:`wmplan.platform.envs.Env.proprio`),
normalised by its training statistics; the probe reads ``[z, p]``, and the predictor predicts both,
each unroll step's error the latent MSE plus the proprio MSE
(:func:`~wmplan.platform.models.visual.state_mse`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from wmplan.platform.envs import make_env
from wmplan.platform.errors import ConfigError
from wmplan.platform.models.training import (
    STD_FLOOR,
    TrainConfig,
    descend,
    fit_rollouts,
    one_step_mse,
    transition_windows,
)
from wmplan.platform.models.visual import (
    ConvEncoder,
    VisualModelConfig,
    VisualWorldModel,
    frames_to_tensor,
    load_encoder_weights,
    load_user_encoder,
    proprio_inputs,
    state_mse,
)
from wmplan.platform.options import require
from wmplan.platform.threads import torch_threads

if TYPE_CHECKING:
    from wmplan.platform.data import Dataset, Trajectory

__all__ = ["VisualTrainConfig", "train_visual_model", "train_autoencoder", "encode_trajectories"]

Progress = Callable[[str, int, int, float], None]
"""Called as ``progress(stage, step, total_steps, loss)`` after every gradient step, with stage
``'encoder'``, ``'probe'`` or ``'predictor'`` (in that order)."""


@dataclass(frozen=True, kw_only=True)
class VisualTrainConfig(TrainConfig):
    """How to train a visual world model: the predictor's options (inherited) plus the encoder's."""

    steps: int = 4000
    """Predictor gradient steps."""
    encoder_steps: int = 3000
    """Autoencoder gradient steps (built-in encoder; 0 is allowed only for tests of the pipeline)."""
    encoder_batch_size: int = 64
    """Frames per autoencoder step."""
    encoder_lr: float = 2e-3
    """Peak learning rate of the autoencoder (AdamW, cosine decay)."""
    channels: int = 32
    """Built-in encoder/decoder: channels of the hidden convolutions."""
    latent_channels: int = 8
    """Built-in encoder: channels ``C`` of the latent grid; the latent has ``C * (S/8)^2`` values."""
    foreground_weight: float = 10.0
    """Extra weight of pixels that differ from the mean frame in the reconstruction loss."""
    decoder: bool = True
    """Keep the decoder for pictures of predictions (built-in encoder only)."""
    encoder: str = "builtin"
    """'builtin', or a frozen user encoder 'package.module:factory' (needs encoder_weights)."""
    encoder_weights: str = ""
    """A user encoder's weights: a safetensors file on the user's disk."""
    probe_steps: int = 3000
    """Gradient steps of the state probe (an MLP from latents to env states, for reporting only)."""
    proprio: bool = False
    """Carry the simulator's proprioceptive state beside the latent (DINO-WM's ``[visual, proprio]``
    state, predicted too), so that planning may weigh it (``proprio_weight``); the task must have one."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.activation == "silu" and not self.env_step,
                "activation and env_step are for state models (the jepa kind has activation and env_step_predictor)")
        require(self.encoder_steps >= 0, f"encoder_steps must be >= 0, got {self.encoder_steps}")
        require(self.encoder_batch_size >= 1, f"encoder_batch_size must be >= 1, got {self.encoder_batch_size}")
        require(self.encoder_lr > 0, f"encoder_lr must be > 0, got {self.encoder_lr}")
        require(self.foreground_weight >= 0, f"foreground_weight must be >= 0, got {self.foreground_weight}")
        require(self.probe_steps >= 1, f"probe_steps must be >= 1, got {self.probe_steps}")
        if self.encoder == "builtin":
            require(not self.encoder_weights, "encoder_weights is only for a user encoder (encoder='module:factory')")
        else:
            require(bool(self.encoder_weights), f"the user encoder {self.encoder!r} needs encoder_weights (a safetensors file)")


def _frames_of(trajectories: list[Trajectory], dataset: Dataset) -> np.ndarray:
    if any(t.frames is None for t in trajectories):
        raise ConfigError(
            f"data set {str(dataset.path)!r} has no frames: generate one with "
            f"'wmplan data --env {dataset.env} --frames' for a visual model"
        )
    return np.concatenate([t.frames for t in trajectories])


def encode_trajectories(model: VisualWorldModel, trajectories: list[Trajectory], *, batch: int = 512, env: Any = None) -> list[np.ndarray]:
    """Planning states ``[T+1, D + P]`` (float32) of every trajectory's frames, encoded in batches on the
    model's device; a model with proprio reads it from the recorded states with ``env``'s :meth:`~wmplan.platform.envs.Env.proprio`."""
    return [model.encode(t.frames, batch=batch, **proprio_inputs(model, env, t.states)).cpu().numpy()  # type: ignore[arg-type]
            for t in trajectories]  # frames: checked by _frames_of


def train_autoencoder(model: VisualWorldModel, frames: np.ndarray, config: VisualTrainConfig,
                      progress: Progress | None = None) -> dict[str, Any]:
    """Stage 1: fit the built-in encoder and decoder to reconstruct ``frames [N, S, S, 3]`` (uint8).

    Returns ``encoder_loss`` (mean of the last 5% of steps), ``encoder_loss_first``,
    ``encoder_seconds`` and ``encoder_frames_per_s``.
    """
    device = model.latent_mean.device
    assert isinstance(model.encoder, ConvEncoder) and model.decoder is not None  # the built-in autoencoder
    steps = config.encoder_steps
    data = torch.as_tensor(frames)  # uint8 on the host; batches move to the device
    mean_frame = mean_picture(frames, device=device)  # [S, S, 3]
    with torch.no_grad():
        model.encoder.frame_mean.copy_(mean_frame.permute(2, 0, 1))
        model.decoder.frame_mean.copy_(mean_frame.permute(2, 0, 1))
    gen = torch.Generator().manual_seed(config.seed + 2)
    batch = min(config.encoder_batch_size, len(data))
    decoder = model.decoder

    def batch_loss(step: int) -> torch.Tensor:
        idx = torch.randint(len(data), (batch,), generator=gen)
        x = frames_to_tensor(data[idx], device=device)  # [B, S, S, 3]
        recon = decoder(model.encoder(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        weight = 1.0 + config.foreground_weight * (x - mean_frame).abs().mean(-1, keepdim=True)
        return (weight * (recon - x).pow(2)).mean()

    model.encoder.train()
    decoder.train()
    first, tail, seconds = descend(
        list(model.encoder.parameters()) + list(decoder.parameters()), batch_loss, steps=steps, lr=config.encoder_lr,
        weight_decay=config.weight_decay, grad_clip=config.grad_clip, device=device,
        progress=(lambda s, n, loss: progress("encoder", s, n, loss)) if progress else None)
    return {
        "encoder_loss": tail,
        "encoder_loss_first": first,
        "encoder_seconds": seconds,
        "encoder_frames_per_s": steps * batch / seconds if seconds > 0 else None,
    }


def mean_picture(frames: np.ndarray, *, device: torch.device | str = "cpu", batch: int = 4096) -> torch.Tensor:
    """The mean of ``frames [N, S, S, 3]`` (uint8) as ``[S, S, 3]`` floats in [0, 1]."""
    total = torch.zeros(frames.shape[1:], dtype=torch.float64, device=device)
    for lo in range(0, len(frames), batch):
        total += frames_to_tensor(frames[lo : lo + batch], device=device).sum(0, dtype=torch.float64)
    return (total / max(1, len(frames))).float()


def _reconstruction_mse(model: VisualWorldModel, frames: np.ndarray, batch: int = 512) -> tuple[float, float] | None:
    """Mean squared pixel error (values in [0, 1]) of encoding and decoding ``frames``, and that of
    drawing the training frames' mean picture instead (what a collapsed autoencoder scores)."""
    if model.decoder is None or len(frames) == 0:
        return None
    total, baseline = 0.0, 0.0
    mean = model.decoder.frame_mean.permute(1, 2, 0)
    with torch.no_grad():
        for lo in range(0, len(frames), batch):
            x = frames_to_tensor(frames[lo : lo + batch], device=model.latent_mean.device)
            total += (model.reconstruct(model.encode_latent(x)) - x).pow(2).mean().item() * len(x)
            baseline += (mean - x).pow(2).mean().item() * len(x)
    return total / len(frames), baseline / len(frames)


def fit_probe(model: VisualWorldModel, z: np.ndarray, states: np.ndarray, config: VisualTrainConfig, *,
              progress: Progress | None = None) -> dict[str, Any]:
    """Fit the state probe (latents ``z [N, D]`` to env states ``[N, D_env]``) by regression in normalised state units.

    ``progress('probe', step, total_steps, loss)`` is called after every step.
    """
    device = model.latent_mean.device
    mean, std = states.mean(0), np.maximum(states.std(0), STD_FLOOR)
    model.set_buffers(state_mean=mean, state_std=std)
    x = torch.as_tensor(z, dtype=torch.float32, device=device)
    y = torch.as_tensor((states - mean) / std, dtype=torch.float32, device=device)
    model.probe.requires_grad_(True)
    gen = torch.Generator().manual_seed(config.seed + 3)

    def batch_loss(step: int) -> torch.Tensor:
        idx = torch.randint(len(x), (min(config.batch_size, len(x)),), generator=gen).to(device)
        return (model.probe(x[idx]) - y[idx]).pow(2).mean()

    _, _, seconds = descend(list(model.probe.parameters()), batch_loss, steps=config.probe_steps, lr=config.lr,
                            weight_decay=config.weight_decay, device=device,
                            progress=(lambda s, n, loss: progress("probe", s, n, loss)) if progress else None)
    model.probe.requires_grad_(False)
    return {"probe_seconds": seconds}


def train_visual_model(
    dataset: Dataset,
    config: VisualTrainConfig | None = None,
    *,
    progress: Progress | None = None,
) -> tuple[VisualWorldModel, dict[str, Any]]:
    """Train a :class:`VisualWorldModel` on the train split of a data set with frames.

    Returns:
        The model (on ``config.device``, eval mode, every parameter frozen) and metrics: the
        encoder stage's ``encoder_loss`` (mean of the last 5% of steps), ``encoder_loss_first``, ``encoder_seconds``, ``encoder_frames_per_s`` and
        ``val_reconstruction_mse`` (pixels in [0, 1]; None without a decoder) beside
        ``val_mean_picture_mse`` (drawing the mean training picture: an autoencoder that does not
        beat it has collapsed); the predictor's
        ``train_loss``, ``train_seconds``, ``transitions_per_s`` and ``val_mse_before`` /
        ``val_mse_after`` (one-step MSE in the normalised latent space on the val split);
        ``probe_val_rmse`` (the state probe's error per env state dimension, env units);
        ``latent_dim``, ``latent_shape``, ``total_seconds``.

    Raises:
        ConfigError: the data set has no frames or no training trajectories, its trajectories are
            too short for ``rollout_steps``, or a user encoder cannot be loaded.
    """
    config = config if config is not None else VisualTrainConfig()
    with torch_threads(config.threads):
        return _train_visual_model(dataset, config, progress=progress)


def _train_visual_model(dataset: Dataset, config: VisualTrainConfig, *,
                        progress: Progress | None) -> tuple[VisualWorldModel, dict[str, Any]]:
    t_start = time.perf_counter()
    train, val = dataset.split("train"), dataset.split("val")
    if not train:
        raise ConfigError(f"data set {str(dataset.path)!r} has no training trajectories")
    f, k = dataset.frameskip, config.rollout_steps
    train_frames = _frames_of(train, dataset)
    val_frames = _frames_of(val, dataset) if val else np.zeros((0,) + train_frames.shape[1:], dtype=np.uint8)
    size = int(train_frames.shape[1])
    device = torch.device(config.device)
    env = make_env(dataset.env)
    if config.proprio and not env.has_proprio():
        raise ConfigError(f"task {dataset.env!r} has no proprioceptive state (its Env sets no proprio_coords): train without proprio")
    model_config_of = functools.partial(  # the config's fields shared by both encoders
        VisualModelConfig, env=dataset.env, state_dim=int(dataset.meta["state_dim"]), action_dim=f * len(env.action_low), frameskip=f,
        env_action_low=tuple(float(x) for x in env.action_low), env_action_high=tuple(float(x) for x in env.action_high),
        frame_size=size, hidden=config.hidden, depth=config.depth, proprio_dim=env.proprio_dim() if config.proprio else 0,
    )
    metrics: dict[str, Any] = {}
    if config.encoder == "builtin":
        model_config = model_config_of(channels=config.channels, latent_channels=config.latent_channels, decoder=True)
        model = VisualWorldModel(model_config, seed=config.seed).to(device)
        metrics.update(train_autoencoder(model, train_frames, config, progress))
        if not config.decoder:
            model = _without_decoder(model)
    else:
        encoder = load_user_encoder(config.encoder)
        metrics["encoder_sha256"] = load_encoder_weights(encoder, config.encoder_weights)
        encoder.eval()
        with torch.no_grad():
            shape = tuple(encoder(torch.zeros(1, 3, size, size)).shape[1:])
        model_config = model_config_of(encoder=config.encoder, encoder_latent_shape=shape, decoder=False)
        model = VisualWorldModel(model_config, seed=config.seed, encoder=encoder).to(device)
    model.encoder.requires_grad_(False)
    if model.decoder is not None:
        model.decoder.requires_grad_(False)
    model.eval()

    # Stage 2: latents, their normalisation and the state probe.
    with torch.no_grad():
        feats = torch.cat([model.features(train_frames[i : i + 512]) for i in range(0, len(train_frames), 512)])
    mean = feats.mean(0)
    scale = (feats - mean).pow(2).mean().sqrt().clamp_min(STD_FLOOR)
    actions = np.concatenate([t.actions for t in train])
    model.set_buffers(latent_mean=mean, latent_scale=scale,
                      action_mean=np.tile(actions.mean(0), f), action_std=np.tile(np.maximum(actions.std(0), STD_FLOOR), f))
    if model.proprio_dim:
        proprio = np.concatenate([env.proprio(t.states) for t in train])
        model.set_buffers(proprio_mean=proprio.mean(0), proprio_std=np.maximum(proprio.std(0), STD_FLOOR))
    z_train = encode_trajectories(model, train, env=env)
    z_val = encode_trajectories(model, val, env=env) if val else []
    metrics.update(fit_probe(model, np.concatenate(z_train), np.concatenate([t.states for t in train]), config, progress=progress))
    if val:
        with torch.no_grad():
            pred = model.decode(torch.as_tensor(np.concatenate(z_val), device=device)).cpu().numpy()
        metrics["probe_val_rmse"] = [float(x) for x in np.sqrt(((pred - np.concatenate([t.states for t in val])) ** 2).mean(0))]
    recon = _reconstruction_mse(model, val_frames)
    metrics["val_reconstruction_mse"], metrics["val_mean_picture_mse"] = recon if recon else (None, None)

    # Stage 3: the predictor on latent windows.
    latent_trajs = [SimpleNamespace(states=z, actions=t.actions) for z, t in zip(z_train, train)]
    w_z, w_a = transition_windows(latent_trajs, f, k)
    if len(w_z) == 0:
        raise ConfigError(
            f"trajectories of {len(train[0].actions)} env steps are too short for rollout_steps={k} at frameskip {f} "
            f"(need at least {k * f}); lower rollout_steps or generate longer trajectories"
        )

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32, device=device)

    z_all, a_all = tensor(w_z), tensor(w_a)
    if val:
        v_z, v_a = transition_windows([SimpleNamespace(states=z, actions=t.actions) for z, t in zip(z_val, val)], f, 1)
        v_z_t, v_a_t = tensor(v_z), tensor(v_a)
    metrics["val_mse_before"] = one_step_mse(model, v_z_t, v_a_t) if val else None
    model.predictor.requires_grad_(True)
    fit = fit_rollouts if not model.proprio_dim else _fit_proprio_rollouts
    metrics.update(fit(model, z_all, a_all, config, progress=(lambda s, n, loss: progress("predictor", s, n, loss)) if progress else None))
    model.eval()
    model.requires_grad_(False)
    metrics["val_mse_after"] = one_step_mse(model, v_z_t, v_a_t) if val else None
    metrics.update(latent_dim=model_config.latent_dim, latent_shape=list(model_config.latent_shape), proprio_dim=model.proprio_dim,
                   train_frames=len(train_frames), total_seconds=time.perf_counter() - t_start)
    return model, metrics


def _fit_proprio_rollouts(model: VisualWorldModel, z_all: torch.Tensor, a_all: torch.Tensor, config: VisualTrainConfig, *,
                          progress: Callable[[int, int, float], None] | None = None) -> dict[str, Any]:
    """Stage 3 for a model with proprio: open-loop unrolls of windows ``z_all [N, k+1, D + P]`` under
    ``a_all [N, k, A]``, each step's error :func:`~wmplan.platform.models.visual.state_mse` (latent
    MSE plus proprio MSE); the batch order as :func:`~wmplan.platform.models.training.fit_rollouts`'s."""
    device = z_all.device
    k, n = a_all.shape[1], len(z_all)
    gen = torch.Generator().manual_seed(config.seed + 1)
    batch = min(config.batch_size, n)
    perm, pos = torch.randperm(n, generator=gen), 0

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
            z = model.step(z, a[:, j])
            loss = loss + state_mse(model, z, z_true[:, j + 1])
        return loss / k

    model.train()
    first, last, seconds = descend([p for p in model.parameters() if p.requires_grad], batch_loss, steps=config.steps, lr=config.lr,
                                   weight_decay=config.weight_decay, grad_clip=config.grad_clip, schedule=config.lr_schedule,
                                   device=device, progress=progress)
    model.eval()
    return {"train_loss": last, "train_loss_first": first, "train_seconds": seconds, "train_windows": n, "steps": config.steps,
            "rollout_steps": k}


def _without_decoder(model: VisualWorldModel) -> VisualWorldModel:
    """The same model with its decoder dropped (config ``decoder=False``)."""
    import dataclasses

    config = dataclasses.replace(model.config, decoder=False)
    slim = VisualWorldModel(config, encoder=model.encoder).to(model.latent_mean.device)
    state = {n: t for n, t in model.state_dict().items() if not n.startswith("decoder.")}
    slim.load_state_dict(state, strict=True)
    return slim
