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

:class:`Env` is also *the one place* where wmplan keeps what it knows about a task: the state
coordinates success looks at, how start/goal pairs are drawn, the data-collection policy and
trajectory length, how to draw the task in plots and its visual-model recipe. No module outside
``wmplan.platform.envs`` names a task; it asks the task's ``Env``. A user's task (an ``Env``
subclass, named as ``package.module:factory``) overrides what differs from the defaults here.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import numpy as np

__all__ = [
    "Env",
    "FRAMESKIP",
    "GOAL_MODES",
    "PixelRecipe",
    "Policy",
    "Segment",
    "StartGoal",
    "pack_actions",
    "unpack_actions",
    "supersample_grid",
    "downsample",
    "box_path_distance",
]

FRAMESKIP = 5
"""DINO-WM's frameskip for all three tasks: one model action = 5 env actions."""

if TYPE_CHECKING:  # envs never import torch at run time (data workers must not load it)
    import torch

ArrayT = TypeVar("ArrayT", "np.ndarray", "torch.Tensor")  # a numpy array or a torch tensor

GOAL_MODES: tuple[str, ...] = ("random", "replay")
"""The goal modes every task has (see :meth:`Env.draw_start_goal`):

- ``random``: :meth:`Env.sample_start_goal`, the task's own random pairs (no data needed);
- ``replay``: the start is a state of a held-out data segment and the goal is where the simulator
  gets to by replaying the next ``frameskip * horizon`` env actions of that segment (DINO-WM's
  Push-T protocol), so the goal is reachable in exactly ``horizon`` model steps.
"""

Segment = tuple[np.ndarray, np.ndarray]
"""A recorded trajectory ``(states [T+1, state_dim], env_actions [T, action_dim])``."""

Policy = Callable[[np.ndarray, int], np.ndarray]
"""A data-collection policy: ``act(state [state_dim], t) -> env action [action_dim]`` at env step ``t``."""


@dataclass(frozen=True, kw_only=True)
class PixelRecipe:
    """How wmplan builds a task's default visual world model (``--obs pixels``)."""

    trajectories: int
    """Trajectories of the task's default length, each step stored with a 64x64 frame."""
    predictor_steps: int
    """Gradient steps of the visual model's predictor (kind ``visual``; ``jepa`` takes its preset's)."""
    kind: str | None = None
    """The model kind (``visual`` or ``jepa``); None: wmplan's default kind of pictures."""
    proprio: bool = False
    """Whether the default model carries the simulator's proprio beside its latent (``--proprio``)."""
    policy: Literal["task", "uniform"] = "task"
    """The data's actions (``wmplan data --policy``): ``task``, the task's own policy, or ``uniform``."""
    env_step_predictor: bool = False
    """Kind ``jepa``: the predictor takes one env action at a time (``--env-step-predictor``)."""
    activation: Literal["silu", "relu"] = "silu"
    """Kind ``jepa``: the predictor's activation (``--activation``), ``silu`` or ``relu``."""

    def __post_init__(self) -> None:
        if self.trajectories < 2 or self.predictor_steps < 1:
            raise ValueError(f"a pixel recipe needs >= 2 trajectories and >= 1 predictor step, got {self}")
        if self.kind not in (None, "visual", "jepa"):
            raise ValueError(f"a pixel recipe's kind is 'visual', 'jepa' or None, got {self.kind!r}")
        if self.policy not in ("task", "uniform") or self.activation not in ("silu", "relu"):
            raise ValueError(f"a pixel recipe's policy is 'task' or 'uniform' and its activation 'silu' or 'relu', got {self}")
        if (self.env_step_predictor or self.activation != "silu") and self.kind != "jepa":
            raise ValueError(f"a pixel recipe's env_step_predictor and activation are for kind 'jepa', got {self}")


@dataclass(frozen=True, eq=False)
class StartGoal:
    """One drawn planning trial: reach ``goal`` from ``start``."""

    start: np.ndarray
    """``[state_dim]`` start state."""
    goal: np.ndarray
    """``[state_dim]`` goal state."""
    source: tuple[int, int] | None = None
    """For a replayed goal: ``(segment index, offset)`` in the segments given; None otherwise."""


