"""A pool of long-lived Ray actors that works through items, surviving dead actors.

Each actor is built once (loading its world model once) and then called with one item at a time;
an idle actor gets the next queued item as soon as it finishes, so faster actors do more. Results
come back as they arrive, so the caller can store them at once. When an actor dies (its process is
killed, its node goes away, or its result is lost with its node), the pool starts a replacement and
hands the item it was working on to the next idle actor: every item is delivered exactly once, or
reported failed after ``max_attempts`` tries. An exception raised by the item's own code is not
retried: it comes back as a :class:`Failure` with its message.

An actor takes items only once it has started. A replacement that the cluster cannot place (its
node is gone and the others are full) therefore holds no item: the surviving actors finish the work,
and the replacement joins when a node has room. An actor that fails to start ``max_attempts`` times
in a row is given up; when no actor is left, queued items come back as failures.

:class:`ActorPool` stays warm between batches of work and accepts new items while others run
(a tuning study submits the next chunk of a trial when the previous one is reported);
:func:`run_on_actors` is the one-shot form.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import ray
from ray.exceptions import GetTimeoutError, NodeDiedError, ObjectLostError, RayActorError, RayTaskError

__all__ = ["ActorPool", "Failure", "PoolStalled", "run_on_actors"]

T = TypeVar("T")

ACTOR_LOST = (RayActorError, NodeDiedError, ObjectLostError, GetTimeoutError)
"""What a call's result raises when the actor, its node or the result itself is gone (not the item's fault):
ActorDiedError and ActorUnavailableError (RayActorError), NodeDiedError, ObjectLostError (OwnerDiedError,
ObjectReconstructionFailedError: a result stored on a node that died), and a result that could not be fetched."""


@dataclass(frozen=True)
class Failure(Generic[T]):
    """An item that could not be completed: its ticket, the attempts made and why."""

    index: int
    attempts: int
    reason: str


class PoolStalled(RuntimeError):
    """No result arrived for longer than the pool's stall timeout (e.g. actors that cannot be scheduled)."""


