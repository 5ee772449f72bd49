"""Progress of a long stage: done/total, rate, elapsed time and ETA, readable on a terminal and in a file.

:class:`Progress` shows one stage (data generation, a training stage, planning, an upload). On a
terminal it redraws one line in place (``\\r``, at most :data:`TTY_EVERY_S` apart); anywhere else
(a file, a pipe, a ``say`` callback) it writes a whole new line at most every ``every_s`` seconds
and one at the end, never a carriage return. A background heartbeat keeps the lines coming when the
work reports rarely (a batch that takes a minute), so a user never waits longer than ``every_s``
without a line. A line reads::

    training model: 2400/8000 steps (30%), 41.2 steps/s, 58 s elapsed, ETA 2 min 16 s, loss 0.0123

Pure Python: the platform's loops report through callbacks; the caller owns a ``Progress``.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["Progress", "StageProgress", "default_every_s", "format_duration", "EVERY_S_ENV"]

EVERY_S_ENV = "WMPLAN_PROGRESS_EVERY_S"
"""Environment variable overriding the seconds between progress lines written to a file."""
DEFAULT_EVERY_S = 10.0
"""Seconds between progress lines written to a file (or passed to a ``say`` callback)."""
TTY_EVERY_S = 0.25
"""Smallest seconds between two redraws of the status line on a terminal."""
HEARTBEAT_S = 1.0
"""Longest seconds between two looks of the heartbeat thread at a quiet stage."""


def default_every_s() -> float:
    """Seconds between progress lines in a file: ``$WMPLAN_PROGRESS_EVERY_S``, else 10 s."""
    raw = os.environ.get(EVERY_S_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_EVERY_S
    return value if math.isfinite(value) and value >= 0 else DEFAULT_EVERY_S


def format_duration(seconds: float) -> str:
    """``'7.3 s'``, ``'42 s'``, ``'2 min 14 s'`` or ``'1 h 05 min'``; ``'?'`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _format_extra(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """Shows how far one stage is: ``update()`` as work finishes, ``close()`` at the end.

    Args:
        stage: what is being done, the start of every line (``'planning'``).
        total: units of work in the stage (0: unknown; no percentage or ETA then).
        unit: what is counted, plural (``'episodes'``).
        stream: where lines go (None: ``sys.stderr`` when created); a terminal gets a redrawn line.
        say: instead of a stream, a callback that takes each whole line (always line mode).
        every_s: seconds between lines when not on a terminal (None: :func:`default_every_s`).
        heartbeat: write a line (or redraw) when no update comes for ``every_s`` seconds.
        clock: seconds of a monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        *,
        stage: str,
        total: int,
        unit: str = "steps",
        stream: TextIO | None = None,
        say: Callable[[str], None] | None = None,
        every_s: float | None = None,
        heartbeat: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stage, self.total, self.unit = stage, max(0, int(total)), unit
        self.done = 0
        self.extra: dict[str, Any] = {}
        self._say = say
        self._stream = stream if stream is not None else sys.stderr
        self._tty = say is None and _is_tty(self._stream)
        self.every_s = default_every_s() if every_s is None else max(0.0, float(every_s))
        self._clock = clock
        self._t0 = clock()
        self._last_shown = self._t0
        self._width = 0  # of the line drawn on a terminal
        self._closed = False
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if heartbeat and (self._tty or self.every_s > 0):  # every_s 0: a line per update, nothing between
            self._thread = threading.Thread(target=self._beat, name=f"progress-{stage}", daemon=True)
            self._thread.start()

    # -- reporting ------------------------------------------------------------------------------

    def update(self, n: int = 1, **extra: Any) -> None:
        """Count ``n`` more units done; ``extra`` values (``loss=0.01``) are shown after the ETA."""
        with self._lock:
            self.done += n
            self.extra.update(extra)
            self._maybe_show()

    def update_to(self, done: int, **extra: Any) -> None:
        """Set the units done so far (for callbacks that report ``(step, total)``)."""
        with self._lock:
            self.done = done
            self.extra.update(extra)
            self._maybe_show()

    def close(self, **extra: Any) -> None:
        """Write the final line (``done`` when every unit is done) and stop the heartbeat; idempotent."""
        with self._lock:
            if self._closed:
                return
            self.extra.update(extra)
            self._closed = True
            self._show(final=True)
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the line ------------------------------------------------------------------------------

    @property
    def elapsed_s(self) -> float:
        """Seconds since the stage started."""
        return self._clock() - self._t0

    def line(self, *, final: bool = False) -> str:
        """The status line as it reads now."""
        elapsed = self.elapsed_s
        rate = self.done / elapsed if elapsed > 0 else math.nan
        count = f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"
        if self.total:
            count += f" ({100 * min(self.done, self.total) // self.total}%)"
        speed = f"{rate:.3g} {self.unit}/s" if math.isfinite(rate) else f"- {self.unit}/s"
        if final:
            eta = "done" if self.done >= self.total else "stopped"
        elif self.total and self.done > 0 and math.isfinite(rate) and rate > 0:
            eta = "ETA " + format_duration(max(0, self.total - self.done) / rate)
        else:
            eta = "ETA ?"
        parts = [count, speed, f"{format_duration(elapsed)} elapsed", eta]
        parts += [f"{key} {_format_extra(value)}" for key, value in self.extra.items()]
        return f"{self.stage}: " + ", ".join(parts)

    def _maybe_show(self) -> None:
        if self._closed or (not self._tty and self.total and self.done >= self.total):
            return  # the last line is close()'s
        gap = self._clock() - self._last_shown
        if gap >= (TTY_EVERY_S if self._tty else self.every_s):
            self._show()

    def _show(self, *, final: bool = False) -> None:
        self._last_shown = self._clock()
        text = self.line(final=final)
        if self._say is not None:
            self._say(text)
        elif self._tty:
            pad = " " * max(0, self._width - len(text))
            self._width = len(text)
            self._stream.write("\r" + text + pad + ("\n" if final else ""))
            self._stream.flush()
        else:
            self._stream.write(text + "\n")
            self._stream.flush()

    def _beat(self) -> None:
        period = TTY_EVERY_S * 4 if self._tty else self.every_s
        tick = max(0.02, min(HEARTBEAT_S, period / 4))
        while not self._stop.wait(tick):
            with self._lock:
                if self._closed:
                    return
                # A tick early, so that no gap between lines exceeds `every_s`.
                if self._clock() - self._last_shown >= max(0.0, period - tick):
                    self._show()


class StageProgress:
    """A ``progress(stage, step, total, loss)`` callback that shows each training stage as a :class:`Progress`.

    A new stage name closes the previous stage's progress and starts one; the last step of a stage
    closes it. ``options`` go to every :class:`Progress` (``stream``, ``say``, ``every_s``, ...).
    """

    def __init__(self, *, prefix: str = "training", unit: str = "steps", **options: Any) -> None:
        self.prefix, self.unit, self.options = prefix, unit, options
        self.stage: str | None = None
        self.current: Progress | None = None

    def __call__(self, stage: str, step: int, total: int, loss: float) -> None:
        if self.current is None or stage != self.stage:
            self.close()
            self.stage = stage
            self.current = Progress(stage=f"{self.prefix} {stage}".strip(), total=total, unit=self.unit, **self.options)
        self.current.update_to(step, loss=loss)
        if step >= total:
            self.close()

    def close(self) -> None:
        """Close the stage in progress, if any."""
        if self.current is not None:
            self.current.close()
            self.current = None
