"""``run_async``: coroutines handed to the process's event loop from any thread, their Futures, and cancelling.

Coroutines handed over while the loop is busy are started together (one wake-up of the loop for all): these
tests hold that to what ``run_async`` promises, one coroutine at a time and in bulk. A coroutine whose Future
is cancelled before it started never runs (``asyncio.run_coroutine_threadsafe`` would run it to its first
``await``).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import weakref
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor

import pytest

from flask_queue import wsgiplus
from flask_queue.wsgiplus import run_async

WAIT = 10.0
_tag: contextvars.ContextVar[str] = contextvars.ContextVar("tag", default="unset")


async def _double(value: int) -> int:
    await asyncio.sleep(0)
    return 2 * value


class _Held:
    """Something a caller's context holds (a request, say)."""


_held: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("held", default=None)


def test_the_coroutine_sees_the_caller_s_context_and_changes_only_its_own_copy() -> None:
    async def read_then_set() -> str:
        seen = _tag.get()
        _tag.set("changed in the coroutine")
        return seen

    token = _tag.set("set by the caller")
    try:
        assert run_async(read_then_set()).result(WAIT) == "set by the caller"
        assert _tag.get() == "set by the caller"
    finally:
        _tag.reset(token)


def test_the_coroutine_s_error_is_the_future_s_own() -> None:
    error = ValueError("upstream failed")

    async def fail() -> None:
        await asyncio.sleep(0)
        raise error

    assert run_async(fail()).exception(WAIT) is error


def test_cancelling_the_future_cancels_the_running_coroutine() -> None:
    started = threading.Event()
    outcome: list[str] = []

    async def wait_forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    future = run_async(wait_forever())
    assert started.wait(WAIT)
    assert future.cancel()
    with pytest.raises(CancelledError):
        future.result(WAIT)
    run_async(asyncio.sleep(0)).result(WAIT)  # the loop has run the cancellation by the time this is done
    assert outcome == ["cancelled"]


def test_a_coroutine_that_finishes_after_its_future_was_cancelled_is_dropped_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server cancels a parked view's future (client gone, suspend timeout); the producer must not then
    fail setting a result (InvalidStateError) on the loop or in a thread."""
    started, release = threading.Event(), threading.Event()

    async def ignores_cancel() -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return "finished anyway"  # swallows the cancellation: its result has nowhere to go
        return "slept"

    def blocks() -> str:
        started.set()
        release.wait(WAIT)
        return "done"

    with caplog.at_level("DEBUG"):
        future = run_async(ignores_cancel())
        assert started.wait(WAIT)
        assert future.cancel()
        run_async(asyncio.sleep(0.01)).result(WAIT)
        started.clear()
        threaded = wsgiplus.in_thread(blocks)
        assert started.wait(WAIT)
        assert not threaded.cancel()  # running already: cancel() says no, the result still arrives
        release.set()
        assert threaded.result(WAIT) == "done"
    assert future.cancelled()
    assert not [record for record in caplog.records if record.levelname in ("ERROR", "CRITICAL")]


def test_a_future_cancelled_before_its_coroutine_starts_never_runs_it() -> None:
    loop_busy, release = threading.Event(), threading.Event()
    ran: list[str] = []

    async def hold_the_loop() -> None:
        loop_busy.set()
        release.wait(WAIT)  # blocks the loop's thread: what is handed over now waits to be started

    async def record() -> None:
        ran.append("ran")

    holding = run_async(hold_the_loop())
    assert loop_busy.wait(WAIT)
    future = run_async(record())
    assert future.cancel()
    release.set()
    holding.result(WAIT)
    run_async(asyncio.sleep(0)).result(WAIT)
    assert future.cancelled()
    assert ran == []


def test_coroutines_handed_over_by_many_threads_at_once_all_run_once() -> None:
    def hand_over(first: int) -> list[Future[int]]:
        return [run_async(_double(value)) for value in range(first, first + 200)]

    with ThreadPoolExecutor(8) as callers:
        batches = list(callers.map(hand_over, range(0, 1600, 200)))
    results = [future.result(WAIT) for batch in batches for future in batch]
    assert results == [2 * value for value in range(1600)]


def test_after_shutdown_the_next_call_starts_a_new_loop() -> None:
    assert run_async(_double(1)).result(WAIT) == 2
    wsgiplus.shutdown()
    assert run_async(_double(2)).result(WAIT) == 4


def test_the_caller_s_context_is_not_kept_once_its_coroutine_is_done() -> None:
    # The first call starts the event loop: the loop was made in the caller's context and kept it for
    # good, a whole request of a web process (its environ, its Flask request) for the process's life.
    def call() -> weakref.ref[_Held]:
        held = _Held()
        _held.set(held)
        assert run_async(_double(21)).result(WAIT) == 42
        return weakref.ref(held)

    reference = contextvars.Context().run(call)
    gc.collect()
    assert reference() is None
