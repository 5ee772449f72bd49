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

Speed options (:class:`PlannerOptions`): ``compile`` runs each iteration's model work through
:func:`torch.compile` with fixed shapes (GD, GRASP and LatCo compile the whole iteration's loss,
forward and backward, as one graph, replayed as a CUDA graph on a GPU; every other model call
compiles the model's step); ``precision='bfloat16'`` evaluates the world model under bf16
autocast. Nothing inside a planner's iteration loop waits for the device: failures are kept as a
device mask, and snapshot times are CUDA events read after the loop.

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
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

import torch
from torch import Tensor

from wmplan.platform.options import require
from wmplan.platform.world_model import CostModel, WorldModel, check_world_model, rollout

__all__ = [
    "PlannerOptions", "PlanTrace", "PlanResult", "Planner", "Problem", "Optimized", "CountedModel", "rollout",
    "terminal_cost", "randn", "model_step", "planning_cost", "shooting_terms", "Compiled",
]

Precision = Literal["float32", "bfloat16"]
"""The precision a planner evaluates the world model in."""


@dataclass(frozen=True, kw_only=True)
class PlannerOptions:
    """Options every planner takes."""

    horizon: int = 10
    """Planning horizon H, in model steps (one model step may pack several environment steps)."""
    iterations: int = 100
    """Number of optimisation iterations (a fixed budget: no early stopping)."""
    compile: bool = False
    """Run each iteration's model work through torch.compile, fixed shapes, one graph (mode
    'reduce-overhead', i.e. CUDA graphs, on a GPU; 'default' elsewhere). GD, GRASP and LatCo compile
    the iteration's whole loss, forward and backward; other model calls compile the model's step.
    The first call per shape compiles (seconds to minutes); a model whose step does not compile to
    one graph stops the plan with an error naming this option. Plans match the default path up to
    float rounding."""
    precision: Precision = "float32"
    """'bfloat16': evaluate the world model under bf16 autocast during the search (its matmuls in
    bf16, its outputs returned in float32), for large latents; the planner's variables, its costs
    and the reported rollout stay float32."""

    def __post_init__(self) -> None:
        require(self.horizon >= 1, f"horizon must be >= 1, got {self.horizon}")
        require(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}")
        require(isinstance(self.compile, bool), f"compile must be True or False, got {self.compile!r}")
        require(self.precision in ("float32", "bfloat16"), f"precision must be 'float32' or 'bfloat16', got {self.precision!r}")


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


def model_step(model: WorldModel, state: Tensor, action: Tensor, bf16: bool = False) -> Tensor:
    """``model.step(state, action)``; with ``bf16``, under bf16 autocast, the output returned in the state's dtype."""
    if not bf16:
        return model.step(state, action)
    with torch.autocast(state.device.type, dtype=torch.bfloat16):
        out = model.step(state, action)
    return out.to(state.dtype)


def planning_cost(model: WorldModel | None, states: Tensor, goal: Tensor) -> Tensor:
    """The planning cost of ``states [B, ..., D]`` for ``goal`` (broadcastable to them): ``model.cost(states,
    goal expanded)`` for a model given here (one with its own cost), else :func:`terminal_cost`; ``[B, ...]``.

    Raises:
        ValueError: the model's cost does not return one value per state.
    """
    if model is None:
        return terminal_cost(states, goal)
    value = cast(CostModel, model).cost(states, goal.expand_as(states))
    if not isinstance(value, Tensor) or tuple(value.shape) != tuple(states.shape[:-1]):
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{type(model).__name__}.cost must return one value per state, shape {tuple(states.shape[:-1])}, got {got}")
    return value


@functools.cache
def _compile(fn: Callable[..., Any], mode: str) -> Callable[..., Any]:
    # One compiled wrapper per function and mode: torch's compile cache is keyed on the function, so
    # a new plan() call with the same shapes and model reuses the compiled graphs.
    return torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)


