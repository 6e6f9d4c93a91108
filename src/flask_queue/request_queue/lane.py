"""One lane of the request queue: a concurrency limit with a bounded, prioritised waiting line.

This is where a queued request waits. A request *arrives* with a priority class; it is admitted at once
while fewer than ``concurrency`` requests of the lane run, waits in line while fewer than
``max_queue_size`` wait, and is rejected otherwise. A finished request *releases* its slot, which goes
straight to the best waiter (lowest class, then first come), so a slot is never idle while someone waits.

The bookkeeping (``arrive``, ``release``, ``abandon``) never blocks and is what the property tests drive;
``acquire`` adds the blocking wait on top. Every state change happens under the lane's lock, and each
ticket moves WAITING -> ADMITTED -> DONE or WAITING -> REJECTED once, which is what makes admission,
rejection and release happen exactly once per request whatever the threads do.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

from .. import _checks

#: Why a request was rejected.
REASONS = ("full", "timeout", "too_old", "shed", "disconnected")

WAITING, ADMITTED, DONE, REJECTED = range(4)

_WINDOW = 2048  # samples kept per percentile window
_EWMA_WEIGHT = 0.1  # weight of the newest service time in the drain-rate estimate
_RETRY_AFTER_MAX = 300


class Ticket:
    """A request's place in a lane. ``reason`` is set when the request was rejected.

    ``arrived`` is when it reached the lane (the lane's clock), ``started`` when it started upstream: the
    same, less the time it spent before the app saw it (``X-Request-Start``). Deadlines count from
    ``started``; the time in line counts from ``arrived``.
    """

    __slots__ = (
        "_on_decided",
        "_wakeup",
        "admitted_at",
        "arrived",
        "priority",
        "reason",
        "seq",
        "started",
        "state",
    )

    def __init__(self, priority: int, seq: int, arrived: float, upstream: float) -> None:
        self.priority = priority
        self.seq = seq
        self.arrived = arrived
        self.started = arrived - upstream
        self.admitted_at = arrived
        self.state = WAITING
        self.reason: str | None = None
        self._wakeup: threading.Lock | None = None
        self._on_decided: Callable[[], object] | None = None

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.release()
        if self._on_decided is not None:
            self._on_decided()

    def __repr__(self) -> str:
        state = ("waiting", "admitted", "done", "rejected")[self.state]
        return f"<Ticket #{self.seq} class={self.priority} {state}{' ' + self.reason if self.reason else ''}>"


def _window() -> deque[float]:
    """The most recent samples of a duration, for percentiles (appending runs in C, off the hot path's cost)."""
    return deque(maxlen=_WINDOW)


def _percentiles_ms(samples: Iterable[float]) -> dict[str, float | None]:
    """Nearest-rank p50/p95/p99 in milliseconds; ``None`` when there is no sample yet."""
    ordered = sorted(samples)
    if not ordered:
        return {"p50": None, "p95": None, "p99": None}
    last = len(ordered) - 1
    return {
        name: round(ordered[min(last, math.ceil(q * len(ordered)) - 1)] * 1000.0, 3)
        for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
    }


class Lane:
    """A concurrency limit with a bounded waiting line, per process.

    :param concurrency: how many requests of the lane run at once.
    :param max_queue_size: how many may wait for a slot; 0 rejects whenever all slots are taken.
    :param queue_timeout: seconds a request may wait in all, counting upstream time, before it is rejected.
    :param max_age: seconds after which a request is rejected without running (``None``: no limit).
    :raises ConfigurationError: (a ``ValueError``) naming the first invalid setting.

    Thread-safe. ``clock`` is ``time.monotonic`` and exists for tests of the bookkeeping.
    """

    def __init__(
        self,
        name: str,
        *,
        concurrency: int,
        max_queue_size: int,
        queue_timeout: float,
        max_age: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = _checks.text("a lane's name", name)
        self.concurrency = _checks.integer("concurrency", concurrency, minimum=1)
        self.max_queue_size = _checks.integer("max_queue_size", max_queue_size, minimum=0)
        self.queue_timeout = _checks.number("queue_timeout", queue_timeout, strict=True)
        self.max_age = _checks.optional_number("max_age", max_age, strict=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._running = 0
        # priority class -> tickets in arrival order; only non-empty classes are present.
        self._waiting: dict[int, OrderedDict[int, Ticket]] = {}
        self._n_waiting = 0
        self._seq = 0
        self._admitted = 0
        self._rejected = dict.fromkeys(REASONS, 0)
        self._wait = _window()
        self._service = _window()
        self._upstream = _window()
        self._service_ewma: float | None = None
        self._finalized: deque[Ticket] = deque()  # released by finalisers, awaiting the lock

    def __repr__(self) -> str:
        return f"<Lane {self.name!r} running={self._running}/{self.concurrency} waiting={self._n_waiting}/{self.max_queue_size}>"

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._n_waiting

    # -- bookkeeping: never blocks ------------------------------------------------------------------------

    def arrive(self, priority: int = 0, upstream: float = 0.0) -> Ticket:
        """Register a request; the ticket comes back ADMITTED, WAITING or REJECTED.

        ``upstream`` is the time the request already spent before reaching the app (``X-Request-Start``). A
        request older than ``max_age`` is rejected ``too_old``; one that would have to wait with its
        ``queue_timeout`` already spent upstream is rejected ``timeout`` at once, without joining the line.
        When the line is full, a request of a more important class takes the place of the least important
        waiter (the newest of the highest class), which is rejected ``shed``.
        """
        now = self._clock()
        woken: list[Ticket] = []
        with self._lock:
            if self._finalized:
                woken = self._drain_finalized_locked(now)
            self._seq += 1
            ticket = Ticket(priority, self._seq, now, upstream)
            if upstream:
                self._upstream.append(upstream)
            if self.max_age is not None and upstream >= self.max_age:
                self._reject_locked(ticket, "too_old")
            elif self._running < self.concurrency:
                self._admit_locked(ticket, now)
            elif upstream >= self.queue_timeout:
                self._reject_locked(ticket, "timeout")
            elif self._n_waiting < self.max_queue_size:
                self._enqueue_locked(ticket)
            else:
                victim = self._least_important_locked()
                if victim is not None and victim.priority > priority:
                    self._remove_locked(victim)
                    self._reject_locked(victim, "shed")
                    woken.append(victim)
                    self._enqueue_locked(ticket)
                else:
                    self._reject_locked(ticket, "full")
        for other in woken:
            other._wake()
        return ticket

    def release(self, ticket: Ticket) -> Ticket | None:
        """Free an admitted ticket's slot and hand it to the best waiter, which is returned (already woken).

        Releasing a ticket that is not ADMITTED (released before, rejected, still waiting) does nothing, so
        a slot is released exactly once whatever calls this.
        """
        if ticket.state != ADMITTED:  # cheap early out; checked again under the lock
            return None
        now = self._clock()
        with self._lock:
            woken = self._drain_finalized_locked(now) if self._finalized else None
            nxt = self._release_locked(ticket, now)
        if woken:
            for other in woken:
                other._wake()
        if nxt is not None:
            nxt._wake()
        return nxt

    def release_from_finalizer(self, ticket: Ticket) -> None:
        """``release`` for ``__del__`` and weakref callbacks: never blocks, so it cannot deadlock.

        The cyclic garbage collector may run a finaliser in a thread that holds this lane's lock (any
        allocation can trigger a collection). So the ticket is queued, and released by whichever thread
        next holds the lock: this one if the lock is free now, else the next ``arrive`` or ``release``.
        """
        if ticket.state != ADMITTED:
            return
        self._finalized.append(ticket)  # deque.append is atomic
        if self._lock.acquire(blocking=False):
            try:
                woken = self._drain_finalized_locked(self._clock())
            finally:
                self._lock.release()
            for other in woken:
                other._wake()

    def withdraw(self, ticket: Ticket, reason: str) -> bool:
        """Turn an ADMITTED ticket that has not run into a rejection (its client left while it waited).

        The slot goes to the next waiter at once, and the request counts as rejected for ``reason``, not as
        admitted. ``False`` if the ticket was not ADMITTED.
        """
        now = self._clock()
        with self._lock:
            if ticket.state != ADMITTED:
                return False
            self._running -= 1
            self._admitted -= 1
            self._reject_locked(ticket, reason)
            nxt = self._hand_over_locked(now)
        if nxt is not None:
            nxt._wake()
        return True

    def abandon(self, ticket: Ticket, reason: str) -> bool:
        """Take a WAITING ticket out of line, rejected for ``reason``; ``False`` if it was admitted meanwhile."""
        with self._lock:
            if ticket.state != WAITING:
                return False
            self._remove_locked(ticket)
            self._reject_locked(ticket, reason)
            return True

    def cancel(self, ticket: Ticket) -> None:
        """Give a ticket up, whatever its state, because its request failed with an exception.

        A waiting ticket leaves the line (counted nowhere: the exception reports it), an admitted one frees
        its slot; a rejected or released one is left as it is.
        """
        with self._lock:
            if ticket.state == WAITING:
                self._remove_locked(ticket)
                ticket.state = REJECTED
                ticket.reason = "cancelled"
                return
        self.release(ticket)

    # -- blocking -----------------------------------------------------------------------------------------

    def acquire(self, priority: int = 0, upstream: float = 0.0) -> Ticket:
        """Arrive, and wait in line if need be until admitted or rejected. Blocks the calling thread.

        The wait ends at whichever comes first: ``queue_timeout`` (rejected ``timeout``) or ``max_age``
        (rejected ``too_old``), both counted from the upstream start time.
        """
        ticket = self.arrive(priority, upstream)
        if ticket.state == WAITING:
            try:
                self.wait(ticket)
            except BaseException:
                self.cancel(ticket)
                raise
        return ticket

    def time_left(self, ticket: Ticket) -> tuple[float, str]:
        """Seconds a WAITING ticket may still wait, and what it is rejected for when they are up.

        The wait ends at whichever comes first: ``queue_timeout`` (``"timeout"``) or ``max_age``
        (``"too_old"``), both counted from the upstream start time.
        """
        deadline, reason = self._deadline(ticket)
        return deadline - self._clock(), reason

    def call_when_decided(self, ticket: Ticket, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once a WAITING ticket is admitted or shed; at once if it is not waiting.

        For a waiter that holds no thread (WSGI+): the callback runs in the thread that hands the slot over,
        after the lane's lock is released, so it must be quick and must not block. A waiter that runs out of
        time is not called back: its owner calls ``abandon`` on it. Never called twice for one wait.
        """
        with self._lock:
            if ticket.state == WAITING:
                ticket._on_decided = callback
                return
        callback()

    def _deadline(self, ticket: Ticket) -> tuple[float, str]:
        timeout_at = ticket.started + self.queue_timeout
        age_at = math.inf if self.max_age is None else ticket.started + self.max_age
        return (timeout_at, "timeout") if timeout_at <= age_at else (age_at, "too_old")

    def wait(self, ticket: Ticket) -> None:
        """Block until a WAITING ticket is admitted, shed, or out of time (then rejected as such).

        A caller interrupted here (``KeyboardInterrupt``, a signal handler raising) must ``cancel`` the
        ticket, or it stays in line and is handed a slot nobody releases.
        """
        deadline, reason = self._deadline(ticket)
        wakeup = ticket._wakeup
        assert wakeup is not None, "a WAITING ticket always has its wake-up lock"
        remaining = min(deadline - self._clock(), threading.TIMEOUT_MAX)
        if remaining > 0 and wakeup.acquire(timeout=remaining):
            return
        if not self.abandon(ticket, reason):
            # Admitted (or shed) between the timeout and the abandon: the release happened, so take it.
            wakeup.acquire()

    # -- figures ------------------------------------------------------------------------------------------

    def retry_after(self) -> int:
        """Whole seconds until the current line would have drained, from the recent service times."""
        service = self._service_ewma if self._service_ewma is not None else 1.0
        estimate = (self._n_waiting + 1) * service / self.concurrency
        return max(1, min(_RETRY_AFTER_MAX, math.ceil(estimate)))

    def stats(self) -> dict[str, Any]:
        """The lane's figures as plain data (see ``RequestQueueMiddleware.stats``)."""
        with self._lock:
            woken = self._drain_finalized_locked(self._clock()) if self._finalized else []
            counts = {
                "running": self._running,
                "waiting": self._n_waiting,
                "admitted": self._admitted,
                "rejected": dict(self._rejected),
            }
            # Copy under the lock (in C, fast); sort outside it, so a scrape never holds up arrivals.
            windows = [list(self._wait), list(self._service), list(self._upstream)]
        for other in woken:
            other._wake()
        return {
            **counts,
            "wait_ms": _percentiles_ms(windows[0]),
            "service_ms": _percentiles_ms(windows[1]),
            "upstream_ms": _percentiles_ms(windows[2]),
            "limits": {
                "concurrency": self.concurrency,
                "max_queue_size": self.max_queue_size,
                "queue_timeout": self.queue_timeout,
                "max_age": self.max_age,
            },
        }

    # -- internals (lock held) ----------------------------------------------------------------------------

    def _admit_locked(self, ticket: Ticket, now: float) -> None:
        ticket.state = ADMITTED
        ticket.admitted_at = now
        self._running += 1
        self._admitted += 1
        self._wait.append(now - ticket.arrived)

    def _release_locked(self, ticket: Ticket, now: float) -> Ticket | None:
        if ticket.state != ADMITTED:
            return None
        ticket.state = DONE
        self._running -= 1
        service = now - ticket.admitted_at
        self._service.append(service)
        ewma = self._service_ewma
        self._service_ewma = service if ewma is None else ewma + _EWMA_WEIGHT * (service - ewma)
        return self._hand_over_locked(now) if self._n_waiting else None

    def _drain_finalized_locked(self, now: float) -> list[Ticket]:
        """Release the tickets finalisers queued; return the waiters given their slots, to wake unlocked."""
        woken = []
        while self._finalized:
            nxt = self._release_locked(self._finalized.popleft(), now)
            if nxt is not None:
                woken.append(nxt)
        return woken

    def _hand_over_locked(self, now: float) -> Ticket | None:
        """Admit the best waiter into a slot just freed; the caller wakes it once the lock is released."""
        if not self._n_waiting:
            return None
        best = self._waiting[min(self._waiting)]
        _, nxt = best.popitem(last=False)
        self._forget_class_if_empty_locked(nxt.priority)
        self._n_waiting -= 1
        self._admit_locked(nxt, now)
        return nxt

    def _reject_locked(self, ticket: Ticket, reason: str) -> None:
        ticket.state = REJECTED
        ticket.reason = reason
        self._rejected[reason] += 1

    def _enqueue_locked(self, ticket: Ticket) -> None:
        wakeup = threading.Lock()
        wakeup.acquire()
        ticket._wakeup = wakeup
        self._waiting.setdefault(ticket.priority, OrderedDict())[ticket.seq] = ticket
        self._n_waiting += 1

    def _remove_locked(self, ticket: Ticket) -> None:
        del self._waiting[ticket.priority][ticket.seq]
        self._forget_class_if_empty_locked(ticket.priority)
        self._n_waiting -= 1

    def _forget_class_if_empty_locked(self, priority: int) -> None:
        if not self._waiting[priority]:
            del self._waiting[priority]

    def _least_important_locked(self) -> Ticket | None:
        if not self._waiting:
            return None
        tickets = self._waiting[max(self._waiting)]
        return tickets[next(reversed(tickets))]
