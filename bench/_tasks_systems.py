"""The task queues ``bench.tasks`` compares, each behind one small interface, and the no-op task they all run.

Every system runs the same task, ``noop(i)``, which only tells the ``PROBE`` it started: the probe counts
jobs run, notes when the last one started, and wakes the benchmark once the count it waits for is reached.
So "all done" and "started" are measured the same way for every system, in the same process.

Systems (each opened afresh in its own temporary folder for every measurement):

- ``flask-queue memory`` and ``flask-queue sqlite``: ``TaskQueue(app, backend=..., workers=N)``; with the
  workers off (``workers=0``) jobs are enqueued alone and a ``flask_queue.tasks.Worker`` runs them later.
- ``flask-executor``: Flask-Executor's thread pool (``EXECUTOR_MAX_WORKERS=N``); it needs a request context
  to submit, so every system enqueues inside ``app.test_request_context()`` (those that need no app get none).
- ``huey``: ``SqliteHuey`` with its consumer's ``Worker`` threads in this process (``worker_type="thread"``).
- ``persist-queue``: ``SQLiteAckQueue(multithreading=True)`` with N threads doing ``get()``, the call, ``ack()``.

The SQLite peers are opened with ``PRAGMA synchronous=NORMAL`` in WAL mode by default, as Flask-Queue's
backend is: every one then keeps its state in a file that survives the SIGKILL of any process (not the loss
of power). ``sync="default"`` leaves them at their own default (``FULL``: an fsync per commit).
"""

from __future__ import annotations

import abc
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask

from flask_queue import TaskQueue
from flask_queue.tasks import JobStatus, Worker

#: Seconds a measurement waits at most for its jobs to run before it gives up as failed.
DONE_TIMEOUT = 600.0


class Probe:
    """What the no-op task reports to: how many jobs ran, when the last started, and a wake-up at a count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.count = 0
        self.target = 0
        self.started = 0.0
        #: Called with the job's argument once the task has told the probe (the kill test's slow task).
        self.after: Callable[[int], None] | None = None

    def expect(self, target: int) -> None:
        """Count from zero again; ``wait`` returns once ``target`` jobs have started."""
        with self._lock:
            self.count = 0
            self.target = target
            self.started = 0.0
            self._done.clear()

    def hit(self) -> None:
        now = time.perf_counter()
        with self._lock:
            self.count += 1
            self.started = now
            if self.count >= self.target:
                self._done.set()

    def wait(self, timeout: float = DONE_TIMEOUT) -> None:
        """Wait for the expected count; raise ``TimeoutError`` (with the count reached) if it does not come."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"only {self.count} of {self.target} jobs ran within {timeout:g} s")


PROBE = Probe()


def noop(i: int) -> None:
    """The task: does nothing but tell the probe it ran."""
    PROBE.hit()
    if PROBE.after is not None:
        PROBE.after(i)


class System(abc.ABC):
    """One task queue, opened in a folder; consumers (workers) running or not."""

    #: Short name used in tables and in the JSON.
    name: str = ""
    #: Whether ``enqueue_many`` is a real bulk call (else it loops over single enqueues, and says so).
    bulk = False

    @abc.abstractmethod
    def open(self, folder: Path, threads: int, consumers: bool) -> None:
        """Set up in ``folder`` with ``threads`` consumer threads, running from the start if ``consumers``."""

    @abc.abstractmethod
    def enqueue(self, n: int) -> None:
        """Enqueue ``noop(i)`` for ``i`` in ``range(n)``, one call each."""

    def enqueue_many(self, n: int, batch: int) -> None:
        """Enqueue ``n`` jobs in calls of ``batch`` (the system's bulk call, if it has one)."""
        self.enqueue(n)

    @abc.abstractmethod
    def submit(self, i: int) -> None:
        """Enqueue one job (the latency measurement)."""

    @abc.abstractmethod
    def start_consumers(self) -> None:
        """Start the consumers of a system opened without them."""

    @abc.abstractmethod
    def stop_consumers(self) -> None:
        """Stop the consumers (draining what runs) and join their threads."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop everything and release the files; the system is not used afterwards."""

    def discard(self) -> None:  # noqa: B027 - optional: most systems need not
        """Drop the jobs left waiting (a system that warns about them at close would otherwise say so)."""

    @abc.abstractmethod
    def stored(self) -> int:
        """Jobs stored and not finished (waiting, or taken by a consumer and not done): what will still run."""

    def check(self, expected: int) -> str | None:
        """After a processing run of ``expected`` jobs: a problem found in the stored state, if any."""
        return None

    def settings(self) -> dict[str, Any]:
        """The durability settings in force (journal mode, synchronous), read from the open database."""
        return {}


