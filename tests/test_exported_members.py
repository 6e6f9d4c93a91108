"""The public surface is deliberate: __all__ names exactly what the package exports."""

from __future__ import annotations
import __future__

import flask_queue


def test_all_matches_the_public_names() -> None:
    public = {name for name in dir(flask_queue) if not name.startswith("_") or name == "__version__"}
    incidental = {
        name
        for name in public
        if type(getattr(flask_queue, name)).__name__ == "module"
        or isinstance(getattr(flask_queue, name), __future__._Feature)
    }
    assert set(flask_queue.__all__) == public - incidental


def test_every_exported_name_resolves() -> None:
    for name in flask_queue.__all__:
        assert getattr(flask_queue, name) is not None


def test_the_dashboard_is_exported_from_its_package() -> None:
    from flask_queue.dashboard import Dashboard

    assert flask_queue.Dashboard is Dashboard
    assert "Dashboard" in flask_queue.__all__
