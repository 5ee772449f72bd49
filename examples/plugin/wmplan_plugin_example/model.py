"""The world model: a small DINO-WM-style transformer over the patch tokens of 16 x 16 frames.

DINO-WM (Zhou et al. 2024, ``gaoyuezhou/dino_wm``) encodes a frame into patch tokens with a frozen
DINOv2 ViT and predicts the next frame's tokens with a ViT whose input is every patch token with
the action's embedding concatenated onto it; it plans by the MSE between predicted and goal
patch tokens plus a weighted proprioception term. This model has the same parts, tiny enough to
train in seconds on a CPU and with nothing downloaded:

- :class:`PatchEncoder`: a frame ``[3, S, S]`` to ``P = (S / p)^2`` patch tokens of ``E`` features
  (a ViT patch embedding, position embeddings, one transformer block), trained here instead of
  DINOv2's frozen weights;
- :class:`TokenPredictor`: tokens ``[P, E]`` and one model action (5 env actions packed, 10 values)
  to the next tokens: the action's embedding concatenated onto every token, transformer blocks,
  a residual update;
- a *probe*: the dot's position read off the tokens (DINO-WM's proprioception on the Wall task is
  that position), used in the planning cost and to report in-model success.

The world model's state is the flattened tokens, ``D = P * E`` (16 x 8 = 128 by default). It is a
:class:`~wmplan.platform.world_model.ObservationModel`: wmplan renders starts and goals at
``frame_size`` and calls :meth:`PatchWorldModel.encode`; it never gives the model a simulator
state. Its own planning cost (:meth:`PatchWorldModel.cost`) is DINO-WM's form.

Checkpoints are this package's own format: a directory with ``model.safetensors`` (the
``state_dict``) and ``config.json`` (format, version, the :class:`PatchModelConfig`, the weights'
sha256, training metrics). :func:`save` writes one, :func:`load` reads it (checking the hash and
every tensor's shape), and :func:`load_model` is the factory wmplan calls::

    model: wmplan_plugin_example.model:load_model
    model_options: {checkpoint: checkpoints/plugin-example}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "PatchModelConfig", "PatchEncoder", "TokenPredictor", "PatchWorldModel",
    "save", "load", "load_model", "FORMAT", "FORMAT_VERSION",
]

FORMAT = "wmplan-plugin-example/patch-world-model"
"""The ``format`` entry of a checkpoint's config.json."""
FORMAT_VERSION = 1
"""The checkpoint format version this module writes and reads."""
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True, kw_only=True)
class PatchModelConfig:
    """The architecture of a :class:`PatchWorldModel` (stored in its checkpoint's config.json)."""

    task: str = "wmplan_plugin_example.task:LowDoorWall"
    """The task the model was trained on (a record; the loader does not check it)."""
    frame_size: int = 16
    """``S``: side of the square RGB frames the encoder takes, in pixels."""
    patch: int = 4
    """``p``: side of a patch in pixels; ``P = (S / p)^2`` patch tokens per frame."""
    token_dim: int = 8
    """``E``: features per patch token; the model's state has ``P * E`` values."""
    width: int = 32
    """Width of the transformer blocks of the encoder and the predictor."""
    heads: int = 2
    """Attention heads per block."""
    encoder_layers: int = 1
    """Transformer blocks of the encoder."""
    predictor_layers: int = 2
    """Transformer blocks of the predictor."""
    mlp: int = 64
    """Hidden width of each block's MLP."""
    action_embed: int = 8
    """Features of the action embedding concatenated onto every token (DINO-WM: 10)."""
    frameskip: int = 5
    """Env actions per model action."""
    env_action_dim: int = 2
    """Values of one env action."""
    env_action_bound: float = 1.8
    """Env actions lie in ``[-bound, bound]`` per value (the Wall's clip), in env units."""
    state_dim: int = 2
    """Values of the env state the probe reads out (the dot's position)."""
    proprio_weight: float = 1.0
    """``alpha`` of the planning cost: weight of the probe's (normalised) position error beside the
    patch-token MSE (DINO-WM: 1 on Wall)."""

    def __post_init__(self) -> None:
        if self.frame_size % self.patch or self.frame_size < self.patch:
            raise ValueError(f"frame_size {self.frame_size} must be a positive multiple of patch {self.patch}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        for name in ("token_dim", "width", "heads", "mlp", "action_embed", "frameskip", "env_action_dim", "state_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.env_action_bound > 0 and self.proprio_weight >= 0):
            raise ValueError("env_action_bound must be > 0 and proprio_weight >= 0")

    @property
    def patches(self) -> int:
        """``P``: patch tokens per frame."""
        return (self.frame_size // self.patch) ** 2

    @property
    def action_dim(self) -> int:
        """``A``: values of one model action (``frameskip`` env actions packed)."""
        return self.frameskip * self.env_action_dim


class Block(nn.Module):
    """A pre-norm transformer block (as in a ViT): self-attention over the tokens, then an MLP."""

    def __init__(self, width: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width))

    def forward(self, x: Tensor) -> Tensor:
        """``[N, P, width] -> [N, P, width]``."""
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class PatchEncoder(nn.Module):
    """Frames ``[N, 3, S, S]`` (float, 0 to 1) to patch tokens ``[N, P, E]``.

    A ViT patch embedding (a ``p x p`` convolution of stride ``p``), learned position embeddings,
    ``encoder_layers`` transformer blocks and a projection to ``E`` features per patch, each token
    normalised to zero mean and unit variance over its features (so tokens cannot shrink towards a
    trivially predictable constant).
    """

    def __init__(self, config: PatchModelConfig) -> None:
        super().__init__()
        c = config
        self.embed = nn.Conv2d(3, c.width, c.patch, stride=c.patch)
        self.position = nn.Parameter(0.02 * torch.randn(1, c.patches, c.width))
        self.blocks = nn.ModuleList(Block(c.width, c.heads, c.mlp) for _ in range(c.encoder_layers))
        self.norm = nn.LayerNorm(c.width)
        self.out = nn.Linear(c.width, c.token_dim)
        self.scale = nn.LayerNorm(c.token_dim, elementwise_affine=False)

    def forward(self, frames: Tensor) -> Tensor:
        x = self.embed(frames).flatten(2).transpose(1, 2) + self.position  # [N, P, width]
        for block in self.blocks:
            x = block(x)
        return self.scale(self.out(self.norm(x)))


