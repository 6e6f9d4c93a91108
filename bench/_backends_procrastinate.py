"""procrastinate in ``bench.backends``: a task on PostgreSQL, ``defer`` / ``batch_defer``, and
``procrastinate worker``.

procrastinate's worker is one asyncio process; ``--concurrency N`` runs up to N jobs at once, and a
synchronous task such as this one runs in a thread of its own. Its schema is applied to the system's
fresh database before the run, as ``procrastinate schema --apply`` would. ``batch_defer`` inserts a whole
batch in one statement: a real bulk call.
"""

from __future__ import annotations

from typing import Any

import procrastinate

from ._backends_probe import noop, url
from ._backends_system import System, python

QUEUE = "bench"

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url()))


@app.task(name="bench.noop", queue=QUEUE)
def noop_task(i: int) -> None:
    noop(i)


class Procrastinate(System):
    """procrastinate's psycopg connector, and one ``procrastinate worker`` process at concurrency N."""

    bulk_call = "task.batch_defer"

    def concurrency(self) -> str:
        return f"1 process, {self.threads} jobs at once (worker --concurrency; a thread per sync job)"

    def workers(self) -> list[list[str]]:
        return [
            python(
                "procrastinate", "--app", f"{__name__}.app", "worker",
                "--concurrency", str(self.threads), "--queues", QUEUE,
            )
        ]  # fmt: skip

    def open(self) -> None:
        app.open()
        app.schema_manager.apply_schema()

    def enqueue(self, n: int) -> None:
        defer = noop_task.defer
        for i in range(n):
            defer(i=i)

    def enqueue_bulk(self, n: int, batch: int) -> None:
        for start in range(0, n, batch):
            calls: list[dict[str, Any]] = [{"i": i} for i in range(start, min(start + batch, n))]
            noop_task.batch_defer(*calls)

    def left(self) -> int:
        rows = app.connector.get_sync_connector().execute_query_all(
            "SELECT count(*) AS n FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
        )
        return int(rows[0]["n"])

    def close(self) -> None:
        app.close()
