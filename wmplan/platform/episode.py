"""Planning episodes: start/goal pairs, running a planner on them, and judging the result in the simulator.

This module is the evaluation protocol of GRASP and DINO-WM (see ``GRASP.md``, "Evaluation
protocol") in one place:

- :func:`make_episode_specs` draws a seeded, reproducible set of start/goal pairs for one task and
  horizon, each drawn by the task's env (:meth:`~wmplan.platform.envs.Env.draw_start_goal`) in
  one of its goal modes: its own random pairs, or goals reached by replaying held-out data
  segments in the simulator (DINO-WM's protocol, the default of tasks that say so);
- :func:`run_episodes` plans every episode in *one* batched planner call, in the world model's
  own state space (:func:`observe`), then executes the plan in the real simulator and
  judges success there, open loop or with a fixed budget of MPC replans;
- :class:`EpisodeRecord` is the single definition of an episode's result;
- :func:`summarize` turns records into the reported numbers (success rate with a Wald 95%
  interval, median planning time of the successful episodes).

Planning sees only the world model: the simulator is never queried while planning and never used
to stop early; every budget (planner iterations, replans) is fixed and recorded.

A world model may define ``encode(env_state [..., D_env]) -> model_state [..., D]`` and
``decode(model_state) -> env_state`` (a learned state model normalises); without them model
states are env states. A pixel model (``observation = 'pixels'``) never sees a state: starts and
goals are rendered and given to it as images, which it encodes; its ``decode`` is a state probe
used only to report in-model success. One model action is ``env.frameskip`` env actions
packed together (:func:`wmplan.platform.envs.pack_actions`), so ``model.action_dim`` must be
``env.frameskip * env.action_dim``.

Two optional model methods change what is planned on and what judges it (:func:`planning_model`):
``planning_model(coords=...)`` gives the model planners search (an ensemble's mean with its
disagreement penalty, :class:`~wmplan.platform.models.EnsembleWorldModel`), and
``judge_rollout(start [B, D], actions [B, n, A]) -> [B, n+1, D]`` is the rollout that judges
in-model success (an ensemble member that planning did not use), instead of the plan's own.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from wmplan.platform.costs import proprio_cost_model, success_cost_model
from wmplan.platform.envs.base import Env, Segment, unpack_actions
from wmplan.platform.models.visual import proprio_inputs, render_states
from wmplan.platform.planners.base import Planner, PlanResult
from wmplan.platform.stats import wald_interval
from wmplan.platform.world_model import WorldModel, from_model_space, is_observation_model, to_model_space

__all__ = [
    "MODES",
    "EpisodeSpec",
    "EpisodeRecord",
    "make_episode_specs",
    "run_episodes",
    "summarize",
    "summarize_rows",
    "to_model_space",
    "observe",
    "from_model_space",
    "success_coordinates",
    "check_action_packing",
    "snapshot_schedule",
    "planning_model",
    "judged_final_states",
    "exploitation_gap",
    "proprio_weight_of",
]

Mode = Literal["open_loop", "mpc"]
MODES: tuple[str, ...] = ("open_loop", "mpc")
"""The valid execution modes of :func:`run_episodes`."""

NONFINITE_ERROR = "model produced NaN or inf"
"""The error recorded for an episode whose planning problem the planner marked failed."""

def _frozen_array(x: Any, *, dtype: Any = np.float64) -> np.ndarray:
    """A read-only copy of ``x`` as a numpy array of ``dtype``."""
    arr = np.array(x, dtype=dtype, copy=True)
    arr.setflags(write=False)
    return arr


def _derive_seed(*entropy: int) -> int:
    """A 63-bit seed derived from non-negative integers (stable across platforms and runs)."""
    words = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


def _task_key(task: str) -> int:
    return zlib.crc32(task.encode("utf-8"))


# -- episode specifications ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EpisodeSpec:
    """One planning trial: reach ``goal`` from ``start`` in ``horizon`` model steps.

    Attributes:
        task: the task's name (``env.name``).
        horizon: ``H``, in model steps (each is ``env.frameskip`` env steps).
        episode_id: the trial's index in its set (0 .. count-1).
        seed: the trial's own seed; ``numpy.random.default_rng(seed)`` drew its start and goal.
        start: ``[D_env]`` start state (read-only).
        goal: ``[D_env]`` goal state (read-only).
        source: for goals replayed from data, ``(segment index, offset)`` of the replayed
            segment in the ``segments`` given to :func:`make_episode_specs`; else None.
    """

    task: str
    horizon: int
    episode_id: int
    seed: int
    start: np.ndarray
    goal: np.ndarray
    source: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        start, goal = _frozen_array(self.start), _frozen_array(self.goal)
        if start.ndim != 1 or start.shape != goal.shape:
            raise ValueError(f"start and goal must be 1-D states of one size; got {start.shape} and {goal.shape}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "goal", goal)


def _check_segments(env: Env, segments: Sequence[Segment]) -> list[Segment]:
    out = []
    for i, seg in enumerate(segments):
        if len(seg) != 2:
            raise ValueError(f"segment {i} must be a pair (states [T+1, {env.state_dim}], env_actions [T, {env.action_dim}])")
        states = np.asarray(seg[0], dtype=np.float64)
        actions = np.asarray(seg[1], dtype=np.float64)
        if states.ndim != 2 or states.shape[1] != env.state_dim:
            raise ValueError(f"segment {i}: states must have shape [T+1, {env.state_dim}], got {states.shape}")
        if actions.ndim != 2 or actions.shape[1] != env.action_dim or actions.shape[0] != states.shape[0] - 1:
            raise ValueError(
                f"segment {i}: env_actions must have shape [T, {env.action_dim}] with T = {states.shape[0] - 1} "
                f"(one fewer than its states), got {actions.shape}"
            )
        out.append((states, actions))
    return out


def make_episode_specs(
    env: Env,
    *,
    horizon: int,
    count: int,
    seed: int,
    segments: Sequence[Segment] | None = None,
    goal_mode: str | None = None,
) -> list[EpisodeSpec]:
    """A reproducible set of ``count`` start/goal pairs for ``env``'s task at ``horizon``.

    Episode ``i`` gets its own seed, derived from ``(seed, task, horizon, i)``, and its pair is
    ``env.draw_start_goal`` of ``numpy.random.default_rng`` of that seed only, so the same
    arguments always give the same specs and one episode can be regenerated alone.

    The goal mode (one of ``env.goal_modes``) says how pairs are drawn: ``random`` is the task's
    own random pairs (``env.sample_start_goal``: Wall, opposite sides of the wall; PointMaze,
    random valid states); ``replay`` replays held-out data, as DINO-WM does on Push-T: among the
    segments with at least ``frameskip * horizon`` actions one is picked uniformly, then an offset
    uniformly; the simulator is reset to the state at that offset (the start) and replays the next
    ``frameskip * horizon`` env actions; the goal is where the replay ends
    (``env.replay_start_goal``). Note: the env's current state is changed by a replay.

    Args:
        env: the task simulator.
        horizon: ``H`` in model steps.
        count: number of episodes (ids ``0 .. count-1``).
        seed: the set's seed.
        segments: held-out episodes, each ``(states [T+1, D_env], env_actions [T, action_dim])``.
        goal_mode: how to draw pairs; None: ``replay`` when ``segments`` are given, else the
            task's ``default_goal_mode``.

    Raises:
        ValueError: for a non-positive horizon, a negative count, a goal mode the task does not
            have, malformed segments, a mode that needs segments without them, or segments that
            are all shorter than ``frameskip * horizon`` actions.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    task = env.name
    mode = goal_mode if goal_mode is not None else "replay" if segments is not None else env.default_goal_mode
    if mode not in env.goal_modes:
        raise ValueError(f"task {task!r} has no goal mode {mode!r}; its modes: {', '.join(env.goal_modes)}")
    checked: list[Segment] = []
    if segments is not None:
        checked = _check_segments(env, segments)
    elif env.needs_dataset_for_goals(mode):
        steps = env.frameskip * horizon
        raise ValueError(
            f"{task}: goal mode {mode!r} replays held-out trajectory segments (DINO-WM's protocol); pass "
            f"segments=[(states [T+1, {env.state_dim}], env_actions [T, {env.action_dim}]), ...] with T >= "
            f"frameskip * horizon = {steps}"
        )

    specs = []
    for i in range(count):
        ep_seed = _derive_seed(seed & ((1 << 63) - 1), _task_key(task), horizon, i)
        rng = np.random.default_rng(ep_seed)
        pair = env.draw_start_goal(rng, horizon=horizon, goal_mode=mode, segments=checked)
        specs.append(EpisodeSpec(task, horizon, i, ep_seed, pair.start, pair.goal, pair.source))
    return specs