class TokenPredictor(nn.Module):
    """Patch tokens ``[N, P, E]`` and normalised model actions ``[N, A]`` to the next tokens ``[N, P, E]``.

    As DINO-WM's predictor: the action's embedding is concatenated onto every patch token, the
    result projected to the block width, position embeddings added, ``predictor_layers``
    transformer blocks applied (attention across patches: history 1, so no causal mask), and the
    output added to the input tokens (zero-initialised, so an untrained predictor is the identity).
    """

    def __init__(self, config: PatchModelConfig) -> None:
        super().__init__()
        c = config
        self.action = nn.Linear(c.action_dim, c.action_embed)
        self.project = nn.Linear(c.token_dim + c.action_embed, c.width)
        self.position = nn.Parameter(0.02 * torch.randn(1, c.patches, c.width))
        self.blocks = nn.ModuleList(Block(c.width, c.heads, c.mlp) for _ in range(c.predictor_layers))
        self.norm = nn.LayerNorm(c.width)
        self.out = nn.Linear(c.width, c.token_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: Tensor, action: Tensor) -> Tensor:
        a = self.action(action)[:, None].expand(-1, tokens.shape[1], -1)  # [N, P, action_embed]
        x = self.project(torch.cat([tokens, a], dim=-1)) + self.position
        for block in self.blocks:
            x = block(x)
        return tokens + self.out(self.norm(x))


