"""The setting validators of every capability: one wording, one error type.

Each takes the setting's name as the user wrote it (``"TASK_QUEUE_LEASE"``, ``"lane 'reports': concurrency"``,
``"mail.send: retries"``), the value, and what is allowed; it returns the value (as ``float`` for a number)
or raises ``ConfigurationError`` (a ``ValueError``) that says ``<setting> must be <what>, not <value>``, so
that a mistake reads the same wherever it is made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from .exceptions import ConfigurationError

__all__ = ["choice", "fail", "flag", "function", "integer", "number", "optional_number", "text", "url_path"]

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


def function(setting: str, value: C | None, *, what: str = "a callable or None") -> C | None:
    """``None`` or a callable."""
    if value is not None and not callable(value):
        raise fail(setting, what, value)
    return value


def url_path(setting: str, value: object, *, example: str) -> str:
    """A URL path: a ``str`` that starts with ``/``."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise fail(setting, f"a path such as {example!r}", value)
    return value


def choice(setting: str, value: str, choices: Collection[str], *, hint: str = "") -> str:
    """One of ``choices``."""
    if value not in choices:
        raise fail(setting, f"one of {', '.join(choices)}", value, hint)
    return value
