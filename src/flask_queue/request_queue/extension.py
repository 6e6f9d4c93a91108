"""``RequestQueue``: the request queue as a Flask extension, with per-endpoint lanes.

::

    from flask_queue import RequestQueue

    queue = RequestQueue(app, concurrency=4, max_queue_size=10, queue_timeout=5.0)
    queue.lane("reports", concurrency=1, max_queue_size=5, queue_timeout=30.0)

    @app.get("/report")
    @queue.limit("reports")
    def report(): ...

    @app.get("/health")
    @queue.exempt
    def health(): ...

``REQUEST_QUEUE_*`` config keys override the constructor's arguments. ``init_app`` wraps ``app.wsgi_app`` in
a ``RequestQueueMiddleware``, in front of Flask's routing: the lane of a request is found from the app's URL
map before any request context exists.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from flask import Blueprint, current_app, has_app_context
from flask.testing import FlaskClient
from werkzeug.exceptions import HTTPException
from werkzeug.routing import MapAdapter

from .. import _checks, _keys
from .._types import StartResponse, WSGIApplication, WSGIEnvironment
from ..exceptions import ConfigurationError
from .middleware import (
    _UNSET,
    DEFAULT_LANE,
    DEFAULTS,
    EXEMPT,
    Classifier,
    LaneSelector,
    RejectResponse,
    RequestQueueMiddleware,
    _Exempt,
    _Unset,
)

if TYPE_CHECKING:
    from flask import Flask
    from flask.typing import ResponseReturnValue
    from werkzeug.test import TestResponse

__all__ = ["ReleasingClient", "RequestQueue"]

log = logging.getLogger("flask_queue.request_queue")

T = TypeVar("T")  # what @limit and @exempt mark: a view function, an endpoint name or a Blueprint

_LANE_ATTR: Final = "_flask_queue_lane"
_ROUTE_CACHE_SIZE: Final = 4096
_ADAPTER_CACHE_SIZE: Final = 256


class RequestQueue:
    """Admission control for a Flask application, with per-endpoint lanes and priority classes.

    Constructor arguments are the defaults; the ``REQUEST_QUEUE_CONCURRENCY``, ``..._MAX_QUEUE_SIZE``,
    ``..._QUEUE_TIMEOUT``, ``..._MAX_AGE``, ``..._STATUS`` and ``..._CLASSIFY`` config keys override them,
    read once in ``init_app``. ``init_app`` wraps ``app.wsgi_app`` in a ``RequestQueueMiddleware``, so the
    queue sits in front of Flask's routing and request context: a rejection costs almost nothing.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        concurrency: int = DEFAULTS["concurrency"],
        max_queue_size: int = DEFAULTS["max_queue_size"],
        queue_timeout: float = DEFAULTS["queue_timeout"],
        max_age: float | None = DEFAULTS["max_age"],
        status: int = DEFAULTS["status"],
        classify: Classifier | None = None,
    ) -> None:
        self._defaults: dict[str, Any] = {
            "concurrency": concurrency,
            "max_queue_size": max_queue_size,
            "queue_timeout": queue_timeout,
            "max_age": max_age,
            "status": status,
            "classify": classify,
        }
        # Checks the settings and lanes now, not at the first init_app, with the middleware's own checks.
        self._checks = RequestQueueMiddleware(_no_app, **self._defaults)
        self._lanes: dict[str, dict[str, Any]] = {}
        self._reject_response: Callable[[str, int], ResponseReturnValue] | None = None
        self._marks = 0  # how many times a view, endpoint or blueprint was given a lane or made exempt
        self._endpoint_lanes: dict[str, str | _Exempt] = {}
        self._blueprint_lanes: dict[object, str | _Exempt] = {}  # Blueprint -> lane
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()  # set up by init_app; never kept alive here
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Put the request queue in front of ``app``; raises ``RuntimeError`` if it already has one,
        ``TypeError`` if ``app`` is not a Flask app (for any WSGI application, use ``RequestQueueMiddleware``)."""
        _checks.flask_app(
            "RequestQueue", app, hint=" (for any WSGI application: RequestQueueMiddleware(app))"
        )
        if _keys.REQUEST_QUEUE in app.extensions:
            raise RuntimeError(
                "This app already has a RequestQueue; a second one would queue every request twice."
            )
        _checks.unknown_settings(app, "REQUEST_QUEUE_", self._defaults)
        settings = {}
        for name, default in self._defaults.items():
            settings[name] = app.config.setdefault(f"REQUEST_QUEUE_{name.upper()}", default)
        try:
            middleware = RequestQueueMiddleware(
                app.wsgi_app,
                select_lane=self._lane_selector(app),
                reject_response=None
                if self._reject_response is None
                else _flask_rejection(app, self._reject_response),
                signal_sender=app,
                **settings,
            )
        except ConfigurationError as error:
            raise ConfigurationError(f"{error} (from REQUEST_QUEUE_* config or RequestQueue())") from None
        for name, limits in self._lanes.items():
            middleware.add_lane(name, **limits)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[_keys.REQUEST_QUEUE] = middleware
        if app.test_client_class is None:
            app.test_client_class = ReleasingClient
        self._apps.add(app)
        read = {f"REQUEST_QUEUE_{name.upper()}": value for name, value in settings.items()}

        def check_config_once() -> None:
            # At the first request: a setting changed after init_app is ignored, and said so. Then this
            # function takes itself out (a new list, so that Flask's loop over the old one goes on unharmed).
            functions = app.before_request_funcs.get(None, [])
            app.before_request_funcs[None] = [
                function for function in functions if function is not check_config_once
            ]
            _checks.changed_settings(app, read, since="RequestQueue.init_app")

        app.before_request(check_config_once)

    def lane(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        max_queue_size: int | None = None,
        queue_timeout: float | None = None,
        max_age: float | _Unset | None = _UNSET,
    ) -> None:
        """Define a lane with its own limits; a limit left out is the default lane's (per app).

        Define a lane before naming it in ``@limit``. ``max_age=None`` turns the age limit off for the lane.

        :raises ConfigurationError: for an invalid limit, the name ``"default"`` or a name in use.
        """
        if name == DEFAULT_LANE:
            raise ConfigurationError(
                "the default lane is set by RequestQueue(...) and the REQUEST_QUEUE_* config keys, not lane()"
            )
        limits: dict[str, Any] = {
            "concurrency": concurrency,
            "max_queue_size": max_queue_size,
            "queue_timeout": queue_timeout,
            "max_age": max_age,
        }
        self._checks.add_lane(name, **limits)  # raises for an invalid limit, naming the lane
        self._lanes[name] = limits
        for app in self._apps:
            self.middleware(app).add_lane(name, **limits)

    def limit(self, lane: str) -> Callable[[T], T]:
        """Admit the requests of a view through ``lane``: a decorator, also for an endpoint or a blueprint.

        ``@queue.limit("reports")`` on a view (above or below the route decorator);
        ``queue.limit("reports")("export_csv")`` for an endpoint by name; ``queue.limit("api")(bp)`` for every
        view of a blueprint (and of the blueprints nested in it). A view's own mark wins over its blueprint's.

        :raises ConfigurationError: (a ``ValueError``) when ``lane`` was not defined with ``lane()``.
        :raises TypeError: when ``lane`` is not a name (``@queue.limit`` without its lane).
        """
        if not isinstance(lane, str):
            raise TypeError(f'queue.limit takes the name of a lane: @queue.limit("reports"), not {lane!r}')
        if lane != DEFAULT_LANE and lane not in self._lanes:
            known = ", ".join(repr(name) for name in [DEFAULT_LANE, *self._lanes])
            raise ConfigurationError(
                f"unknown lane {lane!r}: define it with queue.lane({lane!r}, ...) before @limit (lanes: {known})"
            )
        return lambda target: self._mark(target, lane)

    def exempt(self, target: T) -> T:
        """Never queue nor reject the requests of a view, an endpoint or a blueprint (health checks, metrics).

        ``@queue.exempt`` on a view; ``queue.exempt("static")`` for an endpoint by name, such as Flask's own
        static files; ``queue.exempt(bp)`` for every view of a blueprint.
        """
        return self._mark(target, EXEMPT)

    def _mark(self, target: T, lane: str | _Exempt) -> T:
        if isinstance(target, str):
            self._endpoint_lanes[target] = lane
        elif isinstance(target, Blueprint):
            self._blueprint_lanes[target] = lane  # by object: its endpoints' prefix depends on registration
        elif callable(target):
            setattr(target, _LANE_ATTR, lane)
        else:
            raise TypeError(f"expected a view function, an endpoint name or a Blueprint, got {target!r}")
        self._marks += 1
        return target

    def classify(self, func: Classifier) -> Classifier:
        """Decorate ``func(environ) -> int``, the priority class of each request (lower is served first).

        It runs before routing, for every queued request, so keep it cheap (read a header or a path prefix).
        Applies to apps set up from now on unless ``REQUEST_QUEUE_CLASSIFY`` says otherwise, and to those
        already set up.
        """
        self._defaults["classify"] = func
        for app in self._apps:
            self.middleware(app).classify = func
        return func

    def reject_response(
        self, func: Callable[[str, int], ResponseReturnValue]
    ) -> Callable[[str, int], ResponseReturnValue]:
        """Decorate ``func(reason, retry_after)`` that builds the response for a rejected request.

        It runs inside a request context, so ``request`` and ``jsonify`` work, and returns anything a view
        may return. The status stays what ``func`` returns; ``Retry-After`` is added when it sets none.
        """
        self._reject_response = func
        for app in self._apps:
            self.middleware(app).reject_response = _flask_rejection(app, func)
        return func

    def stats(self, app: Flask | None = None) -> dict[str, Any]:
        """The request queue's figures for ``app``; see ``RequestQueueMiddleware.stats``.

        Without ``app``: the current app, or outside an app context (a monitoring thread) the one app this
        queue is set up on. Thread-safe.

        :raises RuntimeError: naming the fix, when there is no current app and the queue is set up on none or
            on several apps.
        """
        if app is None and not has_app_context():
            apps = list(self._apps)
            if len(apps) != 1:
                raise RuntimeError(
                    "queue.stats() outside an app context needs the app: call queue.stats(app)"
                    + (
                        " (this RequestQueue is set up on several apps)"
                        if apps
                        else " (it is set up on no app yet)"
                    )
                )
            app = apps[0]
        return self.middleware(app).stats()

    @staticmethod
    def middleware(app: Flask | None = None) -> RequestQueueMiddleware:
        """The middleware installed for ``app`` (default: the current app).

        :raises RuntimeError: when ``app`` has no ``RequestQueue``, or none is given outside an app context.
        """
        if app is None:
            if not has_app_context():
                raise RuntimeError(
                    "RequestQueue.middleware() outside an app context needs the app: middleware(app)"
                )
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        try:
            middleware: RequestQueueMiddleware = app.extensions[_keys.REQUEST_QUEUE]
        except KeyError:
            raise RuntimeError(
                "This app has no RequestQueue. Did you forget to call queue.init_app(app)?"
            ) from None
        return middleware

    def _endpoint_lane(self, app: Flask, endpoint: str | None) -> str | _Exempt | None:
        """The lane marked for an endpoint: by name, on its view (or view class), or on its blueprints."""
        if endpoint is None:
            return None
        if endpoint in self._endpoint_lanes:
            return self._endpoint_lanes[endpoint]
        view = app.view_functions.get(endpoint)
        lane: str | _Exempt | None = getattr(view, _LANE_ATTR, None)
        if lane is None:  # a class-based view: the mark is on the class that as_view() was made from
            lane = getattr(getattr(view, "view_class", None), _LANE_ATTR, None)
        # "parent.child.view": the innermost marked blueprint, found by its registered (dotted) name.
        prefix = endpoint.rpartition(".")[0]
        while lane is None and prefix:
            blueprint = app.blueprints.get(prefix)
            if blueprint is not None:
                lane = self._blueprint_lanes.get(blueprint)
            prefix = prefix.rpartition(".")[0]
        return lane

    def _lane_selector(self, app: Flask) -> LaneSelector:
        """Map a request to its view's lane through the app's URL map, with two caches.

        One URL adapter per site (scheme, host, server name and port, script name), made by Flask's own
        ``create_url_adapter`` so that host and subdomain matching agree with Flask's on every version; and
        the lane per site, method and path.
        """
        adapters: dict[tuple[str, ...], MapAdapter | None] = {}
        lanes: dict[tuple[tuple[str, ...], str, str], str | _Exempt | None] = {}
        cached_marks = 0

        def select(environ: WSGIEnvironment) -> str | _Exempt | None:
            nonlocal cached_marks
            if not self._marks:
                return None
            if cached_marks != self._marks:  # a view was marked since: what is cached may be stale
                lanes.clear()
                cached_marks = self._marks
            site = (
                environ.get("wsgi.url_scheme", ""),
                environ.get("HTTP_HOST", ""),
                environ.get("SERVER_NAME", ""),
                environ.get("SERVER_PORT", ""),
                environ.get("SCRIPT_NAME", ""),
            )
            key = (site, environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""))
            try:
                return lanes[key]
            except KeyError:
                pass
            try:
                adapter = adapters[site]
            except KeyError:
                adapter = _url_adapter(app, environ)
                if len(adapters) >= _ADAPTER_CACHE_SIZE:
                    adapters.clear()
                adapters[site] = adapter
            lane = None if adapter is None else self._endpoint_lane(app, _match_endpoint(adapter, environ))
            if len(lanes) >= _ROUTE_CACHE_SIZE:
                lanes.clear()
            lanes[key] = lane
            return lane

        return select


def _no_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    raise AssertionError("RequestQueue._checks only validates settings; it never serves a request")


def _flask_rejection(app: Flask, func: Callable[[str, int], ResponseReturnValue]) -> RejectResponse:
    """Adapt a ``@queue.reject_response`` function to the middleware's hook, inside a request context."""

    def respond(environ: WSGIEnvironment, reason: str, retry_after: int) -> WSGIApplication:
        with app.request_context(environ):
            return app.make_response(func(reason, retry_after))

    return respond


