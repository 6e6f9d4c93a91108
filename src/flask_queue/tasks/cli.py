"""``flask queue ...``: run task workers and look after the queues from the command line.

Registered on every app a ``TaskQueue`` is set up on::

    flask queue worker --threads 4 --queue default --queue mail
    flask queue worker --processes 4 --threads 8
    flask queue status
    flask queue retry 3f2a... | flask queue retry --failed
    flask queue purge default --status failed
    flask queue schedules | flask queue schedules pause|resume|run NAME

``flask queue worker --processes M`` runs a small supervisor: the app is loaded once, then M worker processes
are forked from it (so nothing of theirs, no thread, no connection, exists in the parent at the fork). The
supervisor restarts a worker process that dies (at once if it had been running a while; after a pause that
doubles, if it died within ``MIN_UPTIME`` of its start, so that a worker that cannot start does not spin),
forwards SIGTERM and SIGINT to them all so that each drains, and exits when they have all stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import sys
import threading
import time
import traceback
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, NoReturn

import click
from flask import current_app
from flask.cli import with_appcontext

from .. import _keys
from ..exceptions import BackendError
from .records import JobStatus
from .worker import Worker

if TYPE_CHECKING:
    from .queue import QueueState

__all__ = ["queue_command"]

#: A worker process that exits within this many seconds of its start counts as failing to start.
MIN_UPTIME = 1.0
#: The pause before restarting a worker process that failed to start: doubled each time in a row, capped.
RESTART_BACKOFF = 0.5
RESTART_BACKOFF_MAX = 30.0
#: Seconds past ``TASK_QUEUE_SHUTDOWN_TIMEOUT`` the supervisor waits for draining workers before SIGKILL.
KILL_AFTER = 15.0
#: The signals that stop workers (a drain), and those the supervisor listens to.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_SUPERVISOR_SIGNALS = {*STOP_SIGNALS, signal.SIGCHLD}


def _state() -> QueueState:
    state: QueueState | None = current_app.extensions.get(_keys.TASKS)
    if state is None:
        raise click.ClickException("this app has no TaskQueue: set one up with TaskQueue(app)")
    # Commands never start the web process's in-process workers (a task enqueued here runs in a worker).
    state.no_workers = True
    return state


@click.group("queue")
def queue_command() -> None:
    """Flask-Queue: task workers and the state of the queues."""


@dataclass(frozen=True)
class _WorkerOptions:
    threads: int
    queues: Collection[str] | None
    lease: float
    burst: bool


@queue_command.command("worker")
@click.option(
    "-p",
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    help="Worker processes, each with --threads threads, under one supervisor [1: this process only].",
)
@click.option(
    "-t",
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Worker threads per process [TASK_QUEUE_WORKERS, or 2].",
)
@click.option(
    "-q", "--queue", "queues", multiple=True, help="A queue to take jobs from (repeat it); all by default."
)
@click.option(
    "--lease",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds a job is held [TASK_QUEUE_LEASE].",
)
@click.option("--burst", is_flag=True, help="Exit once no job is ready and none is running.")
@with_appcontext
def worker_command(
    processes: int, threads: int | None, queues: tuple[str, ...], lease: float | None, burst: bool
) -> None:
    """Run task workers until SIGTERM or Ctrl-C, then drain them (TASK_QUEUE_SHUTDOWN_TIMEOUT)."""
    state = _state()
    settings = state.settings
    options = _WorkerOptions(
        threads=threads or settings["workers"] or 2,
        queues=queues or settings["queues"],
        lease=lease or settings["lease"],
        burst=burst,
    )
    _log_to_stderr()
    if processes == 1:
        stop = _StopFlag()
        with _stop_on(stop):
            _run_worker(state, options, stop)
        return
    if not state.backend.shared:
        raise click.UsageError(
            "--processes needs a backend the processes share (sqlite, redis or postgresql), not memory://"
        )
    code = _Supervisor(state, options, processes).run()
    if code:
        raise SystemExit(code)


def _run_worker(state: QueueState, options: _WorkerOptions, stop: _StopFlag) -> None:
    """Run a ``Worker`` in this process until ``stop`` is set (or, with ``burst``, until it is idle), then
    drain it."""
    worker = Worker(
        state.executor,
        threads=options.threads,
        queues=options.queues,
        lease=options.lease,
        name="cli",
        scheduler=state.extension.scheduler(state.app),
    )
    click.echo(
        f"worker {worker.id}: {worker.threads} thread(s) on {state.backend.url}, queues: {_names(worker.queues)}"
    )
    worker.start()
    try:
        if options.burst:
            names = list(worker.queues) if worker.queues is not None else [None]
            idle = 0
            while not stop.wait(0.05):
                try:
                    busy = worker.running or sum(state.backend.size(name) for name in names)
                except BackendError:
                    # An outage is not the end of the work: the worker rides it out, and so does this check.
                    busy = True
                idle = 0 if busy else idle + 1
                if idle >= 3:
                    break
        else:
            stop.wait()
    finally:
        report = worker.stop(state.settings["shutdown_timeout"])
    released = f", {report.released} running job(s) given back to the queue" if report.released else ""
    click.echo(f"worker {worker.id} stopped after {worker.processed} job(s){released}")


def _names(queues: Collection[str] | None) -> str:
    return ", ".join(sorted(queues)) if queues is not None else "all"


@contextlib.contextmanager
def _stop_on(stop: _StopFlag) -> Iterator[None]:
    """Set ``stop`` on SIGTERM or SIGINT inside the block."""
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _log_to_stderr() -> None:
    """Show Flask-Queue's INFO lines (retries, outages) with the process id, unless logging is set up."""
    library = logging.getLogger("flask_queue")
    if library.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
    library.addHandler(handler)
    library.setLevel(logging.INFO)


