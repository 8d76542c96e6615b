"""Errors that name the real cause, on real servers: a refused login, a missing database, a
connection the server ended (by an administrator, by an idle timeout), a deadlock.

Every error names the bind and says what to do; none shows the password, in its message, its
repr, its chain or the logs. The shared PostgreSQL server trusts every local connection, so a
wrong password is tried on a private PostgreSQL server started for this module, which checks
passwords (SCRAM); MariaDB's is tried on the shared server, with a user made for the test.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import shutil
import socket
import subprocess
import tempfile
import threading
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import IN_CI, MYSQL_URL, NewDatabase, _admin_execute
from serverstate import server_fetch
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession

from asyncbind import (
    AsyncBind,
    BindAuthenticationError,
    BindUnavailableError,
    ConnectionEndedError,
    DatabaseNotFoundError,
    DeadlockError,
)
from asyncbind import exceptions as asyncbind_exceptions
from asyncbind.causes import statement_error
from asyncbind.exceptions import bind_name

GUARD = 30
#: The distinctive part of the test's passwords, made at run time so that no source line that a
#: traceback quotes holds it.
TOKEN = "".join(["Zk", "9q", "Wt", "4y"])
#: Ports for the private PostgreSQL server.
PRIVATE_PORTS = range(25460, 25470)


@pytest.fixture(
    params=[
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def never_shown(secret: str, error: BaseException, records: list[logging.LogRecord]) -> None:
    """Assert that ``secret`` appears nowhere in ``error``, its chain, or the log records."""
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for what, text in (
            ("str", str(current)),
            ("repr", repr(current)),
            ("args", repr(current.args)),
            ("attributes", repr(getattr(current, "__dict__", {}))),
        ):
            assert secret not in text, f"{what} of {type(current).__name__} shows the password"
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        orig = getattr(current, "orig", None)
        if isinstance(orig, BaseException):
            todo.append(orig)
    assert secret not in "".join(traceback.format_exception(error)), "the traceback shows it"
    for record in records:
        assert secret not in record.getMessage(), f"a log record of {record.name} shows it"
        assert secret not in repr(record.args), f"a log record of {record.name} shows it"


async def first_statement(db: AsyncBind, key: str | None = None) -> None:
    async with asyncio.timeout(GUARD):
        async with db.session() as session:
            await session.execute(sa.text("SELECT 1"), bind_arguments={"bind_key": key})


# -- a refused login --------------------------------------------------------------------------


def _free_port() -> int:
    for port in PRIVATE_PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip(f"no free port in {PRIVATE_PORTS} for a private PostgreSQL server")


def _postgresql_programs() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


@pytest.fixture(scope="module")
def private_postgresql() -> Iterator[sa.URL]:
    """A PostgreSQL server of this module's own that checks passwords; its admin URL."""
    programs = _postgresql_programs()
    if programs is None:
        message = "PostgreSQL's server programs (initdb, pg_ctl) are not installed"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    # initdb refuses to run as root: run the server as the 'postgres' user then.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="asyncbind-pg-"))
    if as_user:
        shutil.chown(base, "postgres")
    admin_password = f"admin-{uuid.uuid4().hex}"
    (base / "pwfile").write_text(admin_password)
    if as_user:
        shutil.chown(base / "pwfile", "postgres")
    data, port = base / "data", _free_port()

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, timeout=120)

    run(
        str(programs / "initdb"),
        "-D",
        str(data),
        "-U",
        "postgres",
        "--auth=scram-sha-256",
        f"--pwfile={base / 'pwfile'}",
    )
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {base} -c fsync=off"
    pg_ctl = str(programs / "pg_ctl")
    run(pg_ctl, "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "-t", "60", "start")
    try:
        yield sa.URL.create(
            "postgresql",
            username="postgres",
            password=admin_password,
            host="127.0.0.1",
            port=port,
            database="postgres",
        )
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def mysql_user(new_database: NewDatabase) -> AsyncIterator[tuple[sa.URL, str]]:
    """A MariaDB user with a password and a database of its own: (its URL without the password,
    the password)."""
    database = sa.make_url(await new_database("mysql")).database
    user, password = f"abx_{uuid.uuid4().hex[:8]}", f"right-{TOKEN}"
    await _admin_execute(
        "mysql",
        f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'",
        f"GRANT ALL ON `{database}`.* TO '{user}'@'%'",
    )
    try:
        yield (
            MYSQL_URL.set(drivername="mysql", username=user, password=None, database=database),
            (password),
        )
    finally:
        await _admin_execute("mysql", f"DROP USER IF EXISTS '{user}'@'%'")


@pytest.fixture
def login(server: str, request: pytest.FixtureRequest) -> tuple[sa.URL, str]:
    """A user with a password on ``server``: (its URL without the password, the password)."""
    if server == "postgresql":
        url = request.getfixturevalue("private_postgresql")
        return url.set(password=None), url.password
    return request.getfixturevalue("mysql_user")  # type: ignore[no-any-return]


async def test_a_wrong_password_names_the_bind_and_the_user_never_the_password(
    login: tuple[sa.URL, str], caplog: pytest.LogCaptureFixture
) -> None:
    url, right = login
    wrong = f"wrong-{TOKEN[::-1]}"
    caplog.set_level(logging.DEBUG)
    db = AsyncBind("sqlite://", binds={"reports": {"url": url.set(password=wrong), "echo": True}})
    try:
        with pytest.raises(BindAuthenticationError) as info:
            await first_statement(db, "reports")
    finally:
        await db.dispose()
    error = info.value
    assert isinstance(error, BindUnavailableError) and isinstance(error, sa_exc.OperationalError)
    assert error.bind_key == "reports" and error.user == url.username
    message = str(error)
    assert f"refused the login of user {url.username!r}" in message
    assert "Check the user name and password of bind 'reports'" in message
    assert error.__cause__ is not None
    never_shown(wrong, error, caplog.records)

    # The right password works: it was the password, and nothing else.
    good = AsyncBind(url.set(password=right))
    try:
        await first_statement(good)
    finally:
        await good.dispose()


async def test_a_driver_message_that_repeats_the_password_is_hidden_names_and_all(
    mysql_user: tuple[sa.URL, str], caplog: pytest.LogCaptureFixture
) -> None:
    # MariaDB quotes the user name when it refuses a login; here the wrong password is the user
    # name, so the server's message repeats it.
    url, _ = mysql_user
    assert url.username is not None
    wrong = url.username
    caplog.set_level(logging.DEBUG)
    db = AsyncBind(binds={"reports": url.set(password=wrong)})
    try:
        with pytest.raises(BindAuthenticationError) as info:
            await first_statement(db, "reports")
    finally:
        await db.dispose()
    error = info.value
    assert error.bind_key == "reports" and error.user is None
    assert "details hidden" in str(error) and "Check the user name and password" in str(error)
    assert error.__cause__ is None and error.__suppress_context__
    never_shown(wrong, error, caplog.records)


# -- a missing database -----------------------------------------------------------------------


async def test_a_missing_database_is_named(
    backend: str, new_database: NewDatabase, tmp_path: Path
) -> None:
    if backend == "sqlite":
        missing = str(tmp_path / "no-such-folder" / "app.db")
        url = f"sqlite:///{missing}"
    else:
        url = sa.make_url(await new_database(backend))
        missing = f"{url.database}_missing"
        url = url.set(database=missing)
    db = AsyncBind("sqlite://", binds={"archive": url})
    workers = set(threading.enumerate())
    try:
        with pytest.raises(DatabaseNotFoundError) as info:
            await first_statement(db, "archive")
    finally:
        await db.dispose()
        # aiosqlite stops the worker thread of a connection that failed to open without waiting
        # for it; let it finish while this test's loop can still take its last answer.
        async with asyncio.timeout(GUARD):
            while any(t.is_alive() for t in set(threading.enumerate()) - workers):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    error = info.value
    assert isinstance(error, BindUnavailableError) and isinstance(error, sa_exc.OperationalError)
    assert error.bind_key == "archive" and error.database == missing
    assert f"Bind 'archive': database {missing!r} was not found" in str(error)
    assert "fix the database in the bind's URL" in str(error)


# -- a connection the server ended ------------------------------------------------------------


def on(key: str | None) -> dict[str, Any]:
    """The arguments that send a text() statement to bind ``key``."""
    return {"bind_arguments": {"bind_key": key}}


async def connection_id(session: AsyncSession, server: str, key: str | None = None) -> int:
    sql = "SELECT pg_backend_pid()" if server == "postgresql" else "SELECT CONNECTION_ID()"
    return int((await session.execute(sa.text(sql), **on(key))).scalar_one())


async def end_connection(server: str, connection: int) -> None:
    """End the server's connection ``connection`` as an administrator does."""
    if server == "postgresql":
        await server_fetch(server, "SELECT pg_terminate_backend($1)", connection)
    else:
        await server_fetch(server, f"KILL {int(connection)}")


async def wait_until_gone(server: str, connection: int) -> None:
    """Wait until the server no longer lists ``connection``."""
    if server == "postgresql":
        sql = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1"
    else:
        sql = "SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID = %s"
    async with asyncio.timeout(GUARD):
        while (await server_fetch(server, sql, connection))[0][0]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def wait_until_running(server: str, connection: int) -> None:
    """Wait until ``connection`` runs a statement (a sleep) on the server."""
    if server == "postgresql":
        sql = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE '%pg_sleep%'"
    else:
        sql = "SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID = %s AND INFO LIKE '%%SLEEP%%'"
    async with asyncio.timeout(GUARD):
        while not (await server_fetch(server, sql, connection))[0][0]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


IDLE_TIMEOUT = {
    # Set on the connection itself, never on the server.
    "postgresql": "SET SESSION idle_in_transaction_session_timeout = '200ms'",
    "mysql": "SET SESSION wait_timeout = 1",
}


def assert_ended(error: ConnectionEndedError, key: str) -> None:
    assert isinstance(error, BindUnavailableError) and isinstance(error, sa_exc.OperationalError)
    assert error.bind_key == key and error.__cause__ is not None
    message = str(error)
    assert (
        f"{bind_name(key, start=True)}:" in message and "roll the session back and retry" in message
    )
    for reason in (
        "pg_terminate_backend()",
        "KILL",
        "'wait_timeout'",
        "'idle_in_transaction_session_timeout'",
        "restart",
    ):
        assert reason in message, reason


@pytest.mark.parametrize("how", ["administrator", "idle-timeout"])
async def test_a_connection_the_server_ended_says_so_and_the_bind_recovers(
    server: str, how: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db("sqlite://", binds={"orders": await new_database(server)})
    async with db.session() as session:
        connection = await connection_id(session, server, "orders")
        if how == "idle-timeout":
            await session.execute(sa.text(IDLE_TIMEOUT[server]), **on("orders"))
        else:
            await end_connection(server, connection)
        await wait_until_gone(server, connection)
        with pytest.raises(ConnectionEndedError) as info:
            async with asyncio.timeout(GUARD):
                await session.execute(sa.text("SELECT 2"), **on("orders"))
        assert_ended(info.value, "orders")
        await session.rollback()
        assert await connection_id(session, server, "orders") != connection  # a new one
    assert db.engines["orders"].sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_connection_ended_mid_statement_gives_the_servers_own_words(
    server: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db(await new_database(server))
    async with db.session() as session:
        connection = await connection_id(session, server)
        sleep = "SELECT pg_sleep(30)" if server == "postgresql" else "SELECT SLEEP(30)"
        running = asyncio.create_task(session.execute(sa.text(sleep)))
        await wait_until_running(server, connection)
        await end_connection(server, connection)
        with pytest.raises(ConnectionEndedError) as info:
            async with asyncio.timeout(GUARD):
                await running
        assert_ended(info.value, None)  # type: ignore[arg-type]
        if server == "postgresql":
            # PostgreSQL says why before it closes; MariaDB closes without a word.
            said = "terminating connection due to administrator command"
            assert info.value.server_message == said
            assert f"the server ended its connection: {said!r}" in str(info.value)
        await session.rollback()
        assert (await session.execute(sa.text("SELECT 3"))).scalar() == 3
    assert db.engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


# -- deadlocks --------------------------------------------------------------------------------


async def lock_waits(server: str, connection: int) -> bool:
    """Whether ``connection`` waits for a row lock."""
    if server == "postgresql":
        sql = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'"
    else:
        sql = (
            "SELECT count(*) FROM information_schema.INNODB_TRX "
            "WHERE trx_mysql_thread_id = %s AND trx_state = 'LOCK WAIT'"
        )
    return bool((await server_fetch(server, sql, connection))[0][0])


async def test_a_deadlock_names_the_bind_and_says_to_retry(
    server: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db("sqlite://", binds={"stock": await new_database(server)})
    engine = db.engines["stock"]
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER)"))
        await conn.execute(sa.text("INSERT INTO items (id, n) VALUES (1, 0), (2, 0)"))

    def update(row: int) -> sa.TextClause:
        return sa.text(f"UPDATE items SET n = n + 1 WHERE id = {row}")

    first, second = db.session(), db.session()
    try:
        await first.execute(update(1), **on("stock"))
        await second.execute(update(2), **on("stock"))
        first_id = await connection_id(first, server, "stock")
        crossing = asyncio.create_task(first.execute(update(2), **on("stock")))  # waits
        async with asyncio.timeout(GUARD):
            while not await lock_waits(server, first_id):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        closing = asyncio.create_task(second.execute(update(1), **on("stock")))  # the circle
        async with asyncio.timeout(GUARD):
            results = await asyncio.gather(crossing, closing, return_exceptions=True)
    finally:
        await first.close()
        await second.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1, results  # the server chose one victim, the other went on
    error = errors[0]
    assert isinstance(error, DeadlockError), repr(error)
    assert isinstance(error, sa_exc.OperationalError) and isinstance(error, sa_exc.DBAPIError)
    assert error.bind_key == "stock" and not error.serialization
    assert "deadlock" in error.server_message.lower()
    message = str(error)
    assert "Bind 'stock': the server rolled the transaction back to break a deadlock" in message
    assert "run the whole transaction again" in message
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


@pytest.mark.postgresql
async def test_a_serialization_failure_names_the_bind_and_says_to_retry(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db(await new_database("postgresql"))
    async with db.engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER)"))
        await conn.execute(sa.text("INSERT INTO items (id, n) VALUES (1, 0)"))
    repeatable = {"isolation_level": "REPEATABLE READ"}
    first, second = db.session(), db.session()
    try:
        for session in (first, second):
            await session.connection(execution_options=repeatable)
            await session.execute(sa.text("SELECT n FROM items"))  # each takes its snapshot
        await first.execute(sa.text("UPDATE items SET n = 1 WHERE id = 1"))
        await first.commit()
        with pytest.raises(DeadlockError) as info:
            async with asyncio.timeout(GUARD):
                await second.execute(sa.text("UPDATE items SET n = 2 WHERE id = 1"))
    finally:
        await first.close()
        await second.close()
    error = info.value
    assert isinstance(error, sa_exc.DBAPIError) and error.bind_key is None and error.serialization
    assert "could not serialize" in error.server_message
    assert "The default bind: the server could not serialize the transaction" in str(error)
    assert "run the whole transaction again" in str(error)


def test_the_errors_keep_their_facts_through_pickling() -> None:
    # Process pools and task queues pickle exceptions to hand them back.
    orig = ConnectionResetError(104, "Connection reset by peer")
    errors: list[BaseException] = [
        BindUnavailableError("a", orig, "SELECT 1"),
        BindUnavailableError("a", orig, reason="connection to h:5432 refused"),
        BindAuthenticationError("a", orig, None, "app_user"),
        DatabaseNotFoundError("a", orig, None, "sales"),
        ConnectionEndedError("a", orig, "SELECT 1", "terminating connection"),
        DeadlockError("a", orig, "UPDATE t", {"x": 1}, "deadlock detected", serialization=False),
    ]
    for error in errors:
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)
        assert vars(again) == vars(error) | {"orig": again.orig}


class StandbyConflictError(Exception):
    """What asyncpg raises on a hot standby that cancels a read to replay the primary's changes."""

    sqlstate = "40001"  # serialization_failure


def test_the_errors_of_a_read_replica_name_it_and_pickle_with_it() -> None:
    orig = ConnectionResetError(104, "Connection reset by peer")
    conflict = StandbyConflictError("canceling statement due to conflict with recovery")
    deadlock = statement_error("a", conflict, "SELECT 1", None, disconnect=False, replica=2)
    assert isinstance(deadlock, DeadlockError) and deadlock.serialization
    errors: list[BaseException] = [
        BindUnavailableError("a", orig, "SELECT 1", replica=2),
        BindAuthenticationError("a", orig, None, "app_user", replica=2),
        DatabaseNotFoundError("a", orig, None, "sales", replica=2),
        ConnectionEndedError("a", orig, "SELECT 1", "terminating connection", replica=2),
        deadlock,
    ]
    for error in errors:
        assert str(error).startswith("Replica 2 of bind 'a'"), error
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and again.replica == 2 and str(again) == str(error)
        assert vars(again) == vars(error) | {"orig": again.orig}
    assert "fix the database in the replica's URL" in str(errors[2])
    assert "the bind's URL" in str(DatabaseNotFoundError("a", orig, None, "sales"))


def _every_error_class(base: type[BaseException]) -> set[type[BaseException]]:
    found = set(base.__subclasses__())
    for cls in list(found):
        found |= _every_error_class(cls)
    return found


def test_every_asyncbind_error_pickles_with_its_facts() -> None:
    # arq hands a job's error back pickled; an error that cannot be rebuilt reaches the caller
    # as a TypeError about its constructor instead.
    from asyncbind.migrations import MigrationError, _UnknownVersionError

    orig = ConnectionResetError(104, "Connection reset by peer")
    cause = RuntimeError("the server went away")
    examples: list[BaseException] = [
        asyncbind_exceptions.AsyncBindError("plain"),
        asyncbind_exceptions.ConfigError("bad option"),
        asyncbind_exceptions.NotConfiguredError("not configured"),
        asyncbind_exceptions.NoCurrentSessionError("no session"),
        asyncbind_exceptions.SessionSharedError("get", task="b", owner="a", running="execute"),
        asyncbind_exceptions.NotFoundError("get_or_404", "no row", description="gone"),
        asyncbind_exceptions.UnknownBindError("typo", ["a", None], owner="model 'User'"),
        asyncbind_exceptions.UnresolvedTenantError("tenant", owner="model 'Note'"),
        asyncbind_exceptions.TenantMismatchError("tenant", "acme", "globex"),
        asyncbind_exceptions.CrossBindError({"a": ["x"], None: ["y"]}),
        asyncbind_exceptions.BindErrors("create_all", {"a": ValueError("x"), None: cause}),
        asyncbind_exceptions.ReadOnlyBindError("ro", "a write (x)", sent=True, replica=1),
        asyncbind_exceptions.NoReplicaError("a", ["replica 1: down"]),
        asyncbind_exceptions.PartialCommitError(["a"], "b", cause, [None]),
        asyncbind_exceptions.TwoPhaseUnsupportedError("lite", "sqlite"),
        asyncbind_exceptions.TwoPhaseTakenOverError([None, "users"]),
        asyncbind_exceptions.TwoPhasePrepareError(),
        asyncbind_exceptions.TwoPhaseInDoubtError(True, ["a"], ["b"], cause),
        BindUnavailableError("a", orig, "SELECT 1", replica=1),
        BindAuthenticationError("a", orig, None, "app_user"),
        DatabaseNotFoundError("a", orig, None, "sales"),
        ConnectionEndedError("a", orig, "SELECT 1", "terminating connection"),
        DeadlockError("a", orig, "UPDATE t", {"x": 1}, "deadlock detected"),
        asyncbind_exceptions.StatementTimeoutError("a", 2.5, "a commit", replica=2),
        asyncbind_exceptions.PoolTimeoutError(None, 30.0, pool_size=5, max_overflow=2, replica=1),
        asyncbind_exceptions.WrongEventLoopError("a", replica=2),
        asyncbind_exceptions.StartupCheckError("arq worker", {"a": "refused"}),
        asyncbind_exceptions.BulkCopyError("stopped", rows_copied=3, table="t"),
        MigrationError("failed", {"a": cause}),
        _UnknownVersionError(["0149ffcf1a5b"]),
        # The errors of a tenant's engine name the tenant.
        BindUnavailableError("tenant", orig, None, reason="refused", tenant="acme"),
        BindAuthenticationError("tenant", orig, None, "app_user", tenant="acme"),
        DatabaseNotFoundError("tenant", orig, None, "acme_db", tenant="acme"),
        ConnectionEndedError("tenant", orig, None, tenant="acme"),
        DeadlockError("tenant", orig, "UPDATE t", None, "deadlock detected", tenant="acme"),
        asyncbind_exceptions.StatementTimeoutError("tenant", 2.5, tenant="acme"),
        asyncbind_exceptions.PoolTimeoutError("tenant", 30.0, tenant="acme"),
        asyncbind_exceptions.WrongEventLoopError("tenant", tenant="acme"),
        asyncbind_exceptions.ReadOnlyBindError("tenant", "a write (x)", tenant="acme"),
    ]
    untried = _every_error_class(asyncbind_exceptions.AsyncBindError) - {type(e) for e in examples}
    assert not untried, f"add an example of {sorted(c.__name__ for c in untried)}"
    for error in examples:
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error), type(error)
        assert vars(again).keys() == vars(error).keys(), type(error)
        for name, value in vars(error).items():
            if not isinstance(value, BaseException | dict):
                assert getattr(again, name) == value, (type(error), name)
    for error in examples[-9:]:
        assert "Tenant 'acme' of bind 'tenant'" in str(error), type(error)
        assert pickle.loads(pickle.dumps(error)).tenant == "acme", type(error)
    group = pickle.loads(pickle.dumps(examples[10]))
    assert list(group.errors) == ["a", None] and str(group.exceptions[1]) == str(cause)
