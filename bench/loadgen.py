"""HTTP/1.1 load generators, run in a process of their own so they never share the server's interpreter.

- **Open loop** (``open_loop``): requests leave at their scheduled times, one new connection each, whatever
  the server does; latency is measured from the *scheduled* time, so a server that stalls the sender cannot
  hide its queue (no coordinated omission). Every request has a client timeout; the schedule is finite, so
  a run ends by itself after ``duration + timeout`` at most.
- **Closed loop** (``closed_loop``): ``concurrency`` clients each send the next request when the previous
  one is answered; it measures capacity.

``run(spec)`` starts ``python -m bench.loadgen SPEC_JSON`` and returns the JSON it prints. The client is an
asyncio protocol (``bench._http``); the benchmarks record the generator's CPU next to the server's, so a
generator that could not keep up would show (as would its send lag).
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ._http import Connection, IncompleteResponse, request_bytes

ROOT = Path(__file__).resolve().parent.parent

# Columns of an open-loop record.
CLASS, OFFSET, LAG, STATUS, LATENCY, ERROR = range(6)


class Generator:
    """A load spec running in a process of its own (``python -m bench.loadgen SPEC_JSON``), started at once.

    ``pid`` leads its own session, so ``bench._machine.session_cpu_seconds(pid)`` is the generator's CPU.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.budget = float(spec["duration"]) + float(spec.get("warmup", 0.0)) + float(spec["timeout"]) + 60.0
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", json.dumps(spec)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.pid = self.process.pid

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Only on the way out of a failed run: a finished generator has already exited.
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()

    def result(self) -> dict[str, Any]:
        """Wait for the run to end and return what it measured; raises ``RuntimeError`` if it failed."""
        try:
            out, err = self.process.communicate(timeout=self.budget)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise RuntimeError(f"load generator still running after {self.budget:.0f} s") from None
        if self.process.returncode != 0:
            raise RuntimeError(f"load generator failed:\n{err[-3000:]}")
        result: dict[str, Any] = json.loads(out)
        return result


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one load spec in a child process and return its result."""
    with Generator(spec) as generator:
        return generator.result()


# What a request can fail with: socket errors (the server's reset or close included), timeouts, not HTTP.
_CLIENT_ERRORS = (OSError, asyncio.TimeoutError, ValueError)


def _error_kind(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, (ConnectionResetError, BrokenPipeError)):
        return "reset"
    if isinstance(error, IncompleteResponse):
        return "incomplete"
    return type(error).__name__


async def _one_request(host: str, port: int, request: bytes, timeout: float) -> tuple[int, str]:
    """Send ``request`` on a new connection; return ``(status, "")`` or ``(0, error kind)``."""
    connection: Connection | None = None

    async def exchange() -> int:
        nonlocal connection
        connection = await Connection.open(host, port)
        status, _ = await connection.send(request)
        return status

    try:
        return await asyncio.wait_for(exchange(), timeout), ""
    except _CLIENT_ERRORS as error:
        return 0, _error_kind(error)
    finally:
        if connection is not None:
            connection.close()


def schedule(classes: list[dict[str, Any]], duration: float) -> list[tuple[float, int]]:
    """Send times (seconds from the start) and class index of every request, evenly spaced per class.

    Classes are offset by a fraction of their interval so their requests do not leave in pairs.
    """
    times: list[tuple[float, int]] = []
    for index, spec in enumerate(classes):
        rate = float(spec["rate"])
        if rate <= 0:
            continue
        interval = 1.0 / rate
        phase = interval * index / max(1, len(classes))
        count = int(duration * rate)
        times += [(phase + k * interval, index) for k in range(count)]
    times.sort()
    return times


async def open_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """Send the spec's classes at their constant rates for ``duration`` seconds; see the module docstring."""
    host, port, timeout = spec["host"], int(spec["port"]), float(spec["timeout"])
    classes: list[dict[str, Any]] = spec["classes"]
    requests = [
        request_bytes(host, port, c.get("path", spec["path"]), c.get("headers", {}), False) for c in classes
    ]
    plan = schedule(classes, float(spec["duration"]))
    records: list[list[Any]] = [[] for _ in plan]
    loop = asyncio.get_running_loop()

    sends: list[float] = []

    async def timed(index: int, due: float, offset: float, cls: int) -> None:
        sent = loop.time()
        sends.append(sent)
        status, error = await _one_request(host, port, requests[cls], timeout)
        records[index] = [cls, offset, sent - due, status, loop.time() - due, error]

    cpu_started, wall_started = time.process_time(), time.monotonic()
    tasks = []
    start = loop.time() + 0.05
    for index, (offset, cls) in enumerate(plan):
        due = start + offset
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(timed(index, due, offset, cls)))
    await asyncio.gather(*tasks)
    wall = time.monotonic() - wall_started
    return {
        "records": records,
        # The achieved send rate: requests actually sent per second between the first and the last.
        "send_rate": (len(sends) - 1) / (max(sends) - min(sends)) if len(sends) > 1 else 0.0,
        "cpu": (time.process_time() - cpu_started) / wall if wall else 0.0,
        "classes": [c.get("name", str(i)) for i, c in enumerate(classes)],
    }


async def closed_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """``concurrency`` clients, each sending its next request when the last is answered, for ``duration`` s.

    Only requests started after ``warmup`` seconds count. ``keep_alive`` reuses connections (wrk's way);
    otherwise each request opens a new one, as the open loop does.
    """
    host, port, timeout = spec["host"], int(spec["port"]), float(spec["timeout"])
    keep_alive = bool(spec.get("keep_alive", False))
    request = request_bytes(host, port, spec["path"], spec.get("headers", {}), keep_alive)
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + float(spec.get("warmup", 0.0))
    end = measure_from + float(spec["duration"])
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}

    async def client() -> None:
        connection: Connection | None = None
        while loop.time() < end:
            started = loop.time()
            try:
                if connection is None:
                    connection = await asyncio.wait_for(Connection.open(host, port), timeout)
                status, close = await asyncio.wait_for(connection.send(request), timeout)
            except _CLIENT_ERRORS as error:
                if connection is not None:
                    connection.close()
                connection = None
                if started >= measure_from:
                    kind = _error_kind(error)
                    errors[kind] = errors.get(kind, 0) + 1
                continue
            finished = loop.time()
            if not keep_alive or close:
                connection.close()
                connection = None
            if started >= measure_from and finished <= end:
                latencies.append(finished - started)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
        if connection is not None:
            connection.close()

    cpu_started, wall_started = time.process_time(), time.monotonic()
    await asyncio.gather(*(client() for _ in range(int(spec["concurrency"]))))
    wall = time.monotonic() - wall_started
    ok = sum(n for status, n in statuses.items() if status.startswith("2"))
    return {
        "completed": len(latencies),
        "ok": ok,
        "rps": ok / float(spec["duration"]),
        "statuses": statuses,
        "errors": errors,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
        "cpu": (time.process_time() - cpu_started) / wall if wall else 0.0,
    }


def main() -> None:
    """Run the spec given as JSON in the first argument; print the result as JSON."""
    spec = json.loads(sys.argv[1])
    # Thousands of connections may be open at once against a server that queues everything.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    runner = open_loop if spec["mode"] == "open" else closed_loop
    result = asyncio.run(runner(spec))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
