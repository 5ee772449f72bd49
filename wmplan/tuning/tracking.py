"""An Optuna study in MLflow: one parent run per study, one child run per finished trial.

Like :class:`wmplan.storage.tracking.ExperimentTracker`, everything goes through an explicit
:class:`mlflow.MlflowClient` bound to one tracking URI (no global active run). The study's
storage and its Parquet results directories stay the source of truth; this module only mirrors
them so that trials can be compared in the MLflow UI.

Run layout::

    parent run (name = study name, tags wmplan.study, wmplan.role = "study")
        params       the flattened tune config; after finish() also best.<option> (the best trial's options)
        metrics      test_success_rate, test_success_low, test_success_high, test_model_success_rate,
                     test_median_planning_time_s, test_episodes, best_tuning_success, best_trial, trials
        plots/optimization_history.png   success per trial number with the best-so-far line
        plots/param_importances.png      optuna.importance.get_param_importances (>= 2 complete trials)
        plots/slice.png                  success against noise_scale and sync_interval (else the first two params)
    child run per trial (name = "trial-N", tags mlflow.parentRunId, wmplan.trial = N,
                         wmplan.trial_state = COMPLETE / PRUNED / FAIL, wmplan.fail_reason when failed)
        params       the trial's options (user_attrs["options"], else its raw Optuna params), flattened
        metrics      success_rate (and median_planning_time_s with two objectives) when the trial has values;
                     success_rate_so_far per reported step (episodes); tuning/* episode metrics from its results
        episodes/part-*.parquet          the trial's episodes parts, when its results directory exists

Resuming a study is safe: :meth:`StudyTracker.start` reuses the study's parent run, and
:meth:`StudyTracker.log_trial` does nothing for a trial number that already has a child run.

Typical use from the study driver::

    tracker = StudyTracker(tracking_uri=tracking_uri(work_dir), experiment="tuning")
    tracker.start(study_name=config.name, config=dataclasses.asdict(config))
    ...  # after each study.tell(...):
    tracker.log_trial(trial=study.trials[number], results_dir=out / f"trial-{number}")
    ...
    tracker.finish(study=study, test_summary=summarize(test_records))  # or status="FAILED"
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from wmplan.storage.tracking import (
    TAG_PARENT,
    TAG_ROLE,
    MAX_KEY,
    TrackingError,
    _client,
    _figure,
    _png,
    _quote,
    _records_from_episodes,
    artifact_root,
    flatten_params,
    get_or_create_experiment,
    group_metrics,
)

__all__ = ["StudyTracker", "TAG_STUDY", "TAG_TRIAL", "TAG_TRIAL_STATE", "TAG_FAIL_REASON", "SLICE_PARAMS"]

log = logging.getLogger(__name__)

TAG_STUDY = "wmplan.study"
"""Tag naming the study on its parent and child runs."""
TAG_TRIAL = "wmplan.trial"
"""Tag holding a child run's trial number."""
TAG_TRIAL_STATE = "wmplan.trial_state"
"""Tag holding a child run's trial state: COMPLETE, PRUNED or FAIL."""
TAG_FAIL_REASON = "wmplan.fail_reason"
"""Tag holding why a failed trial failed (its user attribute ``fail_reason``)."""
TAG_BEST_TRIAL = "wmplan.best_trial"
SLICE_PARAMS = ("noise_scale", "sync_interval")
"""The parameters the slice plot shows when the study has them."""

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
_MAX_TAG = 5000  # MLflow's tag value limit is 8000; stay well under it
_BATCH = 100


