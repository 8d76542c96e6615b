"""Fixtures: three new MariaDB databases for the test run, dropped when it ends, and a client of
the app started with ``app.test_app()``, so that ``before_serving`` creates the tables (a bare
``app.test_client()`` would not run it).

The server is ``ASYNCBIND_TEST_MYSQL_URL`` (default: root with no password on 127.0.0.1:3306).
When it cannot be reached the tests are skipped, or fail under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import sqlalchemy as sa
from quart.typing import TestClientProtocol as Client
from shop import create_app
from shop.config import Config
from shop.models import db

from asyncbind import AsyncBind

SERVER = sa.make_url(
    os.environ.get("ASYNCBIND_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/mysql")
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


async def _run_on_server(*statements: str) -> None:
    async with AsyncBind(SERVER, engine_options={"connect_timeout": 10}) as server:
        async with server.engine.connect() as conn:
            for statement in statements:
                await conn.execute(sa.text(statement))


@pytest.fixture(scope="session")
def test_config() -> Iterator[type[Config]]:
    """The app's ``Config``, pointed at three databases made for this test run."""
    names = {key: f"shop_{key}_{uuid.uuid4().hex[:10]}" for key in ("catalog", "users", "orders")}
    drop = [f"DROP DATABASE IF EXISTS `{name}`" for name in names.values()]
    try:
        asyncio.run(
            _run_on_server(
                *(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4" for name in names.values())
            )
        )
    except Exception as exc:  # any failure here means the server cannot be used
        message = f"MariaDB at {SERVER.render_as_string()} cannot be used ({exc})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)

    def url(key: str) -> str:
        return SERVER.set(database=names[key]).render_as_string(hide_password=False)

    class TestConfig(Config):
        SQLALCHEMY_DATABASE_URI = url("catalog")
        SQLALCHEMY_BINDS = {"users": url("users"), "orders": url("orders")}
        TESTING = True

    try:
        yield TestConfig
    finally:
        asyncio.run(_run_on_server(*drop))


@pytest.fixture
async def client(test_config: type[Config]) -> AsyncIterator[Client]:
    """A test client of a new app; every table is dropped when the test ends."""
    app = create_app(test_config)
    async with app.test_app() as test_app:
        yield test_app.test_client()
        await db.drop_all()
