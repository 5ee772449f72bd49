"""How well a world model predicts held-out trajectories, in env units and in its own space.

For every window of ``k`` model steps of the chosen split (every start offset), the model rolls
the recorded packed actions out open loop from the recorded start state, and its predictions are
compared with the recorded states ``frameskip, 2 * frameskip, ...`` env steps later.

On a task with obstacles the evaluation also counts *wall crossings*: windows where the model's
rollout passes through an obstacle (the task's :meth:`~wmplan.platform.envs.Env.obstacle_crossings`;
on Wall, from one side of the wall to the other outside the door) while the recorded trajectory,
sampled at the same model steps, does not. A model with this fault lets planners walk through walls.

For a model that sees frames the evaluation can also measure its *latent geometry*
(:mod:`wmplan.platform.models.geometry`): whether latent distance follows true distance.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from wmplan.platform.envs import Env, make_env
from wmplan.platform.errors import ConfigError
from wmplan.platform.models.geometry import measure_geometry
from wmplan.platform.models.training import transition_windows
from wmplan.platform.models.visual import is_pixel_model, proprio_inputs
from wmplan.platform.world_model import WorldModel, check_world_model, from_model_space, rollout, to_model_space

if TYPE_CHECKING:
    from wmplan.platform.data import Dataset

__all__ = ["evaluate_model"]


def _builtin_task(name: str) -> Env | None:
    """wmplan's own task called ``name``, or None: a name read from a data set never runs code."""
    try:
        return make_env(name)
    except ConfigError:
        return None


