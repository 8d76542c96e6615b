"""The config class of a Flask-SQLAlchemy tutorial's binds set-up: three MySQL databases, one
default and two binds. The keys and URLs stay as they were; asyncbind picks the async driver."""

from __future__ import annotations

from typing import Any


class Config:
    """Production settings: the catalog in the default database, customers and orders in binds."""

    SQLALCHEMY_DATABASE_URI = "mysql://shop:change-me@127.0.0.1:3306/shop_catalog"
    SQLALCHEMY_BINDS: dict[str, Any] = {
        "users": "mysql://shop:change-me@127.0.0.1:3306/shop_users",
        "orders": "mysql://shop:change-me@127.0.0.1:3306/shop_orders",
    }
    SQLALCHEMY_ENGINE_OPTIONS: dict[str, Any] = {"pool_pre_ping": True}
