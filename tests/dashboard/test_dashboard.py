"""The dashboard through the test client: pages, JSON, actions, authorization, CSRF and bad input."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from flask import Flask

from flask_queue import ConfigurationError, Dashboard, JobStatus, RequestQueue
from flask_queue.tasks import WorkerInfo

from .conftest import MakeSite, Site, csrf_token

PAGES = ("/queue/", "/queue/jobs", "/queue/api/stats", "/queue/api/jobs", "/queue/static/dashboard.js")


def stats(site: Site) -> dict[str, Any]:
    with site.client().get("/queue/api/stats") as response:
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-store"
        data: dict[str, Any] = response.get_json()
    return data


# -- what it shows -------------------------------------------------------------------------------------------


def test_the_overview_shows_lanes_task_queues_and_jobs(site: Site) -> None:
    site.ok.enqueue(1)
    site.ok.options(queue="mail").enqueue(2)
    site.boom.enqueue("disk full")
    site.tasks.drain()
    site.ok.enqueue(3)
    site.ok.enqueue_in(3600, 4)
    with site.client().get("/queue/") as response:
        assert response.status_code == 200
        assert response.mimetype == "text/html"
        csp = response.headers["Content-Security-Policy"]
        page = response.get_data(as_text=True)
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    for heading in ("Request lanes", "Task queues", "Workers", "Failed jobs", "Latest jobs", "Queue size"):
        assert heading in page
    assert 'id="tile-queued">1<' in page
    assert 'id="tile-scheduled">1<' in page
    assert 'id="tile-failed">1<' in page
    assert "ValueError: disk full" in page
    assert "site.ok(3)" in page
    # No inline script or style: the policy above would block them.
    assert not re.search(r"<script>|<style|style=", page)


def test_the_json_has_the_same_numbers(site: Site) -> None:
    site.ok.enqueue_many([((n,), {}) for n in range(3)])
    site.boom.enqueue("no")
    site.tasks.drain()
    site.ok.enqueue(9)
    data = stats(site)
    assert set(data) == {"time", "requests", "tasks"}
    lane = data["requests"]["default"]
    assert {"running", "waiting", "admitted", "rejected", "wait_ms", "service_ms", "limits"} <= set(lane)
    assert set(lane["wait_ms"]) == {"p50", "p95", "p99"}
    assert lane["limits"]["concurrency"] == 2
    tasks = data["tasks"]
    assert tasks["backend"].startswith("sqlite:///")
    assert tasks["queues"]["default"] == {
        "queued": 1,
        "scheduled": 0,
        "running": 0,
        "succeeded": 3,
        "failed": 1,
        "cancelled": 0,
    }
    assert tasks["totals"]["succeeded"] == 3
    assert [job["call"] for job in tasks["recent"]][:2] == ["site.ok(9)", 'site.boom("no")']
    (failed,) = tasks["failed"]
    assert (failed["status"], failed["error"], failed["attempts"]) == ("failed", "ValueError: no", 1)


def test_live_workers_are_listed(site: Site) -> None:
    now = time.time()
    info = WorkerInfo("box:42:abcd", "box", 42, ["mail"], 4, 1, 17, now - 60, now, 30.0)
    site.tasks.backend().beat(info)
    (worker,) = stats(site)["tasks"]["workers"]
    assert (worker["host"], worker["pid"], worker["queues"], worker["threads"], worker["processed"]) == (
        "box",
        42,
        ["mail"],
        4,
        17,
    )
    with site.client().get("/queue/") as response:
        page = response.get_data(as_text=True)
    assert "box<small>:42</small>" in page
    assert 'id="tile-workers">1<' in page


def test_the_job_list_pages_and_filters(site: Site) -> None:
    site.ok.enqueue_many([((n,), {}) for n in range(30)])
    site.ok.options(queue="mail").enqueue("x")
    client = site.client()
    with client.get("/queue/api/jobs") as response:
        first = response.get_json()
    assert (len(first["jobs"]), first["page"], first["has_next"]) == (25, 1, True)
    with client.get("/queue/api/jobs?page=2") as response:
        second = response.get_json()
    assert (len(second["jobs"]), second["has_next"]) == (6, False)
    assert {job["id"] for job in first["jobs"]}.isdisjoint(job["id"] for job in second["jobs"])
    with client.get("/queue/api/jobs?queue=mail") as response:
        assert [job["queue"] for job in response.get_json()["jobs"]] == ["mail"]
    with client.get("/queue/api/jobs?status=failed") as response:
        assert response.get_json()["jobs"] == []
    with client.get("/queue/jobs?page=2") as response:
        assert response.status_code == 200
        page = response.get_data(as_text=True)
    assert 'rel="prev"' in page
    assert 'rel="next"' not in page
    with client.get("/queue/jobs?page=99") as response:
        assert response.status_code == 200
        assert "No job here." in response.get_data(as_text=True)


def test_the_job_page_shows_the_call_error_and_traceback(site: Site) -> None:
    job = site.boom.enqueue("bad luck")
    site.tasks.drain()
    with site.client().get(f"/queue/jobs/{job.id}") as response:
        assert response.status_code == 200
        page = response.get_data(as_text=True)
    assert "site.boom(&#34;bad luck&#34;)" in page
    assert "ValueError: bad luck" in page
    assert "Traceback (most recent call last)" in page
    with site.client().get(f"/queue/api/jobs/{job.id}") as response:
        data = response.get_json()
    assert data["call"] == 'site.boom("bad luck")'
    assert "raise ValueError(message)" in data["traceback"]


def test_an_app_without_queues_has_an_empty_dashboard() -> None:
    app = Flask(__name__)
    Dashboard(app, authorize=lambda: True)
    client = app.test_client()
    with client.get("/queue/") as response:
        assert response.status_code == 200
        assert "neither a <code>RequestQueue</code> nor a <code>TaskQueue</code>" in response.get_data(
            as_text=True
        )
    with client.get("/queue/api/stats") as response:
        assert response.get_json()["tasks"] is None
    with client.get("/queue/api/jobs") as response:
        assert response.status_code == 404


def test_the_prefix_comes_from_the_config(make_site: MakeSite) -> None:
    site = make_site(url_prefix="/ops/queues")
    with site.client().get("/ops/queues/api/stats") as response:
        assert response.status_code == 200
    with site.client().get("/queue/api/stats") as response:
        assert response.status_code == 404
    app = Flask(__name__)
    app.config["QUEUE_DASHBOARD_URL_PREFIX"] = "/admin/q"
    Dashboard(app, authorize=lambda: True)
    with app.test_client().get("/admin/q/") as response:
        assert response.status_code == 200


def test_it_is_set_up_once_with_valid_settings() -> None:
    app = Flask(__name__)
    Dashboard(app)
    with pytest.raises(RuntimeError, match="already set up"):
        Dashboard(app)
    for settings in ({"url_prefix": "queue"}, {"authorize": True}, {"refresh": 0}, {"refresh": True}):
        with pytest.raises(ConfigurationError, match="QUEUE_DASHBOARD_"):
            Dashboard(Flask(__name__), **settings)
    with pytest.raises(TypeError, match="unexpected keyword argument 'prefix'"):
        Dashboard(Flask(__name__), prefix="/q")  # type: ignore[call-arg]


def test_the_request_queue_can_leave_it_out() -> None:
    app = Flask(__name__)
    queue = RequestQueue(app, concurrency=1, max_queue_size=0)
    Dashboard(app, authorize=lambda: True)
    queue.exempt(Dashboard.blueprint)
    held = app.test_client().get("/queue/api/stats")  # not closed yet: it would hold the only slot
    try:
        with app.test_client().get("/queue/") as response:
            assert response.status_code == 200
    finally:
        held.close()


# -- authorization --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PAGES)
def test_it_is_403_when_authorize_says_no(site: Site, path: str) -> None:
    site.allowed[0] = False
    with site.client().get(path) as response:
        assert response.status_code == 403
        assert "queued" not in response.get_data(as_text=True)


def test_authorize_is_asked_on_every_request(site: Site) -> None:
    client = site.client()
    for path in PAGES:
        client.get(path).close()
    assert site.asked == len(PAGES)


@pytest.mark.parametrize(
    ("debug", "remote_addr", "status"),
    [
        (False, "127.0.0.1", 403),
        (True, "10.0.0.7", 403),
        (True, "192.168.1.2", 403),
        (True, "127.0.0.1", 200),
        (True, "::1", 200),
        (True, "::ffff:127.0.0.1", 200),
    ],
)
def test_without_authorize_it_is_only_for_loopback_in_debug_mode(
    make_site: MakeSite, debug: bool, remote_addr: str, status: int
) -> None:
    site = make_site(authorize=None)
    site.app.debug = debug
    for path in PAGES:
        with site.client().get(path, environ_base={"REMOTE_ADDR": remote_addr}) as response:
            assert response.status_code == status, path


def test_a_refused_action_changes_nothing(site: Site) -> None:
    job = site.ok.enqueue(1)
    client = site.client()
    token = csrf_token(client)
    site.allowed[0] = False
    with client.post(f"/queue/jobs/{job.id}/cancel", data={"csrf_token": token}) as response:
        assert response.status_code == 403
    assert job.status is JobStatus.QUEUED


# -- actions and CSRF -----------------------------------------------------------------------------------------


def test_retry_queues_a_failed_job_again(site: Site) -> None:
    job = site.boom.enqueue("once")
    site.tasks.drain()
    assert job.status is JobStatus.FAILED
    client = site.client()
    token = csrf_token(client)
    with client.post(f"/queue/jobs/{job.id}/retry", data={"csrf_token": token}) as response:
        assert response.status_code == 303
        location = response.headers["Location"]
    assert location.endswith(f"/queue/jobs/{job.id}?done=retried")
    assert site.tasks.status(job.id) is JobStatus.QUEUED
    with client.get(location) as response:
        assert "Queued again" in response.get_data(as_text=True)


def test_cancel_a_waiting_job(site: Site) -> None:
    job = site.ok.enqueue_in(600, 1)
    client = site.client()
    token = csrf_token(client)
    with client.post(f"/queue/jobs/{job.id}/cancel", data={"csrf_token": token}) as response:
        assert response.status_code == 303
    assert job.status is JobStatus.CANCELLED


def test_an_action_that_does_not_apply_is_409(site: Site) -> None:
    job = site.ok.enqueue(1)
    site.tasks.drain()
    client = site.client()
    token = csrf_token(client)
    for action in ("retry", "cancel"):
        with client.post(f"/queue/jobs/{job.id}/{action}", data={"csrf_token": token}) as response:
            assert response.status_code == 409
            assert "Only a" in response.get_data(as_text=True)
    assert job.status is JobStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("send", "headers"),
    [
        ("none", {}),
        ("wrong", {}),
        ("empty", {}),
        ("unicode", {}),
        ("right", {"Origin": "https://evil.example"}),
        ("right", {"Origin": "null"}),
        ("right", {"Referer": "http://evil.example/page"}),
    ],
)
def test_an_action_without_the_right_token_is_400_and_changes_nothing(
    site: Site, send: str, headers: dict[str, str]
) -> None:
    job = site.ok.enqueue(1)
    client = site.client()
    token = csrf_token(client)
    wrong = {
        "none": {},
        "wrong": {"csrf_token": "x" * len(token)},
        "empty": {"csrf_token": ""},
        "unicode": {"csrf_token": "é" * len(token)},
    }
    data = wrong.get(send, {"csrf_token": token})
    with client.post(f"/queue/jobs/{job.id}/cancel", data=data, headers=headers) as response:
        assert response.status_code == 400
        assert "CSRF" in response.get_data(as_text=True)
    assert job.status is JobStatus.QUEUED


def test_a_token_without_its_cookie_is_400(site: Site) -> None:
    job = site.ok.enqueue(1)
    token = csrf_token(site.client())
    with site.client().post(f"/queue/jobs/{job.id}/cancel", data={"csrf_token": token}) as response:
        assert response.status_code == 400
    assert job.status is JobStatus.QUEUED


def test_the_same_origin_may_post(site: Site) -> None:
    job = site.ok.enqueue(1)
    client = site.client()
    token = csrf_token(client)
    with client.post(
        f"/queue/jobs/{job.id}/cancel", data={"csrf_token": token}, headers={"Origin": "http://localhost"}
    ) as response:
        assert response.status_code == 303
    assert job.status is JobStatus.CANCELLED


def test_the_csrf_cookie_is_strict_and_kept(site: Site) -> None:
    client = site.client()
    with client.get("/queue/") as response:
        cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "Path=/queue" in cookie
    with client.get("/queue/") as response:
        assert "Set-Cookie" not in response.headers  # the browser's token stays the same


# -- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/queue/jobs/{}", "/queue/api/jobs/{}", "/queue/jobs/{}/retry", "/queue/jobs/{}/cancel"],
)
@pytest.mark.parametrize("job_id", ["1-deadbeef", "nope", "%3Cscript%3E"])
def test_an_unknown_job_is_404(site: Site, path: str, job_id: str) -> None:
    client = site.client()
    token = csrf_token(client)
    url = path.format(job_id)
    if url.endswith(("retry", "cancel")):
        response = client.post(url, data={"csrf_token": token})
    else:
        response = client.get(url)
    with response:
        assert response.status_code == 404
        assert response.mimetype in ("text/plain", "application/json")
        assert "<script>" not in response.get_data(as_text=True)


@pytest.mark.parametrize("page", ["x", "0", "-1", "1.5", "", " 2", "²", "9" * 12])
@pytest.mark.parametrize("path", ["/queue/jobs", "/queue/api/jobs"])
def test_a_malformed_page_number_is_400(site: Site, path: str, page: str) -> None:
    with site.client().get(path, query_string={"page": page}) as response:
        assert response.status_code == 400
        assert "page must be a whole number" in response.get_data(as_text=True)


def test_an_unknown_status_is_400(site: Site) -> None:
    with site.client().get("/queue/api/jobs?status=lost") as response:
        assert response.status_code == 400
        assert "status must be one of" in response.get_json()["error"]


def test_html_in_arguments_and_errors_is_shown_as_text(site: Site) -> None:
    markup = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    job = site.boom.enqueue(markup)
    site.ok.enqueue(markup, note=markup)
    site.tasks.drain()
    client = site.client()
    for path in ("/queue/", "/queue/jobs", f"/queue/jobs/{job.id}"):
        with client.get(path) as response:
            page = response.get_data(as_text=True)
        assert "<script>alert" not in page, path
        assert "<img src=x" not in page, path
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page, path
    # The JSON carries the text as it is: the page's script puts it in with textContent.
    with client.get("/queue/api/stats") as response:
        failed = response.get_json()["tasks"]["failed"][0]
    assert failed["error"] == f"ValueError: {markup}"
