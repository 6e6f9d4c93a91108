"""Periodic schedules: Flask-Queue's ``@tasks.periodic`` kept by N processes, against Huey's and APScheduler 3's.

1. Duplicates per tick with N = 1, 3, 8 scheduling processes (``--processes``). Each process keeps the same
   schedule and every run appends ``<tick> <pid> <start>`` to a file:

   - ``flask-queue``: N ``flask queue worker --threads 1`` processes on one SQLite file (and, with
     ``--backend URL``, on that backend too, in a key prefix or schema of its own), one
     ``@tasks.periodic(every=S)`` schedule (``--every``, default 1 s, ``catch_up="latest"``). Jobs per tick
     are counted in the backend (``Backend.jobs()``: the ``tick`` of each job's call), runs in the file.
   - ``apscheduler``: N processes, each an APScheduler 3 ``BackgroundScheduler`` with its default in-memory
     job store and one ``IntervalTrigger(seconds=S)`` job: what Flask-APScheduler does in each process of
     ``gunicorn -w N``. Jobs per tick are its runs.
   - ``huey``: N consumers (one worker thread each, periodic scheduler on) of one ``SqliteHuey`` file with a
     ``@huey.periodic_task(crontab(minute="*"))`` task. Huey's finest period is a minute, so its run lasts
     ``--huey-duration`` (130 s: two ticks); the three N run at once, each with its own file. ``--quick``
     skips it.

   The ticks counted are those that fall once all N processes keep the schedule, for ``--duration``
   seconds (Huey: until its run ends, and only the minutes every consumer has checked by then). Per system
   and N: ticks, jobs per tick (mean), duplicates per tick (jobs beyond the first, mean over the ticks that
   had a job), missed ticks (no job). Target for Flask-Queue: 0 duplicates, 0 missed.
2. Tick jitter: the time from the scheduled tick to the job's start, p50 and p99, from the same runs, with
   idle workers (Flask-Queue: ``start - tick``; APScheduler: ``start`` minus its scheduled time, a multiple
   of S since the epoch, its ``start_date``; Huey: ``start`` minus the minute). Target for Flask-Queue:
   p99 <= 100 ms.
3. The cost of keys: ``task.options(key=f"k{i}").enqueue(i)``, a distinct key each, against
   ``task.enqueue(i)``, ``--key-jobs`` of each in this process (``workers=0``), on a SQLite file and on Redis
   (``--redis-url``, a key prefix of its own, deleted afterwards), each measurement on a fresh store, the two
   interleaved (the first alternating) over ``--key-repeats`` repeats: enqueues/s (median) and the ratio with
   / without (median of the repeats' ratios). Target >= 0.8. A backend whose keyed enqueue raises, or does
   not return the key's job for a second enqueue of a key, is reported as failed.

Every process stops by itself (SIGTERM from here at the end of its run, or its own deadline if this driver
dies); temporary folders and Redis keys are deleted. Run with ``python -m bench.scheduling`` (``--help``
lists the flags and their ``BENCH_*`` variables).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flask import Flask

from flask_queue import TaskQueue

from . import _machine, _report
from ._cli import add_options, config_from
from ._scheduling_peers import HUEY_PERIOD

ROOT = Path(__file__).resolve().parent.parent
TASK = "bench.scheduling.beat"
SYSTEMS = ("flask-queue", "huey", "apscheduler")
#: Targets from the issue.
MAX_DUPLICATES = 0.0
MAX_P99_MS = 100.0
MIN_KEY_RATIO = 0.8
#: Seconds a process has to stop after SIGTERM before it is killed; and past its own deadline.
STOP_GRACE = 20.0
#: Enqueues before a timed key measurement (the tables and connections exist, the code is warm).
WARM_ENQUEUES = 50


@dataclass
class SchedulingConfig:
    """The knobs of the scheduling benchmark (each also a flag and a ``BENCH_<NAME>`` variable)."""

    processes: str = "1,3,8"  # scheduling processes per setup, comma-separated; empty for the key part only
    every: float = 1.0  # seconds between ticks (Flask-Queue's every=, APScheduler's IntervalTrigger)
    duration: float = 30.0  # seconds of ticks counted per setup, once all its processes keep the schedule
    huey_duration: float = 130.0  # seconds of Huey's run (a tick a minute); 0 skips Huey
    huey_poll: float = 0.01  # seconds between an idle Huey worker's polls (Huey's default: 0.1 to 10)
    backend: str = ""  # a further backend for Flask-Queue's schedule (redis://... or postgresql://...)
    key_jobs: int = 5_000  # enqueues per key measurement
    key_repeats: int = 5  # repeats of the key measurement (with / without, interleaved)
    redis_url: str = "redis://127.0.0.1:6379/0"  # the Redis of the key measurement; empty to skip it
    start_timeout: float = 60.0  # seconds N processes have to start keeping the schedule


#: ``--quick``: a smoke run of a few seconds per step (Huey's minute ticks skipped).
QUICK = {"duration": 5.0, "huey_duration": 0.0, "key_jobs": 1_000, "key_repeats": 5, "start_timeout": 30.0}


# -- Flask-Queue's process ---------------------------------------------------------------------------------


def create_app() -> Flask:
    """The app of Flask-Queue's scheduling processes (``flask --app bench.scheduling:create_app() queue
    worker``): one schedule, ``every=BENCH_SCHEDULING_EVERY``, whose job appends ``<tick> <pid> <start>`` to
    ``runs.txt`` in ``BENCH_SCHEDULING_FOLDER``. Stops its own process at ``BENCH_SCHEDULING_DEADLINE``."""
    folder = os.environ["BENCH_SCHEDULING_FOLDER"]
    app = Flask("bench_scheduling", instance_path=folder)
    tasks = TaskQueue(app, backend=os.environ["BENCH_SCHEDULING_BACKEND"], workers=0)
    fd = os.open(Path(folder) / "runs.txt", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    @tasks.periodic(every=float(os.environ.get("BENCH_SCHEDULING_EVERY", "1")), name="beat")
    @tasks.task(name=TASK)
    def beat(tick: dt.datetime) -> None:
        start = time.time()
        # One short write to a file opened for appending: lines of concurrent processes never mix.
        os.write(fd, f"{tick.timestamp()!r} {pid} {start!r}\n".encode())

    deadline = os.environ.get("BENCH_SCHEDULING_DEADLINE")
    if deadline:
        _stop_at(float(deadline))
    return app


def _stop_at(deadline: float) -> None:
    """SIGTERM this process at ``deadline`` (it drains and exits), and end it for good if it is still here
    ``STOP_GRACE`` seconds later: a worker left behind by a dead benchmark does not run for ever."""

    def stop() -> None:
        time.sleep(max(deadline - time.time(), 0.0))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(STOP_GRACE)
        os._exit(3)

    threading.Thread(target=stop, name="bench-deadline", daemon=True).start()


# -- processes ---------------------------------------------------------------------------------------------


class Setup:
    """One system kept by ``n`` processes in ``folder``, each appending its runs to ``folder/runs.txt``."""

    def __init__(self, system: str, n: int, folder: Path, config: SchedulingConfig, url: str = "") -> None:
        self.system = system
        self.n = n
        self.folder = folder
        self.config = config
        self.url = url
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ready_at: float | None = None
        #: CPU seconds the processes had used when they were all ready (see ``cpu_cores``).
        self._cpu_at_ready: tuple[float, float] | None = None
        self._client: tuple[Flask, TaskQueue] | None = None

    @property
    def label(self) -> str:
        if self.system != "flask-queue":
            return f"{self.system} (sqlite)" if self.system == "huey" else self.system
        return f"flask-queue ({self.url.split(':', 1)[0]})"

    def start(self, deadline: float) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.system == "flask-queue":
            command = [sys.executable, "-m", "flask", "--app", "bench.scheduling:create_app()", "queue"]
            command += ["worker", "--threads", "1"]
            env.update(
                BENCH_SCHEDULING_FOLDER=str(self.folder),
                BENCH_SCHEDULING_BACKEND=self.url,
                BENCH_SCHEDULING_EVERY=repr(self.config.every),
                BENCH_SCHEDULING_DEADLINE=repr(deadline),
            )
        else:
            command = [sys.executable, "-m", "bench._scheduling_peers", self.system]
            command += ["--folder", str(self.folder), "--every", repr(self.config.every)]
            command += ["--poll", repr(self.config.huey_poll), "--deadline", repr(deadline)]
        for index in range(self.n):
            with (self.folder / f"process-{index}.log").open("wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        command,
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def client(self) -> tuple[Flask, TaskQueue]:
        """An app on Flask-Queue's backend, with no worker: to read the workers and the jobs."""
        if self._client is None:
            app = Flask("bench_scheduling_client", instance_path=str(self.folder))
            self._client = app, TaskQueue(app, backend=self.url, workers=0)
        return self._client

    def keeping(self) -> int:
        """How many of the processes keep the schedule now."""
        if self.system == "flask-queue":
            app, tasks = self.client()
            return len(tasks.backend(app).workers())
        ready = self.folder / "ready.txt"
        return len(ready.read_text().splitlines()) if ready.exists() else 0

    def poll_ready(self) -> bool:
        """Whether all processes keep the schedule (noting when they first all did); raises if one ended."""
        for index, proc in enumerate(self.procs):
            if proc.poll() is not None:
                raise RuntimeError(f"process {index} exited with {proc.returncode}: {self.log_tail(index)}")
        if self.ready_at is None and self.keeping() >= self.n:
            self.ready_at = time.time()
            self._cpu_at_ready = (time.monotonic(), self.cpu_seconds())
        return self.ready_at is not None

    def cpu_seconds(self) -> float:
        """CPU time the processes have used so far (each is the leader of a session of its own)."""
        return sum(_machine.session_cpu_seconds(proc.pid) for proc in self.procs)

    def cpu_cores(self) -> float | None:
        """Cores' worth of CPU the processes used, all told, since they were all ready."""
        if self._cpu_at_ready is None:
            return None
        since, used = self._cpu_at_ready
        return (self.cpu_seconds() - used) / max(time.monotonic() - since, 1e-3)

    def check_alive(self) -> None:
        for index, proc in enumerate(self.procs):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"process {index} exited early ({proc.returncode}): {self.log_tail(index)}"
                )

    def log_tail(self, index: int) -> str:
        path = self.folder / f"process-{index}.log"
        lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return " / ".join(lines[-3:]) or "no output"

    def complaints(self) -> list[str]:
        """The distinct warnings, errors and tracebacks the processes logged (at most 5)."""
        found: list[str] = []
        for index in range(self.n):
            path = self.folder / f"process-{index}.log"
            for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
                text = line.strip()
                if (
                    any(word in text for word in ("WARNING", "ERROR", "Traceback", "Error:"))
                    and text not in found
                ):
                    found.append(text)
        return found[:5]

    def stop(self) -> list[int | None]:
        """SIGTERM every process, wait for them, kill those that do not stop; their exit codes."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        codes: list[int | None] = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                codes.append(None)
        return codes

    def close(self) -> None:
        if self._client is not None:
            app, tasks = self._client
            tasks.backend(app).close()
            self._client = None

    # -- what they did ---------------------------------------------------------------------------------------

    def runs(self) -> list[tuple[float, int, float]]:
        """``(tick, pid, start)`` of every run."""
        path = self.folder / "runs.txt"
        found = []
        for line in path.read_text().splitlines() if path.exists() else []:
            tick, pid, start = line.split()
            found.append((float(tick), int(pid), float(start)))
        return found

    def stored_ticks(self) -> list[float]:
        """Flask-Queue: the tick of every job of the schedule the backend holds, in any status."""
        app, tasks = self.client()
        backend = tasks.backend(app)
        ticks = []
        offset = 0
        while batch := backend.jobs(limit=500, offset=offset):
            offset += len(batch)
            for record in batch:
                if record.task == TASK:
                    tick = json.loads(record.payload)["kwargs"]["tick"]
                    ticks.append(dt.datetime.fromisoformat(tick).timestamp())
        return ticks

    def phases(self) -> list[float]:
        """Huey: when each consumer's scheduler started (it checks the periodic tasks then, every 60 s after)."""
        ready = self.folder / "ready.txt"
        return [float(line.split()[1]) for line in ready.read_text().splitlines()] if ready.exists() else []


