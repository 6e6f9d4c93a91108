"""The froggy API methods, as in the seed: each saves, then asks for a log line and maybe an email.

Several methods make one transaction when only the last is called with ``commit=True``. Each method
registers its notifications with ``on_commit``: the log line at stage 0 and the email at stage 1, so after
the commit the log lines come first in call order, then the emails in call order; a rollback drops them all.
The messages are built when the method runs (from the values it saved), not when the hook runs.
"""

from __future__ import annotations

import logging
from functools import partial

from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

from flask_queue.commit_hooks import on_commit

from .models import Froggy, db

LOG_STAGE = 0
EMAIL_STAGE = 1

log = logging.getLogger("froggy")


def finalise_api_op(
    log_msg: str | None = None,
    mail_subject: str | None = None,
    mail_body: str = "",
    *,
    commit: bool = False,
) -> dict[str, str]:
    """Queue the operation's log line and email for after the commit; commit if this is the last method."""
    if log_msg is not None:
        on_commit(partial(log.info, "%s", log_msg), stage=LOG_STAGE)
    if mail_subject is not None:
        outbox = current_app.extensions["froggy_outbox"]
        # robust: a mail server that is down must neither hide the other notifications nor fail the request.
        on_commit(partial(outbox.send, mail_subject, mail_body), stage=EMAIL_STAGE, robust=True)
    if commit:
        try:
            db.session.commit()
        except SQLAlchemyError:
            db.session.rollback()  # and with it every notification queued since the last commit
            log.exception("Error finalising API op")
            return {"error": "error finalising api op"}
    return {"message": "api op finalised ok"}


def create_froggy(name: str) -> Froggy:
    froggy = Froggy(name=name)
    db.session.add(froggy)
    db.session.flush()  # for its id, in the log line
    finalise_api_op(f"Froggy created: {froggy.id}; name: {name}", commit=True)
    return froggy


def update_froggy_colour(
    froggy: Froggy, colour: str, *, commit: bool = False, log: bool = True, email: bool = False
) -> dict[str, str]:
    """Update a froggy's colour."""
    froggy.colour = colour
    return finalise_api_op(
        f"Froggy colour updated: {froggy.id}; new value: {froggy.colour}" if log else None,
        "Froggy colour updated" if email else None,
        f"Froggy: {froggy.id}; new colour: {froggy.colour}",
        commit=commit,
    )


def make_froggy_jump(
    froggy: Froggy, jump_height: str, *, commit: bool = False, log: bool = True, email: bool = False
) -> dict[str, str]:
    """Make a froggy jump."""
    froggy.is_jumping = True
    froggy.jump_height = jump_height
    return finalise_api_op(
        f"Made froggy jump: {froggy.id}; jump height: {froggy.jump_height}" if log else None,
        "Made froggy jump" if email else None,
        f"Froggy: {froggy.id}; jump height: {froggy.jump_height}",
        commit=commit,
    )


def make_froggy_brightpink_and_highjump(froggy: Froggy) -> list[dict[str, str]]:
    """The seed's example: two methods, one transaction; a log line each, an email for the jump."""
    return [
        update_froggy_colour(froggy, "bright_pink"),
        make_froggy_jump(froggy, "50 metres", commit=True, email=True),
    ]


def make_froggy_dance(froggy: Froggy) -> list[dict[str, str]]:
    """Three methods, one transaction, every notification on: two emails, sent in call order."""
    return [
        update_froggy_colour(froggy, "lime", email=True),
        make_froggy_jump(froggy, "2 metres", email=True),
        update_froggy_colour(froggy, "gold", commit=True),
    ]
