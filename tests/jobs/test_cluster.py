"""The multi-machine parts for real: an MLflow tracking server on PostgreSQL, and a Ray job on a `ray start` head.

Both tests start real servers as subprocesses and end every process they started, by process id
(never ``ray stop``: it kills every Ray process on the machine, other sessions' included).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.jobs.servers import free_ports, tail, wait_http
from wmplan.jobs.experiment import load_config
from wmplan.jobs.runner import run_experiment
from wmplan.storage.parquet import read_table

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG = {"host": "127.0.0.1", "port": 5432, "user": "root"}


# -- helpers -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def time_limit(seconds: float, what: str):
    """Raise TimeoutError in the test (main thread) when ``what`` runs past ``seconds``; cleanup still runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise TimeoutError(f"{what} ran past its {seconds:.0f} s limit")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def seconds_between(text: str, first: str, then: str) -> float:
    """Seconds between the time-stamped log lines holding ``first`` and ``then`` (NaN if either is missing)."""
    from datetime import datetime

    stamps = {}
    for line in text.splitlines():
        found = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", line)
        for key in (first, then):
            if found and key in line and key not in stamps:
                stamps[key] = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
    return (stamps[then] - stamps[first]).total_seconds() if len(stamps) == 2 else float("nan")


MARKER = "WMPLAN_TEST_PROCESS"
"""Set to a unique token in the environment of every server a test starts: Ray's workers rename
themselves (``ray::IDLE``) and start sessions of their own, but inherit the environment."""


