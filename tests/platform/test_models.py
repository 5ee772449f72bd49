"""The learned state-space world model: training, its interface, checkpoints and evaluation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest
import torch

from wmplan.platform.data import DataConfig, generate_dataset, read_dataset
from wmplan.platform.envs import make_env, unpack_actions
from wmplan.platform.envs.wall import wall_crossings, wall_step
from wmplan.platform.errors import ConfigError
from wmplan.platform.models import (
    MODEL_KINDS,
    CheckpointError,
    StateModelConfig,
    StateWorldModel,
    TrainConfig,
    evaluate_model,
    load_world_model,
    save_checkpoint,
    train_state_model,
)
from wmplan.platform.planners import make_planner
from wmplan.platform.world_model import WorldModel, check_world_model

FAST = TrainConfig(steps=300, batch_size=128, lr=3e-3, hidden=64, depth=2, rollout_steps=2, seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks train faster on one thread, and more predictably on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def wall_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "wall.parquet"
    generate_dataset(DataConfig(env="wall", episodes=30, steps=60, seed=0), path, workers=1)
    return read_dataset(path)


@pytest.fixture(scope="module")
def trained(wall_data):
    return train_state_model(wall_data, FAST)


def _save(model, directory):
    return save_checkpoint(model, directory, metrics={"val_mse_after": 0.5, "note": "test"})


# -- training ------------------------------------------------------------------------------------


def test_training_lowers_validation_error(trained):
    model, metrics = trained
    assert metrics["val_mse_before"] > 0
    assert metrics["val_mse_after"] < 0.5 * metrics["val_mse_before"]
    assert metrics["train_loss"] < metrics["train_loss_first"]
    assert metrics["train_seconds"] > 0 and metrics["transitions_per_s"] > 0
    assert metrics["steps"] == FAST.steps and metrics["train_windows"] > 0
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_same_seed_gives_identical_weights(wall_data):
    config = dataclasses.replace(FAST, steps=15)
    calls = []
    a, _ = train_state_model(wall_data, config, progress=lambda step, total, loss: calls.append((step, total, loss)))
    b, _ = train_state_model(wall_data, config)
    c, _ = train_state_model(wall_data, dataclasses.replace(config, seed=1))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert not all(torch.equal(sa[n], sc[n]) for n in sa)
    assert [s for s, _, _ in calls] == list(range(1, 16)) and {t for _, t, _ in calls} == {15}
    assert all(math.isfinite(loss) for _, _, loss in calls)


def test_rollout_longer_than_trajectories_is_a_config_error(wall_data):
    with pytest.raises(ConfigError, match="too short"):
        train_state_model(wall_data, dataclasses.replace(FAST, rollout_steps=13))
    with pytest.raises(ConfigError, match="rollout_steps"):
        TrainConfig(rollout_steps=0)


# -- the model -----------------------------------------------------------------------------------


def test_encode_decode_round_trip(trained, wall_data):
    model, _ = trained
    states = np.concatenate([t.states for t in wall_data.split("train")])
    z = model.encode(torch.as_tensor(states))  # float64 in, float64 out
    assert z.dtype == torch.float64
    assert torch.allclose(model.decode(z), torch.as_tensor(states), atol=1e-9, rtol=0)
    # normalisation statistics come from the training states
    assert torch.allclose(z.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-5)
    assert not torch.allclose(model.state_std, torch.ones(2))


def test_model_satisfies_the_planner_interface(trained, wall_data):
    model, _ = trained
    env = make_env("wall")
    assert isinstance(model, WorldModel)
    check_world_model(model)
    assert (model.state_dim, model.action_dim) == (2, 10)
    assert torch.equal(model.action_low, torch.tensor(np.tile(env.action_low, 5), dtype=torch.float32))
    assert torch.equal(model.action_high, torch.tensor(np.tile(env.action_high, 5), dtype=torch.float32))

    traj = wall_data.split("val")[0]
    start = model.encode(torch.as_tensor(traj.states[[0, 10]], dtype=torch.float32))
    goal = model.encode(torch.as_tensor(traj.states[[15, 25]], dtype=torch.float32))
    planner = make_planner("cem", horizon=3, iterations=2, samples=16, elites=4)
    result = planner.plan(model, start, goal, seed=0)
    assert result.actions.shape == (2, 3, 10)
    assert (result.actions >= model.action_low).all() and (result.actions <= model.action_high).all()
    assert torch.isfinite(result.final_distance).all()

    # differentiable with respect to states and actions, even with frozen parameters
    z = start.clone().requires_grad_(True)
    a = torch.zeros(2, 10, requires_grad=True)
    model.step(z, a).sum().backward()
    assert z.grad is not None and a.grad is not None and a.grad.abs().sum() > 0


def test_config_rejects_inconsistent_shapes():
    with pytest.raises(ConfigError, match="multiple of frameskip"):
        StateModelConfig(env="wall", state_dim=2, action_dim=7, frameskip=5)
    with pytest.raises(ConfigError, match="env_action_low"):
        StateModelConfig(env="wall", state_dim=2, action_dim=15, frameskip=5)


# -- checkpoints -----------------------------------------------------------------------------------


def test_checkpoint_round_trip(trained, tmp_path):
    model, metrics = trained
    save_checkpoint(model, tmp_path / "ckpt", metrics=metrics)
    loaded = load_world_model(tmp_path / "ckpt")
    again = load_world_model(tmp_path / "ckpt" / "config.json")
    assert type(loaded) is StateWorldModel and loaded.config == model.config
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    a = torch.rand(64, 10, generator=torch.Generator().manual_seed(1)) * 3.6 - 1.8
    with torch.no_grad():
        assert torch.equal(loaded.step(z, a), model.step(z, a))
        assert torch.equal(again.step(z, a), model.step(z, a))
        assert torch.equal(loaded.decode(z), model.decode(z))
    info = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert info["kind"] == "state_mlp" and info["kind"] in MODEL_KINDS
    assert info["metrics"]["val_mse_after"] == pytest.approx(metrics["val_mse_after"])
    assert info["tensors"]["net.0.weight"]["shape"] == [64, 12]
    blob = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    header = int.from_bytes(blob[:8], "little")  # safetensors: u64 header length, then a JSON header
    assert blob[8:9] == b"{" and json.loads(blob[8 : 8 + header])["net.0.weight"]["shape"] == [64, 12]


def test_missing_checkpoint_is_named(trained, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*does not exist"):
        load_world_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint at .*config.json is missing"):
        load_world_model(tmp_path / "empty")
    _save(trained[0], tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint at .*model.safetensors is missing"):
        load_world_model(tmp_path / "c")


def test_truncated_weights_are_corrupt(trained, tmp_path):
    _save(trained[0], tmp_path / "c")
    weights = tmp_path / "c" / "model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="corrupt.*truncated or was modified"):
        load_world_model(tmp_path / "c")
    # with a matching hash (as a careless hand edit might leave it), the parser still refuses it
    cfg = tmp_path / "c" / "config.json"
    info = json.loads(cfg.read_text())
    info["sha256"] = hashlib.sha256(blob[: len(blob) // 2]).hexdigest()
    cfg.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="corrupt.*not a readable safetensors file"):
        load_world_model(tmp_path / "c")


def test_flipped_byte_is_corrupt(trained, tmp_path):
    _save(trained[0], tmp_path / "c")
    weights = tmp_path / "c" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-7] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt.*sha256"):
        load_world_model(tmp_path / "c")


def test_config_that_does_not_match_the_tensors(trained, tmp_path):
    _save(trained[0], tmp_path / "c")
    cfg = tmp_path / "c" / "config.json"
    info = json.loads(cfg.read_text())
    info["config"]["hidden"] = 32
    cfg.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"does not match its config.*hidden=32.*wrong shapes: net\.0\.bias"):
        load_world_model(tmp_path / "c")
    info["config"]["hidden"] = 64
    info["config"]["depth"] = 3
    cfg.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"missing tensors: net\.6\.bias, net\.6\.weight"):
        load_world_model(tmp_path / "c")
    info["config"]["depth"] = 2
    info["config"]["colour"] = "red"
    cfg.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="invalid config.*colour"):
        load_world_model(tmp_path / "c")


def test_unknown_version_or_kind(trained, tmp_path):
    _save(trained[0], tmp_path / "c")
    cfg = tmp_path / "c" / "config.json"
    good = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**good, "format_version": 99}))
    with pytest.raises(CheckpointError, match="unknown format version 99"):
        load_world_model(tmp_path / "c")
    cfg.write_text(json.dumps({**good, "kind": "dino_vit"}))
    with pytest.raises(CheckpointError, match="unknown model kind 'dino_vit'.*state_mlp"):
        load_world_model(tmp_path / "c")
    cfg.write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt.*not valid JSON"):
        load_world_model(tmp_path / "c")


# -- evaluation ------------------------------------------------------------------------------------


def straight_line_model() -> StateWorldModel:
    """A StateWorldModel whose weights predict the wall task's motion with no wall: p' = p + 2 sum(a).

    SiLU(u) - SiLU(-u) = u exactly, so one hidden layer of [u, -u] is a linear map.
    """
    env = make_env("wall")
    config = StateModelConfig(env="wall", state_dim=2, action_dim=10, frameskip=5,
                              env_action_low=tuple(env.action_low), env_action_high=tuple(env.action_high), hidden=4, depth=1)
    model = StateWorldModel(config)  # normalisation stays 0 / 1: z is the position in pixels
    sum_actions = torch.zeros(2, 12)
    for f in range(5):
        sum_actions[0, 2 + 2 * f] = 1.0
        sum_actions[1, 3 + 2 * f] = 1.0
    first, last = model.net[0], model.net[2]
    with torch.no_grad():
        first.weight.copy_(torch.cat([sum_actions, -sum_actions]))
        first.bias.zero_()
        last.weight.copy_(2.0 * torch.tensor([[1.0, 0, -1, 0], [0, 1, 0, -1]]))
        last.bias.zero_()
    return model.eval().requires_grad_(False)


class WallOracle(torch.nn.Module):
    """The true wall dynamics as a (non-differentiable) world model over pixel positions."""

    state_dim, action_dim = 2, 10

    def __init__(self) -> None:
        super().__init__()
        self.action_low = torch.full((10,), -1.8)
        self.action_high = torch.full((10,), 1.8)

    def step(self, state, action):
        p = state.double().numpy()
        env_actions = unpack_actions(action.double().numpy()[:, None], 5)  # [N, 5, 2]
        for f in range(5):
            p = wall_step(p, env_actions[:, f])
        return torch.as_tensor(p, dtype=state.dtype)


# -- a model of one env step, composed frameskip times ------------------------------------------------


def test_env_step_model_composes_one_env_step_per_packed_action():
    config = StateModelConfig(env="wall", state_dim=2, action_dim=10, hidden=16, depth=2, env_step=True, activation="relu",
                              env_action_low=(-1.8, -1.8), env_action_high=(1.8, 1.8))
    model = StateWorldModel(config, seed=0)
    with torch.no_grad():
        model.net[-1].weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(3))  # the last layer starts at zero
    assert model.net[0].in_features == 2 + 2 and isinstance(model.net[1], torch.nn.ReLU)
    z = torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    a = torch.rand(7, 10, generator=torch.Generator().manual_seed(1)) * 3.6 - 1.8
    by_hand = z
    for k in range(5):
        by_hand = model.env_step(by_hand, a[:, 2 * k : 2 * k + 2])
    assert torch.allclose(model.step(z, a), by_hand, atol=1e-6)
    assert not torch.allclose(model.step(z, a), model.env_step(z, a[:, :2]))  # five steps differ from one
    packed = StateWorldModel(dataclasses.replace(config, env_step=False), seed=0)
    assert packed.net[0].in_features == 2 + 10 and isinstance(packed.net[1], torch.nn.ReLU)
    with pytest.raises(ValueError, match="env_step needs a model with env_step=True"):
        packed.env_step(z, a[:, :2])
    with pytest.raises(ConfigError, match="unknown activation 'tanh'"):
        StateModelConfig(env="wall", state_dim=2, action_dim=10, activation="tanh")
    with pytest.raises(ConfigError, match="unknown activation"):
        TrainConfig(activation="gelu")


def test_env_step_model_trains_on_every_env_step_and_round_trips(wall_data, tmp_path):
    config = dataclasses.replace(FAST, env_step=True, activation="relu", rollout_steps=1)
    model, metrics = train_state_model(wall_data, config)
    assert model.config.env_step and model.config.activation == "relu"
    assert metrics["val_mse_after"] < 0.5 * metrics["val_mse_before"]  # judged on whole model steps, as any state model
    assert metrics["rollout_steps"] == 1 and metrics["env_steps_unrolled"] == 5
    # the loss sees every env step: the model's one env step is close to the simulator's
    t = wall_data.split("val")[0]
    with torch.no_grad():
        z1 = model.env_step(model.encode(torch.tensor(t.states[:-1], dtype=torch.float32)),
                            torch.tensor(t.actions, dtype=torch.float32))
    err = np.linalg.norm(model.decode(z1).numpy() - t.states[1:], axis=1)
    assert np.median(err) < 1.0  # pixels; an env step moves the dot about 2 px
    save_checkpoint(model, tmp_path / "ckpt", metrics=metrics)
    loaded = load_world_model(tmp_path / "ckpt")
    assert loaded.config == model.config
    z = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    a = torch.rand(16, 10, generator=torch.Generator().manual_seed(1)) * 3.6 - 1.8
    with torch.no_grad():
        assert torch.equal(loaded.step(z, a), model.step(z, a))
    info = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert info["tensors"]["net.0.weight"]["shape"] == [64, 4]


def test_train_command_builds_an_env_step_model_and_names_misuse(wall_data, tmp_path, capsys, monkeypatch):
    from wmplan.cli import main

    monkeypatch.delenv("WMPLAN_DEBUG", raising=False)
    data, ckpt = str(wall_data.path), tmp_path / "ckpt"
    tiny = ["--steps", "20", "--batch-size", "16", "--hidden", "16", "--depth", "1", "--rollout-steps", "1"]
    assert main(["train", "--env", "wall", "--data", data, "--out", str(ckpt), "--env-step-predictor", "--activation", "relu", *tiny]) == 0
    config = json.loads((ckpt / "config.json").read_text())["config"]
    assert config["env_step"] is True and config["activation"] == "relu"
    capsys.readouterr()
    assert main(["train", "--env", "wall", "--data", data, "--out", str(tmp_path / "x"), "--env-step-predictor", "--members", "3",
                 *tiny]) == 2
    assert "--env-step-predictor trains one state model" in capsys.readouterr().err
    assert main(["train", "--env", "wall", "--obs", "pixels", "--kind", "visual", "--data", data, "--out", str(tmp_path / "x"),
                 "--activation", "relu"]) == 2
    assert "--activation is for state models and --kind jepa" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_ensemble_refuses_env_step_members(wall_data):
    from wmplan.platform.models.ensemble import EnsembleTrainConfig

    with pytest.raises(ConfigError, match="env_step is for one state model"):
        EnsembleTrainConfig(members=3, env_step=True)


def test_evaluate_trained_model(trained, wall_data):
    model, _ = trained
    result = evaluate_model(model, wall_data, k=10)
    for key in ("one_step_error", "k_step_error", "one_step_mse", "k_step_mse"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["k_step_error"] >= result["one_step_error"]
    assert result["k_step_mse"] >= result["one_step_mse"]
    assert len(result["error_by_step"]) == 10 and result["error_by_step"][-1] == pytest.approx(result["k_step_error"])
    # the one-step normalised MSE is what training reported
    assert result["one_step_mse"] == pytest.approx(trained[1]["val_mse_after"], rel=1e-5)
    assert result["windows"] == 3 * 11 and result["transitions"] == 3 * 56  # 3 val trajectories of 60 steps
    assert 0 <= result["wall_crossing_rate"] <= 1


def test_wall_crossing_metric_catches_a_model_that_ignores_the_wall(wall_data):
    line = straight_line_model()
    with torch.no_grad():  # in free space it is exact
        z = torch.tensor([[15.0, 20.0]])
        a = torch.tensor([[0.5, -0.2] * 5])
        assert torch.allclose(line.step(z, a), torch.tensor([[20.0, 18.0]]))
    naive = evaluate_model(line, wall_data, k=10, split="train")
    oracle = evaluate_model(WallOracle(), wall_data, k=10, split="train")
    assert naive["wall_crossings"] > 0 and naive["wall_crossing_rate"] > 0
    assert oracle["wall_crossings"] == 0
    assert oracle["one_step_error"] < 1e-3 and oracle["k_step_error"] < 1e-3
    assert naive["k_step_error"] > naive["one_step_error"] > 0


def test_wall_crossings_on_hand_made_paths():
    def crosses(*points):
        return bool(wall_crossings(np.array([points], dtype=float))[0])

    assert crosses((20, 10), (44, 12))  # straight through the wall
    assert not crosses((20, 30), (44, 30))  # through the door
    assert not crosses((20, 10), (32, 30), (44, 50))  # meets the centre line in the door
    assert not crosses((20, 10), (31, 10), (33, 10), (20, 10))  # into the wall and back: no side change
    assert crosses((20, 10), (30, 20), (34, 20), (44, 20))  # via the band, with the wall in between
    assert crosses((44, 50), (20, 40))  # right to left as well


def test_evaluation_on_another_task_has_no_wall_metric(tmp_path):
    path = generate_dataset(DataConfig(env="pointmaze", episodes=4, steps=20, seed=0, val_fraction=0.25), tmp_path / "m.parquet", workers=1)
    data = read_dataset(path)
    model, metrics = train_state_model(data, dataclasses.replace(FAST, steps=5, rollout_steps=1))
    assert model.state_dim == 4 and model.action_dim == 10
    result = evaluate_model(model, data, k=3)
    assert result["wall_crossings"] is None and result["wall_crossing_rate"] is None
    assert math.isfinite(result["k_step_error"]) and len(result["k_step_rmse_per_dim"]) == 4
    with pytest.raises(ValueError, match="too short"):
        evaluate_model(model, data, k=5)


def test_training_summary_reads_what_a_checkpoint_records():
    from wmplan.platform.models import describe_training, training_summary

    ensemble = training_summary({"kind": "state_ensemble", "config": {"members": 5}, "metrics": {"train_seconds": 3.0}})
    assert ensemble == {"kind": "state_ensemble", "training_seconds": 3.0, "first_training_seconds": 3.0, "rounds": 0,
                        "round_transitions": 0, "members": 5}
    assert describe_training(ensemble) == "state_ensemble of 5 members, trained in 3 s"
    jepa = training_summary({"kind": "jepa", "config": {}, "metrics": {"train_seconds": 100.0, "total_seconds": 130.0}})
    assert jepa["training_seconds"] == 130.0 and jepa["members"] == 1  # the whole cost, probe and predictor included
    bare = training_summary({"kind": "state_mlp", "config": {}, "metrics": None})
    assert bare["training_seconds"] is None and describe_training(bare) == "state_mlp, training time not recorded"
