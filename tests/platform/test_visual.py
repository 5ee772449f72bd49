"""Visual world models: encoder and predictor, training, checkpoints, a user's encoder, episodes from pixels."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from wmplan.platform.data import DataConfig, generate_dataset, read_dataset
from wmplan.platform.envs import ENV_NAMES, make_env
from wmplan.platform.episode import make_episode_specs, observe, run_episodes, summarize
from wmplan.platform.errors import ConfigError
from wmplan.platform.models import (
    CheckpointError,
    VisualModelConfig,
    VisualTrainConfig,
    VisualWorldModel,
    evaluate_model,
    load_world_model,
    render_states,
    save_checkpoint,
    train_visual_model,
)
from wmplan.platform.models.visual import prediction_strip, write_png
from wmplan.platform.models.visual_training import _reconstruction_mse
from wmplan.platform.planners import make_planner

SIZE = 16  # frames of the tiny data sets: an 2x2 grid of 8 channels, D = 32
TINY = dict(encoder_steps=120, encoder_batch_size=16, encoder_lr=5e-3, probe_steps=200, steps=60, batch_size=32, hidden=32, depth=1, rollout_steps=2,
            channels=8)


def config(**overrides) -> VisualModelConfig:
    return VisualModelConfig(**{"env": "wall", "state_dim": 2, "action_dim": 10, "frame_size": SIZE, "channels": 8, **overrides})


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A tiny data set with frames for every task (Push-T's val trajectories are long enough for H = 2)."""
    root = tmp_path_factory.mktemp("pixels")
    out = {}
    for env in ENV_NAMES:
        path = root / f"{env}.parquet"
        generate_dataset(DataConfig(env=env, episodes=8, steps=30, val_fraction=0.25, frames=True, frame_size=SIZE), path, workers=1)
        out[env] = read_dataset(path)
    return out


@pytest.fixture(scope="module")
def models(datasets):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    trained = {env: train_visual_model(ds, VisualTrainConfig(**TINY)) for env, ds in datasets.items()}
    torch.set_num_threads(threads)
    return trained


