"""Dramatiq in ``bench.backends``: a ``RedisBroker`` actor, ``send`` / ``group(...).run()``, and ``dramatiq``.

The worker is one process with N threads (``dramatiq MODULE --processes 1 --threads N``), Dramatiq's own
model. Its bulk call, ``group(messages).run()``, enqueues the messages one by one: the Redis broker has no
bulk enqueue; the table reports it as what it is.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from ._backends_probe import noop, url
from ._backends_system import System, python

QUEUE = "bench"

broker = RedisBroker(url=url())
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench.noop", queue_name=QUEUE, max_retries=0)
def noop_actor(i: int) -> None:
    noop(i)


class Dramatiq(System):
    """Dramatiq's Redis broker, and one ``dramatiq`` worker process with N threads."""

    bulk_call = "group(...).run() (one enqueue per message)"

    def concurrency(self) -> str:
        return f"1 process x {self.threads} threads (dramatiq --processes 1)"

    def workers(self) -> list[list[str]]:
        return [
            python(
                "dramatiq", __name__, "--processes", "1", "--threads", str(self.threads), "--queues", QUEUE
            )
        ]

    def enqueue(self, n: int) -> None:
        send = noop_actor.send
        for i in range(n):
            send(i)

    def enqueue_bulk(self, n: int, batch: int) -> None:
        for start in range(0, n, batch):
            dramatiq.group(noop_actor.message(i) for i in range(start, min(start + batch, n))).run()

    def left(self) -> int:
        # A message's body stays in this hash from its enqueue until a worker acknowledges it.
        return int(broker.client.hlen(f"{broker.namespace}:{QUEUE}.msgs"))

    def close(self) -> None:
        broker.close()
