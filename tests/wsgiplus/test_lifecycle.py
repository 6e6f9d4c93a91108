"""The WSGIPlusWorker's life: settings checked at start, heartbeat while parked, graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from pathlib import Path

import pytest
import uvloop

from flask_queue.exceptions import ConfigurationError
from flask_queue.wsgiplus import event_loop_factory
from flask_queue.wsgiplus.gunicorn import DEFAULT_SUSPEND_TIMEOUT, suspend_timeout
from tests.servers._live import wait_for

from . import _server
from .conftest import Client, fetch_concurrently, require_gunicorn


@pytest.mark.parametrize("value", ["abc", "0", "-1", "nan", "inf"])
def test_an_invalid_suspend_timeout_stops_gunicorn_at_start_naming_the_setting(
    value: str, log_dir: Path
) -> None:
    require_gunicorn()
    server = _server.spawn("wsgiplus", log_dir, env={"WSGI_PLUS_SUSPEND_TIMEOUT": value})
    try:
        assert _server.wait_exit(server) != 0
        log = server.log_tail(100_000)
        assert "WSGI_PLUS_SUSPEND_TIMEOUT must be a number > 0" in log
        assert repr(value) in log
    finally:
        server.stop()


def test_an_invalid_suspend_timeout_given_with_gunicorn_env_stops_it_too(log_dir: Path) -> None:
    require_gunicorn()
    server = _server.spawn("wsgiplus", log_dir, extra=["--env", "WSGI_PLUS_SUSPEND_TIMEOUT=soon"])
    try:
        assert _server.wait_exit(server) != 0
        assert "WSGI_PLUS_SUSPEND_TIMEOUT must be a number > 0, not 'soon'" in server.log_tail()
    finally:
        server.stop()


def test_suspend_timeout_setting() -> None:
    assert suspend_timeout({}) == DEFAULT_SUSPEND_TIMEOUT == 60.0
    assert suspend_timeout({"WSGI_PLUS_SUSPEND_TIMEOUT": " 2.5 "}) == 2.5
    with pytest.raises(ConfigurationError, match="WSGI_PLUS_SUSPEND_TIMEOUT"):
        suspend_timeout({"WSGI_PLUS_SUSPEND_TIMEOUT": "0"})


def test_the_heartbeat_goes_on_while_requests_are_parked_past_gunicorn_s_timeout(log_dir: Path) -> None:
    require_gunicorn()
    server = _server.start("wsgiplus", log_dir, extra=["--timeout=2"])
    try:
        live = Client(server)
        pid = live.get("/health").json()["pid"]
        results = fetch_concurrently(server.port, ["/flask/sleep?s=5"] * 4)
        assert [status for status, _ in results] == [200] * 4
        assert live.get("/health").json()["pid"] == pid  # the same worker: never killed and replaced
        assert "WORKER TIMEOUT" not in live.log()
    finally:
        server.stop()


def test_sigterm_answers_every_parked_request_before_the_worker_exits(log_dir: Path) -> None:
    require_gunicorn()
    server = _server.start("wsgiplus", log_dir)
    try:
        live = Client(server)
        results: list[tuple[int, bytes]] = []
        client = threading.Thread(
            target=lambda: results.extend(fetch_concurrently(server.port, ["/flask/sleep?s=2"] * 20))
        )
        client.start()
        try:
            wait_for(
                "20 requests to park", lambda: live.get("/sleeping").json()["sleeping"], lambda n: n == 20
            )
            server.proc.send_signal(signal.SIGTERM)
        finally:
            client.join(30)
        assert [status for status, _ in results] == [200] * 20
        assert _server.wait_exit(server) == 0
    finally:
        server.stop()


def test_the_worker_runs_async_views_and_run_async_on_the_chosen_event_loop(
    live: Client, event_loop_kind: str
) -> None:
    expected = "uvloop.Loop" if event_loop_kind == "uvloop" else "asyncio.unix_events._UnixSelectorEventLoop"
    assert live.get("/flask/loop").json() == {"view": expected, "run_async": expected}


def test_event_loop_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert event_loop_factory({}) is uvloop.new_event_loop  # auto: uvloop when it is installed
    assert event_loop_factory({"WSGI_PLUS_EVENT_LOOP": " Auto "}) is uvloop.new_event_loop
    assert event_loop_factory({"WSGI_PLUS_EVENT_LOOP": "uvloop"}) is uvloop.new_event_loop
    assert event_loop_factory({"WSGI_PLUS_EVENT_LOOP": "asyncio"}) is asyncio.new_event_loop
    with pytest.raises(ConfigurationError, match="WSGI_PLUS_EVENT_LOOP must be one of auto, asyncio, uvloop"):
        event_loop_factory({"WSGI_PLUS_EVENT_LOOP": "trio"})
    # Without uvloop, auto falls back to asyncio's loop, and asking for uvloop is an error naming the fix.
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what "not installed" looks like to an import
    assert event_loop_factory({}) is asyncio.new_event_loop
    with pytest.raises(ConfigurationError, match=r"WSGI_PLUS_EVENT_LOOP=uvloop, but uvloop is not installed"):
        event_loop_factory({"WSGI_PLUS_EVENT_LOOP": "uvloop"})


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="event loop policies are deprecated from Python 3.14")
def test_auto_keeps_an_event_loop_policy_the_application_set() -> None:
    class Policy(asyncio.DefaultEventLoopPolicy):
        pass

    before = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(Policy())
    try:
        assert event_loop_factory({}) is asyncio.new_event_loop
    finally:
        asyncio.set_event_loop_policy(before)


def test_an_invalid_event_loop_stops_gunicorn_at_start_naming_the_setting(log_dir: Path) -> None:
    require_gunicorn()
    server = _server.spawn("wsgiplus", log_dir, extra=["--env", "WSGI_PLUS_EVENT_LOOP=fast"])
    try:
        assert _server.wait_exit(server) != 0
        assert "WSGI_PLUS_EVENT_LOOP must be one of auto, asyncio, uvloop, not 'fast'" in server.log_tail()
    finally:
        server.stop()


@pytest.mark.parametrize("version", [(26, 2, 0), (24, 0, 0)])
def test_a_gunicorn_below_27_is_refused_at_start_naming_the_range(
    version: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """24 to 26 answer a request after a parked one with a 500, or log an AttributeError per request."""
    import logging

    import gunicorn
    from gunicorn.config import Config

    from flask_queue.wsgiplus.gunicorn import WSGIPlusWorker

    monkeypatch.setattr(gunicorn, "version_info", version)
    monkeypatch.setattr(gunicorn, "__version__", ".".join(map(str, version)))
    with pytest.raises(RuntimeError, match=rf"needs gunicorn>=27, not gunicorn {gunicorn.__version__}"):
        WSGIPlusWorker.check_config(Config(), logging.getLogger("gunicorn.error"))
