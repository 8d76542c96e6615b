"""The models, each in its database, and the AsyncBind they belong to.

The base class is our own, with asyncbind's ``BindKeyMixin``, so that type checkers understand
the models (``class Product(db.Model)`` runs too, but ``mypy --strict`` rejects it).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from asyncbind import AsyncBind, BindKeyMixin


class Base(BindKeyMixin, DeclarativeBase):
    pass


db = AsyncBind(model_class=Base)


class Product(Base):
    """In the default database (the catalog)."""

    __tablename__ = "product"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    price_cents: Mapped[int]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "price_cents": self.price_cents}


class Customer(Base):
    __bind_key__ = "users"
    __tablename__ = "customer"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(200), unique=True)
    name: Mapped[str] = mapped_column(sa.String(100))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "email": self.email, "name": self.name}


class Order(Base):
    """In the orders database: customers and products are in others, so no foreign keys."""

    __bind_key__ = "orders"
    __tablename__ = "customer_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(index=True)
    product_id: Mapped[int]
    quantity: Mapped[int]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "customer_id": self.customer_id,
            "product_id": self.product_id,
            "quantity": self.quantity,
        }
