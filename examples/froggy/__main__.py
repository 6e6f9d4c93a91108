"""``python -m examples.froggy``: the seed's example, then three methods in one transaction, then a rollback.

Prints the app's log as the seed shows it: the commit first, then the log lines in call order, then the
emails in call order; nothing at all for the operation that rolls back.
"""

from __future__ import annotations

import logging
import sys

from flask import Flask

from . import api, create_app
from .models import Froggy, db


def _section(title: str) -> None:
    print(f"\n# {title}", flush=True)


def run(app: Flask) -> None:
    client = app.test_client()
    _section("create a froggy")
    with client.post("/froggies", json={"name": "Kermit"}) as response:
        froggy_id = response.get_json()["id"]

    _section("the seed's example: bright pink (log line), then a high jump (log line, email) and the commit")
    with client.post(f"/froggies/{froggy_id}/brightpink-and-highjump") as response:
        assert response.status_code == 200

    _section("three methods in one transaction, two emails")
    with client.post(f"/froggies/{froggy_id}/dance") as response:
        assert response.status_code == 200

    _section("the same three methods, but the transaction rolls back: no log line, no email")
    with app.app_context():
        froggy = db.session.get(Froggy, froggy_id)
        assert froggy is not None
        api.update_froggy_colour(froggy, "blue", email=True)
        api.make_froggy_jump(froggy, "9 metres", email=True)
        db.session.rollback()
        print("(rolled back)", flush=True)


def main() -> int:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(levelname)s [%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
    froggy_log = logging.getLogger("froggy")
    froggy_log.addHandler(handler)
    froggy_log.setLevel(logging.INFO)
    run(create_app())
    return 0


if __name__ == "__main__":
    sys.exit(main())
