"""GRASP: gradient-relaxed stochastic planning with virtual states.

Psenka, Rabbat, Krishnapriyan, LeCun, Bar. "Parallel Stochastic Gradient-Based Planning for World
Models", 2026 (arXiv:2602.00475). Defaults follow the first author's evaluation config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from wmplan.platform.options import require
from wmplan.platform.planners.base import (
    Compiled,
    Optimized,
    Planner,
    PlannerOptions,
    Problem,
    model_step,
    planning_cost,
    randn,
    rollout,
    terminal_cost,
)
from wmplan.platform.planners.sampling import SamplingSchedule, refine_by_sampling
from wmplan.platform.world_model import WorldModel


@dataclass(frozen=True, kw_only=True)
class GRASPOptions(PlannerOptions):
    """GRASP options; defaults are the author's evaluation config (grasp.yaml)."""

    iterations: int = 750
    """Main optimisation iterations."""
    state_lr: float = 0.1
    """Adam learning rate of the virtual states (state units)."""
    action_lr: float = 0.005
    """Adam learning rate of the actions (unit action space)."""
    goal_weight: float = 1.0
    """gamma: weight of the goal term sum_t cost(F(sg(s_t), a_t), g) (cost: the model's own, else mean_d (. - g)^2)."""
    noise_scale: float = 0.005
    """sigma: standard deviation of the Gaussian noise added to the virtual states after each step."""
    noise_decay: bool = False
    """Decay the state noise linearly to zero within each sync phase (whole run if sync is off)."""
    sync_interval: int = 50
    """Run a sync phase after every this many iterations; 0 disables sync."""
    sync_steps: int = 10
    """Steps of each sync phase."""
    sync_lr: float = 0.05
    """Learning rate of the sync phase's fresh Adam (sync_mode 'gd')."""
    sync_mode: Literal["gd", "cem"] = "gd"
    """'gd': gradient steps on the full-rollout terminal loss; 'cem': CEM iterations around the actions."""
    sync_samples: int = 64
    """Samples per CEM sync step (sync_mode 'cem')."""
    sync_elites: int = 8
    """Elites per CEM sync step (sync_mode 'cem')."""
    sync_std: float = 0.1
    """Sampling standard deviation of CEM sync, unit action space (sync_mode 'cem')."""
    stop_state_grad: bool = True
    """Stop gradients through the world model's state input (the paper's sg); off for the ablation."""
    init_state_noise: float = 0.0
    """Standard deviation of Gaussian noise added to the straight-line state initialisation."""
    end: Literal["last", "sync", "best"] = "last"
    """What the plan is: 'last': the last iterate, wherever the loop stops (the author's code);
    'sync': the last iterate after a final sync phase (none when the last iteration synced);
    'best': per problem, the actions of lowest full-rollout planning cost among the iterates right
    after each sync phase and the last iterate."""
    rollout_states: bool = False
    """After each sync phase, reset the virtual states s_1..s_{H-1} to the model's rollout of the synced actions."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("state_lr", "action_lr", "sync_lr"):
            require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("goal_weight", "noise_scale", "init_state_noise", "sync_std"):
            require(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        require(self.sync_interval >= 0, f"sync_interval must be >= 0 (0 disables), got {self.sync_interval}")
        require(self.sync_steps >= 1, f"sync_steps must be >= 1, got {self.sync_steps}")
        require(1 <= self.sync_elites <= self.sync_samples, f"sync_elites must be in [1, sync_samples], got {self.sync_elites}")


def lifted_loss(
    model: WorldModel,
    start: Tensor,
    goal: Tensor,
    states: Tensor,
    actions: Tensor,
    *,
    goal_weight: float,
    stop_state_grad: bool,
    cost: Callable[[Tensor, Tensor], Tensor] = terminal_cost,
) -> tuple[Tensor, Tensor, Tensor]:
    """GRASP's objective for ``B`` problems, with one batched model call over all ``B x H`` steps.

    Args:
        start: ``[B, D]`` fixed ``s_0``.
        goal: ``[B, D]`` goal ``g``, which also serves as ``s_H``.
        states: ``[B, H-1, D]`` virtual states ``s_1 .. s_{H-1}``.
        actions: ``[B, H, A]`` actions in model units.
        goal_weight: gamma.
        stop_state_grad: detach the states fed to the model (``sg(s_t)``).
        cost: the planning cost ``(states [B, H, D], goal [B, 1, D]) -> [B, H]`` of the goal term
            (a planner passes :meth:`Problem.cost`); the terminal MSE by default.

    Returns:
        ``(loss [B], residual [B, H], prediction [B, H, D])`` where ``loss = sum_{t<H-1} mean_d
        (F(s_t, a_t) - s_{t+1})^2 + cost(F(s_{H-1}, a_{H-1}), g) + gamma * sum_t cost(F(s_t, a_t), g)``
        (the last transition's target is the goal, so its residual is a goal cost: with the
        default cost, ``sum_t mean_d (F(s_t, a_t) - s_{t+1})^2`` with ``s_H = g``) and
        ``residual`` is the Euclidean norm of ``F(s_t, a_t) - s_{t+1}`` (detached).
    """
    return _lifted(model.step, start, goal, states, actions, goal_weight=goal_weight, stop_state_grad=stop_state_grad, cost=cost)


def _lifted(
    step: Callable[[Tensor, Tensor], Tensor],
    start: Tensor,
    goal: Tensor,
    states: Tensor,
    actions: Tensor,
    *,
    goal_weight: float,
    stop_state_grad: bool,
    cost: Callable[[Tensor, Tensor], Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    inputs = torch.cat([start[:, None], states], dim=1)
    if stop_state_grad:
        inputs = inputs.detach()
    pred = step(inputs, actions)
    diff = pred - torch.cat([states, goal[:, None]], dim=1)
    to_goal = cost(pred, goal[:, None])  # [B, H]
    loss = diff[:, :-1].pow(2).mean(-1).sum(-1) + to_goal[:, -1] + goal_weight * to_goal.sum(-1)
    return loss, diff.detach().norm(dim=-1), pred.detach()


def lifted_terms(model: WorldModel, start: Tensor, goal: Tensor, states: Tensor, u: Tensor, mid: Tensor, half: Tensor,
                 goal_weight: float, stop_state_grad: bool, bf16: bool, own_cost: bool) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`lifted_loss` of unit actions ``u [B, H, A]`` (mapped by ``mid + half * u``) on the uncounted
    ``model``, evaluated as :class:`~wmplan.platform.planners.base.Problem` does (``bf16``, the model's own cost
    with ``own_cost``): a module-level function, so that GRASP's iteration compiles once per shape."""

    def step(state: Tensor, action: Tensor) -> Tensor:
        return model_step(model, state, action, bf16)

    def cost(states: Tensor, target: Tensor) -> Tensor:
        return planning_cost(model if own_cost else None, states, target)

    return _lifted(step, start, goal, states, mid + half * u, goal_weight=goal_weight, stop_state_grad=stop_state_grad, cost=cost)


