"""Task backends, chosen by URL: ``memory://``, ``sqlite:///path``, ``redis://...``, ``postgresql://...``.

Each backend lives in its own module and imports its third-party library there, so using one backend never
requires another's; a missing library is named with the extra that installs it.
"""

from __future__ import annotations

from .base import MAX_LOST, Backend
from .urls import SCHEMES, backend_from_url, hide_password

__all__ = ["MAX_LOST", "SCHEMES", "Backend", "backend_from_url", "hide_password"]