def _pragmas(path: Path) -> dict[str, Any]:
    # A new connection reports the file's journal mode; `synchronous` is per connection, so the systems
    # report their own (see `settings`).
    conn = sqlite3.connect(path)
    try:
        return {"journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0]}
    finally:
        conn.close()


_SYNC_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


class FlaskQueue(System):
    """Flask-Queue's ``TaskQueue`` on ``memory://`` or ``sqlite:///jobs.sqlite3`` (in the app's instance folder)."""

    bulk = True

    def __init__(self, backend: str) -> None:
        self.backend_kind = backend
        self.name = f"flask-queue {backend}"
        self._worker: Worker | None = None

    def open(self, folder: Path, threads: int, consumers: bool) -> None:
        self.app = Flask("bench_tasks", instance_path=str(folder))
        url = "memory://" if self.backend_kind == "memory" else "sqlite:///jobs.sqlite3"
        self.threads = threads
        self.tasks = TaskQueue(self.app, backend=url, workers=threads if consumers else 0)
        self.task = self.tasks.task(name="bench.noop")(noop)
        self.ctx = self.app.test_request_context()
        self.ctx.push()
        if consumers:
            self.tasks.start()

    def enqueue(self, n: int) -> None:
        enqueue = self.task.enqueue
        for i in range(n):
            enqueue(i)

    def enqueue_many(self, n: int, batch: int) -> None:
        enqueue_many = self.task.enqueue_many
        for start in range(0, n, batch):
            enqueue_many([((i,), {}) for i in range(start, min(start + batch, n))])

    def submit(self, i: int) -> None:
        self.task.enqueue(i)

    def start_consumers(self) -> None:
        state = self.app.extensions["flask-queue.tasks"]
        self._worker = Worker(state.executor, threads=self.threads, lease=30.0, name="bench")
        self._worker.start()

    def stop_consumers(self) -> None:
        if self._worker is not None:
            self._worker.stop(timeout=10.0)
            self._worker = None

    def close(self) -> None:
        self.stop_consumers()
        self.ctx.pop()
        self.tasks.shutdown(timeout=10.0, app=self.app)
        self.tasks.backend(self.app).close()

    def discard(self) -> None:
        self.tasks.backend(self.app).purge(None, {JobStatus.QUEUED})

    def stored(self) -> int:
        counts = self.tasks.backend(self.app).counts()
        return sum(by_status["queued"] + by_status["running"] for by_status in counts.values())

    def check(self, expected: int) -> str | None:
        counts = self.tasks.backend(self.app).counts()
        succeeded = sum(by_status.get("succeeded", 0) for by_status in counts.values())
        return None if succeeded == expected else f"{succeeded} of {expected} jobs succeeded: {counts}"

    def settings(self) -> dict[str, Any]:
        if self.backend_kind == "memory":
            return {"durable": False}
        backend: Any = self.tasks.backend(self.app)
        db = backend._db()
        sync = db.execute("PRAGMA synchronous").fetchone()[0]
        return {
            **_pragmas(backend.path),
            "synchronous": _SYNC_NAMES.get(sync, sync),
            "delivery": "at least once (leases)",
        }


class FlaskExecutor(System):
    """Flask-Executor 1.x: a ``ThreadPoolExecutor`` of ``threads`` threads that pushes the app context per call."""

    name = "flask-executor"

    def open(self, folder: Path, threads: int, consumers: bool) -> None:
        from flask_executor import Executor

        self.app = Flask("bench_tasks", instance_path=str(folder))
        self.app.config["EXECUTOR_TYPE"] = "thread"
        self.app.config["EXECUTOR_MAX_WORKERS"] = threads
        self.executor = Executor(self.app)
        # Flask-Executor copies the request context at submit: it cannot submit without one.
        self.ctx = self.app.test_request_context()
        self.ctx.push()

    def enqueue(self, n: int) -> None:
        submit = self.executor.submit
        for i in range(n):
            submit(noop, i)

    def submit(self, i: int) -> None:
        self.executor.submit(noop, i)

    def start_consumers(self) -> None:
        raise NotImplementedError("a thread pool runs what it is given at once")

    def stop_consumers(self) -> None:
        self.executor.shutdown(wait=True)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.ctx.pop()

    def stored(self) -> int:
        return 0

    def settings(self) -> dict[str, Any]:
        return {"durable": False}


def _restore_signals(saved: dict[signal.Signals, Any]) -> None:
    for signum, handler in saved.items():
        signal.signal(signum, handler)


class Huey(System):
    """Huey's ``SqliteHuey`` and its consumer, with thread workers, in this process.

    ``poll`` is the consumer's polling interval when the queue is empty (its ``initial_delay`` and
    ``max_delay``, ``backoff=1``): Huey's SQLite storage cannot wake a worker, so a worker finds a new job
    on its next poll. Huey's own defaults (0.1 s, growing by 1.15 up to 10 s) would put seconds of latency
    on an idle queue; the default here polls as often as Flask-Queue's SQLite backend looks for other
    processes' jobs (10 ms).
    """

    name = "huey"

    def __init__(self, sync: str = "normal", poll: float = 0.01) -> None:
        self.sync = sync
        self.poll = poll
        self._consumer: Any = None

    def open(self, folder: Path, threads: int, consumers: bool) -> None:
        from huey import SqliteHuey
        from huey.storage import SqliteStorage

        sync = self.sync

        class Storage(SqliteStorage):  # type: ignore[misc]
            def _create_connection(self) -> sqlite3.Connection:
                conn: sqlite3.Connection = super()._create_connection()
                if sync != "default":
                    conn.execute(f"PRAGMA synchronous={sync.upper()}")
                return conn

        self.path = folder / "huey.sqlite3"
        self.threads = threads
        self.huey = SqliteHuey("bench", filename=str(self.path), storage_class=Storage)
        self.task = self.huey.task(name="bench.noop")(noop)
        if consumers:
            self.start_consumers()

    def enqueue(self, n: int) -> None:
        task = self.task
        for i in range(n):
            task(i)

    def enqueue_many(self, n: int, batch: int) -> None:
        # Huey's closest thing to a bulk enqueue: `task.map(iterable)`, which enqueues one by one.
        task = self.task
        for start in range(0, n, batch):
            task.map(range(start, min(start + batch, n)))

    def submit(self, i: int) -> None:
        self.task(i)

    def start_consumers(self) -> None:
        consumer = self.huey.create_consumer(
            workers=self.threads,
            worker_type="thread",
            periodic=False,
            initial_delay=self.poll,
            backoff=1.0,
            max_delay=self.poll,
            check_worker_health=False,
        )
        # The consumer installs signal handlers for its `run()` loop, which is not used here.
        saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            consumer.start()
        finally:
            _restore_signals(saved)
        self._consumer = consumer

    def stop_consumers(self) -> None:
        if self._consumer is not None:
            self._consumer.stop(graceful=True)
            self._consumer = None

    def close(self) -> None:
        self.stop_consumers()
        self.huey.storage.close()

    def stored(self) -> int:
        return int(self.huey.pending_count())

    def check(self, expected: int) -> str | None:
        left = self.huey.pending_count()
        return None if left == 0 else f"{left} jobs still queued"

    def settings(self) -> dict[str, Any]:
        conn = self.huey.storage.conn
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        return {
            **_pragmas(self.path),
            "synchronous": _SYNC_NAMES.get(sync, sync),
            "delivery": "at most once (a job is deleted when taken)",
        }


class PersistQueue(System):
    """persist-queue's ``SQLiteAckQueue`` (``multithreading=True``) with ``threads`` consumer threads that each
    loop ``get()``, call ``noop``, ``ack()``. It is a queue, not a task runner: the consumer loop is ours."""

    name = "persist-queue"

    def __init__(self, sync: str = "normal") -> None:
        self.sync = sync
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def open(self, folder: Path, threads: int, consumers: bool) -> None:
        from persistqueue import SQLiteAckQueue

        sync = self.sync

        class Queue(SQLiteAckQueue):
            def _new_db_connection(
                self, path: str, multithreading: bool, timeout: float
            ) -> sqlite3.Connection:
                conn: sqlite3.Connection = super()._new_db_connection(path, multithreading, timeout)
                if sync != "default":
                    conn.execute(f"PRAGMA synchronous={sync.upper()}")
                return conn

        self.folder = folder / "persist-queue"
        self.threads = threads
        self.queue = Queue(str(self.folder), multithreading=True, auto_commit=True)
        if consumers:
            self.start_consumers()

    def enqueue(self, n: int) -> None:
        put = self.queue.put
        for i in range(n):
            put(i)

    def submit(self, i: int) -> None:
        self.queue.put(i)

    def _consume(self) -> None:
        from persistqueue import Empty

        queue = self.queue
        while not self._stop.is_set():
            try:
                item = queue.get(timeout=0.05, raw=True)
            except Empty:
                continue
            noop(item["data"])
            queue.ack(id=item["pqid"])

    def start_consumers(self) -> None:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._consume, name=f"persist-queue-{i}", daemon=True)
            for i in range(self.threads)
        ]
        for thread in self._threads:
            thread.start()

    def stop_consumers(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10.0)
        self._threads = []

    def close(self) -> None:
        self.stop_consumers()
        self.queue.close()

    def stored(self) -> int:
        # Jobs taken and not acked by a process that died are made ready again when the queue is opened.
        return int(self.queue.qsize() + self.queue.unack_count())

    def check(self, expected: int) -> str | None:
        acked = self.queue.acked_count()
        return None if acked == expected else f"{acked} of {expected} jobs acked"

    def settings(self) -> dict[str, Any]:
        putter: Any = self.queue._putter
        sync = putter.execute("PRAGMA synchronous").fetchone()[0]
        return {
            **_pragmas(self.folder / "data.db"),
            "synchronous": _SYNC_NAMES.get(sync, sync),
            "delivery": "at least once (unacked jobs resumed at restart)",
        }


#: Every system by name, made with the benchmark's settings.
FACTORIES: dict[str, Callable[..., System]] = {
    "flask-queue memory": lambda **_: FlaskQueue("memory"),
    "flask-executor": lambda **_: FlaskExecutor(),
    "flask-queue sqlite": lambda **_: FlaskQueue("sqlite"),
    "huey": lambda sync="normal", huey_poll=0.01, **_: Huey(sync, huey_poll),
    "persist-queue": lambda sync="normal", **_: PersistQueue(sync),
}
