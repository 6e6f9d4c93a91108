"""RQ in ``bench.backends``: ``Queue.enqueue`` / ``Queue.enqueue_many``, and ``rq worker`` processes.

RQ's workers run one job at a time, so the benchmark's concurrency is N worker processes on the queue:
``rq worker`` with its default ``Worker`` class, which forks a child ("work horse") for every job, or with
``SimpleWorker``, which runs the job in the worker itself. They run with ``--quiet``: by default a worker
logs two lines per job, a cost none of the other systems pays by default.
"""

from __future__ import annotations

from redis import Redis
from rq import Queue

from ._backends_probe import noop
from ._backends_system import System, python

QUEUE = "bench"


class RQ(System):
    """RQ on one Redis database: ``simple`` picks ``SimpleWorker`` over the default forking ``Worker``."""

    bulk_call = "Queue.enqueue_many"

    def __init__(self, url: str, threads: int, *, simple: bool) -> None:
        super().__init__(url, threads)
        self.worker_class = "rq.worker.SimpleWorker" if simple else "rq.worker.Worker"

    def concurrency(self) -> str:
        kind = "SimpleWorker" if self.worker_class.endswith("SimpleWorker") else "Worker: a fork per job"
        return f"{self.threads} processes x 1 ({kind})"

    def workers(self) -> list[list[str]]:
        command = python(
            "rq.cli", "worker", "--url", self.url, "--worker-class", self.worker_class, "--quiet"
        )
        return [[*command, "--name", f"bench-{i}", QUEUE] for i in range(self.threads)]

    def open(self) -> None:
        self.redis = Redis.from_url(self.url)
        self.queue = Queue(QUEUE, connection=self.redis)

    def enqueue(self, n: int) -> None:
        enqueue = self.queue.enqueue
        for i in range(n):
            enqueue(noop, i)

    def enqueue_bulk(self, n: int, batch: int) -> None:
        for start in range(0, n, batch):
            self.queue.enqueue_many(
                [Queue.prepare_data(noop, (i,)) for i in range(start, min(start + batch, n))]
            )

    def left(self) -> int:
        return int(self.queue.count) + int(self.queue.started_job_registry.count)

    def close(self) -> None:
        self.redis.close()
