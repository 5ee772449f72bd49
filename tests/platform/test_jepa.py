"""JEPA world models: encoder, SIGReg, training (loss, anti-collapse, determinism), checkpoints, protocol, command."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from wmplan.platform.data import DataConfig, generate_dataset, read_dataset
from wmplan.platform.errors import ConfigError
from wmplan.platform.models import (
    JEPA_PRESETS,
    JepaModelConfig,
    JepaTrainConfig,
    JepaWorldModel,
    is_pixel_model,
    jepa_train_config,
    load_world_model,
    read_checkpoint_info,
    save_checkpoint,
    train_jepa_model,
)
from wmplan.platform.models.checkpoint import check_checkpoint_task
from wmplan.platform.models.jepa import random_directions, sigreg
from wmplan.platform.world_model import check_observation_model

SIZE = 16  # frames of the tiny data set: 4 keypoint maps of 4 x 4
TINY = dict(steps=40, batch_size=8, channels=4, keypoints=4, projector_hidden=16, latent_dim=8, hidden=16, depth=1, rollout_steps=2,
            predictor_rollout_steps=2, predictor_steps=20, predictor_batch_size=16, probe_steps=20, sigreg_directions=32)


def config(**overrides) -> JepaModelConfig:
    return JepaModelConfig(**{"env": "wall", "state_dim": 2, "action_dim": 10, "frame_size": SIZE, "channels": 4, "keypoints": 4,
                              "projector_hidden": 16, "latent_dim": 8, "hidden": 16, "depth": 1, **overrides})


@pytest.fixture(scope="module")
def wall_frames(tmp_path_factory):
    path = tmp_path_factory.mktemp("jepa") / "wall.parquet"
    generate_dataset(DataConfig(env="wall", episodes=6, steps=30, val_fraction=0.34, frames=True, frame_size=SIZE), path, workers=1)
    return read_dataset(path)


def train(dataset, **overrides):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_jepa_model(dataset, JepaTrainConfig(**{**TINY, **overrides}))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(wall_frames):
    return train(wall_frames)


def test_model_satisfies_the_observation_protocol_and_is_seeded():
    state = torch.get_rng_state()
    a, b = JepaWorldModel(config(), seed=3), JepaWorldModel(config(), seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # a seeded build leaves the global generator alone
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.encoder.convs[0].weight, JepaWorldModel(config(), seed=4).encoder.convs[0].weight)
    assert check_observation_model(a) is a and is_pixel_model(a)
    assert a.state_dim == 8 and a.action_dim == 10 and a.frame_size == SIZE
    assert torch.equal(a.action_low, torch.full((10,), -1.0)) and torch.equal(a.action_high, torch.full((10,), 1.0))
    frames = torch.randint(0, 256, (2, 3, SIZE, SIZE, 3), dtype=torch.uint8)
    z = a.encode(frames)
    assert z.shape == (2, 3, 8) and not z.requires_grad and torch.equal(z, a.encode(frames.numpy()))
    assert torch.allclose(a.encode(frames.float() / 255), z, atol=1e-6)
    assert a.encoder.training  # encode used eval mode and put the mode back
    assert a.decode(z).shape == (2, 3, 2)
    with pytest.raises(ValueError, match="frames must be"):
        a.encode(torch.zeros(2, SIZE + 4, SIZE + 4, 3))
    a.predictor[-1].weight.data.normal_()  # an untrained predictor predicts no motion; give it some
    z = z.clone().requires_grad_(True)
    action = torch.zeros(2, 3, 10, requires_grad=True)
    a.step(z, action).square().sum().backward()
    assert z.grad is not None and action.grad is not None and action.grad.abs().sum() > 0
    keypoints = a.encoder.keypoints(torch.rand(5, 3, SIZE, SIZE))
    assert keypoints.shape == (5, 8) and keypoints.abs().max() <= 1  # (x, y) per map, inside the picture


def test_env_step_predictor_applies_one_env_action_frameskip_times():
    m = JepaWorldModel(config(env_step_predictor=True), seed=0)
    assert m.predictor[0].in_features == 8 + 2
    m.predictor[-1].weight.data.normal_()
    z, a = torch.randn(4, 8), torch.rand(4, 10) * 2 - 1
    expected = z
    for i in range(5):
        expected = m.env_step(expected, a[:, 2 * i : 2 * i + 2])
    assert torch.allclose(m.step(z, a), expected, atol=1e-6)
    with pytest.raises(ValueError, match="env_step_predictor"):
        JepaWorldModel(config(), seed=0).env_step(z, a[:, :2])


def test_sigreg_is_small_for_a_standard_gaussian_and_large_for_collapse_or_wrong_scale():
    g = torch.Generator().manual_seed(0)
    directions = random_directions(16, 64, g)
    assert torch.allclose(directions.norm(dim=0), torch.ones(64))
    gaussian = torch.randn(2048, 16, generator=g)
    near = float(sigreg(gaussian, directions))
    assert near < 2e-3
    assert float(sigreg(torch.zeros(2048, 16), directions)) > 100 * near  # every picture at one point
    assert float(sigreg(0.2 * gaussian, directions)) > 20 * near  # shrunk towards collapse
    assert float(sigreg(gaussian + 2.0, directions)) > 20 * near  # off-centre


def test_training_lowers_the_loss_and_fits_the_predictor_and_probe(trained, wall_frames):
    model, metrics = trained
    assert metrics["train_loss"] < metrics["train_loss_first"]
    assert metrics["predictor_loss"] < metrics["predictor_loss_first"]
    assert metrics["val_mse_after"] is not None and metrics["val_mse_before"] is not None
    assert len(metrics["probe_val_rmse"]) == 2 and metrics["latent_dim"] == 8
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert metrics["train_frames"] == sum(len(t.frames) for t in wall_frames.split("train"))


def test_training_is_deterministic_for_a_seed(wall_frames, trained):
    again, _ = train(wall_frames)
    for (name, x), y in zip(trained[0].state_dict().items(), again.state_dict().values()):
        assert torch.equal(x, y), name
    other, _ = train(wall_frames, seed=1)
    assert not torch.equal(other.encoder.convs[0].weight, again.encoder.convs[0].weight)


def test_sigreg_keeps_the_latent_spread_where_plain_mse_collapses(wall_frames):
    """The synthetic check: next-latent MSE alone is minimised by mapping every picture to one point."""
    options = dict(steps=150, lr=1e-2, predictor_steps=0)
    _, plain = train(wall_frames, sigreg_weight=0.0, **options)
    _, regularised = train(wall_frames, sigreg_weight=1.0, **options)
    floor = 0.1
    assert plain["latent_std_mean"] < floor < regularised["latent_std_min"]


def test_checkpoint_round_trip(trained, wall_frames, tmp_path):
    model, metrics = trained
    save_checkpoint(model, tmp_path / "ckpt", metrics=metrics)
    info = read_checkpoint_info(tmp_path / "ckpt")
    assert info["kind"] == "jepa" and info["config"]["latent_dim"] == 8
    check_checkpoint_task(info, task="wall", state_dim=2, action_dim=2, frameskip=5, obs="pixels", where="x")
    loaded = load_world_model(tmp_path / "ckpt")
    assert type(loaded) is JepaWorldModel and loaded.config == model.config
    frames = wall_frames.split("val")[0].frames[:6]
    z = model.encode(frames)
    assert torch.equal(loaded.encode(frames), z)
    a = torch.rand(6, 10) * 2 - 1
    assert torch.equal(loaded.step(z, a), model.step(z, a)) and torch.equal(loaded.decode(z), model.decode(z))
    assert not torch.equal(model.step(z, a), z)  # the predictor moves


def test_presets_and_config_checks():
    assert jepa_train_config() == JepaTrainConfig()
    gpu = jepa_train_config("gpu", seed=3)
    assert gpu.seed == 3 and gpu.batch_size == JEPA_PRESETS["gpu"]["batch_size"] > JepaTrainConfig().batch_size
    assert gpu.latent_dim > JepaTrainConfig().latent_dim
    with pytest.raises(ConfigError, match="preset"):
        jepa_train_config("tpu")
    with pytest.raises(ConfigError, match="sigreg_weight"):
        JepaTrainConfig(sigreg_weight=-1)
    with pytest.raises(ConfigError, match="divisible by 4"):
        config(frame_size=18)
    # the predictor's activation is an option; one env step is env_step_predictor, never the state models' env_step
    assert isinstance(JepaWorldModel(config(activation="relu"), seed=0).predictor[1], torch.nn.ReLU)
    assert isinstance(JepaWorldModel(config(), seed=0).predictor[1], torch.nn.SiLU)
    with pytest.raises(ConfigError, match="unknown activation 'tanh'"):
        config(activation="tanh")
    with pytest.raises(ConfigError, match="env_step_predictor"):
        JepaTrainConfig(env_step=True)
    from wmplan.platform.models.visual_training import VisualTrainConfig

    with pytest.raises(ConfigError, match="activation and env_step are for state models"):
        VisualTrainConfig(activation="relu")


def test_train_command_with_kind_jepa_end_to_end(wall_frames, tmp_path, capsys, monkeypatch):
    from wmplan.cli import main

    monkeypatch.delenv("WMPLAN_DEBUG", raising=False)
    data, ckpt = str(wall_frames.path), tmp_path / "ckpt"

    def run(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        status = main(list(args))
        said = capsys.readouterr()
        return subprocess.CompletedProcess(args, status, said.out, said.err)

    tiny = ["--steps", "5", "--predictor-steps", "5", "--probe-steps", "5", "--batch-size", "4", "--hidden", "16", "--depth", "1",
            "--channels", "4", "--keypoints", "4", "--latent-dim", "8", "--rollout-steps", "2"]
    out = run("train", "--env", "wall", "--obs", "pixels", "--kind", "jepa", "--data", data, "--out", str(ckpt), *tiny)
    assert out.returncode == 0, out.stderr
    assert "latent 8 values, per-dimension std" in out.stdout and "validation one-step MSE (latent)" in out.stdout
    info = json.loads((ckpt / "config.json").read_text())
    assert info["kind"] == "jepa" and info["config"]["keypoints"] == 4 and info["metrics"]["evaluation"]["k"] >= 1
    out = run("plan", "--env", "wall", "--model", str(ckpt), "--data", data, "--planner", "cem", "--horizon", "2",
              "--episodes", "2", "--set", "planners.cem.iterations=2", "--output", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr
    assert any(line.startswith("| cem | 2 | 2 |") for line in out.stdout.splitlines())
    bad = run("train", "--env", "wall", "--obs", "pixels", "--kind", "jepa", "--data", data, "--out", str(tmp_path / "x"),
              "--encoder-steps", "5")
    assert bad.returncode == 2 and "--encoder-steps is for --kind visual" in bad.stderr and "Traceback" not in bad.stderr
    bad = run("train", "--env", "wall", "--obs", "pixels", "--kind", "visual", "--data", data, "--out", str(tmp_path / "x"),
              "--keypoints", "4")
    assert bad.returncode == 2 and "--kind jepa" in bad.stderr
    bad = run("train", "--env", "wall", "--kind", "jepa", "--data", data, "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--obs pixels" in bad.stderr


def test_latent_distance_grows_with_true_distance_after_training(trained, wall_frames):
    """A weak geometry check on the tiny model: farther frames of one trajectory are farther in the latent, on average."""
    model, _ = trained
    traj = wall_frames.split("train")[0]
    z = model.encode(traj.frames).numpy()
    near = np.linalg.norm(z[1:] - z[:-1], axis=-1).mean()
    far = np.linalg.norm(z[10:] - z[:-10], axis=-1).mean()
    assert far > near


def test_default_train_config_picks_the_kind_from_the_flag_or_the_tasks_recipe(monkeypatch):
    from wmplan.platform.envs import PixelRecipe
    from wmplan.platform.envs.wall import WallEnv
    from wmplan.platform.models import VisualTrainConfig
    from wmplan.platform.workflow import default_data_config, default_train_config

    pusht = default_train_config("pusht", obs="pixels")  # Push-T's recipe: the JEPA with the pusher's position
    assert isinstance(pusht, JepaTrainConfig) and pusht.proprio and not pusht.env_step_predictor
    visual = default_train_config("pusht", obs="pixels", kind="visual")  # the visual kind takes the recipe's predictor steps
    assert type(visual) is VisualTrainConfig and visual.steps == 12000
    # Wall's recipe: a JEPA with proprio whose ReLU predictor takes one env action at a time, on uniform actions
    wall = default_train_config("wall", obs="pixels")
    assert isinstance(wall, JepaTrainConfig) and wall.proprio and wall.env_step_predictor and wall.activation == "relu"
    assert default_data_config("wall", obs="pixels").policy == "uniform" and default_data_config("wall").policy == "task"
    assert default_data_config("pointmaze", obs="pixels").policy == "task"
    assert not default_train_config("wall", obs="pixels", env_step_predictor=False).env_step_predictor  # the options win
    assert default_train_config("wall", obs="pixels", activation="silu").activation == "silu"
    jepa = default_train_config("wall", obs="pixels", kind="jepa", preset="gpu", steps=7)
    assert isinstance(jepa, JepaTrainConfig) and jepa.steps == 7 and jepa.batch_size == JEPA_PRESETS["gpu"]["batch_size"]
    assert not jepa.proprio  # a kind given: no proprio unless asked
    # PointMaze's recipe: the JEPA kind with the ball's position and velocity beside the latent
    maze = default_train_config("pointmaze", obs="pixels")
    assert isinstance(maze, JepaTrainConfig) and maze.proprio and not maze.env_step_predictor and maze.activation == "silu"
    assert not default_train_config("pointmaze", obs="pixels", proprio=False).proprio  # the options win
    assert type(default_train_config("pointmaze", obs="pixels", kind="visual")) is VisualTrainConfig
    monkeypatch.setattr(WallEnv, "pixel_recipe", PixelRecipe(trajectories=50, predictor_steps=4000))
    assert type(default_train_config("wall", obs="pixels")) is VisualTrainConfig  # a recipe that names no kind: visual
    monkeypatch.setattr(WallEnv, "pixel_recipe", PixelRecipe(trajectories=50, predictor_steps=4000, kind="jepa"))
    assert isinstance(default_train_config("wall", obs="pixels"), JepaTrainConfig)  # a recipe that names its kind
    assert not default_train_config("wall", obs="pixels").proprio
    assert type(default_train_config("wall", obs="pixels", kind="visual")) is VisualTrainConfig
    with pytest.raises(ValueError, match="kind is 'visual', 'jepa' or None"):
        PixelRecipe(trajectories=50, predictor_steps=4000, kind="dino")
    with pytest.raises(ValueError, match="are for kind 'jepa'"):
        PixelRecipe(trajectories=50, predictor_steps=4000, activation="relu")
    with pytest.raises(ValueError, match="policy is 'task' or 'uniform'"):
        PixelRecipe(trajectories=50, predictor_steps=4000, policy="walk")
    with pytest.raises(ConfigError, match="obs pixels"):
        default_train_config("wall", kind="jepa")
    with pytest.raises(ConfigError, match="kind 'jepa'"):
        default_train_config("wall", obs="pixels", kind="visual", preset="gpu")
    with pytest.raises(ConfigError, match="kind"):
        default_train_config("wall", obs="pixels", kind="dino")

