"""Crash safety of ``flask queue worker``: jobs run while a worker process is SIGKILLed every second.

``python -m bench.crash [--backend URL] [--jobs 10000]`` enqueues ``--jobs`` jobs, starts
``flask queue worker --processes P --threads T --lease L`` (its supervisor restarts a worker process that
dies) and SIGKILLs one of its worker processes every ``--kill-every`` seconds (the one running longest)
until every job has finished. Each run of the task appends its job's number and its pid to a file as it
starts, so that the runs can be counted afterwards:

- ``lost``: jobs that never finished (neither succeeded nor failed) by the deadline. Must be 0.
- ``failed``: jobs failed with ``WorkerLost`` (their worker was killed ``MAX_LOST`` times in a row).
- ``duplicates``: runs beyond the first of a job. Delivery is at least once: a job whose worker is killed
  after it started runs again, and so do the successes of a killed worker that were not recorded yet.

The backend defaults to a SQLite file in a temporary folder; ``--backend redis://...`` or
``--backend postgresql://...`` runs in a key prefix or schema of its own, deleted afterwards. The worker
processes load this module's ``create_app()``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from flask import Flask

from flask_queue import TaskQueue
from flask_queue.tasks.backends.base import MAX_LOST

ROOT = Path(__file__).resolve().parent.parent
#: Seconds to wait for the last job before counting what is left as lost.
DEADLINE = 600.0


def create_app() -> Flask:
    """The app the worker processes (and this driver) load: one task, ``step(n)``, that records its run."""
    app = Flask("bench_crash", instance_path=os.environ["BENCH_CRASH_FOLDER"])
    tasks = TaskQueue(app, backend=os.environ["BENCH_CRASH_BACKEND"], workers=0)
    runs = Path(os.environ["BENCH_CRASH_FOLDER"]) / "runs.txt"
    pause = float(os.environ.get("BENCH_CRASH_TASK_MS", "0")) / 1000.0
    files: dict[int, int] = {}

    @tasks.task(name="bench.crash.step")
    def step(n: int) -> None:
        # One file descriptor per process, opened for appending: each run is one short write that lines of
        # other processes never split.
        fd = files.get(os.getpid())
        if fd is None:
            fd = files[os.getpid()] = os.open(runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{n} {os.getpid()}\n".encode())
        if pause:
            time.sleep(pause)

    return app


@contextlib.contextmanager
def _namespace(url: str) -> Iterator[str]:
    """A URL for a store of its own on the backend ``url`` names, deleted afterwards (SQLite: the folder's)."""
    token = uuid.uuid4().hex[:10]
    separator = "&" if "?" in url else "?"
    if url.startswith(("redis://", "rediss://")):
        import redis

        prefix = f"fq-bench-crash-{token}"
        try:
            yield f"{url}{separator}prefix={prefix}"
        finally:
            client = redis.Redis.from_url(url.split("?")[0])
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
    elif url.startswith(("postgresql://", "postgres://")):
        import psycopg

        schema = f"fq_bench_crash_{token}"
        try:
            yield f"{url}{separator}schema={schema}"
        finally:
            with psycopg.connect(url.split("?")[0], autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    else:
        yield url


def _wait(what: Callable[[], bool], timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-crash-") as tmp:
        folder = Path(tmp)
        with _namespace(args.backend or f"sqlite:///{folder / 'jobs.sqlite3'}") as url:
            os.environ.update({"BENCH_CRASH_FOLDER": tmp, "BENCH_CRASH_BACKEND": url})
            os.environ["BENCH_CRASH_TASK_MS"] = str(args.task_ms)
            app = create_app()
            state = app.extensions["flask-queue.tasks"]
            try:
                return _measure(args, state.extension, app, folder, url)
            finally:
                state.backend.close()


def _measure(
    args: argparse.Namespace, tasks: TaskQueue, app: Flask, folder: Path, url: str
) -> dict[str, Any]:
    step = tasks.tasks["bench.crash.step"]
    backend = tasks.backend(app)
    with app.app_context():
        for start in range(0, args.jobs, 1000):
            step.enqueue_many([((n,), {}) for n in range(start, min(start + 1000, args.jobs))])
    command = [sys.executable, "-m", "flask", "--app", "bench.crash:create_app()", "queue", "worker"]
    command += [
        "--processes",
        str(args.processes),
        "--threads",
        str(args.threads),
        "--lease",
        str(args.lease),
    ]
    log = (folder / "workers.log").open("wb")
    started = time.monotonic()
    supervisor = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    killed: list[int] = []
    finished = 0

    def progress() -> int:
        counts = backend.counts()
        return sum(by_status["succeeded"] + by_status["failed"] for by_status in counts.values())

    try:
        next_kill = time.monotonic() + args.kill_every
        while finished < args.jobs and time.monotonic() - started < DEADLINE:
            if supervisor.poll() is not None:
                raise RuntimeError(f"the supervisor exited: see {folder / 'workers.log'}")
            if time.monotonic() >= next_kill:
                victim = _oldest_worker(backend.workers(), spared={supervisor.pid, *killed})
                if victim is not None:
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)
                next_kill += args.kill_every
            time.sleep(0.05)
            finished = progress()
        duration = time.monotonic() - started
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(60)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait()
    counts = {"succeeded": 0, "failed": 0}
    for by_status in backend.counts().values():
        for status in counts:
            counts[status] += by_status[status]
    runs_file = folder / "runs.txt"
    runs = collections.Counter(
        int(line.split()[0]) for line in (runs_file.read_text().splitlines() if runs_file.exists() else [])
    )
    return {
        "backend": backend.url,
        "jobs": args.jobs,
        "processes": args.processes,
        "threads": args.threads,
        "lease": args.lease,
        "kills": len(killed),
        "lost": args.jobs - counts["succeeded"] - counts["failed"],
        "failed": counts["failed"],
        "never_ran": args.jobs - len(runs),
        "duplicates": sum(runs.values()) - len(runs),
        "jobs_run_twice_or_more": sum(1 for count in runs.values() if count > 1),
        "duration_s": round(duration, 2),
        "jobs_per_s": round(args.jobs / duration, 1),
    }


def _oldest_worker(workers: Sequence[Any], spared: set[int]) -> int | None:
    """The pid of this machine's live worker process that started first, but those in ``spared``."""
    host = socket.gethostname()
    candidates = sorted(
        (info.started_at, info.pid)
        for info in workers
        if info.host == host and info.pid not in spared and _alive(info.pid)
    )
    return candidates[0][1] if candidates else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crash", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=None, help="backend URL [a SQLite file in a temporary folder]")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2, help="worker processes [2]")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process [4]")
    parser.add_argument("--lease", type=float, default=2.0, help="seconds a job is leased [2]")
    parser.add_argument("--kill-every", type=float, default=1.0, help="seconds between two kills [1]")
    parser.add_argument("--task-ms", type=float, default=0.0, help="milliseconds each job sleeps [0]")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 jobs")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs = min(args.jobs, 1_000)
    result = run(args)
    print(json.dumps(result, indent=1))
    print(
        f"\n{result['jobs']:,} jobs on {result['backend']}, {result['kills']} worker process(es) SIGKILLed:"
        f" lost {result['lost']}, failed {result['failed']} (WorkerLost after {MAX_LOST} lost leases),"
        f" duplicate runs {result['duplicates']} ({result['jobs_run_twice_or_more']} job(s)),"
        f" {result['duration_s']} s ({result['jobs_per_s']:,} jobs/s)"
    )
    return 1 if result["lost"] or result["never_ran"] > result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