class _Alarm:
    """A wake-up that a signal handler may ring: a byte written to a pipe, never a lock.

    ``threading.Event.set`` takes the event's lock, so a handler calling it deadlocks when a second signal
    arrives while the first handler, or the main thread's own ``wait``, holds that lock (seen once in 65
    runs of ``--processes`` under load: ``Event.set`` -> signal -> ``Event.set``).
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def ring(self) -> None:
        with contextlib.suppress(BlockingIOError):  # the pipe is full: a wake-up is pending anyway
            os.write(self._write, b"\0")

    def sleep(self, timeout: float | None) -> None:
        """Wait until the alarm rings (or rang since the last sleep), or ``timeout`` seconds pass."""
        select.select([self._read], [], [], None if timeout is None else max(timeout, 0.0))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


class _StopFlag:
    """What a worker process waits on: set by SIGTERM or SIGINT, from the signal handler itself."""

    def __init__(self) -> None:
        self._alarm = _Alarm()
        self._set = False

    def set(self) -> None:
        self._set = True
        self._alarm.ring()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        if not self._set:
            self._alarm.sleep(timeout)
        return self._set


@dataclass
class _Slot:
    """One of the supervisor's worker processes, and the restarts of its place."""

    pid: int = 0
    started: float = 0.0
    #: Starts in a row that died within ``MIN_UPTIME``.
    failures: int = 0
    restart_at: float = 0.0
    #: ``--burst``: its process finished its work.
    done: bool = False


