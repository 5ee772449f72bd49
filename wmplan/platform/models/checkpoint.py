"""World-model checkpoints: tensors in safetensors (never pickle), everything else in JSON.

A checkpoint is a directory with two files:

- ``model.safetensors``: the model's ``state_dict`` (parameters and persistent buffers);
- ``config.json``: the format version, the model kind, the model's config, the name, shape and
  dtype of every tensor, optional training metrics, and the sha256 of ``model.safetensors``.

Loading checks everything before building anything: a missing file, a file whose hash does not
match (truncated or modified), a safetensors file that does not parse, an unknown format version
or model kind, a config the kind rejects, and tensors that do not fit the config (missing,
unexpected or wrong-shape names) each raise :class:`CheckpointError` naming the problem. Nothing
in a checkpoint is ever executed: a config that names code (a user encoder's
``package.module:factory``) loads only when the caller names the same code in ``allow_code`` (the
user wrote it in the command or the experiment config), and is refused before any import otherwise.

Model kinds are registered in :data:`MODEL_KINDS` (see :func:`register_model_kind`), so other
model families (e.g. a visual model) can use the same format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wmplan.platform.errors import ConfigError
from wmplan.platform.models.state_model import StateModelConfig, StateWorldModel
from wmplan.platform.models.visual import VisualModelConfig, VisualWorldModel, build_visual_model, check_proprio_weight
from wmplan.platform.options import build_options

__all__ = [
    "CheckpointError", "ModelKind", "MODEL_KINDS", "register_model_kind", "save_checkpoint",
    "load_world_model", "read_checkpoint_info", "training_summary", "describe_training", "checkpoint_code", "check_checkpoint_code", "checkpoint_obs",
    "check_checkpoint_task", "FORMAT_VERSION", "WEIGHTS_FILE", "CONFIG_FILE",
]

FORMAT_VERSION = 1
"""The checkpoint format this wmplan writes and reads."""
FORMAT_NAME = "wmplan.world_model"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match its own configuration."""


@dataclass(frozen=True)
class ModelKind:
    """How to save and rebuild one family of models.

    Attributes:
        name: the ``kind`` written to ``config.json``.
        model_class: the ``nn.Module`` class; its instances have a ``config`` attribute.
        config_class: the frozen options dataclass of the model's config.
        build: makes an untrained model (right shapes) from a config.
        code: the code (``package.module:callable`` strings) that building from a config would
            import and call; empty for models built from wmplan's own classes alone.
    """

    name: str
    model_class: type[nn.Module]
    config_class: type
    build: Callable[[Any], nn.Module]
    code: Callable[[Any], tuple[str, ...]] = lambda config: ()


MODEL_KINDS: dict[str, ModelKind] = {}
"""Every registered model kind by name."""


def register_model_kind(name: str, model_class: type[nn.Module], config_class: type, build: Callable[[Any], nn.Module] | None = None,
                        *, code: Callable[[Any], tuple[str, ...]] | None = None) -> ModelKind:
    """Register a model family for :func:`save_checkpoint` / :func:`load_world_model`.

    ``build`` defaults to ``model_class(config)``; ``code`` says which user code a config names
    (see :class:`ModelKind`). Registering a name twice with a different class
    is an error (re-registering the same class, e.g. on module reload, is allowed).
    """
    existing = MODEL_KINDS.get(name)
    if existing is not None and existing.model_class.__qualname__ != model_class.__qualname__:
        raise ValueError(f"model kind {name!r} is already registered for {existing.model_class.__qualname__}")
    kind = ModelKind(name, model_class, config_class, build or model_class, code or (lambda config: ()))
    MODEL_KINDS[name] = kind
    return kind


register_model_kind("state_mlp", StateWorldModel, StateModelConfig)
register_model_kind("visual", VisualWorldModel, VisualModelConfig, build_visual_model,
                    code=lambda config: () if config.encoder == "builtin" else (config.encoder,))