def _marked(token: str) -> list[int]:
    """Ids of the processes whose environment holds ``MARKER=token`` (this user's processes only)."""
    needle = f"{MARKER}={token}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def end_processes(token: str, grace: float = 10.0) -> list[int]:
    """End every process started with ``MARKER=token`` by its id: SIGTERM, then SIGKILL after ``grace``.
    Returns the ids still alive afterwards (none, normally)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = _marked(token)
        if not pids:
            return []
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _marked(token):
            time.sleep(0.2)
    return _marked(token)


def postgres():
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect(dbname="postgres", connect_timeout=5, **PG)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {PG['host']}:{PG['port']}: {exc}")
    conn.autocommit = True
    return conn


# -- MLflow tracking server on PostgreSQL --------------------------------------------------------------


def test_tracking_server_on_postgresql(ray_cluster, tiny_wall_model, tmp_path, monkeypatch):
    import psycopg2
    from mlflow import MlflowClient

    admin = postgres()
    db = f"wmplan_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    (port,) = free_ports(1)
    uri = f"http://127.0.0.1:{port}"
    artifacts = tmp_path / "artifacts"
    log = tmp_path / "mlflow-server.log"
    token = secrets.token_hex(8)
    server = None
    leftover: list[int] = []
    t0 = time.monotonic()
    try:
        with time_limit(240, "the tracking-server test"):
            with log.open("wb") as out:
                server = subprocess.Popen(
                    [str(BIN / "mlflow"), "server", "--backend-store-uri", f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{db}",
                     "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
                    env={**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, MARKER: token},
                )
            wait_http(f"{uri}/health", seconds=300, proc=server, log=log)
            print(f"\nmlflow server on PostgreSQL answered /health after {time.monotonic() - t0:.1f} s")

            monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
            ckpt, data = tiny_wall_model
            config = load_config(None, [f"model={ckpt}", f"data={data}", f"output={tmp_path / 'runs'}", "planners=cem,grasp",
                                        "horizons=2", "episodes=6", "batch_size=3", "actors=2", "planners.grasp.iterations=40",
                                        "planners.cem.iterations=2", "planners.cem.samples=32", "planners.cem.elites=4"])
            result = run_experiment(config, run_id="pg-run", say=lambda m: None)
            assert result.planned == 12 and result.failed_batches == 0

            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name(config.name)
            assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server proxies artifacts
            runs = client.search_runs([experiment.experiment_id])
            parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
            assert len(parents) == 1
            parent = parents[0]
            assert parent.info.run_name == "pg-run" and parent.info.status == "FINISHED"
            assert parent.data.params["episodes"] == "6"
            assert parent.data.metrics["episodes"] == 12
            children = {r.data.tags["wmplan.planner"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
            assert set(children) == {"cem", "grasp"}
            for name, child in children.items():
                summary = result.summaries[name, 2]
                assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
                assert child.info.run_name == f"{name}-h2" and child.info.status == "FINISHED"
                metrics = child.data.metrics
                assert metrics["episodes"] == summary["count"] == 6
                assert metrics["successes"] == summary["successes"] and metrics["failures"] == summary["failures"] == 0
                for metric, key in (("success_rate", "success_rate"), ("success_ci_low", "success_low"),
                                    ("success_ci_high", "success_high"), ("model_success_rate", "model_success_rate")):
                    assert metrics[metric] == pytest.approx(summary[key]), metric
                assert parent.data.metrics[f"{name}/success_rate"] == pytest.approx(summary["success_rate"])

            # The Parquet parts are listed and downloaded through the server, byte for byte the local ones.
            local = sorted((result.directory / "episodes").glob("part-*.parquet"))
            listed = [f.path for f in client.list_artifacts(parent.info.run_id, "results/episodes")]
            assert sorted(listed) == [f"results/episodes/{p.name}" for p in local] and len(local) == 4  # 2 planners x 6 / 3
            fetched = Path(client.download_artifacts(parent.info.run_id, "results", str(tmp_path / "download")))
            for part in local:
                assert (fetched / "episodes" / part.name).read_bytes() == part.read_bytes()
            rows = read_table(fetched).to_pylist()
            keys = sorted((r["planner"], r["horizon"], r["episode_id"]) for r in rows)
            assert keys == sorted((p, 2, e) for p in ("cem", "grasp") for e in range(6))
            assert len(list(artifacts.rglob("part-*.parquet"))) >= len(local)  # stored under --artifacts-destination

            # The runs are stored in PostgreSQL itself.
            conn = psycopg2.connect(dbname=db, connect_timeout=5, **PG)
            with contextlib.closing(conn), conn.cursor() as cur:
                cur.execute("SELECT run_uuid, name, status FROM runs")
                stored = {name: (run_uuid, status) for run_uuid, name, status in cur.fetchall()}
                assert set(stored) == {"pg-run", "cem-h2", "grasp-h2"}
                assert {status for _, status in stored.values()} == {"FINISHED"}
                assert stored["pg-run"][0] == parent.info.run_id
                cur.execute("SELECT r.name, m.value FROM latest_metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
                            "WHERE m.key = 'success_rate' AND r.name <> 'pg-run'")
                latest = dict(cur.fetchall())
                assert latest == pytest.approx({f"{p}-h2": result.summaries[p, 2]["success_rate"] for p in ("cem", "grasp")})
    finally:
        leftover = end_processes(token)  # the server and its workers, by process id
        if server is not None:
            server.wait(timeout=10)
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
        print(f"tracking-server test took {time.monotonic() - t0:.1f} s")
    assert not leftover, f"processes of the MLflow server outlived SIGKILL: {leftover}"


# -- `ray start --head` and `ray job submit` -------------------------------------------------------------

README_MARK = "runs this block's `ray job submit` command as written"
# Appended to the README's command: a small run (a later --set wins), a known run id.
SMALL_RUN = ["--set", "planners=cem", "--set", "horizons=2", "--set", "episodes=4", "--set", "batch_size=2",
             "--set", "actors=2", "--set", "planners.cem.iterations=2", "--set", "planners.cem.samples=16",
             "--set", "planners.cem.elites=4", "--set", "snapshots=0", "--run-id", "job1"]


def readme_submit_command() -> str:
    """The README's `ray job submit` command, with its continuation lines, from the block marked for this test."""
    text = (ROOT / "README.md").read_text()
    assert README_MARK in text, "the README's cluster block lost its test marker"
    block = text.split(README_MARK, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("ray job submit "))
    command = [lines[first]]
    while command[-1].endswith("\\"):
        command.append(lines[first + len(command)])
    return "\n".join(command)


