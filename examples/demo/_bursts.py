"""Bursts of real HTTP requests that the demo fires at itself, and the tally of what came back.

Why the server fires them and not the page's JavaScript: a browser opens at most six HTTP/1.1 connections to
one host, so fifty ``fetch`` calls from the page would reach the server six at a time and the request queue
would never fill. Threads in the demo's own process have no such cap; they go through the socket and the
server like any other client, so what they get back (200, or 503 with ``Retry-After``) is what a client sees.
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

#: Requests a single burst may hold; the page offers 5, 20 and 50.
MAX_BURST: Final = 50
#: Requests in flight across every burst; beyond it a new burst is refused until some finish.
MAX_IN_FLIGHT: Final = 100
_KEEP: Final = 6  # bursts listed on the page
_REQUEST_TIMEOUT: Final = 60.0


@dataclass
class _Rejections:
    count: int = 0
    retry_after_min: int | None = None
    retry_after_max: int | None = None

    def add(self, retry_after: int | None) -> None:
        self.count += 1
        if retry_after is not None:
            low, high = self.retry_after_min, self.retry_after_max
            self.retry_after_min = retry_after if low is None else min(low, retry_after)
            self.retry_after_max = retry_after if high is None else max(high, retry_after)


@dataclass
class Burst:
    """``size`` concurrent GETs of ``path``; counters are updated as the answers come in."""

    id: int
    target: str
    path: str
    size: int
    important: bool
    started: float = field(default_factory=time.monotonic)
    ok: int = 0
    errors: int = 0
    ok_ms_max: float | None = None
    finished_after: float | None = None
    rejected: dict[tuple[int, str], _Rejections] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)

    @property
    def answered(self) -> int:
        return self.ok + self.errors + sum(r.count for r in self.rejected.values())

    @property
    def done(self) -> bool:
        return self.finished_after is not None

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every request of the burst has its answer; ``False`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def record(self, status: int, reason: str, retry_after: int | None, ms: float) -> None:
        with self._lock:
            if status == 200:
                self.ok += 1
                self.ok_ms_max = ms if self.ok_ms_max is None else max(self.ok_ms_max, ms)
            else:
                self.rejected.setdefault((status, reason), _Rejections()).add(retry_after)
            self._maybe_finish()

    def record_error(self) -> None:
        with self._lock:
            self.errors += 1
            self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.answered == self.size:
            self.finished_after = time.monotonic() - self.started

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            elapsed = time.monotonic() - self.started if self.finished_after is None else self.finished_after
            return {
                "id": self.id,
                "target": self.target,
                "path": self.path,
                "size": self.size,
                "important": self.important,
                "answered": self.answered,
                "done": self.done,
                "elapsed_ms": round(elapsed * 1000.0),
                "ok": self.ok,
                "ok_ms_max": None if self.ok_ms_max is None else round(self.ok_ms_max),
                "errors": self.errors,
                "rejected": [
                    {
                        "status": status,
                        "reason": reason,
                        "count": r.count,
                        "retry_after_min": r.retry_after_min,
                        "retry_after_max": r.retry_after_max,
                    }
                    for (status, reason), r in sorted(self.rejected.items())
                ],
            }


class BurstRefused(Exception):
    """Too many requests in flight already; the message says so."""


class Bursts:
    """The demo's bursts: starts them and keeps the most recent ones for the page. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._recent: deque[Burst] = deque(maxlen=_KEEP)
        self._in_flight: list[Burst] = []

    def start(self, base_url: str, target: str, path: str, size: int, important: bool) -> Burst:
        """Fire ``size`` GETs of ``base_url + path`` at once, each from its own thread.

        :raises BurstRefused: when the requests in flight would pass ``MAX_IN_FLIGHT``.
        """
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"bursts need an http:// base URL, got {base_url!r}")
        host, port = url.hostname, url.port or 80
        headers = {"Accept": "application/json", "Connection": "close"}
        if important:
            headers["X-Priority"] = "high"
        with self._lock:
            self._in_flight = [b for b in self._in_flight if not b.done]
            pending = sum(b.size - b.answered for b in self._in_flight)
            if pending + size > MAX_IN_FLIGHT:
                raise BurstRefused(f"{pending} requests are still in flight; wait for them to finish")
            burst = Burst(next(self._ids), target, path, size, important)
            self._recent.appendleft(burst)
            self._in_flight.append(burst)
        go = threading.Event()
        for n in range(size):
            thread = threading.Thread(
                target=_request,
                args=(burst, go, host, port, headers),
                name=f"burst-{burst.id}-{n}",
                daemon=True,  # Ctrl-C stops the demo without waiting for answers
            )
            burst._threads.append(thread)
            thread.start()
        go.set()  # every thread is ready: they connect together, as a burst does
        return burst

    def get(self, burst_id: int) -> Burst | None:
        """A recent burst by its id; ``None`` once it has dropped off the list."""
        with self._lock:
            return next((burst for burst in self._recent if burst.id == burst_id), None)

    def recent(self) -> list[dict[str, Any]]:
        """The latest bursts, newest first, as plain data."""
        with self._lock:
            bursts = list(self._recent)
        return [burst.as_dict() for burst in bursts]


def _request(
    burst: Burst,
    go: threading.Event,
    host: str,
    port: int,
    headers: dict[str, str],
) -> None:
    go.wait()
    started = time.monotonic()
    connection = http.client.HTTPConnection(host, port, timeout=_REQUEST_TIMEOUT)
    try:
        connection.request("GET", burst.path, headers=headers)
        with connection.getresponse() as response:
            body = response.read()
            retry_after = response.getheader("Retry-After")
            status = response.status
    except (OSError, http.client.HTTPException):
        burst.record_error()
        return
    finally:
        connection.close()
    ms = (time.monotonic() - started) * 1000.0
    reason = "" if status == 200 else _reason(body)
    burst.record(status, reason, _seconds(retry_after), ms)


def _reason(body: bytes) -> str:
    """The rejection reason from the queue's JSON body (``{"reason": "full", ...}``)."""
    try:
        reason = json.loads(body).get("reason")
    except (ValueError, AttributeError):
        return "other"
    return reason if isinstance(reason, str) else "other"


def _seconds(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)
