"""An ensemble of bootstrapped state models that gradient planners cannot fool as easily as one MLP.

A single state MLP draws a thin leaky band where the data have a discontinuity (Wall's wall) and
extrapolates freely at the corners of the action box the data never visited; a gradient planner
is an adversarial search for both. The usual remedies, after PETS (Chua et al. 2018,
arXiv:1805.12114), MBPO (Janner et al. 2019, arXiv:1906.08253) and MOPO (Yu et al. 2020,
arXiv:2005.13239), are here:

- ``N`` members, each a residual MLP in the same normalised state space as
  :class:`~wmplan.platform.models.state_model.StateWorldModel`, trained on its own bootstrap
  resample of the training windows from its own initialisation (:func:`train_ensemble_model`);
- planning on the mean of the *planning members* (all but the judge), optionally with a
  disagreement penalty in the cost (:meth:`EnsembleWorldModel.planning_model`): the planning state
  carries one extra coordinate that accumulates the members' disagreement along the rollout, and
  the cost adds ``disagreement_weight`` times it, which works with every planner (shooting and
  lifted alike: a lifted planner's dynamics residual keeps the coordinate honest);
- or, with ``planning='worst'``, every planning member rolling out its own trajectory (PETS's
  "TS-inf" particles) and the cost of the worst of them (:class:`WorstMember`): a plan is cheap only
  where every planning member agrees it reaches the goal, so a leak one member draws does not pay;
- in-model success judged on a member that planning did not use (:meth:`EnsembleWorldModel.judge_rollout`,
  which :func:`wmplan.platform.episode.run_episodes` calls when a model has it): a plan that only
  fools the planning members does not fool the judge;
- actions kept within the data's support: the ensemble's action bounds are by default the
  training data's per-dimension 0.5 / 99.5 percentiles (``TrainConfig.action_bounds``), stored in
  its config and metrics.

The checkpoint kind is ``state_ensemble``; :func:`load_ensemble` is a plug-in factory
(``--model wmplan.platform.models.ensemble:load_ensemble --model-options '{checkpoint: DIR,
disagreement_weight: 2}'``) to plan with another weight or without the judge, without retraining.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
from torch import Tensor, nn

from wmplan.platform.errors import ConfigError
from wmplan.platform.models.checkpoint import load_world_model, register_model_kind
from wmplan.platform.models.mlp import ACTIVATIONS, register_normalization
from wmplan.platform.models.state_model import StateModelConfig, StateWorldModel
from wmplan.platform.models.training import (
    TrainConfig,
    descend,
    initial_bounds_record,
    normalization_stats,
    one_step_mse,
    state_model_config,
    transition_windows,
)
from wmplan.platform.options import require
from wmplan.platform.threads import torch_threads
from wmplan.platform.world_model import WorldModel

if TYPE_CHECKING:
    from wmplan.platform.data import Dataset

__all__ = [
    "DEFAULT_DISAGREEMENT_WEIGHT", "EnsembleModelConfig", "EnsembleWorldModel", "EnsembleTrainConfig",
    "DisagreementPenalty", "WorstMember", "ENSEMBLE_PLANNING", "train_ensemble_model", "load_ensemble", "member_seed",
]

ENSEMBLE_PLANNING = ("mean", "worst")
"""How planners search an ensemble: ``mean``, the planning members' mean (with the disagreement
penalty); ``worst``, each planning member's own rollout, costed by the worst member."""

DEFAULT_DISAGREEMENT_WEIGHT = 1.0
"""The default weight of the disagreement penalty (cost units: squared normalised state units per unit
of summed member variance, itself in squared normalised state units)."""


def member_seed(seed: int, member: int, stream: int = 0) -> int:
    """The seed of ``member``'s initialisation (``stream`` 0) or bootstrap resample and batch order (1),
    derived from the ensemble's ``seed``: every member has its own."""
    return int(np.random.SeedSequence([int(seed) & ((1 << 63) - 1), member, stream]).generate_state(1, dtype=np.uint32)[0])


