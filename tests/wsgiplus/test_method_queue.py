"""The worker's queue of calls for its main loop, at exit: a request thread that defers a call after the
queue was closed writes into nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("gunicorn")

from flask_queue.wsgiplus.gunicorn import _MethodQueue


def test_a_call_deferred_after_close_writes_into_no_file_opened_since(tmp_path: Path) -> None:
    # Closing both ends freed their descriptor numbers; the next files opened took them, and a request
    # thread finishing its step during the worker's exit wrote its wake-up byte into one of them.
    methods = _MethodQueue()
    methods.init()
    methods.close()
    files = [os.open(tmp_path / f"file-{n}", os.O_RDWR | os.O_CREAT) for n in range(4)]
    try:
        methods.defer(print, "never run")
    finally:
        for fd in files:
            os.close(fd)
    assert [(tmp_path / f"file-{n}").read_bytes() for n in range(4)] == [b""] * 4
