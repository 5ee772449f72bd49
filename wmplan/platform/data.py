"""Trajectory data sets: generated in the real simulators, stored as Parquet.

A data set is one Parquet file with one row per environment step of every trajectory:

=========  ==================================  ===========================================
column     type                                meaning
=========  ==================================  ===========================================
episode    int32                               trajectory index, 0..episodes-1
step       int32                               step index t within the trajectory, 0..T
split      string                              ``train`` or ``val`` (whole trajectories)
state      fixed_size_list<float64>[D]         the state at step t
action     fixed_size_list<float64>[A]         the env action taken at step t (NaN at t = T)
frame      binary, optional                    ``size x size x 3`` uint8 RGB render of the state
round      int32, optional                     aggregated data (:func:`write_trajectories`): 0 for
                                               the original data, ``r`` for a trajectory executed
                                               in round ``r`` of plan / execute / retrain
=========  ==================================  ===========================================

The generating configuration, the schema version and the data-set shape are stored as JSON in the
file's key-value metadata under ``wmplan.dataset``. Generation is parallel over processes and
deterministic: every trajectory draws from its own seed derived from ``(seed, episode)``, rows are
written in trajectory order, and nothing time-dependent enters the file, so the same
configuration gives the same bytes. Trajectories are written in chunks as they are generated, so
memory stays bounded.

What a trajectory is comes from the task's env: its data-collection policy
(:meth:`~wmplan.platform.envs.Env.data_policy`), its default length
(``default_trajectory_steps``) and its state and action sizes (``D``, ``A``). The task is built
once, in this process (:func:`wmplan.platform.registry.make_task`, so a user's
``package.module:factory`` task works too), and every trajectory runs in a copy of it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import multiprocessing
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wmplan.platform.envs import Env
from wmplan.platform.errors import ConfigError
from wmplan.platform.options import require
from wmplan.platform.threads import available_cores

__all__ = ["DataConfig", "DataError", "Trajectory", "Dataset", "generate_dataset", "read_dataset", "write_trajectories",
           "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
METADATA_KEY = b"wmplan.dataset"
CHUNK_EPISODES = 16
"""Trajectories per task handed to a worker and per Parquet row group."""


class DataError(RuntimeError):
    """A data set file is missing, unreadable, or not a wmplan data set."""


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """How to generate a data set."""

    env: str
    """Task: a built-in or registered name, or package.module:factory."""
    episodes: int = 1000
    """Number of trajectories (``wmplan data`` and default models use the task's
    default_trajectories: 100,000 env steps in all for wmplan's tasks, enough wall contacts that a
    model learns the wall)."""
    steps: int = 0
    """Env steps per trajectory (0: the task's default_trajectory_steps; replayed goals H model steps
    away need held-out trajectories of at least frameskip x H steps)."""
    seed: int = 0
    """Seed of every random choice (states, policy noise, the split)."""
    val_fraction: float = 0.1
    """Fraction of trajectories held out as the validation split (at least one when > 0)."""
    frames: bool = False
    """Store a rendered RGB frame with every step."""
    frame_size: int = 64
    """Side of the stored frames in pixels."""
    policy: Literal["task", "uniform"] = "task"
    """Actions of the data: ``task``, the task's own data-collection policy (``Env.data_policy``;
    Wall's is DINO-WM's smooth random walk); ``uniform``, independent uniform draws over the whole
    action box, so that a model sees every action a planner may try, at every state the walks reach."""

    def __post_init__(self) -> None:
        from wmplan.platform.registry import task_class  # here, not at import: the workers never import torch

        task_class(self.env)  # an unknown task fails here (a plug-in is built once per process to find its class)
        require(self.episodes >= 1, f"episodes must be >= 1, got {self.episodes}")
        require(self.steps >= 0, f"steps must be >= 0 (0: default), got {self.steps}")
        require(0.0 <= self.val_fraction < 1.0, f"val_fraction must be in [0, 1), got {self.val_fraction}")
        require(8 <= self.frame_size <= 512, f"frame_size must be in [8, 512], got {self.frame_size}")
        require(self.policy in ("task", "uniform"), f"policy must be 'task' or 'uniform', got {self.policy!r}")

    @property
    def steps_per_episode(self) -> int:
        """Env steps per trajectory: ``steps``, or the task's ``default_trajectory_steps``."""
        from wmplan.platform.registry import task_class

        return self.steps or task_class(self.env).default_trajectory_steps