@dataclass(frozen=True, kw_only=True)
class EnsembleModelConfig(StateModelConfig):
    """Architecture of an :class:`EnsembleWorldModel`: a state model's, and the ensemble's."""

    members: int = 5
    """``N``: bootstrapped members in all (>= 2), the judge included."""
    judge: bool = True
    """Hold the last member out of planning: it judges in-model success on plans the others made."""
    disagreement_weight: float = DEFAULT_DISAGREEMENT_WEIGHT
    """Weight of the disagreement penalty in the planning cost (0: plan on the mean alone). The
    penalty is the planning members' variance about their mean (summed over state coordinates,
    normalised units) accumulated over the rollout's steps."""
    planning: str = "mean"
    """How planners search the ensemble (:data:`ENSEMBLE_PLANNING`): ``mean`` (the planning members'
    mean, with the disagreement penalty) or ``worst`` (every planning member rolls out its own
    trajectory and the cost is the worst member's; the disagreement weight is then unused)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.members >= 2, f"members must be >= 2 (one model is the state_mlp kind), got {self.members}")
        require(not self.env_step, "env_step is for one state model (kind state_mlp); an ensemble's members predict whole model steps")
        require(math.isfinite(self.disagreement_weight) and self.disagreement_weight >= 0,
                f"disagreement_weight must be finite and >= 0, got {self.disagreement_weight}")
        if self.planning not in ENSEMBLE_PLANNING:
            raise ConfigError(f"unknown ensemble planning {self.planning!r}; valid: {', '.join(ENSEMBLE_PLANNING)}")

    @property
    def planning_members(self) -> int:
        """Members whose mean planning uses: all but the judge."""
        return self.members - int(self.judge)


class MemberStack(nn.Module):
    """``N`` MLPs of one shape evaluated together: layer ``l`` has weights ``[N, in, out]`` and biases ``[N, out]``.

    Args:
        members: ``N``.
        width_in, width_out: input and output widths.
        hidden, depth: width and number of the hidden layers.
        activation: their activation (:data:`~wmplan.platform.models.mlp.ACTIVATIONS`).
        seeds: one initialisation seed per member (None: torch's global generator). Hidden layers
            are uniform with the variance of PyTorch's default; the last layer starts at zero, so an
            untrained member predicts "nothing moves" as :class:`StateWorldModel` does.
    """

    def __init__(self, members: int, width_in: int, width_out: int, *, hidden: int, depth: int,
                 seeds: Sequence[int] | None = None, activation: str = "silu") -> None:
        super().__init__()
        self.activation = ACTIVATIONS[activation]()
        widths = [width_in] + [hidden] * depth + [width_out]
        self.weights = nn.ParameterList([nn.Parameter(torch.zeros(members, i, o)) for i, o in zip(widths[:-1], widths[1:])])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(members, o)) for o in widths[1:]])
        with torch.no_grad():
            for m in range(members):
                g = torch.Generator().manual_seed(seeds[m]) if seeds is not None else None
                for w in list(self.weights)[:-1]:
                    bound = math.sqrt(3.0 / w.shape[1])
                    w[m].copy_(torch.empty_like(w[m]).uniform_(-bound, bound, generator=g))

    def forward(self, x: Tensor, members: slice = slice(None)) -> Tensor:
        """``x [M, K, in]`` through members ``members`` (``M`` of them) to ``[M, K, out]``."""
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b[members].unsqueeze(1), x, w[members])
            if i < last:
                x = self.activation(x)
        return x


class EnsembleWorldModel(StateWorldModel):
    """``N`` bootstrapped residual MLPs over normalised env states; ``step`` is the planning members' mean.

    Shares :class:`StateWorldModel`'s normalised space (``encode``, ``decode``, ``set_normalization``,
    ``coordinatewise_state``), so everything that reads a state model reads this one (evaluation,
    :func:`~wmplan.platform.costs.success_cost_model`). Members ``0 .. P-1`` plan (``P =
    config.planning_members``); with ``config.judge`` the last member is held out and judges
    (:meth:`judge_rollout`).

    Args:
        config: the architecture.
        seed: the ensemble's seed; member ``m`` starts from :func:`member_seed` ``(seed, m)`` (None:
            torch's global generator).
    """

    config: EnsembleModelConfig

    def __init__(self, config: EnsembleModelConfig, *, seed: int | None = None) -> None:
        nn.Module.__init__(self)  # not StateWorldModel's: the members replace its one MLP
        self.config = config
        self.state_dim = config.state_dim
        self.action_dim = config.action_dim
        d, a = config.state_dim, config.action_dim
        register_normalization(self, state_dim=d, action_dim=a, bounds=config.action_bounds())
        seeds = None if seed is None else [member_seed(seed, m) for m in range(config.members)]
        self.members = MemberStack(config.members, d + a, d, hidden=config.hidden, depth=config.depth, seeds=seeds,
                                   activation=config.activation)

    def _inputs(self, z: Tensor, action: Tensor) -> Tensor:
        a = (action - self.action_mean) / self.action_std
        return torch.cat([z, a.to(z.dtype)], dim=-1)

    def predictions(self, z: Tensor, action: Tensor, members: slice) -> Tensor:
        """Next normalised states ``[M, ..., D]`` of members ``members`` from shared ``z [..., D]`` and
        packed actions ``[..., A]`` (env units; leading dimensions broadcast)."""
        lead = torch.broadcast_shapes(z.shape[:-1], action.shape[:-1])
        z, action = z.expand(*lead, self.state_dim), action.expand(*lead, self.action_dim)
        x = self._inputs(z, action).reshape(1, -1, self.state_dim + self.action_dim)
        m = len(range(self.config.members)[members])
        out = self.members(x.expand(m, -1, -1), members)
        return z.unsqueeze(0) + out.reshape(m, *lead, self.state_dim)

    def planning_predictions(self, z: Tensor, action: Tensor) -> Tensor:
        """:meth:`predictions` of the planning members: ``[P, ..., D]``."""
        return self.predictions(z, action, slice(0, self.config.planning_members))

    def step_each(self, z: Tensor, action: Tensor, members: slice = slice(None)) -> Tensor:
        """Each of members ``members`` (``M`` of them; all by default) from its own input: ``z [M, K, D]``,
        ``action [M, K, A]`` to ``[M, K, D]`` (training, and :class:`WorstMember`'s rollouts)."""
        return z + self.members(self._inputs(z, action), members)

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        """The planning members' mean next state: ``z [..., D]``, packed actions ``[..., A]`` to ``z' [..., D]``."""
        return self.planning_predictions(state, action).mean(0)

    def judge_step(self, state: Tensor, action: Tensor) -> Tensor:
        """The judge's next state (the planning mean when the config has no judge): ``[..., D]``."""
        if not self.config.judge:
            return self.step(state, action)
        n = self.config.members
        return self.predictions(state, action, slice(n - 1, n))[0]

    def judge_rollout(self, start: Tensor, actions: Tensor) -> Tensor:
        """The rollout that judges in-model success: ``start [..., D]`` and ``actions [..., n, A]`` to
        ``[..., n+1, D]`` (the start first) by the held-out member, which planning never used."""
        states = [start]
        for t in range(actions.shape[-2]):
            states.append(self.judge_step(states[-1], actions[..., t, :]))
        return torch.stack(states, dim=-2)

    def planning_model(self, *, coords: slice | None = None) -> WorldModel:
        """The model planners search: with ``planning='worst'`` a :class:`WorstMember` view (every
        planning member's own rollout, the worst member's cost over state coordinates ``coords``,
        None: all); else this one (the planning mean) when ``disagreement_weight`` is 0, or a
        :class:`DisagreementPenalty` view whose cost looks at ``coords`` plus the weighted
        accumulated disagreement."""
        if self.config.planning == "worst":
            return cast("WorldModel", WorstMember(self, coords=coords))
        if self.config.disagreement_weight == 0:
            return self
        # The view's action bounds are read-only properties (the ensemble's), which the protocol's plain attributes accept at run time.
        return cast("WorldModel", DisagreementPenalty(self, weight=self.config.disagreement_weight, coords=coords))

    def extra_repr(self) -> str:
        c = self.config
        return (f"{super().extra_repr()}, members={c.members}, judge={c.judge}, "
                f"disagreement_weight={c.disagreement_weight}, planning={c.planning!r}")


class _EnsembleView(nn.Module):
    """What every planning view of an ensemble shares: the ensemble (a submodule, so ``.to`` reaches
    it), its action bounds and config, and the cost's coordinates."""

    def __init__(self, ensemble: EnsembleWorldModel, *, coords: slice | None) -> None:
        super().__init__()
        self.inner = ensemble
        self.coords = coords if coords is not None else slice(None)
        self.env_dim = ensemble.state_dim
        self.action_dim = ensemble.action_dim
        self.config = ensemble.config

    @property
    def action_low(self) -> Tensor:
        return self.inner.action_low

    @property
    def action_high(self) -> Tensor:
        return self.inner.action_high


class DisagreementPenalty(_EnsembleView):
    """The planning view of an ensemble: its state ``[z (D), u]`` carries the disagreement ``u``
    accumulated along the rollout, and its cost adds ``weight * u``.

    ``step([z, u], a) = [mean_p z'_p, u + sum_d var_p z'_{p,d}]`` over the planning members ``p``;
    ``cost(final, goal) = mean over coords of (z - z_goal)^2 + weight * u``; ``encode`` maps env
    states to ``[z, 0]`` and ``decode`` drops ``u``; ``judge_rollout`` rolls the held-out member out
    and keeps ``u`` of the start. Action bounds and the rest are the ensemble's.

    Args:
        ensemble: the ensemble (a submodule, so ``.to`` reaches it).
        weight: the penalty's weight (>= 0).
        coords: the state coordinates the cost compares with the goal (None: all ``D``).
    """

    def __init__(self, ensemble: EnsembleWorldModel, *, weight: float, coords: slice | None = None) -> None:
        require(math.isfinite(weight) and weight >= 0, f"weight must be finite and >= 0, got {weight}")
        super().__init__(ensemble, coords=coords)
        self.weight = float(weight)
        self.state_dim = ensemble.state_dim + 1

    def encode(self, env_state: Any) -> Tensor:
        """Env states ``[..., D]`` to planning states ``[..., D+1]`` (no disagreement yet)."""
        z = self.inner.encode(env_state)
        return torch.cat([z, torch.zeros_like(z[..., :1])], dim=-1)

    def decode(self, state: Tensor) -> Tensor:
        """Planning states ``[..., D+1]`` to env states ``[..., D]``."""
        return self.inner.decode(state[..., : self.env_dim])

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        """``[..., D+1]``, ``[..., A]`` to ``[..., D+1]``: the planning mean and the accumulated disagreement."""
        preds = self.inner.planning_predictions(state[..., : self.env_dim], action)
        mean = preds.mean(0)
        spread = (preds - mean).pow(2).sum(-1).mean(0)
        return torch.cat([mean, state[..., self.env_dim :] + spread.unsqueeze(-1)], dim=-1)

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        return self.step(state, action)

    def cost(self, final_states: Tensor, goal_states: Tensor) -> Tensor:
        """``[..., D+1]``, ``[..., D+1]`` to ``[...]``: the MSE to the goal over ``coords`` plus ``weight * u``."""
        d = self.env_dim
        miss = (final_states[..., :d][..., self.coords] - goal_states[..., :d][..., self.coords]).pow(2).mean(-1)
        return miss + self.weight * final_states[..., d]

    def judge_rollout(self, start: Tensor, actions: Tensor) -> Tensor:
        """:meth:`EnsembleWorldModel.judge_rollout` from ``start [..., D+1]``: ``[..., n+1, D+1]``."""
        states = self.inner.judge_rollout(start[..., : self.env_dim], actions)
        u = start[..., None, self.env_dim :].expand(*states.shape[:-1], 1)
        return torch.cat([states, u], dim=-1)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, coords={self.coords}"


class WorstMember(_EnsembleView):
    """The pessimistic planning view of an ensemble: its state ``[z_1, ..., z_P]`` (``P x D``) holds
    every planning member's own rollout from the same start, and its cost is the worst member's.

    ``step`` advances member ``p`` from its own ``z_p`` (PETS's "TS-inf" particles, one per member);
    ``cost(final, goal) = max_p mean over coords of (z_p - z_goal)^2``; ``encode`` repeats the start
    for every member; ``decode`` reads the members' mean; ``judge_rollout`` rolls the held-out member
    out from the start and repeats it, so ``decode`` of it is the judge's state. A plan is cheap only
    where every planning member agrees that it reaches the goal.

    Args:
        ensemble: the ensemble (a submodule, so ``.to`` reaches it).
        coords: the state coordinates the cost compares with the goal (None: all ``D``).
    """

    def __init__(self, ensemble: EnsembleWorldModel, *, coords: slice | None = None) -> None:
        super().__init__(ensemble, coords=coords)
        self.planning_members = ensemble.config.planning_members
        self.state_dim = self.planning_members * ensemble.state_dim

    def _split(self, state: Tensor) -> Tensor:
        """``[..., P*D]`` to ``[..., P, D]``."""
        return state.reshape(*state.shape[:-1], self.planning_members, self.env_dim)

    def encode(self, env_state: Any) -> Tensor:
        """Env states ``[..., D]`` to planning states ``[..., P*D]`` (the start, once per member)."""
        z = self.inner.encode(env_state)
        return z.repeat(*([1] * (z.dim() - 1)), self.planning_members)

    def decode(self, state: Tensor) -> Tensor:
        """Planning states ``[..., P*D]`` to env states ``[..., D]``: the members' mean."""
        return self.inner.decode(self._split(state).mean(-2))

    def step(self, state: Tensor, action: Tensor) -> Tensor:
        """``[..., P*D]``, ``[..., A]`` to ``[..., P*D]``: member ``p`` from its own state."""
        p = self.planning_members
        z = self._split(state)  # [..., P, D]
        lead = torch.broadcast_shapes(z.shape[:-2], action.shape[:-1])
        z = z.expand(*lead, p, self.env_dim).movedim(-2, 0).reshape(p, -1, self.env_dim)  # [P, K, D]
        a = action.expand(*lead, self.action_dim).reshape(1, -1, self.action_dim).expand(p, -1, -1)  # [P, K, A]
        nxt = self.inner.step_each(z, a, slice(0, p))  # [P, K, D]
        return nxt.reshape(p, *lead, self.env_dim).movedim(0, -2).reshape(*lead, self.state_dim)

    def forward(self, state: Tensor, action: Tensor) -> Tensor:
        return self.step(state, action)

    def cost(self, final_states: Tensor, goal_states: Tensor) -> Tensor:
        """``[..., P*D]``, ``[..., P*D]`` to ``[...]``: the largest member's MSE to the goal over ``coords``."""
        miss = (self._split(final_states)[..., self.coords] - self._split(goal_states)[..., self.coords]).pow(2).mean(-1)
        return miss.amax(-1)

    def judge_rollout(self, start: Tensor, actions: Tensor) -> Tensor:
        """The held-out member's rollout from ``start [..., P*D]`` (its first member's state), repeated
        for every member: ``[..., n+1, P*D]``."""
        states = self.inner.judge_rollout(self._split(start)[..., 0, :], actions)
        return states.repeat(*([1] * (states.dim() - 1)), self.planning_members)

    def extra_repr(self) -> str:
        return f"members={self.planning_members}, coords={self.coords}"


register_model_kind("state_ensemble", EnsembleWorldModel, EnsembleModelConfig)


# -- training ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EnsembleTrainConfig(TrainConfig):
    """How to train an :class:`EnsembleWorldModel`: a state model's options, applied to every member."""

    members: int = 5
    """``N``: bootstrapped members in all (>= 2), the judge included."""
    judge: bool = True
    """Hold the last member out of planning to judge in-model success."""
    disagreement_weight: float = DEFAULT_DISAGREEMENT_WEIGHT
    """Weight of the disagreement penalty in the planning cost (0: plan on the mean alone)."""
    action_bounds: Literal["env", "data"] = "data"
    """The action bounds planners search within: ``data`` (default), the training data's support
    (``action_percentile`` percentiles per packed dimension), or ``env``, the task's bounds."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.members >= 2, f"members must be >= 2 (one model: TrainConfig), got {self.members}")
        require(not self.env_step, "env_step is for one state model; an ensemble's members predict whole model steps")
        require(math.isfinite(self.disagreement_weight) and self.disagreement_weight >= 0,
                f"disagreement_weight must be finite and >= 0, got {self.disagreement_weight}")


def train_ensemble_model(
    dataset: Dataset,
    config: EnsembleTrainConfig | None = None,
    *,
    progress: Callable[[int, int, float], None] | None = None,
    init: EnsembleWorldModel | None = None,
) -> tuple[EnsembleWorldModel, dict[str, Any]]:
    """Train an :class:`EnsembleWorldModel` on the train split of ``dataset``: every member at once.

    With ``init``, a copy of that ensemble is fine-tuned instead (its architecture, members, judge,
    disagreement weight, normalisation and action bounds; the config's architecture options are not
    used), every member on a fresh bootstrap resample of the windows; ``init`` is left untouched.

    Member ``m`` starts from its own seed (:func:`member_seed`) and learns from its own bootstrap
    resample of the training windows (``n`` windows drawn with replacement from the ``n``), with its
    own batch order; its loss and gradient clipping are exactly a single state model's
    (:func:`~wmplan.platform.models.training.train_state_model`), the normalisation is shared.

    Returns:
        The model (on ``config.device``, eval mode, parameters frozen) and metrics: those of a state
        model (``train_loss`` the members' mean, ``val_mse_before`` / ``val_mse_after`` of the
        planning mean, ``action_bounds``, ...), and ``members``, ``planning_members``, ``judge``,
        ``disagreement_weight``, ``val_mse_judge`` (the judge's one-step MSE) and
        ``val_disagreement`` (the planning members' mean one-step variance, summed over coordinates,
        on the val split: the penalty's scale where the data are).
    """
    config = config if config is not None else EnsembleTrainConfig()
    with torch_threads(config.threads):
        return _train_ensemble(dataset, config, progress=progress, init=init)


def _train_ensemble(dataset: Dataset, config: EnsembleTrainConfig, *, progress: Callable[[int, int, float], None] | None,
                    init: EnsembleWorldModel | None = None) -> tuple[EnsembleWorldModel, dict[str, Any]]:
    train, val = dataset.split("train"), dataset.split("val")
    f, k = dataset.frameskip, config.rollout_steps
    if not train:
        raise ConfigError(f"data set {str(dataset.path)!r} has no training trajectories")
    w_states, w_actions = transition_windows(train, f, k)
    if len(w_states) == 0:
        raise ConfigError(
            f"trajectories of {len(train[0].actions)} env steps are too short for rollout_steps={k} at frameskip {f} "
            f"(need at least {k * f}); lower rollout_steps or generate longer trajectories"
        )
    device = torch.device(config.device)
    if init is not None:
        model = copy.deepcopy(init).to(device).requires_grad_(True)
        model_config, bounds = model.config, initial_bounds_record(init)
    else:
        base, bounds = state_model_config(dataset, config, train)
        model_config = EnsembleModelConfig(**{fl.name: getattr(base, fl.name) for fl in dataclasses.fields(base)},
                                           members=config.members, judge=config.judge,
                                           disagreement_weight=config.disagreement_weight)
        model = EnsembleWorldModel(model_config, seed=config.seed)
        model.set_normalization(*normalization_stats(train, f))
        model.to(device)

    def tensor(x: np.ndarray) -> Tensor:
        return torch.as_tensor(x, dtype=torch.float32, device=device)

    z_all, a_all = model.encode(tensor(w_states)), tensor(w_actions)
    v_states, v_actions = transition_windows(val, f, 1) if val else (np.zeros((0, 2, 1)), np.zeros((0, 1, 1)))
    v_z, v_a = model.encode(tensor(v_states)), tensor(v_actions)
    val_before = one_step_mse(model, v_z, v_a) if len(v_states) else None

    n_members, n = model_config.members, len(z_all)
    batch = min(config.batch_size, n)
    gens = [torch.Generator().manual_seed(member_seed(config.seed, m, 1)) for m in range(n_members)]
    resample = torch.stack([torch.randint(n, (n,), generator=g) for g in gens])  # [N, n] each member's bootstrap

    def new_order() -> Tensor:
        return torch.stack([resample[m][torch.randperm(n, generator=g)] for m, g in enumerate(gens)])

    order, pos = new_order(), 0

    def batch_loss(step: int) -> Tensor:
        nonlocal order, pos
        if pos + batch > n:
            order, pos = new_order(), 0
        idx = order[:, pos : pos + batch].to(device)  # [N, batch]
        pos += batch
        z_true, a = z_all[idx], a_all[idx]  # [N, batch, k+1, D], [N, batch, k, A]
        z = z_true[:, :, 0]
        loss = torch.zeros(n_members, device=device)
        for j in range(k):
            z = model.step_each(z, a[:, :, j])
            loss = loss + (z - z_true[:, :, j + 1]).pow(2).mean((1, 2))
        return (loss / k).sum()  # each member's gradient is its own loss's

    params = list(model.members.parameters())

    def clip_each_member() -> None:
        if config.grad_clip <= 0:
            return
        norms = torch.zeros(n_members, device=device)
        for p in params:
            if p.grad is not None:
                norms += p.grad.pow(2).flatten(1).sum(1)
        scale = (config.grad_clip / (norms.sqrt() + 1e-6)).clamp(max=1.0)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale.view(-1, *([1] * (p.grad.ndim - 1))))

    model.train()
    first, tail, seconds = descend(
        params, batch_loss, steps=config.steps, lr=config.lr, weight_decay=config.weight_decay, grad_clip=config.grad_clip,
        schedule=config.lr_schedule, device=device, clip_grads=clip_each_member,
        progress=None if progress is None else lambda step, total, loss: progress(step, total, loss / n_members))
    model.eval()
    model.requires_grad_(False)

    metrics: dict[str, Any] = {
        "train_loss": None if tail is None else tail / n_members,
        "train_loss_first": None if first is None else first / n_members,
        "train_seconds": seconds,
        "transitions_per_s": config.steps * batch * k * n_members / seconds if seconds > 0 else math.inf,
        "train_windows": n,
        "epochs": config.steps * batch / n,
        "steps": config.steps,
        "rollout_steps": k,
        "val_mse_before": val_before,
        "val_mse_after": one_step_mse(model, v_z, v_a) if len(v_states) else None,
        "val_mse_judge": _judge_mse(model, v_z, v_a) if len(v_states) and model_config.judge else None,
        "val_disagreement": _mean_disagreement(model, v_z, v_a) if len(v_states) else None,
        "val_transitions": len(v_states),
        "action_bounds": bounds,
        "members": n_members,
        "planning_members": model_config.planning_members,
        "judge": model_config.judge,
        "bootstrap": True,
        "disagreement_weight": model_config.disagreement_weight,
    }
    return model, metrics


def _judge_mse(model: EnsembleWorldModel, z: Tensor, a: Tensor, batch: int = 8192) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for lo in range(0, len(z), batch):
            pred = model.judge_step(z[lo : lo + batch, 0], a[lo : lo + batch, 0])
            total += (pred - z[lo : lo + batch, 1]).pow(2).sum().item()
            count += pred.numel()
    return total / count


def _mean_disagreement(model: EnsembleWorldModel, z: Tensor, a: Tensor, batch: int = 8192) -> float:
    total = 0.0
    with torch.no_grad():
        for lo in range(0, len(z), batch):
            preds = model.planning_predictions(z[lo : lo + batch, 0], a[lo : lo + batch, 0])
            total += (preds - preds.mean(0)).pow(2).sum(-1).mean(0).sum().item()
    return total / len(z)


def load_ensemble(*, checkpoint: str, device: str | torch.device = "cpu", disagreement_weight: float | None = None,
                  judge: bool | None = None, planning: str | None = None) -> EnsembleWorldModel:
    """A plug-in model factory: the ensemble checkpoint at ``checkpoint``, planned with another
    ``disagreement_weight``, ``judge`` and/or ``planning`` (``mean`` or ``worst``) than it was
    trained with (None: its own).

    Use it as ``--model wmplan.platform.models.ensemble:load_ensemble --model-options
    '{checkpoint: DIR, disagreement_weight: 2.0}'``; the options are recorded with the run.

    Raises:
        ConfigError: the checkpoint is not an ensemble.
    """
    model = load_world_model(checkpoint, device=device)
    if not isinstance(model, EnsembleWorldModel):
        raise ConfigError(f"checkpoint {str(checkpoint)!r} is a {type(model).__name__}, not an ensemble (state_ensemble)")
    changes: dict[str, Any] = {}
    if disagreement_weight is not None:
        changes["disagreement_weight"] = float(disagreement_weight)
    if judge is not None:
        changes["judge"] = bool(judge)
    if planning is not None:
        changes["planning"] = str(planning)
    if changes:
        try:
            model.config = dataclasses.replace(model.config, **changes)
        except ConfigError as exc:
            raise ConfigError(f"load_ensemble: {exc}") from None
    return model
