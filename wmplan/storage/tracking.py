"""A wmplan run in MLflow: one parent run per wmplan run, one child run per (planner, horizon).

:class:`ExperimentTracker` builds on :class:`wmplan.storage.mlflow.MlflowRecorder` (the client,
the experiment, finding a run again, params, metrics, artifacts and plots), and draws its figures
with :mod:`wmplan.storage.plots`.

The Parquet results directory (:mod:`wmplan.storage.parquet`) stays the source of truth: the
metrics logged here are computed from its ``episodes`` table with
:func:`wmplan.platform.episode.summarize_rows`, and its part files are copied to the parent run.

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

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from wmplan.platform.episode import summarize_rows
from wmplan.storage.mlflow import TAG_PARENT, TAG_ROLE, MlflowRecorder, Status, TrackingError, check_status, flatten_params
from wmplan.storage.parquet import read_table, select_group
from wmplan.storage.plots import (
    draw_trajectory,
    final_residual_vs_horizon_png,
    residual_heatmap_png,
    success_curves,
    success_vs_horizon_png,
    success_vs_iterations_png,
    trajectories_png,
)
from wmplan.storage.schemas import TABLES

__all__ = [
    "ExperimentTracker",
    "group_metrics",
    "planning_seconds",
    "TAG_RUN_ID",
    "TAG_TASK",
    "TAG_CODE",
    "TAG_CHECKPOINT",
    "TAG_PLANNER",
    "TAG_HORIZON",
]

TAG_RUN_ID = "wmplan.run_id"
TAG_TASK = "wmplan.task"
TAG_CODE = "wmplan.code_version"
TAG_CHECKPOINT = "wmplan.checkpoint_sha256"
TAG_MODEL = "wmplan.model."
"""Prefix of the tags that say what the run's world model cost to build (kind, training_seconds, rounds, members)."""
TAG_PLANNER = "wmplan.planner"
TAG_HORIZON = "wmplan.horizon"

_TRAJECTORY_PANELS = 4
_RENDER_SIZE = 256
_HEX = re.compile(r"[0-9a-f]{7,40}")


# -- metrics -------------------------------------------------------------------------------------------


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


def group_metrics(rows: Sequence[Mapping[str, Any]], *, wall_time_s: float | None = None) -> dict[str, float]:
    """The metrics logged for a set of episode rows (one planner and horizon, or a whole run).

    Args:
        rows: ``episodes`` rows (``table.to_pylist()``, or ``EpisodeRecord.to_row()`` dicts).
        wall_time_s: the group's wall time in seconds, for ``episodes_per_s``.

    ``success_rate``, ``success_ci_low``, ``success_ci_high`` (Wald 95%), ``model_success_rate``,
    ``exploitation_gap`` (in-model minus real success, a fraction), ``median_success_time_s`` (median planning
    time of the successful episodes: the fixed budget's wall time), ``median_time_to_success_s`` and
    ``median_transitions_to_success`` (the paper's time
    to success, from the plan snapshots, over the successful episodes) and ``median_transitions``
    (model transitions spent per episode) are :func:`~wmplan.platform.episode.summarize_rows`'s numbers; ``mean_planning_time_s`` is the
    mean over all episodes; ``episodes_per_s`` is ``episodes / wall_time_s`` (only when
    ``wall_time_s`` is given and positive); ``episodes``, ``successes`` and ``failures`` are
    counts. Undefined values are NaN.
    """
    s = summarize_rows(rows)
    times = [r["planning_time_s"] for r in rows if math.isfinite(r["planning_time_s"])]
    metrics = {
        "success_rate": float(s["success_rate"]),
        "success_ci_low": float(s["success_low"]),
        "success_ci_high": float(s["success_high"]),
        "model_success_rate": float(s["model_success_rate"]),
        "exploitation_gap": float(s["exploitation_gap"]),
        "median_success_time_s": float(s["median_planning_time_s"]),
        "median_time_to_success_s": float(s["median_time_to_success_s"]),
        "median_transitions_to_success": float(s["median_transitions_to_success"]),
        "median_transitions": float(s["median_transitions"]),
        "mean_planning_time_s": float(np.mean(times)) if times else math.nan,
        "episodes": float(s["count"]),
        "successes": float(s["successes"]),
        "failures": float(s["failures"]),
    }
    if wall_time_s is not None and wall_time_s > 0:
        metrics["episodes_per_s"] = s["count"] / wall_time_s
    return metrics


