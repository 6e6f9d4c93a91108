"""The errors Flask-Queue raises.

::

    FlaskQueueError
     +-- ConfigurationError (also a ValueError): a setting is invalid; raised at set-up, naming the setting
"""

from __future__ import annotations


class FlaskQueueError(Exception):
    """Base class of every error Flask-Queue raises on its own account."""


class ConfigurationError(FlaskQueueError, ValueError):
    """A setting is invalid. Raised at set-up time; the message names the setting and the value."""
