"""Latent geometry: does distance in a model's latent space follow distance in the world?

A planner that minimises the latent distance to a goal can only find its way when that distance
grows with the true distance; a latent whose distance saturates beyond a few pixels of
displacement (raw pixels do, by about 6 px on Wall) gives cost landscapes with no direction.

:func:`measure_geometry` draws random valid state pairs of a task (seeded, from the task's own
``reset``), renders and encodes them as the episode runner does for an observation model, and
compares latent distances with true ones through :func:`geometry_from_latents`:

- the Spearman rank correlation with the Euclidean distance over the task's ``success_coords``;
- the same with the wall-aware (shortest-path) distance where the task has obstacles
  (:meth:`~wmplan.platform.envs.Env.path_distance`);
- the median latent distance in bins of true displacement, which shows saturation.

:func:`check_geometry` is the gate: a one-line warning when a rank correlation is below
:data:`GEOMETRY_THRESHOLD`. Pure numpy and torch; no task is named here (the Env knows its walls).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from wmplan.platform.envs import Env
from wmplan.platform.models.visual import proprio_inputs, render_states
from wmplan.platform.world_model import is_observation_model

__all__ = [
    "GEOMETRY_THRESHOLD", "SATURATION_FRACTION", "DEFAULT_PAIRS", "DEFAULT_BINS", "DisplacementBin", "LatentGeometry",
    "spearman", "sample_state_pairs", "sample_near_pairs", "geometry_from_latents", "state_geometry",
    "measure_geometry", "check_geometry",
]

GEOMETRY_THRESHOLD = 0.9
"""The rank correlation below which :func:`check_geometry` warns (issue #14: planners need a
latent whose distance orders pairs as the world does)."""
DEFAULT_PAIRS = 256
"""Random state pairs :func:`measure_geometry` compares by default (plus half as many near pairs)."""
DEFAULT_BINS = 7
"""Displacement bins of the curve by default: edges 0 and the largest displacement seen times
1/64, 1/32, ..., 1/2, 1 (Wall: about 0, 0.9, 1.9, 3.8, 7.5, 15, 30, 60 px)."""
SATURATION_FRACTION = 0.9
""":attr:`LatentGeometry.saturation`: where the binned median latent distance first reaches this
fraction of its largest value."""


@dataclass(frozen=True, kw_only=True)
class DisplacementBin:
    """The latent distances of the pairs whose true (Euclidean) displacement is in ``[low, high)``."""

    low: float
    """Lower edge of the bin, in state units over the task's ``success_coords`` (Wall: pixels)."""
    high: float
    """Upper edge (state units); the last bin includes it."""
    pairs: int
    """Pairs in the bin."""
    median_latent: float
    """Median latent distance of those pairs, in latent units (Euclidean norm of the latent
    difference); NaN for an empty bin."""
    relative: float
    """``median_latent`` over the median latent distance of all pairs (1 = a typical pair; a curve
    flat from the first bins on is a saturated latent); NaN when that median is 0 or the bin empty."""


