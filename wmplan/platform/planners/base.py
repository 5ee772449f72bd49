"""What every planner shares: options, the result type, and the pieces of the planning loop.

Planners optimise actions in a *unit* action space ``u in [-1, 1]^A`` that maps affinely onto the
model's bounds (``a = mid + half_range * u``), so that learning rates, noise scales and sample
standard deviations mean the same on every model. Results are always given in model units.

Every planner judges a plan with :meth:`Problem.cost`: the model's own cost when it supplies one
(:class:`~wmplan.platform.world_model.CostModel`), the terminal MSE ``mean_d (s - g)^2`` otherwise.

Compute is counted in *model transitions* per problem (:class:`CountedModel`): a forward
transition is one ``model.step`` of one ``(s, a)`` pair, a backward transition one backward pass
through such a step (gradients taken to the actions or states; with GRASP's stop-gradient the pass
still goes through the model to the actions, so it counts). Everything a planner evaluates through
:attr:`Problem.model` inside :meth:`Planner.plan` counts, including the rollout of a warm start's
initial guess; the final rollout that :meth:`Planner.plan` makes to report ``states`` does not (it
is the same ``H`` forward transitions for every planner and no part of the search).
:meth:`Planner.transitions` predicts the count of a call from the options alone.

Batch semantics: ``B`` planning problems are solved at once; each problem's loss enters the total
as a sum (never a mean over problems) and no operation mixes problems, so a problem's plan does
not depend on which other problems share its batch, and a problem whose model output turns NaN or
inf is marked failed without touching the others.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, cast

import torch
from torch import Tensor

from wmplan.platform.options import require
from wmplan.platform.world_model import CostModel, WorldModel, check_world_model, rollout

__all__ = [
    "PlannerOptions", "PlanTrace", "PlanResult", "Planner", "Problem", "Optimized", "CountedModel", "rollout",
    "terminal_cost", "randn",
]


@dataclass(frozen=True, kw_only=True)
class PlannerOptions:
    """Options every planner takes."""

    horizon: int = 10
    """Planning horizon H, in model steps (one model step may pack several environment steps)."""
    iterations: int = 100
    """Number of optimisation iterations (a fixed budget: no early stopping)."""

    def __post_init__(self) -> None:
        require(self.horizon >= 1, f"horizon must be >= 1, got {self.horizon}")
        require(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}")


@dataclass(frozen=True)
class PlanTrace:
    """Per-iteration diagnostics of one :meth:`Planner.plan` call, on the CPU.

    Attributes:
        loss: ``[I, B]`` the planner's own objective per problem after each iteration.
        goal_distance: ``[I, B]`` Euclidean distance to the goal of the planner's current estimate
            of the final state (a model rollout for shooting planners, the last one-step
            prediction for lifted ones).
        residual: ``[I, B, H]`` for lifted planners (GRASP, LatCo): the norm of
            ``F(s_t, a_t) - s_{t+1}`` for every step (with ``s_H`` the goal for GRASP); else None.
        synced: ``[I]`` for GRASP: True after the iterations that ran a sync phase; else None.
    """

    loss: Tensor
    goal_distance: Tensor
    residual: Tensor | None = None
    synced: Tensor | None = None


@dataclass(frozen=True)
class PlanResult:
    """The outcome of :meth:`Planner.plan` for a batch of ``B`` problems.

    Attributes:
        actions: ``[B, H, A]`` the plan, in model units, inside the model's action bounds.
        states: ``[B, H+1, D]`` the model's rollout of ``actions`` from the start states.
        final_distance: ``[B]`` Euclidean distance between ``states[:, -1]`` and the goal
            (``inf`` for failed problems).
        failed: ``[B]`` True where the model produced NaN or inf for that problem.
        iterations: optimisation iterations run.
        wall_time_s: wall-clock seconds of the whole call, device synchronised.
        seed: the seed of the planner's random generator (drawn when none was given).
        trace: per-iteration diagnostics.
        virtual_states: ``[B, H+1, D]`` for lifted planners, the optimised state trajectory
            (``s_0`` the start; for GRASP ``s_H`` is the goal); else None.
        action_snapshots: the plan ``[B, H, A]`` (model units, in bounds) after each iteration
            asked for with ``snapshot_iterations``, by iteration number (1-based). The snapshot of
            the last iteration is the returned plan.
        transitions: model transitions evaluated per problem, forward plus backward (see the
            module docs: the reporting rollout of ``states`` is not counted).
        forward_transitions: the forward part of ``transitions``.
        backward_transitions: the backward part of ``transitions``.
        snapshot_seconds: wall seconds from the start of the call to each snapshot (device
            synchronised), by iteration number like ``action_snapshots``.
        snapshot_transitions: ``transitions`` spent by each snapshot, by iteration number.
    """

    actions: Tensor
    states: Tensor
    final_distance: Tensor
    failed: Tensor
    iterations: int
    wall_time_s: float
    seed: int
    trace: PlanTrace
    virtual_states: Tensor | None = None
    action_snapshots: dict[int, Tensor] = dataclasses.field(default_factory=dict)
    transitions: int = 0
    forward_transitions: int = 0
    backward_transitions: int = 0
    snapshot_seconds: dict[int, float] = dataclasses.field(default_factory=dict)
    snapshot_transitions: dict[int, int] = dataclasses.field(default_factory=dict)


def terminal_cost(final_state: Tensor, goal: Tensor) -> Tensor:
    """Mean over state dimensions of ``(s_T - g)^2``; ``[..., D] -> [...]``."""
    return (final_state - goal).pow(2).mean(-1)


class CountedModel:
    """A world model that counts the transitions evaluated through it, for ``batch`` problems.

    Every :meth:`step` of ``state [..., D]`` adds ``prod(...)`` forward transitions; when its
    output takes part in autograd, a tensor hook adds the same number of backward transitions
    each time a gradient flows back through it. Everything else (``action_low``, ``cost``,
    ``encode``, ...) is the wrapped model's.

    Args:
        model: the world model to count.
        batch: ``B``, the problems that share the calls (the counts per problem divide by it).
    """

    def __init__(self, model: WorldModel, *, batch: int) -> None:
        self.inner = model
        """The wrapped model."""
        self.batch = batch
        self.state_dim = model.state_dim
        self.action_dim = model.action_dim
        self.action_low = model.action_low
        self.action_high = model.action_high
        self.forward_total = 0
        """Forward transitions over all problems."""
        self.backward_total = 0
        """Backward transitions over all problems."""

    def __getattr__(self, name: str) -> Any:
        # Only reached for what this class lacks: the wrapped model's other members (cost, encode, ...).
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        """The wrapped model's step, counted."""
        out = self.inner.step(state, action)
        n = torch.broadcast_shapes(state.shape[:-1], action.shape[:-1]).numel()
        self.forward_total += n
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(functools.partial(self._backward, n))
        return out

    def _backward(self, n: int, grad: Tensor) -> None:
        self.backward_total += n

    @property
    def forward(self) -> int:
        """Forward transitions per problem."""
        return self.forward_total // self.batch

    @property
    def backward(self) -> int:
        """Backward transitions per problem."""
        return self.backward_total // self.batch


