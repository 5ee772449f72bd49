"""Parquet results: append as records arrive, read back exactly, versioned, resumable."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wmplan.platform.episode import EpisodeRecord
from wmplan.storage.parquet import StorageError, completed_episodes, read_runs, read_table, write_records


def record(episode_id: int, *, planner="grasp", residual=True, failed=False) -> EpisodeRecord:
    rng = np.random.default_rng(episode_id)
    return EpisodeRecord(
        task="wall", planner=planner, horizon=3, episode_id=episode_id, seed=100 + episode_id, mode="open_loop",
        plan_seed=7, success=episode_id % 2 == 0, model_success=True, final_distance=float(episode_id),
        model_final_distance=0.5, planning_time_s=1.25, iterations=4, replans=1, failed=failed,
        error="model produced NaN or inf" if failed else None,
        executed_states=rng.normal(size=(16, 2)), actions=rng.normal(size=(15, 2)),
        residual=rng.random((4, 3)).astype(np.float32) if residual else None,
    )


def test_round_trip_of_all_tables(tmp_path):
    recs = [record(0), record(1, failed=True), record(2, planner="cem", residual=False)]
    write_records(tmp_path, "run-a", recs[:2])
    write_records(tmp_path, "run-a", recs[2:])  # a second batch: a second part
    assert len(list((tmp_path / "episodes").glob("part-*.parquet"))) == 2

    episodes = read_table(tmp_path).sort_by("episode_id").to_pylist()
    assert [e["episode_id"] for e in episodes] == [0, 1, 2]
    assert episodes[1]["failed"] and episodes[1]["error"] == "model produced NaN or inf"
    assert episodes[2]["planner"] == "cem" and episodes[2]["executed_steps"] == 15
    assert all(e["run_id"] == "run-a" for e in episodes)

    res = read_table(tmp_path, "residuals")
    assert res.num_rows == 2 * 4 * 3  # only the lifted planner's episodes
    row = res.filter(pa.compute.and_(pa.compute.equal(res["episode_id"], 1), pa.compute.equal(res["iteration"], 2))).sort_by("step")
    np.testing.assert_allclose(row["residual"].to_numpy(), recs[1].residual[2], rtol=1e-6)

    traj = read_table(tmp_path, "trajectories").filter(pa.compute.equal(pa.compute.field("episode_id"), 0)).sort_by("step")
    np.testing.assert_allclose(np.array(traj["state"].to_pylist()), recs[0].executed_states)
    assert traj["action"].to_pylist()[-1] is None


def test_nan_residuals_are_null(tmp_path):
    r = record(0)
    padded = r.residual.copy()
    padded[:, 2] = np.nan  # a shorter MPC replan
    r2 = EpisodeRecord(**{**{f: getattr(r, f) for f in r.__dataclass_fields__}, "residual": padded})
    write_records(tmp_path, "run", [r2])
    res = read_table(tmp_path, "residuals")
    assert res["residual"].null_count == 4


def test_completed_episodes_and_many_runs(tmp_path):
    write_records(tmp_path / "a", "a", [record(0), record(1)])
    write_records(tmp_path / "b", "b", [record(0, planner="gd")])
    assert completed_episodes(tmp_path / "a") == {("grasp", 3, 0), ("grasp", 3, 1)}
    assert completed_episodes(tmp_path / "empty") == set()
    both = read_runs([tmp_path / "a", tmp_path / "b"])
    assert sorted(set(both["run_id"].to_pylist())) == ["a", "b"] and both.num_rows == 3


def test_foreign_or_corrupt_parts_are_refused(tmp_path):
    write_records(tmp_path, "run", [record(0)])
    pq.write_table(pa.table({"x": [1]}), tmp_path / "episodes" / "part-zzz.parquet")
    with pytest.raises(StorageError, match="no wmplan schema tag"):
        read_table(tmp_path)
    (tmp_path / "episodes" / "part-zzz.parquet").write_bytes(b"garbage")
    with pytest.raises(StorageError, match="cannot read"):
        read_table(tmp_path)
    with pytest.raises(StorageError, match="unknown table"):
        read_table(tmp_path, "nope")
