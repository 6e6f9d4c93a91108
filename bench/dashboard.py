"""``python -m bench.dashboard``: the dashboard's page and JSON with 100,000 jobs in the SQLite queue.

The target (issue 7): the overview page and ``/api/stats`` each answer in at most 100 ms, median of 20
requests, on this machine. The jobs are made through the backend contract, in the mix a queue that has run
for a while holds: mostly succeeded, some waiting, some failed with a traceback, a few cancelled, scheduled
and running. The app is served by waitress in a process of its own (``python -m bench.dashboard serve``) and
asked over HTTP, one request at a time, after two warm-up requests; the figure is the time to the last byte.

    python -m bench.dashboard [--jobs 100000] [--requests 20]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask

from flask_queue import Dashboard, JobStatus, RequestQueue, TaskQueue
from flask_queue.tasks import JobRecord
from flask_queue.tasks.backends.sqlite import SQLiteBackend

from . import _report
from ._servers import HOST, Server, _process, free_port

TARGET_MS = 100.0
#: Share of each status among the jobs (the rest stay queued).
MIX = {"succeeded": 0.72, "failed": 0.04, "cancelled": 0.02, "scheduled": 0.02, "running": 0.01}
PATHS = ("/queue/", "/queue/api/stats", "/queue/jobs?status=failed", "/queue/api/jobs?page=40")
_BATCH = 5_000


def create_app(db: str) -> Flask:
    """The measured app: a request queue, a task queue on ``db`` without workers, and the dashboard."""
    app = Flask(__name__)
    queue = RequestQueue(app)
    TaskQueue(app, backend=f"sqlite:///{db}", workers=0)
    dashboard = Dashboard(app, authorize=lambda: True)
    queue.exempt(dashboard.blueprint)
    return app


def fill(db: Path, jobs: int) -> dict[str, int]:
    """Put ``jobs`` jobs in ``db``, in the statuses of ``MIX``; return how many of each."""
    backend = SQLiteBackend(db)
    now = time.time()
    counts = {status: int(jobs * share) for status, share in MIX.items()}
    counts["queued"] = jobs - sum(counts.values())
    try:

        def enqueue(n: int, eta: float) -> None:
            for start in range(0, n, _BATCH):
                records = [
                    JobRecord(
                        id="",
                        task="app.send_report",
                        queue=("default", "mail", "reports")[i % 3],
                        payload=f'{{"args":[{i},"user{i}@example.com"],"kwargs":{{"pages":{i % 40}}}}}',
                        eta=eta,
                        enqueued_at=now,
                    )
                    for i in range(start, min(start + _BATCH, n))
                ]
                backend.enqueue(records)

        # Oldest first: the jobs that ran, then those still waiting, as in a queue that has been busy.
        enqueue(counts["succeeded"] + counts["failed"] + counts["cancelled"] + counts["running"], now)
        worker = "bench:dashboard"
        done = 0
        while done < counts["succeeded"]:
            leased = backend.dequeue_batch(None, worker, 600.0, min(_BATCH, counts["succeeded"] - done))
            backend.finish_batch(worker, [(r.id, '"ok"', None) for r in leased])
            done += len(leased)
        for record in backend.dequeue_batch(None, worker, 600.0, counts["failed"]):
            backend.finish(
                record.id,
                worker,
                JobStatus.FAILED,
                error="SMTPServerDisconnected: Connection unexpectedly closed",
                traceback='Traceback (most recent call last):\n  File "app.py", line 12, in send_report\n',
            )
        cancel = [r.id for r in backend.dequeue_batch(None, worker, 600.0, counts["cancelled"])]
        for job_id in cancel:  # leased to reach them in order; given back, then cancelled
            backend.release(job_id, worker)
            backend.cancel(job_id)
        backend.dequeue_batch(None, worker, 3600.0, counts["running"])  # held until the run ends
        enqueue(counts["scheduled"], now + 86400.0)
        enqueue(counts["queued"], now)
        found = {status: sum(by.get(status, 0) for by in backend.counts().values()) for status in counts}
    finally:
        backend.close()
    return found


@contextmanager
def serve(db: Path) -> Iterator[Server]:
    port = free_port()
    command = [sys.executable, "-m", "bench.dashboard", "serve", "--port", str(port), "--db", str(db)]
    with _process("waitress", command, port) as server:
        yield server


def timings(server: Server, paths: tuple[str, ...], requests: int) -> dict[str, list[float]]:
    """Milliseconds to the last byte of ``requests`` GETs of each path, on one keep-alive connection.

    The paths take turns, so that a moment when the machine is busy (it is shared) falls on all of them.
    """
    connection = http.client.HTTPConnection(HOST, server.port, timeout=60.0)
    times: dict[str, list[float]] = {path: [] for path in paths}
    try:
        for n in range(requests + 2):
            for path in paths:
                started = time.perf_counter()
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                elapsed = (time.perf_counter() - started) * 1000.0
                if response.status != 200:
                    raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
                if n >= 2:  # two warm-up rounds: templates compiled, connections and caches open
                    times[path].append(elapsed)
    finally:
        connection.close()
    return times


def run(jobs: int, requests: int) -> int:
    print(
        f"## Dashboard with {jobs:,} jobs in the SQLite queue (median of {requests} requests)\n", flush=True
    )
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as folder:
        db = Path(folder) / "jobs.sqlite3"
        started = time.perf_counter()
        counts = fill(db, jobs)
        print(f"filled in {time.perf_counter() - started:.1f} s: {counts}\n", flush=True)
        results: dict[str, Any] = {"jobs": jobs, "counts": counts, "paths": {}}
        rows = []
        with serve(db) as server:
            measured = timings(server, PATHS, requests)
            for path, times in measured.items():
                median = statistics.median(times)
                results["paths"][path] = times
                target = f"<= {TARGET_MS:.0f} ms" if path in PATHS[:2] else "(no target)"
                verdict = ("met" if median <= TARGET_MS else "MISSED") if path in PATHS[:2] else ""
                rows.append(
                    [
                        f"GET {path}",
                        _report.fmt(median),
                        _report.fmt(_report.percentile(times, 0.9)),
                        _report.fmt(max(times)),
                        f"{target} {verdict}".strip(),
                    ]
                )
    text = _report.table(["request", "median ms", "p90 ms", "max ms", "target"], rows)
    print(text)
    _report.save("dashboard", results, text)
    missed = [row for row in rows if "MISSED" in row[-1]]
    return 1 if missed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve", help="serve the measured app (what the benchmark starts)")
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--db", required=True)
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs in the queue (default 100,000)")
    parser.add_argument("--requests", type=int, default=20, help="requests per URL (default 20)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5,000 jobs, 5 requests per URL")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.requests = min(args.jobs, 5_000), min(args.requests, 5)
    if args.command == "serve":
        import waitress

        waitress.serve(create_app(args.db), host=HOST, port=args.port, threads=4, _quiet=True)
        return 0
    return run(args.jobs, args.requests)


if __name__ == "__main__":
    sys.exit(main())
