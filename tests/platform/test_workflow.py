"""End to end on every task: data, a small trained model, planned episodes judged in the simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wmplan.platform.data import DataConfig, read_dataset
from wmplan.platform.models import TrainConfig, load_world_model
from wmplan.platform.workflow import format_outcomes, plan_task, prepare_model

TINY_OPTIONS = {
    "grasp": dict(iterations=12, sync_interval=6, sync_steps=2),
    "gd": dict(iterations=8),
    "cem": dict(iterations=2, samples=16, elites=4),
}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("env", ["wall", "pointmaze", "pusht"])
def test_episode_records_are_complete_on_every_task(env, tmp_path):
    data, ckpt = tmp_path / "data.parquet", tmp_path / "ckpt"
    messages = []
    model = prepare_model(
        env, data_path=data, checkpoint=ckpt,
        data_config=DataConfig(env=env, episodes=10, steps=30, val_fraction=0.3),
        train_config=TrainConfig(steps=20, batch_size=32, hidden=32, depth=1, rollout_steps=2),
        progress=messages.append,
    )
    assert data.exists() and (ckpt / "config.json").exists() and (ckpt / "model.safetensors").exists()
    assert any("generating" in m for m in messages) and any("training" in m for m in messages)
    # A second call loads the checkpoint instead of training again.
    said = len(messages)
    again = prepare_model(env, data_path=data, checkpoint=ckpt, progress=messages.append)
    assert len(messages) == said  # no data generated, no training
    z = torch.zeros(1, model.state_dim)
    a = torch.zeros(1, model.action_dim)
    torch.testing.assert_close(again.step(z, a), load_world_model(ckpt).step(z, a))

    outcomes = plan_task(
        env_name=env, model=model, planners=list(TINY_OPTIONS), options=TINY_OPTIONS, horizons=[2],
        episodes=3, seed=0, dataset=read_dataset(data),
    )
    assert [(o.planner, o.horizon) for o in outcomes] == [("grasp", 2), ("gd", 2), ("cem", 2)]
    specs_starts = None
    for o in outcomes:
        assert o.summary["count"] == 3 and len(o.records) == 3
        starts = [r.executed_states[0].tolist() for r in o.records]
        specs_starts = specs_starts or starts
        assert starts == specs_starts  # every planner sees the same episodes
        for r in o.records:
            assert r.task == env and r.horizon == 2 and not r.failed and r.error is None
            assert r.executed_states.shape == (2 * 5 + 1, model.state_dim)
            assert r.actions.shape == (2 * 5, 2)
            assert math.isfinite(r.final_distance) and math.isfinite(r.model_final_distance)
            assert r.planning_time_s > 0 and r.iterations == TINY_OPTIONS[r.planner]["iterations"]
            assert isinstance(r.success, bool) and isinstance(r.model_success, bool)
            if r.planner == "grasp":
                assert r.residual.shape == (12, 2) and np.isfinite(r.residual).all()
            else:
                assert r.residual is None
    table = format_outcomes(outcomes)
    assert table.count("\n") == 4 and "| grasp | 2 | 3 |" in table


def test_pusht_needs_the_data_set_for_its_goals(tmp_path):
    from wmplan.platform.errors import ConfigError

    model = prepare_model(
        "pusht", data_path=tmp_path / "d.parquet", checkpoint=tmp_path / "c",
        data_config=DataConfig(env="pusht", episodes=4, steps=20, val_fraction=0.5),
        train_config=TrainConfig(steps=2, batch_size=8, hidden=8, depth=1, rollout_steps=1),
    )
    with pytest.raises(ConfigError, match="pusht goals .*replay held-out trajectories"):
        plan_task(env_name="pusht", model=model, planners=["cem"], options=TINY_OPTIONS, horizons=[2], episodes=2, seed=0, dataset=None)
