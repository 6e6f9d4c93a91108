"""The dashboard's blueprint: its views, the authorization and CSRF checks, and ``Dashboard``, the extension."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException

from .. import _checks, _keys
from ..exceptions import BackendError
from ..tasks import JobStatus
from ._data import PER_PAGE, PREVIEW_DECODE_LIMIT, Queues, displayable, job_data, schedules_data, snapshot

if TYPE_CHECKING:
    from flask import Flask
    from flask.typing import ResponseReturnValue

    from ..tasks.backends import Backend

__all__ = ["CSRF_FIELD", "DEFAULTS", "Dashboard", "blueprint"]

log = logging.getLogger("flask_queue.dashboard")

#: Every setting, its default, and its config key (``QUEUE_DASHBOARD_<NAME>``): where the dashboard is served,
#: the callback that allows a request (``None``: debug mode and loopback clients only), and how many
#: seconds the page waits between two updates.
DEFAULTS: Final[Mapping[str, Any]] = {"url_prefix": "/queue", "authorize": None, "refresh": 2.0}
#: The longest ``refresh``, in seconds: a page that waits longer is not live.
MAX_REFRESH: Final = 3600.0

CSRF_FIELD: Final = "csrf_token"
_CSRF_COOKIE: Final = "flask_queue_csrf"
_CSRF_BYTES: Final = 32

_CSP: Final = (
    "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

#: One blueprint for every app: ``queue.exempt(Dashboard.blueprint)`` keeps it out of the request queue.
blueprint = Blueprint(
    "flask_queue_dashboard",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)


@dataclass(frozen=True)
class _Settings:
    url_prefix: str
    authorize: Callable[[], object] | None
    refresh: float


class Dashboard:
    """The dashboard blueprint, set up on an app; see the module docstring.

    :param url_prefix: where it is served (default ``/queue``).
    :param authorize: ``authorize() -> bool``, asked for every request; ``None`` (default) serves the
        dashboard only in debug mode to loopback clients.
    :param refresh: seconds between two updates of an open page (default 2).
    """

    blueprint: Final = blueprint

    def __init__(
        self,
        app: Flask | None = None,
        *,
        url_prefix: str = DEFAULTS["url_prefix"],
        authorize: Callable[[], bool] | None = DEFAULTS["authorize"],
        refresh: float = DEFAULTS["refresh"],
    ) -> None:
        self.defaults: dict[str, Any] = {"url_prefix": url_prefix, "authorize": authorize, "refresh": refresh}
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Serve the dashboard on ``app``. Raises ``RuntimeError`` if done twice, ``ConfigurationError`` for a bad
        setting, ``TypeError`` if ``app`` is no Flask app."""
        _checks.flask_app("Dashboard", app)
        _checks.unknown_settings(app, "QUEUE_DASHBOARD_", DEFAULTS)
        if _keys.DASHBOARD in app.extensions:
            raise RuntimeError(
                f"a Dashboard is already set up on app {app.name!r}; init_app runs once per app"
            )
        values = {
            name: app.config.setdefault(f"QUEUE_DASHBOARD_{name.upper()}", value)
            for name, value in self.defaults.items()
        }
        settings = _check(values)
        app.extensions[_keys.DASHBOARD] = settings
        app.register_blueprint(blueprint, url_prefix=settings.url_prefix.rstrip("/") or None)


def _check(values: dict[str, Any]) -> _Settings:
    prefix = _checks.url_path("QUEUE_DASHBOARD_URL_PREFIX", values["url_prefix"], example="/queue")
    authorize = _checks.function(
        "QUEUE_DASHBOARD_AUTHORIZE",
        values["authorize"],
        what="a function of no argument returning True or False, or None",
        no_argument=True,
    )
    refresh = _checks.number("QUEUE_DASHBOARD_REFRESH", values["refresh"], strict=True, hint=" (seconds)")
    if refresh > MAX_REFRESH:
        raise _checks.fail("QUEUE_DASHBOARD_REFRESH", f"a number of seconds up to {MAX_REFRESH:g}", refresh)
    return _Settings(prefix, authorize, float(refresh))


