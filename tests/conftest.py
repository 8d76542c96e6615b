"""Test fixtures: real SQLite, PostgreSQL and MariaDB databases, made per test.

Servers come from ``ASYNCBIND_TEST_POSTGRESQL_URL`` and ``ASYNCBIND_TEST_MYSQL_URL`` (defaults: the
local servers). Each test that asks for a database gets a new, empty one, dropped afterwards. A
server that is down skips its tests locally and fails them under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from twobinds import TwoBinds, add_models, make_urls

from asyncbind import AsyncBind

POSTGRESQL_URL = sa.make_url(
    os.environ.get("ASYNCBIND_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
)
MYSQL_URL = sa.make_url(
    os.environ.get("ASYNCBIND_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/mysql")
)
BACKENDS = ("sqlite", "postgresql", "mysql")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_server_state: dict[str, str | None] = {}


async def _admin_execute(backend: str, *statements: str) -> None:
    """Run statements on a server's admin database with the raw driver."""
    if backend == "postgresql":
        conn = await postgresql_admin()
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()
    else:
        conn = await mysql_admin()
        try:
            async with conn.cursor() as cursor:
                for statement in statements:
                    await cursor.execute(statement)
        finally:
            conn.close()


async def postgresql_admin() -> Any:
    """A raw asyncpg connection to the PostgreSQL server's admin database."""
    import asyncpg

    return await asyncpg.connect(
        host=POSTGRESQL_URL.host,
        port=POSTGRESQL_URL.port or 5432,
        user=POSTGRESQL_URL.username,
        password=POSTGRESQL_URL.password,
        database=POSTGRESQL_URL.database or "postgres",
        timeout=10,
    )


async def mysql_admin() -> Any:
    """A raw aiomysql connection to the MariaDB server, in autocommit mode."""
    import aiomysql

    return await aiomysql.connect(
        host=MYSQL_URL.host or "127.0.0.1",
        port=MYSQL_URL.port or 3306,
        user=MYSQL_URL.username or "root",
        password=MYSQL_URL.password or "",
        connect_timeout=10,
        autocommit=True,
    )


async def require_server(backend: str) -> None:
    """Skip (or, under CI, fail) the test when ``backend``'s server cannot be reached."""
    if backend == "sqlite":
        return
    if backend not in _server_state:
        try:
            await asyncio.wait_for(_admin_execute(backend, "SELECT 1"), 15)
            _server_state[backend] = None
        except Exception as exc:  # any failure to connect means "no server"
            _server_state[backend] = f"{type(exc).__name__}: {exc}"
    reason = _server_state[backend]
    if reason is not None:
        message = f"{backend} server is not reachable ({reason})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def server_url(backend: str, database: str) -> sa.URL:
    """The URL of ``database`` on ``backend``'s server, with no driver (asyncbind picks it)."""
    base = POSTGRESQL_URL if backend == "postgresql" else MYSQL_URL
    return base.set(drivername=backend, database=database)


NewDatabase = Callable[..., Awaitable[str]]


@pytest.fixture
async def new_database(tmp_path: Path) -> AsyncIterator[NewDatabase]:
    """``await new_database("postgresql")``: a new empty database, its URL rendered as a string.

    Every database made is dropped when the test ends.
    """
    made: list[tuple[str, str]] = []

    async def make(backend: str) -> str:
        await require_server(backend)
        name = f"asyncbind_{uuid.uuid4().hex[:12]}"
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / (name + '.sqlite')}"
        if backend == "postgresql":
            create = f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' TEMPLATE template0"
        else:
            # utf8mb4 whatever the server's default (a stock server may default to latin1).
            create = f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        await _admin_execute(backend, create)
        made.append((backend, name))
        return server_url(backend, name).render_as_string(hide_password=False)

    yield make
    for backend, name in made:
        if backend == "postgresql":
            await _admin_execute(backend, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            await _drop_mysql_database(name)


async def _drop_mysql_database(name: str) -> None:
    """Drop a MariaDB database, first ending every connection still using it: a transaction a
    failing test left open would otherwise hold its locks and make DROP wait (for hours)."""
    import aiomysql

    conn = await mysql_admin()
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(
                "SELECT id FROM information_schema.PROCESSLIST WHERE db = %s AND id <> CONNECTION_ID()",
                (name,),
            )
            for (thread_id,) in await cursor.fetchall():
                try:
                    await cursor.execute(f"KILL {int(thread_id)}")
                except aiomysql.Error:
                    pass  # it ended by itself meanwhile
            await cursor.execute("SET SESSION lock_wait_timeout = 30")
            await cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()


def _backend_params() -> list[Any]:
    return [pytest.param(b, id=b, marks=getattr(pytest.mark, b)) for b in BACKENDS]


@pytest.fixture(params=_backend_params())
def backend(request: pytest.FixtureRequest) -> str:
    """Each test that uses it runs once per backend: sqlite, postgresql, mysql."""
    return str(request.param)


@pytest.fixture
async def url(backend: str, new_database: NewDatabase) -> str:
    """A new empty database on the test's backend."""
    return await new_database(backend)


@pytest.fixture(
    params=[
        pytest.param(
            ("postgresql", "mysql"),
            id="postgresql+mysql",
            marks=[pytest.mark.postgresql, pytest.mark.mysql],
        ),
        pytest.param(
            ("mysql", "sqlite"), id="mysql+sqlite", marks=[pytest.mark.mysql, pytest.mark.sqlite]
        ),
    ]
)
def backend_pair(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Two different backends, for routing that crosses real servers."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect what each test leaves behind as it ends, so that a connection it dropped unclosed
    fails that test (warnings are errors) instead of whichever test the collector next runs in.

    What survives the collection is frozen, so that each collection looks only at what one test
    made, which keeps it cheap.
    """
    yield
    gc.collect()
    gc.freeze()


@pytest.fixture
async def make_db() -> AsyncIterator[Callable[..., AsyncBind]]:
    """``make_db(url, binds=...)``: an AsyncBind that is disposed when the test ends."""
    made: list[AsyncBind] = []

    def make(*args: Any, **kwargs: Any) -> AsyncBind:
        db = AsyncBind(*args, **kwargs)
        made.append(db)
        return db

    yield make
    for db in made:
        await db.dispose()


@pytest.fixture
def statements() -> Iterator[Callable[[AsyncBind], list[tuple[Any, str]]]]:
    """``log = statements(db)``: every SQL statement each of ``db``'s engines runs, as
    ``(bind_key, sql)`` in the order they were sent."""
    listeners: list[tuple[Any, Any]] = []

    def record(db: AsyncBind) -> list[tuple[Any, str]]:
        log: list[tuple[Any, str]] = []
        for key, engine in db.engines.items():

            def listener(conn: Any, cursor: Any, sql: str, *args: Any, _key: Any = key) -> None:
                log.append((_key, sql))

            sa.event.listen(engine.sync_engine, "before_cursor_execute", listener)
            listeners.append((engine.sync_engine, listener))
        return log

    yield record
    for target, listener in listeners:
        sa.event.remove(target, "before_cursor_execute", listener)


@pytest.fixture
async def two(new_database: Any, make_db: Callable[..., AsyncBind]) -> TwoBinds:
    """An AsyncBind over a new PostgreSQL database (default bind) and a new MariaDB database
    (bind 'users'), with their tables made; modules with needs of their own define theirs."""
    postgresql, mysql = await make_urls(new_database)
    binds = add_models(make_db(postgresql, binds={"users": mysql}))
    await binds.db.create_all()
    return binds
