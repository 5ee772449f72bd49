"""How many CPU threads the platform's torch work uses.

Measured on a 2-core machine, 100 steps of the default wall state model (batch 256, width 256,
depth 3, 3-step unrolls): with the cores lightly shared, 1 thread ran 49-86 steps/s and 2 threads
4-132 steps/s; with one more process keeping a core busy, 1 thread ran 13-56 steps/s and 2 threads
1.0-23 steps/s. Two threads gain at most 1.6x on idle cores, and lose up to 14x on busy ones
(torch's worker threads spin-wait for a core they do not get). Training therefore uses one thread
unless told otherwise, which also keeps its result independent of the machine's core count; Ray
actors get the threads of their CPU share, intra-op and inter-op (:func:`set_process_threads`, once,
as the actor starts).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["available_cores", "resolve_threads", "set_process_threads", "torch_threads"]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int) -> int:
    """``threads``, or with 0 one per available core."""
    return threads if threads > 0 else available_cores()


def set_process_threads(threads: int) -> tuple[int, int]:
    """Give this whole process ``resolve_threads(threads)`` torch threads, intra-op and inter-op alike.

    For a process that plans, such as a Ray actor holding a CPU share, called as it starts: torch's
    inter-op pool can only be sized before the process's first parallel work, after which it keeps
    the size it has (a process that ran torch work already gets only its intra-op threads set).

    Returns:
        The intra-op and inter-op thread counts the process now has.
    """
    import torch

    n = resolve_threads(threads)
    torch.set_num_threads(n)
    if torch.get_num_interop_threads() != n:
        with contextlib.suppress(RuntimeError):  # parallel work has started, or the pool was sized already
            torch.set_num_interop_threads(n)
    return torch.get_num_threads(), torch.get_num_interop_threads()


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
