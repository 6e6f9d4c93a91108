"""The services the tests talk to: PostgreSQL and Redis, from the environment or their local defaults.

``FLASK_QUEUE_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``) and
``FLASK_QUEUE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). A test that needs an unreachable
service is skipped with the reason, except when ``CI`` is set, where it fails: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest

POSTGRES_URL = os.environ.get("FLASK_QUEUE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FLASK_QUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _unreachable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_postgres() -> None:
    """Skip (fail under CI) when PostgreSQL cannot be reached."""
    import psycopg

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as error:
        _unreachable(
            f"PostgreSQL at {POSTGRES_URL} is unreachable ({error}); set FLASK_QUEUE_TEST_POSTGRES_URL"
        )


def require_redis() -> None:
    """Skip (fail under CI) when Redis cannot be reached."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        client.ping()
        client.close()
    except redis.RedisError as error:
        _unreachable(f"Redis at {REDIS_URL} is unreachable ({error}); set FLASK_QUEUE_TEST_REDIS_URL")


def _with_query(url: str, key: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{key}={value}"


def redis_namespace() -> tuple[str, Callable[[], None]]:
    """A Redis backend URL whose keys no other test sees, and a function that deletes those keys."""
    import redis

    require_redis()
    prefix = f"fq-test-{uuid.uuid4().hex[:12]}"

    def drop() -> None:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()

    return _with_query(REDIS_URL, "prefix", prefix), drop


def postgres_namespace() -> tuple[str, Callable[[], None]]:
    """A PostgreSQL backend URL whose tables no other test sees (a schema of its own), and a function that
    drops that schema."""
    import psycopg

    require_postgres()
    schema = f"fq_test_{uuid.uuid4().hex[:12]}"

    def drop() -> None:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    return _with_query(POSTGRES_URL, "schema", schema), drop
