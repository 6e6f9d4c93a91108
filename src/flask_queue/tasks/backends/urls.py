"""``backend_from_url``: the backend a ``TASK_QUEUE_BACKEND`` URL names, and the extra it needs."""

from __future__ import annotations

import os
from pathlib import Path

from ...exceptions import ConfigurationError
from .base import Backend, hide_secrets

__all__ = ["SCHEMES", "backend_from_url", "hide_password"]

#: Schemes understood, and the extra each needs (``None``: nothing to install).
SCHEMES = {
    "memory": None,
    "sqlite": None,
    "redis": "redis",
    "rediss": "redis",
    "postgresql": "postgres",
    "postgres": "postgres",
}


def backend_from_url(url: str, *, base_dir: str | os.PathLike[str] | None = None) -> Backend:
    """The backend a URL names. A relative SQLite path is taken from ``base_dir`` (the app's instance folder).

    Raises ``ConfigurationError`` for a URL this version cannot use, naming the schemes it can.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"TASK_QUEUE_BACKEND must be a URL string, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()  # schemes are case-insensitive (RFC 3986); the backends parse the URL again
    url = f"{scheme}{sep}{rest}" if sep else url
    if not sep:
        raise ConfigurationError(
            f"TASK_QUEUE_BACKEND={hide_password(url)!r} is not a URL; use one of: {_supported()}"
        )
    if scheme == "memory":
        from .memory import MemoryBackend

        return MemoryBackend(url)
    if scheme == "sqlite":
        from .sqlite import SQLiteBackend

        path = rest[1:] if rest.startswith("/") else rest
        if not path or path == ":memory:":
            raise ConfigurationError(
                f"TASK_QUEUE_BACKEND={url!r} names no file: give sqlite:///relative/path or sqlite:////absolute"
                " (for a queue that lives only in this process, use memory://)"
            )
        file = Path(path)
        if not file.is_absolute():
            file = Path(base_dir or os.getcwd()) / file
        return SQLiteBackend(file)
    if scheme in ("redis", "rediss"):
        try:
            from .redis import RedisBackend
        except ImportError as exc:
            raise _missing(url, scheme, exc) from exc
        return RedisBackend(url)
    if scheme in ("postgresql", "postgres"):
        try:
            from .postgres import PostgresBackend
        except ImportError as exc:
            raise _missing(url, scheme, exc) from exc
        return PostgresBackend(url)
    raise ConfigurationError(
        f"TASK_QUEUE_BACKEND={hide_password(url)!r}: unknown scheme {scheme!r}; use one of: {_supported()}"
    )


def _supported() -> str:
    return ", ".join(
        f"{scheme}://" + (f" (pip install 'flask-queue[{extra}]')" if extra else "")
        for scheme, extra in SCHEMES.items()
    )


def _missing(url: str, scheme: str, exc: ImportError) -> ConfigurationError:
    return ConfigurationError(
        f"TASK_QUEUE_BACKEND={hide_password(url)!r} needs {exc.name or 'a library'} which is not installed:"
        f" pip install 'flask-queue[{SCHEMES[scheme]}]'"
    )


def hide_password(url: str) -> str:
    """The URL with its passwords replaced by ``***``, for messages and pages: the one before the ``@`` and
    any given as a query parameter (``?password=``, ``?sslpassword=``)."""
    return hide_secrets(url)[0]