# -- generation ------------------------------------------------------------------------------------


def _trajectory(config: DataConfig, task: Env, steps: int, episode: int) -> tuple[np.ndarray, np.ndarray, list[bytes] | None]:
    """One trajectory in a fresh copy of ``task``: states ``[steps+1, D]``, actions ``[steps, A]``, frames."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, episode]))
    env = copy.deepcopy(task)
    state = env.reset(seed=int(rng.integers(2**63)))
    policy = env.data_policy(rng, steps=steps) if config.policy == "task" else Env.data_policy(env, rng, steps=steps)
    states, actions = [state], []
    frames = [env.render(config.frame_size).tobytes()] if config.frames else None
    for t in range(steps):
        action = np.clip(policy(state, t), env.action_low, env.action_high)
        state = env.step(action)
        states.append(state)
        actions.append(action)
        if frames is not None:
            frames.append(env.render(config.frame_size).tobytes())
    return np.stack(states), np.stack(actions), frames


def _chunk(config: DataConfig, task: Env, steps: int, episodes: list[int], val: frozenset[int]) -> pa.RecordBatch:
    cols: dict[str, list] = {"episode": [], "step": [], "split": [], "state": [], "action": []}
    frames: list[bytes] = []
    for ep in episodes:
        states, actions, ep_frames = _trajectory(config, task, steps, ep)
        n = len(states)
        cols["episode"] += [ep] * n
        cols["step"] += list(range(n))
        cols["split"] += ["val" if ep in val else "train"] * n
        cols["state"] += list(states)
        cols["action"] += list(actions) + [np.full(task.action_dim, np.nan)]
        if ep_frames is not None:
            frames += ep_frames
    if config.frames:
        cols["frame"] = frames
    return pa.RecordBatch.from_pydict(cols, schema=_schema(task.state_dim, task.action_dim, config.frames))


def _schema(state_dim: int, action_dim: int, frames: bool) -> pa.Schema:
    fields = [
        pa.field("episode", pa.int32(), nullable=False),
        pa.field("step", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("state", pa.list_(pa.float64(), state_dim), nullable=False),
        pa.field("action", pa.list_(pa.float64(), action_dim), nullable=False),
    ]
    if frames:
        fields.append(pa.field("frame", pa.binary()))
    return pa.schema(fields)


def validation_episodes(config: DataConfig) -> frozenset[int]:
    """The trajectories held out for validation: a seeded choice of whole episodes."""
    if config.val_fraction <= 0:
        return frozenset()
    n_val = max(1, round(config.episodes * config.val_fraction))
    if n_val >= config.episodes:
        raise ConfigError(f"val_fraction {config.val_fraction} leaves no training trajectory out of {config.episodes}")
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 2**31]))
    return frozenset(int(e) for e in rng.choice(config.episodes, size=n_val, replace=False))


def _chunks(n: int, size: int) -> Iterator[list[int]]:
    for lo in range(0, n, size):
        yield list(range(lo, min(n, lo + size)))


def generate_dataset(
    config: DataConfig,
    path: str | os.PathLike[str],
    *,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Generate trajectories in parallel and write them to the Parquet file ``path``.

    Args:
        config: what to generate.
        path: output file; written to a temporary name first and renamed when complete.
        workers: processes (0: one per CPU core available to this process; never more than there are
            chunks of :data:`CHUNK_EPISODES` trajectories; 1: this process). The task is built
            here and sent to the workers pickled; a task that cannot be pickled is generated in
            this process (the same bytes, more slowly). wmplan's simulators use numpy only: no
            worker imports torch.
        progress: called with (trajectories done, total) after each chunk, in order.

    Returns:
        The path of the finished file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    val = validation_episodes(config)
    chunk = CHUNK_EPISODES  # fixed, so that row groups (and bytes) do not depend on the worker count
    workers = min(workers or available_cores(), math.ceil(config.episodes / chunk))
    from wmplan.platform.registry import make_task  # here, not at import: the workers never import torch

    env = make_task(config.env)
    steps = config.steps or env.default_trajectory_steps
    if workers > 1:
        try:
            pickle.dumps(env)
        except Exception:  # noqa: BLE001 - a user's simulator may hold what cannot be pickled
            workers = 1
    meta = {
        "schema_version": SCHEMA_VERSION,
        "config": dataclasses.asdict(config),
        "state_dim": env.state_dim,
        "action_dim": env.action_dim,
        "frameskip": env.frameskip,
        "steps_per_episode": steps,
        "val_episodes": sorted(val),
    }
    schema = _schema(env.state_dim, env.action_dim, config.frames).with_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True).encode()})
    tmp = path.with_name(path.name + ".partial")
    done = 0
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(pq.ParquetWriter(tmp, schema, compression="zstd"))
        chunks = list(_chunks(config.episodes, chunk))
        if workers == 1:
            batches: Iterator[pa.RecordBatch] = (_chunk(config, env, steps, eps, val) for eps in chunks)
        else:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")))
            futures = [pool.submit(_chunk, config, env, steps, eps, val) for eps in chunks]
            batches = (fut.result() for fut in futures)  # in order: the file's bytes do not depend on timing
        for eps, batch in zip(chunks, batches):
            writer.write_batch(batch.replace_schema_metadata(schema.metadata))
            done += len(eps)
            if progress:
                progress(done, config.episodes)
    tmp.replace(path)
    return path


# -- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trajectory:
    """One trajectory of a data set."""

    episode: int
    split: str
    states: np.ndarray
    """``[T+1, D]`` float64."""
    actions: np.ndarray
    """``[T, A]`` float64 env actions; ``actions[t]`` led from ``states[t]`` to ``states[t+1]``."""
    frames: np.ndarray | None = None
    """``[T+1, S, S, 3]`` uint8, when the data set has frames."""
    round: int = 0
    """Where the trajectory came from: 0, the data set's own data; ``r >= 1``, executed in round ``r``
    of plan / execute / retrain (:mod:`wmplan.platform.models.rounds`)."""


@dataclass(frozen=True)
class Dataset:
    """A data set read from Parquet: its metadata and its trajectories by split."""

    path: Path
    meta: dict
    trajectories: tuple[Trajectory, ...]

    @property
    def env(self) -> str:
        return self.meta["config"]["env"]

    @property
    def frameskip(self) -> int:
        return int(self.meta["frameskip"])

    def split(self, name: str) -> list[Trajectory]:
        """The trajectories of split ``name`` (``train`` or ``val``)."""
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return [t for t in self.trajectories if t.split == name]


def read_metadata(path: str | os.PathLike[str]) -> dict:
    """The ``wmplan.dataset`` metadata of a data set file, with clear errors for anything else."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data set {str(path)!r} does not exist (generate one with 'wmplan data --env NAME')")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"data set {str(path)!r} is not a readable Parquet file ({exc})") from None
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise DataError(f"{str(path)!r} is a Parquet file but not a wmplan data set (no {METADATA_KEY.decode()} metadata)")
    meta = json.loads(raw)
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"data set {str(path)!r} has schema version {meta.get('schema_version')}, this wmplan reads {SCHEMA_VERSION}")
    return meta


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Load a data set written by :func:`generate_dataset`."""
    meta = read_metadata(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"data set {str(path)!r} is corrupt ({exc})") from None
    episode = table["episode"].to_numpy()
    d = int(meta["state_dim"])
    states = table["state"].combine_chunks().flatten().to_numpy().reshape(-1, d)
    actions = table["action"].combine_chunks().flatten().to_numpy().reshape(-1, int(meta["action_dim"]))
    splits = table["split"].to_pylist()
    rounds = table["round"].to_numpy() if "round" in table.column_names else None
    frames = None
    if "frame" in table.column_names:
        size = int(meta["config"]["frame_size"])
        # A bytearray, so the frames are writable (torch refuses read-only buffers without a copy).
        frames = np.frombuffer(bytearray(b"".join(table["frame"].to_pylist())), dtype=np.uint8).reshape(-1, size, size, 3)
    boundaries = np.flatnonzero(np.diff(episode)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(episode)]])
    trajectories = []
    for lo, hi in zip(starts, ends):
        trajectories.append(Trajectory(
            episode=int(episode[lo]),
            split=splits[lo],
            states=states[lo:hi],
            actions=actions[lo : hi - 1],
            frames=None if frames is None else frames[lo:hi],
            round=0 if rounds is None else int(rounds[lo]),
        ))
    return Dataset(path=Path(path), meta=meta, trajectories=tuple(trajectories))


def write_trajectories(path: str | os.PathLike[str], trajectories: Sequence[Trajectory], *, meta: dict) -> Path:
    """Write trajectories (of any origin) as a data set with a ``round`` column, e.g. a data set
    aggregated over rounds of plan / execute / retrain: the original trajectories (round 0) and
    those executed in each round.

    Frames are not written (aggregated data feed state models). Trajectories may have different
    lengths. ``meta`` is stored as the file's ``wmplan.dataset`` metadata, with ``schema_version``,
    ``val_episodes`` (from the trajectories' splits) and ``rounds`` (the largest round) set here; it
    must hold ``config`` (with ``env``), ``state_dim``, ``action_dim`` and ``frameskip`` as
    :func:`generate_dataset`'s does. Written to a temporary name first and renamed when complete.

    Raises:
        ValueError: no trajectories, repeated episode ids, or a trajectory whose shapes do not fit.
    """
    if not trajectories:
        raise ValueError("write_trajectories: no trajectories")
    d, a = int(meta["state_dim"]), int(meta["action_dim"])
    ids = [t.episode for t in trajectories]
    if len(set(ids)) != len(ids):
        raise ValueError("write_trajectories: episode ids must be unique")
    cols: dict[str, list] = {"episode": [], "step": [], "split": [], "state": [], "action": [], "round": []}
    for t in trajectories:
        states, actions = np.asarray(t.states, dtype=np.float64), np.asarray(t.actions, dtype=np.float64)
        if states.ndim != 2 or states.shape[1] != d or actions.shape != (len(states) - 1, a):
            raise ValueError(f"write_trajectories: trajectory {t.episode} must have states [T+1, {d}] and actions [T, {a}], "
                             f"got {states.shape} and {actions.shape}")
        n = len(states)
        cols["episode"] += [t.episode] * n
        cols["step"] += list(range(n))
        cols["split"] += [t.split] * n
        cols["state"] += list(states)
        cols["action"] += list(actions) + [np.full(a, np.nan)]
        cols["round"] += [t.round] * n
    full = {**meta, "schema_version": SCHEMA_VERSION, "val_episodes": sorted(t.episode for t in trajectories if t.split == "val"),
            "rounds": max(t.round for t in trajectories)}
    schema = _schema(d, a, False).append(pa.field("round", pa.int32(), nullable=False))
    schema = schema.with_metadata({METADATA_KEY: json.dumps(full, sort_keys=True).encode()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    pq.write_table(pa.Table.from_pydict(cols, schema=schema), tmp, compression="zstd")
    tmp.replace(path)
    return path
