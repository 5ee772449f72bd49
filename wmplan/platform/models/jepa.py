"""An end-to-end latent world model: encoder and predictor trained together from frames (JEPA style).

The visual model (:mod:`wmplan.platform.models.visual`) plans in the features of a frozen
autoencoder, whose distances stop growing once two pictures no longer overlap (beyond about 10
pixels on Wall), so a planner far from its goal sees no direction. Here the encoder is trained
*for prediction*, jointly with the predictor, as in a Joint-Embedding Predictive Architecture
(LeCun, "A Path Towards Autonomous Machine Intelligence", 2022; LeWM, Maes et al., 2025): the
loss is the error of predicting the next frames' latents, not the pixels, and an anti-collapse
term keeps the encoder from mapping every picture to one point::

    h  = conv(conv(frame - mean frame))            # K feature maps of S/4 x S/4
    k  = soft-argmax(h)                            # K expected (x, y) positions: 2K numbers
    z  = projector(k)                              # the planner's state, D numbers
    z' = z + MLP([z, normalised action])           # the predictor, one model step = frameskip env steps

The *keypoint* bottleneck (a spatial soft-argmax, Levine et al., "End-to-End Training of Deep
Visuomotor Policies", JMLR 2016) makes the latent a smooth function of where things are in the
picture, so latent distance keeps growing with true distance. Training is in
:mod:`wmplan.platform.models.jepa_training`.

The predictor takes a model step's ``frameskip`` env actions packed into one vector, as the
planners give them, or, with ``env_step_predictor``, one env action at a time, applied
``frameskip`` times per model step. The data's policy turns its heading smoothly, so the
``frameskip`` actions of a recorded model step are nearly equal and a packed predictor may learn
their sum from whichever of them it likes; one shared env-step function cannot tell them apart.
Measured on Wall with equal short budgets, the packed predictor planned better (CEM at H = 5: 20%
against 2%; the env-step one trained to a higher loss), so it is the default.

Like the visual model, it implements :class:`~wmplan.platform.world_model.ObservationModel`: the
episode runner gives it rendered pictures (``encode``), never states, and a small *state probe*
(``decode``), fitted on the training latents after the encoder, estimates the env state of a
latent for reporting in-model success only; it never enters planning.

With ``proprio_dim = P > 0`` (``wmplan train --obs pixels --proprio``) the planning state is
``[z, p]``, as in DINO-WM: ``p`` is the proprioceptive part of the simulator's state
(:meth:`wmplan.platform.envs.Env.proprio`), normalised, given to :meth:`JepaWorldModel.encode`
beside the frames (the episode runner reads it from the simulator, never from a probe), and the
predictor predicts the next ``p`` too. Planning adds ``proprio_weight`` x the MSE of ``p`` to the
latent cost (:class:`~wmplan.platform.costs.ProprioCost`); the weight is 0 unless a run sets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from wmplan.platform.models.mlp import ACTIVATIONS, mlp_layers, set_buffers
from wmplan.platform.models.state_model import PackedActionConfig
from wmplan.platform.models.visual import append_proprio, check_proprio_weight, frames_to_tensor
from wmplan.platform.options import require

__all__ = ["JepaModelConfig", "JepaWorldModel", "KeypointEncoder", "sigreg", "random_directions", "build_jepa_model"]


@dataclass(frozen=True, kw_only=True)
class JepaModelConfig(PackedActionConfig):
    """Architecture of a :class:`JepaWorldModel`: everything needed to rebuild it from its tensors.

    ``state_dim`` is the env state's length, which only the state probe estimates (never an input).
    """

    frame_size: int = 64
    """Side ``S`` of the square RGB frames the encoder takes, in pixels (divisible by 4)."""
    channels: int = 32
    """Encoder: channels of the first (stride-2) convolution."""
    keypoints: int = 16
    """Encoder: feature maps of the second convolution, each reduced to one (x, y) keypoint."""
    projector_hidden: int = 256
    """Encoder: width of the projector's hidden layer (keypoints to latent)."""
    latent_dim: int = 32
    """``D``: the number of values of a latent state, what planners optimise per step."""
    hidden: int = 256
    """Predictor: width of the hidden layers of the residual MLP."""
    depth: int = 3
    """Predictor: number of hidden layers (>= 1)."""
    env_step_predictor: bool = False
    """Predictor: take one env action and apply it ``frameskip`` times per model step (False: the
    packed model action at once)."""
    activation: Literal["silu", "relu"] = "silu"
    """Predictor: activation of its hidden layers (:data:`~wmplan.platform.models.mlp.ACTIVATIONS`)."""
    probe_hidden: int = 256
    """State probe: width of its two hidden layers."""
    proprio_dim: int = 0
    """``P``: proprioceptive coordinates of the simulator's state carried beside the latent, as in
    DINO-WM (the planning state is ``[z, p]``, ``D + P`` numbers, and the predictor predicts both);
    0: none, the latent alone."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.proprio_dim >= 0, f"proprio_dim must be >= 0, got {self.proprio_dim}")
        require(self.activation in ACTIVATIONS, f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        require(8 <= self.frame_size <= 512 and self.frame_size % 4 == 0,
                f"frame_size must be in [8, 512] and divisible by 4, got {self.frame_size}")
        require(self.channels >= 1 and self.keypoints >= 1, "channels and keypoints must be >= 1")
        require(self.projector_hidden >= 1 and self.latent_dim >= 1, "projector_hidden and latent_dim must be >= 1")
        require(self.hidden >= 1 and self.depth >= 1, "hidden and depth must be >= 1")
        require(self.probe_hidden >= 1, "probe_hidden must be >= 1")


class KeypointEncoder(nn.Module):
    """``[B, 3, S, S]`` frames in [0, 1] to ``[B, D]`` latents through ``K`` soft-argmax keypoints.

    Two stride-2 convolutions give ``K`` maps of ``S/4 x S/4``; each map's softmax (with a
    learned temperature per map) weights the cells' centre coordinates in [-1, 1], giving an
    expected position; the ``2K`` coordinates go through an MLP projector with BatchNorm. The
    training frames' mean picture (buffer ``frame_mean [3, S, S]``) is subtracted first.
    """

    frame_mean: Tensor
    grid: Tensor

    def __init__(self, *, frame_size: int, channels: int, keypoints: int, projector_hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("frame_mean", torch.zeros(3, frame_size, frame_size))
        self.convs = nn.Sequential(
            nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(channels, keypoints, 4, stride=2, padding=1),
        )
        g = frame_size // 4
        centres = (torch.arange(g, dtype=torch.float32) + 0.5) / g * 2 - 1
        yy, xx = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("grid", torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1), persistent=False)  # [g*g, 2]
        self.log_temperature = nn.Parameter(torch.zeros(keypoints))
        self.projector = nn.Sequential(
            nn.Linear(2 * keypoints, projector_hidden), nn.BatchNorm1d(projector_hidden), nn.SiLU(),
            nn.Linear(projector_hidden, latent_dim),
        )

    def keypoints(self, x: Tensor) -> Tensor:
        """``[B, 3, S, S]`` frames to ``[B, 2K]`` keypoint coordinates in [-1, 1] (x then y per map)."""
        h = self.convs(x - self.frame_mean)  # [B, K, g, g]
        weights = torch.softmax(h.flatten(2) * self.log_temperature.exp()[:, None], dim=-1)  # [B, K, g*g]
        return (weights @ self.grid).flatten(1)  # [B, 2K]

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.keypoints(x))


def sigreg(z: Tensor, directions: Tensor, *, knots: int = 17, t_max: float = 3.0) -> Tensor:
    """How far the latents' distribution is from an isotropic standard Gaussian, along random directions.

    The anti-collapse term of LeJEPA's SIGReg (Balestriero and LeCun, "LeJEPA: Provable and
    Scalable Self-Supervised Learning Without the Heuristics", arXiv 2511.08544, 2025), used by
    LeWM: project the batch on ``M`` unit directions and, on each, compare the empirical
    characteristic function with the standard normal one, ``exp(-t^2 / 2)``, by the Epps-Pulley
    statistic ``integral |phi_n(t) - phi(t)|^2 exp(-t^2 / 2) dt`` (trapezoid rule on ``knots``
    points of ``[0, t_max]``; the integrand is even in ``t``). A collapsed latent (every picture
    at one point) scores about 0.3; samples of the Gaussian score about ``1 / N``.

    Args:
        z: ``[N, D]`` latents of a batch.
        directions: ``[D, M]`` unit column vectors.
        knots: points of the integration grid.
        t_max: end of the integration grid.

    Returns:
        A scalar: the mean statistic over the directions (differentiable with respect to ``z``).
    """
    t = torch.linspace(0.0, t_max, knots, device=z.device, dtype=z.dtype)  # [T]
    gauss = torch.exp(-0.5 * t.square())
    dt = t_max / (knots - 1)
    weights = gauss * dt * 2.0  # both halves of the even integrand
    weights = torch.cat([weights[:1] / 2, weights[1:-1], weights[-1:] / 2])  # trapezoid ends
    proj = (z @ directions)[..., None] * t  # [N, M, T]
    real = torch.cos(proj).mean(0) - gauss  # [M, T]
    imag = torch.sin(proj).mean(0)
    return ((real.square() + imag.square()) * weights).sum(-1).mean()


class JepaWorldModel(nn.Module):
    """Keypoint encoder, latent predictor and state probe, trained end to end; a world model on ``z``.

    Implements :class:`~wmplan.platform.world_model.ObservationModel` with ``state_dim = D`` and
    packed env actions: ``observation = 'pixels'`` tells the episode runner to give it pictures.

    Buffers (saved in checkpoints): the encoder's ``frame_mean`` and BatchNorm statistics,
    ``action_mean``/``action_std [A]`` (one env action's statistics tiled ``frameskip`` times), and the state probe's output scaling
    ``state_mean``/``state_std [D_env]``; with proprio, ``proprio_mean``/``proprio_std [P]``.

    ``state_dim`` is ``D + P`` (``latent_dim + proprio_dim``). ``proprio_weight`` (a plain
    attribute, not saved: a planning setting, 0 by default) weighs the proprio term of the planning
    cost; :meth:`set_proprio_weight` sets it.
    """

    observation: Literal["pixels"] = "pixels"
    action_mean: Tensor
    action_std: Tensor
    state_mean: Tensor
    state_std: Tensor
    proprio_mean: Tensor  # with proprio only
    proprio_std: Tensor
    action_low: Tensor
    action_high: Tensor

    def __init__(self, config: JepaModelConfig, *, seed: int | None = None) -> None:
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
            self.encoder = KeypointEncoder(frame_size=config.frame_size, channels=config.channels, keypoints=config.keypoints,
                                           projector_hidden=config.projector_hidden, latent_dim=d)
            a_in = a // config.frameskip if config.env_step_predictor else a
            self.predictor = mlp_layers(n, n, extra_in=a_in, hidden=config.hidden, depth=config.depth, activation=config.activation)
            self.probe = mlp_layers(n, config.state_dim, hidden=config.probe_hidden, depth=2)
        with torch.no_grad():  # an untrained predictor says "nothing moves"
            for p in self.predictor[-1].parameters():
                p.zero_()
        self.register_buffer("action_mean", torch.zeros(a))
        self.register_buffer("action_std", torch.ones(a))
        self.register_buffer("state_mean", torch.zeros(config.state_dim))
        self.register_buffer("state_std", torch.ones(config.state_dim))
        if config.proprio_dim:  # only then: a checkpoint without proprio keeps its tensors
            self.register_buffer("proprio_mean", torch.zeros(config.proprio_dim))
            self.register_buffer("proprio_std", torch.ones(config.proprio_dim))
        low, high = config.action_bounds()
        self.register_buffer("action_low", low, persistent=False)
        self.register_buffer("action_high", high, persistent=False)

    # -- pictures to latents -------------------------------------------------------------------------

    def embed(self, frames: Tensor | np.ndarray) -> Tensor:
        """Frames ``[..., S, S, 3]`` (uint8 or float in [0, 1]) to latents ``[..., D]``, with gradients
        and in the encoder's current mode (training uses this; planners use :meth:`encode`). The
        visual latent only: no proprio."""
        x = frames_to_tensor(frames, device=self.action_mean.device)
        if tuple(x.shape[-3:]) != (self.frame_size, self.frame_size, 3):
            raise ValueError(f"frames must be [..., {self.frame_size}, {self.frame_size}, 3], got {tuple(x.shape)}")
        lead = x.shape[:-3]
        z = self.encoder(x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2))
        return z.reshape(*lead, self.latent_dim)

    def encode(self, frames: Tensor | np.ndarray, *, batch: int = 1024, proprio: Tensor | np.ndarray | None = None) -> Tensor:
        """Frames ``[..., S, S, 3]`` (uint8 RGB, or float in [0, 1]) to planning states ``[..., D + P]``.

        Runs in chunks of ``batch`` frames on the model's device with the encoder in eval mode
        (BatchNorm's running statistics); no gradient flows to the encoder. A model with proprio
        needs ``proprio [..., P]``, the simulator's own proprioceptive state of each frame
        (:meth:`wmplan.platform.envs.Env.proprio`, env units), normalised and appended to the latent.

        Raises:
            ValueError: ``proprio`` missing for a model with proprio, given to one without, or of the wrong shape.
        """
        x = torch.as_tensor(frames)
        if tuple(x.shape[-3:]) != (self.frame_size, self.frame_size, 3):
            raise ValueError(f"frames must be [..., {self.frame_size}, {self.frame_size}, 3], got {tuple(x.shape)}")
        lead = x.shape[:-3]
        flat = x.reshape(-1, *x.shape[-3:])
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with torch.no_grad():
                out = [self.embed(flat[i : i + batch]) for i in range(0, len(flat), batch)]
        finally:
            self.encoder.train(was_training)
        z = torch.cat(out) if out else torch.zeros(0, self.latent_dim, device=self.action_mean.device)
        return append_proprio(self, z.reshape(*lead, self.latent_dim), proprio)

    def set_proprio_weight(self, weight: float) -> None:
        """Set ``proprio_weight``, the weight of the proprio MSE in the planning cost (see :func:`check_proprio_weight`)."""
        self.proprio_weight = check_proprio_weight(self, weight)

    def decode(self, z: Tensor) -> Tensor:
        """The state probe: latents ``[..., D]`` to estimated env states ``[..., D_env]`` (reporting only)."""
        return self.state_mean.to(z.dtype) + self.state_std.to(z.dtype) * self.probe(z)

    # -- the world model -----------------------------------------------------------------------------

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        """Predict the next latent: ``z [..., D]``, packed actions ``[..., A]`` (env units) -> ``z' [..., D]``."""
        a = ((action - self.action_mean) / self.action_std).to(state.dtype)
        if not self.config.env_step_predictor:
            return state + self.predictor(torch.cat([state, a], dim=-1))
        f = self.config.frameskip
        a = a.reshape(*a.shape[:-1], f, self.action_dim // f)
        for i in range(f):
            state = state + self.predictor(torch.cat([state, a[..., i, :]], dim=-1))
        return state

    def env_step(self, state: Tensor, action: Tensor) -> Tensor:
        """One env step of an ``env_step_predictor``: ``z [..., D]`` and one env action
        ``[..., A / frameskip]`` (env units) -> ``[..., D]``."""
        if not self.config.env_step_predictor:
            raise ValueError("env_step needs a model with env_step_predictor")
        n = action.shape[-1]
        a = ((action - self.action_mean[:n]) / self.action_std[:n]).to(state.dtype)
        return state + self.predictor(torch.cat([state, a], dim=-1))

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        return self.step(state, action)

    def set_buffers(self, **values: Any) -> None:
        """Set fitted buffers by name (``action_mean``, ``state_std``, ...), shape-checked."""
        set_buffers(self, values)

    def extra_repr(self) -> str:
        c = self.config
        proprio = f", P={c.proprio_dim}, proprio_weight={self.proprio_weight:g}" if c.proprio_dim else ""
        return (f"env={c.env!r}, keypoints={c.keypoints}, D={c.latent_dim}{proprio}, hidden={c.hidden}, depth={c.depth}, "
                f"parameters={sum(p.numel() for p in self.parameters()):,}")


def build_jepa_model(config: JepaModelConfig) -> JepaWorldModel:
    """An untrained model of ``config`` (used to load checkpoints)."""
    return JepaWorldModel(config)


def random_directions(dim: int, count: int, generator: torch.Generator) -> Tensor:
    """``[dim, count]`` unit vectors drawn uniformly on the sphere from ``generator`` (CPU)."""
    v = torch.randn(dim, count, generator=generator)
    return v / v.norm(dim=0, keepdim=True).clamp_min(1e-12)