class PatchWorldModel(nn.Module):
    """A world model over patch tokens of rendered frames (a wmplan ``ObservationModel``).

    Attributes:
        observation: ``'pixels'``: wmplan gives it frames, never simulator states.
        frame_size: ``S``, the side of the frames :meth:`encode` takes.
        state_dim: ``D = P * E``, the flattened patch tokens.
        action_dim: ``A = frameskip * env_action_dim`` (10): one model action, in env units.
        action_low, action_high: ``[A]``, the env's action bounds tiled ``frameskip`` times.

    Args:
        config: the architecture.
        seed: seed of the initial weights.
    """

    observation: Literal["pixels"] = "pixels"
    action_low: Tensor
    action_high: Tensor
    state_mean: Tensor
    state_std: Tensor
    action_mean: Tensor
    action_std: Tensor

    def __init__(self, config: PatchModelConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.frame_size = config.frame_size
        self.state_dim = config.patches * config.token_dim
        self.action_dim = config.action_dim
        bound = torch.full((config.action_dim,), float(config.env_action_bound))
        self.register_buffer("action_low", -bound)
        self.register_buffer("action_high", bound.clone())
        # Normalisation of the probe's target and of the predictor's input; set from the data by training.
        self.register_buffer("state_mean", torch.zeros(config.state_dim))
        self.register_buffer("state_std", torch.ones(config.state_dim))
        self.register_buffer("action_mean", torch.zeros(config.action_dim))
        self.register_buffer("action_std", torch.ones(config.action_dim))
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            self.encoder = PatchEncoder(config)
            self.predictor = TokenPredictor(config)
            self.probe = nn.Sequential(nn.Linear(self.state_dim, 64), nn.GELU(), nn.Linear(64, config.state_dim))
        finally:
            torch.random.set_rng_state(generator_state)

    # -- what wmplan calls ------------------------------------------------------------------------

    def encode(self, frames: Any) -> Tensor:
        """Frames ``[..., S, S, 3]`` (uint8 RGB, or float in [0, 1]; numpy or torch) to states ``[..., D]``
        on the model's device, without gradient."""
        with torch.no_grad():
            return self.encode_frames(self.frames_to_tensor(frames))

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        """Predict the next state: ``state [..., D]``, ``action [..., A]`` (env units) to ``[..., D]``;
        differentiable with respect to both."""
        c = self.config
        leading = torch.broadcast_shapes(state.shape[:-1], action.shape[:-1])
        tokens = state.expand(*leading, self.state_dim).reshape(-1, c.patches, c.token_dim)
        a = ((action - self.action_mean) / self.action_std).expand(*leading, self.action_dim).reshape(-1, self.action_dim)
        return self.predictor(tokens, a).reshape(*leading, self.state_dim)

    def decode(self, state: Tensor) -> Tensor:
        """The probe's estimate of the env state (the dot's position, pixels) ``[..., state_dim]`` of
        model states ``[..., D]``; wmplan uses it only to report in-model success."""
        return self.probe(state) * self.state_std + self.state_mean

    def cost(self, final_states: Tensor, goal_states: Tensor) -> Tensor:
        """DINO-WM's planning cost: the patch-token MSE plus ``proprio_weight`` times the MSE of the
        probe's normalised positions. ``[..., D]`` and ``[..., D]`` to ``[...]``, differentiable."""
        patches = (final_states - goal_states).pow(2).mean(-1)
        proprio = (self.probe(final_states) - self.probe(goal_states)).pow(2).mean(-1)
        return patches + self.config.proprio_weight * proprio

    # -- for training -------------------------------------------------------------------------------

    def frames_to_tensor(self, frames: Any) -> Tensor:
        """Frames ``[..., S, S, 3]`` (uint8, or float in [0, 1]) to float ``[..., S, S, 3]`` on the model's device."""
        x = frames if isinstance(frames, Tensor) else torch.as_tensor(np.asarray(frames))
        x = x.to(self.action_low.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        s = self.frame_size
        if tuple(x.shape[-3:]) != (s, s, 3):
            raise ValueError(f"frames must have shape [..., {s}, {s}, 3], got {tuple(x.shape)}")
        return x

    def encode_frames(self, frames: Tensor) -> Tensor:
        """Float frames ``[..., S, S, 3]`` to states ``[..., D]``, differentiable (training)."""
        leading = frames.shape[:-3]
        x = frames.reshape(-1, self.frame_size, self.frame_size, 3).permute(0, 3, 1, 2)
        return self.encoder(x).reshape(*leading, self.state_dim)

    def set_normalization(self, *, state_mean: Tensor, state_std: Tensor, action_mean: Tensor, action_std: Tensor) -> None:
        """Set the probe's target scale (``[state_dim]``) and the action normalisation (``[A]``), from the data."""
        for name, value in (("state_mean", state_mean), ("state_std", state_std),
                            ("action_mean", action_mean), ("action_std", action_std)):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32))


# -- checkpoints --------------------------------------------------------------------------------------


def save(model: PatchWorldModel, directory: str | os.PathLike[str], *, metrics: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to the checkpoint directory ``directory`` (created; files replaced).

    Writes ``model.safetensors`` (the ``state_dict``, on the CPU) and then ``config.json`` (format,
    version, the config, every tensor's shape, the weights' sha256 and ``metrics``: numbers and
    strings). Returns the directory.
    """
    from safetensors.torch import save as to_bytes

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = to_bytes(tensors, metadata={"format": FORMAT})
    (directory / WEIGHTS_FILE).write_bytes(blob)
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(model.config),
        "tensors": {k: list(v.shape) for k, v in sorted(tensors.items())},
        "sha256": hashlib.sha256(blob).hexdigest(),
        "metrics": metrics or {},
    }
    (directory / CONFIG_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return directory


def load(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> PatchWorldModel:
    """Read a checkpoint written by :func:`save`: the model on ``device``, in eval mode.

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: another format or version, a weights file whose hash does not match, or
            tensors that do not fit the config.
    """
    from safetensors.torch import load as from_bytes

    directory = Path(path)
    if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"no plug-in model checkpoint at {str(directory)!r} (need {CONFIG_FILE} and {WEIGHTS_FILE}); "
                                "train one with 'python -m wmplan_plugin_example.train --out DIR'")
    info = json.loads((directory / CONFIG_FILE).read_text())
    if info.get("format") != FORMAT or info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{str(directory)!r} is not a {FORMAT} checkpoint of version {FORMAT_VERSION}")
    blob = (directory / WEIGHTS_FILE).read_bytes()
    if hashlib.sha256(blob).hexdigest() != info["sha256"]:
        raise ValueError(f"{str(directory / WEIGHTS_FILE)!r} does not match the sha256 in its {CONFIG_FILE} (modified or truncated)")
    model = PatchWorldModel(PatchModelConfig(**info["config"]))
    model.load_state_dict(from_bytes(blob), strict=True)
    return model.to(device).eval()


def load_model(*, device: torch.device, checkpoint: str) -> PatchWorldModel:
    """The factory wmplan calls in each Ray actor (``model: wmplan_plugin_example.model:load_model``).

    Args:
        device: where wmplan plans (``cpu``, or the actor's GPU).
        checkpoint: the checkpoint directory (``model_options: {checkpoint: DIR}``); on a cluster,
            a path every node reads.
    """
    return load(checkpoint, device=device)