def evaluate_model(
    model: WorldModel,
    dataset: Dataset,
    *,
    k: int = 10,
    split: str = "val",
    batch: int = 4096,
    task: Env | None = None,
    geometry_pairs: int = 0,
    geometry_seed: int = 0,
) -> dict[str, Any]:
    """Open-loop prediction errors of ``model`` on a split of ``dataset``.

    ``model`` is any world model whose actions are the data set's packed env actions; when it has
    ``encode``/``decode`` (like :class:`StateWorldModel`) states are mapped through them, otherwise
    its state space is taken to be the env's. A pixel model (:class:`VisualWorldModel`) encodes the
    recorded frames instead, its MSEs are in its normalised latent space, and its env-unit errors
    go through its state probe (``decode``): they measure what the latent says about the state.

    Args:
        model: the world model.
        dataset: a data set whose frameskip matches the model's packed actions.
        k: model steps of the open-loop rollouts.
        split: ``val`` or ``train``.
        batch: windows evaluated at once.
        task: the data set's task, for its obstacle test; None: wmplan's own task of the data
            set's name (a user's task must be given: a name read from a file is never imported).
        geometry_pairs: for a model that sees frames, random state pairs of the task whose latent
            geometry is measured (:func:`~wmplan.platform.models.geometry.measure_geometry`); 0: not
            measured.
        geometry_seed: seed of those pairs.

    Returns:
        A dict with ``one_step_error`` and ``k_step_error`` (mean Euclidean distance between
        predicted and recorded env states after 1 and ``k`` model steps, in env units over all
        state dimensions), ``one_step_mse`` and ``k_step_mse`` (mean squared error per dimension in
        the model's state space: normalised for :class:`StateWorldModel`), ``error_by_step``
        (``k`` mean Euclidean errors, steps 1..k), ``k_step_rmse_per_dim`` (``D`` values, env
        units), ``transitions`` and ``windows`` (how many one-step and k-step comparisons),
        ``wall_crossings`` and ``wall_crossing_rate`` (count and fraction of k-step windows whose
        rollout passes through an obstacle while the recorded path does not; None for a task
        without obstacles), ``geometry`` (a model that sees frames, with ``geometry_pairs``:
        :meth:`LatentGeometry.as_dict <wmplan.platform.models.geometry.LatentGeometry.as_dict>`;
        otherwise None: a state model plans on the simulator's own state, or no task is known),
        and ``k``, ``split``, ``frameskip``.
    """
    model = check_world_model(model)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    trajectories = dataset.split(split)
    if not trajectories:
        raise ValueError(f"data set {str(dataset.path)!r} has no {split!r} trajectories")
    f = dataset.frameskip
    d = trajectories[0].states.shape[1]
    a_dim = f * trajectories[0].actions.shape[1]
    pixels = is_pixel_model(model)
    env_dim = model.config.state_dim if pixels else model.state_dim  # type: ignore[attr-defined]  # a pixel model has its env size on its config
    if model.action_dim != a_dim or env_dim != d:
        raise ValueError(
            f"model (state_dim {env_dim}, action_dim {model.action_dim}) does not fit data set "
            f"{dataset.env!r} (state_dim {d}, packed action_dim {a_dim} at frameskip {f})"
        )
    if pixels and any(t.frames is None for t in trajectories):
        raise ValueError(f"data set {str(dataset.path)!r} has no frames, and the model sees only pictures "
                         f"(generate data with 'wmplan data --frames')")
    device = model.action_low.device
    with torch.no_grad():
        if pixels:
            simulator = task if task is not None else _builtin_task(dataset.env)  # the proprio of a model that carries it
            latents = [model.encode(t.frames, **proprio_inputs(model, simulator, t.states)).cpu().numpy()  # type: ignore[attr-defined]
                       for t in trajectories]  # pixels: an ObservationModel
        else:
            latents = [to_model_space(model, torch.tensor(t.states, dtype=torch.float32, device=device)).cpu().numpy()
                       for t in trajectories]
    latent_trajs = [SimpleNamespace(states=z, actions=t.actions) for z, t in zip(latents, trajectories)]

    def run(k_: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        states, actions = transition_windows(trajectories, f, k_)
        z_windows, _ = transition_windows(latent_trajs, f, k_)
        if len(states) == 0:
            raise ValueError(
                f"the {split!r} trajectories ({len(trajectories[0].actions)} env steps) are too short "
                f"for {k_} model steps at frameskip {f}"
            )
        preds, sq = [], []
        with torch.no_grad():
            for lo in range(0, len(states), batch):
                z_true = torch.as_tensor(z_windows[lo : lo + batch], dtype=torch.float32, device=device)
                a = torch.as_tensor(actions[lo : lo + batch], dtype=torch.float32, device=device)
                z = rollout(model, z_true[:, 0], a)
                sq.append((z[:, 1:] - z_true[:, 1:]).pow(2).mean(-1).double().cpu().numpy())  # [n, k]
                preds.append(from_model_space(model, z).double().cpu().numpy())
        return states, actions, np.concatenate(preds), np.concatenate(sq)

    s1, _, p1, sq1 = run(1)
    sk, _, pk, sqk = run(k)
    err1 = np.linalg.norm(p1[:, 1] - s1[:, 1], axis=-1)
    errk = np.linalg.norm(pk[:, 1:] - sk[:, 1:], axis=-1)  # [N, k]
    result: dict[str, Any] = {
        "split": split,
        "k": k,
        "frameskip": f,
        "transitions": len(s1),
        "windows": len(sk),
        "one_step_error": float(err1.mean()),
        "one_step_mse": float(sq1.mean()),
        "k_step_error": float(errk[:, -1].mean()),
        "k_step_mse": float(sqk[:, -1].mean()),
        "error_by_step": [float(e) for e in errk.mean(0)],
        "k_step_rmse_per_dim": [float(e) for e in np.sqrt(((pk[:, -1] - sk[:, -1]) ** 2).mean(0))],
        "wall_crossings": None,
        "wall_crossing_rate": None,
    }
    task = task if task is not None else _builtin_task(dataset.env)
    model_cross = None if task is None else task.obstacle_crossings(pk)
    real_cross = None if task is None else task.obstacle_crossings(sk)
    if model_cross is not None and real_cross is not None:
        count = int((model_cross & ~real_cross).sum())
        result["wall_crossings"] = count
        result["wall_crossing_rate"] = count / len(sk)
    geometry = measure_geometry(model, task, pairs=geometry_pairs, seed=geometry_seed) \
        if pixels and task is not None and geometry_pairs > 0 else None
    result["geometry"] = None if geometry is None else geometry.as_dict()
    return result
