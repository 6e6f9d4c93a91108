"""Worker processes killed mid-job, over every durable backend: no job is lost, and the only jobs that run
twice are jobs that were in flight in a killed worker; and a worker that outlives its backend's restart.
Real ``flask queue worker`` processes run ``procs_app``; each run of a task is recorded in a file as it
starts (see ``procs_app``)."""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from flask_queue import JobStatus, TaskQueue
from tests.servers._live import free_port

from .test_processes import APP, WAIT, Env, wait_until

DURABLE = ("sqlite", "redis", "postgres")


@pytest.fixture(params=DURABLE)
def env(
    request: pytest.FixtureRequest, tmp_path: Path, backend_url_of: Callable[[str], str]
) -> Iterator[Env]:
    environment = Env(tmp_path, backend=backend_url_of(request.param))
    yield environment
    environment.stop_all()


@pytest.fixture
def client(env: Env, tmp_path: Path) -> Iterator[tuple[Flask, TaskQueue]]:
    """This process's view of the backend: enqueues the procs_app's tasks by name, runs nothing."""
    app = Flask("client", instance_path=str(tmp_path))
    tasks = TaskQueue(app, backend=env.backend, workers=0)
    for name in ("work", "gather"):
        tasks.task(name=f"{APP}.{name}")(lambda *args: None)
    yield app, tasks
    tasks.backend(app).close()


def _workers(env: Env, processes: int, threads: int, *options: str) -> int:
    supervisor = env.spawn(
        "-m",
        "flask",
        "--app",
        APP,
        "queue",
        "worker",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        *options,
        name="workers",
    )
    return supervisor.pid


def _victim(env: Env, spared: set[int], runs_before: int) -> int | None:
    """A worker process in the middle of a job's first run (once ``runs_before`` runs have started), so that
    a kill makes a job run twice but never loses the same job over and over (see ``MAX_LOST``)."""
    lines = env.runs.read_text().splitlines() if env.runs.exists() else []
    if len(lines) < runs_before:
        return None
    done = set(env.done.read_text().splitlines()) if env.done.exists() else set()
    starts = collections.Counter(line.split()[0] for line in lines)
    in_flight: dict[int, list[str]] = collections.defaultdict(list)
    for line in lines:
        if line not in done:
            tag, runner = line.split()
            in_flight[int(runner)].append(tag)
    for pid, tags in in_flight.items():
        if pid not in spared and all(starts[tag] == 1 for tag in tags):
            return pid
    return None


def _finished(app: Flask, tasks: TaskQueue) -> int:
    with app.app_context():
        counts = tasks.backend(app).counts()
    return sum(by_status["succeeded"] + by_status["failed"] for by_status in counts.values())


def test_workers_killed_mid_job_lose_no_job(env: Env, client: tuple[Flask, TaskQueue]) -> None:
    app, tasks = client
    count = 90
    with app.app_context():
        jobs = tasks.tasks[f"{APP}.work"].enqueue_many([((f"j{n}", 0.1), {}) for n in range(count)])
    # A short lease, so that the jobs of a killed worker come back quickly.
    supervisor = _workers(env, 3, 2, "--lease", "2")
    killed: set[int] = set()
    with env.diagnose("workers"):
        for runs_before in (10, 35, 60):
            victim = wait_until(
                f"a worker in a job's first run after {runs_before} runs",
                functools.partial(_victim, env, killed | {supervisor}, runs_before),
            )
            os.kill(victim, signal.SIGKILL)
            killed.add(victim)
        wait_until("every job to finish", lambda: _finished(app, tasks) == count)
        records = [job.refresh() for job in jobs]
        assert {record.status for record in records} == {JobStatus.SUCCEEDED}
        runs = Env.runs_in_order(env.runs)
        assert set(runs) == {f"j{n}" for n in range(count)}, "a job never ran"
        for n, record in enumerate(records):
            pids = runs[f"j{n}"]
            # Every run but the last was cut short by a kill; every attempt but one was a lost lease.
            assert set(pids[:-1]) <= killed, f"j{n} ran more than once outside a killed worker: {pids}"
            assert record.attempts - record.lost == 1
            assert len(pids) <= record.attempts
        assert sum(record.lost for record in records) >= 1, "no kill hit a job"
        os.kill(supervisor, signal.SIGTERM)
        assert env.procs[-1].wait(WAIT) == 0
    assert env.log("workers").count("was killed by SIGKILL") == 3


