"""Periodic schedules and keys across real processes, on every durable backend: three ``flask queue worker``
processes and a gunicorn with two workers that run worker threads all keep one schedule, one of them is
SIGKILLed mid-run, and every tick is enqueued exactly once; two processes that enqueue one key 100 times each
leave one job."""

from __future__ import annotations

import collections
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask

from flask_queue import TaskQueue
from tests.servers._live import free_port, gunicorn_has_no_control_socket

from .test_processes import ROOT, Env, wait_until

APP = "tests.tasks.schedule_app"
EVERY = 0.3
#: Ticks the run must cover; one worker process is killed after a third of them.
TICKS = 30
WAIT = 60.0


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def env(
    request: pytest.FixtureRequest, tmp_path: Path, backend_url_of: Callable[[str], str]
) -> Iterator[Env]:
    environment = Env(tmp_path, backend=backend_url_of(request.param))
    environment.vars["FLASK_QUEUE_TEST_EVERY"] = str(EVERY)
    yield environment
    environment.stop_all()


@pytest.fixture
def client(env: Env, tmp_path: Path) -> Iterator[tuple[Flask, TaskQueue]]:
    app = Flask("client", instance_path=str(tmp_path))
    tasks = TaskQueue(app, backend=env.backend, workers=0)
    yield app, tasks
    tasks.backend(app).close()


def enqueued_ticks(tasks: TaskQueue, app: Flask) -> list[float]:
    """The tick of every job of the schedule the backend holds, in any status."""
    ticks = []
    offset = 0
    while batch := tasks.backend(app).jobs(limit=500, offset=offset):
        offset += len(batch)
        for record in batch:
            if record.task == f"{APP}.beat":
                ticks.append(_tick(json.loads(record.payload)))
    return ticks


def _tick(payload: dict[str, object]) -> float:
    import datetime as dt

    kwargs = payload["kwargs"]
    assert isinstance(kwargs, dict)
    return dt.datetime.fromisoformat(str(kwargs["tick"])).timestamp()


def test_every_tick_is_enqueued_once_by_five_processes_one_of_them_killed(
    env: Env, client: tuple[Flask, TaskQueue]
) -> None:
    app, tasks = client
    flask_workers = [
        env.spawn("-m", "flask", "--app", APP, "queue", "worker", "--threads", "1", name=f"worker-{n}")
        for n in range(3)
    ]
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
    env.spawn(*command, f"{APP}:app", name="gunicorn")
    with env.diagnose("gunicorn"):
        # A web process starts its worker threads at its first request: knock until both have answered.
        pids: set[str] = set()
        deadline = time.monotonic() + WAIT
        while len(pids) < 2:
            assert time.monotonic() < deadline, f"only gunicorn workers {pids} answered"
            try:
                pids.add(requests.get(f"http://127.0.0.1:{port}/health", timeout=5).text)
            except requests.ConnectionError:
                time.sleep(0.1)
        wait_until("five processes with task workers", lambda: len(tasks.backend(app).workers()) == 5)
    start = time.time()
    wait_until("the first ticks", lambda: len(enqueued_ticks(tasks, app)) >= TICKS // 3)
    victim = flask_workers[0]
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(10)
    wait_until(f"{TICKS} ticks", lambda: len(enqueued_ticks(tasks, app)) >= TICKS + 3)
    ticks = sorted(enqueued_ticks(tasks, app))
    twice = [tick for tick, count in collections.Counter(ticks).items() if count > 1]
    assert not twice, f"ticks enqueued twice: {twice}"
    steps = {round((later - earlier) / EVERY) for earlier, later in itertools.pairwise(ticks)}
    assert steps == {1}, f"ticks missing between {ticks[0]} and {ticks[-1]} (steps of {steps} ticks)"
    assert ticks[0] >= start - 10 * EVERY  # a new schedule has no missed ticks before it was first kept
    # Every job enqueued runs (at least once: a job in flight in the killed process runs again).
    wait_until(
        "the ticks' jobs to run",
        lambda: {float(line.split()[0]) for line in env.runs.read_text().splitlines()} >= set(ticks[:-3]),
    )
    runners = {int(line.split()[1]) for line in env.runs.read_text().splitlines()}
    assert len(runners) >= 2  # the work was spread, not done by one process


def test_two_processes_racing_one_key_leave_one_job(
    env: Env, client: tuple[Flask, TaskQueue], tmp_path: Path
) -> None:
    app, tasks = client
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", APP, "race-key"],
            cwd=ROOT,
            env={**env.vars, "FLASK_QUEUE_TEST_GO": str(go)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    time.sleep(1.0)  # both import the app and wait at the line
    go.touch()
    ids = set()
    for racer in racers:
        out, err = racer.communicate(timeout=WAIT)
        assert racer.returncode == 0, err.decode()
        ids |= set(out.decode().split())
    assert len(ids) == 1
    keyed = [record for record in tasks.backend(app).jobs() if record.key == "invoice:1"]
    assert [record.id for record in keyed] == list(ids)


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_gunicorn_workers_keep_the_schedule_before_any_request(
    tmp_path: Path, backend_url_of: Callable[[str], str], preload: bool
) -> None:
    """A web app nobody has called yet (just deployed, or idle overnight) still ticks: its gunicorn workers start
    their task workers without waiting for a request."""
    env = Env(tmp_path, backend=backend_url_of("sqlite"))
    env.vars["FLASK_QUEUE_TEST_EVERY"] = str(EVERY)
    app = Flask("client", instance_path=str(tmp_path))
    tasks = TaskQueue(app, backend=env.backend, workers=0)
    command = ["-m", "gunicorn", "--workers=2", "--worker-class=gthread", f"--bind=127.0.0.1:{free_port()}"]
    if gunicorn_has_no_control_socket():
        command.append("--no-control-socket")
    if preload:
        command.append("--preload")
    server = env.spawn(*command, f"{APP}:app", name="gunicorn")
    try:
        with env.diagnose("gunicorn"):
            wait_until("two web processes with task workers", lambda: len(tasks.backend(app).workers()) == 2)
            wait_until("ticks with no request made", lambda: len(enqueued_ticks(tasks, app)) >= 5)
        pids = {info.pid for info in tasks.backend(app).workers()}
        assert server.pid not in pids  # never the master, with --preload either
    finally:
        env.stop_all()
        tasks.backend(app).close()
