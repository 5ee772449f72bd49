"""An Optuna study in MLflow: one parent run per study, one child run per finished trial.

:class:`StudyTracker` builds on :class:`wmplan.storage.mlflow.MlflowRecorder`, the same recording
base as a run's :class:`wmplan.storage.tracking.ExperimentTracker` (an explicit client, no global
active run); its plots come from :mod:`wmplan.tuning.plots`. The study's storage and its Parquet
results directories stay the source of truth; this module only mirrors them so that trials can be
compared in the MLflow UI.

Run layout::

    parent run (name = study name, tags wmplan.study, wmplan.role = "study")
        params       the flattened tune config; after finish() also best.<option> (the best trial's options)
        metrics      test_success_rate, test_success_low, test_success_high, test_model_success_rate,
                     test_median_planning_time_s, test_episodes, best_tuning_success, best_trial, trials;
                     the best trial's compute: budget, best_predicted_transitions, best_sync_ratio (GRASP)
        plots/optimization_history.png   success per trial number with the best-so-far line
        plots/param_importances.png      Optuna's plot_param_importances (>= 2 complete trials, a varied param)
        plots/slice.png                  Optuna's plot_slice: success against noise_scale and sync_interval
                                         (else the first two params)
    child run per trial (name = "trial-N", tags mlflow.parentRunId, wmplan.trial = N,
                         wmplan.trial_state = COMPLETE / PRUNED / FAIL, wmplan.fail_reason when failed)
        params       the trial's options (user_attrs["options"], else its raw Optuna params), flattened
        metrics      success_rate (and median_planning_time_s with two objectives) when the trial has values;
                     success_rate_so_far per reported step (episodes); tuning/* episode metrics from its results;
                     its compute (user attributes): budget, predicted_transitions, sync_ratio (GRASP)
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from wmplan.storage.mlflow import (
    MAX_TAG_VALUE,
    TAG_PARENT,
    TAG_ROLE,
    MlflowRecorder,
    Status,
    check_status,
    flatten_params,
    metric_key,
)
from wmplan.storage.parquet import read_table
from wmplan.storage.tracking import group_metrics
from wmplan.tuning.plots import (
    SLICE_PARAMS,
    importances_possible,
    optimization_history_png,
    param_importances_png,
    slice_params,
    slice_png,
)
from wmplan.tuning.trials import COMPUTE_ATTRS, best_trial

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

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class StudyTracker(MlflowRecorder):
    """Mirrors one Optuna study into an MLflow experiment (parent run + one child run per trial).

    Args:
        tracking_uri: the MLflow tracking URI (e.g. :func:`wmplan.storage.mlflow.tracking_uri`).
        experiment: the experiment's name; created when missing, with its artifacts under
            :func:`~wmplan.storage.mlflow.artifact_root` of a local SQLite store.

    Raises:
        TrackingError: the experiment was deleted, or the store refused to create it.
    """

    START = "start"

    def __init__(self, *, tracking_uri: str, experiment: str) -> None:
        super().__init__(tracking_uri=tracking_uri, experiment=experiment)
        self.study_name: str | None = None
        self._trials: dict[int, str] = {}

    # parent --------------------------------------------------------------------------------------

    def start(self, *, study_name: str, config: Mapping[str, Any]) -> str:
        """Start the study's parent run, or continue it when the study already has one; returns its id.

        Args:
            study_name: the Optuna study's name (the run's name and its ``wmplan.study`` tag).
            config: the study's settings; logged flattened
                (:func:`~wmplan.storage.mlflow.flatten_params`). On a resumed study, settings
                that changed (e.g. a larger ``trials``) cannot be re-logged as params (MLflow
                params are immutable): their new value is kept as a tag ``resumed.<key>``.
        """
        params = flatten_params(config)
        run = self.open_run(name=study_name, key={TAG_STUDY: study_name, TAG_ROLE: "study"})
        self._trials = self._find_trials(run.run_id) if run.resumed else {}
        changed = {k: v for k, v in params.items() if k in run.params and run.params[k] != v}
        if changed:
            log.warning("study %r resumed with changed settings %s; kept as resumed.* tags", study_name, sorted(changed))
        tags = {TAG_STUDY: study_name, TAG_ROLE: "study"}
        tags.update({metric_key(f"resumed.{k}"): v[:MAX_TAG_VALUE] for k, v in changed.items()})
        self.log_params({k: v for k, v in params.items() if k not in run.params}, run_id=run.run_id, tags=tags)
        self.parent_run_id, self.study_name = run.run_id, study_name
        return run.run_id

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
        parent = self.require_parent()
        if trial.number in self._trials:
            return self._trials[trial.number]
        if trial.state not in _FINISHED:
            log.debug("trial %d is %s: not logged", trial.number, trial.state.name)
            return None
        tags = {TAG_PARENT: parent, TAG_STUDY: self.study_name or "", TAG_ROLE: "trial",
                TAG_TRIAL: str(trial.number), TAG_TRIAL_STATE: trial.state.name}
        reason = trial.user_attrs.get("fail_reason")
        if reason:
            tags[TAG_FAIL_REASON] = str(reason)[:MAX_TAG_VALUE]
        run_id = self.create_run(name=f"trial-{trial.number}", tags=tags, start_time=trial.datetime_start)
        self._trials[trial.number] = run_id
        try:
            options = trial.user_attrs.get("options")
            self.log_params(flatten_params(options if isinstance(options, Mapping) else trial.params), run_id=run_id,
                            tags={TAG_PARENT: parent})
            self._log_trial_metrics(run_id, trial)
            self._log_episodes(run_id, results_dir)
        except Exception:
            self.end_run(run_id=run_id, status="FAILED")
            raise
        self.end_run(run_id=run_id, status="FAILED" if trial.state == TrialState.FAIL else "FINISHED",
                     end_time=trial.datetime_complete)
        return run_id

    @property
    def trial_run_ids(self) -> dict[int, str]:
        """MLflow run ids of the logged trials, by trial number."""
        return dict(self._trials)

    # finishing -----------------------------------------------------------------------------------

    def finish(self, *, study: optuna.Study, test_summary: Mapping[str, Any], status: Status = "FINISHED") -> None:
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
        check_status(status)
        parent = self.require_parent()
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
            best = best_trial(complete)
            metrics["best_tuning_success"] = float(best.values[0])
            metrics["best_trial"] = float(best.number)
            metrics.update({("" if k == "budget" else "best_") + k: v for k, v in _compute_metrics(best).items()})
            options = best.user_attrs.get("options")
            flat = flatten_params(options if isinstance(options, Mapping) else best.params)
            old = dict(self.client.get_run(parent).data.params)
            params: dict[str, str] = {}
            tags = {TAG_BEST_TRIAL: str(best.number)}
            for k, v in flat.items():
                key = metric_key(f"best.{k}")
                if key not in old:
                    params[key] = v
                elif old[key] != v:
                    tags[key] = v[:MAX_TAG_VALUE]
            self.log_params(params, run_id=parent, tags=tags)
        self.log_metrics(metrics, run_id=parent)
        self.log_plot("optimization_history.png", lambda: optimization_history_png(trials), run_id=parent)
        if importances_possible(complete):
            self.log_plot("param_importances.png", lambda: param_importances_png(study), run_id=parent)
        else:
            log.info("study %r: too few complete trials with varied params for importances", study.study_name)
        names = slice_params(trials)
        if names:
            self.log_plot("slice.png", lambda: slice_png(study, params=names), run_id=parent)
        self.end_run(run_id=parent, status=status)

    # helpers -------------------------------------------------------------------------------------

    def _find_trials(self, parent: str) -> dict[int, str]:
        out: dict[int, str] = {}
        for run in self.child_runs(parent=parent):
            number = run.data.tags.get(TAG_TRIAL)
            if number is not None and number.lstrip("-").isdigit():
                out.setdefault(int(number), run.info.run_id)
        return out

    def _log_trial_metrics(self, run_id: str, trial: FrozenTrial) -> None:
        metrics: dict[str, float] = {}
        values = trial.values or []
        if values:
            metrics["success_rate"] = float(values[0])
        if len(values) > 1:
            metrics["median_planning_time_s"] = float(values[1])
        if trial.duration is not None:
            metrics["duration_s"] = trial.duration.total_seconds()
        metrics.update(_compute_metrics(trial))
        self.log_metrics(metrics, run_id=run_id)
        for step, value in sorted(trial.intermediate_values.items()):
            self.log_metrics({"success_rate_so_far": value}, run_id=run_id, step=int(step))

    def _log_episodes(self, run_id: str, results_dir: Path | None) -> None:
        if results_dir is None:
            return
        folder = Path(results_dir) / "episodes"
        parts = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        if not parts:
            return
        self.log_files(parts, artifact_path="episodes", run_id=run_id)
        try:
            table = read_table(Path(results_dir), "episodes")
            if table.num_rows:
                self.log_metrics({f"tuning/{k}": v for k, v in group_metrics(table.to_pylist()).items()}, run_id=run_id)
        except Exception as exc:  # noqa: BLE001 - the summary is a convenience; the parts are logged
            log.warning("cannot summarise the episodes in %s: %s: %s", folder, type(exc).__name__, exc)


def _compute_metrics(trial: FrozenTrial) -> dict[str, float]:
    """The trial's compute user attributes (:data:`~wmplan.tuning.trials.COMPUTE_ATTRS`) that are numbers."""
    attrs = trial.user_attrs
    return {k: float(attrs[k]) for k in COMPUTE_ATTRS
            if isinstance(attrs.get(k), (int, float)) and not isinstance(attrs.get(k), bool)}
