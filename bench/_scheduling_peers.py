"""The peers' scheduling processes of ``bench.scheduling``, one process each, N of them at once.

``python -m bench._scheduling_peers apscheduler|huey --folder F --every S --poll S --deadline T`` keeps one
periodic job and appends ``<tick> <pid> <start>`` to ``F/runs.txt`` at each run (one ``write`` to a file
opened with ``O_APPEND``: lines of concurrent processes never mix), until SIGTERM or the wall-clock time
``T``, whichever comes first: a process left behind by a dead benchmark still stops by itself.

- ``apscheduler``: APScheduler 3's ``BackgroundScheduler`` with its default in-memory job store and thread
  pool, one ``IntervalTrigger(seconds=S)`` job, what Flask-APScheduler runs in each process of
  ``gunicorn -w N``. Its ``start_date`` is the epoch, so that its runs fall on the multiples of ``S`` since
  the epoch, as Flask-Queue's ``every=S`` ticks do: the tick of a run is the last multiple before its start.
- ``huey``: one ``SqliteHuey`` file shared by the N processes, each a consumer (one worker thread, its
  periodic scheduler on) of a ``@huey.periodic_task(crontab(minute="*"))`` task. An idle worker polls every
  ``--poll`` seconds (Huey's defaults would back off to 10 s). The tick of a run is its minute.

Each process appends ``<pid> <phase>`` to ``F/ready.txt`` once it keeps its schedule: ``phase`` is when
its scheduler's clock started (Huey checks its periodic tasks then, and every 60 s after).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

#: Huey's periodic tasks: checked once a minute.
HUEY_PERIOD = 60.0


def _appender(path: Path) -> Callable[[str], None]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(line: str) -> None:
        os.write(fd, line.encode())

    return write


def _grid_tick(when: float, every: float) -> float:
    """The last multiple of ``every`` since the epoch at or before ``when`` (rounded as Flask-Queue's are)."""
    index = math.floor(when / every)
    if round((index + 1) * every, 6) <= when:
        index += 1
    elif round(index * every, 6) > when:
        index -= 1
    return round(index * every, 6)


def _stop_flag() -> threading.Event:
    """Set by SIGTERM or SIGINT."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def apscheduler(folder: Path, every: float, deadline: float) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    stop = _stop_flag()
    record = _appender(folder / "runs.txt")
    pid = os.getpid()

    def beat() -> None:
        start = time.time()
        record(f"{_grid_tick(start, every)!r} {pid} {start!r}\n")

    scheduler = BackgroundScheduler(timezone="UTC")
    epoch = dt.datetime.fromtimestamp(0, dt.timezone.utc)
    scheduler.add_job(beat, IntervalTrigger(seconds=every, start_date=epoch, timezone="UTC"), id="beat")
    phase = time.time()
    scheduler.start()
    _appender(folder / "ready.txt")(f"{pid} {phase!r}\n")
    try:
        stop.wait(max(deadline - time.time(), 0.0))
    finally:
        scheduler.shutdown(wait=True)


def huey(folder: Path, poll: float, deadline: float) -> None:
    from huey import SqliteHuey, crontab

    stop = _stop_flag()
    record = _appender(folder / "runs.txt")
    pid = os.getpid()
    queue = SqliteHuey("bench-scheduling", filename=str(folder / "huey.sqlite3"))

    @queue.periodic_task(crontab(minute="*"), name="bench.scheduling.beat")  # type: ignore[untyped-decorator]
    def beat() -> None:
        start = time.time()
        record(f"{math.floor(start / HUEY_PERIOD) * HUEY_PERIOD!r} {pid} {start!r}\n")

    # The scheduler's clock starts here: its first check of the periodic tasks is at its start.
    phase = time.time()
    consumer = queue.create_consumer(
        workers=1,
        worker_type="thread",
        periodic=True,
        initial_delay=poll,
        backoff=1.0,
        max_delay=poll,
        check_worker_health=False,
    )
    # The consumer installs signal handlers for its own `run()` loop, which is not used: keep ours.
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        consumer.start()
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    _appender(folder / "ready.txt")(f"{pid} {phase!r}\n")
    try:
        stop.wait(max(deadline - time.time(), 0.0))
    finally:
        consumer.stop(graceful=True)
        queue.storage.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._scheduling_peers")
    parser.add_argument("system", choices=["apscheduler", "huey"])
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--every", type=float, default=1.0)
    parser.add_argument("--poll", type=float, default=0.01)
    parser.add_argument("--deadline", type=float, required=True, help="time.time() to stop at, at the latest")
    args = parser.parse_args(argv)
    if args.system == "apscheduler":
        apscheduler(args.folder, args.every, args.deadline)
    else:
        huey(args.folder, args.poll, args.deadline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
