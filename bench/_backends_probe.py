"""The no-op task every system of ``bench.backends`` runs, and how the benchmark counts the jobs that ran.

The workers run in processes of their own (RQ's default worker even forks one per job), so the count cannot
live in memory. Each call of ``noop(i)`` appends one fixed-size record, the job's index and the time it
started on the machine-wide monotonic clock, to the file named by ``BENCH_BACKENDS_PROBE``: one ``write``
to a file opened with ``O_APPEND``, which Linux keeps whole and in one piece however many processes append
at once. That costs every system the same few microseconds per job, far below what any of them spends on a
job, and needs no server of its own (a counter in Redis would load the server under test).

The benchmark reads the file as it grows (``Tally``): the jobs run, each index once or again (a duplicate,
for an at-least-once system), and the first and last start, which bound the processing time.
"""

from __future__ import annotations

import os
import struct
import threading
import time

#: Environment variables a worker process reads: the probe file, and the URL of its system's namespace.
PROBE_ENV = "BENCH_BACKENDS_PROBE"
URL_ENV = "BENCH_BACKENDS_URL"

#: One record: the job's index, and when it started (``CLOCK_MONOTONIC``, the same clock in every process).
RECORD = struct.Struct("<qd")

_lock = threading.Lock()
_fd: int | None = None


def url() -> str:
    """The URL of the namespace this system uses (Redis database or PostgreSQL database), set by the benchmark."""
    try:
        return os.environ[URL_ENV]
    except KeyError:
        raise RuntimeError(
            f"{URL_ENV} is not set: this module is run by `python -m bench.backends`, which sets it"
        ) from None


def now() -> float:
    """The machine-wide monotonic clock: comparable between processes, unlike ``perf_counter``'s promise."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def noop(i: int) -> None:
    """The task: does nothing but record that job ``i`` started, and when."""
    global _fd
    if _fd is None:
        with _lock:  # the worker threads of one process share one descriptor
            if _fd is None:
                _fd = os.open(os.environ[PROBE_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, RECORD.pack(i, now()))


class Tally:
    """The records of a probe file for jobs ``0 .. n-1``, read as the file grows."""

    def __init__(self, path: str, n: int) -> None:
        self.path = path
        self.n = n
        self.unique = 0
        self.duplicates = 0
        #: Indices outside ``0 .. n-1``: a job that is not this run's (a namespace that was not clean).
        self.strays = 0
        self.first: float | None = None
        self.last: float | None = None
        self._seen = bytearray(n)
        self._offset = 0

    def read(self) -> int:
        """Take in the records written since the last call; returns how many there were."""
        try:
            with open(self.path, "rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return 0
        whole = len(data) - len(data) % RECORD.size  # a record being written is read next time
        self._offset += whole
        for i, started in RECORD.iter_unpack(data[:whole]):
            if not 0 <= i < self.n:
                self.strays += 1
                continue
            if self._seen[i]:
                self.duplicates += 1
            else:
                self._seen[i] = 1
                self.unique += 1
            self.first = started if self.first is None else min(self.first, started)
            self.last = started if self.last is None else max(self.last, started)
        return whole // RECORD.size