def pack_actions(actions: ArrayT, frameskip: int = FRAMESKIP) -> ArrayT:
    """Group env actions ``[..., T * frameskip, A]`` into model actions ``[..., T, frameskip * A]``.

    Consecutive env actions are concatenated (action ``t * frameskip + f`` lands in columns
    ``f * A : (f + 1) * A`` of row ``t``), as DINO-WM does. Works on numpy arrays and torch tensors.
    """
    shape = tuple(actions.shape)
    if len(shape) < 2 or shape[-2] % frameskip:
        raise ValueError(
            f"pack_actions needs [..., T * frameskip, A] with frameskip={frameskip}; got shape {shape}"
        )
    return actions.reshape(*shape[:-2], shape[-2] // frameskip, frameskip * shape[-1])


def unpack_actions(actions: ArrayT, frameskip: int = FRAMESKIP) -> ArrayT:
    """Inverse of :func:`pack_actions`: ``[..., T, frameskip * A]`` to ``[..., T * frameskip, A]``."""
    shape = tuple(actions.shape)
    if len(shape) < 2 or shape[-1] % frameskip:
        raise ValueError(
            f"unpack_actions needs [..., T, frameskip * A] with frameskip={frameskip}; got shape {shape}"
        )
    return actions.reshape(*shape[:-2], shape[-2] * frameskip, shape[-1] // frameskip)


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
    """A task simulator with DINO-WM's conventions, and everything wmplan knows about the task.

    Subclasses set ``name`` and ``state_dim``, the action bounds, and implement
    :meth:`_sample_state`, :meth:`_set_state`, :meth:`_step` and :meth:`render`. States are
    float64 vectors; the env owns a ``numpy.random.Generator`` used when ``reset`` draws a state.

    The task's knowledge, with a default for each piece a subclass does not override:

    ==========================  ==================================================================
    ``action_dim``, ``frameskip``  env action size (2) and env actions per model action (5)
    ``success_coords``           the state slice success and goal distances look at (whole state)
    ``success_threshold``        success radius on ``success_coords`` (none: define it, or
                                 override :meth:`is_success`)
    :meth:`sample_start_goal`    random start/goal pairs (two random states)
    ``goal_modes``               ways to draw pairs (:data:`GOAL_MODES`), ``default_goal_mode``
                                 the one used unless asked otherwise (``random``)
    :meth:`data_policy`          the data-collection policy (uniform random actions)
    ``default_trajectory_steps`` env steps of a data trajectory (100)
    ``default_trajectories``     trajectories of the task's default data set (1000)
    ``world_extent``, ``y_up``   the world square :meth:`render` shows, for plots (none: no
                                 trajectory plots)
    :meth:`plot_tracks`          the 2-D positions a plot draws (``agent``: ``state[:2]``)
    :meth:`obstacle_crossings`   which predicted paths pass through an obstacle (none)
    :meth:`path_distance`        shortest-path distance around obstacles (none: no obstacles)
    ``pixel_recipe``             data and budget of the default visual model (:class:`PixelRecipe`)
    ``proprio_coords``           the proprioceptive part of a state (:meth:`proprio`; none: the
                                 task has no proprio, and asking for it is an error)
    ==========================  ==================================================================
    """

    name: ClassVar[str]
    """The task's name in :func:`wmplan.platform.envs.make_env` (or a user's own)."""
    state_dim: ClassVar[int]
    """Length of a state vector."""
    action_dim: ClassVar[int] = 2
    """Length of one env action (2 for every task here)."""
    frameskip: ClassVar[int] = FRAMESKIP
    """Env actions per model action (DINO-WM: 5)."""

    success_coords: ClassVar[slice] = slice(None)
    """The state coordinates success is judged on and goal distances are measured over
    (:meth:`is_success`, :meth:`goal_distance`); default: the whole state."""
    success_threshold: ClassVar[float | None] = None
    """Success: ``||state[success_coords] - goal[success_coords]|| < success_threshold`` (state units).
    None: the task must override :meth:`is_success`."""

    goal_modes: ClassVar[tuple[str, ...]] = GOAL_MODES
    """The ways :meth:`draw_start_goal` can draw a start/goal pair; a subclass may add its own."""
    default_goal_mode: ClassVar[str] = "random"
    """The goal mode used when none is asked for."""

    default_trajectory_steps: ClassVar[int] = 100
    """Env steps per data trajectory when a data config asks for the default (``steps: 0``).

    Replayed goals (goal mode ``replay``) need held-out trajectories of at least
    ``frameskip * horizon`` env steps, so this bounds the horizons the default data can serve."""
    default_trajectories: ClassVar[int] = 1000
    """Trajectories of the task's default data set (``wmplan data`` without ``--episodes``, and the
    data a default model is trained on: :func:`wmplan.platform.workflow.default_data_config`)."""

    world_extent: ClassVar[tuple[float, float] | None] = None
    """``(lo, hi)``: the world square ``[lo, hi]^2`` (state units of :meth:`plot_tracks`) that
    :meth:`render` shows edge to edge. None: plots cannot place states on a render."""
    y_up: ClassVar[bool] = False
    """Whether :meth:`render` draws ``y`` upwards (row 0 at ``hi``) rather than row = ``y``."""

    pixel_recipe: ClassVar[PixelRecipe] = PixelRecipe(trajectories=1000, predictor_steps=4000)
    """Data and training budget of the task's default visual world model (``--obs pixels``);
    the default is PointMaze's recipe, not measured on other tasks."""

    proprio_coords: ClassVar[slice | None] = None
    """The state coordinates that are the agent's own (proprioceptive) state, as DINO-WM's ``proprio``
    (Wall: the dot's position; PointMaze: the ball's position and velocity; Push-T: the pusher's
    position), read by :meth:`proprio`.
    None: the task has no proprioceptive part."""

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

    def final_states(self, starts: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Execute many env action sequences, each from its own start; where each ends, and which ran.

        Row ``i`` is ``reset(state=starts[i])`` then ``rollout(actions[i])``: ``starts [N, D]``, env
        actions ``[N, T, action_dim]`` (model actions go through :func:`unpack_actions` first), each
        action clipped to the bounds as :meth:`step` clips it. Returns ``finals [N, D]`` float64, the
        last state of each row, and ``ok [N]`` bool. A row whose reset or rollout raises (an invalid
        start, a non-finite action) gets ``ok`` False and its start as its final; the other rows are
        not affected.

        A scratch operation: it resets and steps this env and leaves its current state unspecified,
        so call it on a copy of an env whose episode matters. The default loops over the rows; a task
        may override it with a vectorised version that gives the same ``finals`` and ``ok`` bit for
        bit (Wall does).

        Raises:
            ValueError: ``starts`` is not ``[N, state_dim]`` or ``actions`` not ``[N, T, action_dim]``.
        """
        starts, actions = self._final_states_inputs(starts, actions)
        finals = starts.copy()
        ok = np.zeros(len(starts), dtype=bool)
        for i, (start, row) in enumerate(zip(starts, actions)):
            try:
                self.reset(state=start)
                finals[i] = self.rollout(row)[-1]
            except Exception:  # noqa: BLE001 - a row that cannot be executed is not ok; the others go on
                continue
            ok[i] = True
        return finals, ok

    def _final_states_inputs(self, starts: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`final_states`' inputs as float64 ``[N, state_dim]`` and ``[N, T, action_dim]`` (or a ``ValueError``)."""
        s = np.asarray(starts, dtype=np.float64)
        a = np.asarray(actions, dtype=np.float64)
        if s.ndim != 2 or s.shape[1] != self.state_dim:
            raise ValueError(f"{self.name}: final_states needs starts [N, {self.state_dim}]; got {s.shape}")
        if a.ndim != 3 or a.shape[0] != s.shape[0] or a.shape[2] != self.action_dim:
            raise ValueError(
                f"{self.name}: final_states needs env actions [{s.shape[0]}, T, {self.action_dim}]; got {a.shape}"
            )
        return s, a

    @abc.abstractmethod
    def render(self, size: int = 64) -> np.ndarray:
        """A top-down RGB image ``[size, size, 3]`` uint8 of the current state (no display, no GL).

        When ``world_extent`` is set, the image shows exactly the world square it names (with
        ``y_up`` saying which way ``y`` runs), so plots can draw states on it.
        """

    # -- success --------------------------------------------------------------------------------

    def is_success(self, state: np.ndarray, goal: np.ndarray) -> Any:
        """The task's success test; ``[D]`` inputs give a ``bool``, ``[N, D]`` inputs a bool array.

        Default: :meth:`goal_distance` ``< success_threshold``.

        Raises:
            NotImplementedError: the task sets no ``success_threshold`` and does not override this.
        """
        if self.success_threshold is None:
            raise NotImplementedError(
                f"task {self.name!r} has no success test: set success_threshold (and success_coords) "
                f"on {type(self).__name__}, or override is_success"
            )
        s, g, single = _as_batch(state, goal)
        ok = np.linalg.norm(s[:, self.success_coords] - g[:, self.success_coords], axis=-1) < self.success_threshold
        return _result(ok, single)

    def goal_distance(self, state: np.ndarray, goal: np.ndarray) -> Any:
        """Euclidean distance over ``success_coords`` (state units): ``[D]`` inputs give a float,
        ``[N, D]`` inputs an ``[N]`` array."""
        s, g, single = _as_batch(state, goal)
        c = self.success_coords
        if single:  # the 1-D norm (a dot product), as episode records have always been measured
            return float(np.linalg.norm(s[0, c] - g[0, c]))
        return np.linalg.norm(s[:, c] - g[:, c], axis=-1)

    # -- proprioception -------------------------------------------------------------------------

    @classmethod
    def has_proprio(cls) -> bool:
        """Whether the task's states have a proprioceptive part (``proprio_coords`` is set)."""
        return cls.proprio_coords is not None

    @classmethod
    def proprio_dim(cls) -> int:
        """``P``, the length of :meth:`proprio`'s vectors (0 for a task without proprio)."""
        return 0 if cls.proprio_coords is None else len(range(cls.state_dim)[cls.proprio_coords])

    def proprio(self, states: np.ndarray) -> np.ndarray:
        """The proprioceptive part of states ``[..., D]``: ``[..., P]`` float64 (a copy), read from the
        simulator's own state, never estimated from a picture.

        Raises:
            ValueError: the task has no proprio (``proprio_coords`` is None), or the states are not
                ``[..., state_dim]``.
        """
        if self.proprio_coords is None:
            raise ValueError(f"task {self.name!r} has no proprioceptive state (its Env sets no proprio_coords), "
                             "so a model with proprio cannot be trained or planned on it")
        s = np.asarray(states, dtype=np.float64)
        if s.ndim < 1 or s.shape[-1] != self.state_dim:
            raise ValueError(f"states must be [..., {self.state_dim}] for task {self.name!r}, got {s.shape}")
        return s[..., self.proprio_coords].copy()

    # -- start/goal pairs -----------------------------------------------------------------------

    def sample_start_goal(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random (start, goal) pair of valid states for a planning trial, drawn from ``rng``
        (goal mode ``random``). Default: two independent random states (:meth:`_sample_state`)."""
        return self._sample_state(rng), self._sample_state(rng)

    @classmethod
    def needs_dataset_for_goals(cls, goal_mode: str | None = None) -> bool:
        """Whether drawing pairs in ``goal_mode`` (None: ``default_goal_mode``) needs recorded
        segments (a data set's held-out trajectories)."""
        return (goal_mode or cls.default_goal_mode) == "replay"

    def draw_start_goal(
        self,
        rng: np.random.Generator,
        *,
        horizon: int,
        goal_mode: str,
        segments: Sequence[Segment] = (),
    ) -> StartGoal:
        """One start/goal pair for a trial of ``horizon`` model steps, drawn from ``rng`` only.

        ``random`` calls :meth:`sample_start_goal`; ``replay`` calls :meth:`replay_start_goal` on
        ``segments``. A subclass that adds a goal mode (to ``goal_modes``) handles it here and
        leaves the others to this method. May change the env's current state.

        Raises:
            ValueError: a goal mode this task does not have.
        """
        if goal_mode == "random":
            start, goal = self.sample_start_goal(rng)
            return StartGoal(start=start, goal=goal)
        if goal_mode == "replay":
            return self.replay_start_goal(rng, segments, horizon=horizon)
        raise ValueError(f"task {self.name!r} has no goal mode {goal_mode!r}; its modes: {', '.join(self.goal_modes)}")

    def replay_start_goal(self, rng: np.random.Generator, segments: Sequence[Segment], *, horizon: int) -> StartGoal:
        """A goal ``horizon`` model steps away, by replaying recorded actions (goal mode ``replay``).

        Among the segments with at least ``frameskip * horizon`` actions one is picked uniformly,
        then an offset uniformly; the simulator is reset to the state at that offset (the start)
        and replays the next ``frameskip * horizon`` env actions; the goal is where the replay ends
        (not the recorded state, which a replay need not reproduce exactly). Changes the env's state.

        Raises:
            ValueError: no segment has ``frameskip * horizon`` actions.
        """
        steps = self.frameskip * horizon
        eligible = [i for i, (_, actions) in enumerate(segments) if len(actions) >= steps]
        if not eligible:
            longest = max((len(actions) for _, actions in segments), default=0)
            raise ValueError(
                f"{self.name}: no segment is long enough for horizon {horizon}: a goal replays "
                f"frameskip * horizon = {steps} env actions ({steps + 1} states), but the longest of "
                f"the {len(segments)} segments has {longest} actions"
            )
        k = int(rng.integers(len(eligible)))
        states, actions = segments[eligible[k]]
        offset = int(rng.integers(len(actions) - steps + 1))
        start = self.reset(state=states[offset])
        goal = self.rollout(actions[offset : offset + steps])[-1]
        return StartGoal(start=start, goal=goal, source=(eligible[k], offset))

    # -- data -----------------------------------------------------------------------------------

    def data_policy(self, rng: np.random.Generator, *, steps: int) -> Policy:
        """The data-collection policy of one trajectory of ``steps`` env steps, drawing from ``rng``.

        The data generator clips what it returns to the action bounds. Default: uniformly random
        actions within ``[action_low, action_high]``.
        """
        return lambda state, t: rng.uniform(self.action_low, self.action_high)

    # -- pictures and diagnostics ---------------------------------------------------------------

    def plot_tracks(self, states: np.ndarray) -> dict[str, np.ndarray]:
        """The 2-D world positions a plot draws for states ``[T, D]``: ``{name: [T, 2]}``, in the
        units of ``world_extent``. Default: ``{"agent": states[:, :2]}``."""
        states = np.asarray(states, dtype=np.float64).reshape(-1, np.shape(states)[-1])
        return {"agent": states[:, :2]}

    def pixel_coords(self, xy: np.ndarray, *, size: int) -> np.ndarray:
        """World positions ``[..., 2]`` (x, y) to ``[..., 2]`` (column, row) of a ``size`` render.

        Pixel ``(c, r)`` has its centre at ``(c, r)`` (matplotlib's ``imshow`` convention); the
        result is continuous.

        Raises:
            ValueError: the task has no ``world_extent``.
        """
        if self.world_extent is None:
            raise ValueError(f"task {self.name!r} cannot be drawn on its render: set world_extent (and y_up) "
                             f"on {type(self).__name__}")
        lo, hi = self.world_extent
        xy = np.asarray(xy, dtype=np.float64)
        scale = size / (hi - lo)
        col = (xy[..., 0] - lo) * scale - 0.5
        row = ((hi - xy[..., 1]) if self.y_up else (xy[..., 1] - lo)) * scale - 0.5
        return np.stack([col, row], axis=-1)

    def obstacle_crossings(self, paths: np.ndarray) -> np.ndarray | None:
        """Which state paths ``[N, T, D]`` pass through an obstacle between consecutive states
        (``[N]`` bool), for judging a model's predictions; None for a task without obstacles."""
        return None

    def path_distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
        """The length of the shortest path between states ``a`` and ``b`` ``[N, D]`` (or ``[D]``)
        through the task's free space, over ``success_coords`` (state units): ``[N]``, ``inf`` where
        no path joins them. The wall-aware counterpart of :meth:`goal_distance`, for judging a
        model's latent geometry (:mod:`wmplan.platform.models.geometry`). None (the default): the
        task has no obstacles, and the straight line is the shortest path."""
        return None

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


def _segments_clear(p: np.ndarray, q: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Whether straight segments ``p -> q`` (``[..., 2]``, broadcast) miss the open interiors of
    every box ``[K, 4]`` (rows ``x_lo, x_hi, y_lo, y_hi``): ``[...]`` bool. Touching a face or a
    corner, or sliding along a face, is not a contact."""
    p = np.asarray(p, dtype=np.float64)[..., None, :]
    d = np.asarray(q, dtype=np.float64)[..., None, :] - p
    t_in = np.zeros(np.broadcast_shapes(p.shape[:-1], d.shape[:-1], boxes.shape[:1]))
    t_out = np.ones_like(t_in)
    for axis in (0, 1):
        lo, hi = boxes[:, 2 * axis], boxes[:, 2 * axis + 1]
        pa, da = p[..., axis], d[..., axis]
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (lo - pa) / da, (hi - pa) / da
        moving = da != 0
        inside = (pa > lo) & (pa < hi)
        t_in = np.maximum(t_in, np.where(moving, np.minimum(t1, t2), np.where(inside, -np.inf, np.inf)))
        t_out = np.minimum(t_out, np.where(moving, np.maximum(t1, t2), np.where(inside, np.inf, -np.inf)))
    return ~np.any(t_in < t_out, axis=-1)


def box_path_distance(a: np.ndarray, b: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Shortest-path lengths between 2-D points ``a`` and ``b`` ``[N, 2]`` around axis-aligned boxes.

    ``boxes [K, 4]`` (rows ``x_lo, x_hi, y_lo, y_hi``) are obstacles with open interiors: a path
    may run along a face or touch a corner. The shortest path among polygonal obstacles bends only
    at their corners, so this is exact: a Floyd-Warshall pass over the visibility graph of the
    corners that lie outside every box, then, per pair, the straight line if it is clear or the
    best ``a -> corner -> ... -> corner -> b``. ``inf`` where no path joins two points (one of
    them inside a box, or the boxes enclosing one of them). Overlapping boxes act as their union.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 2)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    direct = np.linalg.norm(a - b, axis=-1)
    if len(boxes) == 0:
        return direct
    corners = np.array([[x, y] for x_lo, x_hi, y_lo, y_hi in boxes for x in (x_lo, x_hi) for y in (y_lo, y_hi)])
    cx, cy = corners[:, None, 0], corners[:, None, 1]
    free = ~np.any((cx > boxes[:, 0]) & (cx < boxes[:, 1]) & (cy > boxes[:, 2]) & (cy < boxes[:, 3]), axis=-1)
    corners = np.unique(corners[free], axis=0)

    def hops(p: np.ndarray, q: np.ndarray) -> np.ndarray:  # [P, Q] straight lengths, inf where blocked
        length = np.linalg.norm(p[:, None] - q[None], axis=-1)
        return np.where(_segments_clear(p[:, None], q[None], boxes), length, np.inf)

    between = hops(corners, corners)
    for k in range(len(corners)):  # Floyd-Warshall: shortest corner-to-corner paths
        between = np.minimum(between, between[:, k : k + 1] + between[k : k + 1, :])
    from_a, to_b = hops(a, corners), hops(b, corners)  # [N, M]
    via = np.min(from_a[:, :, None] + between[None] + to_b[:, None, :], axis=(1, 2)) if len(corners) else np.full(len(a), np.inf)
    clear = _segments_clear(a, b, boxes)
    return np.where(clear, direct, via)


def _as_batch(state: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Broadcast ``state`` and ``goal`` to ``[N, D]``; the flag says whether both were 1-D."""
    s = np.asarray(state, dtype=np.float64)
    g = np.asarray(goal, dtype=np.float64)
    single = s.ndim == 1 and g.ndim == 1
    s2, g2 = np.broadcast_arrays(np.atleast_2d(s), np.atleast_2d(g))
    return s2, g2, single


def _result(ok: np.ndarray, single: bool) -> Any:
    return bool(ok[0]) if single else ok
