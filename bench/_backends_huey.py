"""Huey in ``bench.backends``: ``RedisHuey`` on Redis, ``SqlHuey`` (peewee) on PostgreSQL, and
``huey_consumer``.

The consumer is one process with N worker threads (``-w N -k thread``), logging at its quiet level (its
default logs two lines per job, a cost the other systems do not pay by default), periodic tasks off. An
idle worker polls every 10 ms (``-d 0.01 -m 0.01 -b 1``) as in ``bench.tasks``: Huey's default starts at
0.1 s and backs off to 10 s, which a full queue rarely meets but a worker that lost a race for a job on
PostgreSQL does. Huey has no bulk enqueue (``task.map`` enqueues one by one), so that column is empty.
"""

from __future__ import annotations

from huey import RedisHuey
from huey.contrib.sql_huey import SqlHuey

from ._backends_probe import noop, url
from ._backends_system import System, python

_url = url()
huey = RedisHuey("bench", url=_url) if _url.startswith("redis") else SqlHuey("bench", database=_url)


@huey.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop_task(i: int) -> None:
    noop(i)


class Huey(System):
    """Huey on the engine of its URL, and one ``huey_consumer`` process with N threads."""

    def concurrency(self) -> str:
        return f"1 process x {self.threads} threads (huey_consumer -k thread)"

    def workers(self) -> list[list[str]]:
        return [
            python(
                "huey.bin.huey_consumer", f"{__name__}.huey", "--workers", str(self.threads),
                "--worker-type", "thread", "--quiet", "--no-periodic",
                "--delay", "0.01", "--max-delay", "0.01", "--backoff", "1",
            )
        ]  # fmt: skip

    def enqueue(self, n: int) -> None:
        for i in range(n):
            noop_task(i)

    def left(self) -> int:
        # Huey deletes a job from its queue when a worker takes it: what is left is what waits.
        return int(huey.pending_count())

    def close(self) -> None:
        huey.storage.close()
