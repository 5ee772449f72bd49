"""Frozen, typed, documented option dataclasses and their validation.

Every configurable part of wmplan (each planner, later each task and job) describes its options
as a frozen dataclass with a docstring under each field, in the style of CleanRL. This module
turns such a class into something the rest of the system can rely on:

- :func:`build_options` creates an instance from keyword values, rejecting unknown keys with the
  list of valid ones and values of the wrong type with the field's name;
- :func:`parse_value` converts command-line strings to the field's type;
- :func:`option_docs` reads the field docstrings, for help texts and error messages.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from wmplan.platform.errors import ConfigError, unknown_name_error

T = TypeVar("T")


@functools.cache
def option_docs(cls: type) -> dict[str, str]:
    """Map each field of the dataclass ``cls`` (and its bases) to the docstring written under it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source available (e.g. frozen application)
            continue
        tree = ast.parse(source).body[0]
        if not isinstance(tree, ast.ClassDef):  # a class's source is its class statement
            continue
        body = tree.body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _resolved_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Return ``value`` converted to ``annotation`` where that is lossless; raise otherwise."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"option {name!r} must be one of {list(allowed)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(name, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"option {name!r} has an invalid value {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"option {name!r} must be a bool, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"option {name!r} must be an int, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"option {name!r} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"option {name!r} must be a string, got {value!r}")
    return value


def build_options(cls: type[T], values: Mapping[str, Any], *, owner: str, item: str = "option") -> T:
    """Create the options dataclass ``cls`` from ``values``.

    Args:
        cls: a frozen dataclass of options.
        values: option names and values; omitted options keep their defaults.
        owner: what the options belong to (e.g. ``"planner 'grasp'"``), for error messages.
        item: what one entry is called in error messages (``option``, ``key``).

    Raises:
        ConfigError: for an unknown key (listing the valid ones), a value of the wrong type, or a
            value the dataclass's own checks reject.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # T is any options dataclass; mypy cannot see that
    hints = _resolved_types(cls)
    converted: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise unknown_name_error(item, key, fields, where=f"for {owner}")
        try:
            converted[key] = _check_type(key, value, hints[key])
        except ConfigError as exc:
            raise ConfigError(f"{owner}: {exc}") from None
        number = converted[key]
        if isinstance(number, float) and not math.isfinite(number) and number != fields[key].default:
            # NaN never; an infinity only where the field's own default is that infinity (e.g. "no cap").
            raise ConfigError(f"{owner}: {item} {key!r} must be a finite number, got {number}")
    try:
        return cls(**converted)
    except ConfigError as exc:
        raise ConfigError(f"{owner}: {exc}") from None


def parse_value(cls: type, key: str, text: str, *, owner: str, item: str = "option") -> Any:
    """Convert the command-line string ``text`` to the type of option ``key`` of ``cls``."""
    hints = _resolved_types(cls)
    if key not in hints:
        raise unknown_name_error(item, key, [f.name for f in dataclasses.fields(cls)], where=f"for {owner}")
    annotation = hints[key]
    candidates = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    lowered = text.strip().lower()
    for arg in candidates:
        if arg is type(None) and lowered in ("none", "null"):
            return None
        if arg is bool and lowered in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return lowered in ("true", "1", "yes", "on")
        if arg is int:
            try:
                return int(text)
            except ValueError:
                pass
        if arg is float:
            try:
                return float(text)
            except ValueError:
                pass
        if arg is str or typing.get_origin(arg) is Literal:
            return text
    expected = getattr(annotation, "__name__", None) or str(annotation)
    raise ConfigError(f"{owner}: option {key!r} cannot be read from {text!r} (expected {expected})")


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds (for ``__post_init__``)."""
    if not condition:
        raise ConfigError(message)