class Compiled:
    """``fn`` through :func:`torch.compile` (one graph, fixed shapes), for one :meth:`Planner.plan` call.

    ``fn`` must be a module-level function whose arguments are tensors, the (uncounted) model and
    plain values, so that compiled graphs are reused across calls. With ``graphs`` on a CUDA device
    the mode is 'reduce-overhead' (the graph is replayed as a CUDA graph; each call starts a new
    step, so outputs of the previous call must be consumed by then), else 'default'. The first call
    compiles; if that fails, a RuntimeError names the planner option ``compile``.
    """

    def __init__(self, fn: Callable[..., Any], *, device: torch.device, graphs: bool = True) -> None:
        self.cuda_graphs = graphs and device.type == "cuda"
        self.fn = _compile(fn, "reduce-overhead" if self.cuda_graphs else "default")
        self.name = fn.__name__
        self.checked = False

    def __call__(self, *args: Any) -> Any:
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        if self.checked:
            return self.fn(*args)
        try:
            out = self.fn(*args)
        except Exception as exc:
            model = next((type(a).__name__ for a in args if hasattr(a, "step")), "the model")
            raise RuntimeError(
                f"planner option compile=True: torch.compile could not compile {self.name} with {model} "
                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
                "plan with compile=False, or make the model's step compile to one graph "
                "(no Python branching on tensor values, no calls torch cannot trace)"
            ) from exc
        self.checked = True
        return out