def _wait_ready(setups: Sequence[Setup], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    # Every setup is polled each time (no short cut), so that each notes the moment it is ready.
    while not all([setup.poll_ready() for setup in setups]):  # noqa: C419
        if time.monotonic() > deadline:
            late = ", ".join(f"{s.label} x{s.n}: {s.keeping()}/{s.n}" for s in setups if s.ready_at is None)
            raise RuntimeError(f"not all processes kept the schedule within {timeout:.0f} s ({late})")
        time.sleep(0.05)


def _sleep_until(when: float, setups: Sequence[Setup]) -> None:
    while (left := when - time.time()) > 0:
        for setup in setups:
            setup.check_alive()
        time.sleep(min(left, 0.5))


# -- counting ----------------------------------------------------------------------------------------------


def _ms_key(tick: float) -> int:
    return round(tick * 1000)


def _grid(first_after: float, last: float, period: float) -> list[float]:
    """The ticks of period ``period`` (multiples since the epoch) in ``(first_after, last]``."""
    index = int(first_after // period) + 1
    ticks = []
    while (tick := round(index * period, 6)) <= last:
        if tick > first_after:
            ticks.append(tick)
        index += 1
    return ticks


def analyse(
    expected: Sequence[float], runs: Sequence[tuple[float, int, float]], stored: Sequence[float] | None
) -> dict[str, Any]:
    """Per tick of ``expected``: the jobs (``stored`` if given, else the runs) and the runs' jitter."""
    wanted = {_ms_key(tick) for tick in expected}
    run_counts = collections.Counter(_ms_key(tick) for tick, _, _ in runs if _ms_key(tick) in wanted)
    job_counts = (
        run_counts
        if stored is None
        else collections.Counter(_ms_key(tick) for tick in stored if _ms_key(tick) in wanted)
    )
    observed = [key for key in wanted if job_counts[key]]
    jitter = sorted((start - tick) * 1000.0 for tick, _, start in runs if _ms_key(tick) in wanted)
    return {
        "ticks": len(expected),
        "ticks_with_jobs": len(observed),
        "missed": len(expected) - len(observed),
        "jobs": sum(job_counts.values()),
        "runs": sum(run_counts.values()),
        "jobs_per_tick": statistics.fmean([job_counts[k] for k in observed]) if observed else None,
        "runs_per_tick": statistics.fmean([run_counts[k] for k in wanted]) if wanted else None,
        "duplicates_per_tick": statistics.fmean([job_counts[k] - 1 for k in observed]) if observed else None,
        "max_jobs_per_tick": max((job_counts[k] for k in observed), default=0),
        "ticks_with_duplicates": sum(1 for k in observed if job_counts[k] > 1),
        "runners": len({pid for tick, pid, _ in runs if _ms_key(tick) in wanted}),
        "jitter_ms": {
            "samples": len(jitter),
            "p50": _report.percentile(jitter, 0.5),
            "p99": _report.percentile(jitter, 0.99),
            "max": jitter[-1] if jitter else None,
            "min": jitter[0] if jitter else None,
        },
    }


# -- 1 and 2: the schedules ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _namespace(url: str) -> Iterator[str]:
    """A URL for a store of its own on the server ``url`` names, deleted afterwards."""
    token = uuid.uuid4().hex[:10]
    separator = "&" if "?" in url else "?"
    if url.startswith(("redis://", "rediss://")):
        import redis

        prefix = f"fq-bench-scheduling-{token}"
        try:
            yield f"{url}{separator}prefix={prefix}"
        finally:
            client = redis.Redis.from_url(url.split("?")[0], socket_connect_timeout=3)
            try:
                keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
                if keys:
                    client.delete(*keys)
            except redis.ConnectionError:
                pass  # unreachable: nothing was stored there either
            finally:
                client.close()
    elif url.startswith(("postgresql://", "postgres://")):
        import psycopg

        schema = f"fq_bench_scheduling_{token}"
        try:
            yield f"{url}{separator}schema={schema}"
        finally:
            with psycopg.connect(url.split("?")[0], autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    else:
        raise ValueError(f"--backend: a redis:// or postgresql:// URL, not {url!r}")


Log = Callable[[str], None]
#: A store for one setup of Flask-Queue's: its backend URL, given the setup's temporary folder.
StoreOf = Callable[[Path], contextlib.AbstractContextManager[str]]


def _interval_setup(
    system: str, n: int, config: SchedulingConfig, log: Log, url_of: StoreOf | None = None
) -> dict[str, Any]:
    """Flask-Queue or APScheduler kept by ``n`` processes for ``duration`` seconds of ticks."""
    with tempfile.TemporaryDirectory(prefix="bench-scheduling-") as tmp:
        folder = Path(tmp)
        with url_of(folder) if url_of is not None else contextlib.nullcontext("") as url:
            setup = Setup(system, n, folder, config, url)
            started = time.time()
            hard_deadline = started + config.start_timeout + config.duration + config.every + 30.0
            try:
                setup.start(hard_deadline)
                _wait_ready([setup], config.start_timeout)
                assert setup.ready_at is not None
                window_end = setup.ready_at + config.duration
                _sleep_until(window_end, [setup])
                cpu = setup.cpu_cores()
                # A tick's job gets a period and two seconds to be enqueued and to start.
                _sleep_until(window_end + config.every + 2.0, [setup])
                stopped_at = time.time()
            except BaseException as exc:
                setup.stop()
                setup.close()
                if not isinstance(exc, Exception):  # Ctrl-C: the processes are stopped, the folder deleted
                    raise
                return {"system": setup.label, "processes": n, "problem": str(exc)}
            codes = setup.stop()
            complaints = setup.complaints()
            try:
                runs = setup.runs()
                stored = setup.stored_ticks() if system == "flask-queue" else None
            finally:
                setup.close()
            expected = _grid(setup.ready_at, window_end, config.every)
            figures = analyse(expected, runs, stored)
            result = {
                "system": setup.label,
                "processes": n,
                "every": config.every,
                "startup_s": round(setup.ready_at - started, 2),
                "window": [setup.ready_at, window_end],
                "stopped_at": stopped_at,
                "exit_codes": codes,
                "complaints": complaints,
                "cpu_cores": cpu,
                **figures,
            }
            log(f"    {setup.label:<22} x{n}: {_brief(result)}")
            return result


def _huey_setups(config: SchedulingConfig, counts: Sequence[int], log: Log) -> list[dict[str, Any]]:
    """Huey kept by each of ``counts`` consumers at once (a file each), for ``huey_duration`` seconds."""
    with contextlib.ExitStack() as stack:
        setups = [
            Setup(
                "huey",
                n,
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sched-huey-"))),
                config,
            )
            for n in counts
        ]
        started = time.time()
        hard_deadline = started + config.start_timeout + config.huey_duration + 30.0
        try:
            for setup in setups:
                setup.start(hard_deadline)
            _wait_ready(setups, config.start_timeout)
            stop_at = max(setup.ready_at or 0.0 for setup in setups) + config.huey_duration
            log(
                f"    huey: {sum(counts)} consumers running, until {time.strftime('%H:%M:%S', time.localtime(stop_at))}"
            )
            _sleep_until(stop_at, setups)
            cpus = [setup.cpu_cores() for setup in setups]
            stopped_at = time.time()
        except BaseException as exc:
            for setup in setups:
                setup.stop()
            if not isinstance(exc, Exception):
                raise
            return [{"system": "huey (sqlite)", "processes": n, "problem": str(exc)} for n in counts]
        results = []
        for setup, cpu in zip(setups, cpus, strict=True):
            codes = setup.stop()
            assert setup.ready_at is not None
            phases = setup.phases()
            # A minute's ticks come at each consumer's phase in the minute: count the minutes all have checked.
            lag = max((phase % HUEY_PERIOD for phase in phases), default=0.0) + 2.0
            expected = _grid(setup.ready_at, stopped_at - lag, HUEY_PERIOD)
            result = {
                "system": setup.label,
                "processes": setup.n,
                "every": HUEY_PERIOD,
                "startup_s": round(setup.ready_at - started, 2),
                "window": [setup.ready_at, stopped_at - lag],
                "stopped_at": stopped_at,
                "consumer_phases_s": [round(phase % HUEY_PERIOD, 2) for phase in phases],
                "exit_codes": codes,
                "complaints": setup.complaints(),
                "cpu_cores": cpu,
                **analyse(expected, setup.runs(), None),
            }
            log(f"    {setup.label:<22} x{setup.n}: {_brief(result)}")
            results.append(result)
        return results


def _brief(result: dict[str, Any]) -> str:
    if result.get("problem"):
        return f"PROBLEM: {result['problem']}"
    jitter = result["jitter_ms"]
    return (
        f"{result['ticks']} ticks, {_report.fmt(result['jobs_per_tick'], 2)} jobs/tick,"
        f" {result['missed']} missed, jitter p50 {_report.fmt(jitter['p50'])} ms"
        f" p99 {_report.fmt(jitter['p99'])} ms (started in {result['startup_s']} s)"
    )


def schedules(config: SchedulingConfig, log: Log) -> list[dict[str, Any]]:
    counts = [int(n) for n in config.processes.split(",") if n.strip()]
    results = []
    if config.huey_duration > 0 and counts:
        log(f"  huey: {', '.join(map(str, counts))} consumers at once, {config.huey_duration:.0f} s ...")
        results += _huey_setups(config, counts, log)

    def sqlite(folder: Path) -> contextlib.AbstractContextManager[str]:
        return contextlib.nullcontext(f"sqlite:///{folder / 'jobs.sqlite3'}")

    backends: list[StoreOf] = [sqlite]
    if config.backend:
        backends.append(lambda folder: _namespace(config.backend))
    for n in counts:
        log(f"  {n} process(es), every {config.every:g} s, {config.duration:.0f} s of ticks each ...")
        for url_of in backends:
            results.append(_interval_setup("flask-queue", n, config, log, url_of))
        results.append(_interval_setup("apscheduler", n, config, log))
    return results


# -- 3: the cost of keys -----------------------------------------------------------------------------------


def _key_measure(url: str, folder: Path, n: int, keyed: bool) -> float:
    """Enqueues/s of ``n`` no-op jobs on a fresh store, each with a key of its own or with none."""
    app = Flask("bench_scheduling_keys", instance_path=str(folder))
    tasks = TaskQueue(app, backend=url, workers=0)

    @tasks.task(name="bench.scheduling.noop")
    def noop(i: int) -> None: ...

    try:
        with app.app_context():
            for i in range(WARM_ENQUEUES):
                (noop.options(key=f"warm{i}") if keyed else noop).enqueue(-1)
            if keyed:
                first = noop.options(key="k0").enqueue(0).id
                started = time.perf_counter()
                for i in range(1, n):
                    noop.options(key=f"k{i}").enqueue(i)
                elapsed = time.perf_counter() - started
                # A key's second enqueue must give back its job, and every distinct key must have stored one.
                again = noop.options(key="k0").enqueue(0).id
                if again != first:
                    raise RuntimeError(
                        f"a second enqueue of key k0 returned job {again}, not its job {first}"
                    )
                n_timed = n - 1
            else:
                started = time.perf_counter()
                for i in range(n):
                    noop.enqueue(i)
                elapsed = time.perf_counter() - started
                n_timed = n
            stored = tasks.backend(app).size()
            if stored != n + WARM_ENQUEUES:
                raise RuntimeError(f"{stored} jobs stored after {n + WARM_ENQUEUES} enqueues")
    finally:
        tasks.backend(app).close()
    return n_timed / elapsed


def _key_store(engine: str, config: SchedulingConfig, folder: Path) -> contextlib.AbstractContextManager[str]:
    if engine == "sqlite":
        return contextlib.nullcontext(f"sqlite:///{folder / 'keys.sqlite3'}")
    return _namespace(config.redis_url)


def _redis_problem(url: str) -> str | None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        return f"Redis at {url} is unreachable ({exc})"
    return None


def keys(config: SchedulingConfig, log: Log) -> list[dict[str, Any]]:
    engines = ["sqlite"] + (["redis"] if config.redis_url else [])
    results = []
    for engine in engines:
        row: dict[str, Any] = {"backend": engine, "with_key": [], "without_key": [], "ratios": []}
        problem = _redis_problem(config.redis_url) if engine == "redis" else None
        for repeat in range(config.key_repeats):
            if problem:
                break
            order = [True, False] if repeat % 2 == 0 else [False, True]
            rates = {}
            for keyed in order:
                try:
                    with (
                        tempfile.TemporaryDirectory(prefix="bench-scheduling-keys-") as tmp,
                        _key_store(engine, config, Path(tmp)) as url,
                    ):
                        rates[keyed] = _key_measure(url, Path(tmp), config.key_jobs, keyed)
                except Exception as exc:
                    problem = f"{'keyed' if keyed else 'plain'} enqueue failed: {type(exc).__name__}: {exc}"
                    break
            if problem:
                break
            row["with_key"].append(rates[True])
            row["without_key"].append(rates[False])
            row["ratios"].append(rates[True] / rates[False])
        row["problem"] = problem
        if row["ratios"]:
            row["median_with"] = statistics.median(row["with_key"])
            row["median_without"] = statistics.median(row["without_key"])
            row["median_ratio"] = statistics.median(row["ratios"])
        text = f"PROBLEM: {problem}" if problem else ""
        if row["ratios"]:
            text = (
                f"with a key {row['median_with']:,.0f}/s, without {row['median_without']:,.0f}/s,"
                f" ratio {row['median_ratio']:.2f} {text}"
            )
        log(f"    keys on {engine:<7} {text}")
        results.append(row)
    return results


# -- the run -----------------------------------------------------------------------------------------------


def _versions(config: SchedulingConfig) -> dict[str, str]:
    import sqlite3
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("flask-queue", "apscheduler", "huey", "redis"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "?"
    found["sqlite"] = sqlite3.sqlite_version
    if config.redis_url and _redis_problem(config.redis_url) is None:
        import redis

        client = redis.Redis.from_url(config.redis_url)
        try:
            found["redis server"] = str(client.info("server")["redis_version"])
        finally:
            client.close()
    return found


def run(config: SchedulingConfig, log: Log = print) -> dict[str, Any]:
    machine = _machine.describe()
    log("  3. the cost of keys ...")
    key_rows = keys(config, log)
    log("  1-2. schedules ...")
    schedule_rows = schedules(config, log)
    return {
        "config": asdict(config),
        "machine": {**machine, "ended": time.strftime("%Y-%m-%d %H:%M:%S %z")},
        "versions": _versions(config),
        "schedules": schedule_rows,
        "keys": key_rows,
    }


# -- the report --------------------------------------------------------------------------------------------


def _by(rows: Sequence[dict[str, Any]], system: str, n: int) -> dict[str, Any] | None:
    for row in rows:
        if row["system"].startswith(system) and row["processes"] == n and not row.get("problem"):
            return row
    return None


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "NO")


def report(results: dict[str, Any]) -> str:
    config = results["config"]
    rows = results["schedules"]
    lines = [
        f"1. Duplicates per tick: one schedule kept by N processes; Flask-Queue and APScheduler every"
        f" {config['every']:g} s for {config['duration']:.0f} s of ticks, Huey every minute for"
        f" {config['huey_duration']:.0f} s"
        + (" (skipped: --quick, or --huey-duration 0)" if config["huey_duration"] <= 0 else "")
        + ". Jobs: Flask-Queue's as stored in its backend, the peers' as run.",
        "",
    ]
    table = []
    for row in rows:
        if row.get("problem"):
            table.append(
                [row["system"], str(row["processes"]), "-", "-", "-", "-", "-", f"FAILED: {row['problem']}"]
            )
            continue
        ours = row["system"].startswith("flask-queue")
        table.append(
            [
                row["system"],
                str(row["processes"]),
                str(row["ticks"]),
                _report.fmt(row["jobs_per_tick"], 2),
                _report.fmt(row["duplicates_per_tick"], 2),
                str(row["missed"]),
                _report.fmt(row["runs_per_tick"], 2),
                _met(row["duplicates_per_tick"] == MAX_DUPLICATES and row["missed"] == 0) if ours else "",
            ]
        )
    headers = ["system", "N", "ticks", "jobs/tick", "duplicates/tick", "missed", "runs/tick"]
    lines.append(_report.table([*headers, "target 0 / 0 met"], table))
    counts = sorted({row["processes"] for row in rows})
    lines.append("")
    for n in counts:
        parts = []
        for system in SYSTEMS:
            row = _by(rows, system, n)
            parts.append(f"{system} {_report.fmt(row['duplicates_per_tick'], 2) if row else '-'}")
        lines.append(f"duplicates per tick, N={n}: " + " / ".join(parts) + f" (N-1 = {n - 1})")
    lines += [
        "",
        "2. Tick jitter: scheduled tick to the job's start, idle workers (every run of the ticks counted).",
        "",
    ]
    table = []
    for row in rows:
        if row.get("problem"):
            continue
        jitter = row["jitter_ms"]
        ours = row["system"].startswith("flask-queue")
        table.append(
            [
                row["system"],
                str(row["processes"]),
                str(jitter["samples"]),
                _report.fmt(jitter["p50"]),
                _report.fmt(jitter["p99"]),
                _report.fmt(jitter["max"]),
                _report.fmt(row.get("cpu_cores"), 3),
                _met(jitter["p99"] is not None and jitter["p99"] <= MAX_P99_MS) if ours else "",
            ]
        )
    headers = ["system", "N", "runs", "p50 ms", "p99 ms", "max ms", "CPU of the N (cores)"]
    lines.append(_report.table([*headers, f"p99 <= {MAX_P99_MS:.0f} ms met"], table))
    phases = sorted(phase for row in rows for phase in row.get("consumer_phases_s", []))
    if phases:
        lines.append(
            f"\nHuey checks its periodic tasks when a consumer starts and every {HUEY_PERIOD:.0f} s after, not on"
            f" the minute: its jitter is its consumers' phase in the minute ({phases[0]:.1f} to {phases[-1]:.1f} s"
            " in this run), anywhere from 0 to 60 s depending on when they started."
        )
    lines.append("")
    for n in counts:
        ours = _by(rows, "flask-queue", n)
        parts = []
        for system in SYSTEMS:
            row = _by(rows, system, n)
            p99 = row["jitter_ms"]["p99"] if row else None
            text = f"{system} {_report.fmt(p99)} ms"
            if system != "flask-queue" and ours and p99 and ours["jitter_ms"]["p99"] is not None:
                text += f" ({p99 / max(ours['jitter_ms']['p99'], 1e-3):,.1f} x ours)"
            parts.append(text)
        lines.append(f"jitter p99, N={n}: " + " / ".join(parts))
    lines += [
        "",
        f"3. The cost of keys: {config['key_jobs']:,} enqueues with a distinct key each"
        f" (task.options(key=...).enqueue) vs {config['key_jobs']:,} without, one process, workers=0, a fresh"
        f" store each, {config['key_repeats']} interleaved repeats (medians; ratios per repeat in brackets).",
        "",
    ]
    table = []
    for row in results["keys"]:
        if not row.get("ratios"):
            table.append([row["backend"], "-", "-", "-", "-", f"FAILED: {row['problem']}"])
            continue
        table.append(
            [
                row["backend"],
                _report.fmt(row["median_without"], 0),
                _report.fmt(row["median_with"], 0),
                _report.fmt(row["median_ratio"], 2),
                ", ".join(f"{r:.2f}" for r in row["ratios"]),
                _met(row["median_ratio"] >= MIN_KEY_RATIO)
                + (f" (FAILED later: {row['problem']})" if row.get("problem") else ""),
            ]
        )
    headers = ["backend", "without key /s", "with key /s", "with / without", "repeats"]
    lines.append(_report.table([*headers, f">= {MIN_KEY_RATIO} met"], table))
    for row in rows:
        codes = row.get("exit_codes") or []
        if any(code != 0 for code in codes):
            lines.append(f"\nPROBLEM: {row['system']} x{row['processes']}: exit codes {codes}")
        for complaint in row.get("complaints") or []:
            lines.append(f"\nLOGGED by {row['system']} x{row['processes']}: {complaint}")
    lines.append("\n" + _report.run_line(results))
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scheduling", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 s of ticks per setup, no Huey")
    add_options(parser, SchedulingConfig())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the benchmark, print its tables and keep its figures."""
    config = config_from(SchedulingConfig(), _parser().parse_args(argv), QUICK)
    started = time.monotonic()
    print("== scheduling ==", flush=True)
    results = run(config, lambda line: print(line, flush=True))
    text = report(results)
    path = _report.save("scheduling", results, text)
    print(f"\n{text}\n\n(scheduling: {time.monotonic() - started:.0f} s; raw figures in {path})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
