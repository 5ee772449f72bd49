"""Is a service there? Quick checks of the stores a run depends on, made before any work starts.

A tracking server or database that does not answer makes MLflow, Optuna and SQLAlchemy retry for
minutes, and a missing database driver ends in a traceback deep inside them. These checks take a
few seconds at most and raise :class:`ServiceError` (a :class:`ConfigError`, so the command line
prints it as one line and exits 2) naming the address and what to check. Passwords in an address
are never printed.
"""

from __future__ import annotations

import errno
import importlib.util
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from wmplan.platform.errors import ConfigError

__all__ = ["ServiceError", "check_reachable", "check_tracking_uri", "check_database_url", "redact"]

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}
"""Where a database listens when its URL names no port."""
PIP_NAMES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient", "pymysql": "pymysql",
             "pyodbc": "pyodbc", "oracledb": "oracledb", "pg8000": "pg8000", "asyncpg": "asyncpg"}
"""The package that installs a database driver module."""


class ServiceError(ConfigError):
    """A service a run needs does not answer, or cannot be talked to (the message says which and what to check)."""


def redact(address: str) -> str:
    """``address`` with any password in it replaced by ``***``."""
    parts = urllib.parse.urlsplit(address)
    if parts.password is None:
        return address
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


def _why(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    return str(getattr(exc, "strerror", None) or exc).splitlines()[0] if str(exc) else type(exc).__name__


def check_reachable(host: str, port: int, *, what: str, hint: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Open (and close) a TCP connection to ``host:port`` within ``timeout_s`` seconds.

    Raises:
        ServiceError: "``what``: nothing answers at HOST:PORT (why); ``hint``".
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        raise ServiceError(f"{what}: nothing answers at {host}:{port} ({_why(exc, timeout_s)}); {hint}") from None


def check_tracking_uri(uri: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Check that the MLflow tracking store ``uri`` can be used, in at most about ``timeout_s`` seconds.

    A tracking server (``http(s)://``) must answer an HTTP request to ``/health`` (any HTTP answer
    counts: a proxy may guard the path); a database URL must have its driver installed and its
    server listening; a SQLite file's folder must exist. Other stores (``databricks``, ``file:``)
    are left to MLflow.

    Raises:
        ServiceError: one line naming the store and what to check.
    """
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    what = f"MLflow tracking store {redact(uri)} (MLFLOW_TRACKING_URI)"
    if scheme in ("http", "https"):
        parts = urllib.parse.urlsplit(uri)
        url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1])).rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ServiceError(f"{what} does not answer ({_why(exc, timeout_s)}); is the tracking server running "
                               f"there (mlflow server --host HOST --port PORT)? Or unset MLFLOW_TRACKING_URI to record "
                               f"in ./mlflow.db") from None
    if scheme == "sqlite":
        path = uri.split(":///", 1)[1].split("?", 1)[0] if ":///" in uri else ""
        if path and path != ":memory:" and not Path(path).expanduser().parent.is_dir():
            raise ServiceError(f"{what}: the folder {str(Path(path).parent)!r} does not exist")
        return
    if scheme and scheme.split("+", 1)[0] in DEFAULT_PORTS:
        check_database_url(uri, what=what, timeout_s=timeout_s)


def check_database_url(url: str, *, what: str = "", timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Check a SQLAlchemy database URL (``postgresql://``, ``mysql+pymysql://`` ...): its dialect is
    known, its driver module is installed, and its server accepts a TCP connection within
    ``timeout_s`` seconds. A SQLite URL or a URL without a host (a local socket) is only checked
    for its driver.

    Args:
        url: the database URL.
        what: how the message names the store (default: "database URL").

    Raises:
        ServiceError: one line naming the URL (password hidden) and what to check.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = redact(url)
    what = what or f"database {shown}"
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ServiceError(f"{what}: not a database URL ({exc})") from None
    try:
        dialect: Any = parsed.get_dialect()
    except ArgumentError:
        raise ServiceError(f"{what}: unknown kind of database {parsed.drivername!r} "
                           f"(e.g. postgresql+psycopg2://USER@HOST:PORT/DB or sqlite:///PATH)") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = (getattr(exc, "name", None) or str(exc)).split(".")[0]
        hint = f"pip install '{PIP_NAMES.get(module, module)}'"
        if module == "psycopg" and importlib.util.find_spec("psycopg2") is not None:
            hint += f", or write {parsed.get_backend_name()}+psycopg2:// to use the installed psycopg2"
        raise ServiceError(f"{what}: its database driver {module!r} is not installed ({hint})") from None
    backend = parsed.get_backend_name()
    if parsed.host and backend in DEFAULT_PORTS:
        check_reachable(parsed.host, parsed.port or DEFAULT_PORTS[backend], what=what, timeout_s=timeout_s,
                        hint="is the database server running and listening there?")
