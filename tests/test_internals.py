"""What asyncbind relies on that SQLAlchemy, the drivers and asyncio do not offer publicly
(:mod:`asyncbind.internals`): each test here fails if a library changes one of them."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from sqlalchemy import orm as sa_orm
from sqlalchemy import pool as sa_pool
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.ext.asyncio.exc import AsyncMethodRequired

from asyncbind import AsyncBind, BindUnavailableError, PoolTimeoutError, internals
from asyncbind.internals import asyncpg_transaction_open, mysql_result_unread
from asyncbind.tasksafety import TaskSafeSession

GUARD = 30
SERVERS = [pytest.param(b, id=b, marks=getattr(pytest.mark, b)) for b in ("postgresql", "mysql")]


# -- SQLAlchemy: dialect methods with no event --------------------------------------------------


async def test_the_dialect_methods_it_replaces_are_what_sqlalchemy_calls(
    url: str, make_db: Callable[..., AsyncBind]
) -> None:
    """A commit, a rollback, the pool's reset on return, pre-ping and closing a pooled
    connection each go through the engine's own dialect, where asyncbind replaces the method."""
    db = make_db(url, engine_options={"pool_pre_ping": True})
    engine = db.engine
    async with engine.connect() as conn:  # the first connection initialises the dialect
        await conn.execute(sa.text("SELECT 0"))
    dialect = engine.sync_engine.dialect
    calls: Counter[str] = Counter()

    def counting(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return method(*args, **kwargs)

        return call

    for name in sorted(internals.DIALECT_METHODS):
        internals.replace_dialect_method(dialect, name, counting(name, getattr(dialect, name)))
    async with engine.connect() as conn:  # the pooled connection is pinged first
        await conn.execute(sa.text("SELECT 1"))
        await conn.commit()
    # Returned with no transaction of the Connection's to end: the pool's reset rolls it back.
    assert calls == {"do_ping": 1, "do_commit": 1, "do_rollback": 1}
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 2"))
        await conn.rollback()
    assert calls == {"do_ping": 2, "do_commit": 1, "do_rollback": 3}
    await db.dispose()
    assert calls == {"do_ping": 2, "do_commit": 1, "do_rollback": 3, "do_close": 1}

    # Replaced on this engine's dialect only.
    other = create_async_engine(url.replace("://", "+" + dialect.driver + "://", 1))
    try:
        for name in internals.DIALECT_METHODS:
            assert getattr(other.dialect, name).__func__ is getattr(type(other.dialect), name)
    finally:
        await other.dispose()


def test_only_the_dialect_methods_with_no_event_are_replaced() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    with pytest.raises(ValueError, match="'do_execute' is not one of"):
        internals.replace_dialect_method(engine.dialect, "do_execute", print)


# -- SQLAlchemy: the pool ---------------------------------------------------------------------


async def test_the_pools_checkout_it_overrides_raises_the_pools_timeout(
    url: str, make_db: Callable[..., AsyncBind]
) -> None:
    """``Pool._do_get()`` is the pool's checkout and raises SQLAlchemy's TimeoutError when the
    pool stays exhausted; after dispose() the new pool still names the bind."""
    options = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2}
    db = make_db("sqlite://", binds={"busy": {"url": url, **options}})
    engine = db.get_engine("busy")
    pool = engine.sync_engine.pool
    assert isinstance(pool, internals.BindPool)
    base = next(
        c
        for c in type(pool).__mro__
        if "_do_get" in vars(c) and not issubclass(c, internals.BindPool)
    )
    assert base.__module__.startswith("sqlalchemy.pool"), base
    for round_ in range(2):
        async with engine.connect():
            async with asyncio.timeout(GUARD):
                with pytest.raises(PoolTimeoutError) as info:
                    await engine.connect()
        assert isinstance(info.value, sa.exc.TimeoutError)
        assert info.value.bind_key == "busy", round_
        assert "Bind 'busy': every connection of its pool stayed in use for 0.2s" in str(info.value)
        # What SQLAlchemy's own error said ("QueuePool limit of size 1 overflow 0 reached").
        assert "(pool_timeout; pool_size 1, max_overflow 0)" in str(info.value)
        limits = (info.value.timeout, info.value.pool_size, info.value.max_overflow)
        assert limits == (0.2, 1, 0)
        await db.dispose()


