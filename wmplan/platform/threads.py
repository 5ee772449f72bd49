"""How many CPU threads the platform's torch work uses.

Measured on a 2-core machine, 100 steps of the default wall state model (batch 256, width 256,
depth 3, 3-step unrolls): with the cores lightly shared, 1 thread ran 49-86 steps/s and 2 threads
4-132 steps/s; with one more process keeping a core busy, 1 thread ran 13-56 steps/s and 2 threads
1.0-23 steps/s. Two threads gain at most 1.6x on idle cores, and lose up to 14x on busy ones
(torch's worker threads spin-wait for a core they do not get). Training therefore uses one thread
unless told otherwise, which also keeps its result independent of the machine's core count; Ray
actors get the threads of their CPU share.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["available_cores", "resolve_threads", "torch_threads"]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int) -> int:
    """``threads``, or with 0 one per available core."""
    return threads if threads > 0 else available_cores()


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(resolve_threads(threads))``; restores the previous count."""
    import torch

    before = torch.get_num_threads()
    n = resolve_threads(threads)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
