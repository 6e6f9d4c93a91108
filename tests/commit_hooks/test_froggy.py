"""The seed's froggy scenario (``examples/froggy``): commit first, then log lines in call order, then emails.

Also what the seed's ``flask.g`` queue keyed by ``hash(db.session)`` got wrong: a rollback runs nothing,
and two threads at once never see each other's notifications.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from examples.froggy import Outbox, api, create_app
from examples.froggy.models import Froggy, db

from .test_threads import TIMEOUT, run_threads

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def outbox() -> Outbox:
    return Outbox()


@pytest.fixture
def app(tmp_path: Path, outbox: Outbox) -> Iterator[Flask]:
    app = create_app(tmp_path / "froggy.db", outbox)
    yield app
    with app.app_context():
        db.engine.dispose()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def froggy_log() -> Iterator[list[str]]:
    """The messages of the app's "froggy" logger, as the seed prints them."""
    logger = logging.getLogger("froggy")
    handler, level = _Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def new_froggy(app: Flask) -> int:
    with app.test_client().post("/froggies", json={"name": "Kermit"}) as response:
        assert response.status_code == 201
        froggy_id: int = response.get_json()["id"]
    return froggy_id


def test_the_seeds_example_commit_then_log_lines_then_the_email(
    app: Flask, outbox: Outbox, froggy_log: list[str]
) -> None:
    froggy_id = new_froggy(app)
    froggy_log.clear()
    with app.test_client().post(f"/froggies/{froggy_id}/brightpink-and-highjump") as response:
        assert response.status_code == 200
        assert response.get_json()["results"] == [{"message": "api op finalised ok"}] * 2
    assert froggy_log == [
        "Committed DB transaction",
        f"Froggy colour updated: {froggy_id}; new value: bright_pink",
        f"Made froggy jump: {froggy_id}; jump height: 50 metres",
        "Sent email: Made froggy jump",
    ]
    assert outbox.sent == [("Made froggy jump", f"Froggy: {froggy_id}; jump height: 50 metres")]
    with app.test_client().get(f"/froggies/{froggy_id}") as response:
        assert response.get_json()["colour"] == "bright_pink"
        assert response.get_json()["jump_height"] == "50 metres"


def test_three_methods_emails_in_call_order_after_every_log_line(
    app: Flask, outbox: Outbox, froggy_log: list[str]
) -> None:
    froggy_id = new_froggy(app)
    froggy_log.clear()
    with app.test_client().post(f"/froggies/{froggy_id}/dance") as response:
        assert response.status_code == 200
    assert froggy_log == [
        "Committed DB transaction",
        f"Froggy colour updated: {froggy_id}; new value: lime",
        f"Made froggy jump: {froggy_id}; jump height: 2 metres",
        f"Froggy colour updated: {froggy_id}; new value: gold",
        "Sent email: Froggy colour updated",
        "Sent email: Made froggy jump",
    ]
    assert [subject for subject, _ in outbox.sent] == ["Froggy colour updated", "Made froggy jump"]


def test_a_rollback_sends_nothing_and_leaves_nothing_for_the_next_operation(
    app: Flask, outbox: Outbox, froggy_log: list[str]
) -> None:
    froggy_id = new_froggy(app)
    froggy_log.clear()
    with app.app_context():
        froggy = db.session.get(Froggy, froggy_id)
        assert froggy is not None
        api.update_froggy_colour(froggy, "blue", email=True)
        api.make_froggy_jump(froggy, "9 metres", email=True)
        db.session.rollback()
        assert froggy_log == []
        api.make_froggy_jump(froggy, "1 metre", commit=True)
    assert froggy_log == ["Committed DB transaction", f"Made froggy jump: {froggy_id}; jump height: 1 metre"]
    assert outbox.sent == []


def test_a_failing_mailer_is_logged_and_the_rest_still_run(
    app: Flask, outbox: Outbox, froggy_log: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    froggy_id = new_froggy(app)
    sent = outbox.send
    calls = 0

    def flaky(subject: str, body: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionRefusedError("mail server down")
        sent(subject, body)

    outbox.send = flaky  # type: ignore[method-assign]
    froggy_log.clear()
    with (
        caplog.at_level(logging.ERROR, logger="flask_queue.commit_hooks"),
        app.test_client().post(f"/froggies/{froggy_id}/dance") as response,
    ):
        assert response.status_code == 200
    assert froggy_log[-1] == "Sent email: Made froggy jump"
    assert [subject for subject, _ in outbox.sent] == ["Made froggy jump"]
    (error,) = [record for record in caplog.records if record.name == "flask_queue.commit_hooks"]
    assert error.exc_info is not None
    assert isinstance(error.exc_info[1], ConnectionRefusedError)


def test_two_requests_at_once_never_see_each_others_notifications(app: Flask, froggy_log: list[str]) -> None:
    ids = {name: new_froggy(app) for name in ("a", "b")}
    froggy_log.clear()
    both_started = threading.Barrier(2, timeout=TIMEOUT)
    a_committed = threading.Event()

    def operation(name: str) -> None:
        with app.app_context():
            froggy = db.session.get(Froggy, ids[name])
            assert froggy is not None
            api.update_froggy_colour(froggy, f"colour of {name}", email=True)
            both_started.wait()  # both operations have queued their notifications
            if name == "a":
                api.make_froggy_jump(froggy, "3 metres", commit=True, email=True)
                a_committed.set()
            else:
                assert a_committed.wait(TIMEOUT)
                db.session.rollback()

    run_threads(lambda: operation("a"), lambda: operation("b"))
    a = ids["a"]
    assert froggy_log == [
        "Committed DB transaction",
        f"Froggy colour updated: {a}; new value: colour of a",
        f"Made froggy jump: {a}; jump height: 3 metres",
        "Sent email: Froggy colour updated",
        "Sent email: Made froggy jump",
    ]


def test_python_m_examples_froggy() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.froggy"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    sections = {}
    for block in result.stdout.split("\n# ")[1:]:
        title, *lines = block.strip().split("\n")
        sections[title] = [re.sub(r"^INFO \[[0-9-]+ [0-9:]+\] ", "", line) for line in lines]
    seed = next(lines for title, lines in sections.items() if title.startswith("the seed's example"))
    assert seed == [
        "Committed DB transaction",
        "Froggy colour updated: 1; new value: bright_pink",
        "Made froggy jump: 1; jump height: 50 metres",
        "Sent email: Made froggy jump",
    ]
    rolled_back = next(lines for title, lines in sections.items() if "rolls back" in title)
    assert rolled_back == ["(rolled back)"]
