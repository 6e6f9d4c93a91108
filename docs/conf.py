"""Sphinx configuration: the API reference from the docstrings, and the guides in docs/*.md (``make docs``)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING

import blinker
from sphinx.errors import PycodeError
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

if TYPE_CHECKING:
    from sphinx.application import Sphinx
    from sphinx.environment import BuildEnvironment

# The package is installed (editable) into .venv by `make docs`; this also lets a bare sphinx-build find it.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src")))

import flask_queue

logger = logging.getLogger(__name__)

project = "Flask-Queue"
author = "Flask-Queue contributors"
copyright = "Flask-Queue contributors"
release = flask_queue.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",  # the docstrings use reST fields (``:param x:``), so no napoleon
    "myst_parser",  # the guides are Markdown
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Anchors for the guides' links to headings (``backends.md#operating-workers``, ``#sizing``).
myst_heading_anchors = 4

autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}
# Defaults as written (``environ=os.environ``), not as values: ``suspend_timeout``'s default would otherwise put
# the environment of the machine that builds the docs in the pages.
autodoc_preserve_defaults = True

html_theme = "alabaster"
html_title = f"Flask-Queue {release}"


# -- Constants ---------------------------------------------------------------------------------------------
# autodoc documents a module's constant only when that module's source has a ``#:`` comment for it, so the
# constants a package's ``__init__`` imports from a submodule (``flask_queue.request_queue.EXEMPT``) are never
# among its ``:members:``: the pages list them with ``autodata``. Given one, autodoc looks for the comment in
# the package and, finding none, shows the docstring of the value's type (``str``, ``dict``); this gives it the
# comment of the module that defines it instead, or no text when it has none.


def _modules() -> list[ModuleType]:
    return [m for n, m in list(sys.modules.items()) if n.split(".")[0] == "flask_queue" and m is not None]


def _comment_of_constant(
    app: Sphinx, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    if what != "data" or not name.startswith("flask_queue."):
        return
    attr = name.rpartition(".")[2]
    for module in _modules():
        if module.__dict__.get(attr, _MISSING) is not obj:
            continue
        try:
            comment = ModuleAnalyzer.for_module(module.__name__).find_attr_docs().get(("", attr))
        except PycodeError:
            continue
        if comment:
            lines[:] = list(comment)
            return
    lines.clear()


_MISSING = object()


# -- Overrides -----------------------------------------------------------------------------------------------
# A method that overrides one without a docstring of its own (the backends' implementations of the ``Backend``
# contract, ``JSONSerializer``'s of ``Serializer``, ``WSGIPlusWorker``'s of gunicorn's worker) would be shown
# with the docstring it inherits: it is documented once, at the class that defines the contract.


def _skip_undocumented_overrides(
    app: Sphinx, what: str, name: str, obj: object, skip: bool, options: object
) -> bool | None:
    function = getattr(obj, "__func__", obj)
    if what != "class" or skip or not inspect.isfunction(function) or function.__doc__:
        return None
    return function.__module__.split(".")[0] == "flask_queue" or None


# -- Every public name documented ----------------------------------------------------------------------------
# The modules whose whole ``__all__`` (for ``flask_queue.signals``, which has none: its signals) the reference
# documents, and the names each documents elsewhere. A name added to one of them and missing from the pages (a
# constant or signal not listed with ``autodata``, a class or function without a docstring) fails the build.
_API: dict[str, dict[str, str]] = {
    "flask_queue.signals": {},
    "flask_queue.request_queue": {},
    "flask_queue.tasks": {},
    "flask_queue.tasks.backends": {"Backend": "flask_queue.tasks.backends.base.Backend"},
    "flask_queue.tasks.backends.memory": {},
    "flask_queue.tasks.backends.sqlite": {},
    "flask_queue.tasks.backends.redis": {},
    "flask_queue.tasks.backends.postgres": {},
    "flask_queue.tasks.testing": {"capture_on_commit": "flask_queue.commit_hooks.capture_on_commit"},
    "flask_queue.commit_hooks": {},
    "flask_queue.wsgiplus": {},
    "flask_queue.wsgiplus.gunicorn": {},
    "flask_queue.dashboard": {},
    "flask_queue.dashboard.metrics": {},
}


def _check_api_documented(app: Sphinx, env: BuildEnvironment) -> None:
    documented = {name for name, *_ in env.get_domain("py").get_objects()}
    for module_name, elsewhere in _API.items():
        module = importlib.import_module(module_name)
        names = getattr(module, "__all__", None)
        if names is None:
            names = [name for name, value in vars(module).items() if isinstance(value, blinker.Signal)]
        for name in names:
            full_name = elsewhere.get(name, f"{module_name}.{name}")
            if full_name not in documented:
                logger.warning("%s.%s is public but not in the API reference", module_name, name)


def setup(app: Sphinx) -> None:
    app.connect("autodoc-process-docstring", _comment_of_constant)
    app.connect("autodoc-skip-member", _skip_undocumented_overrides)
    app.connect("env-check-consistency", _check_api_documented)