def _kind_of(model: nn.Module) -> ModelKind:
    for kind in MODEL_KINDS.values():
        if type(model) is kind.model_class:
            return kind
    for kind in MODEL_KINDS.values():
        if isinstance(model, kind.model_class):
            return kind
    raise CheckpointError(
        f"cannot save a {type(model).__name__}: not a registered model kind "
        f"(registered: {', '.join(sorted(MODEL_KINDS))}; see register_model_kind)"
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _jsonable(value: Any, where: str) -> Any:
    """Plain JSON values from metrics: numbers (non-finite ones become None), strings, lists, dicts."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _jsonable(value.item(), where)
    if hasattr(value, "item") and getattr(value, "size", None) == 1:  # numpy scalar
        return _jsonable(value.item(), where)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"cannot store {where} ({type(value).__name__}) in config.json: use numbers, strings, lists or dicts")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(model: nn.Module, directory: str | os.PathLike[str], *, metrics: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` to the checkpoint directory ``directory`` (created if needed).

    Args:
        model: an instance of a registered model kind (e.g. :class:`StateWorldModel`).
        directory: where ``model.safetensors`` and ``config.json`` go; existing files are replaced.
            Each file is written to a temporary name and renamed, ``config.json`` last, so a reader
            never sees a config that vouches for a half-written weights file.
        metrics: optional training metrics (numbers, strings, lists, dicts) stored in config.json.

    Returns:
        The directory.
    """
    from safetensors.torch import save

    kind = _kind_of(model)
    config = getattr(model, "config", None)
    if not dataclasses.is_dataclass(config) or isinstance(config, type) or not isinstance(config, kind.config_class):
        raise CheckpointError(f"{type(model).__name__}.config must be a {kind.config_class.__name__}, got {type(config).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    blob = save(tensors, metadata={"format": FORMAT_NAME, "kind": kind.name})
    _atomic_write(directory / WEIGHTS_FILE, blob)
    info = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind.name,
        "config": _jsonable(dataclasses.asdict(config), "config"),
        "tensors": {name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for name, t in sorted(tensors.items())},
        "weights_file": WEIGHTS_FILE,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "metrics": None if metrics is None else _jsonable(dict(metrics), "metrics"),
    }
    _atomic_write(directory / CONFIG_FILE, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    return directory


def _checkpoint_dir(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.is_file() and path.name == CONFIG_FILE:
        return path.parent
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {str(path)!r}: the path does not exist")
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {str(path)!r}: give the checkpoint directory or its {CONFIG_FILE}")
    return path


def read_checkpoint_info(path: str | os.PathLike[str]) -> dict:
    """The parsed ``config.json`` of the checkpoint at ``path`` (a directory or its config.json).

    Checks that the file exists, is JSON, and has a known format version and model kind; does not
    read the weights.
    """
    directory = _checkpoint_dir(path)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"no checkpoint at {str(directory)!r}: {CONFIG_FILE} is missing")
    try:
        info = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt checkpoint {str(directory)!r}: {CONFIG_FILE} is not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"corrupt checkpoint {str(directory)!r}: {CONFIG_FILE} is not a JSON object")
    if info.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{str(config_path)!r} is not a wmplan world-model checkpoint (format {info.get('format')!r}, expected {FORMAT_NAME!r})"
        )
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(directory)!r} has unknown format version {version!r}; this wmplan reads version {FORMAT_VERSION}"
        )
    kind = info.get("kind")
    if kind not in MODEL_KINDS:
        raise CheckpointError(
            f"checkpoint {str(directory)!r} has unknown model kind {kind!r}; known kinds: {', '.join(sorted(MODEL_KINDS))}"
        )
    for key, typ in (("config", dict), ("sha256", str), ("tensors", dict)):
        if not isinstance(info.get(key), typ):
            raise CheckpointError(f"corrupt checkpoint {str(directory)!r}: {CONFIG_FILE} lacks a valid {key!r} entry")
    return info