def test_encoder_and_predictor_shapes_and_determinism():
    state = torch.get_rng_state()
    a, b = VisualWorldModel(config(), seed=3), VisualWorldModel(config(), seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # a seeded build leaves the global generator alone
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.encoder.net[0].weight, VisualWorldModel(config(), seed=4).encoder.net[0].weight)
    frames = torch.randint(0, 256, (2, 3, SIZE, SIZE, 3), dtype=torch.uint8)
    z = a.encode(frames)
    assert z.shape == (2, 3, 8 * 2 * 2) == (2, 3, a.state_dim) and torch.equal(z, a.encode(frames))
    assert torch.allclose(a.encode(frames.float() / 255), z)  # uint8 and [0, 1] floats are the same pictures
    action = torch.zeros(2, 3, 10, requires_grad=True)
    z = z.clone().requires_grad_(True)
    nxt = a.step(z, action)
    assert nxt.shape == z.shape
    a.predictor[-1].weight.data.normal_()  # an untrained predictor predicts no motion; give it some
    a.step(z, action).square().sum().backward()
    assert z.grad is not None and action.grad is not None and action.grad.abs().sum() > 0
    assert a.reconstruct(z.detach()).shape == (2, 3, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match=r"frames must be \[\.\.\., 16, 16, 3\]"):
        a.encode(torch.zeros(1, 8, 8, 3))


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="divisible by 8"):
        config(frame_size=20)
    with pytest.raises(ConfigError, match="encoder_latent_shape"):
        config(encoder="tests.platform.user_encoder:make_encoder", decoder=False)
    with pytest.raises(ConfigError, match="needs encoder_weights"):
        VisualTrainConfig(encoder="tests.platform.user_encoder:make_encoder")


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A wall model trained long enough on 32x32 frames to learn something (about 6 s)."""
    path = generate_dataset(DataConfig(env="wall", episodes=40, steps=30, val_fraction=0.2, frames=True, frame_size=32),
                            tmp_path_factory.mktemp("learned") / "wall.parquet", workers=1)
    dataset = read_dataset(path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, metrics = train_visual_model(dataset, VisualTrainConfig(
        encoder_steps=300, encoder_batch_size=16, channels=16, steps=800, batch_size=64, hidden=64, depth=2,
        rollout_steps=2, probe_steps=300))
    torch.set_num_threads(threads)
    return model, metrics, dataset


def test_training_lowers_validation_error(learned):
    model, metrics, dataset = learned
    assert metrics["latent_dim"] == 8 * 4 * 4 == model.state_dim
    assert metrics["val_mse_after"] < 0.8 * metrics["val_mse_before"]  # the predictor beats "nothing moves"
    assert metrics["encoder_loss"] < 0.7 * metrics["encoder_loss_first"]
    # The autoencoder has not collapsed: it draws the validation frames better than their mean picture.
    assert metrics["val_reconstruction_mse"] < 0.8 * metrics["val_mean_picture_mse"]
    val = dataset.split("val")
    assert _reconstruction_mse(model, np.concatenate([t.frames for t in val])) == pytest.approx(
        (metrics["val_reconstruction_mse"], metrics["val_mean_picture_mse"]))
    # The state probe reads the dot's position from the latent far better than guessing the mean does.
    val_states = np.concatenate([t.states for t in val])
    assert np.mean(metrics["probe_val_rmse"]) < 0.5 * val_states.std(0).mean()
    assert all(not p.requires_grad for p in model.parameters())
    evaluation = evaluate_model(model, dataset, k=3)
    assert evaluation["one_step_mse"] == pytest.approx(metrics["val_mse_after"], rel=1e-4)
    assert evaluation["k_step_mse"] > evaluation["one_step_mse"] and evaluation["windows"] > 0


def test_training_needs_frames(tmp_path):
    path = generate_dataset(DataConfig(env="wall", episodes=3, steps=20), tmp_path / "states.parquet", workers=1)
    with pytest.raises(ConfigError, match="has no frames: generate one with 'wmplan data --env wall --frames'"):
        train_visual_model(read_dataset(path), VisualTrainConfig(**TINY))


def test_checkpoint_round_trip(models, tmp_path):
    model, metrics = models["pusht"]
    save_checkpoint(model, tmp_path / "ckpt", metrics=metrics)
    loaded = load_world_model(tmp_path / "ckpt")
    assert isinstance(loaded, VisualWorldModel) and loaded.config == model.config
    frames = torch.randint(0, 256, (4, SIZE, SIZE, 3), dtype=torch.uint8)
    z = model.encode(frames)
    torch.testing.assert_close(loaded.encode(frames), z, rtol=0, atol=0)
    a = torch.rand(4, model.action_dim) * 2 - 1
    torch.testing.assert_close(loaded.step(z, a), model.step(z, a), rtol=0, atol=0)
    torch.testing.assert_close(loaded.decode(z), model.decode(z), rtol=0, atol=0)
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="sha256"):
        load_world_model(tmp_path / "ckpt")


def test_user_encoder_plugs_in_frozen(datasets, tmp_path):
    from safetensors.torch import save_file

    from tests.platform.user_encoder import make_encoder

    enc = make_encoder()
    torch.manual_seed(0)
    for p in enc.parameters():
        torch.nn.init.normal_(p, std=0.3)
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, tmp_path / "enc.safetensors")
    spec = "tests.platform.user_encoder:make_encoder"
    cfg = VisualTrainConfig(**{**TINY, "encoder": spec, "encoder_weights": str(tmp_path / "enc.safetensors"), "decoder": False})
    model, metrics = train_visual_model(datasets["wall"], cfg)
    assert model.config.encoder == spec and model.config.encoder_latent_shape == (4, 4, 4) and model.state_dim == 64
    torch.testing.assert_close(model.encoder[0].weight, enc[0].weight)  # frozen: training left it alone
    save_checkpoint(model, tmp_path / "ckpt", metrics=metrics)
    # Code named in a checkpoint runs only when the user names it too.
    with pytest.raises(CheckpointError, match=f"names code to run \\('{spec}' as its encoder\\).*--encoder {spec}"):
        load_world_model(tmp_path / "ckpt")
    loaded = load_world_model(tmp_path / "ckpt", allow_code=[spec])
    frames = torch.randint(0, 256, (2, SIZE, SIZE, 3), dtype=torch.uint8)
    torch.testing.assert_close(loaded.encode(frames), model.encode(frames), rtol=0, atol=0)
    # A checkpoint edited to name other code: refused before anything is imported, by every command's check.
    info = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    info["config"]["encoder"] = "tests.platform.code_trap:make"
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(info))
    from wmplan.jobs.experiment import load_config

    for load in (lambda: load_world_model(tmp_path / "ckpt", allow_code=[spec]),
                 lambda: load_config(None, [f"model={tmp_path / 'ckpt'}", f"encoder={spec}"])):
        with pytest.raises(CheckpointError, match="tests.platform.code_trap:make"):
            load()
    assert "tests.platform.code_trap" not in sys.modules
    save_file({"0.weight": torch.zeros(1)}, tmp_path / "bad.safetensors")
    with pytest.raises(ConfigError, match="do not fit the encoder"):
        train_visual_model(datasets["wall"],
                           VisualTrainConfig(**{**TINY, "encoder": spec, "encoder_weights": str(tmp_path / "bad.safetensors"), "decoder": False}))
    bad_module = {**TINY, "encoder": "no_such_pkg:f", "encoder_weights": str(tmp_path / "enc.safetensors"), "decoder": False}
    with pytest.raises(ConfigError, match="cannot import the encoder module 'no_such_pkg'"):
        train_visual_model(datasets["wall"], VisualTrainConfig(**bad_module))


def test_the_model_sees_goals_as_pictures(models):
    model, _ = models["wall"]
    env = make_env("wall")
    states = torch.tensor([[10.0, 10.0], [50.0, 40.0]])
    frames = render_states(env, states.numpy(), SIZE)
    assert frames.shape == (2, SIZE, SIZE, 3) and frames.dtype == np.uint8 and not np.array_equal(frames[0], frames[1])
    torch.testing.assert_close(observe(env, model, states), model.encode(frames))


FAST = {"cem": dict(iterations=3, samples=32, elites=4), "gd": dict(iterations=20), "grasp": dict(iterations=20, sync_interval=10),
        "latco": dict(iterations=20)}


@pytest.mark.parametrize("planner", ["grasp", "cem", "gd"])
@pytest.mark.parametrize("task", ENV_NAMES)
def test_visual_episode_end_to_end(models, datasets, task, planner):
    model, _ = models[task]
    env = make_env(task)
    segments = [(t.states, t.actions) for t in datasets[task].split("val")] if task == "pusht" else None
    specs = make_episode_specs(env, horizon=2, count=3, seed=0, segments=segments)
    records = run_episodes(env, model, make_planner(planner, horizon=2, **FAST[planner]), specs, planner_name=planner,
                           snapshot_iterations=(1, 2))
    assert [r.episode_id for r in records] == [0, 1, 2]
    for r, spec in zip(records, specs):
        assert not r.failed and r.error is None
        assert r.executed_states.shape == (2 * env.frameskip + 1, env.state_dim)
        np.testing.assert_allclose(r.executed_states[0], spec.start)
        assert r.actions.shape == (2 * env.frameskip, env.action_dim)
        assert np.isfinite(r.final_distance) and np.isfinite(r.model_final_distance)
        assert r.planning_time_s > 0 and r.iterations == FAST[planner]["iterations"]
        assert r.success == bool(env.is_success(r.executed_states[-1], spec.goal))
        assert r.snapshot_iterations == (1, 2) and len(r.success_by_iteration) == 2
    assert summarize(records)["count"] == 3


def test_prediction_strip_and_png(models, datasets, tmp_path):
    model, _ = models["wall"]
    strip = prediction_strip(model, datasets["wall"].split("val"), k=2, frameskip=5, count=2)
    assert strip.shape == (2 * 2 * SIZE, 3 * SIZE, 3) and strip.dtype == np.uint8
    real = datasets["wall"].split("val")[0].frames
    np.testing.assert_array_equal(strip[:SIZE, :SIZE], real[0])
    np.testing.assert_array_equal(strip[:SIZE, SIZE : 2 * SIZE], real[5])
    png = write_png(tmp_path / "s.png", strip).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 3 * SIZE and int.from_bytes(png[20:24], "big") == 4 * SIZE


def test_pixels_from_the_command_line(datasets, tmp_path, capsys, monkeypatch):
    from wmplan.cli import main

    data, ckpt = str(datasets["wall"].path), tmp_path / "ckpt"
    monkeypatch.delenv("WMPLAN_DEBUG", raising=False)

    def run(*args: str) -> subprocess.CompletedProcess:
        # The commands' main in this process, stdout and stderr captured (not a terminal, as in a pipe):
        # five subprocesses only added seconds of imports each, and no time limit can fail on a busy machine.
        capsys.readouterr()
        status = main(list(args))
        said = capsys.readouterr()
        return subprocess.CompletedProcess(args, status, said.out, said.err)

    out = run("train", "--env", "wall", "--obs", "pixels", "--kind", "visual", "--data", data, "--out", str(ckpt), "--encoder-steps", "5",
              "--probe-steps", "5", "--steps", "5", "--batch-size", "16", "--hidden", "16", "--depth", "1", "--channels", "4")
    assert out.returncode == 0, out.stderr
    assert "latent 32 values" in out.stdout and (ckpt / "model.safetensors").exists()
    assert "\r" not in out.stderr and "training probe: 5/5 steps (100%)" in out.stderr
    out = run("eval-model", "--model", str(ckpt), "--data", data, "--k", "2", "--png", str(tmp_path / "strip.png"))
    assert out.returncode == 0, out.stderr
    assert "| one_step_mse (latent) |" in out.stdout and (tmp_path / "strip.png").read_bytes()[:4] == b"\x89PNG"
    out = run("plan", "--env", "wall", "--model", str(ckpt), "--data", data, "--planner", "cem,grasp", "--horizon", "2",
              "--episodes", "3", "--set", "planners.cem.iterations=2", "--set", "planners.grasp.iterations=5",
              "--output", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr
    assert sum(line.startswith(("| cem | 2 | 3 |", "| grasp | 2 | 3 |")) for line in out.stdout.splitlines()) == 2
    states_only = str(tmp_path / "states.parquet")
    assert run("data", "--env", "wall", "--episodes", "3", "--steps", "20", "--workers", "1", "--out", states_only).returncode == 0
    out = run("train", "--env", "wall", "--obs", "pixels", "--data", states_only, "--out", str(tmp_path / "x"))
    assert out.returncode == 2 and "has no frames" in out.stderr and "Traceback" not in out.stderr


def test_prepare_model_with_pixels_generates_frames_and_trains_a_visual_model(tmp_path):
    """What 'model: auto' with 'obs: pixels' does for wmplan run, tune and bench sweep."""
    from wmplan.platform.workflow import default_checkpoint, default_data_path, prepare_model

    assert default_checkpoint("wall", obs="pixels").as_posix() == "checkpoints/wall-pixels"
    assert default_data_path("pusht", obs="pixels").as_posix() == "data/pusht-pixels.parquet"
    with pytest.raises(ConfigError, match="unknown obs 'pixel' .*did you mean 'pixels'"):
        default_checkpoint("wall", obs="pixel")
    data, ckpt, said = tmp_path / "d.parquet", tmp_path / "c", []
    model = prepare_model("wall", data_path=data, checkpoint=ckpt, obs="pixels", progress=said.append,
                          data_config=DataConfig(env="wall", episodes=6, steps=20, val_fraction=0.3, frames=True, frame_size=SIZE),
                          train_config=VisualTrainConfig(**TINY))
    assert isinstance(model, VisualWorldModel) and read_dataset(data).trajectories[0].frames.shape[1:] == (SIZE, SIZE, 3)
    assert any("with 16x16 frames" in m for m in said) and any("training a visual model" in m for m in said)
    # Data and every training stage end with a progress line: done/total, rate, elapsed, "done".
    stages = [m for m in said if m.startswith(("data:", "training "))]
    assert [m.split(":")[0] for m in stages if m.endswith("done") or ", done, " in m] == [
        "data", "training encoder", "training probe", "training predictor"]
    assert any(m.startswith(f"training predictor: {TINY['steps']}/{TINY['steps']} steps (100%)") and " steps/s, " in m for m in stages)
    assert all("\r" not in m for m in said)
    info = json.loads((ckpt / "config.json").read_text())
    assert info["kind"] == "visual" and info["metrics"]["evaluation"]["k"] == 4  # evaluated on 20-step trajectories
    again = prepare_model("wall", data_path=data, checkpoint=ckpt, obs="pixels", progress=said.append)
    z, a = torch.zeros(1, model.state_dim), torch.zeros(1, model.action_dim)
    torch.testing.assert_close(again.step(z, a), model.step(z, a))
