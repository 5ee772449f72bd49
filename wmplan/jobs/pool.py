"""A pool of long-lived Ray actors that works through a list of items, surviving dead actors.

Each actor is built once (loading its world model once) and then called with one item at a time;
an idle actor gets the next item as soon as it finishes, so faster actors do more. Results are
yielded as they arrive, so the caller can store them at once. When an actor dies (its process is
killed, its node goes away), the pool starts a replacement and hands the item it was working on to
the next idle actor: every item is delivered exactly once, or reported failed after
``max_attempts`` tries. An exception raised by the item's own code is not retried: it is reported
as a :class:`Failure` with its message.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

__all__ = ["Failure", "PoolStalled", "run_on_actors"]

T = TypeVar("T")


@dataclass(frozen=True)
class Failure(Generic[T]):
    """An item that could not be completed: its index, the attempts made and why."""

    index: int
    attempts: int
    reason: str


class PoolStalled(RuntimeError):
    """No result arrived for longer than the pool's stall timeout (e.g. actors that cannot be scheduled)."""


def run_on_actors(
    make_actor: Callable[[], Any],
    call: Callable[[Any, T], ray.ObjectRef],
    items: Sequence[T],
    *,
    actors: int,
    max_attempts: int = 3,
    stall_timeout_s: float = 600.0,
    on_actor_lost: Callable[[int, str], None] | None = None,
) -> Iterator[tuple[int, Any]]:
    """Run ``call(actor, item)`` for every item on a pool of ``actors`` actors.

    Args:
        make_actor: creates one actor handle (called again to replace a dead actor).
        call: submits one item to one actor, returning the result's ObjectRef.
        items: the work, in submission order.
        actors: pool size (never more than there are items).
        max_attempts: tries per item when actors die under it.
        stall_timeout_s: raise :class:`PoolStalled` when no call finishes for this long.
        on_actor_lost: told (item index, reason) when an actor died under an item.

    Yields:
        ``(index, result)`` in completion order, where ``result`` is the call's return value or a
        :class:`Failure`.
    """
    if not items:
        return
    size = max(1, min(actors, len(items)))
    pool = [make_actor() for _ in range(size)]
    queue: deque[int] = deque(range(len(items)))
    attempts = [0] * len(items)
    running: dict[ray.ObjectRef, tuple[int, int]] = {}
    idle = deque(range(size))
    last_progress = time.monotonic()
    try:
        while queue or running:
            while idle and queue:
                slot, index = idle.popleft(), queue.popleft()
                attempts[index] += 1
                running[call(pool[slot], items[index])] = (slot, index)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=min(5.0, stall_timeout_s))
            if not ready:
                if time.monotonic() - last_progress > stall_timeout_s:
                    raise PoolStalled(
                        f"no result for {stall_timeout_s:.0f} s with {len(running)} calls running and {len(queue)} "
                        f"queued; are there resources for {size} actors? ({ray.available_resources()} available)"
                    )
                continue
            last_progress = time.monotonic()
            for ref in ready:
                slot, index = running.pop(ref)
                try:
                    result = ray.get(ref, timeout=60)
                except RayActorError as exc:
                    reason = f"actor died: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    if on_actor_lost:
                        on_actor_lost(index, reason)
                    ray.kill(pool[slot], no_restart=True)
                    pool[slot] = make_actor()
                    idle.append(slot)
                    if attempts[index] >= max_attempts:
                        yield index, Failure(index, attempts[index], reason)
                    else:
                        queue.appendleft(index)
                    continue
                except (RayTaskError, GetTimeoutError) as exc:
                    idle.append(slot)
                    cause = getattr(exc, "cause", None) or exc
                    yield index, Failure(index, attempts[index], f"{type(cause).__name__}: {cause}")
                    continue
                idle.append(slot)
                yield index, result
    finally:
        for actor in pool:
            ray.kill(actor, no_restart=True)