def test_two_processes_of_two_threads_share_the_work_and_drain_on_sigterm(
    env: Env, client: tuple[Flask, TaskQueue]
) -> None:
    app, tasks = client
    with app.app_context():
        # Each job returns once all four have started: they must run at once, two in each process.
        jobs = tasks.tasks[f"{APP}.gather"].enqueue_many([((f"g{n}", 4), {}) for n in range(4)])
    supervisor = _workers(env, 2, 2)
    runner = app.test_cli_runner()
    with env.diagnose("workers"):
        wait_until("the four jobs to run at once", lambda: sum(env.runs_of().values()) == 4)
        pids = collections.Counter(pid for tag_pids in env.pids_of().values() for pid in tag_pids)
        assert sorted(pids.values()) == [2, 2]
        assert supervisor not in pids
        live = wait_until(
            "both workers' heartbeats",
            lambda: [w for w in tasks.backend(app).workers() if w.pid in pids] if len(pids) == 2 else None,
        )
        assert len(live) == 2
        assert {(worker.pid, worker.threads) for worker in live} == {(pid, 2) for pid in pids}
        status = runner.invoke(args=["queue", "status"]).output
        assert all(worker.name in status for worker in live), status
        os.kill(supervisor, signal.SIGTERM)  # the jobs are still running: both processes drain them
        env.runs.with_name("release").touch()
        assert env.procs[-1].wait(WAIT) == 0
    assert [job.result(timeout=5) for job in jobs].count(live[0].pid) == 2
    assert {(job.record.status, job.record.attempts) for job in jobs} == {(JobStatus.SUCCEEDED, 1)}
    log = env.log("workers")
    assert log.count("stopped after 2 job(s)") == 2, log
    assert "given back" not in log
    assert "starting another" not in log
    assert tasks.backend(app).workers() == []
    assert "workers: none alive" in runner.invoke(args=["queue", "status"]).output


class _PrivateRedis:
    """A Redis server of this test's own (the shared one must never be stopped), persisting to ``folder`` so
    that its jobs survive a restart on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        command += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until("the private Redis to answer", self._answers)

    def _answers(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
        ):
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # a clean shutdown: the append-only file is complete
            self.proc.wait(WAIT)


def _client(url: str, name: str) -> tuple[Flask, TaskQueue]:
    app = Flask(name)
    tasks = TaskQueue(app, backend=url, workers=0)
    tasks.task(name=f"{APP}.work")(lambda *args: None)
    return app, tasks


def test_a_worker_rides_out_a_redis_restart(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    pytest.importorskip("redis")
    server = _PrivateRedis(tmp_path)
    server.start()
    env = Env(tmp_path, backend=server.url)
    clients: list[tuple[Flask, TaskQueue]] = []

    def result_of_a_job(tag: str) -> object:
        # A client of its own each time: this test is about the worker, not the client's stale connections.
        app, tasks = _client(server.url, tag)
        clients.append((app, tasks))
        with app.app_context():
            return tasks.tasks[f"{APP}.work"].enqueue(tag, 0).result(timeout=WAIT)

    try:
        worker = env.spawn("-m", "flask", "--app", APP, "queue", "worker", "--lease", "5", name="worker")
        with env.diagnose("worker"):
            assert result_of_a_job("before") == worker.pid
            server.stop()
            wait_until("the worker to see the outage", lambda: "failed (" in env.log("worker"))
            server.start()
            assert result_of_a_job("after") == worker.pid
            wait_until("the worker to see the backend back", lambda: "answers again" in env.log("worker"))
            os.kill(worker.pid, signal.SIGTERM)
            assert worker.wait(WAIT) == 0
    finally:
        env.stop_all()
        for app, tasks in clients:
            tasks.backend(app).close()
        server.stop()
    log = env.log("worker")
    # One warning when the outage starts and one line when it ends, however many threads retried meanwhile.
    # (A pooled connection left idle across the restart may fail once more afterwards: a second outage, with
    # its own pair of lines.)
    outages = [line for line in log.splitlines() if f"task backend {server.url} " in line]
    assert outages, log
    for start, end in zip(outages[::2], outages[1::2], strict=True):
        assert " failed (" in start, log
        assert " answers again after " in end, log
    assert "stopped after 2 job(s)" in log
