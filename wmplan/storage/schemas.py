"""Versioned pyarrow schemas of the tables a run writes.

Bump :data:`SCHEMA_VERSION` whenever a column changes; readers check it (stored in each file's
metadata under ``wmplan.schema``) and refuse files they do not understand.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 4
METADATA_KEY = b"wmplan.schema"


def _with_version(name: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={METADATA_KEY: f"{name}/{SCHEMA_VERSION}".encode()})


EPISODES = _with_version("episodes", [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("task", pa.string(), nullable=False),
    pa.field("planner", pa.string(), nullable=False),
    pa.field("horizon", pa.int32(), nullable=False),
    pa.field("mode", pa.string(), nullable=False),
    pa.field("episode_id", pa.int32(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("plan_seed", pa.int64(), nullable=False),
    pa.field("success", pa.bool_(), nullable=False),
    pa.field("model_success", pa.bool_(), nullable=False),
    pa.field("final_distance", pa.float64(), nullable=False),
    pa.field("model_final_distance", pa.float64(), nullable=False),
    pa.field("planning_time_s", pa.float64(), nullable=False),
    pa.field("iterations", pa.int32(), nullable=False),
    pa.field("replans", pa.int32(), nullable=False),
    pa.field("executed_steps", pa.int32(), nullable=False),
    pa.field("failed", pa.bool_(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("snapshot_iterations", pa.list_(pa.int32()), nullable=False),
    pa.field("success_by_iteration", pa.list_(pa.bool_()), nullable=False),
    pa.field("transitions", pa.int64(), nullable=False),
    pa.field("budget", pa.int64(), nullable=False),
    pa.field("snapshot_seconds", pa.list_(pa.float64()), nullable=False),
    pa.field("snapshot_transitions", pa.list_(pa.int64()), nullable=False),
    pa.field("time_to_success_s", pa.float64(), nullable=False),
    pa.field("transitions_to_success", pa.int64(), nullable=False),
    pa.field("proprio_weight", pa.float64(), nullable=False),
])
"""One row per episode (with its anytime curve: success of the plan after some iterations, and the
time and model transitions spent by each snapshot; time to success is NaN for a failed episode;
``proprio_weight``, the weight of the proprio term in the planning cost, 0 when off)."""

RESIDUALS = _with_version("residuals", [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("planner", pa.string(), nullable=False),
    pa.field("horizon", pa.int32(), nullable=False),
    pa.field("episode_id", pa.int32(), nullable=False),
    pa.field("iteration", pa.int32(), nullable=False),
    pa.field("step", pa.int32(), nullable=False),
    pa.field("residual", pa.float32()),
])
"""Long form: one row per (episode, iteration, step) of a lifted planner's ``||F(s_t, a_t) - s_{t+1}||``."""

TRAJECTORIES = _with_version("trajectories", [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("planner", pa.string(), nullable=False),
    pa.field("horizon", pa.int32(), nullable=False),
    pa.field("episode_id", pa.int32(), nullable=False),
    pa.field("step", pa.int32(), nullable=False),
    pa.field("state", pa.list_(pa.float64()), nullable=False),
    pa.field("action", pa.list_(pa.float64())),
])
"""One row per executed env step: the real state, and the action taken from it (null at the end)."""

TABLES = {"episodes": EPISODES, "residuals": RESIDUALS, "trajectories": TRAJECTORIES}
