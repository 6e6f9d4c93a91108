"""Celery in ``bench.backends``: a task on a Redis broker, ``delay`` / ``group(...).apply_async()``, and
``celery worker``.

Two pools, both with concurrency N: ``threads`` (one process, N threads, as the other thread-based
systems) and ``prefork`` (Celery's default: N child processes). Results are off (``task_ignore_result``),
as for every system here: no one waits for a no-op's result. Everything else is Celery's default
(prefetch multiplier 4, early acknowledgement, gossip and mingle on). Its bulk call,
``group(...).apply_async()``, publishes the messages one by one over one producer.
"""

from __future__ import annotations

import celery

from ._backends_probe import noop, url
from ._backends_system import System, python

QUEUE = "bench"

app = celery.Celery("bench_backends", broker=url())
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop_task(i: int) -> None:
    noop(i)


class Celery(System):
    """Celery's Redis broker, and one ``celery worker`` with ``pool`` at concurrency N."""

    bulk_call = "group(...).apply_async() (one publish per message)"

    def __init__(self, url: str, threads: int, *, pool: str) -> None:
        super().__init__(url, threads)
        self.pool = pool

    def concurrency(self) -> str:
        if self.pool == "threads":
            return f"1 process x {self.threads} threads (-P threads)"
        return f"{self.threads} processes (-P prefork, forked at start)"

    def workers(self) -> list[list[str]]:
        return [
            python(
                "celery", "-A", __name__, "worker", "--pool", self.pool, "--concurrency", str(self.threads),
                "--queues", QUEUE, "--loglevel", "WARNING",
            )
        ]  # fmt: skip

    def enqueue(self, n: int) -> None:
        delay = noop_task.delay
        for i in range(n):
            delay(i)

    def enqueue_bulk(self, n: int, batch: int) -> None:
        for start in range(0, n, batch):
            celery.group(noop_task.s(i) for i in range(start, min(start + batch, n))).apply_async()

    def left(self) -> int:
        # Kombu's Redis transport: the queue is a list; a message delivered and not yet acknowledged waits
        # in the "unacked" hash.
        with app.connection_for_write() as conn:
            client = conn.default_channel.client
            return int(client.llen(QUEUE)) + int(client.hlen("unacked"))

    def close(self) -> None:
        app.close()
