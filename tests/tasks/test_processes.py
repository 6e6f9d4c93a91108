"""The task queue across real processes: ``flask queue worker`` (and its supervisor), SIGKILL mid-job, gunicorn,
the reloader. ``tests/tasks/test_crash.py`` kills worker processes over every durable backend."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from flask_queue import TaskQueue
from tests.servers._live import free_port, gunicorn_has_no_control_socket

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.tasks.procs_app"
WAIT = 60.0


class Env:
    """Processes running ``procs_app`` on one backend (by default a SQLite file in ``tmp_path``), their logs,
    and the runs their tasks recorded."""

    def __init__(self, tmp_path: Path, backend: str | None = None) -> None:
        self.db = tmp_path / "queue.sqlite3"
        self.backend = backend or f"sqlite:///{self.db}"
        self.runs = tmp_path / "runs.txt"
        self.done = tmp_path / "runs.txt.done"
        self.logs = tmp_path
        self.vars = {
            **os.environ,
            "FLASK_QUEUE_TEST_DB": str(self.db),
            "FLASK_QUEUE_TEST_BACKEND": self.backend,
            "FLASK_QUEUE_TEST_RUNS": str(self.runs),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, *args: str, name: str, **extra: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env={**self.vars, **extra},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    @contextlib.contextmanager
    def diagnose(self, name: str) -> Iterator[None]:
        """Add the tail of a server's log to any failure inside the block."""
        try:
            yield
        except (AssertionError, TimeoutError, subprocess.TimeoutExpired, requests.RequestException) as exc:
            raise AssertionError(f"{exc}\n--- {name} log ---\n{self.log(name)[-4000:]}") from exc

    def runs_of(self) -> collections.Counter[str]:
        if not self.runs.exists():
            return collections.Counter()
        return collections.Counter(line.split()[0] for line in self.runs.read_text().splitlines())

    def pids_of(self) -> dict[str, set[int]]:
        return {tag: set(pids) for tag, pids in self.runs_in_order(self.runs).items()}

    @staticmethod
    def runs_in_order(file: Path) -> dict[str, list[int]]:
        """``{tag: [pid of each run, in the order they started]}`` from a file of ``tag pid`` lines."""
        pids: dict[str, list[int]] = collections.defaultdict(list)
        if file.exists():
            for line in file.read_text().splitlines():
                tag, pid = line.split()
                pids[tag].append(int(pid))
        return pids

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    environment = Env(tmp_path)
    yield environment
    environment.stop_all()


@pytest.fixture
def client_queue(env: Env, tmp_path: Path) -> Iterator[tuple[Flask, TaskQueue]]:
    """This process's view of the queue file: enqueues the procs_app's tasks by name, runs nothing."""
    app = Flask("client", instance_path=str(tmp_path))
    tasks = TaskQueue(app, backend=env.backend, workers=0)
    for name in ("note", "hang_once", "work", "gather"):
        tasks.task(name=f"{APP}.{name}")(lambda *args: None)
    yield app, tasks
    tasks.backend(app).close()


def wait_up(server: subprocess.Popen[bytes], base: str) -> None:
    """Wait until the server at ``base`` answers ``/health``; fail at once if it exits."""

    def up() -> bool:
        if server.poll() is not None:
            raise AssertionError("the server exited")
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{base}/health", timeout=5).status_code == 200
        return False

    wait_until("the server to answer", up)


