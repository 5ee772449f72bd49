"""The MLflow side of wmplan: where runs go, and one recording base for runs and studies.

Everything goes through an explicit :class:`mlflow.MlflowClient` bound to one tracking URI; no
global active run is used, so a driver process can log while its workers run elsewhere.
:class:`MlflowRecorder` holds what a wmplan run (:class:`wmplan.storage.tracking.ExperimentTracker`)
and an Optuna study (:class:`wmplan.tuning.tracking.StudyTracker`) record alike: the experiment
(created on first use), a parent run found again by its tags (so a resumed run or study continues
it), child runs, parameters, metrics, artifacts, previews and plots, and the run's end. Plots are
drawn elsewhere (:mod:`wmplan.storage.plots`): a recorder logs the PNG bytes it is given.

MLflow is imported inside functions: it takes a second or two to import.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

__all__ = [
    "TRACKING_URI_ENV",
    "PREVIEW_ROWS",
    "MAX_PARAM_VALUE",
    "MAX_KEY",
    "MAX_TAG_VALUE",
    "TAG_ROLE",
    "TAG_PARENT",
    "TAG_EXPERIMENT_KIND",
    "EXPERIMENT_KIND",
    "UI_RUNS_QUERY",
    "Status",
    "TrackingError",
    "OpenedRun",
    "MlflowRecorder",
    "tracking_uri",
    "artifact_root",
    "runs_page_url",
    "mlflow_client",
    "get_or_create_experiment",
    "flatten_params",
    "metric_key",
    "check_status",
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

MAX_TAG_VALUE = 5000
"""The longest tag value wmplan writes (MLflow's limit is 8000: well under it)."""

TAG_ROLE = "wmplan.role"
"""What a run is: ``parent`` or ``group`` (a wmplan run), ``study`` or ``trial`` (a study)."""
TAG_PARENT = "mlflow.parentRunId"
"""MLflow's tag that nests a child run under its parent in the UI."""

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

Status = Literal["FINISHED", "FAILED", "KILLED"]

_BATCH = 100  # MLflow accepts at most 100 params or tags per log_batch call
_METRIC_BATCH = 1000  # and at most 1000 metrics
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /:]")


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


