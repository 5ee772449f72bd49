"""Small actors for the pool tests (importable by Ray workers through PYTHONPATH)."""

from __future__ import annotations

import os
import time
from pathlib import Path


class Squarer:
    """Squares numbers; dies (its whole process) on the first item named in ``crash_on``, once."""

    def __init__(self, marker_dir: str, crash_on: tuple[int, ...] = ()) -> None:
        self.marker_dir = Path(marker_dir)
        self.crash_on = crash_on
        self.pid = os.getpid()

    def run(self, x: int) -> tuple[int, int]:
        marker = self.marker_dir / f"crashed-{x}"
        if x in self.crash_on and not marker.exists():
            marker.write_text("1")
            os._exit(1)  # a killed worker, mid-item
        if x == -1:
            raise ValueError("negative input")
        time.sleep(0.01)
        return x * x, self.pid