# -- the world-model side --------------------------------------------------------------------------


def observe(env: Env, model: object, states: Tensor) -> Tensor:
    """What ``model`` sees of env states ``[N, D_env]``, as model states ``[N, D]``.

    An observation model (:class:`~wmplan.platform.world_model.ObservationModel`, e.g. a visual
    world model) gets pictures: the states are rendered in a scratch copy of ``env`` at the model's
    ``frame_size`` and encoded, so the model never sees a state (a goal is given to it as an
    image). A model of pictures trained with proprio also gets the proprioceptive part of each
    state, read from the simulator's state (:meth:`Env.proprio`), never estimated from the picture.
    Any other model goes through :func:`to_model_space`.
    """
    if is_observation_model(model):
        env_states = states.detach().cpu().numpy()
        frames = render_states(env, env_states, model.frame_size)
        return model.encode(frames, **proprio_inputs(model, env, env_states)).to(device=states.device, dtype=states.dtype)
    return to_model_space(model, states)


def snapshot_schedule(iterations: int, count: int) -> list[int]:
    """``count`` planner iterations evenly spaced over ``iterations`` (1-based, the last one
    included, at most one per iteration): where :func:`run_episodes` snapshots a plan. 0: none."""
    n = min(count, iterations)
    return sorted({max(1, round(iterations * (k + 1) / n)) for k in range(n)}) if n > 0 else []


