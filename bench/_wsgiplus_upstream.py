"""The slow upstream API of the WSGI+ benchmark: an asyncio HTTP/1.1 server that answers after a delay.

``python -m bench._wsgiplus_upstream PORT DELAY_MS`` serves ``GET /`` with ``ok`` after the current delay,
on keep-alive connections, to thousands of clients at once. ``GET /control?delay_ms=N`` changes the delay
of the requests that arrive from then on (the brownout). It runs in a process of its own, so its work is
never counted as the server's.
"""

from __future__ import annotations

import asyncio
import resource
import sys

_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class _State:
    delay = 0.2


class _Upstream(asyncio.Protocol):
    """One client connection: each request is answered ``delay`` seconds after it arrived, in order.

    A timer per request rather than a task: the upstream shares the machine with the servers it measures,
    so it should cost as little CPU as it can.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:  # GET requests only: no body
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            target = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
            if target.startswith(b"/control"):
                for pair in target.partition(b"?")[2].split(b"&"):
                    key, _, value = pair.partition(b"=")
                    if key == b"delay_ms":
                        _State.delay = int(value) / 1000.0
                self._reply()
            else:
                asyncio.get_running_loop().call_later(_State.delay, self._reply)

    def _reply(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_OK)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Upstream, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port, delay_ms = int(sys.argv[1]), int(sys.argv[2])
    _State.delay = delay_ms / 1000.0
    asyncio.run(serve(port))


if __name__ == "__main__":
    main()
