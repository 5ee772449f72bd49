"""The Ray a driver plans on: joined or started, checked first, cleaned up after, and quiet.

- :func:`check_services` asks the Ray head (and the tracking store) whether they answer before
  anything starts: ``ray.init`` at an address where no head answers retries for minutes.
- :func:`start_ray` joins the cluster at ``RAY_ADDRESS`` (or the config's ``address``), or starts
  a local Ray; a local Ray is watched by :mod:`wmplan.jobs.reaper`, which ends all of its
  processes when the driver dies, ``kill -9`` included.
- :func:`log_to_file` sends what Ray, MLflow and the database layer log in the driver to the run's
  log file instead of the terminal; :func:`hide_worker_death_notices` keeps Ray's long "worker
  died" block off the terminal (the pool says in one line which batch it re-runs).
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wmplan.jobs.reaper import MARKER_ENV
from wmplan.platform.errors import ConfigError
from wmplan.storage.services import (
    DEFAULT_TIMEOUT_S,
    ServiceError,
    check_database_url,
    check_reachable,
    check_tracking_uri,
    redact,
)

if TYPE_CHECKING:
    from wmplan.config import Settings

__all__ = ["start_ray", "actor_resources", "ray_address", "check_ray_head", "check_services", "log_to_file",
           "stop_logging_to_file", "hide_worker_death_notices", "LOG_FILE"]

LOG_FILE = "wmplan.log"
"""The file in a run's directory that holds what Ray and MLflow said during the run."""
LOGGERS = (__name__, "ray", "mlflow", "alembic", "sqlalchemy", "sqlalchemy.engine", "huey")
"""The loggers :func:`log_to_file` redirects (MLflow gives ``sqlalchemy.engine`` a handler of its own); wmplan's
other loggers keep saying their warnings on the terminal."""
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_log = logging.getLogger(__name__)
WORKER_DIED = r"A worker died or was killed while executing"
"""The start of the block the raylet sends every driver when a worker process dies."""
_reaper: subprocess.Popen | None = None


def hide_worker_death_notices() -> None:
    """Keep Ray's "A worker died or was killed" block off this driver's terminal.

    The raylet publishes it to every driver, which prints it to stdout; Ray's documented
    ``RAY_DEDUP_LOGS_SKIP_REGEX`` drops matching lines. It is read when ``ray`` is first imported,
    so this must run before that (``wmplan.jobs`` calls it on import). A pattern the user set is kept.
    """
    current = os.environ.get("RAY_DEDUP_LOGS_SKIP_REGEX", "")
    if WORKER_DIED not in current:
        os.environ["RAY_DEDUP_LOGS_SKIP_REGEX"] = f"{current}|{WORKER_DIED}" if current else WORKER_DIED


