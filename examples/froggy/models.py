"""The froggy app's database: Flask-SQLAlchemy 3.1 and one table."""

from __future__ import annotations

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Froggy(Base):
    __tablename__ = "froggies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    colour: Mapped[str] = mapped_column(String(40), default="green")
    is_jumping: Mapped[bool] = mapped_column(default=False)
    jump_height: Mapped[str] = mapped_column(String(40), default="")

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "colour": self.colour,
            "is_jumping": self.is_jumping,
            "jump_height": self.jump_height,
        }
