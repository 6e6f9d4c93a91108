"""Job records for the backend tests: every field a backend needs, any of them overridden by keyword."""

from __future__ import annotations

import time
import uuid
from typing import Any

from flask_queue.tasks import JobRecord


def record(**fields: Any) -> JobRecord:
    """A new job's record, ready now in the ``default`` queue unless ``fields`` say otherwise."""
    fields.setdefault("id", uuid.uuid4().hex)
    fields.setdefault("task", "tests.noop")
    fields.setdefault("queue", "default")
    fields.setdefault("payload", '{"args":[],"kwargs":{}}')
    now = time.time()
    fields.setdefault("eta", now)
    fields.setdefault("enqueued_at", now)
    return JobRecord(**fields)
