"""Periodic schedules: ``@tasks.periodic(cron=... | every=...)``, their ticks, and the ``Scheduler`` that
enqueues them from every worker's keeper.

There is no scheduler process and no leader. Every worker (the web processes' worker threads, each
``flask queue worker``) computes the ticks that are due and asks the backend to enqueue each with
``Backend.enqueue_tick``, which stores the tick's job only if the tick is later than the schedule's last
one, and makes it the last, in one write: however many processes ask, one job per tick.

Ticks are absolute, so that every process computes the same ones: ``every=N`` ticks at the multiples of
``N`` seconds since the epoch; ``cron`` ticks are the times a cron daemon would run the line in ``tz``
(through ``cronsim``, with Debian cron's rules on daylight saving time: a time skipped by the clock going
forward runs at the first minute after the gap, a time the clock goes back over runs once).
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .. import _checks

if TYPE_CHECKING:
    from .backends.base import Backend
    from .records import JobRecord
    from .task import Task

__all__ = ["CATCH_UP", "Schedule", "Scheduler"]

log = logging.getLogger("flask_queue.tasks")

#: What becomes of ticks missed while no worker ran (see ``Schedule``).
CATCH_UP: Final = ("latest", "all", "none")
#: With ``catch_up="all"``, at most this many missed ticks are enqueued (the latest ones).
MAX_CATCH_UP: Final = 1000
#: The key of a schedule's jobs with ``overlap=False``: one unfinished job per schedule.
OVERLAP_KEY: Final = "flask-queue:schedule:"
#: Seconds between two reads of the schedules' state by a keeper: how soon it learns of a tick another
#: process enqueued after a pause of its own (a keeper otherwise needs no read at all).
RESYNC_INTERVAL: Final = 60.0


class Schedule:
    """One periodic schedule of a task: when its ticks fall, and what is done with missed ones.

    :param cron: a five-field cron line (minute hour day-of-month month day-of-week), read in ``tz``.
    :param every: seconds between ticks (ticks at the multiples of it since the epoch).
    :param tz: the IANA time zone of ``cron`` (default UTC) and of the ``tick`` passed to the task.
    :param catch_up: the ticks that passed while no worker ran: ``"latest"`` enqueues one job, for the latest
        of them; ``"all"`` one job per tick (at most ``MAX_CATCH_UP``); ``"none"`` none (only ticks that fall
        while a worker runs are enqueued).
    :param max_lateness: seconds after its tick a job may still be enqueued, and started: a later tick is
        skipped, and a tick's job not started by then expires. ``None``: no limit.
    :param overlap: ``False`` skips a tick while the job of an earlier tick is unfinished.
    """

    def __init__(
        self,
        task: Task[..., Any],
        *,
        name: str,
        cron: str | None,
        every: float | None,
        tz: str,
        catch_up: str,
        max_lateness: float | None,
        overlap: bool,
        queue: str | None,
        priority: int | None,
    ) -> None:
        self.task = task
        self.name = _checks.name("periodic: name", name)
        where = f"periodic {name!r}"
        if (cron is None) == (every is None):
            raise ValueError(
                f"{where}: give cron= or every=, {'not both' if cron is not None else 'one of them'}"
            )
        self.cron = None if cron is None else _cron(where, cron)
        self.every = None if every is None else _checks.number(f"{where}: every", every, strict=True)
        self.tz = _zone(where, tz)
        self.catch_up = _checks.choice(f"{where}: catch_up", catch_up, CATCH_UP)
        self.max_lateness = _checks.optional_number(f"{where}: max_lateness", max_lateness, strict=True)
        self.overlap = _checks.flag(f"{where}: overlap", overlap)
        self.options = task.options(queue=queue, priority=priority)._options
        self.takes_tick = _takes_tick(task.func, where)

    def __repr__(self) -> str:
        return f"<Schedule {self.name} {self.describe()}>"

    def describe(self) -> str:
        """``cron "*/5 * * * *" Europe/Paris`` or ``every 30 s``, as the CLI and the dashboard show it."""
        if self.cron is not None:
            return f'cron "{self.cron}" {self.tz.key}'
        return f"every {self.every:g} s"

    # -- ticks ---------------------------------------------------------------------------------------------

    def _grid(self, index: int) -> float:
        """Tick number ``index`` of an ``every`` schedule. Always this one expression, rounded to the
        microsecond a job's ``tick`` carries: two processes must compute bit-identical ticks, or the backend's
        compare of the last tick would take ``k * 0.3`` and a float a hair above it for two ticks."""
        assert self.every is not None
        return round(index * self.every, 6)

    def _index(self, when: float) -> int:
        """The number of the last ``every`` tick at or before ``when``."""
        assert self.every is not None
        index = math.floor(when / self.every)
        if self._grid(index + 1) <= when:  # the division rounded down across a tick
            index += 1
        elif self._grid(index) > when:
            index -= 1
        return index

    def next_after(self, when: float) -> float:
        """The first tick strictly after ``when``."""
        if self.every is not None:
            return self._grid(self._index(when) + 1)
        from cronsim import CronSim

        return next(CronSim(self.cron or "", dt.datetime.fromtimestamp(when, self.tz))).timestamp()

    def latest(self, until: float) -> float | None:
        """The last tick at or before ``until``."""
        if self.every is not None:
            return self._grid(self._index(until))
        from cronsim import CronSim

        # Reverse iteration yields the ticks strictly before a whole-second start (cronsim 2.7 and later; 2.8
        # also counts the start itself when it has microseconds, 2.7 does not): start a second after ``until``.
        start = dt.datetime.fromtimestamp(math.floor(until) + 1, self.tz)
        found = next(CronSim(self.cron or "", start, reverse=True), None)
        return None if found is None else found.timestamp()

    def due(self, last: float | None, now: float, started: float) -> list[float]:
        """The ticks to enqueue at ``now``, oldest first, when ``last`` is the schedule's last tick (``None``:
        it never had one) and ``started`` is when this process began to keep the schedule.

        A schedule never ticked has no missed ticks: it starts with the first tick after it was first kept.
        """
        after = started if last is None else last
        if self.catch_up == "none":
            after = max(after, started)
        if self.max_lateness is not None:
            after = max(after, now - self.max_lateness - 1e-6)
        latest = self.latest(now)
        if latest is None or latest <= after:
            return []
        if self.catch_up != "all":
            return [latest]
        if self.every is not None:
            last = self._index(latest)
            first = max(self._index(after) + 1, last - MAX_CATCH_UP + 1)
            return [self._grid(index) for index in range(first, last + 1)]
        ticks = [latest]
        while len(ticks) < MAX_CATCH_UP:
            earlier = self.latest(ticks[-1] - 1e-3)
            if earlier is None or earlier <= after:
                break
            ticks.append(earlier)
        return ticks[::-1]

    def tick_time(self, tick: float) -> dt.datetime:
        """A tick as the aware ``datetime`` a task receives, in the schedule's time zone."""
        return dt.datetime.fromtimestamp(tick, self.tz)

    def kwargs(self, tick: float) -> dict[str, Any]:
        """The keyword arguments of the task's call for ``tick`` (as stored: the tick in ISO 8601)."""
        return {"tick": self.tick_time(tick).isoformat()} if self.takes_tick else {}

    def key(self) -> str | None:
        return None if self.overlap else OVERLAP_KEY + self.name


