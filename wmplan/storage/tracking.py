"""Experiment tracking in MLflow: one parent run per wmplan run, one child run per (planner, horizon).

Everything goes through an explicit :class:`mlflow.MlflowClient` bound to one tracking URI; no
global active run is used, so a driver process can log while its workers run elsewhere.

The Parquet results directory (:mod:`wmplan.storage.parquet`) stays the source of truth: the
metrics logged here are computed from its ``episodes`` table with
:func:`wmplan.platform.episode.summarize`, and its part files are copied to the parent run.

Artifact layout of one wmplan run::

    parent run (name = wmplan run id)
        results/episodes/part-*.parquet        every part of the run's results directory
        results/residuals/part-*.parquet       (logged incrementally: each part once)
        results/trajectories/part-*.parquet
        preview/episodes.json                  first 50 episode rows (mlflow.log_table: the UI shows a table)
        plots/success_vs_horizon.png           success rate with its 95% Wald interval, per planner
        plots/final_residual_vs_horizon.png    lifted planners only: mean residual at the last iteration
    child run (name = "<planner>-h<horizon>", tag mlflow.parentRunId)
        preview/episodes.json                  first 50 episode rows of the group (log_table)
        preview/episodes.html                  the same rows as an HTML table
        plots/residual_heatmap.png             lifted planners only: mean residual per iteration and step
        plots/trajectories.png                 a few executed trajectories drawn on the task's render

The Parquet files are logged once, on the parent (children would only duplicate them; filter the
parent's tables by ``planner`` and ``horizon``).

Typical use from a driver::

    tracker = ExperimentTracker(tracking_uri=tracking_uri(work_dir), experiment="wall-grasp")
    tracker.start_run(run_id=run_id, task="wall", code_version=commit, checkpoint_sha256=sha, config=cfg)
    for group in groups:
        ...  # run the episodes, write_records(results_dir, run_id, records)
        tracker.log_group(planner="grasp", horizon=25, options=opts, results_dir=results_dir)
    tracker.finish(status="FINISHED")  # or "FAILED": the metrics logged so far stay
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wmplan.platform.episode import EpisodeRecord, summarize
from wmplan.platform.stats import wald_interval
from wmplan.storage.parquet import read_table
from wmplan.storage.schemas import TABLES

__all__ = [
    "TRACKING_URI_ENV",
    "PREVIEW_ROWS",
    "TrackingError",
    "ExperimentTracker",
    "tracking_uri",
    "artifact_root",
    "TAG_EXPERIMENT_KIND",
    "EXPERIMENT_KIND",
    "UI_RUNS_QUERY",
    "runs_page_url",
    "get_or_create_experiment",
    "flatten_params",
    "group_metrics",
    "planning_seconds",
    "world_to_pixel",
    "track_positions",
    "draw_trajectory",
    "planner_offsets",
    "success_vs_horizon_figure",
    "success_vs_horizon_png",
    "success_time_vs_horizon_figure",
    "success_time_vs_horizon_png",
    "success_vs_iterations_png",
    "success_curves",
    "residual_heatmap_png",
    "trajectories_png",
]

log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
"""The environment variable that overrides the default tracking URI."""

PREVIEW_ROWS = 50
"""Episode rows in a run's preview table."""

MAX_PARAM_VALUE = 6000
"""MLflow's limit on a parameter value's length."""

MAX_KEY = 250
"""MLflow's limit on a parameter or metric key's length."""

_BATCH = 100  # MLflow accepts at most 100 params or tags per log_batch call
_TRAJECTORY_PANELS = 4
_RENDER_SIZE = 256
_HEX = re.compile(r"[0-9a-f]{7,40}")
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /:]")

Status = Literal["FINISHED", "FAILED", "KILLED"]

TAG_RUN_ID = "wmplan.run_id"
TAG_ROLE = "wmplan.role"
TAG_TASK = "wmplan.task"
TAG_CODE = "wmplan.code_version"
TAG_CHECKPOINT = "wmplan.checkpoint_sha256"
TAG_PLANNER = "wmplan.planner"
TAG_HORIZON = "wmplan.horizon"
TAG_PARENT = "mlflow.parentRunId"

TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
"""MLflow's tag for an experiment's kind (``genai_development``, ``custom_model_development``, ...)."""

EXPERIMENT_KIND = "custom_model_development"
"""The kind of every experiment wmplan makes: runs with metrics and artifacts, no GenAI traces."""

UI_RUNS_QUERY = "workflowType=machine_learning"
"""The query that makes MLflow 3.17's UI show an experiment's runs table.

Its 3.17 UI picks an experiment's page from a global GenAI / Model training switch (this query,
else the browser's last choice, GenAI when none) and ignores :data:`TAG_EXPERIMENT_KIND`; without
the query ``#/experiments/<id>`` opens on the GenAI overview, where the runs are not listed.
"""


class TrackingError(RuntimeError):
    """The tracking store refused an operation, or the run is not in a state that allows it."""


# -- where runs go -------------------------------------------------------------------------------------


