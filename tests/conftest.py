from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole test session (starting one costs seconds)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=200 * 1024**2,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_head_address(ray_cluster) -> str:
    """The session Ray's head (its GCS address), for subprocesses of the command to join with ``RAY_ADDRESS``.

    A ``wmplan run`` subprocess that starts a local Ray of its own spends about 10 s of a busy 2-core machine
    on it (measured: 18 s for a small run, 8 s joined). Only for tests that are not about Ray's own start,
    teardown or log lines; those (tests/jobs/test_services.py, test_cluster.py, test_multinode.py) start their own.
    """
    return ray_cluster.get_runtime_context().gcs_address


@pytest.fixture(scope="session")
def tiny_wall_model(tmp_path_factory):
    """A small data set and a barely trained wall model: enough for runs that test the platform."""
    import torch

    from wmplan.platform.data import DataConfig
    from wmplan.platform.models import TrainConfig
    from wmplan.platform.workflow import prepare_model

    root = tmp_path_factory.mktemp("wall-model")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    prepare_model("wall", data_path=root / "wall.parquet", checkpoint=root / "ckpt",
                  data_config=DataConfig(env="wall", episodes=12, steps=30, val_fraction=0.25),
                  train_config=TrainConfig(steps=30, batch_size=32, hidden=16, depth=1, rollout_steps=2))
    torch.set_num_threads(threads)
    return root / "ckpt", root / "wall.parquet"


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory) -> Path:
    """A migrated, empty MLflow SQLite store (migrating a new one takes ~1.5 s: do it once)."""
    import mlflow

    folder = tmp_path_factory.mktemp("mlflow-template")
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    return folder / "mlflow.db"


@pytest.fixture
def uri(tmp_path, _mlflow_template_db, monkeypatch) -> str:
    """A fresh MLflow SQLite store in tmp_path, also set as MLFLOW_TRACKING_URI."""
    import shutil

    from wmplan.storage.mlflow import tracking_uri

    shutil.copy(_mlflow_template_db, tmp_path / "mlflow.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # nothing may fall back to the cwd's ./mlflow.db
    return uri


# -- tiers ---------------------------------------------------------------------------------------------

INTEGRATION_FIXTURES = frozenset({"ray_cluster", "ray_head_address", "uri", "mlflow_store", "tiny_wall_model", "recorded_run", "ui_process"})
"""Fixtures that start real services (Ray, MLflow stores and servers) or train a model: their tests are integration tests."""


INTEGRATION_PATHS = ("/tests/jobs/", "/tests/test_cli.py", "/tests/platform/test_visual.py")
"""Modules whose tests run the command in subprocesses, start services, or train models in their fixtures."""


def pytest_collection_modifyitems(config, items):
    """Every test is in one tier: ``integration`` (real Ray, MLflow, PostgreSQL, browsers, subprocesses of the
    command, training) when it is marked so or uses a fixture of :data:`INTEGRATION_FIXTURES` or lives in
    one of :data:`INTEGRATION_PATHS`; otherwise ``unit`` (fast, in-process). ``pytest -m unit`` runs the fast tier."""
    for item in items:
        path = item.path.as_posix()
        if (item.get_closest_marker("integration") or INTEGRATION_FIXTURES & set(item.fixturenames)
                or any(part in path for part in INTEGRATION_PATHS)):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)