def _settings() -> _Settings:
    settings: _Settings = current_app.extensions[_keys.DASHBOARD]
    return settings


# -- every request: authorization, CSRF, headers -------------------------------------------------------------


@blueprint.before_request
def _guard() -> ResponseReturnValue | None:
    authorize = _settings().authorize
    allowed = (
        _allowed(authorize())
        if authorize is not None
        else current_app.debug and _loopback(request.remote_addr)
    )
    if not allowed:
        return _plain(
            "Forbidden. The Flask-Queue dashboard answers a request its authorize callback allows; with none"
            " configured, only in debug mode and only from this machine.",
            403,
        )
    if request.method == "POST" and not _csrf_ok():
        return _plain(
            "Bad request: the form's CSRF token is missing or stale. Reload the dashboard and try again.", 400
        )
    return None


def _allowed(answer: object) -> bool:
    # True or False, as documented; 1 and 0 (a database's booleans) and None (no user) read as such. Anything
    # else is refused: a login redirect returned as a Response is truthy, and must not open the dashboard.
    if answer is None or isinstance(answer, int):
        return bool(answer)
    log.error(
        "the dashboard's authorize callback returned %s, not True or False: the request is refused"
        " (to send the user to a login page, return False, or raise flask.abort(redirect(...)))",
        type(answer).__name__,
    )
    return False


def _loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _csrf_token() -> str:
    """The token of this browser: the one in its cookie, or a new one set in this response's cookie."""
    token = request.cookies.get(_CSRF_COOKIE, "")
    if not _well_formed(token):
        token = g.setdefault("flask_queue_new_csrf", secrets.token_urlsafe(_CSRF_BYTES))
    return token


def _well_formed(token: str) -> bool:
    return len(token) == 43 and all(c.isalnum() or c in "-_" for c in token)


def _csrf_ok() -> bool:
    cookie = request.cookies.get(_CSRF_COOKIE, "")
    sent = request.form.get(CSRF_FIELD, "")
    if not (_well_formed(cookie) and hmac.compare_digest(cookie.encode(), sent.encode())):
        return False
    # A browser names the page a form came from; a form posted from another site is refused even if it
    # somehow carries the token (a cookie planted by a sibling subdomain).
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if not origin or origin == "null":
        return origin is None
    source = urlsplit(origin)
    return (source.scheme, source.netloc) == (request.scheme, request.host)


@blueprint.after_request
def _headers(response: Response) -> Response:
    new_token = g.get("flask_queue_new_csrf")
    if new_token is not None:
        response.set_cookie(
            _CSRF_COOKIE,
            new_token,
            path=(request.script_root + _settings().url_prefix).rstrip("/") or "/",
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
        )
    response.headers["Content-Security-Policy"] = _CSP
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers["Cache-Control"] = "no-store"
    return response


def _plain(text: str, status: int) -> Response:
    return Response(text + "\n", status=status, mimetype="text/plain")


@blueprint.app_template_global("flask_queue_csrf_token")
def _template_csrf_token() -> str:
    return _csrf_token()


# The page's formats; dashboard.js formats the same way when it redraws.


@blueprint.app_template_filter("fq_ago")
def _ago(then: float | None, now: float) -> str:
    if then is None:
        return "\u2013"  # an en dash: no value yet
    seconds = max(now - then, 0.0)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h"
    return f"{seconds // 86400:.0f} d"


@blueprint.app_template_filter("fq_ms")
def _ms(value: float | None) -> str:
    if value is None:
        return "\u2013"  # an en dash: no value yet
    if value >= 1000:
        return f"{value / 1000:.1f} s"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


@blueprint.app_template_filter("fq_time")
def _time(value: float) -> str:
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- pages -------------------------------------------------------------------------------------------------


@blueprint.get("/")
def index() -> str:
    queues = _queues()
    return render_template(
        "flask_queue_dashboard/index.html",
        data=snapshot(queues),
        refresh=_settings().refresh,
        statuses=[str(status) for status in JobStatus],
    )