def _url_adapter(app: Flask, environ: WSGIEnvironment) -> MapAdapter | None:
    """Flask's URL adapter for the request's site; ``None`` when Flask would refuse it (untrusted host)."""
    try:
        return app.create_url_adapter(app.request_class(environ))
    except Exception:
        log.debug(
            "no URL adapter for %r; the default lane admits it", environ.get("HTTP_HOST"), exc_info=True
        )
        return None


def _match_endpoint(adapter: MapAdapter, environ: WSGIEnvironment) -> str | None:
    """The endpoint Flask will dispatch the request to; ``None`` when no view of the app will run it."""
    method = environ.get("REQUEST_METHOD", "GET").upper()
    # PATH_INFO is a WSGI "bytes as latin-1" string; Werkzeug's routing wants the decoded path.
    path = environ.get("PATH_INFO", "").encode("latin-1", "replace").decode("utf-8", "replace")
    try:
        rule, _ = adapter.match(path, method, return_rule=True)
    except HTTPException:  # 404, 405, redirects: Flask answers them; the default lane admits them
        return None
    except Exception:  # a malformed request must not become a 500 here; Flask will judge it
        log.debug("could not route %r for lane selection", path, exc_info=True)
        return None
    if method == "OPTIONS" and getattr(rule, "provide_automatic_options", False):
        return None  # Flask answers it without calling the view: it must not wait in the view's lane
    endpoint: str = rule.endpoint
    return endpoint


class ReleasingClient(FlaskClient):
    """Flask's test client, reading each response to its end and closing it, as a server does.

    A request holds its lane's slot until its response is closed. A server closes it once the body is sent;
    Flask's test client leaves that to the test (``response.close()``), so six ``client.get("/")`` in a row
    on a lane of concurrency 4 would get four answers and two rejections. ``RequestQueue.init_app`` makes this
    the app's ``test_client_class`` when the app has none of its own. ``client.get(..., buffered=False)``
    keeps a streamed response open, and its slot taken, until the test closes it.
    """

    def open(self, *args: Any, buffered: bool = True, **kwargs: Any) -> TestResponse:
        return super().open(*args, buffered=buffered, **kwargs)
