"""The Redis backend's connections: one per thread, each made with the settings of one redis-py pool.

Each thread keeps one connection instead of taking one from the pool per command: redis-py's pool and retry
machinery cost more CPU than the command itself (a PING: 43 us through ``Redis``, 17 us on a connection),
and a thread only ever waits for one reply at a time. A connection is made apart from the pool's, which
would keep it for ever: a server that starts a thread per request would pile up connections.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

from redis import ConnectionPool, Redis, RedisError
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.retry import Retry

from ....exceptions import BackendError

#: Seconds to wait for a TCP (and TLS) connection to Redis before ``BackendError``; a URL's
#: ``socket_connect_timeout`` overrides it.
CONNECT_TIMEOUT = 2.0
#: Seconds to wait for a reply; a URL's ``socket_timeout`` overrides it.
REPLY_TIMEOUT = 10.0
#: Seconds after which an unused connection is checked, before its next command, for a close by the server.
STALE_AFTER = 1.0


class Link:
    """A thread's connection to Redis, closed when the thread ends and its thread-local storage goes.

    The connection is made apart from the pool's, which would keep it for ever: a server that starts a
    thread per request would pile up connections.
    """

    __slots__ = ("__weakref__", "busy", "conn", "used")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        #: When it last carried a command (``time.monotonic()``).
        self.used = time.monotonic()
        #: Whether its thread is between a command and its reply: only that thread may close it then.
        self.busy = False

    def __del__(self) -> None:
        self.conn.disconnect()


class Links:
    """The connections of one backend in one process: a pool's settings, and each thread's ``Link``.

    ``url`` is the backend's URL as messages show it. Raises ``ValueError`` for options redis-py refuses.
    """

    def __init__(self, redis_url: str, url: str) -> None:
        self.url = url
        self.pool = ConnectionPool.from_url(
            redis_url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=REPLY_TIMEOUT,
            # No retries inside redis-py (it retries 3 times with a growing backoff by default): a command
            # that failed may have run, and the worker retries with its own backoff anyway.
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        #: For what needs redis-py's own client (a pipeline).
        self.client = Redis(connection_pool=self.pool)
        self.closed = False
        self._local = threading.local()
        self._links: weakref.WeakSet[Link] = weakref.WeakSet()

    @property
    def reply_timeout(self) -> float | None:
        timeout = self.pool.connection_kwargs.get("socket_timeout")
        return None if timeout is None else float(timeout)

    def send(self, *args: str | float) -> Any:
        """Send a command on this thread's own connection and return its reply."""
        link: Link | None = getattr(self._local, "link", None)
        if link is None:
            link = self._local.link = Link(self.pool.connection_class(**self.pool.connection_kwargs))
            self._links.add(link)
        link.busy = True
        try:
            # After ``busy`` is set: either close() sees the link busy and leaves it to us, or we see it closed.
            if self.closed:
                link.conn.disconnect()
                raise BackendError(f"Redis at {self.url}: this backend is closed")
            return _exchange(link, args)
        finally:
            link.busy = False
            if self.closed:
                link.conn.disconnect()

    def close(self) -> None:
        """Close every connection; later calls raise ``BackendError``. A thread in the middle of a command
        keeps its connection until the reply: redis-py's connections must not be closed under the thread
        reading them."""
        self.closed = True
        self.pool.disconnect()
        for link in list(self._links):
            if not link.busy:
                link.conn.disconnect()


def _exchange(link: Link, args: Sequence[str | float]) -> Any:
    if time.monotonic() - link.used > STALE_AFTER:
        # A connection idle for a while may have been closed by the server (a restart, a timeout):
        # find out before sending, so that the command goes on a fresh one instead of failing.
        try:
            stale = link.conn.can_read()
        except RedisError:
            stale = True
        if stale:
            link.conn.disconnect()
    conn = link.conn
    try:
        conn.send_packed_command([pack(args)])
        reply = conn.read_response()
    except ResponseError:
        raise
    except BaseException:
        # Whatever stopped us between a command and its reply (a lost connection, an exception raised in
        # this thread), the connection may still owe that reply: never read it as another's.
        conn.disconnect()
        raise
    link.used = time.monotonic()
    return reply


def pack(args: Sequence[str | float]) -> bytes:
    """A command in Redis's protocol. redis-py's own packer is generic and costs a fifth of an enqueue's CPU;
    ours only meets strings and numbers."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else repr(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)
