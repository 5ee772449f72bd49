"""A node dies, nothing is lost: a run on a real three-node Ray cluster on one machine loses a worker node mid-run.

The cluster (``ray.cluster_utils.Cluster``: a head that only runs the driver, and two worker nodes of one
declared CPU each, so that each holds one of the run's two actors) lives in a subprocess with its own
Ray temp dir: it needs a driver connection of its own (the test session's Ray may be initialised), and
it must not write ``/tmp/ray/ray_current_cluster``, where another session's ``ray.init()`` would find it.
Every process it starts carries a marker in its environment and is ended by process id afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The run: one planner, 12 episodes in 6 batches of 2; each batch takes seconds on one core.
EPISODES, BATCH = 12, 2
RUN_OVERRIDES = ["planners=cem", "horizons=2", f"episodes={EPISODES}", f"batch_size={BATCH}", "actors=2",
                 "tracking=false", "planners.cem.iterations=1500", "planners.cem.samples=512", "planners.cem.elites=8",
                 "snapshots=0"]
# The GCS declares a node dead after missed health checks (about 15-30 s at Ray's defaults): faster here.
FAST_DEATH = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
              "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def drive(*, checkpoint: str, data: str, output: str, report: str) -> None:
    """In the subprocess: start the cluster, run, kill a worker node once a batch is stored, report as JSON."""
    import ray
    from ray.cluster_utils import Cluster

    from wmplan.jobs.experiment import load_config
    from wmplan.jobs.runner import run_experiment
    from wmplan.storage.parquet import completed_episodes, read_table

    t0 = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 * 1024**2,
                                                            "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, object_store_memory=80 * 1024**2) for _ in range(2)]
    cluster.wait_for_nodes(timeout=60)
    facts: dict = {"cluster_up_s": round(time.monotonic() - t0, 1)}
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        config = load_config(None, [f"model={checkpoint}", f"data={data}", f"output={output}", *RUN_OVERRIDES])
        directory = Path(output) / "multinode"
        messages: list[str] = []

        def kill_a_worker() -> None:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                try:
                    stored = len(completed_episodes(directory))
                except Exception:  # noqa: BLE001 - the table may not exist yet
                    stored = 0
                if stored:
                    victim = workers[0]
                    facts["stored_at_kill"] = stored
                    facts["killed_node"] = victim.node_id
                    facts["killed_at_s"] = round(time.monotonic() - t0, 1)
                    cluster.remove_node(victim, allow_graceful=False)  # SIGKILL: raylet, object store, its workers
                    facts["kill_took_s"] = round(time.monotonic() - t0 - facts["killed_at_s"], 1)
                    return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_a_worker, daemon=True)
        killer.start()
        result = run_experiment(config, run_id="multinode", say=messages.append)
        killer.join(timeout=30)
        facts["seconds"] = round(time.monotonic() - t0, 1)
        facts["planned"] = result.planned
        facts["failed_batches"] = result.failed_batches
        facts["messages"] = messages
        rows = read_table(directory).to_pylist()
        facts["keys"] = [[r["planner"], r["horizon"], r["episode_id"]] for r in rows]
        facts["failed_rows"] = sum(bool(r["failed"]) for r in rows)
        facts["alive_nodes"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        facts["survivor"] = workers[1].node_id
        facts["head"] = cluster.head_node.node_id
    finally:
        Path(report).write_text(json.dumps(facts))
        ray.shutdown()
        cluster.shutdown()


def test_a_worker_node_dies_mid_run_and_nothing_is_lost(tiny_wall_model, tmp_path):
    from tests.jobs.test_cluster import MARKER, end_processes

    ckpt, data = tiny_wall_model
    ray_tmp = tempfile.mkdtemp(prefix="wmn", dir="/tmp")  # short: Ray's unix socket paths must stay under ~107 chars
    report = tmp_path / "report.json"
    token = secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(FAST_DEATH, RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT), **{MARKER: token})
    log = tmp_path / "driver.log"
    t0 = time.monotonic()
    leftover: list[int] = []
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, __file__, str(ckpt), str(data), str(tmp_path / "runs"), str(report)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
            try:
                proc.wait(timeout=240)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(timeout=30)
                pytest.fail(f"the multi-node run did not finish in 240 s:\n{log.read_text(errors='replace')[-6000:]}")
    finally:
        leftover = end_processes(token, grace=5)  # whatever outlived the cluster's own shutdown, by process id
        shutil.rmtree(ray_tmp, ignore_errors=True)
        print(f"\nmulti-node test took {time.monotonic() - t0:.1f} s")
    said = log.read_text(errors="replace")
    assert proc.returncode == 0, f"the driver failed ({proc.returncode}):\n{said[-6000:]}"
    facts = json.loads(report.read_text())
    print({k: v for k, v in facts.items() if k not in ("keys", "messages")})

    # A worker node was killed mid-run: after the first batch was stored, before the last.
    assert "killed_node" in facts, f"no batch was stored, so no node was killed:\n{said[-4000:]}"
    assert 0 < facts["stored_at_kill"] < EPISODES
    # Its actor died under a batch, which ran again elsewhere.
    lost = [m for m in facts["messages"] if "actor lost" in m]
    assert lost, facts["messages"]
    # Every episode stored exactly once, none failed, and the run finished on the surviving nodes.
    assert sorted(map(tuple, facts["keys"])) == [("cem", 2, e) for e in range(EPISODES)]
    assert facts["failed_rows"] == 0 and facts["failed_batches"] == 0
    assert facts["planned"] == EPISODES
    assert facts["killed_node"] not in facts["alive_nodes"]
    assert sorted(facts["alive_nodes"]) == sorted([facts["head"], facts["survivor"]])
    assert not leftover, f"processes of the test cluster outlived SIGKILL: {leftover}"


# -- the pool's side, on the session's one-node Ray: actors that cannot be placed or cannot start ---------


def test_an_actor_the_cluster_cannot_place_takes_no_item(ray_cluster, tmp_path):
    """Like a replacement whose node died while the surviving nodes are full: the placed actor does the work."""
    from tests.jobs.actors import Squarer
    from wmplan.jobs.pool import run_on_actors

    remote = ray_cluster.remote(num_cpus=1.5)(Squarer)  # two of them do not fit in the session's 2 CPUs
    t0 = time.monotonic()
    out = dict(run_on_actors(lambda: remote.remote(str(tmp_path)), lambda actor, x: actor.run.remote(x), list(range(6)),
                             actors=2, stall_timeout_s=60))
    assert sorted(out) == list(range(6)) and all(out[i][0] == i * i for i in out)
    assert len({pid for _, pid in out.values()}) == 1  # one actor ran everything; the other never started
    assert time.monotonic() - t0 < 50, "items waited for the actor that could not be placed"


def test_actors_that_cannot_start_are_given_up_and_items_fail(ray_cluster):
    from tests.jobs.actors import Squarer
    from wmplan.jobs.pool import Failure, run_on_actors

    remote = ray_cluster.remote(num_cpus=0.5)(Squarer)
    made = []

    def make():
        made.append(1)
        return remote.remote(None)  # Path(None): the constructor raises TypeError

    out = dict(run_on_actors(make, lambda actor, x: actor.run.remote(x), [1, 2, 3], actors=2, max_attempts=2,
                             stall_timeout_s=60))
    assert sorted(out) == [0, 1, 2]
    assert all(isinstance(r, Failure) and r.attempts == 0 and "could not start (2 tries)" in r.reason and "TypeError" in r.reason
               for r in out.values()), out
    assert len(made) == 4  # two slots, two tries each, then given up (no endless replacing)


if __name__ == "__main__":
    drive(checkpoint=sys.argv[1], data=sys.argv[2], output=sys.argv[3], report=sys.argv[4])
