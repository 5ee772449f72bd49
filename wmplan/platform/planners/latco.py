"""LatCo: collocation over latent states with Lagrange multipliers, in its first-order form.

Rybkin, Zhu, Nagabandi, Daniilidis, Mordatch, Levine. "Model-Based Reinforcement Learning via
Latent-Space Collocation", ICML 2021. For goal reaching the goal distance of the last state takes
the place of the learned reward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from wmplan.platform.options import require
from wmplan.platform.planners.base import Compiled, Optimized, Planner, PlannerOptions, Problem, model_step, planning_cost
from wmplan.platform.world_model import WorldModel


@dataclass(frozen=True, kw_only=True)
class LatCoOptions(PlannerOptions):
    """LatCo options; multiplier rule and thresholds are the paper's."""

    iterations: int = 500
    """Adam iterations (the first-order variant of LatCo's solver)."""
    lr: float = 0.05
    """Adam learning rate of states (state units) and actions (unit action space)."""
    multiplier_init: float = 1.0
    """Initial value of every Lagrange multiplier."""
    multiplier_lr: float = 0.1
    """Rate in lam <- lam + rate * lam * log10((viol + 0.1 thr) / thr)."""
    threshold: float = 1e-4
    """thr: the constraint violation that leaves a multiplier unchanged (up to the 0.1 thr offset)."""
    multiplier_max: float = 1e6
    """Upper clamp of the multipliers (keeps the exponential growth finite)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("lr", "multiplier_init", "multiplier_lr", "threshold", "multiplier_max"):
            require(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")


def latco_terms(model: WorldModel, start: Tensor, goal: Tensor, states: Tensor, u: Tensor, mid: Tensor, half: Tensor,
                lam_dyn: Tensor, lam_act: Tensor, bf16: bool, own_cost: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One LatCo iteration's objective on the uncounted ``model`` (module level, so that it compiles once per shape).

    Args:
        states: ``[B, H, D]`` the states ``s_1 .. s_H``.
        u: ``[B, H, A]`` unit actions, mapped to the model's by ``mid + half * u``.
        lam_dyn: ``[B, H]`` dynamics multipliers.
        lam_act: ``[B, H]`` action-bound multipliers.

    Returns:
        ``(loss [B], dynamics violation [B, H], action violation [B, H], residual F(s_{t-1}, a_{t-1}) - s_t [B, H, D])``.
    """
    inputs = torch.cat([start[:, None], states[:, :-1]], dim=1)
    diff = model_step(model, inputs, mid + half * u, bf16) - states
    dyn_viol = diff.pow(2).mean(-1)
    act_viol = torch.relu(u.abs() - 1.0).pow(2).mean(-1)
    goal_term = planning_cost(model if own_cost else None, states[:, -1], goal)
    loss = goal_term + (lam_dyn * dyn_viol).sum(-1) + (lam_act * act_viol).sum(-1)
    return loss, dyn_viol, act_viol, diff


class LatCo(Planner[LatCoOptions]):
    """Joint optimisation of states ``s_1..s_H`` and actions on

    ``cost(s_H, g) + sum_t lam_t mean_d (F(s_{t-1}, a_{t-1}) - s_t)^2 + sum_t mu_t mean_a relu(|u_t| - 1)^2``,

    with gradients flowing through the model's state input (no stop-gradient), and the
    multipliers ``lam`` (dynamics) and ``mu`` (action bounds) updated after every step by the rule
    ``lam <- lam + 0.1 lam log10((viol + 0.1 thr) / thr)``, where ``cost`` is the planning cost
    (:meth:`Problem.cost`: the model's own, else ``mean_d (s_H - g)^2``). States start on the straight line from
    start to goal and actions at zero, or on the rollout of the initial actions when given.
    """

    name = "latco"
    Options = LatCoOptions
    lifted = True

    def transitions(self, *, warm_start: bool = False) -> int | None:
        """Per iteration, one batched step of the H transitions, forward and backward; a warm start
        adds the H forward transitions of the initial guess's rollout."""
        h = self.options.horizon
        return 2 * h * self.options.iterations + (h if warm_start else 0)

    def _optimize(self, problem: Problem, generator: torch.Generator, init_u: Tensor | None) -> Optimized:
        o = self.options
        b, h, dev = problem.batch, problem.horizon, problem.device
        states = problem.initial_states(init_u).requires_grad_(True)
        u = (problem.zeros() if init_u is None else init_u.clone()).requires_grad_(True)
        lam_dyn = torch.full((b, h), o.multiplier_init, device=dev)
        lam_act = torch.full((b, h), o.multiplier_init, device=dev)
        opt = torch.optim.Adam([states, u], lr=o.lr)
        loss_trace = torch.empty(o.iterations, b, device=dev)
        dist_trace = torch.empty(o.iterations, b, device=dev)
        residual_trace = torch.empty(o.iterations, b, h, device=dev)
        terms = Compiled(latco_terms, device=dev) if problem.compile else latco_terms
        own_cost = problem.model_cost is not None
        for i in range(o.iterations):
            loss, dyn_viol, act_viol, diff = terms(problem.model.inner, problem.start, problem.goal, states, u, problem.mid, problem.half,
                                                   lam_dyn, lam_act, problem.model.bf16, own_cost)
            problem.model.count(forward=b * h, backward=b * h)  # the step of all H transitions, forward and backward
            problem.set_grads(loss, [states, u])
            opt.step()
            with torch.no_grad():
                for lam, viol in ((lam_dyn, dyn_viol), (lam_act, act_viol)):
                    ratio = (viol.detach() + 0.1 * o.threshold) / o.threshold
                    lam.add_(o.multiplier_lr * lam * torch.log10(ratio)).clamp_(1e-6, o.multiplier_max)
                    lam.nan_to_num_(nan=o.multiplier_init)
            loss_trace[i] = loss.detach()
            dist_trace[i] = problem.goal_distance(states[:, -1])
            residual_trace[i] = diff.detach().norm(dim=-1)
            problem.snapshot(i + 1, u)
        virtual = torch.cat([problem.start[:, None], states.detach()], dim=1)
        return Optimized(u=u.detach(), loss=loss_trace, goal_distance=dist_trace, residual=residual_trace, virtual_states=virtual)
