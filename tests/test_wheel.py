"""The distributions built from this tree: the wheel installs into a venv of its own, away from the tree, and
serves the dashboard's page with its templates and static files; both carry the license.

The build runs setuptools' PEP 517 hooks in this venv (no build isolation: nothing to download, and the dev
extra holds the setuptools that ``[build-system]`` asks for) on a copy of the files a distribution is made
from, so that nothing is written into the tree. The venv gets the wheel and its dependency, Flask, through
pip (its cache, or the index), and runs the app with ``-I``: neither the tree nor ``PYTHONPATH`` on its path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Seconds for a build, the install (a download of Flask at worst) and the app's run.
TIMEOUT = 300

#: Run by the venv's Python: one GET of the dashboard and of each static file its page links to.
APP = """
import json, re, sys
from flask import Flask
import flask_queue
from flask_queue import Dashboard, RequestQueue, TaskQueue

app = Flask("wheel_check")
RequestQueue(app, concurrency=2)
TaskQueue(app, backend="memory://", workers=0)
Dashboard(app, authorize=lambda: True)
client = app.test_client()
page = client.get("/queue/")
html = page.get_data(as_text=True)
static = {}
for url in sorted(set(re.findall(r'(?:href|src)="(/queue/static/[^"]+)"', html))):
    with client.get(url) as response:
        static[url] = [response.status_code, response.mimetype, len(response.get_data())]
found = {"module": flask_queue.__file__, "path": sys.path, "status": page.status_code, "static": static}
json.dump({**found, "title": "<title>" in html}, sys.stdout)
"""


def _run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel and the sdist, built from a copy of pyproject.toml, README.md, LICENSE and src/."""
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("dist")
    hooks = (  # as a build frontend calls them (the first one rewrites sys.argv: read it before)
        "import sys\n"
        "from setuptools import build_meta\n"
        "out = sys.argv[1]\n"
        "build_meta.build_wheel(out)\n"
        "build_meta.build_sdist(out)\n"
    )
    _run([sys.executable, "-c", hooks, str(out)], cwd=tree)
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_both_distributions_carry_the_license(dists: dict[str, Path]) -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert "BSD 3-Clause License" in license_text
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        (in_wheel,) = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert wheel.read(in_wheel).decode() == license_text
        (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        metadata_text = wheel.read(metadata).decode()
        assert "License-Expression: BSD-3-Clause" in metadata_text
        assert "License-File: LICENSE" in metadata_text
    with tarfile.open(dists["sdist"]) as sdist:
        names = sdist.getnames()
        assert any(n.endswith("/LICENSE") and n.count("/") == 1 for n in names), names


def test_the_wheel_carries_the_dashboard_s_templates_and_static_files(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = set(wheel.namelist())
    dashboard = ROOT / "src" / "flask_queue" / "dashboard"
    wanted = {
        path.relative_to(ROOT / "src").as_posix()
        for folder in ("templates", "static")
        for path in (dashboard / folder).rglob("*")
        if path.is_file()
    }
    assert wanted, "no templates or static files in the tree"
    assert wanted <= names, sorted(wanted - names)
    assert "flask_queue/py.typed" in names


def test_the_installed_wheel_serves_the_dashboard_page_and_its_static_files(
    dists: dict[str, Path], tmp_path: Path
) -> None:
    env = tmp_path / "venv"
    # No pip in it: this venv's pip installs there (``pip --python``), which saves installing one.
    venv.create(env, with_pip=False, symlinks=True)
    python = env / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    _run([*pip, "install", "--quiet", str(dists["wheel"])], cwd=tmp_path)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run(
        [str(python), "-I", "-c", APP],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    served = json.loads(done.stdout)

    assert Path(served["module"]).is_relative_to(env), served["module"]
    assert not any(Path(p).resolve().is_relative_to(ROOT) for p in served["path"] if p), served["path"]
    assert served["status"] == 200
    assert served["title"]
    static = served["static"]
    assert {url.rsplit("/", 1)[1] for url in static} >= {"dashboard.css", "dashboard.js"}, static
    for url, (status, mimetype, size) in static.items():
        assert status == 200, url
        assert size > 0, url
        if url.endswith(".css"):
            assert mimetype == "text/css"
        elif url.endswith(".js"):
            assert mimetype in ("text/javascript", "application/javascript")
