"""Ends a local Ray's processes when the driver that started it is gone, ``kill -9`` included.

``python -m wmplan.jobs.reaper DRIVER_PID MARKER`` is started by the driver (its parent) just
before ``ray.init`` starts a local Ray with ``WMPLAN_RAY_OWNER=MARKER`` in its environment, and
is told the Ray session's directory on its standard input once Ray is up. It waits for the driver
to end (on a pidfd: no polling), then ends every process of this Ray: SIGTERM, and SIGKILL for
what is left after a grace period. A driver that exits normally shuts its Ray down itself; the
reaper then finds nothing to do.

A process belongs to the Ray when its environment holds the marker (the GCS, the raylet, Ray's
Python daemons, most workers inherit it), or when it is a renamed Ray process (``ray::...``) with
a file open in the session's directory: Ray's agents rename themselves with ``setproctitle``,
which can overwrite the start of ``/proc/PID/environ``, marker included, and the raylet may start
them after the driver died. The session's directory is also read off the command lines of the
GCS and raylet, for a driver killed before it could say it.

Linux only (``/proc``); standard library only, so it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import os
import re
import select
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

__all__ = ["MARKER_ENV", "ray_processes", "wait_for_parent", "end_ray_processes", "main"]

MARKER_ENV = "WMPLAN_RAY_OWNER"
"""The environment variable that marks the processes of a driver's local Ray."""
_SESSION_FLAG = re.compile(rb"--session[-_]dir=([^\0\s]+)")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # gone, or another user's
        return b""


def ray_processes(marker: str, sessions: set[str]) -> list[int]:
    """Ids of this user's processes (not this one) that belong to the Ray marked ``marker`` or
    running in one of the session directories ``sessions``; adds the session directories named
    on the command lines of marked processes to ``sessions``."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        cmdline = _read(entry / "cmdline")
        if needle in _read(entry / "environ").split(b"\0"):
            found.append(int(entry.name))
            sessions.update(m.decode(errors="replace") for m in _SESSION_FLAG.findall(cmdline))
        elif cmdline.startswith(b"ray::") and sessions and _has_file_in(entry, sessions):
            found.append(int(entry.name))
    return found


def _has_file_in(entry: Path, folders: Iterable[str]) -> bool:
    prefixes = tuple(f.rstrip("/") + "/" for f in folders)
    try:
        fds = list((entry / "fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd).startswith(prefixes):
                return True
        except OSError:
            continue
    return False


def wait_for_parent(pid: int, *, told: TextIO | None = None, sessions: set[str] | None = None) -> None:
    """Return once process ``pid``, this process's parent, has ended (at once if it already has).

    Meanwhile each line read from ``told`` is added to ``sessions`` (the driver writes the session
    directory there, then closes it).
    """
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    try:
        while os.getppid() == pid:  # else it is gone already (this process was handed to another parent)
            waiting = [f for f in (fd, told) if f is not None]
            ready, _, _ = select.select(waiting, [], [], None if fd is not None else 0.5)
            if fd is not None and fd in ready:  # a pidfd turns readable when its process ends
                return
            if told is not None and told in ready:
                line = told.readline()
                if line.strip() and sessions is not None:
                    sessions.add(line.strip())
                elif not line:
                    told = None  # closed by the driver
    finally:
        if fd is not None:
            os.close(fd)


def end_ray_processes(marker: str, sessions: set[str], *, grace_s: float = 5.0, limit_s: float = 30.0) -> list[int]:
    """End every process of :func:`ray_processes`: SIGTERM, then SIGKILL after ``grace_s`` seconds
    for those left (and any started meanwhile), until none is left or ``limit_s`` seconds have
    passed. Returns the ids still alive (none, normally)."""
    start = time.monotonic()
    signalled: set[int] = set()
    while time.monotonic() - start < limit_s:
        pids = ray_processes(marker, sessions)
        if not pids:
            return []
        late = time.monotonic() - start > grace_s
        for pid in pids:
            if late or pid not in signalled:
                try:
                    os.kill(pid, signal.SIGKILL if late else signal.SIGTERM)
                except ProcessLookupError:
                    pass
                signalled.add(pid)
        time.sleep(0.2)
    return ray_processes(marker, sessions)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or not args[0].isdigit() or not args[1]:
        print("usage: python -m wmplan.jobs.reaper DRIVER_PID MARKER  (session directory on stdin)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the driver's end ends this
    sessions: set[str] = set()
    wait_for_parent(int(args[0]), told=sys.stdin, sessions=sessions)
    return 1 if end_ray_processes(args[1], sessions) else 0


if __name__ == "__main__":
    sys.exit(main())
