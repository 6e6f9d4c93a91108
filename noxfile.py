"""The version matrix (DESIGN.md, section 6): nox sessions, each in a venv of its own under ``.nox/``.

- ``tests-3.10`` ... ``tests-3.13``: the whole suite on each Python, on the newest dependencies;
- ``oldest``: the whole suite and mypy on the oldest Python and the oldest version of every dependency that
  ``pyproject.toml`` allows (``OLDEST``);
- ``wsgiplus(27.0)``: the WSGI+ suite on each gunicorn minor the worker claims (``GUNICORNS``);
- ``gunicorn_floor(26.2)``, ``gunicorn_floor(23.0)``: a gunicorn below the floor: the server refuses to start
  with an error that names the supported range, and the WSGI+ tests skip, with that reason, instead of failing.

``make matrix`` runs them all, ``make oldest`` the one CI runs besides ``make test``; ``.venv/bin/nox -l`` lists
them, ``.venv/bin/nox -s tests-3.12 -- tests/tasks -x`` passes pytest arguments. Environment variables reach
the tests as under ``make test`` (``CI``, ``FLASK_QUEUE_TEST_*_URL``).

nox finds ``python3.12`` and the like on ``PATH``; pyenv's shims answer only for the versions pyenv has
selected, so the interpreters are looked up here (``PYENV_ROOT``'s versions, then ``PATH``, each one run to
check that it is the version it claims) and linked into ``.nox/_python``, which goes first on ``PATH``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
#: The oldest release of each dependency that pyproject.toml allows, and of what src imports through Flask
#: (click, blinker: the floors Flask 3.0.0 declares). flask-sqlalchemy 3.1.0 asks for SQLAlchemy 2.0.16, so
#: the suite runs on that, and the tests that use SQLAlchemy on 2.0.0 after it (``SQLALCHEMY_FLOOR``).
OLDEST = [
    "flask==3.0.0",
    "cronsim==2.7",
    "werkzeug==3.0.0",
    "click==8.1.3",
    "blinker==1.6.2",
    "jinja2==3.1.2",
    "itsdangerous==2.1.2",
    "sqlalchemy[asyncio]==2.0.16",
    "flask-sqlalchemy==3.1.0",
    "redis==5.0.0",
    "psycopg[binary]==3.1.0",
    "prometheus_client==0.20.0",
    "gunicorn==27.0.0",
    "uvloop==0.19.0",
]
SQLALCHEMY_FLOOR = "sqlalchemy[asyncio]==2.0.0"
SQLALCHEMY_TESTS = [
    "tests/commit_hooks",
    "tests/tasks/test_on_commit.py",
    "tests/tasks/test_outbox.py",
    "tests/tasks/test_postgres.py",
    "tests/tasks/test_testing_helpers.py",
    "tests/test_examples.py",
]
#: Every gunicorn minor the WSGI+ worker claims (``gunicorn>=27`` in pyproject.toml): add each new one.
GUNICORNS = ["27.0"]
#: Releases below the floor: 26.2 must refuse to start; 23.0 (no ``PollableMethodQueue``) cannot import the
#: worker, and the WSGI+ tests that need it skip.
BELOW_FLOOR = ["26.2", "23.0"]
FLOOR = "gunicorn>=27"

nox.options.envdir = str(ROOT / ".nox")
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True
nox.options.download_python = "never"  # no network but the package index here: a missing Python is an error
nox.options.sessions = ["tests", "oldest", "wsgiplus", "gunicorn_floor"]


def _version_of(executable: str) -> str | None:
    try:
        done = subprocess.run(
            [executable, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _candidates(version: str) -> list[str]:
    """Where Python ``version`` may be: pyenv's builds of it (newest patch first), then ``PATH`` and /usr."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"

    def patch(path: Path) -> int:
        match = re.fullmatch(rf"{re.escape(version)}\.(\d+)", path.name)
        return int(match.group(1)) if match else -1

    builds = sorted((p for p in pyenv.glob(f"{version}.*") if patch(p) >= 0), key=patch, reverse=True)
    found = [str(p / "bin" / f"python{version}") for p in builds]
    found += filter(None, [shutil.which(f"python{version}")])
    found += [f"/usr/local/bin/python{version}", f"/usr/bin/python{version}"]
    return found


