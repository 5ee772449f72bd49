"""A world model that sees only pictures: a frozen image encoder, a latent predictor, a decoder.

DINO-WM plans in the patch features of a frozen pretrained encoder; this is the same design in
miniature, trained here from the task's own frames::

    e  = Encoder(frame)                  # [C, g, g] grid of features ("patch tokens"), g = S / 8
    z  = (flatten(e) - mean) / scale     # the planner's state: D = C * g * g numbers
    z' = z + MLP([z, normalised action]) # the predictor, one model step = frameskip env steps
    frame ~ Decoder(z)                   # optional: pictures of predicted latents

The encoder is either the built-in convolutional one (trained first as an autoencoder, then frozen
while the predictor learns, so the latent space cannot collapse), or a user's own frozen module
(see :func:`load_user_encoder`): any ``nn.Module`` that maps ``[B, 3, S, S]`` float frames in
``[0, 1]`` to a ``[B, ...]`` tensor of features.

Planners see only ``step`` on ``z``. A goal is an image: the episode runner renders env states in a
scratch copy of the simulator and encodes the pictures (:func:`wmplan.platform.episode.observe`),
so the model never sees a state. For
reporting only, a linear *state probe* fitted on the training latents (``decode``) maps a latent
back to an estimate of the env state; it gives the in-model success of a plan and the env-unit
errors of :func:`~wmplan.platform.models.evaluation.evaluate_model`, and never enters planning.

With ``proprio_dim = P > 0`` (``wmplan train --obs pixels --proprio``) the planning state is
``[z, p]``, as in DINO-WM: ``p`` is the proprioceptive part of the simulator's state
(:meth:`wmplan.platform.envs.Env.proprio`), normalised, given to ``encode`` beside the frames (the
episode runner reads it from the simulator, never from the probe), and the predictor predicts the
next ``p`` too. Planning adds ``proprio_weight`` x the MSE of ``p`` to the latent MSE
(:class:`~wmplan.platform.costs.ProprioCost`); the weight is 0 unless a run sets it.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import Tensor, nn

from wmplan.platform.errors import ConfigError
from wmplan.platform.models.mlp import mlp_layers, set_buffers
from wmplan.platform.models.state_model import PackedActionConfig
from wmplan.platform.options import require
from wmplan.platform.world_model import is_observation_model, rollout

__all__ = [
    "VisualModelConfig", "VisualWorldModel", "ConvEncoder", "ConvDecoder", "load_user_encoder",
    "is_pixel_model", "render_states", "frames_to_tensor", "write_png", "prediction_strip",
    "append_proprio", "check_proprio_weight", "proprio_inputs", "state_mse", "PROPRIO_SETTING",
]

PROPRIO_SETTING = "proprio_weight"
"""The name of the run setting (and loader keyword) that weighs the proprio term of the planning cost."""


@dataclass(frozen=True, kw_only=True)
class VisualModelConfig(PackedActionConfig):
    """Architecture of a :class:`VisualWorldModel`: everything needed to rebuild it from its tensors.

    ``state_dim`` is the env state's length, which only the state probe estimates (never an input).
    """

    frame_size: int = 64
    """Side ``S`` of the square RGB frames the encoder takes, in pixels."""
    encoder: str = "builtin"
    """'builtin' (the convolutional encoder below) or a user encoder 'package.module:factory'."""
    encoder_latent_shape: tuple[int, ...] = ()
    """Shape of one user encoder output (filled in at training time); empty for the built-in one."""
    channels: int = 32
    """Built-in encoder/decoder: channels of the hidden convolutions."""
    latent_channels: int = 8
    """Built-in encoder: feature channels ``C`` of the latent grid (``D = C * (S/8)^2``)."""
    decoder: bool = True
    """Has a decoder for pictures (built-in encoder only)."""
    hidden: int = 256
    """Predictor: width of the hidden layers of the residual MLP."""
    depth: int = 3
    """Predictor: number of hidden layers (>= 1)."""
    probe_hidden: int = 256
    """State probe: width of its two hidden layers."""
    proprio_dim: int = 0
    """``P``: proprioceptive coordinates of the simulator's state carried beside the latent, as in
    DINO-WM (the planning state is ``[z, p]``, ``D + P`` numbers, and the predictor predicts both);
    0: none, the latent alone."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.proprio_dim >= 0, f"proprio_dim must be >= 0, got {self.proprio_dim}")
        require(8 <= self.frame_size <= 512, f"frame_size must be in [8, 512], got {self.frame_size}")
        if self.encoder == "builtin":
            require(self.frame_size % 8 == 0, f"the built-in encoder needs frame_size divisible by 8, got {self.frame_size}")
            require(self.channels >= 1 and self.latent_channels >= 1, "channels and latent_channels must be >= 1")
            require(not self.encoder_latent_shape, "encoder_latent_shape is only for a user encoder")
        else:
            require(":" in self.encoder, f"encoder must be 'builtin' or 'package.module:factory', got {self.encoder!r}")
            require(len(self.encoder_latent_shape) >= 1 and all(n >= 1 for n in self.encoder_latent_shape),
                    f"a user encoder needs encoder_latent_shape (its output shape), got {self.encoder_latent_shape}")
            require(not self.decoder, "a decoder is only trained for the built-in encoder: set decoder to false")
        require(self.hidden >= 1 and self.depth >= 1, "hidden and depth must be >= 1")

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one encoder output (``[C, g, g]`` for the built-in encoder)."""
        if self.encoder == "builtin":
            g = self.frame_size // 8
            return (self.latent_channels, g, g)
        return tuple(self.encoder_latent_shape)

    @property
    def latent_dim(self) -> int:
        """``D``: the number of values of a latent state, what planners optimise per step."""
        return math.prod(self.latent_shape)


class ConvEncoder(nn.Module):
    """``[B, 3, S, S]`` frames in [0, 1] to a ``[B, C, S/8, S/8]`` feature grid (three stride-2 convolutions).

    The training frames' mean picture (buffer ``frame_mean [3, S, S]``, set before training) is
    subtracted first, so the features describe what differs from the usual picture.
    """

    frame_mean: Tensor

    def __init__(self, *, frame_size: int = 64, channels: int = 32, latent_channels: int = 8) -> None:
        super().__init__()
        c = channels
        self.register_buffer("frame_mean", torch.zeros(3, frame_size, frame_size))
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c, c, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c, c, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c, latent_channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x - self.frame_mean)


def _zero_(layer: nn.Module) -> None:
    """Set every parameter of ``layer`` (a last layer's weight and bias) to zero, so that it outputs zeros."""
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()


class ConvDecoder(nn.Module):
    """``[B, C, g, g]`` feature grids back to ``[B, 3, 8g, 8g]`` frames: the mean picture plus a correction.

    The output is not squashed (a saturated sigmoid would stop learning); clamp it to [0, 1] to show it.
    """

    frame_mean: Tensor

    def __init__(self, *, frame_size: int = 64, channels: int = 32, latent_channels: int = 8) -> None:
        super().__init__()
        c = channels
        self.register_buffer("frame_mean", torch.zeros(3, frame_size, frame_size))
        self.net = nn.Sequential(
            nn.Conv2d(latent_channels, c, 3, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(c, 3, 4, stride=2, padding=1),
        )
        _zero_(self.net[-1])  # an untrained decoder draws the mean picture

    def forward(self, e: Tensor) -> Tensor:
        return self.frame_mean + self.net(e)


def load_user_encoder(spec: str) -> nn.Module:
    """Build a user's encoder from ``'package.module:factory'``: import the module, call ``factory()``.

    The factory returns an ``nn.Module`` mapping ``[B, 3, S, S]`` float frames in [0, 1] to
    ``[B, ...]`` features. Its weights come from the user's own file at training time
    (``--encoder-weights``) and are stored in the model's checkpoint; loading the checkpoint
    imports the module again (it must be importable, e.g. on ``PYTHONPATH``).

    Raises:
        ConfigError: the spec is malformed, the module cannot be imported, or the factory is
            missing or does not return an ``nn.Module``.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"encoder must be 'package.module:factory', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import the encoder module {module_name!r} ({exc}); is it on PYTHONPATH?") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"encoder module {module_name!r} has no callable {attr!r}")
    encoder = factory()
    if not isinstance(encoder, nn.Module):
        raise ConfigError(f"encoder factory {spec!r} returned a {type(encoder).__name__}, not a torch.nn.Module")
    return encoder


class VisualWorldModel(nn.Module):
    """Encoder, latent predictor, optional decoder and state probe; a world model on ``z``.

    Implements :class:`~wmplan.platform.world_model.ObservationModel` with ``state_dim = D`` (the
    flattened, normalised latent) and packed env actions: ``observation = 'pixels'`` tells the
    episode runner to give it pictures (:func:`~wmplan.platform.episode.observe`), never states.

    Buffers (saved in checkpoints): ``latent_mean [D]`` and ``latent_scale`` (a scalar: one scale
    for every feature keeps their relative sizes), ``action_mean``/``action_std [A]``, and the
    state probe's output scaling ``state_mean``/``state_std [D_env]``; the probe itself is a small
    MLP (``probe``) fitted after the encoder, frozen like everything else. With proprio (``P > 0``),
    ``state_dim`` is ``D + P`` and ``proprio_mean``/``proprio_std [P]`` normalise it; the plain
    attribute ``proprio_weight`` (a planning setting, 0 by default, not saved) weighs it in the
    planning cost (:meth:`set_proprio_weight`).
    """

    observation: Literal["pixels"] = "pixels"
    latent_mean: Tensor
    latent_scale: Tensor
    action_mean: Tensor
    action_std: Tensor
    state_mean: Tensor
    state_std: Tensor
    proprio_mean: Tensor  # with proprio only
    proprio_std: Tensor
    action_low: Tensor
    action_high: Tensor

    def __init__(self, config: VisualModelConfig, *, seed: int | None = None, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        d, a = config.latent_dim, config.action_dim
        n = d + config.proprio_dim  # the planning state: [latent, proprio]
        self.state_dim = n
        self.latent_dim = d
        self.proprio_dim = config.proprio_dim
        self.proprio_weight = 0.0
        self.action_dim = a
        self.frame_size = config.frame_size
        with torch.random.fork_rng(devices=[], enabled=seed is not None):  # leaves the global generator alone
            if seed is not None:
                torch.manual_seed(seed)
            if config.encoder == "builtin":
                self.encoder: nn.Module = ConvEncoder(frame_size=config.frame_size, channels=config.channels,
                                                      latent_channels=config.latent_channels)
            else:
                self.encoder = encoder if encoder is not None else load_user_encoder(config.encoder)
            self.decoder = ConvDecoder(frame_size=config.frame_size, channels=config.channels,
                                       latent_channels=config.latent_channels) if config.decoder else None
            self.predictor = mlp_layers(n, n, extra_in=a, hidden=config.hidden, depth=config.depth)
        _zero_(self.predictor[-1])  # an untrained predictor says "nothing moves"
        self.register_buffer("latent_mean", torch.zeros(d))
        self.register_buffer("latent_scale", torch.ones(()))
        self.register_buffer("action_mean", torch.zeros(a))
        self.register_buffer("action_std", torch.ones(a))
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed + 1)
            self.probe = mlp_layers(n, config.state_dim, hidden=config.probe_hidden, depth=2)
        self.register_buffer("state_mean", torch.zeros(config.state_dim))
        self.register_buffer("state_std", torch.ones(config.state_dim))
        if config.proprio_dim:  # only then: a checkpoint without proprio keeps its tensors
            self.register_buffer("proprio_mean", torch.zeros(config.proprio_dim))
            self.register_buffer("proprio_std", torch.ones(config.proprio_dim))
        low, high = config.action_bounds()
        self.register_buffer("action_low", low, persistent=False)
        self.register_buffer("action_high", high, persistent=False)

    # -- pictures to latents -------------------------------------------------------------------------

    def features(self, frames: Tensor | np.ndarray) -> Tensor:
        """Raw encoder features, flattened: frames ``[..., S, S, 3]`` (uint8 or float in [0, 1]) to ``[..., D]``."""
        x = frames_to_tensor(frames, device=self.latent_mean.device)
        lead = x.shape[:-3]
        if tuple(x.shape[-3:]) != (self.frame_size, self.frame_size, 3):
            raise ValueError(f"frames must be [..., {self.frame_size}, {self.frame_size}, 3], got {tuple(x.shape)}")
        e = self.encoder(x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2))
        return e.reshape(*lead, -1)

    def encode_latent(self, frames: Tensor | np.ndarray, *, batch: int = 1024) -> Tensor:
        """Frames ``[..., S, S, 3]`` (uint8 RGB, or float in [0, 1]) to visual latents ``z [..., D]`` (no proprio).

        Runs in chunks of ``batch`` frames on the model's device; no gradient flows to the encoder.
        """
        x = frames_to_tensor(frames, device=self.latent_mean.device)
        lead = x.shape[:-3]
        flat = x.reshape(-1, *x.shape[-3:])
        with torch.no_grad():
            out = torch.cat([self.features(flat[i : i + batch]) for i in range(0, len(flat), batch)]) if len(flat) else \
                torch.zeros(0, self.latent_dim, device=x.device)
        return ((out - self.latent_mean) / self.latent_scale).reshape(*lead, self.latent_dim)

    def encode(self, frames: Tensor | np.ndarray, *, batch: int = 1024, proprio: Tensor | np.ndarray | None = None) -> Tensor:
        """Frames ``[..., S, S, 3]`` (uint8 RGB, or float in [0, 1]) to planning states ``[..., D + P]``.

        The visual latent (:meth:`encode_latent`); a model with proprio needs ``proprio [..., P]``,
        the simulator's own proprioceptive state of each frame (env units), normalised and appended.

        Raises:
            ValueError: ``proprio`` missing for a model with proprio, given to one without, or of the wrong shape.
        """
        return append_proprio(self, self.encode_latent(frames, batch=batch), proprio)

    def set_proprio_weight(self, weight: float) -> None:
        """Set ``proprio_weight``, the weight of the proprio MSE in the planning cost (see :func:`check_proprio_weight`)."""
        self.proprio_weight = check_proprio_weight(self, weight)

    def decode(self, z: Tensor) -> Tensor:
        """The state probe: latents ``[..., D]`` to estimated env states ``[..., D_env]`` (reporting only)."""
        return self.state_mean.to(z.dtype) + self.state_std.to(z.dtype) * self.probe(z)

    def reconstruct(self, z: Tensor) -> Tensor:
        """Pictures of latents: ``[..., D]`` (or planning states ``[..., D + P]``, whose proprio is
        not drawn) to frames ``[..., S, S, 3]`` in [0, 1] (needs the decoder)."""
        if self.decoder is None:
            raise ValueError("this visual model has no decoder (trained with a user encoder or decoder: false)")
        z = z[..., : self.latent_dim]
        lead = z.shape[:-1]
        e = (z * self.latent_scale + self.latent_mean).reshape(-1, *self.config.latent_shape)
        return self.decoder(e).clamp(0, 1).permute(0, 2, 3, 1).reshape(*lead, self.frame_size, self.frame_size, 3)

    # -- the world model -----------------------------------------------------------------------------

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        """Predict the next latent: ``z [..., D]``, packed actions ``[..., A]`` (env units) -> ``z' [..., D]``."""
        a = (action - self.action_mean) / self.action_std
        return state + self.predictor(torch.cat([state, a.to(state.dtype)], dim=-1))

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        return self.step(state, action)

    def set_buffers(self, **values: Any) -> None:
        """Set fitted buffers by name (``latent_mean``, ``latent_scale``, ``action_mean``, ...), shape-checked."""
        set_buffers(self, values)

    def extra_repr(self) -> str:
        c = self.config
        proprio = f", P={c.proprio_dim}, proprio_weight={self.proprio_weight:g}" if c.proprio_dim else ""
        return (f"env={c.env!r}, encoder={c.encoder!r}, latent={list(c.latent_shape)} (D={c.latent_dim}){proprio}, "
                f"hidden={c.hidden}, depth={c.depth}")


def build_visual_model(config: VisualModelConfig) -> VisualWorldModel:
    """An untrained model of ``config`` (used to load checkpoints; imports a user encoder's module)."""
    return VisualWorldModel(config)


# -- observations ------------------------------------------------------------------------------------


def append_proprio(model: nn.Module, z: Tensor, proprio: Tensor | np.ndarray | None) -> Tensor:
    """The planning state of a model of pictures: latents ``z [..., D]`` with the normalised proprio appended.

    For a model whose ``proprio_dim`` is ``P > 0`` (buffers ``proprio_mean``/``proprio_std [P]``),
    ``proprio [..., P]`` (env units: the simulator's own, :meth:`wmplan.platform.envs.Env.proprio`)
    is normalised and appended: ``[..., D + P]``. For a model without proprio, ``z`` itself.

    Raises:
        ValueError: ``proprio`` missing for a model with proprio, given to one without, or not ``[..., P]``.
    """
    p_dim = int(getattr(model, "proprio_dim", 0))
    name = type(model).__name__
    if p_dim == 0:
        if proprio is not None:
            raise ValueError(f"this {name} was trained without proprio: encode frames only (no proprio)")
        return z
    if proprio is None:
        raise ValueError(f"this {name} plans on [latent, proprio] ({p_dim} proprio values): give proprio [..., {p_dim}], "
                         "the simulator's own proprioceptive state of each frame (Env.proprio(states))")
    mean, std = cast(Tensor, model.proprio_mean), cast(Tensor, model.proprio_std)
    p = torch.as_tensor(proprio).to(device=mean.device, dtype=mean.dtype)
    if tuple(p.shape) != (*z.shape[:-1], p_dim):
        raise ValueError(f"proprio must be [..., {p_dim}] with the frames' leading shape {tuple(z.shape[:-1])}, got {tuple(p.shape)}")
    return torch.cat([z, ((p - mean) / std).to(z.dtype)], dim=-1)


def state_mse(model: nn.Module, pred: Tensor, target: Tensor) -> Tensor:
    """The training error of predicted planning states ``[..., D + P]`` against ``target``: the MSE
    over all values for a model without proprio; with proprio (``P = model.proprio_dim > 0``), the
    latent MSE plus the proprio MSE, each a mean over its own values (DINO-WM's visual and proprio
    losses), so that ``P`` proprio values are not outweighed by ``D`` latent ones."""
    p_dim = int(getattr(model, "proprio_dim", 0))
    if p_dim == 0:
        return (pred - target).pow(2).mean()
    d = pred.shape[-1] - p_dim
    return (pred[..., :d] - target[..., :d]).pow(2).mean() + (pred[..., d:] - target[..., d:]).pow(2).mean()


def check_proprio_weight(model: object, weight: float) -> float:
    """``weight`` as a float if ``model`` may plan with it: finite and >= 0, and 0 for a model without proprio.

    Raises:
        ConfigError: a negative or non-finite weight, or a nonzero one for a model trained without proprio.
    """
    w = float(weight)
    if not math.isfinite(w) or w < 0:
        raise ConfigError(f"{PROPRIO_SETTING} must be finite and >= 0, got {weight!r}")
    if w != 0 and int(getattr(model, "proprio_dim", 0)) == 0:
        raise ConfigError(
            f"{PROPRIO_SETTING}={w:g} needs a model trained with proprio ('wmplan train --obs pixels --proprio'), but this "
            f"{type(model).__name__} was trained without it (proprio_dim 0); set {PROPRIO_SETTING}=0 or retrain"
        )
    return w


def proprio_inputs(model: object, env: Any, states: np.ndarray) -> dict[str, Any]:
    """The keywords of ``model.encode`` beside the frames of env ``states [..., D_env]``:
    ``{'proprio': env.proprio(states)}`` for a model that carries proprio (read from the
    simulator's state, never estimated), else none.

    Raises:
        ValueError: the model carries proprio and no task (``env`` None) is known to read it from.
    """
    if int(getattr(model, "proprio_dim", 0)) == 0:
        return {}
    if env is None:
        raise ValueError(f"this {type(model).__name__} carries proprio, read from the simulator's state: give its task")
    return {"proprio": env.proprio(states)}


def is_pixel_model(model: object) -> bool:
    """Whether ``model`` observes pictures: :func:`wmplan.platform.world_model.is_observation_model`.

    Raises:
        TypeError: the model declares pictures without the ``ObservationModel`` protocol.
    """
    return is_observation_model(model)


def frames_to_tensor(frames: Tensor | np.ndarray, *, device: torch.device | str = "cpu") -> Tensor:
    """uint8 frames (0..255) or float frames (0..1) ``[..., S, S, 3]`` to float32 in [0, 1] on ``device``."""
    x = torch.as_tensor(frames, device=device)
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    return x.to(torch.float32)


def render_states(env: Any, states: np.ndarray, size: int) -> np.ndarray:
    """Pictures of env states ``[N, D_env]``: ``[N, size, size, 3]`` uint8, drawn in a scratch copy of ``env``."""
    scratch = copy.deepcopy(env)
    frames = []
    for s in np.asarray(states, dtype=np.float64).reshape(-1, np.shape(states)[-1]):
        scratch.reset(state=s)
        frames.append(scratch.render(size))
    return np.stack(frames) if frames else np.zeros((0, size, size, 3), dtype=np.uint8)


# -- user encoder weights -------------------------------------------------------------------------------


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike[str]) -> str:
    """Load a user's encoder weights from a safetensors file (strict); return the file's sha256.

    Raises:
        ConfigError: the file is missing, unreadable, or its tensors do not fit the module.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"encoder weights {str(path)!r} do not exist")
    blob = path.read_bytes()
    try:
        tensors = load(blob)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise ConfigError(f"encoder weights {str(path)!r} are not a readable safetensors file ({exc})") from None
    try:
        encoder.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"encoder weights {str(path)!r} do not fit the encoder: {str(exc).splitlines()[0]} ...") from None
    return hashlib.sha256(blob).hexdigest()


def prediction_strip(model: VisualWorldModel, trajectories: list[Any], *, k: int, frameskip: int, count: int = 4) -> np.ndarray:
    """Predicted against real pictures: an ``[2 * n * S, (k + 1) * S, 3]`` uint8 image.

    For each of the first ``n <= count`` trajectories long enough for ``k`` model steps, one row
    pair: the recorded frames at model steps ``0..k`` (top) and the decoder's pictures of the
    model's open-loop prediction from the first frame under the recorded actions (bottom).
    """
    from wmplan.platform.envs import make_env, pack_actions

    env = make_env(model.config.env) if model.proprio_dim else None  # the proprio of a model that carries it
    rows = []
    for traj in [t for t in trajectories if len(t.actions) >= k * frameskip][:count]:
        real = traj.frames[: k * frameskip + 1 : frameskip]  # [k+1, S, S, 3]
        actions = torch.tensor(pack_actions(traj.actions[: k * frameskip], frameskip), dtype=torch.float32,
                                  device=model.latent_mean.device)
        with torch.no_grad():
            z = rollout(model, model.encode(real[:1], **proprio_inputs(model, env, traj.states[:1])), actions[None])[0]  # [k+1, D]
            pred = model.reconstruct(z).clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
        rows += [np.concatenate(list(real), axis=1), np.concatenate(list(pred), axis=1)]
    if not rows:
        raise ValueError(f"no trajectory is long enough for {k} model steps at frameskip {frameskip}")
    return np.concatenate(rows, axis=0)


# -- pictures to files ------------------------------------------------------------------------------------


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write an ``[H, W, 3]`` uint8 image as a PNG file (no imaging library needed)."""
    img = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3] uint8, got {img.shape}")
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path
