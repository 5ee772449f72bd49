"""Latent geometry: the rank correlation of latent with true distance, the wall-aware distance, the
distance-against-displacement curve, the gate, and what ``wmplan eval-model`` reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from wmplan.cli import main
from wmplan.platform.data import DataConfig, generate_dataset
from wmplan.platform.envs import ENV_NAMES, make_env
from wmplan.platform.envs.base import box_path_distance
from wmplan.platform.envs.wall import door_pairs
from wmplan.platform.models import StateModelConfig, StateWorldModel, VisualModelConfig, VisualWorldModel, save_checkpoint
from wmplan.platform.models.geometry import (
    GEOMETRY_THRESHOLD,
    LatentGeometry,
    check_geometry,
    geometry_from_latents,
    measure_geometry,
    sample_near_pairs,
    sample_state_pairs,
    spearman,
    state_geometry,
)

SIZE = 16  # frames of the tiny pixel models


# -- the rank correlation ------------------------------------------------------------------------------------


def test_spearman_known_values() -> None:
    assert spearman(np.arange(10.0), np.arange(10.0) ** 3) == pytest.approx(1.0)  # any increasing map
    assert spearman(np.arange(10.0), -np.arange(10.0)) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4])) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    # ties take their average rank: ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4)
    r = np.array([1.5, 1.5, 3, 4]) - 2.5
    s = np.array([1.0, 2, 3, 4]) - 2.5
    assert spearman(np.array([5.0, 5, 6, 7]), np.array([1.0, 2, 3, 4])) == pytest.approx(r @ s / math.sqrt((r @ r) * (s @ s)))
    assert math.isnan(spearman(np.ones(5), np.arange(5.0)))  # constant: undefined, no crash
    assert math.isnan(spearman(np.ones(1), np.ones(1)))
    with pytest.raises(ValueError, match="one length"):
        spearman(np.ones(3), np.ones(4))


# -- synthetic encoders with known answers ---------------------------------------------------------------------


def test_an_encoder_that_is_the_identity_on_positions_scores_one() -> None:
    env = make_env("wall")
    g = state_geometry(lambda s: s[:, env.success_coords], env, pairs=128, seed=3)
    assert g.pairs == 128 and g.near_pairs == 64 and g.seed == 3
    assert g.spearman_euclidean == pytest.approx(1.0)
    # the straight-line latent does not know the wall: high, but below 1 against the way through the door
    assert g.spearman_path is not None and 0.85 < g.spearman_path < 0.999 and g.unreachable_pairs == 0
    assert g.correlation == g.spearman_path
    medians = [b.median_latent for b in g.bins if b.pairs]
    assert medians == sorted(medians) and medians[-1] > 10 * medians[0]  # grows over the whole range
    assert g.saturation == g.bins[-1].low  # no saturation before the largest displacements
    assert sum(b.pairs for b in g.bins) == g.pairs + g.near_pairs
    assert check_geometry(g, model="identity", threshold=0.8) is None


def test_a_saturating_encoder_shows_in_the_displacement_bins() -> None:
    """Latent distance tanh(d / 5): it reaches 90% of its plateau at d = 5 atanh(0.9) = 7.4 px."""
    d = np.linspace(0.5, 79.5, 400)
    true_a, true_b = np.zeros((400, 2)), np.stack([d, np.zeros(400)], axis=-1)
    latent_a, latent_b = np.zeros((400, 1)), np.tanh(d / 5)[:, None]
    edges = [0, 2, 4, 6, 8, 10, 20, 40, 80]
    g = geometry_from_latents(latent_a, latent_b, true_a, true_b, bins=edges)
    assert g.spearman_euclidean == pytest.approx(1.0) and g.spearman_path is None  # monotone: ranks intact
    assert [b.pairs for b in g.bins] == [np.sum((d >= lo) & (d < hi)) for lo, hi in zip(edges[:-1], edges[1:])]
    assert g.saturation == 8.0  # the bin [6, 8) has median tanh(7 / 5) = 0.885, [8, 10) tanh(9 / 5) = 0.947
    for b in g.bins:
        inside = d[(d >= b.low) & (d < b.high)]
        assert b.median_latent == pytest.approx(np.median(np.tanh(inside / 5)))
    assert all(abs(b.relative - 1.0) < 0.01 for b in g.bins[-3:])  # flat beyond 10 px

    # Any noise on the plateau scrambles the ranks of every pair beyond it: the rank correlation falls.
    noisy = latent_b + np.random.default_rng(0).normal(0, 0.01, size=latent_b.shape)
    g = geometry_from_latents(latent_a, noisy, true_a, true_b, bins=edges)
    assert g.spearman_euclidean < 0.8
    warning = check_geometry(g, model="saturated")
    assert warning is not None and "saturated" in warning and f"{g.spearman_euclidean:.3f}" in warning
    assert f"below {GEOMETRY_THRESHOLD:g}" in warning and "\n" not in warning


def test_a_constant_encoder_is_undefined_not_a_crash() -> None:
    env = make_env("wall")
    g = state_geometry(lambda s: np.zeros((len(s), 4)), env, pairs=16, near_pairs=4)
    assert math.isnan(g.spearman_euclidean) and g.spearman_path is not None and math.isnan(g.spearman_path)
    assert math.isnan(g.correlation) and g.saturation is None
    assert all(b.median_latent == 0 or b.pairs == 0 for b in g.bins) and all(math.isnan(b.relative) for b in g.bins)
    plain = g.as_dict()
    json.dumps(plain, allow_nan=False)  # NaN becomes null
    assert plain["spearman_euclidean"] is None
    warning = check_geometry(plain, model="constant")
    assert warning is not None and "undefined" in warning


def test_geometry_round_trips_through_a_dict_and_the_gate_reads_either() -> None:
    g = geometry_from_latents(np.arange(6.0)[:, None], np.zeros((6, 1)), np.arange(6.0)[:, None], np.zeros((6, 1)),
                              path=np.r_[np.arange(5.0), np.inf], bins=3, seed=7)
    assert g.unreachable_pairs == 1 and g.spearman_path == pytest.approx(1.0)
    back = LatentGeometry.from_dict(json.loads(json.dumps(g.as_dict())))
    assert back == g
    assert check_geometry(g, model="m") is None and check_geometry(g.as_dict(), model="m") is None
    assert check_geometry(None, model="a state model") is None
    assert check_geometry(g, model="m", threshold=1.01) is not None


def test_pairs_are_seeded_valid_and_leave_the_env_alone() -> None:
    env = make_env("wall")
    env.reset(seed=99)
    before = env.state
    a1, b1 = sample_state_pairs(env, 8, seed=1)
    a2, b2 = sample_state_pairs(env, 8, seed=1)
    assert np.array_equal(a1, a2) and np.array_equal(b1, b2) and not np.array_equal(a1, sample_state_pairs(env, 8, seed=2)[0])
    n1, m1 = sample_near_pairs(env, 8, seed=1)
    assert np.array_equal(n1, sample_near_pairs(env, 8, seed=1)[0])
    assert np.all(np.linalg.norm(n1 - m1, axis=-1) <= 4 * env.frameskip * 2 * 1.8 * math.sqrt(2))  # at most 20 env steps
    assert np.array_equal(env.state, before)
    with pytest.raises(ValueError, match="at least 2"):
        sample_state_pairs(env, 1)


# -- wall-aware distance ---------------------------------------------------------------------------------------


def test_wall_path_distance_goes_through_the_door() -> None:
    env = make_env("wall")  # wall |x - 32| <= 3, door |y - 30| <= 4
    a = np.array([[10.0, 50], [10, 10], [10, 30], [50, 10]])
    b = np.array([[54.0, 50], [20, 50], [54, 30], [54, 56]])
    path = env.path_distance(a, b)
    euclid = np.linalg.norm(a - b, axis=-1)
    # across the wall far from the door: to the door's corners (29, 34) and (35, 34) and on
    assert path[0] == pytest.approx(2 * math.hypot(19, 16) + 6) and path[0] > euclid[0] + 10
    np.testing.assert_allclose(path[1:], euclid[1:])  # same side, straight through the door, same side
    pa, pb = sample_state_pairs(env, 200, seed=0)
    path, euclid = env.path_distance(pa, pb), np.linalg.norm(pa - pb, axis=-1)
    blocked = door_pairs(pa, pb)
    assert blocked.any() and (~blocked).any()
    assert np.all(path[blocked] > euclid[blocked]) and np.allclose(path[~blocked], euclid[~blocked])


def test_pointmaze_path_distance_follows_the_corridors() -> None:
    env = make_env("pointmaze")  # the middle block x in [1.3, 2.3], y <= 2.3, grown by the ball's radius 0.1
    a = np.array([[0.8, 0.8, 0.0, 0.0], [0.8, 0.8, 1.0, -1.0]])
    b = np.array([[2.8, 0.8, 0.0, 0.0], [0.8, 2.8, 0.0, 0.0]])
    path = env.path_distance(a, b)
    assert path[0] == pytest.approx(2 * math.hypot(0.4, 1.6) + 1.2)  # up one arm, over the bend, down the other
    assert path[1] == pytest.approx(2.0)  # along one arm: the straight line (velocity ignored)


def test_box_path_distance_is_the_straight_line_without_boxes_and_inf_when_enclosed() -> None:
    a, b = np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])
    assert box_path_distance(a, b, np.zeros((0, 4)))[0] == pytest.approx(5.0)
    ring = np.array([[-2, 2, 1, 2], [-2, 2, -2, -1], [-2, -1, -2, 2], [1, 2, -2, 2]], dtype=float)  # a closed square ring
    assert box_path_distance(a, np.array([[5.0, 0.0]]), ring)[0] == np.inf
    assert box_path_distance(a, np.array([[0.5, 0.5]]), ring)[0] == pytest.approx(math.hypot(0.5, 0.5))


@pytest.mark.parametrize("name", [n for n in ENV_NAMES if n in ("wall", "pointmaze", "pusht")])
def test_every_task_path_distance_is_none_or_at_least_the_straight_line(name: str) -> None:
    env = make_env(name)
    a, b = sample_state_pairs(env, 32, seed=0)
    path = env.path_distance(a, b)
    if path is None:
        return
    c = env.success_coords
    assert path.shape == (32,) and np.all(np.isfinite(path))
    assert np.all(path >= np.linalg.norm(a[:, c] - b[:, c], axis=-1) - 1e-9)


# -- models that see frames --------------------------------------------------------------------------------------


class _FrameModel:
    """A stand-in observation model whose encoder is a function of the frames."""

    observation = "pixels"
    frame_size = SIZE
    action_dim = 10

    def __init__(self, encode) -> None:
        self._encode = encode
        self.state_dim = 2
        self.action_low, self.action_high = -torch.ones(10), torch.ones(10)

    def step(self, state, action):
        return state

    def encode(self, frames):
        return torch.as_tensor(self._encode(np.asarray(frames, dtype=np.float64)))


def _dot_centre(frames: np.ndarray) -> np.ndarray:
    """Where the red dot is: the centroid of (red - green), which is zero on walls and the floor."""
    w = np.clip(frames[..., 0] - frames[..., 1], 0, None)  # [N, S, S]
    rows, cols = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    total = w.sum(axis=(1, 2))
    return np.stack([(w * cols).sum(axis=(1, 2)) / total, (w * rows).sum(axis=(1, 2)) / total], axis=-1)


def test_measure_geometry_renders_and_encodes_pictures() -> None:
    env = make_env("wall")
    keypoint = measure_geometry(_FrameModel(_dot_centre), env, pairs=96, near_pairs=32)
    assert keypoint is not None and keypoint.spearman_euclidean > 0.98  # a position read off the picture
    pixels = measure_geometry(_FrameModel(lambda f: f.reshape(len(f), -1)), env, pairs=96, near_pairs=32)
    assert pixels is not None and pixels.spearman_euclidean < 0.6  # raw pixels saturate (about 0.2 at 64 px)
    assert pixels.saturation is not None and pixels.saturation < 10 < keypoint.saturation
    assert check_geometry(pixels, model="raw-pixels") is not None and check_geometry(keypoint, model="kp") is None
    state_model = StateWorldModel(StateModelConfig(env="wall", state_dim=2, action_dim=10))
    assert measure_geometry(state_model, env, pairs=4) is None


# -- the command -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wall_frames(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("geometry") / "wall.parquet"
    generate_dataset(DataConfig(env="wall", episodes=4, steps=20, val_fraction=0.5, frames=True, frame_size=SIZE), path, workers=1)
    return str(path)


def test_eval_model_reports_the_geometry_of_a_visual_model(tmp_path, wall_frames, capsys) -> None:
    config = VisualModelConfig(env="wall", state_dim=2, action_dim=10, frame_size=SIZE, channels=8)
    ckpt = tmp_path / "visual"
    save_checkpoint(VisualWorldModel(config, seed=0), ckpt)
    out_json = tmp_path / "eval.json"
    assert main(["eval-model", "--model", str(ckpt), "--data", wall_frames, "--k", "1", "--geometry-pairs", "24",
                 "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    written = json.loads(out_json.read_text())
    g = LatentGeometry.from_dict(written["geometry"])
    assert g.pairs == 24 and g.near_pairs == 12 and len(g.bins) == 7 and g.spearman_path is not None
    assert f"Euclidean {g.spearman_euclidean:.3f}, wall-aware {g.spearman_path:.3f}" in out
    assert "| true displacement | pairs | median latent distance | / typical |" in out
    assert sum(line.startswith("| ") and " - " in line for line in out.splitlines()) == 7
    gate = check_geometry(g, model=str(ckpt))
    assert (gate in out) if gate else "geometry gate: passed" in out
    assert written["one_step_error"] is not None and written["model"] == str(ckpt)

    assert main(["eval-model", "--model", str(ckpt), "--data", wall_frames, "--k", "1", "--geometry-pairs", "0"]) == 0
    assert "latent geometry: not measured (--geometry-pairs 0)" in capsys.readouterr().out
    assert main(["eval-model", "--model", str(ckpt), "--data", wall_frames, "--geometry-pairs", "1"]) == 2
    assert "--geometry-pairs must be" in capsys.readouterr().err


def test_eval_model_says_the_geometry_does_not_apply_to_a_state_model(tmp_path, wall_frames, capsys) -> None:
    ckpt = tmp_path / "state"
    model = StateWorldModel(StateModelConfig(env="wall", state_dim=2, action_dim=10, env_action_low=(-1.8, -1.8),
                                             env_action_high=(1.8, 1.8)))
    save_checkpoint(model, ckpt)
    out_json = tmp_path / "eval.json"
    assert main(["eval-model", "--model", str(ckpt), "--data", wall_frames, "--k", "1", "--json", str(out_json)]) == 0
    assert "latent geometry: does not apply" in capsys.readouterr().out
    assert json.loads(out_json.read_text())["geometry"] is None