class Scheduler:
    """Enqueues the due ticks of ``schedules`` on ``backend``: a worker's keeper calls ``run`` when
    ``next_at()`` has come. Costs nothing between ticks: no backend call but a read every
    ``RESYNC_INTERVAL``."""

    def __init__(
        self,
        backend: Backend,
        schedules: Mapping[str, Schedule],
        records: Callable[[Schedule, float], list[JobRecord]],
    ) -> None:
        self.backend = backend
        self.schedules = schedules
        self._records = records
        self.started = time.time()
        #: The last tick of each schedule as this process knows it: read from the backend, then what it did.
        self._last: dict[str, float | None] = {}
        self._next: dict[str, float] = {}
        self._synced_at = -math.inf

    def next_at(self) -> float:
        """When ``run`` has something to do (``time.time()`` seconds): the earliest next tick."""
        if not self.schedules:
            return math.inf
        if time.monotonic() - self._synced_at >= RESYNC_INTERVAL or len(self._next) < len(self.schedules):
            return time.time()  # time to read the backend again, or a schedule was added since the last run
        return min(self._next.values(), default=time.time())

    def run(self) -> int:
        """Enqueue every tick due now; return how many jobs this process stored (0: others had them)."""
        if not self.schedules:
            return 0
        if time.monotonic() - self._synced_at >= RESYNC_INTERVAL:
            known = {state.name: state.last_tick for state in self.backend.schedules()}
            for name in list(self.schedules):
                last = known.get(name)
                mine = self._last.get(name)
                self._last[name] = last if mine is None or (last is not None and last > mine) else mine
            self._synced_at = time.monotonic()
        stored = 0
        now = time.time()
        # A copy: a module imported later may add a schedule while the keeper runs.
        for name, schedule in list(self.schedules.items()):
            if self._next.get(name, -math.inf) > now:
                continue
            for tick in schedule.due(self._last.get(name), now, self.started):
                ids = self.backend.enqueue_tick(name, tick, self._records(schedule, tick))
                self._last[name] = tick
                if ids is not None:
                    stored += len(ids)
                    log.debug("schedule %s: tick %s enqueued", name, schedule.tick_time(tick).isoformat())
            self._next[name] = schedule.next_after(max(now, self._last.get(name) or now))
        return stored


def _cron(where: str, line: object) -> str:
    from cronsim import CronSim, CronSimError

    if isinstance(line, str):
        line = " ".join(line.split())
    if not isinstance(line, str) or len(line.split()) != 5:
        raise _checks.fail(
            f"{where}: cron",
            'a cron line of five fields, "minute hour day-of-month month day-of-week" (for seconds, use every=)',
            line,
        )
    try:
        CronSim(line, dt.datetime.now(dt.timezone.utc))
    except CronSimError as exc:
        raise _checks.fail(f"{where}: cron", "a valid cron line", line, f" ({exc})") from None
    return line


def _zone(where: str, tz: object) -> ZoneInfo:
    if not isinstance(tz, str) or not tz:
        raise _checks.fail(f"{where}: tz", 'an IANA time zone name such as "Europe/Paris"', tz)
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise _checks.fail(
            f"{where}: tz",
            'an IANA time zone name such as "Europe/Paris" (install tzdata where the system has none)',
            tz,
        ) from None


def _takes_tick(func: Callable[..., Any], where: str) -> bool:
    """Whether ``func`` accepts ``tick=``; ``TypeError`` if it needs any other argument."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    takes = False
    for parameter in parameters:
        if (
            parameter.name == "tick" and parameter.kind is not parameter.POSITIONAL_ONLY
        ) or parameter.kind is parameter.VAR_KEYWORD:
            takes = True
        elif parameter.default is parameter.empty and parameter.kind not in (
            parameter.VAR_POSITIONAL,
            parameter.VAR_KEYWORD,
        ):
            raise TypeError(
                f"{where}: {getattr(func, '__qualname__', func)!r} needs the argument {parameter.name!r}, and a"
                " schedule calls it with none but tick= (give it a default, or wrap the call in a function)"
            )
    return takes