class _Supervisor:
    """Forks ``processes`` worker processes from this one and keeps them running (see the module's doc)."""

    def __init__(self, state: QueueState, options: _WorkerOptions, processes: int) -> None:
        self.state = state
        self.options = options
        self.slots = [_Slot() for _ in range(processes)]
        # The signal handler only sets a flag and rings the alarm: see _Alarm.
        self._alarm = _Alarm()
        self._stopping = False
        self._exit_code = 0

    def run(self) -> int:
        """Supervise until a stop signal (or, with ``burst``, until every worker is done); the exit code."""
        click.echo(
            f"supervisor {os.getpid()}: {len(self.slots)} worker processes of {self.options.threads} thread(s)"
            f" on {self.state.backend.url}, queues: {_names(self.options.queues)}"
        )
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _SUPERVISOR_SIGNALS}
        try:
            self._supervise()
            self._drain()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._alarm.close()
        click.echo(f"supervisor {os.getpid()}: stopped")
        return self._exit_code

    def _on_signal(self, signum: int, frame: object) -> None:
        # Only a flag and the alarm, never a lock: see _Alarm.
        if signum != signal.SIGCHLD:
            self._stopping = True
        self._alarm.ring()

    def _supervise(self) -> None:
        while not self._stopping:
            self._reap()
            if all(slot.done for slot in self.slots):
                return
            now = time.monotonic()
            for slot in self.slots:
                if not slot.pid and not slot.done and now >= slot.restart_at:
                    self._spawn(slot)
            waiting = [slot.restart_at - now for slot in self.slots if not slot.pid and not slot.done]
            self._alarm.sleep(min([1.0, *waiting]))

    def _drain(self) -> None:
        """Forward the stop to every worker process and wait for them to drain (SIGKILL past a deadline)."""
        for slot in self.slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.state.settings["shutdown_timeout"] + KILL_AFTER
        while any(slot.pid for slot in self.slots):
            self._reap()
            if time.monotonic() >= deadline:
                for slot in self.slots:
                    if slot.pid:
                        click.echo(f"worker process {slot.pid} did not drain in time: killed", err=True)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(slot.pid, signal.SIGKILL)
                deadline = float("inf")
            self._alarm.sleep(0.5)

    def _reap(self) -> None:
        for slot in self.slots:
            if not slot.pid:
                continue
            pid, status = os.waitpid(slot.pid, os.WNOHANG)
            if pid == 0:
                continue
            slot.pid = 0
            code = os.waitstatus_to_exitcode(status)
            ended = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            uptime = time.monotonic() - slot.started
            if self._stopping or (self.options.burst and code == 0):
                slot.done = True
                if code != 0:
                    self._exit_code = 1
                    click.echo(f"worker process {pid} {ended}", err=True)
                continue
            slot.failures = slot.failures + 1 if uptime < MIN_UPTIME else 0
            delay = (
                min(RESTART_BACKOFF * 2.0 ** min(slot.failures - 1, 32), RESTART_BACKOFF_MAX)
                if slot.failures
                else 0.0
            )
            slot.restart_at = time.monotonic() + delay
            click.echo(
                f"worker process {pid} {ended} after {uptime:.1f} s; starting another"
                + (f" in {delay:.1f} s" if delay else ""),
                err=True,
            )

    def _spawn(self, slot: _Slot) -> None:
        others = [thread.name for thread in threading.enumerate() if thread is not threading.current_thread()]
        if others:
            click.echo(
                f"warning: threads {others} run in the supervisor; they do not exist in the worker processes"
                " forked from it (start them in the tasks, not at import)",
                err=True,
            )
        # Output buffered now would be written again by the child.
        sys.stdout.flush()
        sys.stderr.flush()
        # A stop signal that arrives between fork and the child's own handlers must reach the child's.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._child(mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        slot.pid, slot.started = pid, time.monotonic()

    def _child(self, mask: Collection[int]) -> NoReturn:
        code = 1
        try:
            self._alarm.close()  # the supervisor's
            stop = _StopFlag()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for sig in STOP_SIGNALS:
                signal.signal(sig, lambda *_: stop.set())
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            # The backend's connections are the parent's: after_fork makes new ones for this process.
            self.state.extension.after_fork(self.state)
            _run_worker(self.state, self.options, stop)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                # Never return into the parent's code (click would go on running the command here).
                os._exit(code)


@queue_command.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def status_command(as_json: bool) -> None:
    """How many jobs each queue holds, by status, and the workers alive now."""
    state = _state()
    counts = state.backend.counts()
    workers = state.backend.workers()
    if as_json:
        data = {"backend": state.backend.url, "queues": counts, "workers": [asdict(info) for info in workers]}
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    columns = [str(status) for status in JobStatus]
    click.echo(f"backend: {state.backend.url}")
    width = max([len("queue"), *map(len, counts)])
    click.echo("queue".ljust(width) + "".join(f"{name:>11}" for name in columns))
    for queue in sorted(counts):
        click.echo(queue.ljust(width) + "".join(f"{counts[queue][name]:>11}" for name in columns))
    if not counts:
        click.echo("(no jobs)")
    click.echo("")
    if not workers:
        click.echo("workers: none alive")
        return
    now = time.time()
    rows = [
        (
            info.name,
            _names(info.queues),
            str(info.threads),
            str(info.running),
            str(info.processed),
            f"{max(now - info.seen_at, 0.0):.0f} s ago",
        )
        for info in workers
    ]
    header = ("worker", "queues", "threads", "running", "processed", "last seen")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        # Names and queues read left-aligned, numbers right-aligned.
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        click.echo("  ".join(cells))


