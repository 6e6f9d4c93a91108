"""The smallest HTTP/1.1 client the load generators need: an asyncio protocol, one request at a time.

An ``asyncio.Protocol`` rather than streams: it costs the generator about half the CPU per request, and the
generator shares a 2-core machine with the server it loads. Responses are read by ``Content-Length``, or to
the end of the connection when there is none; that is all the benchmark servers send.
"""

from __future__ import annotations

import asyncio


def request_bytes(host: str, port: int, path: str, headers: dict[str, str], keep_alive: bool) -> bytes:
    """A ``GET`` request with the given extra headers (and ``Accept: */*``, as curl sends)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "User-Agent: flask-queue-bench", "Accept: */*"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class IncompleteResponse(ConnectionError):
    """The server closed the connection before a whole response arrived."""


def parse_response(buffer: bytearray, eof: bool) -> tuple[int, bool, int] | None:
    """``(status, server closes, bytes used)`` once ``buffer`` holds a whole response, else ``None``.

    :raises ValueError: when the status line is not HTTP.
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end])
    if not head.startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP response: {head[:40]!r}")
    status = int(head[9:12])
    length: int | None = None
    close = head.startswith(b"HTTP/1.0")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    if length is None:  # the body runs to the end of the connection
        return (status, True, len(buffer)) if eof else None
    if len(buffer) - (end + 4) < length:
        return None
    return status, close, end + 4 + length


class Connection(asyncio.Protocol):
    """One client connection: ``await connection.send(request)`` gives ``(status, server closes)``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._waiter: asyncio.Future[tuple[int, bool]] | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        """Connect; raises ``OSError`` when the server cannot be reached."""
        _, protocol = await asyncio.get_running_loop().create_connection(cls, host, port)
        return protocol

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bool]]:
        """Send a request; the future resolves with the response's status and whether the server closes."""
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        if self._eof:
            self._waiter.set_exception(IncompleteResponse("the server had closed the connection"))
        else:
            self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._check()

    def eof_received(self) -> bool:
        self._eof = True
        self._check()
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._check()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc or IncompleteResponse("the server closed before a whole response"))

    def _check(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            parsed = parse_response(self._buffer, self._eof)
        except ValueError as error:
            waiter.set_exception(error)
            return
        if parsed is not None:
            status, close, used = parsed
            del self._buffer[:used]
            waiter.set_result((status, close))
