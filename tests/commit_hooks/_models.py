"""The tables the commit-hook tests write to."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Thing(Base):
    __tablename__ = "fq_things"

    id: Mapped[int] = mapped_column(primary_key=True)
    num: Mapped[int]
    note: Mapped[str] = mapped_column(String(40), default="")