def test_the_readme_command_is_extracted_whole():
    command = readme_submit_command()
    assert command.startswith("ray job submit --working-dir .")
    assert "-m wmplan run" in command and not command.endswith("\\")


def test_ray_job_submit_to_a_started_head(tiny_wall_model, tmp_path, uri):
    """The README's command against a head whose PATH finds a Python without wmplan's dependencies.

    That is the usual trap: Ray started as ``.venv/bin/ray start --head`` outside the activated
    environment runs its workers with the environment's Python, but a job's ``python`` is whatever
    the head's PATH finds (here a Python run with ``-S``: no site-packages, so no pyarrow).
    """
    pytest.importorskip("aiohttp", reason="ray job submit needs ray[default]")
    ckpt, _ = tiny_wall_model
    shared = tmp_path / "shared"  # stands for the storage every node reads: the checkpoint lives there
    shutil.copytree(ckpt, shared / "checkpoints" / "wall")
    output = shared / "runs"
    trap = tmp_path / "trap-bin"
    trap.mkdir()
    (trap / "python").write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    (trap / "python").chmod(0o755)
    assert subprocess.run([str(trap / "python"), "-c", "import pyarrow"], capture_output=True).returncode != 0

    temp_dir = tempfile.mkdtemp(prefix="wmr", dir="/tmp")  # short: Ray's unix socket paths must stay under ~107 chars
    (gcs, dashboard, client_port, agent_http, agent_grpc, runtime_env_agent, metrics, node_manager,
     object_manager) = free_ports(9)
    address = f"http://127.0.0.1:{dashboard}"
    # The head and the job's driver must not see the test process's Ray or tracking store.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV")}
    env["RAY_AUTH_MODE"] = "disabled"
    token = env[MARKER] = secrets.token_hex(8)
    path = [d for d in env.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != BIN.resolve()]
    head_env = {**env, "PATH": os.pathsep.join([str(trap), *path])}
    # Where the user types the command: the environment activated (for `ray`), the README's variables set.
    user_env = {**env, "PATH": os.pathsep.join([str(BIN), *path]), "RAY_ADDRESS": address, "MLFLOW_TRACKING_URI": uri,
                "WMPLAN_PYTHON": sys.executable, "SHARED": str(shared)}
    log = tmp_path / "ray-head.log"
    head = None
    leftover: list[int] = []
    t0 = time.monotonic()
    try:
        with time_limit(300, "the ray job test"):
            with log.open("wb") as out:
                head = subprocess.Popen(
                    [str(BIN / "ray"), "start", "--head", "--block", "--port", str(gcs), "--dashboard-port", str(dashboard),
                     "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--num-cpus", "2", "--num-gpus", "0",
                     "--temp-dir", temp_dir, "--object-store-memory", str(200 * 1024**2),
                     "--ray-client-server-port", str(client_port), "--dashboard-agent-listen-port", str(agent_http),
                     "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env_agent),
                     "--metrics-export-port", str(metrics), "--node-manager-port", str(node_manager),
                     "--object-manager-port", str(object_manager), "--disable-usage-stats"],
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=head_env,
                )
            wait_http(f"{address}/api/version", seconds=300, proc=head, log=log)
            started = time.monotonic() - t0

            command = readme_submit_command() + " " + " ".join(SMALL_RUN)
            t1 = time.monotonic()
            submit = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=900, env=user_env, cwd=ROOT)
            ran = time.monotonic() - t1
            said = submit.stdout + submit.stderr
            assert submit.returncode == 0, f"ray job submit failed:\n{said[-6000:]}\n--- head log:\n{tail(log)}"
            # The working dir went up without the environment, results, data or checkpoints: small, quick.
            unpacked = [d for d in Path(temp_dir).glob("session_latest/runtime_resources/working_dir_files/_ray_pkg_*") if d.is_dir()]
            assert len(unpacked) == 1, unpacked
            files = [f for f in unpacked[0].rglob("*") if f.is_file()]
            upload_mib = sum(f.stat().st_size for f in files) / 2**20
            assert (unpacked[0] / "wmplan" / "jobs" / "runner.py").exists()
            for excluded in (".venv", "runs", "checkpoints", "data", "mlflow.db", "mlartifacts"):
                assert not (unpacked[0] / excluded).exists(), f"{excluded} was uploaded with the working directory"
            assert upload_mib < 20, f"the working dir upload is {upload_mib:.1f} MiB"
            upload_s = seconds_between(said, "Uploading package", "submitted successfully")
            assert not upload_s > 30, f"uploading the working dir took {upload_s:.1f} s"

            with urllib.request.urlopen(f"{address}/api/jobs/", timeout=10) as response:
                jobs = json.load(response)
            assert len(jobs) == 1, jobs
            job = jobs[0]
            assert job["status"] == "SUCCEEDED" and job["type"] == "SUBMISSION", job
            submission, job_id = job["submission_id"], job["job_id"]
            # The driver ran with $WMPLAN_PYTHON and every actor with it too (py_executable).
            assert job["entrypoint"].startswith(f"{sys.executable} -m wmplan run examples/wall.yaml"), job["entrypoint"]
            assert job["runtime_env"]["py_executable"] == sys.executable, job["runtime_env"]
            logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", address, submission],
                                  capture_output=True, text=True, timeout=600, env=user_env, cwd=tmp_path).stdout
            assert "| planner | H | episodes |" in logs and "| cem | 2 | 4 |" in logs, logs[-4000:]
            assert f"results in {output / 'job1'}" in logs

            # The driver joined this head (Ray sets RAY_ADDRESS for a job), not another Ray on the machine:
            # the run's actors are on this cluster, under the job's id.
            with urllib.request.urlopen(f"{address}/api/v0/actors?limit=1000&detail=1", timeout=30) as response:
                actors = json.load(response)["data"]["result"]["result"]
            ours = sorted(a["name"] for a in actors if a.get("class_name") == "PlanActor" and a.get("job_id") == job_id)
            assert ours == ["wmplan-job1-actor-0", "wmplan-job1-actor-1"], actors

            # The run directory under $SHARED/runs holds every episode exactly once.
            rows = read_table(output / "job1").to_pylist()
            keys = [(r["planner"], r["horizon"], r["episode_id"]) for r in rows]
            assert sorted(keys) == [("cem", 2, e) for e in range(4)]
            assert not any(r["failed"] for r in rows)
            # The tracking URI reached the job through the runtime env: the run is recorded there.
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            experiment = client.get_experiment_by_name("wall-horizons")
            assert experiment is not None, "the job recorded nothing in the store named by MLFLOW_TRACKING_URI"
            parents = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
            assert [(r.info.run_name, r.info.status, r.data.metrics.get("episodes")) for r in parents] == [("job1", "FINISHED", 4)]
            print(f"\nray head up in {started:.1f} s; job submitted and finished in {ran:.1f} s "
                  f"(upload {upload_mib:.2f} MiB in {len(files)} files, {upload_s:.1f} s)")
    finally:
        # Not `ray stop`: it kills every Ray process on the machine. SIGTERM to `ray start --block` shuts
        # its node down (about 2 s); whatever is left (the head, its workers and the job's driver all
        # inherit MARKER=token) is then ended by process id.
        if head is not None and head.poll() is None:
            head.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(timeout=20)
        leftover = end_processes(token, grace=5)
        if head is not None:
            head.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
        print(f"ray job test took {time.monotonic() - t0:.1f} s")
    assert not leftover, f"processes of the Ray head outlived SIGKILL: {leftover}"
