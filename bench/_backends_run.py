"""One measurement of ``bench.backends``, in a process of its own: ``python -m bench._backends_run SETTINGS``.

``SETTINGS`` is a JSON object: ``mode``, ``system`` (a name of ``SYSTEMS``), ``url`` (its namespace),
``postgres_url`` (where to connect to create and drop a PostgreSQL namespace), ``jobs``, ``batch``,
``threads`` and ``stall`` (seconds without a job run before the rest count as lost). Two modes:

- ``process``: with no worker running, enqueue ``jobs`` jobs with the system's single call, timed (the
  enqueue rate); then start its worker processes and wait until every job has run. The processing rate is
  the jobs over the time from the first job's start to the last one's, read from the probe file, so the
  workers' start-up (imports, connections) is not in it. Then the workers are stopped (SIGTERM, their own
  graceful shutdown) and the system's bookkeeping must hold nothing more.
- ``bulk``: enqueue ``jobs`` jobs with the bulk call, ``batch`` per call, timed; all must be stored.

The namespace is emptied before and dropped after, whatever happens. A fresh process per measurement means
each system's library is imported alone, with no state left by a system measured before it. The result is
printed as one line of JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _machine
from ._backends_probe import PROBE_ENV, URL_ENV, Tally
from ._backends_system import System, make, reset_space

ROOT = Path(__file__).resolve().parent.parent
#: Seconds between two reads of the probe file while the workers run.
POLL = 0.05
#: Seconds the workers get to shut down gracefully before they are killed.
STOP_TIMEOUT = 30.0
#: Seconds the system's bookkeeping gets to catch up with the last job (its acknowledgement).
SETTLE_TIMEOUT = 10.0
_TICKS = os.sysconf("SC_CLK_TCK")


def _sessions_cpu(sessions: set[int]) -> float:
    """CPU seconds used so far by the processes of these sessions, with their ended and reaped children
    (RQ's work horses, one per job, end within the measurement)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process ended meanwhile
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[3]) in sessions:
            ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / _TICKS


