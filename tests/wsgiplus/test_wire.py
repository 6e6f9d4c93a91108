"""What the WSGIPlusWorker puts on the wire, read byte by byte from a kept-alive connection.

The worker writes a response's head together with its first body chunk, and keeps a connection alive
without draining a body that was read already; these tests hold it to gunicorn's behaviour around that:
HEAD requests, empty and over-long chunks, bodies read or left unread, pipelined requests, parks between.
"""

from __future__ import annotations

import socket

from tests.servers._live import wait_for

from .conftest import Client


class Connection:
    """One kept-alive client connection that sends raw requests and reads responses one at a time."""

    def __init__(self, live: Client) -> None:
        self.sock = socket.create_connection(("127.0.0.1", live.server.port), timeout=20)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, *requests: bytes) -> None:
        self.sock.sendall(b"".join(requests))

    def head(self) -> tuple[int, dict[str, str]]:
        """The status and headers of the next response (its body is left to ``body``)."""
        while b"\r\n\r\n" not in self.buffer:
            self._receive()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    def body(self, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding") != "chunked":
            return self._take(int(headers["content-length"]))
        chunks: list[bytes] = []
        while True:
            while b"\r\n" not in self.buffer:
                self._receive()
            size_line, _, self.buffer = self.buffer.partition(b"\r\n")
            chunk = self._take(int(size_line, 16) + 2)[:-2]
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def _take(self, length: int) -> bytes:
        while len(self.buffer) < length:
            self._receive()
        taken, self.buffer = self.buffer[:length], self.buffer[length:]
        return taken

    def response(self, *, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        status, headers = self.head()
        return status, headers, b"" if method == "HEAD" else self.body(headers)

    def closed_by_server(self) -> bool:
        """Whether the server closes the connection with nothing more sent."""
        return self.buffer == b"" and self.sock.recv(1) == b""

    def _receive(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"the server closed the connection; unread: {self.buffer!r}"
        self.buffer += chunk


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


def post(path: str, body: bytes) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def test_heads_and_bodies_arrive_whole_on_one_kept_alive_connection(live: Client) -> None:
    connection = Connection(live)
    try:
        for request, method in [
            (get("/health"), "GET"),
            (get("/raw/rfc?s=0.05"), "GET"),  # parked, resumed on another thread
            (get("/health", "HEAD"), "HEAD"),  # a head alone
            (get("/flask/context"), "GET"),
            (get("/health"), "GET"),
        ]:
            connection.send(request)
            status, headers, body = connection.response(method=method)
            assert status == 200, body
            assert (body == b"") == (method == "HEAD")
            assert headers.get("connection", "keep-alive").lower() != "close"
        assert b'"ok":true' in body.replace(b" ", b"")
    finally:
        connection.close()


def test_pipelined_requests_are_answered_in_turn(live: Client) -> None:
    connection = Connection(live)
    try:
        connection.send(get("/health"), get("/raw/done"), get("/flask/done"), get("/health", "HEAD"))
        assert connection.response()[0] == 200
        assert connection.response()[2] == str(sum(range(100))).encode()
        assert connection.response()[0] == 200
        status, headers, body = connection.response(method="HEAD")
        assert (status, body) == (200, b"")
        assert int(headers["content-length"]) > 0
    finally:
        connection.close()


def test_a_body_the_view_reads_or_leaves_unread_never_reaches_the_next_request(live: Client) -> None:
    payload = b"GET /not-a-request HTTP/1.1\r\n\r\n" * 300  # 9 KiB, served as requests were it not drained
    connection = Connection(live)
    try:
        connection.send(post("/flask/read", payload), post("/flask/unread", payload), get("/health"))
        assert connection.response()[2] == f"read {len(payload)}".encode()
        assert connection.response()[2] == b"unread"
        status, _, body = connection.response()
        assert status == 200
        assert b"pid" in body
        # More unread body than gunicorn drains (64 KiB): answered, then the connection is closed.
        connection.send(post("/flask/unread", b"x" * 100_000), get("/raw/done"))
        assert connection.response()[2] == b"unread"
        assert connection.closed_by_server()
    finally:
        connection.close()


def test_a_chunk_longer_than_its_content_length_is_cut_and_the_connection_serves_on(live: Client) -> None:
    connection = Connection(live)
    try:
        connection.send(get("/raw/long"), get("/health"))
        status, headers, body = connection.response()
        assert (status, headers["content-length"], body) == (200, "3", b"abc")
        assert connection.response()[0] == 200
    finally:
        connection.close()


def test_the_head_goes_out_before_a_park_that_follows_an_empty_first_chunk(live: Client) -> None:
    connection = Connection(live)
    try:
        connection.send(get("/raw/empty-first?name=wire-empty"))
        status, headers = connection.head()  # while the request is still parked on its gate
        assert (status, headers["content-length"]) == (200, "3")
        assert live.get("/gate/wire-empty/state").json() == {"done": False, "cancelled": False}
        live.post("/gate/wire-empty/open")
        assert connection.body(headers) == b"xyz"
    finally:
        connection.close()


def test_system_exit_in_a_request_closes_its_connection_and_costs_no_thread(live: Client) -> None:
    # Twice as many as the server's two threads: had one of them died, the last would never be served.
    for _ in range(4):
        connection = Connection(live)
        try:
            connection.send(get("/raw/exit"))
            assert connection.closed_by_server()
        finally:
            connection.close()
    assert [status for status, _ in _get_all(live, ["/health", "/raw/rfc?s=0.05", "/flask/done"])] == [
        200
    ] * 3
    wait_for("the error to be logged", live.log, lambda log: log.count("Error in a request thread") >= 4)


def _get_all(live: Client, paths: list[str]) -> list[tuple[int, bytes]]:
    responses = [live.get(path) for path in paths]
    return [(response.status_code, response.content) for response in responses]
