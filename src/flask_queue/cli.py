"""``flask queue ...``: run task workers and look after the queues from the command line.

Registered on every app a ``TaskQueue`` is set up on::

    flask queue worker --threads 4 --queue default --queue mail
    flask queue status
    flask queue retry 3f2a... | flask queue retry --failed
    flask queue purge default --status failed
"""

from __future__ import annotations

import json
import signal
import threading

import click
from flask import current_app
from flask.cli import with_appcontext

from .tasks.job import JobStatus
from .tasks.queue import EXTENSION_KEY, _AppState
from .tasks.worker import Worker

__all__ = ["queue_command"]


def _state() -> _AppState:
    state: _AppState | None = current_app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise click.ClickException("this app has no TaskQueue: set one up with TaskQueue(app)")
    # Commands never start the web process's in-process workers (a task enqueued here runs in a worker).
    state.no_workers = True
    return state


@click.group("queue")
def queue_command() -> None:
    """Flask-Queue: task workers and the state of the queues."""


@queue_command.command("worker")
@click.option(
    "-t",
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Worker threads [TASK_QUEUE_WORKERS, or 2].",
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
def worker_command(threads: int | None, queues: tuple[str, ...], lease: float | None, burst: bool) -> None:
    """Run task workers in this process until SIGTERM or Ctrl-C, then drain them."""
    state = _state()
    settings = state.settings
    worker = Worker(
        state.executor,
        threads=threads or settings["workers"] or 2,
        queues=queues or settings["queues"],
        lease=lease or settings["lease"],
        name="cli",
    )
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    taken = ", ".join(sorted(worker.queues)) if worker.queues is not None else "all"
    click.echo(f"worker {worker.id}: {worker.threads} thread(s) on {state.backend.url}, queues: {taken}")
    worker.start()
    try:
        if burst:
            names = list(worker.queues) if worker.queues is not None else [None]
            idle = 0
            while not stop.wait(0.05):
                busy = worker.running or sum(state.backend.size(name) for name in names)
                idle = 0 if busy else idle + 1
                if idle >= 3:
                    break
        else:
            stop.wait()
    finally:
        report = worker.stop(settings["shutdown_timeout"])
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    released = f", {report.released} running job(s) given back to the queue" if report.released else ""
    click.echo(f"worker {worker.id} stopped after {worker.processed} job(s){released}")


@queue_command.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def status_command(as_json: bool) -> None:
    """How many jobs each queue holds, by status."""
    state = _state()
    counts = state.backend.counts()
    if as_json:
        click.echo(json.dumps({"backend": state.backend.url, "queues": counts}, indent=2, sort_keys=True))
        return
    columns = [str(status) for status in JobStatus]
    click.echo(f"backend: {state.backend.url}")
    width = max([len("queue"), *map(len, counts)])
    click.echo("queue".ljust(width) + "".join(f"{name:>11}" for name in columns))
    for queue in sorted(counts):
        click.echo(queue.ljust(width) + "".join(f"{counts[queue][name]:>11}" for name in columns))
    if not counts:
        click.echo("(no jobs)")


@queue_command.command("retry")
@click.argument("job_ids", nargs=-1)
@click.option(
    "--failed", "all_failed", is_flag=True, help="Retry every failed job (of --queue only, if given)."
)
@click.option("--queue", default=None, help="With --failed: only this queue's.")
@with_appcontext
def retry_command(job_ids: tuple[str, ...], all_failed: bool, queue: str | None) -> None:
    """Run failed or cancelled jobs again."""
    state = _state()
    if not job_ids and not all_failed:
        raise click.UsageError("name the jobs to retry, or pass --failed")
    ids = list(job_ids)
    if all_failed:
        offset = 0
        while batch := state.backend.jobs(status=JobStatus.FAILED, queue=queue, limit=500, offset=offset):
            ids.extend(record.id for record in batch)
            offset += len(batch)
    retried = 0
    for job_id in ids:
        if state.backend.requeue(job_id):
            retried += 1
        elif job_ids and job_id in job_ids:
            record = state.backend.get(job_id)
            why = (
                "no such job"
                if record is None
                else f"it is {record.effective_status()}, not failed or cancelled"
            )
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
