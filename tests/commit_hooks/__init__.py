"""Tests of ``flask_queue.sqlalchemy``: commit hooks on SQLite and PostgreSQL, threads, Flask-SQLAlchemy, asyncio."""