class StudyTracker:
    """Mirrors one Optuna study into an MLflow experiment (parent run + one child run per trial).

    Args:
        tracking_uri: the MLflow tracking URI (e.g. :func:`wmplan.storage.tracking.tracking_uri`).
        experiment: the experiment's name; created when missing, with its artifacts under
            :func:`~wmplan.storage.tracking.artifact_root` of a local SQLite store.

    Raises:
        TrackingError: the experiment was deleted, or the store refused to create it.
    """

    def __init__(self, *, tracking_uri: str, experiment: str) -> None:
        self.tracking_uri = tracking_uri
        self.client = _client(tracking_uri)
        self.experiment_id = get_or_create_experiment(self.client, name=experiment,
                                                      artifact_location=artifact_root(tracking_uri))
        self.parent_run_id: str | None = None
        self.study_name: str | None = None
        self._trials: dict[int, str] = {}

    # parent --------------------------------------------------------------------------------------

    def start(self, *, study_name: str, config: Mapping[str, Any]) -> str:
        """Start the study's parent run, or continue it when the study already has one; returns its id.

        Args:
            study_name: the Optuna study's name (the run's name and its ``wmplan.study`` tag).
            config: the study's settings; logged flattened
                (:func:`~wmplan.storage.tracking.flatten_params`). On a resumed study, settings
                that changed (e.g. a larger ``trials``) cannot be re-logged as params (MLflow
                params are immutable): their new value is kept as a tag ``resumed.<key>``.
        """
        from mlflow.entities import Param, RunTag

        params = flatten_params(config)
        tags = {TAG_STUDY: study_name, TAG_ROLE: "study"}
        existing = self._find(f"tags.`{TAG_STUDY}` = '{_quote(study_name)}' AND tags.`{TAG_ROLE}` = 'study'")
        if existing is None:
            run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=study_name).info.run_id
            old: dict[str, str] = {}
            self._trials = {}
        else:
            run_id = existing.info.run_id
            old = dict(existing.data.params)
            self.client.update_run(run_id, status="RUNNING")
            self._trials = self._find_trials(run_id)
        changed = {k: v for k, v in params.items() if k in old and old[k] != v}
        if changed:
            log.warning("study %r resumed with changed settings %s; kept as resumed.* tags", study_name, sorted(changed))
        tag_list = [RunTag(k, v) for k, v in tags.items()]
        tag_list += [RunTag(_key(f"resumed.{k}"), v[:_MAX_TAG]) for k, v in changed.items()]
        self._batch(run_id, params=[Param(k, v) for k, v in params.items() if k not in old], tags=tag_list)
        self.parent_run_id, self.study_name = run_id, study_name
        return run_id

    # children ------------------------------------------------------------------------------------

    def log_trial(self, *, trial: FrozenTrial, results_dir: Path | None) -> str | None:
        """Log a finished trial as a child run; returns its run id (None for an unfinished trial).

        A trial number that already has a child run (a resumed study) is not logged again: the
        existing run's id is returned.

        Args:
            trial: the trial (``study.trials[n]`` or ``study.get_trials()``), finished: COMPLETE,
                PRUNED or FAIL. RUNNING or WAITING trials are skipped.
            results_dir: the trial's results directory (``<output>/<study>/trial-N``); its
                ``episodes/*.parquet`` parts are logged as artifacts when it exists. None: no artifacts.

        Raises:
            TrackingError: :meth:`start` was not called.
        """
        from mlflow.entities import Param, RunTag

        parent = self._require_parent()
        if trial.number in self._trials:
            return self._trials[trial.number]
        if trial.state not in _FINISHED:
            log.debug("trial %d is %s: not logged", trial.number, trial.state.name)
            return None
        tags = {TAG_PARENT: parent, TAG_STUDY: self.study_name or "", TAG_ROLE: "trial",
                TAG_TRIAL: str(trial.number), TAG_TRIAL_STATE: trial.state.name}
        reason = trial.user_attrs.get("fail_reason")
        if reason:
            tags[TAG_FAIL_REASON] = str(reason)[:_MAX_TAG]
        run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=f"trial-{trial.number}",
                                        start_time=_millis(trial.datetime_start)).info.run_id
        self._trials[trial.number] = run_id
        try:
            options = trial.user_attrs.get("options")
            params = flatten_params(options if isinstance(options, Mapping) else trial.params)
            self._batch(run_id, params=[Param(k, v) for k, v in params.items()], tags=[RunTag(TAG_PARENT, parent)])
            self._log_trial_metrics(run_id, trial)
            self._log_episodes(run_id, results_dir)
        except Exception:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        status = "FAILED" if trial.state == TrialState.FAIL else "FINISHED"
        self.client.set_terminated(run_id, status=status, end_time=_millis(trial.datetime_complete))
        return run_id

    @property
    def trial_run_ids(self) -> dict[int, str]:
        """MLflow run ids of the logged trials, by trial number."""
        return dict(self._trials)

    # finishing -----------------------------------------------------------------------------------

    def finish(self, *, study: optuna.Study, test_summary: Mapping[str, Any], status: str = "FINISHED") -> None:
        """Log the study's outcome on the parent run, draw its plots and end the parent run.

        Args:
            study: the study (its best trial: highest success, on a tie the fastest).
            test_summary: :func:`~wmplan.platform.episode.summarize` of the held-out test run
                (may be empty, e.g. when the study failed before the test run).
            status: ``"FINISHED"``, ``"FAILED"`` or ``"KILLED"``.

        Best options become params ``best.<option>``; one already logged with another value (a
        resumed study whose best trial changed) becomes a tag ``best.<option>`` instead. A plot
        that cannot be drawn is skipped with a warning; it never fails the call.
        """
        from mlflow.entities import Param, RunTag

        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status must be FINISHED, FAILED or KILLED, got {status!r}")
        parent = self._require_parent()
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
        metrics: dict[str, float] = {
            "trials": float(sum(1 for t in trials if t.state in _FINISHED)),
            "complete_trials": float(len(complete)),
            "pruned_trials": float(sum(1 for t in trials if t.state == TrialState.PRUNED)),
            "failed_trials": float(sum(1 for t in trials if t.state == TrialState.FAIL)),
        }
        for name, key in (("test_success_rate", "success_rate"), ("test_success_low", "success_low"),
                          ("test_success_high", "success_high"), ("test_model_success_rate", "model_success_rate"),
                          ("test_median_planning_time_s", "median_planning_time_s"), ("test_episodes", "count")):
            if key in test_summary and test_summary[key] is not None:
                metrics[name] = float(test_summary[key])
        if complete:
            from wmplan.tuning.study import best_trial

            best = best_trial(complete)
            metrics["best_tuning_success"] = float(best.values[0])
            metrics["best_trial"] = float(best.number)
            options = best.user_attrs.get("options")
            flat = flatten_params(options if isinstance(options, Mapping) else best.params)
            old = dict(self.client.get_run(parent).data.params)
            params, tags = [], [RunTag(TAG_BEST_TRIAL, str(best.number))]
            for k, v in flat.items():
                key = _key(f"best.{k}")
                if key not in old:
                    params.append(Param(key, v))
                elif old[key] != v:
                    tags.append(RunTag(key, v[:_MAX_TAG]))
            self._batch(parent, params=params, tags=tags)
        self._log_metrics(parent, metrics)
        with tempfile.TemporaryDirectory(prefix="wmplan-study-") as tmp:
            tmpdir = Path(tmp)
            self._log_png(parent, tmpdir / "optimization_history.png", lambda: optimization_history_png(trials))
            if _importances_possible(complete):
                self._log_png(parent, tmpdir / "param_importances.png", lambda: param_importances_png(study))
            else:
                log.info("study %r: too few complete trials with varied params for importances", study.study_name)
            if _slice_params(trials):
                self._log_png(parent, tmpdir / "slice.png", lambda: slice_png(trials))
        self.client.set_terminated(parent, status=status)

    # helpers -------------------------------------------------------------------------------------

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            raise TrackingError("no parent run: call start() first")
        return self.parent_run_id

    def _find(self, filter_string: str) -> Any | None:
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=2)
        return runs[0] if runs else None

    def _find_trials(self, parent: str) -> dict[int, str]:
        out: dict[int, str] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent}'",
                                           max_results=1000, page_token=token)
            for run in page:
                number = run.data.tags.get(TAG_TRIAL)
                if number is not None and number.lstrip("-").isdigit():
                    out.setdefault(int(number), run.info.run_id)
            token = page.token
            if not token:
                return out

    def _batch(self, run_id: str, *, params: Sequence[Any] = (), tags: Sequence[Any] = ()) -> None:
        params, tags = list(params), list(tags)
        for i in range(0, max(len(params), len(tags), 1), _BATCH):
            self.client.log_batch(run_id, params=params[i : i + _BATCH], tags=tags[i : i + _BATCH])

    def _log_metrics(self, run_id: str, metrics: Mapping[str, float], *, step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_key(k), float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def _log_trial_metrics(self, run_id: str, trial: FrozenTrial) -> None:
        from mlflow.entities import Metric

        metrics: dict[str, float] = {}
        values = trial.values or []
        if values:
            metrics["success_rate"] = float(values[0])
        if len(values) > 1:
            metrics["median_planning_time_s"] = float(values[1])
        if trial.duration is not None:
            metrics["duration_s"] = trial.duration.total_seconds()
        self._log_metrics(run_id, metrics)
        now = int(time.time() * 1000)
        steps = [Metric("success_rate_so_far", float(v), now, int(s)) for s, v in sorted(trial.intermediate_values.items())]
        for i in range(0, len(steps), 1000):
            self.client.log_batch(run_id, metrics=steps[i : i + 1000])

    def _log_episodes(self, run_id: str, results_dir: Path | None) -> None:
        if results_dir is None:
            return
        folder = Path(results_dir) / "episodes"
        parts = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        if not parts:
            return
        for part in parts:
            self.client.log_artifact(run_id, str(part), artifact_path="episodes")
        try:
            from wmplan.storage.parquet import read_table

            table = read_table(Path(results_dir), "episodes")
            if table.num_rows:
                self._log_metrics(run_id, {f"tuning/{k}": v for k, v in group_metrics(_records_from_episodes(table)).items()})
        except Exception as exc:  # noqa: BLE001 - the summary is a convenience; the parts are logged
            log.warning("cannot summarise the episodes in %s: %s: %s", folder, type(exc).__name__, exc)

    def _log_png(self, run_id: str, path: Path, make: Callable[[], bytes]) -> None:
        try:
            path.write_bytes(make())
        except Exception as exc:  # noqa: BLE001 - a plot must never fail the study
            log.warning("skipping plot %s: %s: %s", path.name, type(exc).__name__, exc)
            return
        self.client.log_artifact(run_id, str(path), artifact_path="plots")


# -- plots ---------------------------------------------------------------------------------------------


def optimization_history_png(trials: Sequence[FrozenTrial]) -> bytes:
    """Success per trial number: complete trials as dots with the best-so-far line, pruned ones at
    their last reported success (crosses), failed ones as ticks at the bottom."""
    fig, canvas = _figure(6.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.values), key=lambda t: t.number)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if complete:
        xs = [t.number for t in complete]
        ys = [t.values[0] for t in complete]
        ax.plot(xs, ys, "o", color="tab:blue", label="complete")
        ax.step(xs, np.maximum.accumulate(ys), where="post", color="tab:red", label="best so far")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.plot([t.number for t in pruned], last, "x", color="tab:gray", label="pruned (last report)")
    if failed:
        ax.plot([t.number for t in failed], [0.0] * len(failed), "|", color="black", markersize=12, label="failed")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("tuning success rate")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    if complete or pruned or failed:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _png(fig, canvas)