def planning_model(env: Env, model: WorldModel) -> WorldModel:
    """The model planners search for ``env``: the model's own ``planning_model(coords=env.success_coords)``
    when it has one (an ensemble: its mean, with its disagreement penalty in the cost), then for a
    model of pictures with proprio :func:`~wmplan.platform.costs.proprio_cost_model` (latent MSE plus
    its ``proprio_weight`` x proprio MSE), then :func:`~wmplan.platform.costs.success_cost_model`
    (a model with its own cost is left as it is). A model without either is planned on as it is."""
    view = getattr(model, "planning_model", None)
    if callable(view):
        model = view(coords=success_coordinates(env))
    return success_cost_model(env=env, model=proprio_cost_model(model))


def proprio_weight_of(model: object) -> float:
    """The weight of the proprio term in ``model``'s planning cost (its ``proprio_weight``; 0 for a model without one)."""
    return float(getattr(model, "proprio_weight", 0.0))


def judged_final_states(model: WorldModel, start: Tensor, actions: Tensor, planned: Tensor) -> Tensor:
    """The model states ``[B, D]`` in-model success is judged on, after ``actions [B, n, A]`` from ``start [B, D]``:
    the last state of ``model.judge_rollout(start, actions)`` when the model has one (a member that
    planning did not use), else ``planned``, the planner's own prediction. No gradient."""
    judge = getattr(model, "judge_rollout", None)
    if not callable(judge):
        return planned
    with torch.no_grad():
        final: Tensor = judge(start, actions)[..., -1, :]
    return final


def check_action_packing(env: Env, model: WorldModel) -> None:
    """Raise ValueError unless one model action is ``env.frameskip`` packed env actions."""
    want = env.frameskip * env.action_dim
    if model.action_dim != want:
        raise ValueError(
            f"{env.name}: the model's action_dim is {model.action_dim}, but one model action packs "
            f"frameskip * action_dim = {env.frameskip} * {env.action_dim} = {want} env actions"
        )


def success_coordinates(env: Env) -> slice:
    """The state coordinates that success is judged on, for the distances of :class:`EpisodeRecord`:
    the task's ``env.success_coords`` (the whole state unless the task says otherwise)."""
    return env.success_coords