@dataclass(frozen=True, kw_only=True)
class LatentGeometry:
    """How latent distance follows true distance over random state pairs of a task."""

    pairs: int
    """Random state pairs the rank correlations compare."""
    near_pairs: int = 0
    """Nearby pairs (a state and where the task's data policy takes it) that only enter ``bins``."""
    spearman_euclidean: float
    """Spearman rank correlation between latent distance and Euclidean distance over the task's
    ``success_coords`` (1: the latent orders pairs exactly as the world does); NaN when either
    distance is constant over the pairs (e.g. a constant encoder)."""
    spearman_path: float | None
    """The same against the shortest-path distance around the task's obstacles
    (:meth:`~wmplan.platform.envs.Env.path_distance`, over the pairs a path joins); None for a task
    without obstacles."""
    unreachable_pairs: int
    """Pairs no path joins (left out of ``spearman_path``)."""
    bins: tuple[DisplacementBin, ...]
    """Median latent distance against true displacement, in increasing bins."""
    saturation: float | None
    """Lower edge (state units) of the first bin whose median latent distance reaches
    :data:`SATURATION_FRACTION` of the largest bin median: a latent whose distance keeps growing
    gives about the largest displacement seen, a saturating one a small value. None when every
    latent distance is 0."""
    seed: int | None = None
    """Seed the pairs were drawn with (None: given by the caller)."""

    @property
    def correlation(self) -> float:
        """The gated number: the lowest of the available rank correlations (NaN if one is NaN)."""
        values = [self.spearman_euclidean] + ([self.spearman_path] if self.spearman_path is not None else [])
        return float("nan") if any(math.isnan(v) for v in values) else min(values)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (NaN becomes None), for metrics files and checkpoints."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatentGeometry:
        """Inverse of :meth:`as_dict` (None read back as NaN where a number is required)."""
        def num(x: Any) -> float:
            return float("nan") if x is None else float(x)

        return cls(
            pairs=int(data["pairs"]),
            near_pairs=int(data.get("near_pairs", 0)),
            spearman_euclidean=num(data["spearman_euclidean"]),
            spearman_path=None if data.get("spearman_path") is None else float(data["spearman_path"]),
            unreachable_pairs=int(data.get("unreachable_pairs", 0)),
            bins=tuple(DisplacementBin(low=float(b["low"]), high=float(b["high"]), pairs=int(b["pairs"]),
                                       median_latent=num(b["median_latent"]), relative=num(b["relative"]))
                       for b in data.get("bins", ())),
            saturation=None if data.get("saturation") is None else float(data["saturation"]),
            seed=None if data.get("seed") is None else int(data["seed"]),
        )


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks ``1..n`` of ``x [n]``, ties given their average rank."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` ``[n]`` (ties ranked by their average): the
    Pearson correlation of the ranks. NaN when fewer than 2 values or either is constant."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"spearman needs two arrays of one length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        return float("nan")
    rx, ry = _ranks(x) - (len(x) + 1) / 2, _ranks(y) - (len(y) + 1) / 2
    denominator = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denominator if denominator > 0 else float("nan")


