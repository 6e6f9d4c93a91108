"""Commit hooks: run a function once the SQLAlchemy transaction that asked for it has committed.

Django's ``transaction.on_commit`` for SQLAlchemy 2, savepoint-correct::

    from flask_queue.commit_hooks import capture_on_commit, on_commit

    froggy.colour = "bright_pink"
    on_commit(partial(log.info, "Froggy colour updated: %s", froggy.id))          # stage 0: log lines
    on_commit(partial(send_mail, "Froggy colour updated"), stage=1, robust=True)  # stage 1: emails
    db.session.commit()   # commits, then runs the log line, then the email

- A hook runs after the outermost transaction of its session commits, never after a rollback. A hook
  registered inside a SAVEPOINT (``begin_nested``) that is rolled back is dropped with those of any deeper
  savepoint; one inside a released savepoint waits for the outer commit.
- Hooks run in registration order within a ``stage``, and stages in ascending order.
- With no transaction open the hook runs at once. A Session begins its transaction when first used
  (autobegin: a query, ``add()``, a change to a loaded object), so after any of these the hook waits for
  the commit: a side effect never runs before the changes it reports are committed.
- ``robust=False`` (the default): a hook that raises skips the rest of that commit's hooks and its exception
  comes out of ``commit()``, after the commit. ``robust=True``: the error is logged with its traceback at
  ERROR on the ``flask_queue.commit_hooks`` logger and the next hook runs. Either way the session is usable.
- A hook that registers a hook while hooks run (with no new transaction open) adds it to the same pass:
  after the hooks already queued in its stage, before later stages.
- Hooks are kept per session transaction, so threads (each with its own session from a ``scoped_session``),
  requests and transactions never share them.

``session`` may be a ``Session``, a ``scoped_session`` (its session for the current thread or scope), an
``AsyncSession`` or ``async_scoped_session`` (hooks go on its ``sync_session`` and run inside
``await session.commit()``), or ``None``: Flask-SQLAlchemy's ``db.session`` of the current app.

Needs the ``sqlalchemy`` extra: ``pip install flask-queue[sqlalchemy]``.
"""

from __future__ import annotations

from .sqlalchemy import capture_on_commit, on_commit, resolve_session

__all__ = ["capture_on_commit", "on_commit", "resolve_session"]
