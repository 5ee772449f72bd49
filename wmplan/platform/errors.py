"""Errors that name the problem for the user."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A configuration value, key or name is invalid; the message says which and why."""


def unknown_name_error(kind: str, name: str, valid: Iterable[str], *, where: str = "") -> ConfigError:
    """Build the error for an unknown ``name`` of some ``kind``, listing the valid names.

    A close match is suggested first, since most unknown names are typos. ``where`` adds
    context after the name (e.g. ``"for planner 'grasp'"``).
    """
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    place = f" {where}" if where else ""
    return ConfigError(f"unknown {kind} {name!r}{place}{hint}; valid: {', '.join(valid)}")


class RunInterrupted(Exception):
    """A run stopped by the user (Ctrl-C): what it had finished is stored, and the message says how to resume it."""
