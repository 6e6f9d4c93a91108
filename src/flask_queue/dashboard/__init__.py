"""The dashboard: the request queue and the task queues of an app on one page that keeps itself up to date.

::

    from flask_queue import Dashboard

    Dashboard(app, url_prefix="/queue", authorize=lambda: current_user.is_admin)

It finds the queues in ``app.extensions`` (a ``RequestQueue``, a ``TaskQueue``, or both) and serves:

- ``<prefix>/``: lanes (running, waiting, rejected by reason, wait percentiles), task queues by status, live
  workers, the latest and the failed jobs with retry and cancel buttons, and a chart of the queue sizes.
  ``dashboard.js`` polls the JSON below and redraws the figures in place; the page is complete without it.
- ``<prefix>/jobs?status=&queue=&page=``: every job, a page at a time; ``<prefix>/jobs/<id>``: one job, its
  call, error and traceback.
- ``<prefix>/api/stats``, ``<prefix>/api/jobs`` and ``<prefix>/api/jobs/<id>``: the same as JSON.
- ``POST <prefix>/jobs/<id>/retry`` and ``.../cancel``: the actions.

When the task backend does not answer, the overview and ``/api/stats`` say so (``"up": false``) and keep
serving the request lanes; the job pages, their JSON and the actions answer 503.

Security. Every request passes ``authorize()`` (no argument; it reads ``flask.request`` or the login state and
returns a bool), or is answered 403. Without a callback the dashboard answers only in debug mode and only to
a loopback client: enough for a laptop, never open on a server by accident. An action is a POST carrying
a CSRF token in its ``csrf_token`` field, equal to the one in a ``SameSite=Strict`` cookie the dashboard set
(the double-submit cookie, as Django does), from a page of the same origin when the browser says where it
comes from; otherwise it is answered 400 and changes nothing. Nothing user-controlled is put in the page as
markup: Jinja escapes it, the script sets ``textContent``, and a Content-Security-Policy allows no inline
script and nothing from elsewhere.

Every constructor argument is the default of a ``QUEUE_DASHBOARD_<NAME>`` config key, read in ``init_app``.
"""

from __future__ import annotations

from .views import CSRF_FIELD, DEFAULTS, Dashboard, blueprint

__all__ = ["CSRF_FIELD", "DEFAULTS", "Dashboard", "blueprint"]