def _link_interpreters() -> None:
    """Link each Python of ``PYTHONS`` into .nox/_python and put it first on PATH; warn of the missing ones."""
    links = ROOT / ".nox" / "_python"
    links.mkdir(parents=True, exist_ok=True)
    (links / ".gitignore").write_text("*\n")
    for version in PYTHONS:
        link = links / f"python{version}"
        found = next(
            (c for c in _candidates(version) if Path(c).exists() and _version_of(c) == version), None
        )
        if link.is_symlink() or link.exists():
            link.unlink()
        if found is None:
            pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
            looked = ", ".join([f"{pyenv}/{version}.*/bin/python{version}", *_candidates(version)])
            print(
                f"noxfile: Python {version} not found (looked for {looked}); its sessions fail with"
                f" 'Python interpreter {version} not found': install it (pyenv install {version})"
                f" or put python{version} on PATH",
                file=sys.stderr,
            )
            continue
        link.symlink_to(found)
    os.environ["PATH"] = os.pathsep.join([str(links), os.environ.get("PATH", "")])


_link_interpreters()


def _pytest(session: nox.Session, *args: str) -> None:
    session.run("python", "-m", "pytest", *args, *session.posargs)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite on the newest release of every dependency."""
    session.install("--upgrade", "--upgrade-strategy", "eager", "-e", ".[dev]")
    _pytest(session)


@nox.session(python=PYTHONS[0])
def oldest(session: nox.Session) -> None:
    """The suite and mypy on the oldest Python and dependencies allowed; the SQLAlchemy tests on 2.0.0."""
    session.install("-e", ".[dev]", *OLDEST)
    session.run("python", "-m", "pip", "check")
    session.run("python", "-m", "pip", "list", "--format=freeze")
    session.run("mypy")
    _pytest(session)
    # pip says that flask-sqlalchemy 3.1.0 wants more, and installs it anyway.
    session.install(SQLALCHEMY_FLOOR)
    _pytest(session, *SQLALCHEMY_TESTS)


@nox.session(python=PYTHONS[-1])
@nox.parametrize("gunicorn", [nox.param(v, id=v) for v in GUNICORNS])
def wsgiplus(session: nox.Session, gunicorn: str) -> None:
    """The WSGI+ suite (and the worker's import path) on one gunicorn minor, its newest patch."""
    session.install("--upgrade", "-e", ".[dev]", f"gunicorn=={gunicorn}.*")
    _pytest(session, "tests/wsgiplus", "tests/test_exported_members.py")


# Run in the session's venv, with the floor as its argument: gunicorn with the WSGI+ worker must exit at once
# (never serve), with an error that names the supported range.
_REFUSAL = """
import subprocess, sys, gunicorn
floor = sys.argv[1]
# The app is never loaded: the arbiter checks the worker class before it forks a worker.
command = [sys.executable, "-m", "gunicorn", "-k", "flask_queue.gunicorn.WSGIPlusWorker", "-b", "127.0.0.1:0"]
usage = subprocess.run([sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True).stdout
if "--no-control-socket" in usage:
    command.append("--no-control-socket")
try:
    done = subprocess.run([*command, "flask_queue:__all__"], capture_output=True, text=True, timeout=60)
except subprocess.TimeoutExpired:
    sys.exit(f"gunicorn {gunicorn.__version__} started the WSGI+ worker instead of refusing to")
print(done.stdout + done.stderr)
if done.returncode == 0 or floor not in done.stdout + done.stderr:
    sys.exit(f"gunicorn {gunicorn.__version__}: exit status {done.returncode}, and the error must name {floor}")
print(f"gunicorn {gunicorn.__version__} refused the worker (exit status {done.returncode}), naming {floor}")
"""


@nox.session(python=PYTHONS[-1])
@nox.parametrize("gunicorn", [nox.param(v, id=v) for v in BELOW_FLOOR])
def gunicorn_floor(session: nox.Session, gunicorn: str) -> None:
    """A gunicorn below the floor: the server refuses the worker, naming the range; the WSGI+ tests skip."""
    session.install("-e", ".[dev]")
    # After the project, which asks for gunicorn>=27: pip says that they disagree, and installs it anyway.
    session.install(f"gunicorn=={gunicorn}.*")
    session.run("python", "-c", _REFUSAL, FLOOR)
    _pytest(session, "tests/wsgiplus", "-rs")