def ray_address(config: Settings) -> tuple[str, str]:
    """The cluster the driver joins and where that was set: ``RAY_ADDRESS`` wins over the config's
    ``address`` (as in ``ray.init``); ``("", "")`` means a local Ray is started."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env:
        return ("", "") if env == "local" else (env, "RAY_ADDRESS")
    address = config.address.strip()
    return ("", "") if address in ("", "local") else (address, "the config's address")


def _host_port(target: str) -> tuple[str, int] | None:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_ray_head(address: str, *, source: str = "RAY_ADDRESS", timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Check that a Ray head answers at ``address`` (``HOST:PORT`` of its GCS, ``ray://HOST:PORT``,
    or ``auto``) within about ``timeout_s`` seconds: a TCP connection, then gRPC's standard health
    check, which Ray's GCS serves (with token authentication too).

    ``auto`` means the head the last ``ray start`` on this machine wrote down; without one it is
    refused (Ray would join any Ray process it finds, another user's session included).

    Raises:
        ServiceError: one line naming the address, why, and what to check.
    """
    if "://" in address and not address.startswith("ray://"):
        raise ServiceError(f"Ray address {address!r} ({source}) is a URL (a dashboard's, for `ray job submit`?); to join "
                           f"a cluster give its head as HOST:PORT (port 6379 unless `ray start --head --port` chose another)")
    target = address.removeprefix("ray://")
    if target == "auto":
        written = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        try:
            target = written.read_text().strip()
        except OSError:
            raise ServiceError(f"Ray address 'auto' ({source}): no head started with `ray start --head` on this machine "
                               f"({written} does not exist); give the head as HOST:PORT") from None
    parsed = _host_port(target)
    if parsed is None:
        raise ServiceError(f"Ray address {address!r} ({source}) is not HOST:PORT (e.g. 10.0.0.5:6379)")
    local = "unset RAY_ADDRESS" if source == "RAY_ADDRESS" else "leave address empty"
    hint = f"is the head running? check with `ray status --address {target}`, or {local} to start a local Ray"
    what = f"Ray head {target} ({source})"
    check_reachable(*parsed, what=what, hint=hint, timeout_s=timeout_s)

    import grpc  # Ray's own dependency

    with grpc.insecure_channel(target) as channel:
        health = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
        try:
            answer = health(b"", timeout=timeout_s)  # an empty HealthCheckRequest: the server as a whole
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAUTHENTICATED or (code == grpc.StatusCode.UNIMPLEMENTED and address.startswith("ray://")):
                return  # a gRPC server that talks: ray.init says the rest
            why = (f"no answer within {timeout_s:g} s" if code == grpc.StatusCode.DEADLINE_EXCEEDED else
                   "no gRPC health check there" if code == grpc.StatusCode.UNIMPLEMENTED else
                   (exc.details() or code.name).splitlines()[0])
            raise ServiceError(f"{what}: something answers, but not as a Ray head ({why}); give the head's GCS port "
                               f"(6379 unless `ray start --head --port` chose another)") from None
    if answer != b"\x08\x01":  # HealthCheckResponse(status=SERVING)
        raise ServiceError(f"{what}: the head answers but is not serving yet (health {answer!r}); {hint}")