def mlflow_client(uri: str) -> Any:
    """An ``mlflow.MlflowClient`` bound to the store ``uri``."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "experiment"
    return f"{slug[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


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


# -- parameters and keys -------------------------------------------------------------------------------


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
        return json.dumps(items, default=str, separators=(",", ":"))
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


def metric_key(text: str) -> str:
    """``text`` as an MLflow metric, parameter or tag key: refused characters become ``_``, cut to 250."""
    return _BAD_KEY_CHARS.sub("_", text)[:MAX_KEY]


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _millis(when: Any) -> int | None:
    return int(when.timestamp() * 1000) if when is not None else None


# -- the recording base --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenedRun:
    """A run found again or created by :meth:`MlflowRecorder.open_run`."""

    run_id: str
    params: dict[str, str]
    """The parameters it was logged with before (empty for a new run)."""
    resumed: bool
    """True when the run existed (and was set running again)."""


class MlflowRecorder:
    """One MLflow experiment, reached through an explicit client, and the parent run logged under it.

    Subclasses decide what a parent and its children are (a wmplan run and its (planner, horizon)
    groups; a study and its trials) and call these methods to record them. Methods that take a
    ``run_id`` log on that run, or on the parent when it is None.

    Args:
        tracking_uri: the store (see :func:`tracking_uri`).
        experiment: the MLflow experiment's name; created on construction if missing (create it
            here, in the driver, before fanning out work).
        artifact_location: the folder URI under which a new experiment's artifacts go; by default
            :func:`artifact_root` of ``tracking_uri``.

    Raises:
        TrackingError: the experiment was deleted, or the store refused to create it.
    """

    START = "start"
    """The method that opens the parent run, named in the error when it was not called."""

    def __init__(self, *, tracking_uri: str, experiment: str, artifact_location: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.client = mlflow_client(tracking_uri)
        location = artifact_location if artifact_location is not None else artifact_root(tracking_uri)
        self.experiment_id = get_or_create_experiment(self.client, name=experiment, artifact_location=location)
        self.parent_run_id: str | None = None

    # runs ----------------------------------------------------------------------------------------

    def require_parent(self) -> str:
        """The parent run's id.

        Raises:
            TrackingError: no parent run was opened yet.
        """
        if self.parent_run_id is None:
            raise TrackingError(f"no parent run: call {self.START}() first")
        return self.parent_run_id

    def open_run(self, *, name: str, key: Mapping[str, str], tags: Mapping[str, str] | None = None) -> OpenedRun:
        """The run of this experiment whose tags hold every ``key`` tag, set running again; else a new
        run named ``name`` with the ``key`` and ``tags`` tags (``tags`` are not written to a found run)."""
        found = self.find_run(key=key)
        if found is None:
            return OpenedRun(self.create_run(name=name, tags={**key, **(tags or {})}), {}, resumed=False)
        self.client.update_run(found.info.run_id, status="RUNNING")
        return OpenedRun(found.info.run_id, dict(found.data.params), resumed=True)

    def find_run(self, *, key: Mapping[str, str]) -> Any | None:
        """The first run of this experiment whose tags hold every ``key`` tag (an ``mlflow.entities.Run``), or None."""
        where = " AND ".join(f"tags.`{k}` = '{_quote(v)}'" for k, v in key.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=where, max_results=2)
        return runs[0] if runs else None

    def create_run(self, *, name: str, tags: Mapping[str, str], start_time: Any | None = None) -> str:
        """A new run named ``name`` with ``tags``; ``start_time`` (a datetime) backdates it. Returns its id."""
        return str(self.client.create_run(self.experiment_id, tags=dict(tags), run_name=name,
                                          start_time=_millis(start_time)).info.run_id)

    def child_runs(self, *, parent: str | None = None) -> list[Any]:
        """Every run nested under ``parent`` (by default the parent run), page by page."""
        parent = parent or self.require_parent()
        out: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{_quote(parent)}'",
                                           max_results=1000, page_token=token)
            out += list(page)
            token = page.token
            if not token:
                return out

    def end_run(self, *, status: Status, run_id: str | None = None, end_time: Any | None = None) -> None:
        """End a run with ``status``; ``end_time`` (a datetime) backdates its end."""
        check_status(status)
        self.client.set_terminated(run_id or self.require_parent(), status=status, end_time=_millis(end_time))

    # what a run holds ----------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, str], *, run_id: str | None = None, tags: Mapping[str, str] | None = None) -> None:
        """Log parameters (strings, e.g. from :func:`flatten_params`) and tags, in batches MLflow accepts."""
        from mlflow.entities import Param, RunTag

        run_id = run_id or self.require_parent()
        p = [Param(k, v) for k, v in params.items()]
        t = [RunTag(k, v) for k, v in (tags or {}).items()]
        for i in range(0, max(len(p), len(t), 1), _BATCH):
            self.client.log_batch(run_id, params=p[i : i + _BATCH], tags=t[i : i + _BATCH])

    def log_metrics(self, metrics: Mapping[str, float], *, run_id: str | None = None, step: int = 0) -> None:
        """Log ``metrics`` at ``step`` (e.g. a horizon); keys pass through :func:`metric_key`."""
        from mlflow.entities import Metric

        run_id = run_id or self.require_parent()
        now = int(time.time() * 1000)
        items = [Metric(metric_key(k), float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), _METRIC_BATCH):
            self.client.log_batch(run_id, metrics=items[i : i + _METRIC_BATCH])

    def log_plot(self, name: str, make: Callable[[], bytes], *, run_id: str | None = None) -> bool:
        """Log the PNG bytes ``make()`` returns as ``plots/NAME``; returns whether it was logged.

        A plot that cannot be drawn is skipped with a warning: a plot never fails a run.
        """
        run_id = run_id or self.require_parent()
        with tempfile.TemporaryDirectory(prefix="wmplan-plot-") as tmp:
            path = Path(tmp) / name
            try:
                path.write_bytes(make())
            except Exception as exc:  # noqa: BLE001 - a plot must never fail the run
                log.warning("skipping plot %s: %s: %s", name, type(exc).__name__, exc)
                return False
            self.client.log_artifact(run_id, str(path), artifact_path="plots")
        return True

    def log_preview(self, episodes: pa.Table, *, run_id: str | None = None, html: bool = False) -> None:
        """Log the first :data:`PREVIEW_ROWS` episode rows (by planner, horizon, episode) as
        ``preview/episodes.json`` (a table in the MLflow UI) and, with ``html``, ``preview/episodes.html``.
        A preview logged before is replaced."""
        run_id = run_id or self.require_parent()
        frame = episodes.sort_by([("planner", "ascending"), ("horizon", "ascending"), ("episode_id", "ascending")])
        frame = frame.slice(0, PREVIEW_ROWS).drop_columns(["run_id"]).to_pandas()
        present = {a.path for a in self.client.list_artifacts(run_id, "preview")}
        with tempfile.TemporaryDirectory(prefix="wmplan-preview-") as tmp:
            if "preview/episodes.json" not in present:
                self.client.log_table(run_id, data=frame, artifact_file="preview/episodes.json")
            else:  # log_table would append to the old table: replace the file (its table tag is set already)
                path = Path(tmp) / "episodes.json"
                frame.to_json(path, orient="split", index=False, date_format="iso")
                self.client.log_artifact(run_id, str(path), artifact_path="preview")
            if html:
                path = Path(tmp) / "episodes.html"
                path.write_text(frame.to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4g}"), encoding="utf-8")
                self.client.log_artifact(run_id, str(path), artifact_path="preview")

    def log_files(self, paths: Sequence[str | os.PathLike[str]], *, artifact_path: str, run_id: str | None = None) -> None:
        """Log files as artifacts under ``artifact_path``."""
        run_id = run_id or self.require_parent()
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)

    def artifact_paths(self, path: str, *, run_id: str | None = None) -> list[str]:
        """Every artifact file of a run under ``path``, recursively (e.g. ``results/episodes/part-0.parquet``)."""
        run_id = run_id or self.require_parent()
        out: list[str] = []
        for info in self.client.list_artifacts(run_id, path):
            out += self.artifact_paths(info.path, run_id=run_id) if info.is_dir else [info.path]
        return out


def check_status(status: str) -> None:
    """Raise ValueError unless ``status`` is one a run may end with (see :data:`Status`)."""
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
