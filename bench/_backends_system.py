"""The systems ``bench.backends`` compares, each behind one small interface, and the namespaces they run in.

A system is one task queue on one engine, Redis or PostgreSQL. Its adapter says how this process enqueues
``noop(i)``, one call at a time and, where the system has one, with its bulk call; the command line of
each of its worker processes, as a user would start them; and how many jobs its own bookkeeping still
holds, to check that a run left nothing behind. Each peer has a module of its own
(``bench/_backends_<peer>.py``) that builds its app, broker or queue at import from ``BENCH_BACKENDS_URL``,
so the producer and the workers, which import it separately, agree on them; a measurement imports only the
system it measures.

Namespaces: every system gets a Redis database of its own among 10-14 (the test suites use 0 with key
prefixes), flushed before and after it runs, or a PostgreSQL database of its own, created before and
dropped after (``DROP DATABASE ... WITH (FORCE)``, so a worker that outlived its run cannot keep it).
Nothing else on the servers is touched.
"""

from __future__ import annotations

import abc
import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ._backends_probe import URL_ENV

#: The only Redis databases the benchmark may flush.
REDIS_DATABASES = range(10, 16)
#: Every PostgreSQL database the benchmark creates starts with this.
POSTGRES_PREFIX = "bench_backends_"


class System(abc.ABC):
    """One task queue on one engine: a producer in this process, and the command lines of its workers."""

    #: The bulk call measured, as the table names it; ``None`` when the system has none.
    bulk_call: str | None = None

    def __init__(self, url: str, threads: int) -> None:
        self.url = url
        self.threads = threads

    @abc.abstractmethod
    def concurrency(self) -> str:
        """How its workers run, for the tables: processes, threads, pool."""

    @abc.abstractmethod
    def workers(self) -> list[list[str]]:
        """The command line of each worker process (run from the repository root, ``BENCH_BACKENDS_*`` set)."""

    def open(self) -> None:  # noqa: B027 - optional: most systems connect on first use
        """Connect the producer and create what the system stores jobs in (its namespace is empty)."""

    @abc.abstractmethod
    def enqueue(self, n: int) -> None:
        """Enqueue ``noop(i)`` for ``i`` in ``range(n)`` with the system's single enqueue call."""

    def enqueue_bulk(self, n: int, batch: int) -> None:
        """Enqueue ``n`` jobs with the system's bulk call, ``batch`` jobs per call."""
        raise NotImplementedError(f"{type(self).__name__} has no bulk enqueue")

    @abc.abstractmethod
    def left(self) -> int:
        """Jobs the system's own bookkeeping still holds to run: waiting, or taken and not finished."""

    def close(self) -> None:  # noqa: B027 - optional: most systems hold nothing worth closing
        """Release the producer's connections."""


def python(module: str, *args: str) -> list[str]:
    """The command line running ``python -m module args``, with this interpreter."""
    return [sys.executable, "-m", module, *args]


@dataclass(frozen=True)
class Entry:
    """Where a system's adapter lives, and the namespace it runs in."""

    module: str
    adapter: str
    #: A Redis database number, or the name of a PostgreSQL database.
    space: int | str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def engine(self) -> str:
        return "redis" if isinstance(self.space, int) else "postgres"


#: Every system by name. RQ's two workers share a database: systems never run at the same time.
SYSTEMS: dict[str, Entry] = {
    "flask-queue redis": Entry("bench._backends_ours", "FlaskQueue", 10),
    "rq": Entry("bench._backends_rq", "RQ", 11, {"simple": False}),
    "rq simple": Entry("bench._backends_rq", "RQ", 11, {"simple": True}),
    "dramatiq": Entry("bench._backends_dramatiq", "Dramatiq", 12),
    "huey redis": Entry("bench._backends_huey", "Huey", 13),
    "celery threads": Entry("bench._backends_celery", "Celery", 14, {"pool": "threads"}),
    "celery prefork": Entry("bench._backends_celery", "Celery", 14, {"pool": "prefork"}),
    "flask-queue postgres": Entry("bench._backends_ours", "FlaskQueue", f"{POSTGRES_PREFIX}flask_queue"),
    "procrastinate": Entry(
        "bench._backends_procrastinate", "Procrastinate", f"{POSTGRES_PREFIX}procrastinate"
    ),
    "huey postgres": Entry("bench._backends_huey", "Huey", f"{POSTGRES_PREFIX}huey"),
}
ENGINES = {
    engine: tuple(name for name, entry in SYSTEMS.items() if entry.engine == engine)
    for engine in ("redis", "postgres")
}
OURS = {"redis": "flask-queue redis", "postgres": "flask-queue postgres"}


def space_url(name: str, redis_url: str, postgres_url: str) -> str:
    """The URL of a system's namespace: the server's URL with the system's database in its path."""
    space = SYSTEMS[name].space
    if isinstance(space, int):
        if space not in REDIS_DATABASES:
            raise ValueError(f"Redis database {space} is not one of the benchmark's ({REDIS_DATABASES})")
        return urlunsplit(urlsplit(redis_url)._replace(path=f"/{space}", query=""))
    return urlunsplit(urlsplit(postgres_url)._replace(path=f"/{space}", query=""))


def reset_space(url: str, postgres_url: str, *, create: bool = True) -> None:
    """Empty a namespace: flush the Redis database, or drop the PostgreSQL database and (``create``) make it anew.

    ``postgres_url`` is a database to connect to meanwhile (a database cannot drop itself).
    """
    parts = urlsplit(url)
    if parts.scheme.startswith("redis"):
        import redis

        db = int(parts.path.strip("/") or 0)
        if db not in REDIS_DATABASES:
            raise ValueError(f"refusing to flush Redis database {db}: the benchmark's are {REDIS_DATABASES}")
        client = redis.Redis.from_url(url)
        try:
            client.flushdb()
        finally:
            client.close()
        return
    import psycopg
    from psycopg import sql

    database = parts.path.strip("/")
    if not database.startswith(POSTGRES_PREFIX):
        raise ValueError(f"refusing to drop PostgreSQL database {database!r}: not one of the benchmark's")
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        if create:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def make(name: str, url: str, threads: int) -> System:
    """The adapter of system ``name`` on namespace ``url``; imports its module (and its library) now."""
    entry = SYSTEMS[name]
    os.environ[URL_ENV] = url  # read by the module at import, as by its worker processes
    module = importlib.import_module(entry.module)
    system: System = getattr(module, entry.adapter)(url, threads, **entry.options)
    return system
