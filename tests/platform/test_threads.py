"""Training uses the torch threads it is given (one by default) and gives them back; data workers start no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from wmplan.platform.data import DataConfig, generate_dataset, read_dataset
from wmplan.platform.errors import ConfigError
from wmplan.platform.models import TrainConfig, VisualTrainConfig, train_state_model, train_visual_model
from wmplan.platform.threads import available_cores, torch_threads


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("threads") / "wall.parquet"
    generate_dataset(DataConfig(env="wall", episodes=4, steps=20, val_fraction=0.25, frames=True, frame_size=16), path, workers=1)
    return read_dataset(path)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 0])
def test_training_runs_on_the_threads_it_is_given_and_restores_them(dataset, two_threads, threads):
    seen: set[tuple[str, int]] = set()
    tiny = dict(steps=3, batch_size=8, hidden=8, depth=1, rollout_steps=1, threads=threads)
    train_state_model(dataset, TrainConfig(**tiny), progress=lambda step, total, loss: seen.add(("model", torch.get_num_threads())))
    train_visual_model(dataset, VisualTrainConfig(**tiny, encoder_steps=2, encoder_batch_size=4, probe_steps=2, channels=4),
                       progress=lambda stage, step, total, loss: seen.add((stage, torch.get_num_threads())))
    expected = threads or available_cores()
    assert seen == {(stage, expected) for stage in ("model", "encoder", "probe", "predictor")}
    assert torch.get_num_threads() == 2


def test_threads_option_is_checked_and_the_context_restores_on_errors(two_threads):
    assert TrainConfig().threads == 1
    with pytest.raises(ConfigError, match="threads must be >= 0"):
        TrainConfig(threads=-1)
    with pytest.raises(RuntimeError, match="boom"), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


@pytest.mark.integration  # a subprocess of its own, or processes
def test_data_generation_does_not_load_torch(tmp_path):
    """What each data worker runs (workers=1 runs it in this process): simulators on numpy, no torch thread pool."""
    script = ("import sys; from wmplan.platform.data import DataConfig, generate_dataset; "
              "generate_dataset(DataConfig(env='pusht', episodes=2, steps=5, frames=True, frame_size=16), "
              f"{str(tmp_path / 'd.parquet')!r}, workers=1); "
              "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)  # seconds when idle
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
