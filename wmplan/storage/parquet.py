"""Episode results on disk: Parquet parts written as results arrive, read back as one table.

A run's results live in a directory with one sub-directory per table (``episodes/``,
``residuals/``, ``trajectories/``). Every batch of records becomes one part file per table,
written to a temporary name and renamed, so a crash never leaves a half-written file and results
already written are never lost. :func:`completed_episodes` tells a resumed run what is done.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wmplan.platform.episode import EpisodeRecord
from wmplan.storage.schemas import METADATA_KEY, SCHEMA_VERSION, TABLES

__all__ = ["records_to_tables", "write_records", "read_table", "read_runs", "completed_episodes", "set_aside_unreadable",
           "select_group", "StorageError", "SET_ASIDE_SUFFIX"]

SET_ASIDE_SUFFIX = ".unreadable"
"""Appended to the name of a part file that :func:`set_aside_unreadable` moved out of the way."""


class StorageError(RuntimeError):
    """A results directory or file is missing, unreadable, or of another schema version."""


def records_to_tables(run_id: str, records: Sequence[EpisodeRecord]) -> dict[str, pa.Table]:
    """Convert episode records to the three tables (episodes, residuals, trajectories)."""
    rows = [{"run_id": run_id, **r.to_row()} for r in records]
    episodes = pa.Table.from_pylist(rows, schema=TABLES["episodes"])

    res: dict[str, list] = {k: [] for k in ("run_id", "planner", "horizon", "episode_id", "iteration", "step", "residual")}
    traj: dict[str, list] = {k: [] for k in ("run_id", "planner", "horizon", "episode_id", "step", "state", "action")}
    for r in records:
        if r.residual is not None and r.residual.size:
            iters, steps = r.residual.shape
            n = iters * steps
            res["run_id"] += [run_id] * n
            res["planner"] += [r.planner] * n
            res["horizon"] += [r.horizon] * n
            res["episode_id"] += [r.episode_id] * n
            res["iteration"].append(np.repeat(np.arange(iters, dtype=np.int32), steps))
            res["step"].append(np.tile(np.arange(steps, dtype=np.int32), iters))
            res["residual"].append(r.residual.reshape(-1))
        n = len(r.executed_states)
        traj["run_id"] += [run_id] * n
        traj["planner"] += [r.planner] * n
        traj["horizon"] += [r.horizon] * n
        traj["episode_id"] += [r.episode_id] * n
        traj["step"] += list(range(n))
        traj["state"] += [s.tolist() for s in r.executed_states]
        traj["action"] += [a.tolist() for a in r.actions] + [None] * (n - len(r.actions))
    columns: dict[str, Any] = dict(res)  # the lists, with the chunked ones joined into arrays
    for key in ("iteration", "step", "residual"):
        columns[key] = np.concatenate(res[key]) if res[key] else np.zeros(0, dtype=np.float32 if key == "residual" else np.int32)
    residual_values = columns["residual"]
    columns["residual"] = pa.array(residual_values, type=pa.float32(), mask=np.isnan(residual_values))
    residuals = pa.table(columns, schema=TABLES["residuals"])
    trajectories = pa.Table.from_pydict(traj, schema=TABLES["trajectories"])
    return {"episodes": episodes, "residuals": residuals, "trajectories": trajectories}


def write_records(directory: str | os.PathLike[str], run_id: str, records: Sequence[EpisodeRecord]) -> list[Path]:
    """Append ``records`` to the run's results in ``directory`` as one new part per table.

    Returns the files written. Each is complete or absent: written under a temporary name, then
    renamed.
    """
    if not records:
        return []
    directory = Path(directory)
    part = f"part-{uuid.uuid4().hex}.parquet"
    written = []
    for name, table in records_to_tables(run_id, records).items():
        if table.num_rows == 0:
            continue
        folder = directory / name
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{part}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        final = folder / part
        tmp.replace(final)
        written.append(final)
    return written


def _check_version(path: Path, name: str) -> None:
    meta = pq.read_schema(path).metadata or {}
    tag = meta.get(METADATA_KEY, b"").decode()
    if tag != f"{name}/{SCHEMA_VERSION}":
        raise StorageError(f"{path} holds {tag or 'no wmplan schema tag'}; this wmplan reads {name}/{SCHEMA_VERSION}")


def read_table(directory: str | os.PathLike[str], name: str = "episodes") -> pa.Table:
    """All parts of table ``name`` in one run's results directory, as one table (empty if none)."""
    if name not in TABLES:
        raise StorageError(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
    folder = Path(directory) / name
    parts = sorted(folder.glob("part-*.parquet")) if folder.exists() else []
    tables = []
    for path in parts:
        try:
            _check_version(path, name)
            tables.append(pq.read_table(path, schema=TABLES[name]))
        except (pa.ArrowInvalid, OSError) as exc:
            raise StorageError(f"cannot read {path}: {exc}") from None
    if not tables:
        return TABLES[name].empty_table()
    return pa.concat_tables(tables)


def set_aside_unreadable(directory: str | os.PathLike[str]) -> dict[str, str]:
    """Rename every part that cannot be read (truncated, not Parquet, another schema) out of the way.

    A batch's records are one part per table under the same file name, so when any table's part of
    a batch is unreadable, that batch's parts in every table are set aside together (renamed to
    ``part-....parquet.unreadable``): its episodes count as not done and a resumed run plans them
    again, without duplicating the rows of the tables that were readable.

    Returns:
        ``{"TABLE/PART": reason}`` for each unreadable file found (empty when all are readable).
    """
    directory = Path(directory)
    bad: dict[str, str] = {}
    for name in TABLES:
        folder = directory / name
        for path in sorted(folder.glob("part-*.parquet")) if folder.exists() else []:
            try:
                _check_version(path, name)
                pq.read_table(path, schema=TABLES[name])
            except (pa.ArrowInvalid, OSError, StorageError) as exc:
                bad[f"{name}/{path.name}"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for part in {key.split("/", 1)[1] for key in bad}:
        for name in TABLES:
            path = directory / name / part
            if path.exists():
                path.replace(path.with_name(path.name + SET_ASIDE_SUFFIX))
    return bad


def read_runs(directories: Iterable[str | os.PathLike[str]], name: str = "episodes") -> pa.Table:
    """Table ``name`` of many runs, concatenated (each row carries its ``run_id``)."""
    return pa.concat_tables([read_table(d, name) for d in directories])


def completed_episodes(directory: str | os.PathLike[str]) -> set[tuple[str, int, int]]:
    """``(planner, horizon, episode_id)`` of every episode already stored in a run's results."""
    table = read_table(directory, "episodes")
    return set(zip(table["planner"].to_pylist(), table["horizon"].to_pylist(), table["episode_id"].to_pylist()))


def select_group(table: pa.Table, *, planner: str, horizon: int) -> pa.Table:
    """The rows of ``table`` (any of the three tables) of one planner and horizon."""
    mask = pc.and_(pc.equal(table["planner"], planner), pc.equal(table["horizon"], horizon))
    return table.filter(mask)