class Problem:
    """A batch of planning problems on one model, in the unit action space.

    What a planner may know of the model: its transition (``model.step``), its action bounds
    (through :meth:`to_action` / :meth:`to_unit`) and the planning cost (:meth:`cost`). The
    planner sees the model as :attr:`model`, a :class:`CountedModel` that counts its transitions.

    Args:
        model: the world model.
        start: ``[B, D]`` start states.
        goal: ``[B, D]`` goal states.
        horizon: ``H`` model steps.
        clock_start: the :func:`time.perf_counter` reading snapshot times count from (None: now).
    """

    def __init__(self, model: WorldModel, start: Tensor, goal: Tensor, horizon: int, *, clock_start: float | None = None) -> None:
        self.batch, self.state_dim = start.shape
        self.model = CountedModel(model, batch=self.batch)
        """The model, counting the transitions evaluated through it."""
        self.model_cost: Callable[[Tensor, Tensor], Tensor] | None = model.cost if isinstance(model, CostModel) else None
        """The model's own planning cost, or None (terminal MSE)."""
        self.start = start
        self.goal = goal
        self.horizon = horizon
        self.action_dim = model.action_dim
        low = model.action_low.to(device=start.device, dtype=start.dtype)
        high = model.action_high.to(device=start.device, dtype=start.dtype)
        self.mid = (high + low) / 2
        self.half = (high - low) / 2
        self.failed = torch.zeros(self.batch, dtype=torch.bool, device=start.device)
        self.snapshot_at: frozenset[int] = frozenset()
        self.snapshots: dict[int, Tensor] = {}
        self.snapshot_seconds: dict[int, float] = {}
        self.snapshot_transitions: dict[int, int] = {}
        self.clock_start = time.perf_counter() if clock_start is None else clock_start

    @property
    def transitions(self) -> int:
        """Model transitions evaluated so far per problem, forward plus backward."""
        return self.model.forward + self.model.backward

    @property
    def device(self) -> torch.device:
        return self.start.device

    def to_action(self, u: Tensor) -> Tensor:
        """Unit actions ``[..., A]`` to model actions."""
        return self.mid + self.half * u

    def to_unit(self, a: Tensor) -> Tensor:
        """Model actions ``[..., A]`` to unit actions."""
        return (a - self.mid) / self.half

    def zeros(self, *leading: int) -> Tensor:
        """Unit actions of zeros, ``[B, *leading, H, A]``."""
        return torch.zeros(self.batch, *leading, self.horizon, self.action_dim, device=self.device, dtype=self.start.dtype)

    def straight_line(self) -> Tensor:
        """``[B, H-1, D]`` states evenly spaced on the segment from start to goal (excluding both)."""
        frac = torch.arange(1, self.horizon, device=self.device, dtype=self.start.dtype) / self.horizon
        return self.start[:, None] + frac[None, :, None] * (self.goal - self.start)[:, None]

    def initial_states(self, init_u: Tensor | None) -> Tensor:
        """``[B, H, D]`` initial guess of ``s_1 .. s_H`` for lifted planners.

        The model's rollout of the initial actions when there are some (a warm start keeps its
        trajectory), else the straight line from start to goal (ending at the goal).
        """
        if init_u is None:
            return torch.cat([self.straight_line(), self.goal[:, None]], dim=1)
        with torch.no_grad():
            return rollout(self.model, self.start, self.to_action(init_u))[:, 1:]

    def cost(self, states: Tensor, goal: Tensor) -> Tensor:
        """The planning cost of ``states [B, ..., D]`` for ``goal`` (``[B, ..., D]``, or broadcastable to it).

        The model's ``cost(final_states, goal_states)`` when it has one (called with the goal
        expanded to the shape of ``states``), else :func:`terminal_cost`. Returns ``[B, ...]``,
        differentiable with respect to ``states``.

        Raises:
            ValueError: the model's cost does not return one value per state.
        """
        if self.model_cost is None:
            return terminal_cost(states, goal)
        value = self.model_cost(states, goal.expand_as(states))
        if not isinstance(value, Tensor) or tuple(value.shape) != tuple(states.shape[:-1]):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"{type(self.model.inner).__name__}.cost must return one value per state, shape {tuple(states.shape[:-1])}, got {got}"
            )
        return value

    def final_states(self, u: Tensor) -> Tensor:
        """The model's final states ``[B, ..., D]`` after rolling out unit actions ``u [B, ..., H, A]`` from the starts."""
        extra = u.ndim - 3
        start = self.start.view(self.batch, *([1] * extra), self.state_dim).expand(*u.shape[:-2], self.state_dim)
        return rollout(self.model, start, self.to_action(u))[..., -1, :]

    def goal_like(self, states: Tensor) -> Tensor:
        """The goals ``[B, 1.., D]`` shaped to broadcast against ``states [B, ..., D]``."""
        return self.goal.view(self.batch, *([1] * (states.ndim - 2)), self.state_dim)

    def shooting_cost(self, u: Tensor) -> Tensor:
        """:meth:`cost` of the final states of unit actions ``u [B, ..., H, A]``; returns ``[B, ...]``."""
        final = self.final_states(u)
        return self.cost(final, self.goal_like(final))

    def goal_distance(self, states: Tensor) -> Tensor:
        """Euclidean distance ``[B, ...]`` of ``states [B, ..., D]`` to the goal (for traces; no gradient)."""
        return (states.detach() - self.goal_like(states)).norm(dim=-1)

    def snapshot(self, iteration: int, u: Tensor) -> None:
        """Keep a copy of the unit actions ``u [B, H, A]`` after ``iteration`` (1-based) if it was asked for,
        with the wall seconds (device synchronised) and the transitions spent by then.

        A later call for the same iteration replaces the snapshot (a planner that changes its plan
        after the last iteration, like GRASP's end options, snapshots the returned plan again)."""
        if iteration in self.snapshot_at:
            self.snapshots[iteration] = u.detach().clamp(-1.0, 1.0).clone()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.snapshot_seconds[iteration] = time.perf_counter() - self.clock_start
            self.snapshot_transitions[iteration] = self.transitions

    def record_failures(self, loss: Tensor) -> None:
        """Mark the problems whose per-problem ``loss [B]`` is not finite as failed (no host sync)."""
        self.failed |= ~torch.isfinite(loss)

    def set_grads(self, loss: Tensor, params: list[Tensor]) -> None:
        """Backpropagate ``loss [B]`` into ``params`` (each ``[B, ...]``), zeroing failed problems' gradients.

        Uses ``torch.autograd.grad`` so that nothing accumulates in the model's own parameters.
        """
        self.record_failures(loss.detach())
        ok = ~self.failed
        grads = torch.autograd.grad(torch.where(ok, loss, 0.0).sum(), params, allow_unused=True)
        for p, g in zip(params, grads):
            if g is None:
                g = torch.zeros_like(p)
            mask = ok.view(-1, *([1] * (p.ndim - 1)))
            p.grad = torch.where(mask, g, 0.0)