def tracking_uri(default_dir: str | os.PathLike[str]) -> str:
    """The tracking URI to use: ``$MLFLOW_TRACKING_URI`` if set, else a SQLite file in ``default_dir``.

    Args:
        default_dir: the working directory whose ``mlflow.db`` holds the runs when the
            environment does not name a store (made absolute; created if missing).

    Returns:
        e.g. ``sqlite:////home/me/work/mlflow.db``. With a local SQLite store, artifacts go to
        :func:`artifact_root` of it (``<default_dir>/mlartifacts``), not to the cwd's ``./mlruns``.
    """
    env = os.environ.get(TRACKING_URI_ENV, "").strip()
    if env:
        return env
    folder = Path(default_dir).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def artifact_root(uri: str) -> str | None:
    """Where new experiments put their artifacts for the store ``uri``.

    For a local SQLite file: a ``file://`` URI of the ``mlartifacts`` folder beside the database.
    For any other store (a tracking server, PostgreSQL, an in-memory database) None: the store's
    own default applies (a server's ``--artifacts-destination``).
    """
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return (Path(path).expanduser().resolve().parent / "mlartifacts").as_uri()


def _client(uri: str) -> Any:
    from mlflow import MlflowClient  # imported here: mlflow takes a second or two to import

    return MlflowClient(tracking_uri=uri)


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "experiment"
    return f"{slug[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def runs_page_url(*, base_url: str, experiment_id: str) -> str:
    """The MLflow UI address that opens experiment ``experiment_id`` on its runs table.

    Args:
        base_url: the UI's address, e.g. ``http://127.0.0.1:5000``.
        experiment_id: the experiment's id.

    Returns:
        e.g. ``http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning``
        (see :data:`UI_RUNS_QUERY`).
    """
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}?{UI_RUNS_QUERY}"


