"""Studies with real storage on a real local Ray: trial counts, parallel trials, resume, held-out test."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from wmplan.platform.errors import ConfigError
from wmplan.storage.parquet import read_table
from wmplan.tuning.study import TuneConfig, open_study, run_study


@pytest.fixture(autouse=True)
def mlflow_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


SPACE = ("iterations=1:3:int", "samples=8:32:int:log", "init_std=0.1:2:log")


def config_for(tmp_path, model, **changes):
    ckpt, data = model
    base = dict(study="s", task="wall", model=str(ckpt), data=str(data), planner="cem", horizon=2, trials=4,
                parallel=2, tuning_episodes=4, batch_size=2, test_episodes=4, storage=str(tmp_path / "studies.journal"),
                space=SPACE, actors=2, output=str(tmp_path / "out"))
    return TuneConfig(**{**base, **changes})


def test_study_finishes_its_trials_and_tests_on_other_pairs(ray_cluster, tmp_path, tiny_wall_model, mlflow_store):
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
    # MLflow: a parent run for the study with the held-out result, a child run per trial.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_store)
    runs = client.search_runs([client.get_experiment_by_name("wmplan-studies").experiment_id])
    parents = [r for r in runs if r.data.tags.get("wmplan.role") == "study"]
    children = [r for r in runs if r.data.tags.get("wmplan.role") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].data.metrics["test_success_rate"] == pytest.approx(result.test_summary["success_rate"])
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    plots = {f.path for f in client.list_artifacts(parents[0].info.run_id, "plots")}
    assert "plots/optimization_history.png" in plots and "plots/slice.png" in plots


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


def test_dashboard_answers_for_the_study(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import urllib.request

    from tests.jobs.servers import free_ports, wait_http

    storage = tmp_path / "studies.journal"
    study = open_study(TuneConfig(study="dash", storage=str(storage)))
    study.tell(study.ask(), 0.5)
    (port,) = free_ports(1)
    log = tmp_path / "dashboard.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "wmplan", "dashboard", "--storage", str(storage), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/studies", seconds=300, proc=proc, log=log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as response:
            studies = json.load(response)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["dash"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    missing = subprocess.run([sys.executable, "-m", "wmplan", "dashboard", "--storage", str(tmp_path / "none.journal")],
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "no study storage" in missing.stderr


def test_parallel_trials_on_postgresql_storage(ray_cluster, tmp_path, tiny_wall_model):
    import secrets

    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(dbname="postgres", host="127.0.0.1", port=5432, user="root", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    admin.autocommit = True
    db = f"wmplan_test_optuna_{secrets.token_hex(4)}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    url = f"postgresql+psycopg2://root@127.0.0.1:5432/{db}"
    try:
        result = run_study(config_for(tmp_path, tiny_wall_model, storage=url, trials=4, parallel=2))
        assert result.finished_trials == 4
        study = optuna.load_study(study_name="s", storage=url)
        params = [tuple(sorted(t.params.items())) for t in study.trials]
        assert len(study.trials) == 4 and len(set(params)) == 4  # distinct parameter sets, no duplicates
        with psycopg2.connect(dbname=db, host="127.0.0.1", port=5432, user="root") as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM trials")
            assert cur.fetchone()[0] == 4  # the trials live in PostgreSQL
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


def test_killed_tune_command_resumes_to_the_requested_trials(ray_head_address, tmp_path, tiny_wall_model):
    import os
    import subprocess
    import sys
    import time

    ckpt, data = tiny_wall_model
    journal = tmp_path / "studies.journal"
    args = [sys.executable, "-m", "wmplan", "tune", "--task", "wall", "--planner", "cem", "--horizon", "2",
            "--model", str(ckpt), "--data", str(data), "--study", "k", "--trials", "6", "--parallel", "1",
            "--tuning-episodes", "4", "--chunk", "2", "--test-episodes", "2", "--storage", str(journal),
            "--output", str(tmp_path / "out"), "--actors", "1"]
    args += [f"--space={item}" for item in ("iterations=20:30:int", "samples=32:64:int", "init_std=0.1:2:log")]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "RAY_ADDRESS": ray_head_address}  # join the session's Ray: both drivers would start one each otherwise
    driver = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 600  # generous: a busy machine runs trials slowly
    config = TuneConfig(study="k", storage=str(journal))
    while time.monotonic() < deadline:
        if journal.exists() and any(t.state.is_finished() for t in open_study(config).get_trials(deepcopy=False)):
            break
        time.sleep(0.2)
    driver.kill()
    driver.wait()
    before = open_study(config).get_trials()
    assert 1 <= sum(t.state.is_finished() for t in before) < 6, "the command must die part way"
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    trials = open_study(config).get_trials()
    assert sum(t.state.is_finished() for t in trials) == 6 and len(trials) == len({t.number for t in trials})
    orphans = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs["fail_reason"] == "the driver running it stopped" for t in orphans)
    assert "held-out test set" in out.stdout