@dataclass
class Optimized:
    """What a planner's inner loop hands back to :meth:`Planner.plan`."""

    u: Tensor
    """``[B, H, A]`` unit actions."""
    loss: Tensor
    """``[I, B]``."""
    goal_distance: Tensor
    """``[I, B]``."""
    residual: Tensor | None = None
    synced: Tensor | None = None
    virtual_states: Tensor | None = None
    """``[B, H+1, D]`` for lifted planners."""


OptionsT = TypeVar("OptionsT", bound=PlannerOptions)
"""The options dataclass of a planner."""

P = TypeVar("P", bound="Planner[Any]")


class Planner(abc.ABC, Generic[OptionsT]):
    """A planner: searches a world model for actions that reach a goal.

    Subclasses name their options type (``class GD(Planner[GDOptions])``), set ``name`` and
    ``Options`` and implement :meth:`_optimize`; everything else (validation, timing, the final
    rollout, failure handling) lives here. A planner of one's own is used by every command as
    ``package.module:Class`` (see :mod:`wmplan.platform.registry`).
    """

    name: ClassVar[str]
    """The planner's name in results (a plug-in used by ``package.module:Class`` needs none)."""
    Options: ClassVar[type[PlannerOptions]]
    """The frozen options dataclass (a subclass of :class:`PlannerOptions`): the ``OptionsT`` of ``Planner[OptionsT]``."""
    lifted: ClassVar[bool] = False
    """True for planners that optimise states as well as actions (their trace has residuals)."""
    stochastic_by_default: ClassVar[bool] = False
    """True for planners whose default options draw random numbers (another seed, another plan)."""
    search_space: ClassVar[Mapping[str, str]] = {}
    """What ``wmplan tune`` searches by default: option name to a spec in the grammar of
    ``wmplan tune --space`` (``LOW:HIGH[:log][:zero][:int]`` or ``A,B,C`` or a fixed ``VALUE``),
    e.g. ``{"samples": "16:512:log:int", "std": "0.05:1:log"}``. wmplan's own planners keep
    theirs in :mod:`wmplan.tuning.spaces`; a plug-in planner without one must be tuned with
    ``--space NAME=SPEC``."""

    def __init__(self, options: OptionsT | None = None) -> None:
        if options is None:
            options = cast(OptionsT, self.Options())
        if not isinstance(options, self.Options):
            raise TypeError(f"{type(self).__name__} needs {self.Options.__name__}, got {type(options).__name__}")
        self.options: OptionsT = options

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"

    def transitions(self, *, warm_start: bool = False) -> int | None:
        """The model transitions per problem (forward plus backward) that a :meth:`plan` call with
        these options spends, exactly as :attr:`PlanResult.transitions` counts them; None for a
        planner that declares no count (the default; a plug-in planner may supply its own).

        Args:
            warm_start: the call gets ``init_actions`` (a lifted planner rolls them out once to
                initialise its states).
        """
        return None

    def iteration_period(self) -> int:
        """Iterations a budget is spent in whole multiples of (:func:`~wmplan.platform.planners.fit_budget`
        and tuning keep ``iterations`` a multiple of it): 1 by default; GRASP's sync interval, so
        that a run ends on a sync."""
        return 1

    def replace(self: P, **changes: Any) -> P:
        """A new planner of the same kind with some options changed (options are immutable)."""
        return type(self)(dataclasses.replace(self.options, **changes))

    def plan(
        self,
        model: WorldModel,
        start: Tensor,
        goal: Tensor,
        *,
        seed: int | None = None,
        init_actions: Tensor | None = None,
        snapshot_iterations: Sequence[int] = (),
    ) -> PlanResult:
        """Plan ``B`` problems at once.

        Args:
            model: the world model to search; planning never sees anything else.
            start: ``[B, D]`` start states, on the device to plan on.
            goal: ``[B, D]`` goal states.
            seed: seed of the planner's random generator; None draws one (see ``result.seed``).
            init_actions: optional ``[B, H, A]`` initial guess in model units (e.g. a shifted
                warm start in MPC); clipped to the bounds.
            snapshot_iterations: iterations (1-based, at most ``iterations``) after which to keep a
                copy of the plan, to measure how success grows with the budget.
        """
        model = check_world_model(model)
        start, goal = self._check_inputs(model, start, goal, init_actions)
        h = self.options.horizon
        seed = secrets.randbits(63) if seed is None else int(seed)
        generator = torch.Generator(device=start.device)
        generator.manual_seed(seed)

        t0 = time.perf_counter()
        problem = Problem(model, start, goal, h, clock_start=t0)
        bad = [i for i in snapshot_iterations if not 1 <= i <= self.options.iterations]
        if bad:
            raise ValueError(f"snapshot_iterations must lie in [1, {self.options.iterations}], got {bad}")
        problem.snapshot_at = frozenset(int(i) for i in snapshot_iterations)
        init_u = None if init_actions is None else problem.to_unit(init_actions.to(start)).clamp(-1.0, 1.0)
        with torch.enable_grad():
            out = self._optimize(problem, generator, init_u)
        with torch.no_grad():
            u = torch.nan_to_num(out.u.detach(), nan=0.0).clamp(-1.0, 1.0)
            actions = problem.to_action(u)
            states = rollout(model, start, actions)
            dist = (states[:, -1] - goal).norm(dim=-1)
            failed = problem.failed | ~torch.isfinite(states).all(dim=-1).all(dim=-1)
            dist = torch.where(failed, torch.inf, dist)
        if start.device.type == "cuda":
            torch.cuda.synchronize(start.device)
        wall = time.perf_counter() - t0

        def cpu(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.detach().cpu()

        trace = PlanTrace(out.loss.detach().cpu(), out.goal_distance.detach().cpu(), cpu(out.residual), cpu(out.synced))
        return PlanResult(
            actions=actions,
            states=states,
            final_distance=dist,
            failed=failed,
            iterations=int(out.loss.shape[0]),
            wall_time_s=wall,
            seed=seed,
            trace=trace,
            virtual_states=None if out.virtual_states is None else out.virtual_states.detach(),
            action_snapshots={k: problem.to_action(v) for k, v in sorted(problem.snapshots.items())},
            transitions=problem.transitions,
            forward_transitions=problem.model.forward,
            backward_transitions=problem.model.backward,
            snapshot_seconds=dict(sorted(problem.snapshot_seconds.items())),
            snapshot_transitions=dict(sorted(problem.snapshot_transitions.items())),
        )

    def _check_inputs(self, model: WorldModel, start: Tensor, goal: Tensor, init_actions: Tensor | None) -> tuple[Tensor, Tensor]:
        d, a, h = model.state_dim, model.action_dim, self.options.horizon
        if start.ndim != 2 or start.shape[1] != d:
            raise ValueError(f"start must have shape [B, {d}], got {tuple(start.shape)}")
        if goal.shape != start.shape:
            raise ValueError(f"goal must have the shape of start {tuple(start.shape)}, got {tuple(goal.shape)}")
        if goal.device != start.device:
            raise ValueError(f"start is on {start.device} but goal is on {goal.device}")
        if model.action_low.device != start.device:
            raise ValueError(f"the model is on {model.action_low.device} but start is on {start.device}")
        if init_actions is not None and tuple(init_actions.shape) != (start.shape[0], h, a):
            raise ValueError(f"init_actions must have shape [{start.shape[0]}, {h}, {a}], got {tuple(init_actions.shape)}")
        if not start.is_floating_point():
            start, goal = start.float(), goal.float()
        return start.detach(), goal.detach().to(start.dtype)

    @abc.abstractmethod
    def _optimize(self, problem: Problem, generator: torch.Generator, init_u: Tensor | None) -> Optimized:
        """Run the optimisation; return unit actions and the per-iteration trace."""


def randn(shape: tuple[int, ...], problem: Problem, generator: torch.Generator) -> Tensor:
    """Standard normal noise of ``shape`` on the problem's device, from the planner's generator."""
    return torch.randn(shape, generator=generator, device=problem.device, dtype=problem.start.dtype)