def reset_adam(optimizer: torch.optim.Optimizer) -> None:
    """Forget an Adam optimizer's moments and step count in place: the same as a new one on the same
    parameters, without rebuilding it (its state tensors keep their memory)."""
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, Tensor):
                value.zero_()


class GRASP(Planner[GRASPOptions]):
    """GRASP: optimise virtual states and actions jointly on the lifted loss (:func:`lifted_loss`).

    Each iteration evaluates every transition in one batched model call, takes an Adam step (one
    parameter group for states, one for actions), clips the actions to the bounds and adds
    Gaussian noise to the states. After every ``sync_interval``-th iteration, a sync phase
    improves the actions on the full-rollout terminal loss (and, with ``rollout_states``, the
    virtual states are reset to the rollout of the synced actions) and the main optimizer is
    rebuilt. The goal term and the sync phase use the planning cost (:meth:`Problem.cost`).
    (Rebuilt means reset in place: moments and step counts start again from zero.) Each iteration's
    lifted loss and each sync step's rollout are one compiled graph under the option ``compile``.
    ``end`` chooses what is returned: the last iterate, the last iterate after a final sync phase,
    or the best synced iterate by full-rollout cost. The snapshot of the last iteration is the
    returned plan; ``trace.synced`` marks the loop's sync phases only (not a final one).
    """

    name = "grasp"
    Options = GRASPOptions
    lifted = True
    stochastic_by_default = True

    def sync_phases(self) -> int:
        """Sync phases a :meth:`plan` call runs: one after every ``sync_interval``-th iteration,
        and a final one for ``end='sync'`` when the last iteration did not sync."""
        o = self.options
        in_loop = o.iterations // o.sync_interval if o.sync_interval > 0 else 0
        return in_loop + int(o.end == "sync" and not self._last_synced())

    def _last_synced(self) -> bool:
        o = self.options
        return o.sync_interval > 0 and o.iterations % o.sync_interval == 0

    def _compares_best(self) -> bool:
        """'best' with more than one candidate: the costs of the synced iterates are evaluated."""
        o = self.options
        in_loop = o.iterations // o.sync_interval if o.sync_interval > 0 else 0
        return o.end == "best" and in_loop + int(not self._last_synced()) > 1

    def iteration_period(self) -> int:
        """The sync interval (1 without sync): a run of a multiple of it ends on a sync."""
        return max(self.options.sync_interval, 1)

    def transitions(self, *, warm_start: bool = False) -> int | None:
        o = self.options
        h = o.horizon
        total = 2 * h * o.iterations  # lifted: one forward and one backward per step and iteration
        per_sync = o.sync_steps * (o.sync_samples * h if o.sync_mode == "cem" else 2 * h)
        total += per_sync * self.sync_phases()
        in_loop = o.iterations // o.sync_interval if o.sync_interval > 0 else 0
        best = self._compares_best()
        # After each sync phase: a full rollout for 'best' (which also serves rollout_states), else
        # the H-1 steps of s_1..s_{H-1} for rollout_states.
        after_sync = h if best else (h - 1 if o.rollout_states else 0)
        total += after_sync * in_loop
        if self.sync_phases() > in_loop and o.rollout_states:  # the final sync phase of end='sync'
            total += h - 1
        if best and not self._last_synced():
            total += h  # the last iterate's cost
        return total + (h if warm_start else 0)

    def _optimize(self, problem: Problem, generator: torch.Generator, init_u: Tensor | None) -> Optimized:
        o = self.options
        b, h, dev = problem.batch, problem.horizon, problem.device
        states = problem.initial_states(init_u)[:, :-1]
        if o.init_state_noise > 0:
            states = states + o.init_state_noise * randn(tuple(states.shape), problem, generator)
        states.requires_grad_(True)
        u = (problem.zeros() if init_u is None else init_u.clone()).requires_grad_(True)

        opt = torch.optim.Adam([{"params": [states], "lr": o.state_lr}, {"params": [u], "lr": o.action_lr}])
        sync_opt = torch.optim.Adam([u], lr=o.sync_lr)
        lifted = Compiled(lifted_terms, device=dev) if problem.compile else lifted_terms
        own_cost = problem.model_cost is not None
        iters = o.iterations
        loss_trace = torch.empty(iters, b, device=dev)
        dist_trace = torch.empty(iters, b, device=dev)
        residual_trace = torch.empty(iters, b, h, device=dev)
        synced = torch.zeros(iters, dtype=torch.bool)
        phase = o.sync_interval if o.sync_interval > 0 else iters
        best = self._compares_best()
        best_u = u.detach().clone()
        best_cost = torch.full((b,), torch.inf, device=dev, dtype=u.dtype)

        def after_sync() -> None:
            """Reset the states to the rollout of the synced actions and/or keep the best synced iterate."""
            if not (best or o.rollout_states):
                return
            with torch.no_grad():
                actions = problem.to_action(u)
                path = rollout(problem.model, problem.start, actions if best else actions[:, :-1])
                if o.rollout_states:
                    states.copy_(path[:, 1:h])
                if best:
                    keep_if_better(problem.cost(path[:, -1], problem.goal))

        def keep_if_better(cost: Tensor) -> None:
            cost = torch.where(torch.isfinite(cost), cost, torch.inf)
            better = cost < best_cost
            best_cost.copy_(torch.where(better, cost, best_cost))
            best_u.copy_(torch.where(better[:, None, None], u.detach(), best_u))

        for i in range(iters):
            loss, residual, pred = lifted(problem.model.inner, problem.start, problem.goal, states, u, problem.mid, problem.half,
                                          o.goal_weight, o.stop_state_grad, problem.model.bf16, own_cost)
            problem.model.count(forward=b * h, backward=b * h)  # one call over all B x H transitions, and its backward
            problem.set_grads(loss, [states, u])
            opt.step()
            with torch.no_grad():
                u.clamp_(-1.0, 1.0)
                sigma = o.noise_scale * (1.0 - (i % phase) / phase if o.noise_decay else 1.0)
                if sigma > 0:
                    states.add_(sigma * randn(tuple(states.shape), problem, generator))
            loss_trace[i] = loss.detach()
            dist_trace[i] = (pred[:, -1] - problem.goal).norm(dim=-1)
            residual_trace[i] = residual
            if o.sync_interval > 0 and (i + 1) % o.sync_interval == 0:
                self._sync(problem, u, generator, sync_opt)
                after_sync()
                reset_adam(opt)
                synced[i] = True
            problem.snapshot(i + 1, u)
        final = u.detach()
        if o.end == "sync" and not self._last_synced():
            self._sync(problem, u, generator, sync_opt)
            after_sync()
            final = u.detach()
        elif o.end == "best" and best:
            if not self._last_synced():
                with torch.no_grad():
                    keep_if_better(problem.shooting_cost(u))
            # A problem whose candidates all failed (+inf) keeps its last iterate.
            final = torch.where(torch.isfinite(best_cost)[:, None, None], best_u, u.detach())
        if o.end != "last":
            problem.snapshot(iters, final)
        virtual = torch.cat([problem.start[:, None], states.detach(), problem.goal[:, None]], dim=1)
        return Optimized(
            u=final, loss=loss_trace, goal_distance=dist_trace, residual=residual_trace, synced=synced,
            virtual_states=virtual,
        )

    def _sync(self, problem: Problem, u: Tensor, generator: torch.Generator, sync_opt: torch.optim.Optimizer) -> None:
        """Improve the actions ``u`` in place on the full-rollout terminal loss (``sync_opt``: the sync's Adam on ``u``, reset here)."""
        o = self.options
        if o.sync_mode == "cem":
            schedule = SamplingSchedule(samples=o.sync_samples, elites=o.sync_elites, iterations=o.sync_steps)
            refined = refine_by_sampling(problem, u.detach(), torch.full_like(u, o.sync_std), schedule, generator)
            with torch.no_grad():
                u.copy_(refined.mean)
            return
        reset_adam(sync_opt)  # a fresh Adam for every sync phase
        for _ in range(o.sync_steps):
            cost, _ = problem.shooting(u)  # one graph under the option compile
            problem.set_grads(cost, [u])
            sync_opt.step()
            with torch.no_grad():
                u.clamp_(-1.0, 1.0)
