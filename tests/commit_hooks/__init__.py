"""Tests of ``flask_queue.commit_hooks``: commit hooks on SQLite and PostgreSQL, threads, Flask-SQLAlchemy, asyncio."""