class ActorPool:
    """Warm actors that run submitted items, replacing any actor that dies.

    Args:
        make_actor: creates one actor handle (called again to replace a dead actor).
        call: submits one item to one actor, returning the result's ObjectRef.
        size: number of actors (created at once).
        max_attempts: tries per item when actors die under it.
        stall_timeout_s: :meth:`next_result` raises :class:`PoolStalled` when no call finishes for this long.
        on_actor_lost: told (ticket, reason) when an actor died under an item.

    Attributes:
        ready_s: seconds after the pool was made at which each actor answered that it had started (its
            process up and its constructor, the model's load, done), in that order, replacements included.
    """

    def __init__(
        self,
        make_actor: Callable[[], Any],
        call: Callable[[Any, Any], ray.ObjectRef],
        *,
        size: int,
        max_attempts: int = 3,
        stall_timeout_s: float = 600.0,
        on_actor_lost: Callable[[int, str], None] | None = None,
    ) -> None:
        self._make, self._call = make_actor, call
        self.max_attempts, self.stall_timeout_s, self._on_lost = max_attempts, stall_timeout_s, on_actor_lost
        self._actors: list[Any] = [None] * max(1, size)
        self._idle: deque[int] = deque()
        self._starting: dict[ray.ObjectRef, int] = {}
        self._start_failures = [0] * len(self._actors)
        self._given_up: dict[int, str] = {}
        self._queue: deque[int] = deque()
        self._items: dict[int, Any] = {}
        self._attempts: dict[int, int] = {}
        self._running: dict[ray.ObjectRef, tuple[int, int]] = {}
        self._next_ticket = 0
        self._made = time.monotonic()
        self.ready_s: list[float] = []
        for slot in range(len(self._actors)):
            self._start(slot)

    @property
    def size(self) -> int:
        return len(self._actors)

    @property
    def pending(self) -> int:
        """Items submitted and not yet returned by :meth:`next_result`."""
        return len(self._queue) + len(self._running)

    def submit(self, item: Any) -> int:
        """Queue ``item``; returns its ticket (the index :meth:`next_result` reports it under)."""
        ticket = self._next_ticket
        self._next_ticket += 1
        self._items[ticket] = item
        self._attempts[ticket] = 0
        self._queue.append(ticket)
        self._dispatch()
        return ticket

    def _start(self, slot: int) -> None:
        """Create the actor of ``slot``; it joins the idle actors when it answers (constructor done)."""
        self._actors[slot] = self._make()
        self._starting[self._actors[slot].__ray_ready__.remote()] = slot

    def _replace(self, slot: int) -> None:
        with contextlib.suppress(Exception):  # it may be gone already, with its node
            ray.kill(self._actors[slot], no_restart=True)
        self._start(slot)

    def _started(self, ref: ray.ObjectRef) -> None:
        """An actor answered its readiness call, or failed to start (then it is replaced, up to ``max_attempts`` times in a row)."""
        slot = self._starting.pop(ref)
        try:
            ray.get(ref, timeout=60)
        except (*ACTOR_LOST, RayTaskError) as exc:
            self._start_failures[slot] += 1
            if self._start_failures[slot] < self.max_attempts:
                self._replace(slot)
            else:
                with contextlib.suppress(Exception):
                    ray.kill(self._actors[slot], no_restart=True)
                self._given_up[slot] = f"actor could not start ({self._start_failures[slot]} tries): {_first_line(exc)}"
            return
        self._start_failures[slot] = 0
        self.ready_s.append(time.monotonic() - self._made)
        self._idle.append(slot)

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            slot, ticket = self._idle.popleft(), self._queue.popleft()
            self._attempts[ticket] += 1
            self._running[self._call(self._actors[slot], self._items[ticket])] = (slot, ticket)

    def next_result(self) -> tuple[int, Any]:
        """Wait for the next finished item: ``(ticket, result or Failure)``. Needs :attr:`pending` > 0."""
        if not self.pending:
            raise RuntimeError("next_result() with nothing submitted")
        last_progress = time.monotonic()
        while True:
            self._dispatch()
            if not self._running and not self._starting:
                # Every actor was given up: nothing can run the queued items.
                ticket = self._queue.popleft()
                reason = "; ".join(sorted(set(self._given_up.values())))
                return ticket, self._done(ticket, Failure(ticket, self._attempts[ticket], reason))
            waiting = [*self._running, *self._starting]
            ready, _ = ray.wait(waiting, num_returns=1, timeout=min(5.0, self.stall_timeout_s))
            if not ready:
                if time.monotonic() - last_progress > self.stall_timeout_s:
                    raise PoolStalled(
                        f"no result for {self.stall_timeout_s:.0f} s with {len(self._running)} calls running, "
                        f"{len(self._queue)} queued and {len(self._starting)} actors not started; are there resources "
                        f"for {self.size} actors? ({ray.available_resources()} available)"
                    )
                continue
            ref = ready[0]
            if ref in self._starting:
                self._started(ref)
                last_progress = time.monotonic()
                continue
            slot, ticket = self._running.pop(ref)
            try:
                result = ray.get(ref, timeout=60)
            except ACTOR_LOST as exc:
                reason = f"actor died: {type(exc).__name__}: {_first_line(exc)}"
                if self._on_lost:
                    self._on_lost(ticket, reason)
                self._replace(slot)  # the replacement takes items once it has started, wherever there is room
                if self._attempts[ticket] >= self.max_attempts:
                    return ticket, self._done(ticket, Failure(ticket, self._attempts[ticket], reason))
                self._queue.appendleft(ticket)
                last_progress = time.monotonic()
                continue
            except RayTaskError as exc:
                self._idle.append(slot)
                cause = getattr(exc, "cause", None) or exc
                return ticket, self._done(ticket, Failure(ticket, self._attempts[ticket], f"{type(cause).__name__}: {cause}"))
            self._idle.append(slot)
            return ticket, self._done(ticket, result)

    def _done(self, ticket: int, result: Any) -> Any:
        del self._items[ticket], self._attempts[ticket]
        self._dispatch()
        return result

    def close(self) -> None:
        """Kill every actor (items still running are abandoned)."""
        for actor in self._actors:
            with contextlib.suppress(Exception):  # one whose node died is gone already
                ray.kill(actor, no_restart=True)
        self._actors, self._starting, self._idle = [], {}, deque()

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _first_line(exc: BaseException) -> str:
    """One line for why: the error raised in a failed constructor (the traceback's last line), else the message's first."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1] if getattr(exc, "actor_init_failed", False) else lines[0]


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
    """Run ``call(actor, item)`` for every item on a fresh pool of ``actors`` actors (never more than items).

    Yields ``(index, result)`` in completion order, where ``result`` is the call's return value or a
    :class:`Failure`; the actors are killed when the generator ends.
    """
    if not items:
        return
    with ActorPool(make_actor, call, size=min(actors, len(items)), max_attempts=max_attempts,
                   stall_timeout_s=stall_timeout_s, on_actor_lost=on_actor_lost) as pool:
        for item in items:
            pool.submit(item)
        while pool.pending:
            yield pool.next_result()