def wait_until(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_job_enqueued_here_runs_in_a_worker_process(
    env: Env, client_queue: tuple[Flask, TaskQueue]
) -> None:
    app, tasks = client_queue
    with app.app_context():
        job = tasks.tasks[f"{APP}.note"].enqueue("cross")
    worker = env.spawn("-m", "flask", "--app", APP, "queue", "worker", "--burst", name="worker")
    assert worker.wait(WAIT) == 0, env.log("worker")
    assert job.result(timeout=5) == worker.pid
    assert env.runs_of() == {"cross": 1}
    assert "stopped after 1 job(s)" in env.log("worker")


def test_a_job_whose_worker_is_killed_runs_again(env: Env, client_queue: tuple[Flask, TaskQueue]) -> None:
    app, tasks = client_queue
    with app.app_context():
        job = tasks.tasks[f"{APP}.hang_once"].enqueue("victim")
    first = env.spawn("-m", "flask", "--app", APP, "queue", "worker", "--lease", "1", name="first")
    wait_until("the first worker to start the job", lambda: env.runs_of()["victim"] == 1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(WAIT)
    second = env.spawn("-m", "flask", "--app", APP, "queue", "worker", "--lease", "1", name="second")
    assert job.result(timeout=WAIT) == second.pid
    record = job.refresh()
    assert (record.attempts, record.lost) == (2, 1)
    assert env.runs_of() == {"victim": 2}
    os.killpg(second.pid, signal.SIGTERM)
    assert second.wait(WAIT) == 0
    assert "stopped after 1 job(s)" in env.log("second")


def test_sigterm_drains_a_worker_process(env: Env, client_queue: tuple[Flask, TaskQueue]) -> None:
    app, tasks = client_queue
    with app.app_context():
        job = tasks.tasks[f"{APP}.hang_once"].enqueue("drained")
    worker = env.spawn(
        "-m", "flask", "--app", APP, "queue", "worker", name="worker", TASK_QUEUE_SHUTDOWN_TIMEOUT="0.5"
    )
    wait_until("the worker to start the job", lambda: env.runs_of()["drained"] == 1)
    os.killpg(worker.pid, signal.SIGTERM)
    assert worker.wait(WAIT) == 0, env.log("worker")
    assert "1 running job(s) given back to the queue" in env.log("worker")
    record = job.refresh()
    assert (record.status.value, record.attempts) == ("queued", 0)


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_gunicorn_workers_share_one_sqlite_queue(
    env: Env, client_queue: tuple[Flask, TaskQueue], preload: bool
) -> None:
    app, tasks = client_queue
    port = free_port()
    command = [
        "-m",
        "gunicorn",
        "--workers=2",
        "--worker-class=gthread",
        "--threads=4",
        f"--bind=127.0.0.1:{port}",
    ]
    if gunicorn_has_no_control_socket():
        command.append("--no-control-socket")
    if preload:
        command.append("--preload")
    server = env.spawn(*command, f"{APP}:app", name="gunicorn")
    with env.diagnose("gunicorn"):
        _each_job_runs_once_in_a_serving_worker(
            env, app, tasks, f"http://127.0.0.1:{port}", server, requests_=20
        )
    assert "locked" not in env.log("gunicorn")


def test_the_reloaders_watching_process_never_runs_jobs(env: Env) -> None:
    port = free_port()
    server = env.spawn(
        "-m",
        "flask",
        "--app",
        APP,
        "run",
        "--reload",
        "--port",
        str(port),
        name="flask-run",
        FLASK_QUEUE_TEST_IMPORT_JOB="1",
    )
    base = f"http://127.0.0.1:{port}"
    with env.diagnose("flask-run"):
        wait_up(server, base)
    child = requests.get(f"{base}/enqueue", params={"tag": "request"}, timeout=30).json()["pid"]
    assert child != server.pid
    # Both processes import the app, so both enqueue an import-time job; only the serving child runs jobs.
    wait_until("the three jobs to run", lambda: sum(env.runs_of().values()) == 3)
    assert env.runs_of() == {f"import-{server.pid}": 1, f"import-{child}": 1, "request-0": 1}
    assert set().union(*env.pids_of().values()) == {child}


def test_under_flask_run_the_workers_start_without_waiting_for_a_request(
    env: Env, client_queue: tuple[Flask, TaskQueue]
) -> None:
    """A backlog sat idle after each restart of the dev server until the first request came."""
    app, tasks = client_queue
    with app.app_context():
        job = tasks.tasks[f"{APP}.note"].enqueue("backlog")
    server = env.spawn("-m", "flask", "--app", APP, "run", "--reload", "--port", str(free_port()), name="run")
    with env.diagnose("run"):
        pid = job.result(timeout=WAIT)  # no request is ever sent
    assert pid != server.pid  # the reloader's child ran it, not its watching parent


def test_a_reload_while_a_job_runs_restarts_at_once_and_the_job_runs_again(
    env: Env, client_queue: tuple[Flask, TaskQueue], tmp_path: Path
) -> None:
    """Saving a file while a job ran held the dev server's restart for TASK_QUEUE_SHUTDOWN_TIMEOUT."""
    app, tasks = client_queue
    watched = tmp_path / "watched.txt"
    watched.write_text("before")
    port = free_port()
    server = env.spawn(
        "-m", "flask", "--app", APP, "run", "--reload", "--extra-files", str(watched), "--port", str(port),
        name="run", TASK_QUEUE_SHUTDOWN_TIMEOUT="600",
    )  # fmt: skip
    with app.app_context():
        job = tasks.tasks[f"{APP}.hang_once"].enqueue("reload")  # hangs on its first run only
    with env.diagnose("run"):
        wait_until("the job to start", lambda: env.runs_of()["reload"] == 1)
        first = env.pids_of()["reload"]
        os.utime(watched, (time.time() + 5, time.time() + 5))
        # The old child gives the job back as it exits; the new one runs it (before 600 s, or never).
        assert job.result(timeout=WAIT) not in first
    assert server.poll() is None
    assert env.runs_of() == {"reload": 2}


def test_a_command_of_the_app_that_enqueues_says_that_it_runs_no_worker(env: Env) -> None:
    command = env.spawn("-m", "flask", "--app", APP, "enqueue-note", name="command")
    assert command.wait(WAIT) == 0, env.log("command")
    assert "`flask enqueue-note` runs no task worker" in env.log("command")
    assert "tasks.drain()" in env.log("command")
    assert env.runs_of() == {}


def test_uwsgi_workers_run_each_job_once(env: Env, client_queue: tuple[Flask, TaskQueue]) -> None:
    uwsgi = Path(sys.executable).with_name("uwsgi")
    if not uwsgi.exists():
        pytest.skip("uWSGI is not installed (it is in the dev extra on Linux)")
    app, tasks = client_queue
    port = free_port()
    command = [
        f"--http-socket=127.0.0.1:{port}",
        "--master",
        "--processes=2",
        "--threads=2",
        "--enable-threads",
        f"--module={APP}:app",
        f"--pythonpath={ROOT}",
        "--die-on-term",
        "--need-app",
        # The documented settings: threads enabled, the app loaded in the master, and Python's fork hooks run
        # in each worker (os.register_at_fork; --py-call-osafterfork aborts Python 3.13 at fork, uwsgi#2710).
        # (With lazy-apps a worker was seen to hang at exit in 1 of 4 runs.)
        "--py-call-uwsgi-fork-hooks",
    ]
    log = (env.logs / "uwsgi.log").open("wb")
    server = subprocess.Popen(
        [str(uwsgi), *command],
        cwd=ROOT,
        env=env.vars,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    env.procs.append(server)
    base = f"http://127.0.0.1:{port}"

    with env.diagnose("uwsgi"):
        _each_job_runs_once_in_a_serving_worker(env, app, tasks, base, server, requests_=10)


def _each_job_runs_once_in_a_serving_worker(
    env: Env, app: Flask, tasks: TaskQueue, base: str, server: subprocess.Popen[bytes], requests_: int
) -> None:
    """Enqueue 10 jobs in each of ``requests_`` requests; check that each ran once, in a serving worker (not
    in the master), then stop the server (SIGTERM: its workers drain and exit; a hang times out here)."""

    wait_up(server, base)
    job_ids: list[str] = []
    serving: set[int] = set()
    for n in range(requests_):
        reply = requests.get(f"{base}/enqueue", params={"n": "10", "tag": f"r{n}"}, timeout=30).json()
        job_ids.extend(reply["jobs"])
        serving.add(reply["pid"])
    with app.app_context():
        for job_id in job_ids:
            job = tasks.get_job(job_id)
            assert job is not None
            assert job.result(timeout=WAIT) in serving, (
                "a job ran outside the serving workers (in the master?)"
            )
    runs = env.runs_of()
    assert len(runs) == 10 * requests_
    assert set(runs.values()) == {1}, "a job ran more than once"
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(WAIT)


def test_a_worker_process_that_dies_at_start_is_restarted_after_growing_pauses(env: Env) -> None:
    supervisor = env.spawn(
        "-m",
        "flask",
        "--app",
        APP,
        "queue",
        "worker",
        "--processes",
        "2",
        name="workers",
        FLASK_QUEUE_TEST_EXIT_AT_FORK="3",
    )
    with env.diagnose("workers"):
        wait_until(
            "a third restart of each place",
            lambda: env.log("workers").count("starting another in 2.0 s") == 2,
        )
    os.kill(supervisor.pid, signal.SIGTERM)
    code = supervisor.wait(WAIT)
    log = env.log("workers")
    # 1 only if a worker process was starting (and so dying) as the supervisor stopped.
    assert code == 0 or (code == 1 and log.splitlines()[-2].endswith("exited with code 3")), log
    pauses = re.findall(r"exited with code 3 after [\d.]+ s; starting another in ([\d.]+) s", log)
    # Each of the two places waits 0.5, 1 then 2 s: a handful of starts, not a spin.
    assert sorted(pauses[:6]) == ["0.5", "0.5", "1.0", "1.0", "2.0", "2.0"]
    assert len(pauses) <= 8
