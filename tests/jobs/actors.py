"""Small actors for the pool tests (importable by Ray workers through PYTHONPATH)."""

from __future__ import annotations

import os
import time
from pathlib import Path


class Squarer:
    """Squares numbers; dies (its whole process) on the first item named in ``crash_on``, once.

    With ``rendezvous`` N, an actor's first item waits (at most ``wait_s``) until N actors have each begun
    an item: on a busy machine one actor can start seconds after the other, long after the first has done
    every item on its own.
    """

    def __init__(self, marker_dir: str, crash_on: tuple[int, ...] = (), rendezvous: int = 0, wait_s: float = 300.0) -> None:
        self.marker_dir = Path(marker_dir)
        self.crash_on = crash_on
        self.pid = os.getpid()
        self.rendezvous = rendezvous
        self.wait_s = wait_s

    def run(self, x: int) -> tuple[int, int]:
        if self.rendezvous:
            (self.marker_dir / f"started-{self.pid}").write_text("1")
            deadline = time.monotonic() + self.wait_s
            while len(list(self.marker_dir.glob("started-*"))) < self.rendezvous and time.monotonic() < deadline:
                time.sleep(0.05)
            self.rendezvous = 0
        marker = self.marker_dir / f"crashed-{x}"
        if x in self.crash_on and not marker.exists():
            marker.write_text("1")
            os._exit(1)  # a killed worker, mid-item
        if x == -1:
            raise ValueError("negative input")
        time.sleep(0.01)
        return x * x, self.pid
