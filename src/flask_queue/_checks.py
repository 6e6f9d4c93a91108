"""The setting validators of every capability: one wording, one error type.

Each takes the setting's name as the user wrote it (``"TASK_QUEUE_LEASE"``, ``"lane 'reports': concurrency"``,
``"mail.send: retries"``), the value, and what is allowed; it returns the value (as ``float`` for a number)
or raises ``ConfigurationError`` (a ``ValueError``) that says ``<setting> must be <what>, not <value>``, so
that a mistake reads the same wherever it is made.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import warnings
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .exceptions import ConfigurationError, ConfigurationWarning

if TYPE_CHECKING:
    from flask import Flask

__all__ = [
    "changed_settings",
    "choice",
    "fail",
    "flag",
    "flask_app",
    "function",
    "integer",
    "name",
    "number",
    "optional_number",
    "text",
    "unknown_settings",
    "url_path",
]

C = TypeVar("C", bound=Callable[..., Any])


def fail(setting: str, what: str, value: object, hint: str = "") -> ConfigurationError:
    """The error that says ``<setting> must be <what>, not <value><hint>``, for a check of one's own."""
    return ConfigurationError(f"{setting} must be {what}, not {value!r}{hint}")


def integer(
    setting: str,
    value: object,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    what: str | None = None,
    hint: str = "",
) -> int:
    """An ``int`` (never a ``bool``) within ``[minimum, maximum]``; ``what`` says so in other words."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        if what is not None:
            pass
        elif minimum is not None and maximum is not None:
            what = f"an integer from {minimum} to {maximum}"
        elif minimum is not None:
            what = f"an integer >= {minimum}"
        elif maximum is not None:
            what = f"an integer <= {maximum}"
        else:
            what = "an integer"
        raise fail(setting, what, value, hint)
    return value


def number(
    setting: str, value: object, *, minimum: float = 0.0, strict: bool = False, hint: str = ""
) -> float:
    """A finite ``int`` or ``float`` (never a ``bool``) ``>= minimum`` (``> minimum`` when ``strict``)."""
    checked = _number(setting, value, minimum, strict, hint, none=False)
    assert checked is not None
    return checked


def optional_number(
    setting: str, value: object, *, minimum: float = 0.0, strict: bool = False, hint: str = ""
) -> float | None:
    """``None``, or a number as ``number`` checks it."""
    return _number(setting, value, minimum, strict, hint, none=True)


def _number(
    setting: str, value: object, minimum: float, strict: bool, hint: str, *, none: bool
) -> float | None:
    if value is None and none:
        return None
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if is_number and (value > minimum or (value == minimum and not strict)):  # type: ignore[operator]
        return float(value)  # type: ignore[arg-type]
    what = f"a number {'>' if strict else '>='} {minimum:g}{' or None' if none else ''}"
    raise fail(setting, what, value, hint)


def flag(setting: str, value: object) -> bool:
    """``True`` or ``False`` (not a truthy string: ``"no"`` is a mistake, not a yes)."""
    if not isinstance(value, bool):
        raise fail(setting, "True or False", value)
    return value


def text(setting: str, value: object, *, what: str = "a non-empty string", hint: str = "") -> str:
    """A non-empty ``str``; ``what`` says what it stands for."""
    if not isinstance(value, str) or not value:
        raise fail(setting, what, value, hint)
    return value


def name(setting: str, value: object) -> str:
    """A name every backend stores as it is: a non-empty ``str`` with no control character (PostgreSQL's text
    refuses NUL) and no lone surrogate (no UTF-8 text can hold one)."""
    text(setting, value)
    assert isinstance(value, str)
    if not value.isprintable() and any(ord(char) < 32 or 0xD800 <= ord(char) <= 0xDFFF for char in value):
        raise fail(setting, "a name without control characters or lone surrogates", value)
    return value


def flask_app(extension: str, app: object, *, hint: str = "") -> None:
    """Raise ``TypeError`` unless ``app`` is a Flask app: ``init_app`` got something else (its
    ``wsgi_app``, a config URL passed first by mistake, the module)."""
    from flask.sansio.app import App

    if not isinstance(app, App):
        raise TypeError(
            f"{extension}(app) and {extension}.init_app(app) take a Flask app, not {type(app).__name__}"
            f" {app!r}{hint}"
        )


def function(
    setting: str, value: C | None, *, what: str = "a callable or None", no_argument: bool = False
) -> C | None:
    """``None`` or a callable (one that can be called with no argument, with ``no_argument``)."""
    if value is not None and not callable(value):
        raise fail(setting, what, value)
    if value is not None and no_argument:
        try:
            inspect.signature(value).bind()
        except TypeError:
            raise fail(setting, what, value, " (it is called with no argument)") from None
        except ValueError:  # a builtin without a signature: it will tell when called
            pass
    return value


# Segments of the characters a URL path may hold unescaped (RFC 3986 ``pchar``, less ``%``), each non-empty; a
# trailing slash is allowed. No ``<`` (Flask would read a converter), ``?``, ``#`` or space, and no ``//``,
# which a browser reads as another host.
_ROUTE_PATH = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]+)*/?")


def url_path(setting: str, value: object, *, example: str) -> str:
    """A URL path to serve at: ``/`` and segments of plain characters, such as ``example``."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise fail(setting, f"a path such as {example!r}", value)
    if not _ROUTE_PATH.fullmatch(value):
        raise fail(
            setting,
            f"a path such as {example!r} (segments of letters, digits and -._~!$&'()*+,;=:@ between single"
            " slashes)",
            value,
        )
    return value


def choice(setting: str, value: str, choices: Collection[str], *, hint: str = "") -> str:
    """One of ``choices``."""
    if value not in choices:
        raise fail(setting, f"one of {', '.join(choices)}", value, hint)
    return value


# -- config keys: misspelt, or changed too late -------------------------------------------------------------

#: The keys each app was warned about already: a warning is worth showing once.
_warned: weakref.WeakKeyDictionary[Flask, set[str]] = weakref.WeakKeyDictionary()


def _warn_once(app: Flask, key: str, message: str) -> None:
    seen = _warned.setdefault(app, set())
    if key not in seen:
        seen.add(key)
        warnings.warn(message, ConfigurationWarning, stacklevel=4)


def unknown_settings(app: Flask, prefix: str, names: Collection[str]) -> None:
    """Warn about each key of ``app.config`` that starts with ``prefix`` but is no setting: a misspelling is
    ignored, which is worse than an error, so the warning names the nearest real key."""
    known = {f"{prefix}{name.upper()}" for name in names}
    for key in list(app.config):
        if isinstance(key, str) and key.startswith(prefix) and key not in known:
            nearest = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = (
                f"did you mean {nearest[0]}?" if nearest else f"the settings are {', '.join(sorted(known))}"
            )
            _warn_once(app, key, f"{key} is not a Flask-Queue setting, so it is ignored: {hint}")


def changed_settings(app: Flask, read: Mapping[str, object], *, since: str) -> None:
    """Warn about each key of ``read`` (the config keys and the values ``init_app`` took) that ``app.config``
    now holds with another value: the change does nothing, since the settings were read once."""
    for key, value in read.items():
        now = app.config.get(key, value)
        if now is not value and now != value:
            _warn_once(
                app,
                key,
                f"{key} was changed after {since} read it ({value!r} -> {now!r}), so the change is ignored:"
                f" set it before {since} (in the app factory, before the extension's init_app)",
            )