@queue_command.command("retry")
@click.argument("job_ids", nargs=-1)
@click.option(
    "--failed", "all_failed", is_flag=True, help="Retry every failed job (of --queue only, if given)."
)
@click.option("--queue", default=None, help="With --failed: only this queue's.")
@with_appcontext
def retry_command(job_ids: tuple[str, ...], all_failed: bool, queue: str | None) -> None:
    """Run failed, cancelled or expired jobs again."""
    state = _state()
    if not job_ids and not all_failed:
        raise click.UsageError("name the jobs to retry, or pass --failed")
    ids = list(job_ids)
    if all_failed:
        offset = 0
        while batch := state.backend.jobs(
            status=JobStatus.FAILED, queue=queue, limit=500, offset=offset, preview=1
        ):
            ids.extend(record.id for record in batch)
            offset += len(batch)
    retried = 0
    for job_id in ids:
        if state.backend.requeue(job_id):
            retried += 1
        elif job_ids and job_id in job_ids:
            record = state.backend.get(job_id)
            if record is None:
                why = "no such job"
            elif record.effective_status() in (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED):
                why = f"another unfinished job of {record.task} holds its key {record.key!r}"
            else:
                why = f"it is {record.effective_status()}, not failed, cancelled or expired"
            click.echo(f"{job_id}: not retried: {why}", err=True)
    click.echo(f"{retried} job(s) queued again")
    if job_ids and retried < len(job_ids):
        raise SystemExit(1)


@queue_command.command("purge")
@click.argument("queue")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in JobStatus if s is not JobStatus.RUNNING]),
    help="Which jobs to delete (repeat it) [queued and scheduled].",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def purge_command(queue: str, statuses: tuple[str, ...], yes: bool) -> None:
    """Delete the jobs of QUEUE that are waiting (or of the given statuses). Running jobs are never deleted."""
    state = _state()
    chosen = {JobStatus(status) for status in statuses} or {JobStatus.QUEUED, JobStatus.SCHEDULED}
    names = ", ".join(sorted(status.value for status in chosen))
    if not yes:
        click.confirm(f"delete the {names} jobs of queue {queue!r}?", abort=True)
    deleted = state.backend.purge(queue, chosen)
    click.echo(f"{deleted} job(s) deleted from {queue!r}")


@queue_command.group("schedules", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
@with_appcontext
def schedules_command(ctx: click.Context, as_json: bool) -> None:
    """The periodic schedules: when each ticks, its last and next tick, whether it is paused."""
    if ctx.invoked_subcommand is not None:
        return
    state = _state()
    listed = state.extension.schedule_states(state.app)
    if as_json:
        shown = [
            {
                **item,
                **{k: None if item[k] is None else item[k].isoformat() for k in ("last_tick", "next_tick")},
            }
            for item in listed
        ]
        click.echo(json.dumps(shown, indent=2, sort_keys=True))
        return
    if not listed:
        click.echo("no schedules (@tasks.periodic) in this app")
        return
    rows = [
        (
            item["name"],
            item["when"],
            "-" if item["last_tick"] is None else item["last_tick"].isoformat(timespec="seconds"),
            "-" if item["paused"] else item["next_tick"].isoformat(timespec="seconds"),
            "paused" if item["paused"] else "",
        )
        for item in listed
    ]
    header = ("schedule", "when", "last tick", "next tick", "")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _schedule_name(state: QueueState, name: str) -> str:
    if name not in state.extension.schedules:
        known = ", ".join(sorted(state.extension.schedules)) or "none"
        raise click.BadParameter(f"no schedule is named {name!r} (schedules: {known})", param_hint="NAME")
    return name


@schedules_command.command("pause")
@click.argument("name")
@with_appcontext
def pause_command(name: str) -> None:
    """Pause schedule NAME in every process: its ticks pass without jobs."""
    state = _state()
    state.extension.pause(_schedule_name(state, name), state.app)
    click.echo(f"schedule {name!r} paused")


@schedules_command.command("resume")
@click.argument("name")
@with_appcontext
def resume_command(name: str) -> None:
    """Resume schedule NAME from its next tick."""
    state = _state()
    state.extension.resume(_schedule_name(state, name), state.app)
    click.echo(f"schedule {name!r} resumed")


@schedules_command.command("run")
@click.argument("name")
@with_appcontext
def run_command(name: str) -> None:
    """Enqueue schedule NAME's job now, outside its ticks."""
    state = _state()
    job = state.extension.run_now(_schedule_name(state, name), state.app)
    click.echo(f"job {job.id} enqueued for schedule {name!r}")
