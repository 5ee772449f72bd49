"""Services that are not there, a driver killed with Ray running, and what the terminal shows.

- A tracking server, Ray head or study storage that does not answer ends the command within 60 s
  with one line naming the address (exit 2), before any episode is planned.
- ``kill -9`` of a ``wmplan run`` driver leaves no process of the local Ray it started.
- A run's terminal holds wmplan's lines only: MLflow's migration messages, Ray's token warning and
  start-up line go to ``RUN/wmplan.log``; after an actor dies, wmplan's one line replaces Ray's
  "A worker died or was killed" block.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.jobs.servers import free_ports
from wmplan.jobs.cluster import LOG_FILE, check_ray_head
from wmplan.storage.parquet import read_table
from wmplan.storage.services import ServiceError, check_database_url, check_tracking_uri

BIN = Path(sys.executable).parent
MARKER = "WMPLAN_TEST_SERVICES"
"""Set to a unique token in a driver's environment: every process it starts (Ray's included) inherits it."""
FAST = ["--set", "horizons=2", "--set", "planners=cem", "--set", "planners.cem.iterations=2",
        "--set", "planners.cem.samples=16", "--set", "planners.cem.elites=4"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the test process's Ray or tracking store, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["RAY_AUTH_MODE"] = "disabled"
    env.update(extra)
    return env


def run_args(model, tmp_path: Path, *extra: str) -> list[str]:
    ckpt, data = model
    return [str(BIN / "wmplan"), "run", "--run-id", "r", "--set", f"model={ckpt}", "--set", f"data={data}",
            "--set", f"output={tmp_path / 'runs'}", *extra]


def fails_in_one_line(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run ``args``; it must exit 2 within 60 s with exactly one line on stderr, which is returned."""
    t0 = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=cwd)
    seconds = time.monotonic() - t0
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("wmplan: error: "), done.stderr[-3000:]
    assert seconds < 60, f"took {seconds:.0f} s"
    return lines[0]


def fails_in_one_line_here(args: list[str], monkeypatch, capsys) -> str:
    """``wmplan ARGS`` through its ``main`` in this process (a subprocess adds seconds of imports): it must return
    2 within 60 s with exactly one line on stderr, which is returned, and never start Ray (the function that
    starts or joins it is replaced by one that fails the test). Not for a dead Ray head: this process may have
    joined the session's Ray, and a driver that has joined one does not check another."""
    import wmplan.jobs.cluster
    from wmplan.cli import main

    def start_ray(*a, **k):
        pytest.fail("Ray was started")

    for module in ("wmplan.jobs.cluster", "wmplan.jobs.runner", "wmplan.tuning.study", "wmplan.tuning.sweep"):
        __import__(module)
        monkeypatch.setattr(sys.modules[module], "start_ray", start_ray)
    assert wmplan.jobs.cluster.start_ray is start_ray
    monkeypatch.delenv("WMPLAN_DEBUG", raising=False)
    capsys.readouterr()
    t0 = time.monotonic()
    status = main(args)
    seconds = time.monotonic() - t0
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2, (status, err[-3000:])
    assert len(lines) == 1 and lines[0].startswith("wmplan: error: "), err[-3000:]
    assert seconds < 60, f"took {seconds:.0f} s"
    return lines[0]


def processes_with(token: str) -> dict[int, str]:
    """This user's processes whose environment holds ``MARKER=token``: pid -> command line."""
    needle = f"{MARKER}={token}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return found


def in_session(session: str) -> dict[int, str]:
    """Ray's renamed processes (``ray::...``) with a file open in the session directory ``session``:
    Ray's agents rename themselves, which can overwrite the start of their environment, markers included."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if cmdline.startswith(b"ray::") and any(
                        os.readlink(fd).startswith(session + "/") for fd in (entry / "fd").iterdir()):
                    found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def kill_all(token: str, session: str = "") -> None:
    for pid in {**processes_with(token), **(in_session(session) if session else {})}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for(condition, seconds: float, what: str, proc: subprocess.Popen | None = None):
    """Poll ``condition`` until it returns something true; fail after ``seconds`` or when ``proc`` exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the driver exited ({proc.returncode}) before {what}")
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {seconds:.0f} s")


# -- a service that is not there: one line, exit 2, nothing planned ------------------------------------


