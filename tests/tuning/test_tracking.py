"""StudyTracker against a real SQLite MLflow store and hand-told in-memory Optuna studies."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from wmplan.platform.episode import EpisodeRecord
from wmplan.storage.parquet import write_records
from wmplan.tuning.tracking import StudyTracker

mlflow = pytest.importorskip("mlflow")
optuna.logging.set_verbosity(optuna.logging.WARNING)

PNG = b"\x89PNG\r\n\x1a\n"
CONFIG = {"task": "wall", "planner": "grasp", "horizon": 5, "trials": 4, "space": ["noise_scale=0.001:0.1:log"]}
SPACE = {"noise_scale": FloatDistribution(1e-3, 0.1, log=True), "sync_interval": IntDistribution(1, 10),
         "lr": FloatDistribution(0.01, 1.0)}




def _record(episode_id: int, success: bool) -> EpisodeRecord:
    states = np.array([[8.0, 10.0], [9.0, 11.0], [10.0, 12.0]])
    return EpisodeRecord(
        task="wall", planner="grasp", horizon=5, episode_id=episode_id, seed=episode_id, mode="open_loop",
        plan_seed=0, success=success, model_success=success, final_distance=0.5 if success else 9.0,
        model_final_distance=1.0, planning_time_s=1.0 + episode_id, iterations=3, replans=0, failed=False,
        error=None, executed_states=states, actions=np.zeros((2, 2)),
    )


def _told_study(out: Path, *, name: str = "wall-grasp-h5", directions: int = 1, complete: int = 3) -> optuna.Study:
    """Trials 0..complete-1 complete (varied params, episodes under ``out / trial-N``), then one
    pruned and one failed trial (no results directories)."""
    study = optuna.create_study(study_name=name, directions=["maximize", "minimize"][:directions])
    for i in range(complete):
        params = {"noise_scale": 0.002 * (i + 1) ** 2, "sync_interval": 1 + 3 * i, "lr": 0.1 + 0.2 * i}
        trial = optuna.trial.create_trial(
            params=params, distributions=SPACE, values=[0.25 * (i + 1), 2.0 - 0.1 * i][:directions],
            user_attrs={"options": {**params, "goal": {"weight": 1.0}}}, intermediate_values={2: 0.5 * i / (i + 1)})
        study.add_trial(trial)
        write_records(out / f"trial-{i}", f"{name}-trial-{i}",
                      [_record(e, success=e <= i) for e in range(4)])
    pruned = {"noise_scale": 0.05, "sync_interval": 9, "lr": 0.9}
    study.add_trial(optuna.trial.create_trial(params=pruned, distributions=SPACE, state=TrialState.PRUNED,
                                              user_attrs={"options": pruned}, intermediate_values={2: 0.0}))
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, state=TrialState.FAIL,
                                              user_attrs={"fail_reason": "state_lr must be > 0"}))
    return study


def _children(client, tracker: StudyTracker) -> list:
    return client.search_runs([tracker.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{tracker.parent_run_id}'")


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for a in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


def _log_all(tracker: StudyTracker, study: optuna.Study, out: Path) -> None:
    for trial in study.get_trials():
        tracker.log_trial(trial=trial, results_dir=out / f"trial-{trial.number}")


# -- tests ---------------------------------------------------------------------------------------------


def test_parent_and_one_child_per_trial(uri, tmp_path):
    out = tmp_path / "studies"
    study = _told_study(out)
    tracker = StudyTracker(tracking_uri=uri, experiment="tuning")
    parent_id = tracker.start(study_name=study.study_name, config=CONFIG)
    _log_all(tracker, study, out)

    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_id)
    assert parent.info.run_name == "wall-grasp-h5" and parent.data.tags["wmplan.study"] == "wall-grasp-h5"
    assert parent.data.params["horizon"] == "5" and parent.data.params["space"] == '["noise_scale=0.001:0.1:log"]'
    children = {int(r.data.tags["wmplan.trial"]): r for r in _children(client, tracker)}
    assert sorted(children) == [0, 1, 2, 3, 4]
    assert sorted(tracker.trial_run_ids) == [0, 1, 2, 3, 4]

    c1 = children[1]
    assert c1.info.run_name == "trial-1" and c1.data.tags["wmplan.trial_state"] == "COMPLETE"
    assert c1.data.params["noise_scale"] == str(0.008) and c1.data.params["goal.weight"] == "1.0"
    assert c1.data.metrics["success_rate"] == pytest.approx(0.5)
    assert "median_planning_time_s" not in c1.data.metrics
    assert c1.data.metrics["tuning/episodes"] == 4 and c1.data.metrics["tuning/success_rate"] == pytest.approx(0.5)
    assert c1.info.status == "FINISHED"
    parts = _artifacts(client, c1.info.run_id)
    assert parts and all(p.startswith("episodes/part-") and p.endswith(".parquet") for p in parts)

    pruned = children[3]
    assert pruned.data.tags["wmplan.trial_state"] == "PRUNED" and "success_rate" not in pruned.data.metrics
    assert pruned.data.metrics["success_rate_so_far"] == 0.0 and pruned.data.params["sync_interval"] == "9"
    assert _artifacts(client, pruned.info.run_id) == []  # no results directory

    failed = children[4]
    assert failed.data.tags["wmplan.trial_state"] == "FAIL"
    assert failed.data.tags["wmplan.fail_reason"] == "state_lr must be > 0"
    assert failed.info.status == "FAILED" and failed.data.params == {}


def test_two_objectives_log_the_planning_time(uri, tmp_path):
    out = tmp_path / "studies"
    study = _told_study(out, name="pareto", directions=2, complete=2)
    tracker = StudyTracker(tracking_uri=uri, experiment="tuning")
    tracker.start(study_name="pareto", config=CONFIG)
    run_id = tracker.log_trial(trial=study.trials[1], results_dir=None)
    metrics = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics
    assert metrics["success_rate"] == pytest.approx(0.5) and metrics["median_planning_time_s"] == pytest.approx(1.9)
    tracker.finish(study=study, test_summary={})  # importances use the first objective; no test metrics
    parent = mlflow.MlflowClient(tracking_uri=uri).get_run(tracker.parent_run_id)
    assert "test_success_rate" not in parent.data.metrics and parent.data.metrics["best_trial"] == 1


def test_logging_a_trial_twice_or_resuming_makes_one_child(uri, tmp_path):
    out = tmp_path / "studies"
    study = _told_study(out)
    tracker = StudyTracker(tracking_uri=uri, experiment="tuning")
    parent_id = tracker.start(study_name=study.study_name, config=CONFIG)
    first = tracker.log_trial(trial=study.trials[0], results_dir=out / "trial-0")
    assert tracker.log_trial(trial=study.trials[0], results_dir=out / "trial-0") == first

    # a new driver process resumes the study, with a larger trial budget
    again = StudyTracker(tracking_uri=uri, experiment="tuning")
    assert again.start(study_name=study.study_name, config={**CONFIG, "trials": 10}) == parent_id
    _log_all(again, study, out)
    client = mlflow.MlflowClient(tracking_uri=uri)
    numbers = sorted(int(r.data.tags["wmplan.trial"]) for r in _children(client, again))
    assert numbers == [0, 1, 2, 3, 4] and again.trial_run_ids[0] == first
    parent = client.get_run(parent_id)
    assert parent.data.params["trials"] == "4" and parent.data.tags["resumed.trials"] == "10"
    assert parent.info.status == "RUNNING"
    # another study in the same experiment gets its own parent
    other = StudyTracker(tracking_uri=uri, experiment="tuning")
    assert other.start(study_name="other", config=CONFIG) != parent_id


def test_unfinished_trials_are_not_logged(uri):
    study = optuna.create_study(study_name="s")
    running = study.ask()
    tracker = StudyTracker(tracking_uri=uri, experiment="tuning")
    tracker.start(study_name="s", config={})
    assert tracker.log_trial(trial=study.trials[running.number], results_dir=None) is None
    assert tracker.trial_run_ids == {}


def test_finish_logs_test_metrics_best_params_and_plots(uri, tmp_path):
    out = tmp_path / "studies"
    study = _told_study(out)
    tracker = StudyTracker(tracking_uri=uri, experiment="tuning")
    parent_id = tracker.start(study_name=study.study_name, config=CONFIG)
    _log_all(tracker, study, out)
    summary = {"count": 100, "successes": 61, "success_rate": 0.61, "success_low": 0.51, "success_high": 0.71,
               "model_success_rate": 0.8, "median_planning_time_s": 1.5, "failures": 0}
    tracker.finish(study=study, test_summary=summary)

    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_id)
    m = parent.data.metrics
    assert m["test_success_rate"] == pytest.approx(0.61) and m["test_success_low"] == pytest.approx(0.51)
    assert m["test_success_high"] == pytest.approx(0.71) and m["test_model_success_rate"] == pytest.approx(0.8)
    assert m["best_tuning_success"] == pytest.approx(0.75) and m["best_trial"] == 2 and m["test_episodes"] == 100
    assert m["trials"] == 5 and m["pruned_trials"] == 1 and m["failed_trials"] == 1
    assert parent.data.params["best.sync_interval"] == "7" and parent.data.params["best.goal.weight"] == "1.0"
    assert parent.data.tags["wmplan.best_trial"] == "2"
    assert parent.info.status == "FINISHED"

    plots = sorted(_artifacts(client, parent_id, "plots"))
    assert plots == ["plots/optimization_history.png", "plots/param_importances.png", "plots/slice.png"]
    folder = Path(client.download_artifacts(parent_id, "plots", str(tmp_path / "dl")))
    for name in ("optimization_history.png", "param_importances.png", "slice.png"):
        data = (folder / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000


def test_resumed_finish_with_another_best_keeps_the_old_params(uri, tmp_path):
    out = tmp_path / "studies"
    study = _told_study(out, complete=2)
    tracker = StudyTracker(tracking_uri=uri, experiment="tuning")
    parent_id = tracker.start(study_name=study.study_name, config=CONFIG)
    tracker.finish(study=study, test_summary={"success_rate": 0.5}, status="KILLED")
    assert mlflow.MlflowClient(tracking_uri=uri).get_run(parent_id).info.status == "KILLED"

    better = {"noise_scale": 0.03, "sync_interval": 2, "lr": 0.5}
    study.add_trial(optuna.trial.create_trial(params=better, distributions=SPACE, values=[0.95], user_attrs={"options": better}))
    again = StudyTracker(tracking_uri=uri, experiment="tuning")
    again.start(study_name=study.study_name, config=CONFIG)
    again.finish(study=study, test_summary={"success_rate": 0.9})
    parent = mlflow.MlflowClient(tracking_uri=uri).get_run(parent_id)
    assert parent.data.params["best.sync_interval"] == "4" and parent.data.tags["best.sync_interval"] == "2"
    assert parent.data.tags["wmplan.best_trial"] == "4" and parent.data.metrics["test_success_rate"] == pytest.approx(0.9)


def test_a_single_trial_skips_importances(uri, tmp_path):
    study = optuna.create_study(study_name="one")
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.3}, distributions={"lr": SPACE["lr"]}, values=[0.4]))
    tracker = StudyTracker(tracking_uri=uri, experiment="tuning")
    parent_id = tracker.start(study_name="one", config=CONFIG)
    tracker.log_trial(trial=study.trials[0], results_dir=tmp_path / "missing")
    tracker.finish(study=study, test_summary={"success_rate": math.nan, "success_low": math.nan})
    client = mlflow.MlflowClient(tracking_uri=uri)
    plots = sorted(_artifacts(client, parent_id, "plots"))
    assert plots == ["plots/optimization_history.png", "plots/slice.png"]  # slice over the first param (lr)
    metrics = client.get_run(parent_id).data.metrics
    assert math.isnan(metrics["test_success_rate"]) and metrics["best_tuning_success"] == pytest.approx(0.4)


def test_a_study_without_params_draws_only_the_history(uri):
    study = optuna.create_study(study_name="bare")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, state=TrialState.FAIL,
                                              user_attrs={"fail_reason": "boom"}))
    tracker = StudyTracker(tracking_uri=uri, experiment="tuning")
    parent_id = tracker.start(study_name="bare", config=CONFIG)
    tracker.finish(study=study, test_summary={}, status="FAILED")
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert _artifacts(client, parent_id, "plots") == ["plots/optimization_history.png"]
    assert client.get_run(parent_id).info.status == "FAILED"


def test_log_trial_needs_start(uri):
    from wmplan.storage.mlflow import TrackingError

    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, values=[0.1]))
    with pytest.raises(TrackingError, match="start"):
        StudyTracker(tracking_uri=uri, experiment="tuning").log_trial(trial=study.trials[0], results_dir=None)


def test_trial_and_best_compute_are_logged(uri):
    study = optuna.create_study()
    for i, ratio in enumerate((0.2, None)):
        attrs = {"options": {"lr": 0.1 * (i + 1)}, "budget": 5000, "predicted_transitions": 4800 + i, "sync_ratio": ratio}
        study.add_trial(optuna.trial.create_trial(params={"lr": 0.1 * (i + 1)}, distributions={"lr": SPACE["lr"]},
                                                  values=[0.5 * (i + 1)], user_attrs=attrs))
    tracker = StudyTracker(tracking_uri=uri, experiment="tuning")
    parent_id = tracker.start(study_name="budget", config=CONFIG)
    _log_all(tracker, study, Path("/nonexistent"))
    tracker.finish(study=study, test_summary={})
    client = mlflow.MlflowClient(tracking_uri=uri)
    first = client.get_run(tracker.trial_run_ids[0]).data.metrics
    assert (first["budget"], first["predicted_transitions"], first["sync_ratio"]) == (5000, 4800, pytest.approx(0.2))
    assert "sync_ratio" not in client.get_run(tracker.trial_run_ids[1]).data.metrics  # not GRASP: none
    parent = client.get_run(parent_id).data.metrics
    assert parent["best_trial"] == 1 and parent["budget"] == 5000 and parent["best_predicted_transitions"] == 4801
    assert "best_sync_ratio" not in parent