async def test_the_pools_checkin_it_overrides_takes_back_each_returned_connection(
    url: str, make_db: Callable[..., AsyncBind]
) -> None:
    """``Pool._do_return_conn()`` is where a pool takes back each connection returned to it:
    one returned to a disposed pool is closed there, one returned to the new pool is kept."""
    db = make_db(url)
    engine = db.engine
    disposed = engine.sync_engine.pool
    assert isinstance(disposed, internals.BindPool)
    base = next(
        c
        for c in type(disposed).__mro__
        if "_do_return_conn" in vars(c) and not issubclass(c, internals.BindPool)
    )
    assert base.__module__.startswith("sqlalchemy.pool"), base
    closed: list[object] = []
    sa.event.listen(engine.sync_engine, "close", lambda connection, _record: closed.append(1))
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))
        await db.dispose()
        assert closed == []  # in use: dispose() leaves it alone
    assert closed == [1]
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 2"))
    assert closed == [1]
    assert engine.sync_engine.pool.checkedin() == 1  # type: ignore[attr-defined]


def _pool_records(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    """The pool's log records as (logger, level, message), object addresses blanked out."""
    return [
        (record.name, record.levelname, re.sub(r"0x[0-9a-f]+", "0x?", record.getMessage()))
        for record in caplog.records
        if record.name.startswith(("sqlalchemy.pool", "asyncbind"))
    ]


@pytest.mark.parametrize("echo_pool", [False, True, "debug"])
async def test_pools_log_when_and_how_sqlalchemys_own_pools_do(
    url: str, echo_pool: bool | str, caplog: pytest.LogCaptureFixture
) -> None:
    # As under logging.basicConfig(level=logging.INFO): SQLAlchemy's pools stay quiet unless
    # echo_pool is set; asyncbind's must do the same, under the same logger names (the private
    # _sqla_logger_namespace).
    db = AsyncBind(url, engine_options={"echo_pool": echo_pool})
    plain = create_async_engine(db.engine.url, echo_pool=echo_pool)
    logged: dict[str, list[tuple[str, str, str]]] = {}
    for name, engine in (("asyncbind", db.engine), ("sqlalchemy", plain)):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            async with engine.connect() as conn:
                assert (await conn.execute(sa.text("SELECT 7"))).scalar() == 7
            await engine.dispose()
        logged[name] = _pool_records(caplog)
    assert logged["asyncbind"] == logged["sqlalchemy"]
    # Under echo_pool, a pool's logger is an InstanceLogger around the named one.
    loggers = [engine.sync_engine.pool.logger for engine in (db.engine, plain)]
    assert len({getattr(logger, "logger", logger).name for logger in loggers}) == 1
    if echo_pool:
        assert any("Pool disposed" in message for _, _, message in logged["asyncbind"])
    else:
        assert logged["asyncbind"] == []


@pytest.mark.parametrize(
    "scheme", [pytest.param("postgresql", id="asyncpg"), pytest.param("mysql", id="aiomysql")]
)
async def test_a_cancelled_connection_attempt_leaves_no_record_in_the_pools_log(
    scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLAlchemy's pool logs every failure to connect at DEBUG, "Error on connect(): %s"
    (internals.CONNECT_ERROR_RECORD): a cancellation's record (with an empty message) is
    dropped, the others stay, in the pool that dispose() makes too."""
    with socket.socket() as listener:  # accepts connections and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        db = AsyncBind(
            "sqlite://",
            binds={
                "silent": f"{scheme}://u:pw@127.0.0.1:{port}/db",
                "refused": f"{scheme}://u:pw@127.0.0.1:1/db",
            },
            engine_options={"echo_pool": "debug"},
        )
        try:
            for round_ in range(2):
                caplog.clear()
                with caplog.at_level(logging.DEBUG):
                    with pytest.raises(TimeoutError):
                        async with asyncio.timeout(0.3), db.engines["silent"].connect():
                            pass
                    assert _pool_records(caplog) == [], round_
                    with pytest.raises(BindUnavailableError):
                        async with asyncio.timeout(GUARD), db.engines["refused"].connect():
                            pass
                (record,) = [r for r in caplog.records if r.msg == internals.CONNECT_ERROR_RECORD]
                assert record.name.startswith("sqlalchemy.pool") and record.levelname == "DEBUG"
                assert "Error on connect(): Bind 'refused' is unavailable" in record.getMessage()
                await db.dispose()
        finally:
            await db.dispose()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://u@h/db",
        "mysql+aiomysql://u@h/db",
        "sqlite+aiosqlite:///file.db",
        "sqlite+aiosqlite://",
    ],
)
async def test_default_poolclass_is_the_one_sqlalchemy_chooses(url: str) -> None:
    engine = create_async_engine(url)
    try:
        assert internals.default_poolclass(sa.make_url(url)) is type(engine.sync_engine.pool)
    finally:
        await engine.dispose()
    assert internals.default_poolclass(sa.make_url("nosuchdialect://h/db")) is None


def test_bind_pool_classes_are_made_once_per_pool_class() -> None:
    made = internals.bind_pool_class(sa_pool.AsyncAdaptedQueuePool)
    assert internals.bind_pool_class(sa_pool.AsyncAdaptedQueuePool) is made
    assert issubclass(made, internals.BindPool) and issubclass(made, sa_pool.AsyncAdaptedQueuePool)
    assert internals.bind_pool_class(sa_pool.StaticPool) is not made


# -- SQLAlchemy: what AsyncSession adds around the sync session's execute ---------------------


async def _options_seen(session: AsyncSession) -> list[dict[str, Any]]:
    """The execution options the sync session's execute() receives, for execute(), scalar() and
    stream(), each with no options and with one of the caller's."""
    seen: list[dict[str, Any]] = []

    def record(state: sa_orm.ORMExecuteState) -> None:
        seen.append(dict(state.execution_options))

    sa.event.listen(session.sync_session, "do_orm_execute", record)
    statement = sa.select(sa.literal(1))
    for options in ({}, {"compiled_cache": None}):
        await session.execute(statement, execution_options=options)
        await session.scalar(statement, execution_options=options)
        await (await session.stream(statement, execution_options=options)).all()
    return seen


async def test_execute_scalar_and_stream_hand_the_sync_session_what_sqlalchemy_does(
    url: str, make_db: Callable[..., AsyncBind]
) -> None:
    """TaskSafeSession makes the sync session's call of execute(), scalar() and stream() itself
    (internals.EXECUTE_OPTIONS, STREAM_OPTIONS): the sync session sees the same execution
    options as from SQLAlchemy's own AsyncSession."""
    db = make_db(url)
    async with AsyncSession(db.engine) as plain, db.session() as ours:
        assert isinstance(ours, TaskSafeSession)
        expected = await _options_seen(plain)
        assert await _options_seen(ours) == expected
    assert expected[0] == dict(internals.EXECUTE_OPTIONS)
    assert expected[2] == dict(internals.STREAM_OPTIONS)


async def test_execute_refuses_a_server_side_cursor_as_sqlalchemy_does(
    url: str, make_db: Callable[..., AsyncBind]
) -> None:
    """internals.ensure_sync_result: a buffered execute() of a statement asking for a streamed
    result is refused, naming stream(), and its connection is not left mid-result."""
    db = make_db(url)
    statement = sa.select(sa.literal(1)).execution_options(stream_results=True)
    async with AsyncSession(db.engine) as plain, db.session() as ours:
        with pytest.raises(AsyncMethodRequired) as sqlalchemys:
            await plain.execute(statement)
        with pytest.raises(AsyncMethodRequired) as refused:
            await ours.execute(statement)
        assert str(refused.value) == str(sqlalchemys.value).replace(
            "AsyncSession", "AsyncBindSession"
        )
        assert await ours.scalar(sa.select(sa.literal(2))) == 2
    # The rows of a buffered result are all in it: it outlives its session.
    async with db.session() as ours:
        result = await ours.execute(sa.select(sa.literal(3)))
    assert result.all() == [(3,)]


# -- SQLAlchemy: the connect function ----------------------------------------------------------


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
async def test_the_connector_receives_the_urls_arguments(backend: str, url: str) -> None:
    """``connect_args={"async_creator_fn": ...}`` is called in place of the driver's connect(),
    with the arguments it would have had."""
    import aiomysql
    import asyncpg

    received: list[dict[str, Any]] = []
    real = asyncpg.connect if backend == "postgresql" else aiomysql.connect

    async def connect(*args: Any, **kwargs: Any) -> Any:
        received.append(kwargs)
        return await real(*args, **kwargs)

    connect_args: dict[str, Any] = {}
    internals.add_connector(connect_args, connect)
    internals.add_connector(connect_args, print)  # one given already is kept
    parsed = sa.make_url(url).set(
        drivername="postgresql+asyncpg" if backend == "postgresql" else "mysql+aiomysql"
    )
    engine = create_async_engine(parsed, connect_args=connect_args)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()
    (arguments,) = received
    assert arguments["user"] == parsed.username
    assert arguments["database" if backend == "postgresql" else "db"] == parsed.database
    assert arguments["host"] == parsed.host


# -- drivers ----------------------------------------------------------------------------------


@pytest.mark.mysql
async def test_aiomysql_connect_opens_a_connection(new_database: NewDatabase) -> None:
    """Through ``aiomysql.Connection._connect()``, as aiomysql.connect() itself does."""
    import aiomysql

    assert inspect.iscoroutinefunction(aiomysql.Connection._connect)
    url = sa.make_url(await new_database("mysql"))
    connect = internals.aiomysql_connect()
    async with asyncio.timeout(GUARD):
        conn = await connect(
            host=url.host, port=url.port or 3306, user=url.username, db=url.database
        )
    try:
        async with conn.cursor() as cursor:
            await cursor.execute("SELECT DATABASE()")
            assert await cursor.fetchone() == (url.database,)
    finally:
        conn.close()


@pytest.mark.postgresql
async def test_asyncpg_transaction_open_reads_the_driver(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """asyncpg's ``_top_xact``, read at check-in (:mod:`asyncbind.checkin`)."""
    db = make_db(await new_database("postgresql"))
    async with db.engine.connect() as conn:
        driver: Any = (await conn.get_raw_connection()).driver_connection
        assert asyncpg_transaction_open(driver) is False

        transaction = driver.transaction()
        await transaction.start()
        assert driver._top_xact is transaction
        assert asyncpg_transaction_open(driver) is True
        await transaction.rollback()
        assert asyncpg_transaction_open(driver) is False

        # A transaction asyncpg believes in while the server is in none: what a BEGIN cancelled
        # before it reached the server leaves.
        driver._top_xact = transaction
        assert not driver.is_in_transaction()
        assert asyncpg_transaction_open(driver) is True
        driver._top_xact = None

        await driver.execute("BEGIN")  # the server's view
        assert asyncpg_transaction_open(driver) is True
        await driver.execute("ROLLBACK")
        assert asyncpg_transaction_open(driver) is False


@pytest.mark.mysql
@pytest.mark.parametrize("driver", ["aiomysql", "asyncmy"])
async def test_mysql_result_unread_reads_the_driver(
    driver: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """aiomysql's and asyncmy's ``_result``, read before a rollback (:mod:`asyncbind.closing`):
    True while a server-side cursor's result has rows left unread, False once it is read or
    closed, and for a buffered result."""
    import aiomysql.cursors
    import asyncmy.cursors

    server_side = {"aiomysql": aiomysql.cursors.SSCursor, "asyncmy": asyncmy.cursors.SSCursor}
    url = (await new_database("mysql")).replace("mysql://", f"mysql+{driver}://", 1)
    db = make_db(url)
    async with db.engine.connect() as conn:
        connection: Any = (await conn.get_raw_connection()).driver_connection
        assert mysql_result_unread(connection) is False  # nothing sent yet
        sql = "SELECT seq FROM seq_1_to_100"  # MariaDB's sequence engine
        async with connection.cursor() as cursor:  # buffered
            await cursor.execute(sql)
            assert await cursor.fetchone() == (1,)
            assert mysql_result_unread(connection) is False
        cursor = connection.cursor(server_side[driver])
        if inspect.isawaitable(cursor):  # aiomysql's cursor() is awaited, asyncmy's is not
            cursor = await cursor
        await cursor.execute(sql)
        assert await cursor.fetchone() == (1,)
        assert mysql_result_unread(connection) is True
        assert len(await cursor.fetchall()) == 99
        assert mysql_result_unread(connection) is False
        await cursor.execute(sql)
        await cursor.fetchone()
        assert mysql_result_unread(connection) is True
        await cursor.close()  # reads the rest
        assert mysql_result_unread(connection) is False


@pytest.mark.postgresql
async def test_raise_as_dbapi_error_raises_the_adapted_error(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """The adapted connection's ``_handle_exception()``, for DDL sent with ``run_async()``
    (:mod:`asyncbind.directddl`): asyncpg's error becomes the adapted DBAPI's, as from a cursor."""
    import asyncpg

    db = make_db(await new_database("postgresql"))
    dbapi = db.engine.sync_engine.dialect.loaded_dbapi

    def drop(sync: sa.Connection) -> None:
        adapted: Any = sync.connection.dbapi_connection
        try:
            adapted.run_async(lambda driver: driver.execute("DROP TABLE nothing_here"))
        except asyncpg.UndefinedTableError as error:
            internals.raise_as_dbapi_error(adapted, error)

    async with db.engine.connect() as conn:
        with pytest.raises(dbapi.ProgrammingError) as info:
            await conn.run_sync(drop)
        assert isinstance(info.value.__cause__, asyncpg.UndefinedTableError)
        assert info.value.sqlstate == "42P01"


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
async def test_the_transports_it_closes_through_are_there(backend: str, url: str) -> None:
    """A driver connection's transport, and the transport's connection_lost() callback, which
    :mod:`asyncbind.loops` uses to close a connection of a closed event loop."""
    db = AsyncBind(url)
    try:
        async with db.engine.connect() as conn:
            dbapi_connection = (await conn.get_raw_connection()).dbapi_connection
            driver = db.engine.dialect.driver
            assert internals.has_transport(driver)
            transport = internals.transport_of(driver, dbapi_connection.driver_connection)  # type: ignore[union-attr]
            assert isinstance(transport, asyncio.Transport), (driver, transport)
            assert callable(getattr(transport, "_call_connection_lost", None))
    finally:
        await db.dispose()
    assert not internals.has_transport("aiosqlite")
    assert internals.transport_of("aiosqlite", object()) is None


@pytest.mark.mysql
async def test_the_asyncmy_transport_is_there(new_database: NewDatabase) -> None:
    url = sa.make_url(await new_database("mysql")).set(drivername="mysql+asyncmy")
    db = AsyncBind(url)
    try:
        async with db.engine.connect() as conn:
            driver_connection = (await conn.get_raw_connection()).driver_connection
            transport = internals.transport_of("asyncmy", driver_connection)
            assert isinstance(transport, asyncio.Transport), transport
            assert callable(getattr(transport, "_call_connection_lost", None))
    finally:
        await db.dispose()
