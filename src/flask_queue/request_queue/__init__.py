"""The request queue: admission control in front of a WSGI application. See ``docs/request-queue.md``.

``RequestQueueMiddleware`` protects any WSGI application; ``RequestQueue`` is the Flask extension, with
lanes per endpoint, exempt views and priority classes.
"""

from __future__ import annotations

from .extension import ReleasingClient, RequestQueue
from .lane import REASONS, Lane
from .middleware import DEFAULT_LANE, EXEMPT, Classifier, LaneSelector, RejectResponse, RequestQueueMiddleware
from .request_start import parse_request_start, upstream_wait

__all__ = [
    "DEFAULT_LANE",
    "EXEMPT",
    "REASONS",
    "Classifier",
    "Lane",
    "LaneSelector",
    "RejectResponse",
    "ReleasingClient",
    "RequestQueue",
    "RequestQueueMiddleware",
    "parse_request_start",
    "upstream_wait",
]
