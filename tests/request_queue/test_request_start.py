"""X-Request-Start / X-Queue-Start parsing: every unit in use, and nothing malformed ever raises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_queue.request_queue.request_start import parse_request_start, upstream_wait

NOW = 1_700_000_000.0  # a fixed "now" so no test depends on the clock


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("1699999999750", 1_699_999_999.75, id="heroku-ms"),
        pytest.param("t=1699999999.750", 1_699_999_999.75, id="nginx-sec.msec"),
        pytest.param("t=1699999999750000", 1_699_999_999.75, id="apache-usec"),
        pytest.param("1699999999750000000", 1_699_999_999.75, id="ns"),
        pytest.param("1699999999", 1_699_999_999.0, id="plain-seconds"),
        pytest.param("  t=1699999999.750 ", 1_699_999_999.75, id="surrounding-space"),
    ],
)
def test_units_are_told_by_plausibility(value: str, expected: float) -> None:
    started = parse_request_start(value)
    assert started == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "t=",
        "abc",
        "-1699999999750",
        "1.7e12",
        "nan",
        "inf",
        "1_699_999_999_750",
        "0x10",
        "1699999999.75.1",
        "t=t=1699999999",
        "١٦٩٩٩٩٩٩٩٩",  # Arabic-Indic digits: str.isdigit() accepts them, we must not
        "12345",  # before 2000 in every unit
        "0",
        "t=1699999999.",
    ],
)
def test_malformed_or_implausible_values_are_no_start(value: str) -> None:
    assert parse_request_start(value) is None


def test_upstream_wait_from_x_request_start() -> None:
    environ = {"HTTP_X_REQUEST_START": "t=1699999998.500"}
    assert upstream_wait(environ, now=NOW) == pytest.approx(1.5)


def test_x_queue_start_is_read_when_there_is_no_x_request_start() -> None:
    environ = {"HTTP_X_QUEUE_START": "1699999999000"}
    assert upstream_wait(environ, now=NOW) == pytest.approx(1.0)


def test_an_unparseable_x_request_start_falls_back_to_x_queue_start() -> None:
    environ = {"HTTP_X_REQUEST_START": "garbage", "HTTP_X_QUEUE_START": "1699999999000"}
    assert upstream_wait(environ, now=NOW) == pytest.approx(1.0)


def test_a_start_in_the_future_is_no_wait() -> None:
    assert upstream_wait({"HTTP_X_REQUEST_START": "1700000100000"}, now=NOW) == 0.0


def test_no_header_is_no_wait() -> None:
    assert upstream_wait({}, now=NOW) == 0.0


@given(st.text(max_size=40))
def test_any_text_parses_without_raising(value: str) -> None:
    started = parse_request_start(value)
    assert started is None or started >= 946_684_800.0
    wait = upstream_wait({"HTTP_X_REQUEST_START": value}, now=NOW)
    assert wait >= 0.0