def test_unreachable_tracking_server_is_one_line(tmp_path, tiny_wall_model, monkeypatch, capsys):
    (port,) = free_ports(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    line = fails_in_one_line_here(run_args(tiny_wall_model, tmp_path, "--set", "episodes=1", *FAST)[1:], monkeypatch, capsys)
    assert f"http://127.0.0.1:{port}" in line and "MLFLOW_TRACKING_URI" in line and "does not answer" in line
    assert not (tmp_path / "runs" / "r").exists()  # nothing planned, not even a run directory


def test_dead_ray_head_is_one_line(tmp_path, tiny_wall_model):
    (port,) = free_ports(1)
    line = fails_in_one_line(run_args(tiny_wall_model, tmp_path, "--set", "episodes=1", "--set", "tracking=false", *FAST),
                             clean_env(RAY_ADDRESS=f"127.0.0.1:{port}"), tmp_path)
    assert f"Ray head 127.0.0.1:{port} (RAY_ADDRESS): nothing answers" in line
    assert f"ray status --address 127.0.0.1:{port}" in line
    assert not (tmp_path / "runs" / "r").exists()


@pytest.mark.parametrize("url, expected", [
    ("postgresql+psycopg2://root@127.0.0.1:{port}/x", "nothing answers at 127.0.0.1:{port}"),
    ("mysql://root:secret@127.0.0.1:{port}/x", "its database driver 'MySQLdb' is not installed"),
])
def test_study_storage_that_cannot_be_used_is_one_line(tmp_path, tiny_wall_model, url, expected, monkeypatch, capsys):
    if url.startswith("mysql"):
        pytest.importorskip("sqlalchemy")
        if __import__("importlib").util.find_spec("MySQLdb") is not None:
            pytest.skip("MySQLdb is installed here")
    (port,) = free_ports(1)
    url = url.format(port=port)
    ckpt, data = tiny_wall_model
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    line = fails_in_one_line_here(["tune", "--storage", url, "--model", str(ckpt), "--data", str(data),
                                   "--trials", "1", "--output", str(tmp_path / "studies")], monkeypatch, capsys)
    assert f"study storage {url.replace(':secret@', ':***@')}" in line and expected.format(port=port) in line
    assert "secret" not in line
    assert not (tmp_path / "studies").exists()


def test_service_checks_name_the_address_and_what_to_check(tmp_path):
    (port,) = free_ports(1)
    cases = [
        (lambda: check_tracking_uri(f"http://user:pw@127.0.0.1:{port}"),
         f"http://user:***@127.0.0.1:{port} (MLFLOW_TRACKING_URI) does not answer (connection refused)"),
        (lambda: check_tracking_uri(f"postgresql+psycopg2://root@127.0.0.1:{port}/db"), f"nothing answers at 127.0.0.1:{port} (connection refused)"),
        (lambda: check_tracking_uri(f"sqlite:///{tmp_path}/no/such/mlflow.db"), "does not exist"),
        (lambda: check_database_url("nosuchdb://h/x"), "unknown kind of database 'nosuchdb'"),
        (lambda: check_ray_head(f"http://127.0.0.1:{port}"), "is a URL (a dashboard's, for `ray job submit`?)"),
        (lambda: check_ray_head("headnode"), "is not HOST:PORT"),
    ]
    if __import__("importlib").util.find_spec("psycopg") is None:
        cases.append((lambda: check_database_url(f"postgresql://127.0.0.1:{port}/x"),
                      "its database driver 'psycopg' is not installed (pip install 'psycopg[binary]'"))
    for check, expected in cases:
        with pytest.raises(ServiceError) as caught:
            check()
        assert expected in str(caught.value) and "\n" not in str(caught.value)
        assert ":pw@" not in str(caught.value)


def test_a_port_that_is_not_a_ray_head_is_told_apart_in_seconds():
    with socket.socket() as listener:  # accepts connections (the backlog), says nothing
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(ServiceError, match=f"Ray head 127.0.0.1:{port} .*something answers, but not as a Ray head"):
            check_ray_head(f"127.0.0.1:{port}", timeout_s=2)
        assert time.monotonic() - t0 < 30


def test_live_services_pass(ray_cluster):
    check_ray_head(ray_cluster.get_runtime_context().gcs_address)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_tracking_uri(f"http://127.0.0.1:{server.server_address[1]}")
        check_tracking_uri(f"http://127.0.0.1:{server.server_address[1]}/behind/a/proxy")  # a 404 still answers
    finally:
        server.shutdown()
        server.server_close()
    with contextlib.suppress(ImportError):
        import psycopg2

        try:
            psycopg2.connect(dbname="test", host="127.0.0.1", port=5432, user="root", connect_timeout=5).close()
        except psycopg2.OperationalError:
            return
        check_database_url("postgresql+psycopg2://root@127.0.0.1:5432/test")


# -- a killed driver leaves nothing running ---------------------------------------------------------------


def test_killed_driver_leaves_no_ray_process(tmp_path, tiny_wall_model):
    token, session = secrets.token_hex(8), ""
    args = run_args(tiny_wall_model, tmp_path, "--set", "episodes=24", "--set", "batch_size=2", "--set", "actors=2",
                    "--set", "tracking=false", "--set", "horizons=2", "--set", "planners=grasp",
                    "--set", "planners.grasp.iterations=300")
    driver = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
                              env=clean_env(**{MARKER: token}), start_new_session=True)
    try:
        def planning() -> dict[int, str] | None:
            found = processes_with(token)
            actors = [c for c in found.values() if c.startswith("ray::PlanActor")]
            return found if len(actors) == 2 else None

        before = wait_for(planning, 240, "two planning actors", proc=driver)
        kinds = " ".join(before.values())
        assert "raylet" in kinds and "gcs_server" in kinds and "wmplan.jobs.reaper" in kinds, kinds
        said = (tmp_path / "runs" / "r" / LOG_FILE).read_text()
        session = said.split("Ray session ", 1)[1].split(";", 1)[0]
        assert Path(session).is_dir(), said
        driver.kill()  # SIGKILL: no atexit, no ray.shutdown
        driver.wait(timeout=30)
        t0 = time.monotonic()

        def left() -> dict[int, str]:
            return {**processes_with(token), **in_session(session)}

        # The reaper needs about 6 s (SIGTERM, 5 s grace, SIGKILL). Not longer than 30 s: orphaned agents
        # end on their own some 60 s after the GCS is gone, which would hide them from a longer wait.
        alive = left()
        while alive and time.monotonic() < t0 + 30:
            time.sleep(0.5)
            alive = left()
        assert not alive, f"alive {time.monotonic() - t0:.0f} s after the driver was killed: {alive}"
        print(f"\nall {len(before)} processes of the killed driver's Ray ended {time.monotonic() - t0:.1f} s after the kill")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
        kill_all(token, session)