@dataclass(frozen=True)
class _Page:
    """One page of the job list, as the filters of the query string ask for it."""

    jobs: list[dict[str, Any]]
    status: JobStatus | None
    queue: str | None
    page: int
    has_next: bool


def _list_page() -> _Page:
    backend = _backend()
    status, queue, page = _job_filters()
    records = backend.jobs(
        status=status,
        queue=queue,
        limit=PER_PAGE + 1,
        offset=(page - 1) * PER_PAGE,
        preview=PREVIEW_DECODE_LIMIT,
    )
    serializer = _queues().serializer
    rows = [job_data(record, serializer) for record in records[:PER_PAGE]]
    return _Page(rows, status, queue, page, len(records) > PER_PAGE)


@blueprint.get("/jobs")
def jobs() -> str:
    listed = _list_page()
    return render_template(
        "flask_queue_dashboard/jobs.html",
        jobs=listed.jobs,
        status=None if listed.status is None else str(listed.status),
        queue=listed.queue,
        page=listed.page,
        has_next=listed.has_next,
        now=time.time(),
        statuses=[str(status) for status in JobStatus],
    )


@blueprint.get("/jobs/<job_id>")
def job(job_id: str) -> str:
    return _job_page(job_id)


def _job_page(job_id: str, notice: str | None = None) -> str:
    queues = _queues()
    record = _backend().get(_job_id(job_id))
    if record is None:
        abort(404, _NO_SUCH_JOB)
    job = job_data(record, queues.serializer, full=True)
    return render_template(
        "flask_queue_dashboard/job.html",
        job=job,
        notice=notice or _notice(request.args.get("done", ""), job["status"]),
    )


# The id is not repeated: an error page echoes nothing from the URL.
_NO_SUCH_JOB: Final = "There is no such job (it may have expired or been purged)."
#: No backend makes ids this long, and no one names a queue so: a longer one is refused without asking it.
_MAX_ID: Final = 200


def _job_id(job_id: str) -> str:
    if len(job_id) > _MAX_ID or not job_id.isprintable():
        abort(404, _NO_SUCH_JOB)
    return job_id


# What the page after an action says, by the job's status now: a worker may have taken the job (or another
# tab changed it) between the action and this page, and the notice must not contradict the badge beside it.
_NOTICES: Final[Mapping[str, Mapping[str, str]]] = {
    "retried": {
        "queued": "Queued again: it runs when a worker is free.",
        "scheduled": "Queued again; it has run since, failed, and waits for its next attempt.",
        "running": "Queued again: a worker is running it now.",
        "succeeded": "Queued again; it has run since and succeeded.",
        "failed": "Queued again; it has run since and failed again.",
        "cancelled": "Queued again; it has been cancelled since.",
    },
    "cancelled": {
        "cancelled": "Cancelled: no worker will run it.",
        "queued": "Cancelled; it has been queued again since.",
    },
}


def _notice(done: str, status: str) -> str | None:
    notices = _NOTICES.get(done)
    if notices is None:
        return None
    return notices.get(status, f"Done; it is {status} now.")


@blueprint.post("/jobs/<job_id>/retry")
def retry(job_id: str) -> ResponseReturnValue:
    return _act(job_id, "retried", "Only a failed or cancelled job can be queued again.")


@blueprint.post("/jobs/<job_id>/cancel")
def cancel(job_id: str) -> ResponseReturnValue:
    return _act(job_id, "cancelled", "Only a job that has not started can be cancelled.")


def _act(job_id: str, done: str, refused: str) -> ResponseReturnValue:
    backend = _backend()
    if backend.get(_job_id(job_id)) is None:
        abort(404, _NO_SUCH_JOB)
    changed = backend.requeue(job_id) if done == "retried" else backend.cancel(job_id)
    if not changed:
        return _job_page(job_id, notice=refused), 409
    # Post/redirect/get: a reload of the page that follows does not post again.
    return redirect(url_for(".job", job_id=job_id, done=done), 303)


