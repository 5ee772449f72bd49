"""What every task simulator shares: the :class:`Env` interface and action packing.

Conventions follow DINO-WM (``gaoyuezhou/dino_wm``), so that numbers are comparable with the
GRASP paper:

- a *state* is a flat float64 vector (``state_dim``); ``step`` takes one *env action* of
  ``action_dim`` (2 for every task here) and returns the next state;
- the world model acts at a coarser rate: one model action is ``frameskip`` consecutive env
  actions concatenated (DINO-WM's ``rearrange("(t f) d -> t (f d)")``), see :func:`pack_actions`
  and :func:`unpack_actions`;
- success is judged on states with DINO-WM's thresholds (:meth:`Env.is_success`, vectorised).

No simulator here needs a display, GL or a download: images are drawn with numpy.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, TypeVar

import numpy as np

__all__ = ["Env", "FRAMESKIP", "pack_actions", "unpack_actions", "supersample_grid", "downsample"]

FRAMESKIP = 5
"""DINO-WM's frameskip for all three tasks: one model action = 5 env actions."""

ArrayT = TypeVar("ArrayT")  # a numpy array or a torch tensor: anything with .shape and .reshape


def pack_actions(actions: ArrayT, frameskip: int = FRAMESKIP) -> ArrayT:
    """Group env actions ``[..., T * frameskip, A]`` into model actions ``[..., T, frameskip * A]``.

    Consecutive env actions are concatenated (action ``t * frameskip + f`` lands in columns
    ``f * A : (f + 1) * A`` of row ``t``), as DINO-WM does. Works on numpy arrays and torch tensors.
    """
    shape = tuple(actions.shape)  # type: ignore[attr-defined]
    if len(shape) < 2 or shape[-2] % frameskip:
        raise ValueError(
            f"pack_actions needs [..., T * frameskip, A] with frameskip={frameskip}; got shape {shape}"
        )
    return actions.reshape(*shape[:-2], shape[-2] // frameskip, frameskip * shape[-1])  # type: ignore[attr-defined]


def unpack_actions(actions: ArrayT, frameskip: int = FRAMESKIP) -> ArrayT:
    """Inverse of :func:`pack_actions`: ``[..., T, frameskip * A]`` to ``[..., T * frameskip, A]``."""
    shape = tuple(actions.shape)  # type: ignore[attr-defined]
    if len(shape) < 2 or shape[-1] % frameskip:
        raise ValueError(
            f"unpack_actions needs [..., T, frameskip * A] with frameskip={frameskip}; got shape {shape}"
        )
    return actions.reshape(*shape[:-2], shape[-2] * frameskip, shape[-1] // frameskip)  # type: ignore[attr-defined]


def supersample_grid(size: int, lo: float, hi: float, factor: int) -> np.ndarray:
    """World coordinates of ``size * factor`` sample points evenly covering ``[lo, hi]``.

    Pixel ``i`` of a ``size``-pixel image covers ``[lo + i * s, lo + (i + 1) * s]`` with
    ``s = (hi - lo) / size``; each pixel gets ``factor`` samples at the centres of its sub-cells.
    """
    n = size * factor
    return lo + (np.arange(n) + 0.5) * ((hi - lo) / n)


def downsample(img: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` blocks of a float ``[H*f, W*f, C]`` image, round to uint8."""
    if factor == 1:
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)
    h, w, c = img.shape
    out = img.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class Env(abc.ABC):
    """A task simulator with DINO-WM's conventions.

    Subclasses set the class attributes and implement :meth:`_sample_state`, :meth:`_set_state`,
    :meth:`_step`, :meth:`render`, :meth:`is_success` and :meth:`sample_start_goal`. States are
    float64 vectors; the env owns a ``numpy.random.Generator`` used when ``reset`` draws a state.
    """

    name: ClassVar[str]
    """The task's name in :func:`wmplan.platform.envs.make_env`."""
    state_dim: ClassVar[int]
    """Length of a state vector."""
    action_dim: ClassVar[int] = 2
    """Length of one env action (2 for every task here)."""
    frameskip: ClassVar[int] = FRAMESKIP
    """Env actions per model action (DINO-WM: 5)."""

    action_low: np.ndarray
    """Lower bound of one env action; ``step`` clips to ``[action_low, action_high]``."""
    action_high: np.ndarray
    """Upper bound of one env action."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = np.random.default_rng(seed)
        self._state: np.ndarray | None = None

    # -- the public interface -------------------------------------------------------------------

    @property
    def state(self) -> np.ndarray:
        """A copy of the current state (after ``reset``)."""
        if self._state is None:
            raise RuntimeError(f"{type(self).__name__}: call reset() before reading the state")
        return self._state.copy()

    def reset(self, *, seed: int | None = None, state: np.ndarray | None = None) -> np.ndarray:
        """Start an episode and return its first state.

        With ``state``, the env is put in exactly that state (a ``ValueError`` if it is invalid).
        Otherwise a random valid state is drawn from the env's generator, which ``seed`` re-seeds
        first, so the same seed always gives the same state.
        """
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        if state is None:
            new = self._sample_state(self._rng)
        else:
            new = np.asarray(state, dtype=np.float64).reshape(-1)
            if new.shape != (self.state_dim,):
                raise ValueError(
                    f"{self.name}: a state has {self.state_dim} values; got shape {np.shape(state)}"
                )
            if not np.all(np.isfinite(new)):
                raise ValueError(f"{self.name}: state must be finite; got {new}")
        self._state = self._set_state(new)
        return self.state

    def step(self, action: np.ndarray) -> np.ndarray:
        """Apply one env action (clipped to the action bounds) and return the next state."""
        if self._state is None:
            raise RuntimeError(f"{type(self).__name__}: call reset() before step()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.action_dim,):
            raise ValueError(
                f"{self.name}: an action has {self.action_dim} values; got shape {np.shape(action)}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{self.name}: action must be finite; got {a}")
        a = np.clip(a, self.action_low, self.action_high)
        self._state = self._step(a)
        return self.state

    def rollout(self, actions: np.ndarray) -> np.ndarray:
        """Step through env actions ``[T, action_dim]`` from the current state; states ``[T + 1, D]``.

        Model actions ``[H, frameskip * action_dim]`` must go through :func:`unpack_actions` first.
        """
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise ValueError(
                f"{self.name}: rollout needs actions [T, {self.action_dim}]; got {actions.shape}"
            )
        states = [self.state]
        for a in actions:
            states.append(self.step(a))
        return np.stack(states)

    @abc.abstractmethod
    def render(self, size: int = 64) -> np.ndarray:
        """A top-down RGB image ``[size, size, 3]`` uint8 of the current state (no display, no GL)."""

    @abc.abstractmethod
    def is_success(self, state: np.ndarray, goal: np.ndarray) -> Any:
        """DINO-WM's success test; ``[D]`` inputs give a ``bool``, ``[N, D]`` inputs a bool array."""

    @abc.abstractmethod
    def sample_start_goal(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A (start, goal) pair of valid states for a planning trial, drawn from ``rng``."""

    # -- what subclasses implement ----------------------------------------------------------------

    @abc.abstractmethod
    def _sample_state(self, rng: np.random.Generator) -> np.ndarray:
        """A random valid state."""

    @abc.abstractmethod
    def _set_state(self, state: np.ndarray) -> np.ndarray:
        """Put the simulator in ``state`` (already shape-checked); return the state it is now in."""

    @abc.abstractmethod
    def _step(self, action: np.ndarray) -> np.ndarray:
        """Advance one env step with a clipped action; return the new state."""


def _as_batch(state: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Broadcast ``state`` and ``goal`` to ``[N, D]``; the flag says whether both were 1-D."""
    s = np.asarray(state, dtype=np.float64)
    g = np.asarray(goal, dtype=np.float64)
    single = s.ndim == 1 and g.ndim == 1
    s2, g2 = np.broadcast_arrays(np.atleast_2d(s), np.atleast_2d(g))
    return s2, g2, single


def _result(ok: np.ndarray, single: bool) -> Any:
    return bool(ok[0]) if single else ok