def check_services(config: Settings, *, ray: bool = True, tracking: bool | None = None, storage: str = "",
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Check, in seconds, the services a run will use: the Ray head it joins (none for a local Ray, without
    ``ray``, or when this process has joined one already), the MLflow tracking store when ``tracking`` (default:
    ``config.tracking``), and a database ``storage`` URL (a study's Optuna storage; a file is not checked).

    Raises:
        ServiceError: the first service that does not answer, in one line.
    """
    from wmplan.storage.mlflow import tracking_uri

    joined = sys.modules.get("ray")
    address, source = ray_address(config)
    if ray and address and not (joined is not None and joined.is_initialized()):
        check_ray_head(address, source=source, timeout_s=timeout_s)
    if config.tracking if tracking is None else tracking:
        check_tracking_uri(tracking_uri(Path.cwd()), timeout_s=timeout_s)
    if "://" in storage:
        check_database_url(storage, what=f"study storage {redact(storage)}", timeout_s=timeout_s)


def _start_reaper(marker: str) -> None:
    """Start the process that ends this Ray's processes once this driver is gone (own session: a
    Ctrl-C or a kill of the driver's process group does not reach it)."""
    global _reaper
    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    _reaper = subprocess.Popen([sys.executable, "-m", "wmplan.jobs.reaper", str(os.getpid()), marker],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, env=env, close_fds=True, text=True)


def _tell_reaper(session: str | None) -> None:
    """Give the reaper the session's directory (how it knows Ray's renamed processes), then close its input."""
    if _reaper is None or _reaper.stdin is None or _reaper.stdin.closed:
        return
    try:
        if session:
            _reaper.stdin.write(session + "\n")
        _reaper.stdin.close()
    except OSError:  # the reaper is gone; nothing to tell
        pass


def start_ray(config: Settings) -> Any:
    """Join the cluster of :func:`ray_address`, or start a local Ray on this machine's cores; returns
    the ``ray`` module. Nothing happens when this process has joined a cluster already.

    The head is checked first (:func:`check_ray_head`). A local Ray is started with an environment
    marker that its processes inherit, and a reaper (:mod:`wmplan.jobs.reaper`), told the session's
    directory, that ends every process of that Ray when this driver exits or is killed.

    Raises:
        ServiceError: the head does not answer, or Ray cannot find the cluster (``auto``).
    """
    import ray

    if ray.is_initialized():
        return ray
    address, source = ray_address(config)
    if address:
        check_ray_head(address, source=source)
        try:
            context = ray.init(address=address, log_to_driver=False, logging_format=LOG_FORMAT)
        except ConnectionError as exc:
            raise ServiceError(f"Ray address {address!r} ({source}): {str(exc).splitlines()[0]}") from None
    else:
        marker = f"{os.getpid()}-{secrets.token_hex(6)}"
        if sys.platform.startswith("linux"):
            _start_reaper(marker)
        os.environ[MARKER_ENV] = marker  # inherited by the GCS, the raylet and (mostly) what they start
        context = None
        try:
            context = ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                               object_store_memory=512 * 1024**2, logging_format=LOG_FORMAT)
        finally:
            os.environ.pop(MARKER_ENV, None)  # later children of the driver are not Ray's
            _tell_reaper(getattr(context, "address_info", {}).get("session_dir"))
    session = getattr(context, "address_info", {}).get("session_dir")
    if session:
        _log.info("Ray session %s; Ray's own logs (why a worker died, for one) are in %s", session, Path(session) / "logs")
    return ray


def actor_resources(ray: Any, config: Settings) -> tuple[dict[str, float], str, int]:
    """Each actor's share of the cluster: (``ray.remote`` resources, device, torch threads).

    With GPUs (``device: cuda``, or ``auto`` on a cluster that has them) each actor gets a GPU
    share (at most one) and at most one CPU; otherwise the CPUs are split evenly.

    Raises:
        ConfigError: ``device: cuda`` on a cluster without GPUs.
    """
    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 1.0)
    use_gpu = config.device == "cuda" or (config.device == "auto" and gpus >= 1)
    if config.device == "cuda" and gpus < 1:
        raise ConfigError("device: cuda was asked for, but the Ray cluster has no GPU")
    if use_gpu:
        share = min(1.0, gpus / config.actors)
        return {"num_gpus": share, "num_cpus": min(1.0, cpus / config.actors)}, "cuda", 1
    share = cpus / config.actors
    return {"num_cpus": share}, "cpu", max(1, int(share))


_saved: dict[str, tuple[list[logging.Handler], bool, int]] = {}
_handler: logging.Handler | None = None


def log_to_file(path: str | os.PathLike[str], *, mlflow: bool = False) -> None:
    """Send what Ray, MLflow, Alembic and SQLAlchemy log in this process to the file
    ``path`` (appended) instead of the terminal, until :func:`stop_logging_to_file` (or the next call).

    Ray and MLflow set up their loggers when first imported, so ``ray`` (and with ``mlflow``,
    ``mlflow``) is imported first.
    """
    global _handler
    stop_logging_to_file()
    import ray  # noqa: F401 - configures the "ray" logger on import

    if mlflow:
        import mlflow as _mlflow  # noqa: F401 - configures its loggers on import
    _handler = logging.FileHandler(path, encoding="utf-8")
    _handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        _saved[name] = (list(logger.handlers), logger.propagate, logger.level)
        logger.handlers = [_handler]
        logger.propagate = False
        if name == __name__ and logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


def stop_logging_to_file() -> None:
    """Undo :func:`log_to_file`: the loggers get their own handlers back and the file is closed."""
    global _handler
    if _handler is None:
        return
    for name, (handlers, propagate, level) in _saved.items():
        logger = logging.getLogger(name)
        logger.handlers = handlers
        logger.propagate = propagate
        logger.setLevel(level)
    _saved.clear()
    _handler.close()
    _handler = None