# -- results -----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EpisodeRecord:
    """The result of one episode: THE definition that storage, tracking and tuning use.

    Attributes:
        task: the task's name.
        planner: the planner's name as given to :func:`run_episodes`.
        horizon: ``H``, model steps planned (and executed).
        episode_id: the spec's episode id.
        seed: the spec's seed.
        mode: ``'open_loop'`` or ``'mpc'``.
        plan_seed: the seed of the episode's first planner call (later MPC calls derive theirs
            from it; see :func:`run_episodes`).
        success: ``env.is_success(final executed state, goal)`` in the real simulator.
        model_success: ``env.is_success`` of the model's predicted final state, decoded to env
            space, against the goal (open loop: the final state of the plan's model rollout; MPC:
            the last plan's prediction after the steps executed from it). A model with
            ``judge_rollout`` predicts it with that rollout (an ensemble's held-out member), not
            with the rollout the planner optimised (:func:`judged_final_states`).
        final_distance: Euclidean distance between the final executed state and the goal over
            :func:`success_coordinates` (for a failed episode: from the last state reached).
        model_final_distance: the same distance for the model's prediction (inf when the model
            failed or its prediction is not finite).
        planning_time_s: sum over this episode's planner calls of their wall time. All episodes
            are planned in one batched call, so each gets the whole batch's wall time (not a
            1/B share): it is the time the batch needed to produce this episode's plan.
        iterations: planner iterations, summed over the planner calls.
        replans: number of planner calls (1 open loop; ``ceil(H / replan_every)`` in MPC).
        failed: the planner marked the problem failed (NaN or inf), or executing it raised.
        error: why it failed (e.g. ``"model produced NaN or inf"``); None otherwise.
        executed_states: ``[T_env + 1, D_env]`` real states, from the start (read-only).
        actions: ``[T_env, 2]`` env actions executed (read-only); ``T_env = H * frameskip``
            unless the episode failed part way.
        residual: ``[I, H]`` float32 for lifted planners: this episode's rows of
            ``trace.residual``, concatenated over the planner calls; else None.
        snapshot_iterations: open loop with snapshots asked for: the planner iterations after
            which the plan was also executed (the anytime curve); else empty.
        success_by_iteration: success in the real simulator of the plan after each of
            ``snapshot_iterations`` (executed from the exact start in a copy of the simulator).
        transitions: model transitions the planner calls evaluated per problem (forward, plus
            backward where gradients were taken; :attr:`PlanResult.transitions`), summed over calls.
        budget: the transitions per planner call the planner's options were fitted to (0: none).
        snapshot_seconds: wall seconds from the start of the planner call to each snapshot.
        snapshot_transitions: transitions spent by each snapshot.
        time_to_success_s: the paper's time to success: the wall seconds of the batch's planner
            call until the first snapshot whose plan succeeds in the simulator; the whole
            ``planning_time_s`` for a success no snapshot saw (or without snapshots); NaN for an
            episode that did not succeed.
        transitions_to_success: the transitions spent by that snapshot (likewise; -1 without success).
        proprio_weight: the weight of the proprio term in the planning cost (DINO-WM's ``alpha``;
            :func:`proprio_weight_of`): 0 unless the model carries proprio and the run set a weight.
    """

    task: str
    planner: str
    horizon: int
    episode_id: int
    seed: int
    mode: str
    plan_seed: int
    success: bool
    model_success: bool
    final_distance: float
    model_final_distance: float
    planning_time_s: float
    iterations: int
    replans: int
    failed: bool
    error: str | None
    executed_states: np.ndarray = field(repr=False)
    actions: np.ndarray = field(repr=False)
    residual: np.ndarray | None = field(default=None, repr=False)
    snapshot_iterations: tuple[int, ...] = ()
    success_by_iteration: tuple[bool, ...] = ()
    transitions: int = 0
    budget: int = 0
    snapshot_seconds: tuple[float, ...] = ()
    snapshot_transitions: tuple[int, ...] = ()
    time_to_success_s: float = math.nan
    transitions_to_success: int = -1
    proprio_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        object.__setattr__(self, "executed_states", _frozen_array(self.executed_states))
        object.__setattr__(self, "actions", _frozen_array(self.actions))
        if self.residual is not None:
            object.__setattr__(self, "residual", _frozen_array(self.residual, dtype=np.float32))

    def to_row(self) -> dict[str, Any]:
        """The scalar fields (and the two snapshot tuples, as lists) as a flat dict, plus ``executed_steps``; no arrays."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _ARRAY_FIELDS}
        row["executed_steps"] = int(self.actions.shape[0])
        for name in _LIST_FIELDS:
            row[name] = list(getattr(self, name))
        return row


_ARRAY_FIELDS = frozenset({"executed_states", "actions", "residual"})
_LIST_FIELDS = ("snapshot_iterations", "success_by_iteration", "snapshot_seconds", "snapshot_transitions")


# -- running episodes -------------------------------------------------------------------------------


@dataclass
class _Episode:
    """Mutable bookkeeping of one episode while :func:`run_episodes` runs."""

    sim: Env
    states: list[np.ndarray]
    actions: list[np.ndarray]
    error: str | None = None
    model_final: np.ndarray | None = None
    residuals: list[np.ndarray] = field(default_factory=list)
    curve: list[bool] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.error is None

    @property
    def current(self) -> np.ndarray:
        return self.states[-1]


def _validate(env: Env, model: WorldModel, planner: Planner, specs: Sequence[EpisodeSpec], mode: str, replan_every: int) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if replan_every < 1:
        raise ValueError(f"replan_every must be >= 1, got {replan_every}")
    check_action_packing(env, model)
    h = planner.options.horizon
    for s in specs:
        if s.task != env.name:
            raise ValueError(f"episode {s.episode_id} is for task {s.task!r}, but the env is {env.name!r}")
        if s.horizon != h:
            raise ValueError(f"episode {s.episode_id} has horizon {s.horizon}, but the planner plans {h} steps")
        if s.start.shape != (env.state_dim,):
            raise ValueError(f"episode {s.episode_id}: states must have {env.state_dim} values, got {s.start.shape}")


def _plan_seeds(specs: Sequence[EpisodeSpec], plan_seed: int | None, calls: int) -> list[int]:
    """Seed of each planner call: ``plan_seed`` first (derived from the specs' seeds when None)."""
    first = _derive_seed(*(s.seed for s in specs)) if plan_seed is None else int(plan_seed)
    return [first] + [_derive_seed(first & ((1 << 63) - 1), k) for k in range(1, calls)]


def _execute(ep: _Episode, model_actions: np.ndarray, frameskip: int) -> None:
    """Execute model actions ``[n, A]`` in the episode's simulator; record an exception as its error."""
    env_actions = unpack_actions(np.asarray(model_actions, dtype=np.float64), frameskip)
    try:
        states = ep.sim.rollout(env_actions)
    except Exception as exc:  # noqa: BLE001 - one episode's failure must not stop the others
        ep.error = f"execution failed: {type(exc).__name__}: {exc}"
        return
    ep.states.extend(states[1:])
    ep.actions.extend(env_actions)


def _snapshot_successes(sim: Env, specs: Sequence[EpisodeSpec], model_actions: np.ndarray, frameskip: int) -> np.ndarray:
    """Whether each row of ``model_actions [N, H, A]`` reaches its spec's goal from the spec's exact start,
    all executed in one :meth:`Env.final_states` call on ``sim`` (a scratch simulator); ``[N]`` bool.
    A row that cannot be executed did not succeed."""
    starts = np.stack([spec.start for spec in specs])
    goals = np.stack([spec.goal for spec in specs])
    finals, ok = sim.final_states(starts, unpack_actions(model_actions, frameskip))
    hits: np.ndarray = ok & np.asarray(sim.is_success(finals, goals), dtype=bool)
    return hits


def run_episodes(
    env: Env,
    model: WorldModel,
    planner: Planner,
    specs: Sequence[EpisodeSpec],
    *,
    planner_name: str,
    mode: Mode = "open_loop",
    replan_every: int = 1,
    device: str | torch.device = "cpu",
    plan_seed: int | None = None,
    snapshot_iterations: Sequence[int] = (),
    budget: int = 0,
) -> list[EpisodeRecord]:
    """Plan every episode in one batched planner call, execute the plans in the simulator, judge them.

    All ``specs`` must be for ``env``'s task with ``horizon == planner.options.horizon``. Starts
    and goals are encoded into model space (:func:`to_model_space`) and planned together as one
    batch of ``B = len(specs)`` problems on ``device`` (where ``model`` must already live).

    - ``'open_loop'``: one plan of ``H`` model steps; its actions are unpacked into ``H * frameskip``
      env actions and executed from the episode's exact start (``env.reset(state=start)``).
    - ``'mpc'``: a fixed replan budget with a shrinking horizon. Execute the first
      ``replan_every`` model steps of the plan, re-encode the real states reached, replan the
      remaining ``H - executed`` steps (warm-started with the previous plan minus its executed
      steps), and so on until ``H`` model steps have been executed in total:
      ``ceil(H / replan_every)`` planner calls. The goal stays due at step ``H``, so an exact
      model reaches it as open loop does. Residual rows of shorter replans are NaN-padded to ``H``.
      Each episode runs in its own copy of ``env``, stepped continuously between replans.

    Planning sees only the model: the simulator is used only to execute plans, and every episode
    executes its full budget whether or not it reaches the goal early. The planning cost looks at
    the coordinates success looks at (:func:`wmplan.platform.costs.success_cost_model`: PointMaze
    plans on position, not velocity, with a model whose state is coordinatewise the env's).

    A problem the planner marks failed (the model produced NaN or inf) gets ``failed=True``,
    ``success=False`` and an error, and is not executed further; an exception while executing
    one episode is recorded in its record likewise. Neither stops the other episodes.

    Args:
        env: the task simulator (not stepped in MPC mode, where copies are).
        model: the world model; ``model.action_dim == env.frameskip * env.action_dim``.
        planner: the planner (its options set horizon and budget).
        specs: the episodes, e.g. from :func:`make_episode_specs`.
        planner_name: the planner's name for the records (e.g. ``"grasp"``).
        mode: ``'open_loop'`` or ``'mpc'``.
        replan_every: model steps executed between MPC replans (ignored open loop).
        device: where to plan.
        snapshot_iterations: open loop only: planner iterations (1-based) after which the plan is
            also executed, from the exact start in a copy of the simulator, giving each record's
            ``success_by_iteration`` (how success grows with the planning budget).
        plan_seed: seed of the first planner call; call ``k >= 1`` of MPC uses a seed derived from
            ``(plan_seed, k)``. None derives ``plan_seed`` from the specs' seeds, so results are
            deterministic either way (for a deterministic model and planner).
        budget: the transitions per planner call the planner's options were fitted to, recorded
            with each episode (0: none; see :func:`wmplan.platform.planners.fit_budget`).

    Returns:
        One :class:`EpisodeRecord` per spec, in the order of ``specs``.

    Raises:
        ValueError: for an invalid mode or ``replan_every``, a model whose action is not
            ``frameskip`` packed env actions, or specs that do not match the env or planner.
    """
    _validate(env, model, planner, specs, mode, replan_every)
    if not specs:
        return []
    proprio_weight = proprio_weight_of(model)
    model = planning_model(env, model)  # plan on what success looks at, where the model can tell (and its own view)
    h = planner.options.horizon
    fs = env.frameskip
    dtype = model.action_low.dtype if model.action_low.is_floating_point() else torch.float32
    calls = 1 if mode == "open_loop" else -(-h // replan_every)
    seeds = _plan_seeds(specs, plan_seed, calls)

    def encode(states: Sequence[np.ndarray]) -> Tensor:
        x = torch.as_tensor(np.stack(states), dtype=dtype, device=device)
        with torch.no_grad():
            return observe(env, model, x).detach()

    episodes: list[_Episode] = []
    for spec in specs:
        sim = env if mode == "open_loop" else copy.deepcopy(env)
        episodes.append(_Episode(sim=sim, states=[spec.start.copy()], actions=[]))
    goal_m = encode([s.goal for s in specs])

    scratch: Env | None = None  # executes the plan snapshots, leaving the episodes' simulators alone
    wall_time = 0.0
    iterations = 0
    transitions = 0
    snapshot_seconds: tuple[float, ...] = ()
    snapshot_transitions: tuple[int, ...] = ()
    executed = 0
    init_actions: Tensor | None = None
    for k in range(calls):
        start_m = encode([ep.current for ep in episodes])
        remaining = h - executed
        step_planner = planner if remaining == h else planner.replace(horizon=remaining)
        snaps = snapshot_iterations if mode == "open_loop" else ()
        result: PlanResult = step_planner.plan(model, start_m, goal_m, seed=seeds[k], init_actions=init_actions,
                                               snapshot_iterations=snaps)
        wall_time += result.wall_time_s
        iterations += result.iterations
        transitions += result.transitions
        if result.action_snapshots:
            snapshot_seconds = tuple(result.snapshot_seconds[i] for i in result.action_snapshots)
            snapshot_transitions = tuple(result.snapshot_transitions[i] for i in result.action_snapshots)
        n = h if mode == "open_loop" else min(replan_every, remaining)
        failed = result.failed.cpu().numpy()
        plan = result.actions.detach().cpu().double().numpy()
        with torch.no_grad():
            final_m = judged_final_states(model, start_m, result.actions[:, :n].detach().to(start_m.dtype), result.states[:, n])
            predicted = from_model_space(model, final_m).detach().cpu().double().numpy()
        residual = None
        if result.trace.residual is not None:
            residual = np.full((*result.trace.residual.shape[:2], h), np.nan, dtype=np.float32)
            residual[:, :, :remaining] = result.trace.residual.float().numpy()
        executing: list[int] = []  # the episodes whose plan snapshots are judged: those that reached _execute
        for b, (spec, ep) in enumerate(zip(specs, episodes)):
            if not ep.active:
                continue
            if residual is not None:
                ep.residuals.append(residual[:, b, :])
            if failed[b]:
                ep.error = NONFINITE_ERROR if calls == 1 else f"{NONFINITE_ERROR} (planner call {k + 1} of {calls})"
                continue
            if k == 0:
                try:
                    ep.states[0] = ep.sim.reset(state=spec.start)
                except Exception as exc:  # noqa: BLE001 - recorded, the other episodes go on
                    ep.error = f"execution failed: {type(exc).__name__}: {exc}"
                    continue
            _execute(ep, plan[b, :n], fs)
            ep.model_final = predicted[b]
            executing.append(b)
        if result.action_snapshots and executing:
            if scratch is None:
                scratch = copy.deepcopy(env)
            rows = torch.as_tensor(executing)
            for snap in result.action_snapshots.values():
                hits = _snapshot_successes(scratch, [specs[b] for b in executing],
                                           snap.detach()[rows.to(snap.device)].cpu().double().numpy(), fs)
                for b, hit in zip(executing, hits):
                    episodes[b].curve.append(bool(hit))
        executed += n
        if k + 1 < calls:
            init_actions = result.actions[:, n:].detach()

    return [
        _record(env, spec, ep, planner_name=planner_name, mode=mode, plan_seed=seeds[0], planning_time_s=wall_time, iterations=iterations,
                replans=calls, snapshots=sorted(set(snapshot_iterations)) if mode == "open_loop" else (),
                spent=_Spent(transitions=transitions, budget=budget, snapshot_seconds=snapshot_seconds,
                             snapshot_transitions=snapshot_transitions), proprio_weight=proprio_weight)
        for spec, ep in zip(specs, episodes)
    ]


@dataclass(frozen=True)
class _Spent:
    """What the planner calls of a batch spent: the same for every episode of the batch."""

    transitions: int
    budget: int
    snapshot_seconds: tuple[float, ...]
    snapshot_transitions: tuple[int, ...]


def _record(
    env: Env,
    spec: EpisodeSpec,
    ep: _Episode,
    *,
    planner_name: str,
    mode: str,
    plan_seed: int,
    planning_time_s: float,
    iterations: int,
    replans: int,
    snapshots: Sequence[int],
    spent: _Spent,
    proprio_weight: float = 0.0,
) -> EpisodeRecord:
    final = ep.current
    final_distance = float(env.goal_distance(final, spec.goal))
    success = ep.active and bool(env.is_success(final, spec.goal))
    if ep.active and ep.model_final is not None and np.all(np.isfinite(ep.model_final)):
        model_final_distance = float(env.goal_distance(ep.model_final, spec.goal))
        model_success = bool(env.is_success(ep.model_final, spec.goal))
    else:
        model_final_distance, model_success = math.inf, False
    curve = tuple(ep.curve) if len(ep.curve) == len(snapshots) and len(spent.snapshot_seconds) == len(snapshots) else ()
    time_to_success, transitions_to_success = math.nan, -1
    if success:
        first = next((k for k, ok in enumerate(curve) if ok), None)
        if first is None:
            time_to_success, transitions_to_success = planning_time_s, spent.transitions
        else:
            time_to_success, transitions_to_success = spent.snapshot_seconds[first], spent.snapshot_transitions[first]
    return EpisodeRecord(
        task=spec.task,
        planner=planner_name,
        horizon=spec.horizon,
        episode_id=spec.episode_id,
        seed=spec.seed,
        mode=mode,
        plan_seed=plan_seed,
        success=success,
        model_success=model_success,
        final_distance=final_distance,
        model_final_distance=model_final_distance,
        planning_time_s=planning_time_s,
        iterations=iterations,
        replans=replans,
        failed=not ep.active,
        error=ep.error,
        executed_states=np.stack(ep.states),
        actions=np.stack(ep.actions) if ep.actions else np.zeros((0, env.action_dim)),
        residual=np.concatenate(ep.residuals, axis=0) if ep.residuals else None,
        snapshot_iterations=tuple(snapshots) if curve else (),
        success_by_iteration=curve,
        transitions=spent.transitions,
        budget=spent.budget,
        snapshot_seconds=spent.snapshot_seconds if curve else (),
        snapshot_transitions=spent.snapshot_transitions if curve else (),
        time_to_success_s=time_to_success,
        transitions_to_success=transitions_to_success,
        proprio_weight=proprio_weight,
    )


# -- summaries ---------------------------------------------------------------------------------------


def summarize(records: Sequence[EpisodeRecord]) -> dict[str, float | int]:
    """The reported numbers of a set of episodes (group them by task, planner, horizon and mode first).

    Returns:
        ``count``; ``successes``; ``success_rate`` with its Wald 95% interval ``success_low`` and
        ``success_high``; ``model_success_rate``; ``exploitation_gap``, in-model minus real success
        (a fraction: how often the plan succeeds in the model and not in the simulator, net); ``median_planning_time_s`` over the successful
        episodes (NaN if none); ``failures`` (episodes marked failed); ``proprio_weight``, the proprio term's
        weight the episodes planned with (0 when off, and for rows that predate it; NaN if they
        differ). Rates are NaN for no records.
    """
    return summarize_rows([r.to_row() for r in records])


def exploitation_gap(model_success_rate: float, success_rate: float) -> float:
    """In-model minus real success (fractions; NaN when either is): how much planners exploit the model."""
    return float(model_success_rate) - float(success_rate)


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else math.nan


def summarize_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | int]:
    """:func:`summarize` over episode rows (``EpisodeRecord.to_row()`` dicts, or rows read from storage)."""
    n = len(rows)
    successes = sum(1 for r in rows if r["success"])
    rate, low, high = wald_interval(successes, n)
    model_rate = sum(1 for r in rows if r["model_success"]) / n if n else math.nan
    won = [r for r in rows if r["success"]]
    times = [r["planning_time_s"] for r in won]
    to_success = [r.get("time_to_success_s", math.nan) for r in won]
    transitions_to_success = [r.get("transitions_to_success", -1) for r in won]
    spent = [r.get("transitions", 0) for r in rows]
    return {
        "count": n,
        "successes": successes,
        "success_rate": rate,
        "success_low": low,
        "success_high": high,
        "model_success_rate": model_rate,
        "exploitation_gap": exploitation_gap(model_rate, rate),
        "median_planning_time_s": float(np.median(times)) if times else math.nan,
        "median_time_to_success_s": _median([t for t in to_success if t is not None and math.isfinite(t)]),
        "median_transitions_to_success": _median([t for t in transitions_to_success if t is not None and t >= 0]),
        "median_transitions": _median(spent),
        "failures": sum(1 for r in rows if r["failed"]),
        "proprio_weight": _common_weight([float(r.get("proprio_weight", 0.0)) for r in rows]),
    }


def _common_weight(weights: Sequence[float]) -> float:
    """The one proprio weight of a group of rows (0 for none; NaN when they differ)."""
    distinct = set(weights)
    return distinct.pop() if len(distinct) == 1 else 0.0 if not distinct else math.nan