def training_summary(info: dict) -> dict[str, Any]:
    """What a model cost to build, from a checkpoint's parsed ``config.json`` (:func:`read_checkpoint_info`).

    Returns ``kind`` (the model kind), ``training_seconds`` (the whole cost: first training plus any
    rounds of plan / execute / retrain; None when the checkpoint records no metrics),
    ``first_training_seconds`` (without the rounds), ``rounds`` (0 without), ``round_transitions``
    (executed transitions the rounds added) and ``members`` (an ensemble's size, 1 for one model).
    """
    metrics = info.get("metrics") or {}
    first = metrics.get("first_train_seconds", metrics.get("total_seconds", metrics.get("train_seconds")))
    total = metrics.get("total_seconds", first)
    record: dict[str, Any] = metrics["rounds"] if isinstance(metrics.get("rounds"), dict) else {}
    config = info.get("config") or {}

    def seconds(value: Any) -> float | None:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return {
        "kind": info.get("kind"),
        "training_seconds": seconds(total),
        "first_training_seconds": seconds(first),
        "rounds": int(record.get("count", 0)),
        "round_transitions": int(record.get("added_transitions", 0)),
        "members": int(config.get("members", 1)) if isinstance(config.get("members", 1), int) else 1,
    }


def describe_training(summary: dict[str, Any]) -> str:
    """:func:`training_summary` in a few words, e.g. ``state_mlp, trained in 67 s`` or ``state_mlp, trained in
    1247 s (130 s, then 2 rounds adding 7,500 executed transitions)``."""
    kind = summary["kind"] + (f" of {summary['members']} members" if summary.get("members", 1) > 1 else "")
    total, first = summary.get("training_seconds"), summary.get("first_training_seconds")
    text = f"{kind}, trained in {total:.0f} s" if total is not None else f"{kind}, training time not recorded"
    if summary.get("rounds"):
        before = f"{first:.0f} s, then " if first is not None else ""
        rounds = f"{summary['rounds']} round{'s' if summary['rounds'] > 1 else ''}"
        text += f" ({before}{rounds} adding {summary['round_transitions']:,} executed transitions)"
    return text


