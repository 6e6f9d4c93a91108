from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running: every thread a test starts must be joined by it."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for thread in leaked:
        thread.join(timeout=5.0)
    still = [t for t in leaked if t.is_alive()]
    frames = sys._current_frames()
    where = "".join(
        f"\n--- {t.name} ---\n" + "".join(traceback.format_stack(frames[t.ident]))
        for t in still
        if t.ident in frames
    )
    assert not still, f"threads left running: {[t.name for t in still]}, where they are:{where}"


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