def get_or_create_experiment(client: Any, *, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if missing; safe when several processes race to create it.

    The experiment carries :data:`TAG_EXPERIMENT_KIND` = :data:`EXPERIMENT_KIND` (a run's page,
    not a GenAI app's); an existing experiment without that tag gets it, one with another value
    keeps its own.

    Args:
        client: an ``mlflow.MlflowClient``.
        name: the experiment's name.
        artifact_location: the parent folder URI under which a *new* experiment's artifacts go
            (the experiment gets its own sub-folder); None leaves it to the store. An existing
            experiment keeps its location.

    Raises:
        TrackingError: the experiment exists but was deleted (restore it with
            ``mlflow experiments restore`` or pick another name), or the store refused.
    """
    from mlflow.exceptions import MlflowException

    def existing() -> str | None:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            return None
        if exp.lifecycle_stage != "active":
            raise TrackingError(
                f"MLflow experiment {name!r} (id {exp.experiment_id}) was deleted; restore it with "
                f"`mlflow experiments restore --experiment-id {exp.experiment_id}` or use another experiment name"
            )
        if TAG_EXPERIMENT_KIND not in (exp.tags or {}):  # made before wmplan set the kind, or by someone else
            try:
                client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
            except MlflowException as exc:  # e.g. a read-only tracking server: the runs still go in
                log.warning("cannot mark MLflow experiment %r as %s: %s", name, EXPERIMENT_KIND, exc)
        return str(exp.experiment_id)

    found = existing()
    if found is not None:
        return found
    location = f"{artifact_location.rstrip('/')}/{_slug(name)}" if artifact_location else None
    try:
        return str(client.create_experiment(name, artifact_location=location,
                                            tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND}))
    except MlflowException as exc:  # another process created it first: read it back
        found = existing()
        if found is not None:
            return found
        raise TrackingError(f"cannot create MLflow experiment {name!r}: {exc}") from exc


# -- parameters ----------------------------------------------------------------------------------------


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
        return json.dumps(items, default=str, separators=(",", ":"))
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending with a note and a hash of the whole when cut."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:12]
    note = f"...[{len(text)} chars, sha256 {digest}]"
    return text[: limit - len(note)] + note


def flatten_params(config: Mapping[str, Any]) -> dict[str, str]:
    """A nested config as MLflow parameters: one ``"a.b.c"`` key per leaf, every value a string.

    Lists and tuples become compact JSON; an empty mapping becomes ``"{}"``. Keys are cut to
    250 characters and values to 6000 (MLflow's limits), a cut one ending with its length and a
    hash so that different long values stay different; characters MLflow refuses in a key become
    ``_``.

    Raises:
        ValueError: two entries flatten to the same key (e.g. ``{"a.b": 1, "a": {"b": 2}}``).
    """
    out: dict[str, str] = {}

    def put(key: str, value: str) -> None:
        key = _BAD_KEY_CHARS.sub("_", key)
        key = _shorten(key, MAX_KEY)
        if key in out:
            raise ValueError(f"config keys collide when flattened: {key!r} appears twice")
        out[key] = _shorten(value, MAX_PARAM_VALUE)

    def walk(prefix: str, node: Mapping[str, Any]) -> None:
        if not node and prefix:
            put(prefix, "{}")
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, Mapping):
                walk(key, v)
            else:
                put(key, _param_value(v))

    walk("", config)
    return out


# -- metrics -------------------------------------------------------------------------------------------


def _records_from_episodes(table: pa.Table) -> list[EpisodeRecord]:
    """Episode records rebuilt from ``episodes`` rows (scalars only: the arrays are left empty)."""
    empty = np.zeros((0, 0))
    records = []
    for row in table.to_pylist():
        records.append(EpisodeRecord(
            task=row["task"], planner=row["planner"], horizon=row["horizon"], episode_id=row["episode_id"],
            seed=row["seed"], mode=row["mode"], plan_seed=row["plan_seed"], success=row["success"],
            model_success=row["model_success"], final_distance=row["final_distance"],
            model_final_distance=row["model_final_distance"], planning_time_s=row["planning_time_s"],
            iterations=row["iterations"], replans=row["replans"], failed=row["failed"], error=row["error"],
            executed_states=empty, actions=empty,
        ))
    return records


def planning_seconds(table: pa.Table) -> float:
    """Seconds the stored episodes' batches spent planning: each batch (one planner call, or one
    MPC episode set, identified by ``planner``, ``horizon`` and ``plan_seed``) counted once.

    Every episode row carries its batch's planning time, so this is a function of the stored rows
    alone: a run resumed after its driver died reports the same number as one that never stopped.
    """
    if table.num_rows == 0:
        return 0.0
    batches = table.select(["planner", "horizon", "plan_seed", "planning_time_s"]).group_by(
        ["planner", "horizon", "plan_seed"]).aggregate([("planning_time_s", "max")])
    times = [t for t in batches["planning_time_s_max"].to_pylist() if t is not None and math.isfinite(t)]
    return float(sum(times))


def group_metrics(records: Sequence[EpisodeRecord], *, wall_time_s: float | None = None) -> dict[str, float]:
    """The metrics logged for a set of episodes (one planner and horizon, or a whole run).

    ``success_rate``, ``success_ci_low``, ``success_ci_high`` (Wald 95%), ``model_success_rate``,
    ``median_success_time_s`` (median planning time of the successful episodes) are
    :func:`~wmplan.platform.episode.summarize`'s numbers; ``mean_planning_time_s`` is the mean
    over all episodes; ``episodes_per_s`` is ``episodes / wall_time_s`` (only when
    ``wall_time_s``, the group's wall time in seconds, is given and positive); ``episodes``,
    ``successes`` and ``failures`` are counts. Undefined values are NaN.
    """
    s = summarize(records)
    times = [r.planning_time_s for r in records if math.isfinite(r.planning_time_s)]
    metrics = {
        "success_rate": float(s["success_rate"]),
        "success_ci_low": float(s["success_low"]),
        "success_ci_high": float(s["success_high"]),
        "model_success_rate": float(s["model_success_rate"]),
        "median_success_time_s": float(s["median_planning_time_s"]),
        "mean_planning_time_s": float(np.mean(times)) if times else math.nan,
        "episodes": float(s["count"]),
        "successes": float(s["successes"]),
        "failures": float(s["failures"]),
    }
    if wall_time_s is not None and wall_time_s > 0:
        metrics["episodes_per_s"] = s["count"] / wall_time_s
    return metrics


def _metric_key(text: str) -> str:
    return _BAD_KEY_CHARS.sub("_", text)[:MAX_KEY]


def _select(table: pa.Table, *, planner: str, horizon: int) -> pa.Table:
    mask = pc.and_(pc.equal(table["planner"], planner), pc.equal(table["horizon"], horizon))
    return table.filter(mask)


# -- drawing -------------------------------------------------------------------------------------------

# The world extent each task's render covers on both axes, and whether the image's rows run
# along -y (row 0 at the largest y). These mirror the envs' ``render`` methods.
_VIEWS: dict[str, tuple[float, float, bool]] = {
    "wall": (-0.5, 64.5, False),  # wall.render: the 65x65 pixel grid's continuous extent, row = y
    "pointmaze": (-0.7, 4.3, True),  # pointmaze.render: _VIEW_LO.._VIEW_HI, y up
    "pusht": (0.0, 512.0, False),  # pusht.render: the 512x512 window, row = y
}


def world_to_pixel(xy: np.ndarray, *, task: str, size: int) -> np.ndarray:
    """Positions ``[..., 2]`` (x, y) in the task's world to ``[..., 2]`` (column, row) of its render.

    Pixel ``(c, r)`` of a ``size x size`` render has its centre at ``(c, r)`` (matplotlib's
    ``imshow`` convention); the result is continuous. Wall: pixel units of the 65x65 grid; PointMaze:
    qpos in maze units, ``y`` up; Push-T: the 512x512 world.

    Raises:
        ValueError: for a task without a known view.
    """
    if task not in _VIEWS:
        raise ValueError(f"no render mapping for task {task!r}; known: {', '.join(_VIEWS)}")
    lo, hi, y_up = _VIEWS[task]
    xy = np.asarray(xy, dtype=np.float64)
    scale = size / (hi - lo)
    col = (xy[..., 0] - lo) * scale - 0.5
    row = ((hi - xy[..., 1]) if y_up else (xy[..., 1] - lo)) * scale - 0.5
    return np.stack([col, row], axis=-1)


def track_positions(states: np.ndarray, *, task: str) -> dict[str, np.ndarray]:
    """The 2-D world positions to draw for states ``[T, D_env]``: ``{name: [T, 2]}``.

    Wall and PointMaze: ``{"agent": states[:, :2]}``; Push-T: also ``{"block": states[:, 2:4]}``.
    """
    states = np.asarray(states, dtype=np.float64).reshape(-1, np.shape(states)[-1])
    out = {"agent": states[:, :2]}
    if task == "pusht":
        out["block"] = states[:, 2:4]
    return out


START_COLOR = (0.0, 0.75, 0.0)
"""Colour of the start marker (green)."""
GOAL_COLOR = (1.0, 0.0, 1.0)
"""Colour of the goal marker (magenta)."""
PATH_COLORS = {"agent": (0.0, 0.35, 1.0), "block": (1.0, 0.55, 0.0)}
"""Colour of each drawn path."""


def _figure(width_in: float, height_in: float, *, dpi: float = 100.0) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no display, no pyplot state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    return fig, FigureCanvasAgg(fig)


def draw_trajectory(image: np.ndarray, *, task: str, states: np.ndarray, goal: np.ndarray | None = None) -> np.ndarray:
    """Draw executed states on a render of the task: the image with paths and markers, same size.

    Each tracked position (:func:`track_positions`) is a line through its states, with a filled
    circle at the start (green), a cross at the end, and, when ``goal`` is given, a star at the
    goal's position (magenta).

    Args:
        image: ``[S, S, 3]`` uint8 render of the task (``env.render(S)``).
        task: the task's name.
        states: ``[T, D_env]`` executed states, first the start.
        goal: ``[D_env]`` goal state, or None when unknown.

    Returns:
        ``[S, S, 3]`` uint8: pixel ``(c, r)`` of the result is pixel ``(c, r)`` of ``image``.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape[2] != 3:
        raise ValueError(f"image must be a square [S, S, 3] render, got shape {image.shape}")
    size = image.shape[0]
    dpi = 100.0
    fig, canvas = _figure(size / dpi, size / dpi, dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(image, interpolation="nearest")
    ax.set_xlim(-0.5, size - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    ax.set_axis_off()
    marker = max(6.0, size / 24)
    goals = track_positions(goal, task=task) if goal is not None else {}
    for name, xy in track_positions(states, task=task).items():
        px = world_to_pixel(xy, task=task, size=size)
        color = PATH_COLORS.get(name, (0.2, 0.2, 0.2))
        ax.plot(px[:, 0], px[:, 1], "-", color=color, lw=max(1.0, size / 200), alpha=0.9)
        ax.plot(px[-1, 0], px[-1, 1], "x", color=color, ms=marker, mew=2)
        ax.plot(px[0, 0], px[0, 1], "o", color=START_COLOR, ms=marker, mec="none")
        if name in goals:
            g = world_to_pixel(goals[name][0], task=task, size=size)
            ax.plot(g[0], g[1], "*", color=GOAL_COLOR, ms=marker * 1.4, mec="none")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _png(fig: Any, canvas: Any) -> bytes:
    buf = io.BytesIO()
    canvas.print_png(buf)
    return buf.getvalue()


def _by_horizon(records: Sequence[EpisodeRecord]) -> dict[str, tuple[list[int], list[dict[str, Any]]]]:
    """Per planner: its horizons in order and :func:`summarize` of its episodes at each."""
    out = {}
    for planner in sorted({r.planner for r in records}):
        horizons = sorted({r.horizon for r in records if r.planner == planner})
        out[planner] = (horizons, [summarize([r for r in records if r.planner == planner and r.horizon == h]) for h in horizons])
    return out


_SLOT = 0.8  # the share of the distance between two horizon ticks that the planners side by side fill


def planner_offsets(*, planners: Sequence[str], slot: float = _SLOT) -> dict[str, float]:
    """Each planner's horizontal offset from its horizon's tick, so that planners stand side by side.

    The planners split ``slot`` (a share of the unit distance between ticks) into equal widths, in
    the order given; an offset is the centre of its width (symmetric about 0; 0 for one planner).
    """
    width = slot / max(len(planners), 1)
    return {p: (i - (len(planners) - 1) / 2) * width for i, p in enumerate(planners)}


def _horizon_slots(records: Sequence[EpisodeRecord]) -> tuple[dict[str, tuple[list[int], list[dict[str, Any]]]], dict[int, int]]:
    """:func:`_by_horizon` of the records and each horizon's tick position (0, 1, ... in order)."""
    return _by_horizon(records), {h: i for i, h in enumerate(sorted({r.horizon for r in records}))}


def _horizon_axes(ax: Any, records: Sequence[EpisodeRecord], slots: Mapping[int, int], *, ylabel: str, title: str) -> None:
    """One tick per horizon (evenly spaced, labelled with H), the labels, the legend and the title."""
    ax.set_xticks(list(slots.values()), [str(h) for h in slots])
    ax.set_xlim(-0.5, max(len(slots), 1) - 0.5)
    ax.set_xlabel("horizon H (model steps)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    if records:
        ax.legend(loc="upper center", ncols=min(len({r.planner for r in records}), 4), fontsize="small", frameon=False)
    ax.set_title(f"{records[0].task if records else ''} {title}".strip())


def success_vs_horizon_figure(episodes: pa.Table) -> Any:
    """The figure of :func:`success_vs_horizon_png` (a ``matplotlib.figure.Figure``, not yet saved).

    Per horizon, one bar per planner side by side (:func:`planner_offsets`), its height the success
    rate (also marked by a point, so that a rate of 0 shows), its error bar the Wald 95% interval,
    ``successes/episodes`` above it.
    """
    fig, _ = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    records = _records_from_episodes(episodes)
    groups, slots = _horizon_slots(records)
    offsets = planner_offsets(planners=list(groups))
    width = 0.9 * _SLOT / max(len(groups), 1)
    for k, (planner, (horizons, stats)) in enumerate(groups.items()):
        x = np.array([slots[h] + offsets[planner] for h in horizons], dtype=float)
        rate = np.array([s["success_rate"] for s in stats], dtype=float)
        low = np.array([s["success_low"] for s in stats], dtype=float)
        high = np.array([s["success_high"] for s in stats], dtype=float)
        ax.bar(x, rate, width=width, color=f"C{k}", label=planner,
               yerr=[np.clip(rate - low, 0.0, None), np.clip(high - rate, 0.0, None)], capsize=3,
               error_kw={"ecolor": "0.2", "elinewidth": 1.0})
        # the rate as a point too: a planner with no success still shows, in its colour, at 0
        ax.plot(x, rate, linestyle="none", marker="D", markersize=5, color=f"C{k}", markeredgecolor="0.2", markeredgewidth=0.6)
        for xi, top, s in zip(x, high, stats):
            ax.annotate(f"{s['successes']}/{s['count']}", (xi, top), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
    ax.set_ylim(-0.05, 1.3)  # room below 0 for a rate of 0's point, above 1 for the counts and the legend
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    _horizon_axes(ax, records, slots, ylabel="success rate (95% Wald interval)", title="success against horizon")
    fig.tight_layout()
    return fig


def success_vs_horizon_png(episodes: pa.Table) -> bytes:
    """PNG: success rate against horizon, a bar per planner and horizon with its Wald 95% interval
    (:func:`success_vs_horizon_figure`).

    Only final results exist per episode, so this is the run's success over horizons, not over
    planner iterations.
    """
    fig = success_vs_horizon_figure(episodes)
    return _png(fig, fig.canvas)


def success_time_vs_horizon_figure(episodes: pa.Table) -> Any:
    """The figure of :func:`success_time_vs_horizon_png` (a ``matplotlib.figure.Figure``).

    Per planner a line through its median planning time of the successful episodes at each
    horizon, its points shifted by :func:`planner_offsets` so that planners at one horizon stand
    side by side (log scale; a horizon without a success has no point).
    """
    fig, _ = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    records = _records_from_episodes(episodes)
    groups, slots = _horizon_slots(records)
    offsets = planner_offsets(planners=list(groups), slot=0.45)  # close to the tick: points, not bars
    for k, (planner, (horizons, stats)) in enumerate(groups.items()):
        x = [slots[h] + offsets[planner] for h in horizons]
        ax.plot(x, [s["median_planning_time_s"] for s in stats], marker="o", color=f"C{k}", label=planner)
    if any(r.success and r.planning_time_s > 0 for r in records):
        ax.set_yscale("log")
    _horizon_axes(ax, records, slots, ylabel="median time of successful episodes (s)", title="planning time against horizon")
    ax.margins(y=0.25)
    fig.tight_layout()
    return fig


def success_time_vs_horizon_png(episodes: pa.Table) -> bytes:
    """PNG: median planning time (s) of the successful episodes against horizon, one line per
    planner (:func:`success_time_vs_horizon_figure`)."""
    fig = success_time_vs_horizon_figure(episodes)
    return _png(fig, fig.canvas)


def success_curves(episodes: pa.Table) -> dict[tuple[str, int], tuple[list[int], list[float], list[float], list[float]]]:
    """Per (planner, horizon): the snapshot iterations and the success rate after each, with its
    Wald 95% interval, from the episodes' ``success_by_iteration`` (groups without snapshots are left out)."""
    curves: dict[tuple[str, int], tuple[list[int], list[float], list[float], list[float]]] = {}
    rows = episodes.select(["planner", "horizon", "snapshot_iterations", "success_by_iteration"]).to_pylist() if episodes.num_rows else []
    for key in sorted({(r["planner"], r["horizon"]) for r in rows}):
        mine = [r for r in rows if (r["planner"], r["horizon"]) == key and r["snapshot_iterations"]]
        if not mine:
            continue
        iterations = mine[0]["snapshot_iterations"]
        mine = [r for r in mine if r["snapshot_iterations"] == iterations]
        stats = [wald_interval(sum(r["success_by_iteration"][k] for r in mine), len(mine)) for k in range(len(iterations))]
        curves[key] = (list(iterations), [s[0] for s in stats], [s[1] for s in stats], [s[2] for s in stats])
    return curves


def success_vs_iterations_png(episodes: pa.Table) -> bytes:
    """PNG: success rate in the real simulator of the plan after each snapshot iteration (the
    anytime curve), one line per planner and horizon, with Wald 95% intervals as a band."""
    fig, canvas = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    curves = success_curves(episodes)
    for (planner, horizon), (iterations, rate, low, high) in curves.items():
        line = ax.plot(iterations, rate, marker="o", label=f"{planner}, H={horizon}")[0]
        ax.fill_between(iterations, low, high, alpha=0.15, color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("planner iterations")
    ax.set_ylabel("success rate (95% Wald interval)")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend()
    ax.set_title("success against planner iterations")
    fig.tight_layout()
    return _png(fig, canvas)


def _residual_grid(residuals: pa.Table) -> np.ndarray:
    """``[I, H]`` mean over episodes of the residual at iteration ``i`` and step ``t`` (NaN where none)."""
    if residuals.num_rows == 0:
        return np.zeros((0, 0))
    it = residuals["iteration"].to_numpy().astype(np.int64)
    st = residuals["step"].to_numpy().astype(np.int64)
    val = residuals["residual"].to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
    ok = np.isfinite(val)
    total = np.zeros((it.max() + 1, st.max() + 1))
    count = np.zeros_like(total)
    np.add.at(total, (it[ok], st[ok]), val[ok])
    np.add.at(count, (it[ok], st[ok]), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def residual_heatmap_png(residuals: pa.Table, *, title: str = "") -> bytes:
    """PNG: the mean (over episodes, NaN-aware) dynamics residual per planner iteration and step.

    Args:
        residuals: rows of the ``residuals`` table of one planner and horizon.
        title: the plot's title.
    """
    from matplotlib.colors import LogNorm

    grid = _residual_grid(residuals)
    fig, canvas = _figure(6.0, 4.5)
    ax = fig.add_subplot()
    finite = grid[np.isfinite(grid)]
    norm = LogNorm(vmin=finite.min(), vmax=max(finite.max(), finite.min() * 1.0001)) if finite.size and finite.min() > 0 else None
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", origin="upper", interpolation="nearest", norm=norm, cmap="viridis")
    from matplotlib.ticker import MaxNLocator

    fig.colorbar(im, ax=ax, label=r"mean $\|F(s_t, a_t) - s_{t+1}\|$ over episodes")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step t")
    ax.set_ylabel("planner iteration (all calls, in order)")
    ax.set_title(title or "dynamics residual")
    fig.tight_layout()
    return _png(fig, canvas)


def _final_residual_png(residuals: pa.Table) -> bytes:
    """PNG: per lifted planner, the mean residual at its last iteration against horizon."""
    fig, canvas = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    planners = residuals["planner"].to_pylist()
    horizons = residuals["horizon"].to_numpy()
    for planner in sorted(set(planners)):
        xs, ys = [], []
        for h in sorted(set(horizons[np.array(planners) == planner].tolist())):
            grid = _residual_grid(_select(residuals, planner=planner, horizon=h))
            last = grid[-1] if grid.size else np.array([np.nan])
            xs.append(h)
            ys.append(float(np.nanmean(last)) if np.isfinite(last).any() else np.nan)
        ax.plot(xs, ys, marker="o", label=planner)
    ax.set_yscale("log")
    ax.set_xticks(sorted(set(horizons.tolist())))
    ax.set_xlabel("horizon H (model steps)")
    ax.set_ylabel("mean residual at the last iteration")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _png(fig, canvas)


def trajectories_png(panels: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """PNG: images side by side, each with its title (e.g. from :func:`draw_trajectory`)."""
    if not panels:
        raise ValueError("trajectories_png needs at least one panel")
    n = len(panels)
    fig, canvas = _figure(3.0 * n, 3.3)
    for i, (title, img) in enumerate(panels):
        ax = fig.add_subplot(1, n, i + 1)
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return _png(fig, canvas)


def _pick_episodes(episodes: pa.Table, count: int) -> list[dict[str, Any]]:
    """Up to ``count`` rows, half successes and half failures where both exist, by episode id."""
    rows = sorted(episodes.to_pylist(), key=lambda r: r["episode_id"])
    wins = [r for r in rows if r["success"]]
    losses = [r for r in rows if not r["success"]]
    picked = wins[: (count + 1) // 2] + losses[: count // 2]
    rest = [r for r in rows if r not in picked]
    picked += rest[: count - len(picked)]
    return sorted(picked, key=lambda r: r["episode_id"])


# -- the tracker ---------------------------------------------------------------------------------------


@dataclass
class _Group:
    run_id: str


class ExperimentTracker:
    """Logs one wmplan run to MLflow: a parent run and a child run per (planner, horizon).

    Args:
        tracking_uri: the store (see :func:`tracking_uri`).
        experiment: the MLflow experiment's name; created on construction if missing (create it
            here, in the driver, before fanning out work).
        artifact_location: the folder URI under which a new experiment's artifacts go; by default
            :func:`artifact_root` of ``tracking_uri``.

    A run whose parent already exists in the experiment (same wmplan run id, e.g. a resumed run)
    is continued: its parent and child runs are reused and set running again.
    """

    def __init__(self, *, tracking_uri: str, experiment: str, artifact_location: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.client = _client(tracking_uri)
        location = artifact_location if artifact_location is not None else artifact_root(tracking_uri)
        self.experiment_id = get_or_create_experiment(self.client, name=experiment, artifact_location=location)
        self.parent_run_id: str | None = None
        self.run_id: str | None = None
        self.task: str | None = None
        self._groups: dict[tuple[str, int], _Group] = {}
        self._logged_parts: set[str] = set()

    # parent --------------------------------------------------------------------------------------

    def start_run(
        self,
        *,
        run_id: str,
        task: str,
        code_version: str,
        checkpoint_sha256: str | None,
        config: Mapping[str, Any],
    ) -> str:
        """Start (or continue) the parent run of wmplan run ``run_id``; returns its MLflow run id.

        Args:
            run_id: the wmplan run id (also the MLflow run's name).
            task: the task's name.
            code_version: e.g. the git commit the run's code came from.
            checkpoint_sha256: the world-model checkpoint's SHA-256 (None when there is none).
            config: the resolved config; logged flattened (:func:`flatten_params`).

        Raises:
            TrackingError: a parameter of a continued run already holds another value.
        """
        from mlflow.entities import Param, RunTag

        params = flatten_params(config)
        tags = {TAG_RUN_ID: run_id, TAG_ROLE: "parent", TAG_TASK: task, TAG_CODE: code_version}
        if checkpoint_sha256:
            tags[TAG_CHECKPOINT] = checkpoint_sha256
        if _HEX.fullmatch(code_version or ""):
            tags["mlflow.source.git.commit"] = code_version
        existing = self._find(f"tags.`{TAG_RUN_ID}` = '{_quote(run_id)}' AND tags.`{TAG_ROLE}` = 'parent'")
        if existing is None:
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=run_id)
            mlflow_id = run.info.run_id
            old: dict[str, str] = {}
        else:
            mlflow_id = existing.info.run_id
            old = dict(existing.data.params)
            self.client.update_run(mlflow_id, status="RUNNING")
            self._groups = self._find_children(mlflow_id)
            self._logged_parts = {a for a in self._artifact_paths(mlflow_id, "results")}
        clash = {k: (old[k], v) for k, v in params.items() if k in old and old[k] != v}
        if clash:
            key, (was, now) = next(iter(clash.items()))
            raise TrackingError(
                f"MLflow run {mlflow_id} of wmplan run {run_id!r} was logged with {key}={was!r}; "
                f"the continued run has {now!r} ({len(clash)} parameter(s) differ)"
            )
        new = [Param(k, v) for k, v in params.items() if k not in old]
        tag_list = [RunTag(k, v) for k, v in tags.items()]
        self._batch(mlflow_id, params=new, tags=tag_list)
        self.parent_run_id, self.run_id, self.task = mlflow_id, run_id, task
        return mlflow_id

    # children ------------------------------------------------------------------------------------

    def log_group(
        self,
        *,
        planner: str,
        horizon: int,
        options: Mapping[str, Any],
        results_dir: str | os.PathLike[str],
        goals: Mapping[int, np.ndarray] | None = None,
        env: Any | None = None,
    ) -> str:
        """Log one (planner, horizon) group from the results directory; returns its child run's id.

        Call it after the group's records are written (:func:`wmplan.storage.parquet.write_records`).
        Calling it again for the same group (more episodes, or a continued run) updates the same
        child run from the whole results directory, and parameters already logged are kept (MLflow
        parameters cannot change). Every metric is computed from the stored episodes alone
        (``episodes_per_s`` over :func:`planning_seconds`), so a resumed run reports the same numbers
        as one that never stopped.
        Logs the child's params, metrics and artifacts (see the module docstring), then updates the
        parent: its overall metrics, its ``<planner>/<metric>`` metrics at step ``horizon``, the new
        Parquet parts, its preview and its plots. Plots that cannot be drawn (e.g. the task's
        simulator is not installed) are skipped with a warning, never failing the run.

        Args:
            planner: the planner's name, as in the records.
            horizon: ``H``, as in the records.
            options: the planner's options (logged flattened as the child's params).
            results_dir: the run's results directory (episodes/, residuals/, trajectories/).
            goals: goal states ``[D_env]`` by episode id, to mark on the trajectory plot.
            env: a simulator of the task to render the trajectories on; by default
                ``make_env(task)``.
        """
        from mlflow.entities import Param, RunTag

        parent = self._require_parent()
        results_dir = Path(results_dir)
        episodes = read_table(results_dir, "episodes")
        mine = _select(episodes, planner=planner, horizon=horizon)
        key = (planner, int(horizon))
        group = self._groups.get(key)
        if group is None:
            tags = {
                TAG_PARENT: parent, TAG_RUN_ID: self.run_id or "", TAG_ROLE: "group", TAG_TASK: self.task or "",
                TAG_PLANNER: planner, TAG_HORIZON: str(int(horizon)),
            }
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"{planner}-h{int(horizon)}")
            group = _Group(run.info.run_id)
            self._groups[key] = group
            old: dict[str, str] = {}
        else:
            old = dict(self.client.get_run(group.run_id).data.params)
            self.client.update_run(group.run_id, status="RUNNING")
        params = {"planner": planner, "horizon": str(int(horizon)), **flatten_params(options)}
        self._batch(group.run_id, params=[Param(k, v) for k, v in params.items() if k not in old], tags=[RunTag(TAG_ROLE, "group")])
        metrics = group_metrics(_records_from_episodes(mine), wall_time_s=planning_seconds(mine))
        self._log_metrics(group.run_id, metrics)

        with tempfile.TemporaryDirectory(prefix="wmplan-track-") as tmp:
            tmpdir = Path(tmp)
            self._log_preview(group.run_id, mine, tmpdir, html=True)
            residuals = _select(read_table(results_dir, "residuals"), planner=planner, horizon=horizon)
            if residuals.num_rows:
                self._log_png(group.run_id, tmpdir / "residual_heatmap.png",
                              lambda: residual_heatmap_png(residuals, title=f"{planner}, H = {horizon}: dynamics residual"))
            if success_curves(mine):
                self._log_png(group.run_id, tmpdir / "success_vs_iterations.png", lambda: success_vs_iterations_png(mine))
            self._log_png(group.run_id, tmpdir / "trajectories.png",
                          lambda: self._trajectories(results_dir, mine, planner=planner, horizon=horizon, goals=goals, env=env))
        self.client.set_terminated(group.run_id, status="FINISHED")
        self._update_parent(results_dir, planner=planner, horizon=horizon, metrics=metrics)
        return group.run_id

    # finishing -----------------------------------------------------------------------------------

    def finish(self, *, status: Status = "FINISHED") -> None:
        """End the parent run with ``status`` (``"FINISHED"``, ``"FAILED"`` or ``"KILLED"``).

        Metrics and artifacts already logged stay; child runs still running get the same status.
        """
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
        parent = self._require_parent()
        for group in self._groups.values():
            if self.client.get_run(group.run_id).info.status == "RUNNING":
                self.client.set_terminated(group.run_id, status=status)
        self.client.set_terminated(parent, status=status)

    def log_metrics(self, metrics: Mapping[str, float], *, step: int = 0) -> None:
        """Log ``metrics`` on the parent run at ``step`` (e.g. a horizon)."""
        self._log_metrics(self._require_parent(), metrics, step=step)

    def log_plot(self, name: str, make: Any) -> None:
        """Log the PNG bytes ``make()`` returns as ``plots/NAME`` of the parent run (skipped with a
        warning when it cannot be drawn)."""
        with tempfile.TemporaryDirectory(prefix="wmplan-track-") as tmp:
            self._log_png(self._require_parent(), Path(tmp) / name, make)

    @property
    def child_run_ids(self) -> dict[tuple[str, int], str]:
        """MLflow run ids of the child runs so far, by (planner, horizon)."""
        return {k: g.run_id for k, g in self._groups.items()}

    # helpers -------------------------------------------------------------------------------------

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            raise TrackingError("no parent run: call start_run() first")
        return self.parent_run_id

    def _find(self, filter_string: str) -> Any | None:
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=2)
        return runs[0] if runs else None

    def _find_children(self, parent: str) -> dict[tuple[str, int], _Group]:
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent}'", max_results=10000)
        out = {}
        for run in runs:
            tags = run.data.tags
            if TAG_PLANNER in tags and TAG_HORIZON in tags:
                out[(tags[TAG_PLANNER], int(tags[TAG_HORIZON]))] = _Group(run.info.run_id)
        return out

    def _artifact_paths(self, run_id: str, path: str) -> list[str]:
        out = []
        for info in self.client.list_artifacts(run_id, path):
            out += self._artifact_paths(run_id, info.path) if info.is_dir else [info.path]
        return out

    def _batch(self, run_id: str, *, params: Sequence[Any] = (), tags: Sequence[Any] = ()) -> None:
        for i in range(0, max(len(params), 1), _BATCH):
            self.client.log_batch(run_id, params=list(params[i : i + _BATCH]), tags=list(tags) if i == 0 else [])

    def _log_metrics(self, run_id: str, metrics: Mapping[str, float], *, step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_metric_key(k), float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def _log_preview(self, run_id: str, episodes: pa.Table, tmpdir: Path, *, html: bool) -> None:
        frame = episodes.sort_by([("planner", "ascending"), ("horizon", "ascending"), ("episode_id", "ascending")])
        frame = frame.slice(0, PREVIEW_ROWS).drop_columns(["run_id"]).to_pandas()
        present = {a.path for a in self.client.list_artifacts(run_id, "preview")}
        if "preview/episodes.json" not in present:
            self.client.log_table(run_id, data=frame, artifact_file="preview/episodes.json")
        else:  # log_table would append to the old table: replace the file (its table tag is set already)
            path = tmpdir / "episodes.json"
            frame.to_json(path, orient="split", index=False, date_format="iso")
            self.client.log_artifact(run_id, str(path), artifact_path="preview")
        if html:
            path = tmpdir / "episodes.html"
            path.write_text(frame.to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4g}"), encoding="utf-8")
            self.client.log_artifact(run_id, str(path), artifact_path="preview")

    def _log_png(self, run_id: str, path: Path, make: Any) -> None:
        try:
            path.write_bytes(make())
        except Exception as exc:  # noqa: BLE001 - a plot must never fail the run
            log.warning("skipping plot %s: %s: %s", path.name, type(exc).__name__, exc)
            return
        self.client.log_artifact(run_id, str(path), artifact_path="plots")

    def _trajectories(
        self,
        results_dir: Path,
        episodes: pa.Table,
        *,
        planner: str,
        horizon: int,
        goals: Mapping[int, np.ndarray] | None,
        env: Any | None,
    ) -> bytes:
        rows = _pick_episodes(episodes, _TRAJECTORY_PANELS)
        if not rows:
            raise ValueError(f"no episodes of {planner} at H = {horizon}")
        task = rows[0]["task"]
        if env is None:
            from wmplan.platform.envs import make_env

            env = make_env(task)
        traj = _select(read_table(results_dir, "trajectories"), planner=planner, horizon=horizon)
        ids = traj["episode_id"].to_numpy()
        panels = []
        for row in rows:
            eid = row["episode_id"]
            part = traj.filter(pa.array(ids == eid)).sort_by("step")
            if part.num_rows == 0:
                continue
            states = np.array(part["state"].to_pylist(), dtype=np.float64)
            env.reset(state=states[0])
            image = env.render(_RENDER_SIZE)
            goal = None if goals is None or eid not in goals else np.asarray(goals[eid], dtype=np.float64)
            drawn = draw_trajectory(image, task=task, states=states, goal=goal)
            verdict = "success" if row["success"] else ("failed" if row["failed"] else "miss")
            panels.append((f"episode {eid}: {verdict}, d = {row['final_distance']:.3g}", drawn))
        return trajectories_png(panels)

    def _update_parent(self, results_dir: Path, *, planner: str, horizon: int, metrics: Mapping[str, float]) -> None:
        parent = self._require_parent()
        self._log_metrics(parent, {f"{planner}/{k}": v for k, v in metrics.items()}, step=int(horizon))
        episodes = read_table(results_dir, "episodes")
        self._log_metrics(parent, group_metrics(_records_from_episodes(episodes), wall_time_s=planning_seconds(episodes)))
        for name in TABLES:
            folder = results_dir / name
            for part in sorted(folder.glob("part-*.parquet")) if folder.exists() else []:
                dest = f"results/{name}/{part.name}"
                if dest not in self._logged_parts:
                    self.client.log_artifact(parent, str(part), artifact_path=f"results/{name}")
                    self._logged_parts.add(dest)
        with tempfile.TemporaryDirectory(prefix="wmplan-track-") as tmp:
            tmpdir = Path(tmp)
            self._log_preview(parent, episodes, tmpdir, html=False)
            self._log_png(parent, tmpdir / "success_vs_horizon.png", lambda: success_vs_horizon_png(episodes))
            if success_curves(episodes):
                self._log_png(parent, tmpdir / "success_vs_iterations.png", lambda: success_vs_iterations_png(episodes))
            residuals = read_table(results_dir, "residuals")
            if residuals.num_rows:
                self._log_png(parent, tmpdir / "final_residual_vs_horizon.png", lambda: _final_residual_png(residuals))


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