def _build_config(kind: ModelKind, values: dict, where: str) -> Any:
    fields = {f.name for f in dataclasses.fields(kind.config_class)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    missing = sorted(f.name for f in dataclasses.fields(kind.config_class)
                     if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    if missing:
        raise CheckpointError(f"invalid config in {where}: missing {', '.join(missing)}")
    try:
        return build_options(kind.config_class, values, owner=f"model kind {kind.name!r}")
    except ConfigError as exc:
        unknown = sorted(set(values) - fields)
        extra = f" (unknown keys: {', '.join(unknown)})" if unknown else ""
        raise CheckpointError(f"invalid config in {where}: {exc}{extra}") from None


def _describe_mismatch(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> str:
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append("missing tensors: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected tensors: " + ", ".join(unexpected))
    wrong = [f"{n} is {list(found[n])} in the file but the config needs {list(expected[n])}"
             for n in sorted(set(expected) & set(found)) if expected[n] != found[n]]
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong))
    return "; ".join(problems)


def checkpoint_code(info: Mapping[str, Any]) -> tuple[str, ...]:
    """The user code (``package.module:callable``) that loading the checkpoint described by
    ``info`` (:func:`read_checkpoint_info`) would import and call; nothing is imported here."""
    kind = MODEL_KINDS[info["kind"]]
    return kind.code(_build_config(kind, info["config"], f"{CONFIG_FILE} of kind {kind.name!r}"))


def check_checkpoint_code(info: Mapping[str, Any], *, allow_code: Collection[str], where: str) -> None:
    """Refuse a checkpoint whose config names code the user did not name themselves.

    Raises:
        CheckpointError: naming the code and how to allow it.
    """
    named = [spec for spec in checkpoint_code(info) if spec not in set(allow_code)]
    if named:
        raise CheckpointError(
            f"checkpoint {where} names code to run ({', '.join(repr(c) for c in named)} as its encoder); wmplan never runs "
            f"code named in a data file: if you trust it, name it yourself (--encoder {named[0]}, or 'encoder: {named[0]}' "
            f"in the experiment config)"
        )


def checkpoint_obs(info: Mapping[str, Any]) -> str:
    """What the checkpoint's model sees: ``'pixels'`` for a model of frames, else ``'state'``."""
    return "pixels" if "frame_size" in info.get("config", {}) else "state"


def check_checkpoint_task(info: Mapping[str, Any], *, task: str, state_dim: int, action_dim: int, frameskip: int,
                          obs: str | None = None, where: str) -> None:
    """Refuse a checkpoint trained for another task than the one it is asked to plan.

    Args:
        info: the checkpoint's :func:`read_checkpoint_info`.
        task: the task's name; state_dim, action_dim and frameskip: its state length, env action
            length and env steps per model step.
        obs: ``'state'`` or ``'pixels'`` when the user asked for one; None accepts either.
        where: how to name the checkpoint in the message.

    Raises:
        CheckpointError: one line naming every mismatch.
    """
    config = info.get("config", {})
    found = {"task": config.get("env"), "state size": config.get("state_dim"), "frameskip": config.get("frameskip"),
             "action size": None, "observation": checkpoint_obs(info)}
    if isinstance(config.get("action_dim"), int) and isinstance(config.get("frameskip"), int) and config["frameskip"] > 0:
        found["action size"] = config["action_dim"] // config["frameskip"]
    wanted = {"task": task, "state size": state_dim, "frameskip": frameskip, "action size": action_dim, "observation": obs}
    wrong = [f"{key} {found[key]!r} (the task needs {value!r})" for key, value in wanted.items()
             if value is not None and found[key] != value]
    if wrong:
        raise CheckpointError(f"checkpoint {where} was trained for another task: " + ", ".join(wrong))


def load_world_model(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                     allow_code: Collection[str] = (), proprio_weight: float = 0.0) -> nn.Module:
    """Load the checkpoint at ``path`` (its directory or its config.json).

    Args:
        path: the checkpoint directory or its config.json.
        device: where the model goes.
        allow_code: ``package.module:callable`` specs the user named (command line or experiment
            config). A checkpoint whose config names other code (e.g. a user encoder) is refused
            before anything is imported.
        proprio_weight: the weight of the proprio term in the planning cost of a model of
            pictures trained with proprio (its ``set_proprio_weight``); 0, the default, is off.

    Returns:
        The model on ``device``, in eval mode, with ``requires_grad`` False on every parameter
        (planners differentiate with respect to states and actions only).

    Raises:
        CheckpointError: for a missing or corrupt checkpoint, an unknown format version or model
            kind, or tensors that do not match the config; the message names the problem.
        ConfigError: a nonzero ``proprio_weight`` for a model trained without proprio.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    info = read_checkpoint_info(path)
    directory = _checkpoint_dir(path)
    kind = MODEL_KINDS[info["kind"]]
    weights = directory / str(info.get("weights_file", WEIGHTS_FILE))
    if weights.parent != directory or not weights.is_file():
        raise CheckpointError(f"no checkpoint at {str(directory)!r}: {weights.name} is missing")
    blob = weights.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != info["sha256"]:
        raise CheckpointError(
            f"corrupt checkpoint {str(directory)!r}: {weights.name} has sha256 {digest[:16]}..., but {CONFIG_FILE} "
            f"records {info['sha256'][:16]}... (the file is truncated or was modified; {len(blob)} bytes)"
        )
    try:
        tensors = load(blob)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"corrupt checkpoint {str(directory)!r}: {weights.name} is not a readable safetensors file ({exc})") from None

    config = _build_config(kind, info["config"], f"{str(directory / CONFIG_FILE)!r}")
    check_checkpoint_code(info, allow_code=allow_code, where=repr(str(directory)))
    try:
        model = kind.build(config)
    except (ConfigError, ValueError) as exc:
        raise CheckpointError(f"invalid config in {str(directory / CONFIG_FILE)!r}: {exc}") from None
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    found = {n: tuple(t.shape) for n, t in tensors.items()}
    if expected != found:
        raise CheckpointError(
            f"checkpoint {str(directory)!r} does not match its config ({kind.name}, "
            f"{', '.join(f'{k}={v}' for k, v in info['config'].items() if k in ('hidden', 'depth', 'state_dim', 'action_dim'))}): "
            + _describe_mismatch(expected, found)
        )
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"corrupt checkpoint {str(directory)!r}: non-finite values in {', '.join(sorted(bad))}")
    model.load_state_dict(tensors, strict=True)
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    if proprio_weight:
        setter = getattr(model, "set_proprio_weight", None)
        if not callable(setter):
            check_proprio_weight(model, proprio_weight)  # raises, naming the setting
        else:
            setter(proprio_weight)
    return model
