"""Parse ``X-Request-Start`` / ``X-Queue-Start``: how long a request waited before the app saw it.

Routers stamp the time a request reached them in one of several units:

=================  ===========================  ======================
who                header value                 unit
=================  ===========================  ======================
Heroku             ``1700000000123``            milliseconds
nginx ``$msec``    ``t=1700000000.123``         seconds (fractional)
Apache ``%t``      ``t=1700000000123456``       microseconds
Render and others  ``1700000000123456789``      nanoseconds
=================  ===========================  ======================

The unit is told by plausibility, as Judoscale and New Relic do: the value is read in the unit that puts it
after 2000-01-01. A value that is not a plain non-negative number after an optional ``t=``, that is before
2000 in every unit, or that lies in the future reads as no upstream wait at all. Parsing never raises.
"""

from __future__ import annotations

import time

from .._types import WSGIEnvironment

_EPOCH_2000 = 946_684_800.0  # 2000-01-01T00:00:00Z in Unix seconds
# (divisor to seconds, smallest plausible raw value in that unit), largest unit first.
_UNITS = (
    (1e9, _EPOCH_2000 * 1e9),  # nanoseconds
    (1e6, _EPOCH_2000 * 1e6),  # microseconds
    (1e3, _EPOCH_2000 * 1e3),  # milliseconds
    (1.0, _EPOCH_2000),  # seconds
)
_HEADERS = ("HTTP_X_REQUEST_START", "HTTP_X_QUEUE_START")


def parse_request_start(value: str) -> float | None:
    """Return the Unix time (seconds) a header value stands for, or ``None`` when it is not plausible."""
    text = value.strip()
    if text[:2] == "t=":
        text = text[2:]
    # Only plain decimal numbers: float() would also take "nan", "1e12", "-5", " 12", "1_000".
    whole, dot, fraction = text.partition(".")
    if not whole.isdigit() or not whole.isascii():
        return None
    if dot and not (fraction.isdigit() and fraction.isascii()):
        return None
    raw = float(text)
    for divisor, smallest in _UNITS:
        if raw >= smallest:
            return raw / divisor
    return None


def upstream_wait(environ: WSGIEnvironment, now: float | None = None) -> float:
    """Seconds the request waited upstream, from the first plausible start header; 0.0 when none.

    ``now`` is the current Unix time (``time.time()`` when not given). A start time in the future counts as
    no wait: clocks drift, and a router's clock ahead of ours must not reject anything.
    """
    for key in _HEADERS:
        value = environ.get(key)
        if value:
            started = parse_request_start(value)
            if started is not None:
                waited = (time.time() if now is None else now) - started
                return waited if waited > 0.0 else 0.0
    return 0.0