class CountedModel:
    """A world model that counts the transitions evaluated through it, for ``batch`` problems.

    Every :meth:`step` of ``state [..., D]`` adds ``prod(...)`` forward transitions; when its
    output takes part in autograd, a tensor hook adds the same number of backward transitions
    each time a gradient flows back through it. Everything else (``action_low``, ``cost``,
    ``encode``, ...) is the wrapped model's.

    Work evaluated past :meth:`step` (a planner's compiled iteration calls the inner model
    directly) is added with :meth:`count`.

    Args:
        model: the world model to count.
        batch: ``B``, the problems that share the calls (the counts per problem divide by it).
        bf16: evaluate the model under bf16 autocast (:func:`model_step`).
        compiled: device to compile the model's step for (:class:`Compiled`, without CUDA graphs);
            None evaluates it eagerly.
    """

    def __init__(self, model: WorldModel, *, batch: int, bf16: bool = False, compiled: torch.device | None = None) -> None:
        self.inner = model
        """The wrapped model."""
        self.bf16 = bf16
        """Whether the model is evaluated under bf16 autocast."""
        self._step: Callable[..., Tensor] = model_step if compiled is None else Compiled(model_step, device=compiled, graphs=False)
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
        out = self._step(self.inner, state, action, self.bf16)
        n = torch.broadcast_shapes(state.shape[:-1], action.shape[:-1]).numel()
        self.forward_total += n
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(functools.partial(self._backward, n))
        return out

    def count(self, *, forward: int, backward: int) -> None:
        """Add transitions over all problems that were evaluated past :meth:`step`."""
        self.forward_total += forward
        self.backward_total += backward

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
        bf16: evaluate the model under bf16 autocast (the option ``precision='bfloat16'``).
        compile: compile the model's work (the option ``compile``): :meth:`shooting` as one graph,
            every other model call's step.
    """

    def __init__(self, model: WorldModel, start: Tensor, goal: Tensor, horizon: int, *, clock_start: float | None = None,
                 bf16: bool = False, compile: bool = False) -> None:
        self.batch, self.state_dim = start.shape
        self.compile = compile
        """Whether the planner's model work is compiled (planners compile their own iteration with :class:`Compiled`)."""
        self.model = CountedModel(model, batch=self.batch, bf16=bf16, compiled=start.device if compile else None)
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
        # On CUDA a snapshot's time is an event on the stream, read after the loop (no host sync inside it).
        self._clock_events: dict[int, torch.cuda.Event] = {}
        self._clock_zero: tuple[float, torch.cuda.Event] | None = None
        if start.device.type == "cuda":
            zero = torch.cuda.Event(enable_timing=True)
            zero.record()
            self._clock_zero = (time.perf_counter() - self.clock_start, zero)
        self._shooting = Compiled(shooting_terms, device=start.device) if compile else shooting_terms

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

    @property
    def cost_model(self) -> WorldModel | None:
        """The (uncounted) model when it has its own planning cost, else None: the first argument of :func:`planning_cost`."""
        return None if self.model_cost is None else self.model.inner

    def cost(self, states: Tensor, goal: Tensor) -> Tensor:
        """The planning cost of ``states [B, ..., D]`` for ``goal`` (``[B, ..., D]``, or broadcastable to it).

        The model's ``cost(final_states, goal_states)`` when it has one (called with the goal
        expanded to the shape of ``states``), else :func:`terminal_cost`. Returns ``[B, ...]``,
        differentiable with respect to ``states``.

        Raises:
            ValueError: the model's cost does not return one value per state.
        """
        return planning_cost(self.cost_model, states, goal)

    def final_states(self, u: Tensor) -> Tensor:
        """The model's final states ``[B, ..., D]`` after rolling out unit actions ``u [B, ..., H, A]`` from the starts."""
        extra = u.ndim - 3
        s = self.start.view(self.batch, *([1] * extra), self.state_dim).expand(*u.shape[:-2], self.state_dim)
        actions = self.to_action(u)
        for t in range(actions.shape[-2]):  # only the last state is kept: no stack, no zero gradients flowing back into it
            s = self.model.step(s, actions[..., t, :])
        return s

    def shooting(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(cost [B], final states [B, D])`` of unit actions ``u [B, H, A]``, for a loss the caller
        backpropagates once (a GD step, a GRASP sync step): one graph under ``compile``.

        Counted as ``H`` forward and ``H`` backward transitions per problem at the call.
        """
        cost, final = self._shooting(self.model.inner, self.start, self.goal, u, self.mid, self.half, self.model.bf16,
                                     self.model_cost is not None)
        n = self.batch * u.shape[-2]
        self.model.count(forward=n, backward=n)
        return cost, final

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
            if self._clock_zero is not None:
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                self._clock_events[iteration] = event
            else:
                self.snapshot_seconds[iteration] = time.perf_counter() - self.clock_start
            self.snapshot_transitions[iteration] = self.transitions

    def read_clock(self, limit: float) -> None:
        """After the loop, with the device synchronised: turn the snapshots' CUDA events into seconds (at most ``limit``)."""
        if self._clock_zero is None:
            return
        offset, zero = self._clock_zero
        for iteration, event in self._clock_events.items():
            self.snapshot_seconds[iteration] = min(offset + zero.elapsed_time(event) / 1000.0, limit)

    def record_failures(self, loss: Tensor) -> None:
        """Mark the problems whose per-problem ``loss [B]`` is not finite as failed (no host sync)."""
        self.failed |= ~torch.isfinite(loss)

    def set_grads(self, loss: Tensor, params: list[Tensor]) -> None:
        """Backpropagate ``loss [B]`` into ``params`` (each ``[B, ...]``), zeroing failed problems' gradients.

        Uses ``torch.autograd.grad`` so that nothing accumulates in the model's own parameters. The
        failures stay a device mask (no host sync).
        """
        self.record_failures(loss.detach())
        ok = ~self.failed
        grads = torch.autograd.grad(torch.where(ok, loss, 0.0).sum(), params, allow_unused=True)
        for p, g in zip(params, grads):
            if g is None:
                g = torch.zeros_like(p)
            mask = ok.view(-1, *([1] * (p.ndim - 1)))
            p.grad = torch.where(mask, g, 0.0)


def shooting_terms(model: WorldModel, start: Tensor, goal: Tensor, u: Tensor, mid: Tensor, half: Tensor, bf16: bool,
                   own_cost: bool) -> tuple[Tensor, Tensor]:
    """``(cost [B], final [B, D])`` of rolling unit actions ``u [B, H, A]`` out of ``model`` (uncounted) from
    ``start`` for ``goal`` (:meth:`Problem.shooting`; a module-level function, so that it compiles once per shape)."""
    actions = mid + half * u
    s = start
    for t in range(actions.shape[-2]):
        s = model_step(model, s, actions[..., t, :], bf16)
    return planning_cost(model if own_cost else None, s, goal), s


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
        problem = Problem(model, start, goal, h, clock_start=t0, bf16=self.options.precision == "bfloat16", compile=self.options.compile)
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
        problem.read_clock(wall)

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