class Workers:
    """A system's worker processes, each in a session of its own, output to a log file per process."""

    def __init__(self, commands: list[list[str]], env: dict[str, str], folder: Path) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        try:
            for index, command in enumerate(commands):
                log = folder / f"worker-{index}.log"
                with open(log, "wb") as output:
                    process = subprocess.Popen(
                        command,
                        cwd=ROOT,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                self.processes.append(process)
                self.logs.append(log)
        except BaseException:
            self.stop()  # those started before the one that failed
            raise
        self.sessions = {process.pid for process in self.processes}

    def cpu(self) -> float:
        return _sessions_cpu(self.sessions)

    def alive(self) -> bool:
        return any(process.poll() is None for process in self.processes)

    def stop(self) -> list[str]:
        """SIGTERM each worker, wait for it, then SIGKILL whatever is left of its session; what went wrong."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        problems = []
        for index, process in enumerate(self.processes):
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                problems.append(f"worker {index} ignored SIGTERM for {STOP_TIMEOUT:g} s: killed")
            with contextlib.suppress(ProcessLookupError):  # its children (forked pools), if any outlived it
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        return problems

    def tail(self, lines: int = 6) -> str:
        """The last lines each worker wrote, for a problem's report."""
        parts = []
        for index, log in enumerate(self.logs):
            text = log.read_text(errors="replace").strip().splitlines()[-lines:]
            if text:
                parts.append(f"worker {index}: " + " | ".join(text))
        return "; ".join(parts)


@dataclass(frozen=True)
class _Snapshot:
    """When, and how much CPU the workers and the whole machine had used by then."""

    at: float
    workers: float
    machine: float

    @classmethod
    def take(cls, workers: Workers) -> _Snapshot:
        return cls(time.monotonic(), workers.cpu(), _machine.machine_busy_seconds())


def _wait_for_jobs(tally: Tally, workers: Workers, stall: float) -> tuple[_Snapshot, _Snapshot]:
    """Read the probe until every job has run, none has for ``stall`` seconds, or no worker is left.

    Returns snapshots taken when the first job was seen and when the wait ended: the window the workers'
    and the machine's CPU use is measured over.
    """
    first = None
    progress = time.monotonic()
    while tally.unique < tally.n:
        time.sleep(POLL)
        if tally.read():
            progress = time.monotonic()
            if first is None:
                first = _Snapshot.take(workers)
        elif time.monotonic() - progress > stall or not workers.alive():
            break
    last = _Snapshot.take(workers)
    return first or last, last


def _settle(system: System, expected: int) -> int:
    """What the system's bookkeeping holds once it has caught up (``expected``), or after a bounded wait."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    left = system.left()
    while left != expected and time.monotonic() < deadline:
        time.sleep(POLL)
        left = system.left()
    return left


def _timed_enqueue(enqueue: Callable[..., None], *args: int) -> dict[str, float]:
    """Run one producer's enqueues; their wall time, its CPU and the rest of the machine's (in cores)."""
    watch = _machine.CpuWatch()
    cpu = time.process_time()
    started = time.perf_counter()
    enqueue(*args)
    seconds = time.perf_counter() - started
    usage = watch.read(producer=time.process_time() - cpu)
    return {"seconds": seconds, "producer_cpu": usage["producer"], "others": usage["others"]}


def process(system: System, settings: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Single enqueues, then the workers run them all: the ``process`` mode."""
    n = settings["jobs"]
    enqueued = _timed_enqueue(system.enqueue, n)
    probe = folder / "probe.bin"
    env = {
        **os.environ,
        PROBE_ENV: str(probe),
        URL_ENV: settings["url"],
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    tally = Tally(str(probe), n)
    workers = Workers(system.workers(), env, folder)
    try:
        first, last = _wait_for_jobs(tally, workers, settings["stall"])
        _settle(system, 0)  # the last job's acknowledgement, before the workers are asked to stop
    finally:
        stopped = workers.stop()
    tally.read()
    left = system.left()
    problems = list(stopped)
    lost = n - tally.unique
    if lost:
        problems.append(f"{lost} of {n} jobs never ran")
    if tally.strays:
        problems.append(f"{tally.strays} jobs ran that were not this run's")
    if left:
        problems.append(f"the system still holds {left} jobs to run")
    if problems and workers.tail():
        problems.append(f"the workers' last words: {workers.tail()}")
    window = last.at - first.at
    worker_cpu = (last.workers - first.workers) / window if window > 0 else None
    machine_cpu = (last.machine - first.machine) / window if window > 0 else None
    seconds = (tally.last - tally.first) if tally.first is not None and tally.last is not None else None
    return {
        "enqueue_rate": n / enqueued["seconds"],
        "enqueue_seconds": enqueued["seconds"],
        "producer_cpu": enqueued["producer_cpu"],
        "enqueue_others": enqueued["others"],
        "process_rate": tally.unique / seconds if seconds else None,
        "process_seconds": seconds,
        "ran": tally.unique,
        "lost": lost,
        "duplicates": tally.duplicates,
        "left": left,
        "worker_cpu": worker_cpu,
        # The machine's CPU while the workers ran, less theirs: the server's, the probe's reader, everyone else's.
        "others": None if machine_cpu is None else max(0.0, machine_cpu - (worker_cpu or 0.0)),
        "problem": "; ".join(problems) or None,
    }


def bulk(system: System, settings: dict[str, Any]) -> dict[str, Any]:
    """The bulk call, ``batch`` jobs per call: the ``bulk`` mode."""
    n = settings["jobs"]
    enqueued = _timed_enqueue(system.enqueue_bulk, n, settings["batch"])
    stored = _settle(system, n)
    return {
        "bulk_rate": n / enqueued["seconds"],
        "bulk_seconds": enqueued["seconds"],
        "producer_cpu": enqueued["producer_cpu"],
        "others": enqueued["others"],
        "problem": None if stored == n else f"{stored} of {n} jobs stored after the bulk enqueue",
    }


def measure(settings: dict[str, Any]) -> dict[str, Any]:
    """One measurement in an emptied namespace, dropped afterwards; returns its figures."""
    url, postgres_url = settings["url"], settings["postgres_url"]
    reset_space(url, postgres_url)
    try:
        system = make(settings["system"], url, settings["threads"])
        system.open()
        try:
            with tempfile.TemporaryDirectory(prefix="bench-backends-") as folder:
                if settings["mode"] == "process":
                    figures = process(system, settings, Path(folder))
                else:
                    figures = bulk(system, settings)
        finally:
            system.close()
    finally:
        reset_space(url, postgres_url, create=False)
    return {
        "system": settings["system"],
        "mode": settings["mode"],
        "concurrency": system.concurrency(),
        "bulk_call": system.bulk_call,
        **figures,
    }


if __name__ == "__main__":
    # A SIGTERM unwinds like Ctrl-C, through the clean-ups: workers stopped, namespace dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    print(json.dumps(measure(json.loads(sys.argv[1]))), flush=True)