def param_importances_png(study: optuna.Study) -> bytes:
    """A horizontal bar chart of :func:`optuna.importance.get_param_importances` for the success objective.

    Raises:
        ValueError: the study has no importances to show (Optuna's own errors propagate too).
    """
    importances = _importances(study)
    if not importances:
        raise ValueError("no parameter importances")
    names = list(importances)[::-1]
    fig, canvas = _figure(6.0, 1.0 + 0.4 * len(names))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance for success (normalised)")
    ax.set_title("parameter importances")
    fig.tight_layout()
    return _png(fig, canvas)


def slice_png(trials: Sequence[FrozenTrial]) -> bytes:
    """Success of the complete trials against each of :func:`_slice_params` (one panel each)."""
    names = _slice_params(trials)
    if not names:
        raise ValueError("the trials have no parameters")
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    fig, canvas = _figure(4.0 * len(names), 3.8)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        have = [t for t in complete if name in t.params]
        dist = next((t.distributions[name] for t in trials if name in t.distributions), None)
        xs: list[Any] = [t.params[name] for t in have]
        ys = [t.values[0] for t in have]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            labels = [str(c) for c in dist.choices]
            ax.set_xticks(range(len(labels)), labels)
            xs = [labels.index(str(x)) if str(x) in labels else -1 for x in xs]
        elif getattr(dist, "log", False) and all(isinstance(x, (int, float)) and x > 0 for x in xs):
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on narrow ranges
        ax.scatter(xs, ys, c=[t.number for t in have], cmap="viridis", s=25)
        ax.set_xlabel(name)
        if i == 0:
            ax.set_ylabel("tuning success rate")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    fig.suptitle("success by parameter (colour: trial number)")
    fig.tight_layout()
    return _png(fig, canvas)


