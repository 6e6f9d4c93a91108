"""Regression tests of set-up errors: each names the setting (and the lane) that is wrong. Each failed before its fix."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_queue import ConfigurationError, RequestQueue, RequestQueueMiddleware
from tests._wsgi import hello

# -- set-up errors ------------------------------------------------------------------------------------------


def test_a_classify_from_config_that_is_not_callable_raises_at_set_up(app: Flask) -> None:
    app.config["REQUEST_QUEUE_CLASSIFY"] = "myapp.queueing:classify"
    with pytest.raises(ConfigurationError, match="classify must be a callable"):
        RequestQueue(app)


def test_a_typo_in_a_lanes_limits_names_the_lane_and_the_limit() -> None:
    with pytest.raises(ConfigurationError, match=r"lane 'slow': unknown limit 'concurency'"):
        RequestQueueMiddleware(hello, lanes={"slow": {"concurency": 1}})


def test_an_invalid_lane_limit_names_the_lane(app: Flask) -> None:
    with pytest.raises(ConfigurationError, match=r"lane 'slow': concurrency"):
        RequestQueueMiddleware(hello, lanes={"slow": {"concurrency": 0}})
    with pytest.raises(ConfigurationError, match=r"lane 'reports': queue_timeout"):
        RequestQueue(app).lane("reports", queue_timeout=0)
