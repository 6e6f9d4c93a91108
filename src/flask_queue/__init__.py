"""Flask-Queue: every queue a Flask application needs around a request.

The request queue (admission control) is here today; the task queue, commit hooks and WSGI+ follow.
"""

from __future__ import annotations

from .admission import EXEMPT, RequestQueue, RequestQueueMiddleware
from .exceptions import ConfigurationError, FlaskQueueError

__version__ = "0.1.0.dev0"

__all__ = [
    "EXEMPT",
    "ConfigurationError",
    "FlaskQueueError",
    "RequestQueue",
    "RequestQueueMiddleware",
    "__version__",
]