def sample_state_pairs(env: Env, pairs: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``pairs`` independent pairs of random valid states ``([N, D], [N, D])`` of ``env``'s task.

    Drawn by the task's own ``reset`` (its :meth:`~wmplan.platform.envs.Env._sample_state`) in a
    scratch copy seeded with ``seed``: the same seed gives the same pairs; ``env`` is untouched.
    """
    if pairs < 2:
        raise ValueError(f"the geometry needs at least 2 state pairs, got {pairs}")
    scratch = copy.deepcopy(env)
    scratch.reset(seed=seed)
    states = np.stack([scratch.reset() for _ in range(2 * pairs)])
    return states[:pairs], states[pairs:]


def sample_near_pairs(env: Env, pairs: int, *, seed: int = 0, max_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``pairs`` pairs of nearby valid states ``([N, D], [N, D])``: a random state (``reset``) and
    where the task's data policy takes it in ``1..max_steps`` env steps (log-uniform, so short
    moves are common; default ``4 * frameskip``, four model steps). Random pairs are seldom close; these fill the short
    displacements of the distance-against-displacement curve. Seeded; ``env`` is untouched."""
    steps = 4 * env.frameskip if max_steps is None else max_steps
    if steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {steps}")
    scratch = copy.deepcopy(env)
    rng = np.random.default_rng([seed, 1])
    scratch.reset(seed=seed + 1)
    starts, ends = [], []
    for _ in range(pairs):
        state = scratch.reset()
        starts.append(state)
        policy = scratch.data_policy(rng, steps=steps)
        k = min(steps, int(math.exp(rng.uniform(0.0, math.log(steps + 1)))))  # floor: 1..steps
        for t in range(k):
            state = scratch.step(np.clip(policy(state, t), scratch.action_low, scratch.action_high))
        ends.append(state)
    shape = (0, env.state_dim)
    return (np.stack(starts), np.stack(ends)) if pairs else (np.zeros(shape), np.zeros(shape))


def _bin_edges(displacement: np.ndarray, bins: int | Sequence[float]) -> np.ndarray:
    if isinstance(bins, int):
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        top = float(displacement.max()) if len(displacement) else 1.0
        top = top if top > 0 else 1.0
        return np.r_[0.0, top * 2.0 ** -np.arange(bins - 1, -1, -1)]
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bin edges must increase strictly, got {list(edges)}")
    return edges


def geometry_from_latents(
    latent_a: np.ndarray | torch.Tensor,
    latent_b: np.ndarray | torch.Tensor,
    true_a: np.ndarray,
    true_b: np.ndarray,
    *,
    path: np.ndarray | None = None,
    curve_only: np.ndarray | None = None,
    bins: int | Sequence[float] = DEFAULT_BINS,
    seed: int | None = None,
) -> LatentGeometry:
    """The geometry of given pairs: latents ``[N, D]`` of both ends and their true positions ``[N, C]``.

    Args:
        latent_a, latent_b: the model's latents of the pairs' two ends (any latent units).
        true_a, true_b: the pairs' true coordinates (the task's ``success_coords``, state units).
        path: ``[N]`` shortest-path distances around obstacles (``inf``: no path); None for a task
            without obstacles.
        curve_only: ``[N]`` bool, pairs that enter the displacement curve but not the rank
            correlations (nearby pairs, :func:`sample_near_pairs`); None: none.
        bins: the number ``n`` of displacement bins, with edges ``0`` and the largest displacement
            seen times ``2^-(n-1), ..., 1/2, 1`` (halving towards 0), or the edges themselves (state
            units; pairs outside them are left out of the curve only).
        seed: recorded in the result.
    """
    za = torch.as_tensor(latent_a).detach().double().cpu().numpy().reshape(len(latent_a), -1)
    zb = torch.as_tensor(latent_b).detach().double().cpu().numpy().reshape(len(latent_b), -1)
    xa = np.asarray(true_a, dtype=np.float64).reshape(len(true_a), -1)
    xb = np.asarray(true_b, dtype=np.float64).reshape(len(true_b), -1)
    if not (len(za) == len(zb) == len(xa) == len(xb)) or za.shape != zb.shape or xa.shape != xb.shape:
        raise ValueError(f"pairs must match: latents {za.shape}, {zb.shape}; positions {xa.shape}, {xb.shape}")
    latent = np.linalg.norm(za - zb, axis=-1)
    true = np.linalg.norm(xa - xb, axis=-1)
    ranked = np.ones(len(true), dtype=bool) if curve_only is None else ~np.asarray(curve_only, dtype=bool).reshape(-1)
    if ranked.shape != true.shape:
        raise ValueError(f"curve_only must be [{len(true)}], got {ranked.shape}")
    spearman_path, unreachable = None, 0
    if path is not None:
        path = np.asarray(path, dtype=np.float64).reshape(-1)
        if path.shape != true.shape:
            raise ValueError(f"path distances must be [{len(true)}], got {path.shape}")
        keep = ranked & np.isfinite(path)
        unreachable = int((ranked & ~np.isfinite(path)).sum())
        spearman_path = spearman(latent[keep], path[keep])
    edges = _bin_edges(true, bins)
    typical = float(np.median(latent[ranked])) if ranked.any() else float("nan")
    which = np.searchsorted(edges, true, side="right") - 1
    which[true == edges[-1]] = len(edges) - 2  # the last bin includes its upper edge
    out = []
    for i in range(len(edges) - 1):
        members = latent[which == i]
        median = float(np.median(members)) if len(members) else float("nan")
        relative = median / typical if len(members) and typical > 0 else float("nan")
        out.append(DisplacementBin(low=float(edges[i]), high=float(edges[i + 1]), pairs=len(members),
                                   median_latent=median, relative=relative))
    medians = np.array([b.median_latent for b in out])
    saturation = None
    if np.any(np.isfinite(medians)) and np.nanmax(medians) > 0:
        first = int(np.flatnonzero(medians >= SATURATION_FRACTION * np.nanmax(medians))[0])
        saturation = out[first].low
    return LatentGeometry(pairs=int(ranked.sum()), near_pairs=int((~ranked).sum()),
                          spearman_euclidean=spearman(latent[ranked], true[ranked]), spearman_path=spearman_path,
                          unreachable_pairs=unreachable, bins=tuple(out), saturation=saturation, seed=seed)


def state_geometry(
    encode_states: Callable[[np.ndarray], np.ndarray | torch.Tensor],
    env: Env,
    *,
    pairs: int = DEFAULT_PAIRS,
    near_pairs: int | None = None,
    seed: int = 0,
    bins: int | Sequence[float] = DEFAULT_BINS,
) -> LatentGeometry:
    """The geometry of any map from env states ``[N, D_env]`` to latents ``[N, D]`` on ``env``'s task.

    ``pairs`` random pairs (:func:`sample_state_pairs`) give the rank correlations and the curve;
    ``near_pairs`` nearby ones (:func:`sample_near_pairs`; default ``pairs // 2``) only the curve.
    True distances are over ``env.success_coords``, wall-aware ones from ``env.path_distance``
    (none when the task returns None).
    """
    a, b = sample_state_pairs(env, pairs, seed=seed)
    na, nb = sample_near_pairs(env, pairs // 2 if near_pairs is None else near_pairs, seed=seed)
    a, b = np.concatenate([a, na]), np.concatenate([b, nb])
    curve_only = np.arange(len(a)) >= pairs
    za, zb = encode_states(a), encode_states(b)
    c = env.success_coords
    return geometry_from_latents(za, zb, a[:, c], b[:, c], path=env.path_distance(a, b), curve_only=curve_only,
                                 bins=bins, seed=seed)


def measure_geometry(
    model: object,
    env: Env,
    *,
    pairs: int = DEFAULT_PAIRS,
    near_pairs: int | None = None,
    seed: int = 0,
    bins: int | Sequence[float] = DEFAULT_BINS,
) -> LatentGeometry | None:
    """The latent geometry of an observation model (one that sees frames) on ``env``'s task.

    States are rendered at the model's ``frame_size`` in a scratch copy of ``env`` and encoded with
    the model's ``encode``, as the episode runner gives it starts and goals. None for a state model:
    its state is the simulator's (normalised per coordinate), so its geometry is the task's own.

    Args:
        model: the world model.
        env: the task, for its states, pictures and obstacles.
        pairs: random state pairs compared (each one rendered twice: ``2 * pairs`` frames).
        near_pairs: nearby pairs for the displacement curve (default ``pairs // 2``).
        seed: seed of the pairs.
        bins: displacement bins (see :func:`geometry_from_latents`).
    """
    if not is_observation_model(model):
        return None

    def encode(states: np.ndarray) -> torch.Tensor:  # the visual latent (a model with proprio: without it)
        z = model.encode(render_states(env, states, model.frame_size), **proprio_inputs(model, env, states))
        return z[..., : z.shape[-1] - int(getattr(model, "proprio_dim", 0))]

    with torch.no_grad():
        return state_geometry(encode, env, pairs=pairs, near_pairs=near_pairs, seed=seed, bins=bins)


def check_geometry(
    geometry: LatentGeometry | Mapping[str, Any] | None,
    *,
    model: str,
    threshold: float = GEOMETRY_THRESHOLD,
) -> str | None:
    """The gate: a one-line warning when a latent's rank correlation is below ``threshold``, else None.

    Args:
        geometry: a :class:`LatentGeometry`, its :meth:`~LatentGeometry.as_dict` (e.g. read from a
            checkpoint's metrics or ``wmplan eval-model --json``), or None (a state model: nothing
            to check, no warning).
        model: how the warning names the model (e.g. its checkpoint directory).
        threshold: the smallest acceptable rank correlation (default :data:`GEOMETRY_THRESHOLD`).

    The gated number is :attr:`LatentGeometry.correlation`, the lowest of the Euclidean and
    wall-aware correlations; an undefined one (a constant latent distance) always warns.
    """
    if geometry is None:
        return None
    g = geometry if isinstance(geometry, LatentGeometry) else LatentGeometry.from_dict(geometry)
    r = g.correlation
    if not math.isnan(r) and r >= threshold:
        return None
    parts = f"Euclidean {_fmt(g.spearman_euclidean)}" + ("" if g.spearman_path is None else f", wall-aware {_fmt(g.spearman_path)}")
    return (f"warning: model {model}: latent distance rank correlation {_fmt(r)} ({parts}, {g.pairs} pairs) is below "
            f"{threshold:g}: planners may not find their way in this latent")


def _fmt(x: float) -> str:
    return "undefined" if math.isnan(x) else f"{x:.3f}"