@blueprint.get("/schedules")
def schedules() -> str:
    _backend()
    listed = schedules_data(_queues())
    # The notice after an action names a schedule of the code only: nothing else from the URL is shown.
    name, done = request.args.get("name"), request.args.get("done", "")
    known = {item["name"] for item in listed}
    notice = _SCHEDULE_DONE[done].format(name=name) if done in _SCHEDULE_DONE and name in known else None
    return render_template("flask_queue_dashboard/schedules.html", schedules=listed, notice=notice)


_SCHEDULE_DONE: Final = {
    "run": "{name}: a job is enqueued now.",
    "pause": "{name} is paused: its ticks pass without jobs, in every process.",
    "resume": "{name} is resumed from its next tick.",
}


@blueprint.post("/schedules/<name>/<action>")
def schedule_action(name: str, action: str) -> ResponseReturnValue:
    queues = _queues()
    _backend()
    if action not in _SCHEDULE_DONE:
        abort(404, "There is no such action.")
    if queues.tasks is None or name not in queues.tasks.schedules:
        abort(404, "There is no such schedule (in this app's code).")
    if action == "run":
        queues.tasks.run_now(name)
    elif action == "pause":
        queues.tasks.pause(name)
    else:
        queues.tasks.resume(name)
    return redirect(url_for(".schedules", done=action, name=name), 303)


# -- JSON ----------------------------------------------------------------------------------------------------


@blueprint.get("/api/stats")
def api_stats() -> Response:
    return jsonify(snapshot(_queues()))


@blueprint.get("/api/jobs")
def api_jobs() -> Response:
    listed = _list_page()
    return jsonify(jobs=listed.jobs, page=listed.page, per_page=PER_PAGE, has_next=listed.has_next)


@blueprint.get("/api/schedules")
def api_schedules() -> Response:
    _backend()
    return jsonify(schedules=schedules_data(_queues()))


@blueprint.get("/api/jobs/<job_id>")
def api_job(job_id: str) -> Response:
    record = _backend().get(_job_id(job_id))
    if record is None:
        abort(404, _NO_SUCH_JOB)
    return jsonify(job_data(record, _queues().serializer, full=True))


@blueprint.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> ResponseReturnValue:
    # The API answers errors as JSON, the pages as short text; either way nothing from the URL is markup.
    status = error.code or 500
    if _is_api():
        return jsonify(error=error.description), status
    return _plain(error.description or error.name, status)


@blueprint.errorhandler(BackendError)
def _backend_down(error: BackendError) -> ResponseReturnValue:
    # The message names the backend with its password hidden. The overview does not get here: it says the
    # backend is down beside the figures it still has (the request lanes).
    message = displayable(f"The task backend is unavailable ({error}). Try again when it answers.")
    response = jsonify(error=message) if _is_api() else _plain(message, 503)
    response.status_code = 503
    response.headers["Retry-After"] = "5"
    return response


def _is_api() -> bool:
    return (request.endpoint or "").startswith(f"{blueprint.name}.api_")


# -- helpers ---------------------------------------------------------------------------------------------------


def _queues() -> Queues:
    return Queues.of(current_app._get_current_object())  # type: ignore[attr-defined]


def _backend() -> Backend:
    backend = _queues().backend
    if backend is None:
        abort(404, "This app has no TaskQueue, so it has no jobs.")
    return backend


def _job_filters() -> tuple[JobStatus | None, str | None, int]:
    """``status``, ``queue`` and ``page`` from the query string; 400 for a malformed one (a control character
    in ``queue`` included: PostgreSQL cannot even compare a NUL)."""
    raw_status = request.args.get("status") or None
    try:
        status = None if raw_status is None else JobStatus(raw_status)
    except ValueError:
        abort(400, f"status must be one of {', '.join(map(str, JobStatus))}.")
    raw_page = request.args.get("page", "1")
    if not raw_page.isascii() or not raw_page.isdigit() or int(raw_page) < 1 or len(raw_page) > 9:
        abort(400, "page must be a whole number from 1.")
    queue = request.args.get("queue") or None
    if queue is not None and (len(queue) > _MAX_ID or not queue.isprintable()):
        abort(400, f"queue must be the name of a queue (printable, up to {_MAX_ID} characters).")
    return status, queue, int(raw_page)
