"""Studies with real storage on a real local Ray: trial counts, parallel trials, resume, held-out test."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from wmplan.platform.errors import ConfigError
from wmplan.storage.parquet import read_table
from wmplan.tuning.study import TuneConfig, open_study, run_study


SPACE = ("iterations=1:3:int", "samples=8:32:int:log", "init_std=0.1:2:log")


def config_for(tmp_path, model, **changes):
    ckpt, data = model
    base = dict(study="s", task="wall", model=str(ckpt), data=str(data), planner="cem", horizon=2, trials=4,
                parallel=2, tuning_episodes=4, chunk=2, test_episodes=4, storage=str(tmp_path / "studies.journal"),
                space=SPACE, actors=2, output=str(tmp_path / "out"))
    return TuneConfig(**{**base, **changes})


def test_study_finishes_its_trials_and_tests_on_other_pairs(ray_cluster, tmp_path, tiny_wall_model):
    result = run_study(config_for(tmp_path, tiny_wall_model))
    assert result.finished_trials == 4
    study = open_study(config_for(tmp_path, tiny_wall_model))
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # parallel trials got distinct options
    assert result.test_pairs_disjoint and result.test_summary["count"] == 4
    assert study.user_attrs["best_trial"] == result.best_trial
    assert result.best_options == study.trials[result.best_trial].user_attrs["options"]
    test_rows = read_table(tmp_path / "out" / "s" / "test")
    assert len(test_rows) == 4
    for t in trials:
        if t.state == TrialState.COMPLETE:
            rows = read_table(tmp_path / "out" / "s" / f"trial-{t.number}").to_pylist()
            assert len(rows) == 4 and t.values[0] == pytest.approx(sum(r["success"] for r in rows) / 4)


def test_study_resumes_without_duplicates_and_keeps_failed_trials(ray_cluster, tmp_path, tiny_wall_model):
    run_study(config_for(tmp_path, tiny_wall_model, trials=2))
    study = open_study(config_for(tmp_path, tiny_wall_model))
    orphan = study.ask()  # a trial a killed driver left RUNNING
    result = run_study(config_for(tmp_path, tiny_wall_model, trials=5))
    assert result.finished_trials == 5
    trials = open_study(config_for(tmp_path, tiny_wall_model)).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4]  # no duplicates, the orphan among them
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [orphan.number]
    assert failed[0].user_attrs["fail_reason"] == "the driver running it stopped"
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials if t.number != orphan.number)


def test_bad_study_configs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown planner 'gras'"):
        TuneConfig(planner="gras")
    with pytest.raises(ConfigError, match="noise_scal"):
        TuneConfig(planner="grasp", space=("noise_scal=0.1:1:log",))
    with pytest.raises(ConfigError, match="trials must be >= 1"):
        TuneConfig(trials=0)
    open_study(TuneConfig(study="two", storage=str(tmp_path / "j.journal")))
    with pytest.raises(ConfigError, match="exists with 1 objective"):
        open_study(TuneConfig(study="two", storage=str(tmp_path / "j.journal"), time_objective=True))
