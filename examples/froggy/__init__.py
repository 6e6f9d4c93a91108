"""The froggy app: API methods that save a froggy and notify after the commit, in call order.

The seed behind it (``002``) queued its notifications in ``flask.g`` under ``hash(db.session)``; here each
API method registers its log line (stage 0) and its email (stage 1) with ``on_commit``, and the last method
of an operation commits. After the commit the log lines run in call order, then the emails in call order;
after a rollback none of them run. ``python -m examples.froggy`` runs the seed's own example.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, abort, request
from sqlalchemy import event
from sqlalchemy.orm import Session

from . import api
from .models import Froggy, db

__all__ = ["Froggy", "Outbox", "create_app", "db"]

log = logging.getLogger("froggy")


class Outbox:
    """The app's mailer: keeps what it sends and logs it (a real app hands it to its mail server)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, subject: str, body: str) -> None:
        self.sent.append((subject, body))
        log.info("Sent email: %s", subject)


def _log_commit(session: Session) -> None:
    # after_commit fires for a released SAVEPOINT too: only the outermost commit is reported.
    if not session.in_nested_transaction():
        log.info("Committed DB transaction")


def create_app(database: str | Path = ":memory:", outbox: Outbox | None = None) -> Flask:
    """The froggy app on SQLite: a file, or a database in memory (the default)."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = (
        "sqlite://" if str(database) == ":memory:" else f"sqlite:///{Path(database).resolve()}"
    )
    app.extensions["froggy_outbox"] = outbox if outbox is not None else Outbox()
    db.init_app(app)
    with app.app_context():
        db.create_all()
    if not event.contains(db.session, "after_commit", _log_commit):
        event.listen(db.session, "after_commit", _log_commit)

    @app.post("/froggies")
    def create() -> tuple[dict[str, object], int]:
        name = (request.get_json(silent=True) or {}).get("name", "froggy")
        return api.create_froggy(str(name)).describe(), 201

    @app.get("/froggies/<int:froggy_id>")
    def show(froggy_id: int) -> dict[str, object]:
        return db.get_or_404(Froggy, froggy_id).describe()

    @app.post("/froggies/<int:froggy_id>/brightpink-and-highjump")
    def brightpink_and_highjump(froggy_id: int) -> dict[str, object]:
        return {"results": api.make_froggy_brightpink_and_highjump(db.get_or_404(Froggy, froggy_id))}

    @app.post("/froggies/<int:froggy_id>/dance")
    def dance(froggy_id: int) -> dict[str, object]:
        return {"results": api.make_froggy_dance(db.get_or_404(Froggy, froggy_id))}

    @app.post("/froggies/<int:froggy_id>/jump")
    def jump(froggy_id: int) -> dict[str, str]:
        height = (request.get_json(silent=True) or {}).get("height")
        if not isinstance(height, str) or not height:
            abort(400, "height: a string such as '50 metres'")
        return api.make_froggy_jump(db.get_or_404(Froggy, froggy_id), height, commit=True, email=True)

    @app.get("/outbox")
    def sent() -> dict[str, object]:
        outbox: Outbox = app.extensions["froggy_outbox"]
        return {"sent": [{"subject": subject, "body": body} for subject, body in outbox.sent]}

    return app