def _importances(study: optuna.Study) -> dict[str, float]:
    if len(study.directions) == 1:
        return optuna.importance.get_param_importances(study)
    # A target on a multi-objective study: Optuna's default (PED-ANOVA) explains *low* targets, so
    # a maximised success rate is negated.
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    with warnings.catch_warnings():  # Optuna warns about exactly this whenever a target is given
        warnings.filterwarnings("ignore", message=".*achieve low `target` values.*")
        return optuna.importance.get_param_importances(study, target=lambda t: sign * t.values[0])


def _slice_params(trials: Sequence[FrozenTrial]) -> list[str]:
    """``noise_scale`` and ``sync_interval`` when the study has them, else its first two params."""
    present: list[str] = []
    for t in trials:
        for name in t.distributions:
            if name not in present:
                present.append(name)
    preferred = [n for n in SLICE_PARAMS if n in present]
    return preferred if preferred else sorted(present)[:2]


def _importances_possible(complete: Sequence[FrozenTrial]) -> bool:
    """At least two complete trials, and a param that took more than one value among them."""
    if len(complete) < 2:
        return False
    names = {n for t in complete for n in t.params}
    return any(len({repr(t.params.get(n)) for t in complete if n in t.params}) > 1 for n in names)


def _key(text: str) -> str:
    from wmplan.storage.tracking import _metric_key

    return _metric_key(text)[:MAX_KEY]


def _millis(when: Any) -> int | None:
    return int(when.timestamp() * 1000) if when is not None else None