def test_the_reaper_knows_ray_processes_by_marker_or_by_session(tmp_path):
    """Marked processes, and renamed ``ray::`` processes with a file open in the session directory
    (a renamed process may have lost its marker); not a viewer that merely has a session log open."""
    from wmplan.jobs.reaper import MARKER_ENV, ray_processes

    session = tmp_path / "session_x"
    (session / "logs").mkdir(parents=True)
    log = session / "logs" / "agent.log"
    log.write_text("")
    hold = f"import time; f = open({str(log)!r}); time.sleep(120)"
    marker = secrets.token_hex(6)
    env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
    procs = {
        "marked": subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env={**env, MARKER_ENV: marker}),
        "renamed": subprocess.Popen(["ray::FakeAgent", "-c", hold], executable=sys.executable, env=env),
        "viewer": subprocess.Popen([sys.executable, "-c", hold], env=env),
    }
    try:
        def found(sessions: set[str]) -> set[str]:
            pids = set(ray_processes(marker, sessions))
            return {name for name, p in procs.items() if p.pid in pids}

        sessions: set[str] = set()
        wait_for(lambda: found(sessions) == {"marked"}, 30, "the marked process is found")
        wait_for(lambda: found({str(session)}) == {"marked", "renamed"}, 30, "the renamed process with a session file is found")
    finally:
        for p in procs.values():
            p.kill()
            p.wait(timeout=30)


# -- a quiet terminal ------------------------------------------------------------------------------------


def test_a_run_says_only_its_own_lines(tmp_path, tiny_wall_model):
    """A new MLflow store, Ray's default token authentication (in a HOME of its own), and an actor
    killed mid-run: the terminal shows wmplan's lines; the log file holds what Ray and MLflow said."""
    token = secrets.token_hex(8)
    env = clean_env(**{MARKER: token, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "HOME": str(tmp_path)})
    env.pop("RAY_AUTH_MODE")  # Ray's default: a token written to ~/.ray, and a warning saying so
    env.pop("RAY_DEDUP_LOGS_SKIP_REGEX", None)
    args = run_args(tiny_wall_model, tmp_path, "--set", "episodes=8", "--set", "batch_size=2", "--set", "actors=2",
                    "--set", "horizons=2", "--set", "planners=grasp", "--set", "planners.grasp.iterations=300")
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    killed = []
    with out.open("w") as stdout, err.open("w") as stderr:
        driver = subprocess.Popen(args, stdout=stdout, stderr=stderr, cwd=tmp_path, env=env, start_new_session=True)
    try:
        parts = tmp_path / "runs" / "r" / "episodes"
        wait_for(lambda: any(parts.glob("part-*.parquet")), 240, "the first stored batch", proc=driver)
        actors = [pid for pid, c in processes_with(token).items() if c.startswith("ray::PlanActor")]
        if actors:
            os.kill(actors[0], signal.SIGKILL)
            killed.append(actors[0])
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
        kill_all(token)
    said, printed = err.read_text(), out.read_text()
    assert driver.returncode == 0, said[-3000:]
    assert killed, "the run finished before an actor could be killed"
    assert "actor lost during batch" in said  # wmplan's own line ...
    for text in (said, printed):  # ... and not Ray's block, nor MLflow's or Ray's start-up messages
        assert "worker died or was killed" not in text.lower() and "(raylet)" not in text
        assert "Creating initial MLflow database tables" not in text and "Updating database tables" not in text
        assert "alembic" not in text.lower() and "Token authentication" not in text
        assert "Started a local Ray instance" not in text
        assert not [line for line in text.splitlines() if " INFO " in line or "\tINFO " in line], text[-3000:]
    log = (tmp_path / "runs" / "r" / LOG_FILE).read_text()
    assert "Creating initial MLflow database tables" in log
    assert "Token authentication is enabled" in log and "Started a local Ray instance" in log
    assert "Ray's own logs" in log
    assert (tmp_path / ".ray" / "auth_token").exists()  # Ray's token went to the test's HOME, not the user's
    rows = read_table(tmp_path / "runs" / "r").to_pylist()
    assert sorted(r["episode_id"] for r in rows) == list(range(8))  # and the killed actor lost nothing