def _table_metrics(episodes: pa.Table) -> dict[str, float]:
    """:func:`group_metrics` of stored episodes, their wall time being :func:`planning_seconds`."""
    return group_metrics(episodes.to_pylist(), wall_time_s=planning_seconds(episodes))


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


class ExperimentTracker(MlflowRecorder):
    """Logs one wmplan run to MLflow: a parent run and a child run per (planner, horizon).

    Args:
        tracking_uri: the store (see :func:`wmplan.storage.mlflow.tracking_uri`).
        experiment: the MLflow experiment's name; created on construction if missing (create it
            here, in the driver, before fanning out work).
        artifact_location: the folder URI under which a new experiment's artifacts go; by default
            :func:`~wmplan.storage.mlflow.artifact_root` of ``tracking_uri``.

    A run whose parent already exists in the experiment (same wmplan run id, e.g. a resumed run)
    is continued: its parent and child runs are reused and set running again.
    """

    START = "start_run"

    def __init__(self, *, tracking_uri: str, experiment: str, artifact_location: str | None = None) -> None:
        super().__init__(tracking_uri=tracking_uri, experiment=experiment, artifact_location=artifact_location)
        self.run_id: str | None = None
        self.task: str | None = None
        self._groups: dict[tuple[str, int], str] = {}
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
        model_training: Mapping[str, Any] | None = None,
    ) -> str:
        """Start (or continue) the parent run of wmplan run ``run_id``; returns its MLflow run id.

        Args:
            run_id: the wmplan run id (also the MLflow run's name).
            task: the task's name.
            code_version: e.g. the git commit the run's code came from.
            checkpoint_sha256: the world-model checkpoint's SHA-256 (None when there is none).
            config: the resolved config; logged flattened (:func:`flatten_params`).
            model_training: what the checkpoint cost to build
                (:func:`wmplan.platform.models.training_summary`), tagged ``wmplan.model.*`` (kind,
                training_seconds including rounds, rounds, members); None for none.

        Raises:
            TrackingError: a parameter of a continued run already holds another value.
        """
        params = flatten_params(config)
        tags = {TAG_TASK: task, TAG_CODE: code_version}
        if checkpoint_sha256:
            tags[TAG_CHECKPOINT] = checkpoint_sha256
        for name in ("kind", "training_seconds", "rounds", "members"):
            value = (model_training or {}).get(name)
            if value is not None:
                tags[f"{TAG_MODEL}{name}"] = f"{value:.1f}" if isinstance(value, float) else str(value)
        if _HEX.fullmatch(code_version or ""):
            tags["mlflow.source.git.commit"] = code_version
        key = {TAG_RUN_ID: run_id, TAG_ROLE: "parent"}
        run = self.open_run(name=run_id, key=key, tags=tags)
        if run.resumed:
            self._groups = self._find_groups(run.run_id)
            self._logged_parts = set(self.artifact_paths("results", run_id=run.run_id))
        clash = {k: (run.params[k], v) for k, v in params.items() if k in run.params and run.params[k] != v}
        if clash:
            name, (was, now) = next(iter(clash.items()))
            raise TrackingError(
                f"MLflow run {run.run_id} of wmplan run {run_id!r} was logged with {name}={was!r}; "
                f"the continued run has {now!r} ({len(clash)} parameter(s) differ)"
            )
        self.log_params({k: v for k, v in params.items() if k not in run.params}, run_id=run.run_id, tags={**key, **tags})
        self.parent_run_id, self.run_id, self.task = run.run_id, run_id, task
        return run.run_id

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
        parent = self.require_parent()
        results_dir = Path(results_dir)
        mine = select_group(read_table(results_dir, "episodes"), planner=planner, horizon=horizon)
        key = (planner, int(horizon))
        child = self._groups.get(key)
        if child is None:
            tags = {TAG_PARENT: parent, TAG_RUN_ID: self.run_id or "", TAG_ROLE: "group", TAG_TASK: self.task or "",
                    TAG_PLANNER: planner, TAG_HORIZON: str(int(horizon))}
            child = self._groups[key] = self.create_run(name=f"{planner}-h{int(horizon)}", tags=tags)
            old: dict[str, str] = {}
        else:
            old = dict(self.client.get_run(child).data.params)
            self.client.update_run(child, status="RUNNING")
        params = {"planner": planner, "horizon": str(int(horizon)), **flatten_params(options)}
        self.log_params({k: v for k, v in params.items() if k not in old}, run_id=child, tags={TAG_ROLE: "group"})
        metrics = _table_metrics(mine)
        self.log_metrics(metrics, run_id=child)

        self.log_preview(mine, run_id=child, html=True)
        residuals = select_group(read_table(results_dir, "residuals"), planner=planner, horizon=horizon)
        if residuals.num_rows:
            self.log_plot("residual_heatmap.png", run_id=child,
                          make=lambda: residual_heatmap_png(residuals, title=f"{planner}, H = {horizon}: dynamics residual"))
        if success_curves(mine):
            self.log_plot("success_vs_iterations.png", lambda: success_vs_iterations_png(mine), run_id=child)
        self.log_plot("trajectories.png", run_id=child,
                      make=lambda: self._trajectories(results_dir, mine, planner=planner, horizon=horizon, goals=goals, env=env))
        self.end_run(run_id=child, status="FINISHED")
        self._update_parent(results_dir, planner=planner, horizon=horizon, metrics=metrics)
        return child

    # finishing -----------------------------------------------------------------------------------

    def finish(self, *, status: Status = "FINISHED") -> None:
        """End the parent run with ``status`` (``"FINISHED"``, ``"FAILED"`` or ``"KILLED"``).

        Metrics and artifacts already logged stay; child runs still running get the same status.
        """
        check_status(status)
        parent = self.require_parent()
        for child in self._groups.values():
            if self.client.get_run(child).info.status == "RUNNING":
                self.end_run(run_id=child, status=status)
        self.end_run(run_id=parent, status=status)

    @property
    def child_run_ids(self) -> dict[tuple[str, int], str]:
        """MLflow run ids of the child runs so far, by (planner, horizon)."""
        return dict(self._groups)

    # helpers -------------------------------------------------------------------------------------

    def _find_groups(self, parent: str) -> dict[tuple[str, int], str]:
        out = {}
        for run in self.child_runs(parent=parent):
            tags = run.data.tags
            if TAG_PLANNER in tags and TAG_HORIZON in tags:
                out[(tags[TAG_PLANNER], int(tags[TAG_HORIZON]))] = run.info.run_id
        return out

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
        traj = select_group(read_table(results_dir, "trajectories"), planner=planner, horizon=horizon)
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
            drawn = draw_trajectory(image, env=env, states=states, goal=goal)
            verdict = "success" if row["success"] else ("failed" if row["failed"] else "miss")
            panels.append((f"episode {eid}: {verdict}, d = {row['final_distance']:.3g}", drawn))
        return trajectories_png(panels)

    def _update_parent(self, results_dir: Path, *, planner: str, horizon: int, metrics: Mapping[str, float]) -> None:
        parent = self.require_parent()
        self.log_metrics({f"{planner}/{k}": v for k, v in metrics.items()}, run_id=parent, step=int(horizon))
        episodes = read_table(results_dir, "episodes")
        self.log_metrics(_table_metrics(episodes), run_id=parent)
        for name in TABLES:
            folder = results_dir / name
            for part in sorted(folder.glob("part-*.parquet")) if folder.exists() else []:
                dest = f"results/{name}/{part.name}"
                if dest not in self._logged_parts:
                    self.log_files([part], artifact_path=f"results/{name}", run_id=parent)
                    self._logged_parts.add(dest)
        self.log_preview(episodes, run_id=parent)
        self.log_plot("success_vs_horizon.png", lambda: success_vs_horizon_png(episodes), run_id=parent)
        if success_curves(episodes):
            self.log_plot("success_vs_iterations.png", lambda: success_vs_iterations_png(episodes), run_id=parent)
        residuals = read_table(results_dir, "residuals")
        if residuals.num_rows:
            self.log_plot("final_residual_vs_horizon.png", lambda: final_residual_vs_horizon_png(residuals), run_id=parent)
