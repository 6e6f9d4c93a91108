"""Without SQLAlchemy, importing the module says which extra to install."""

from __future__ import annotations

import subprocess
import sys


def test_importing_without_sqlalchemy_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['sqlalchemy'] = None  # as if it were not installed\n"
        "try:\n"
        "    import flask_queue.commit_hooks\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    print('imported')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install flask-queue[sqlalchemy]" in result.stdout


def test_the_public_names() -> None:
    import flask_queue.commit_hooks as module

    assert module.__all__ == ["capture_on_commit", "on_commit", "resolve_session"]
