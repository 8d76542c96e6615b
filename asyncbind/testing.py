"""Tests whose writes vanish, over every bind at once: the ``asyncbind`` pytest plugin.

Registered under pytest's ``pytest11`` entry point as ``asyncbind``; it does nothing until a test
asks for its fixture. Define a fixture named ``asyncbind_db`` that returns your
:class:`~asyncbind.AsyncBind` (with its tables created, once per test session is the common case),
then ask for ``asyncbind_rollback`` in a test:

- one connection per bind is opened, each in an outer transaction;
- every session the app makes meanwhile (``db.session()``, the ``db.session`` proxy,
  ``db.scope()``, the Quart, Starlette and FastAPI request sessions) joins that bind's connection
  through a SAVEPOINT, so its ``commit()`` and ``rollback()`` work as usual, inside the outer
  transaction; an engine the binds do not hold (a tenant's, see :mod:`asyncbind.tenants`, or a
  bind added meanwhile) gets such a connection the first time a session uses it;
- so does an engine of the binds that a session is given explicitly (``db.session(bind=...)``,
  ``binds={...}``, ``bind_arguments={"bind": ...}``); an engine that is not the AsyncBind's is
  used as it is, and what is written through it stays;
- a session asked for two-phase commits (``twophase=True``) runs in one phase, as the others do;
- ``db.remove_bind(key)`` rolls back and closes the test's connection of that bind first, which
  it would otherwise wait for until the test ends (:class:`~asyncbind.AsyncBindError` while a
  session's transaction is still open on it);
- a statement cut short (a timeout, a cancelled task) drops its connection, the test's, and the
  transaction with it; the next session that uses that engine gets a new connection in a new
  outer transaction (a warning says that what the test wrote there until then is gone);
- when the test ends, every outer transaction is rolled back: nothing the test wrote is left;
- except where the server committed one before: MySQL and MariaDB commit implicitly before and
  after DDL. The block then ends with :class:`~asyncbind.AsyncBindError` naming the bind, since
  what the test wrote there until then stayed.

All of it happens in the test's own event loop, whichever loop the other async fixtures run in.
Pools that belong to another loop (the tables were created in the session's, the previous test
had a loop of its own) are disposed as the test starts, so that they serve its loop, and again as
it ends, so that they belong to no loop and the next user, in whatever loop, can take them. When
everything runs in one loop, nothing is disposed.

Statements sent on ``db.engine`` or ``db.get_engine(key)`` directly (not through a session) take
connections of their own and are not rolled back. The sessions of one test share one connection
per engine, so they must not run statements at the same time (a test that gathers requests that
use the database concurrently needs real transactions instead).

:func:`rolled_back` is the same isolation as an async context manager, for other test runners.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import loops
from .cancellation import run_to_completion
from .config import BindKey
from .core import AsyncBind
from .exceptions import AsyncBindError, ConfigError, bind_name
from .registry import bind_config

__all__ = ["asyncbind_db", "asyncbind_rollback", "rolled_back"]

logger = logging.getLogger("asyncbind")

#: The session options set while a test's isolation is on.
_JOINING = ("outer_transactions", "join_transaction_mode")
_UNSET: Any = object()
#: The backends that commit a transaction implicitly before and after DDL, and the savepoint
#: that shows whether they did: it is gone after such a commit (MySQL error 1305 on RELEASE).
_COMMITS_ON_DDL = frozenset({"mysql", "mariadb"})
_MARK = "asyncbind_rolled_back"
_NO_SUCH_SAVEPOINT = 1305
#: The scopes pytest-asyncio gives event loops.
_LoopScope = Literal["function", "class", "module", "package", "session"]
#: The AsyncBinds whose pools a block has taken over from another event loop: their blocks run
#: in other loops than the one that made their tables, so each hands the pools back as it ends.
_MOVING: weakref.WeakSet[AsyncBind] = weakref.WeakSet()


@contextlib.asynccontextmanager
async def rolled_back(db: AsyncBind) -> AsyncIterator[dict[BindKey, AsyncConnection]]:
    """Inside the block, every session ``db`` makes joins one connection per engine, in an outer
    transaction that is rolled back when the block ends; yields the binds' connections by bind
    key (those of tenants are opened when first used).

    Not reentrant, and one at a time per AsyncBind: the sessions' options are ``db``'s own.
    """
    if not isinstance(db, AsyncBind):
        raise ConfigError(
            f"rolled_back() needs an AsyncBind, not {type(db).__name__}; the fixture "
            "'asyncbind_db' must return the app's AsyncBind."
        )
    maker = db.sessionmaker
    if maker.kw.get("outer_transactions") is not None:
        raise ConfigError(
            f"{db!r} is already inside rolled_back() (asyncbind_rollback); one at a time."
        )
    if await loops.dispose_other_loops_pools(_engines(db)):
        _MOVING.add(db)
    try:
        async with contextlib.AsyncExitStack() as stack:  # closing a connection rolls it back
            outer = _OuterTransactions(db, stack)
            for key, engine in db.engines.items():
                outer.by_key[key] = await outer.open(engine)
            saved = {name: maker.kw.get(name, _UNSET) for name in _JOINING}
            maker.configure(outer_transactions=outer, join_transaction_mode="create_savepoint")
            try:
                yield outer.by_key
            finally:
                for name, value in saved.items():
                    if value is _UNSET:
                        maker.kw.pop(name, None)
                    else:
                        maker.kw[name] = value
            await outer.check_still_open()
    finally:
        if db in _MOVING:
            # Hand the pools back, so that they belong to no loop when this one ends and the
            # next user (the next block, the session fixture's drop_all()), whatever its loop,
            # can take them.
            await run_to_completion(loops.dispose_running_loops_pools(_engines(db)))


class _OuterTransactions:
    """The connections of one :func:`rolled_back` block, one per engine, each in a transaction
    that ``stack`` rolls back (by closing it) when the block ends: what the sessions made in the
    block join (:class:`asyncbind.routing.OuterTransactions`)."""

    def __init__(self, db: AsyncBind, stack: contextlib.AsyncExitStack) -> None:
        self._db = db
        self._stack = stack
        self._connections: dict[sa.Engine, AsyncConnection] = {}
        #: The connections of the binds, by bind key (what the block yields).
        self.by_key: dict[BindKey, AsyncConnection] = {}

    async def open(self, engine: AsyncEngine) -> AsyncConnection:
        """Open ``engine``'s connection and its transaction now."""
        connection = await self._stack.enter_async_context(engine.connect())
        await connection.run_sync(_begin)
        self._connections[engine.sync_engine] = connection
        return connection

    def connection(self, engine: sa.Engine) -> sa.Connection | None:
        """``engine``'s connection, opened now if it has none yet (a tenant's engine) or if the
        one it had was dropped; None for an engine that is not the AsyncBind's. A session asks
        from its sync code, where SQLAlchemy lets a sync connection use the async driver."""
        found = self._connections.get(engine)
        if found is None or found.invalidated:
            async_engine = self._async_engine(engine)
            if async_engine is None:
                return None
            dropped = found
            connection = engine.connect()
            try:
                _begin(connection)
            except BaseException:
                connection.close()
                raise
            found = AsyncConnection(async_engine, connection)
            self._stack.push_async_callback(found.close)
            self._connections[engine] = found
            if dropped is not None:
                self._replaced(engine, dropped, found)
        return found.sync_connection

    def _replaced(self, engine: sa.Engine, dropped: AsyncConnection, new: AsyncConnection) -> None:
        """Put ``new`` in the place of ``engine``'s dropped connection, and say so: the test's
        writes on it were rolled back with it."""
        logger.warning(
            "rolled_back(): the test's connection to %s (database %r) was dropped, as a "
            "connection is whose statement was cut short (a timeout, a cancelled task), and its "
            "transaction was rolled back with it: what the test wrote there until then is gone. "
            "A new connection in a new transaction takes its place for the rest of the test.",
            bind_name(_key_of(engine)),
            engine.url.database,
        )
        for key, connection in self.by_key.items():
            if connection is dropped:
                self.by_key[key] = new

    async def release(self, engine: sa.Engine) -> None:
        """Roll back and close ``engine``'s connection now (its bind was removed, and
        ``remove_bind()`` waits for the connection); :class:`AsyncBindError` if a session's
        transaction is still open on it, which that wait would never see end."""
        found = self._connections.get(engine)
        if found is None:
            return
        if found.in_nested_transaction():
            name = bind_name(_key_of(engine))
            raise AsyncBindError(
                f"remove_bind() inside rolled_back(): a session's transaction is still open on "
                f"{name}, on the test's connection, so the call would wait for it until the test "
                "ends. Finish that transaction first (commit(), rollback() or close the session); "
                "outside tests too, remove_bind() returns only once the bind's sessions are done."
            )
        del self._connections[engine]
        for key, connection in list(self.by_key.items()):
            if connection is found:
                del self.by_key[key]
        await found.close()

    async def check_still_open(self) -> None:
        """Raise :class:`AsyncBindError` if the server committed an outer transaction before the
        block ended: MySQL and MariaDB commit implicitly before and after DDL."""
        ended = [
            engine for engine, connection in self._connections.items() if await _ended(connection)
        ]
        if not ended:
            return
        names = ", ".join(
            f"{bind_name(_key_of(engine))} (database {engine.url.database!r})" for engine in ended
        )
        raise AsyncBindError(
            f"rolled_back(): the server committed the test's transaction on {names} before "
            "the test ended: what the test wrote there until then may remain in the database "
            "(and show up in later tests). MySQL and MariaDB commit the transaction implicitly "
            "before and after DDL (CREATE, ALTER, DROP, TRUNCATE, RENAME, ...) and on a COMMIT "
            "sent as SQL. Create the schema before the tests that roll back (in the "
            "session-scoped 'asyncbind_db' fixture, say) and keep DDL out of them, or delete "
            "what such a test writes yourself."
        )

    def _async_engine(self, engine: sa.Engine) -> AsyncEngine | None:
        for candidate in _engines(self._db):
            if candidate.sync_engine is engine:
                return candidate
        return None


def _engines(db: AsyncBind) -> list[AsyncEngine]:
    """The engines of ``db``'s binds and of the tenants its groups have met."""
    tenants = [engine for group in db.groups.values() for engine in group.engines.values()]
    return [*db.engines.values(), *tenants]


def _key_of(engine: sa.Engine) -> BindKey:
    config = bind_config(engine)
    return None if config is None else config.key


def _begin(connection: sa.Connection) -> None:
    """Begin ``connection``'s outer transaction."""
    connection.begin()  # rolled back when the connection closes
    if connection.dialect.name == "sqlite":
        # SQLite's Python driver sends BEGIN only before the first write (never before DDL):
        # what the test sends on this connection itself is rolled back too.
        connection.exec_driver_sql("BEGIN")
    elif connection.dialect.name in _COMMITS_ON_DDL:
        # Gone if the server commits the transaction (_ended() looks for it).
        connection.exec_driver_sql(f"SAVEPOINT {_MARK}")


async def _ended(connection: AsyncConnection) -> bool:
    """Whether the server committed ``connection``'s outer transaction: its savepoint is gone."""
    if connection.dialect.name not in _COMMITS_ON_DDL or connection.invalidated:
        return False  # an invalidated one was dropped: the server rolled it back
    # On the driver's connection: SQLAlchemy refuses statements after a session's savepoint
    # failed, which is what a RELEASE or ROLLBACK TO of a savepoint the commit took does.
    return not await connection.run_sync(_release_mark)


def _release_mark(connection: sa.Connection) -> bool:
    """Release the outer transaction's savepoint; False if the server has none any more."""
    cursor = connection.connection.cursor()
    try:
        cursor.execute(f"RELEASE SAVEPOINT {_MARK}")
    except connection.dialect.loaded_dbapi.OperationalError as exc:
        if exc.args[:1] != (_NO_SUCH_SAVEPOINT,):
            raise
        return False
    finally:
        cursor.close()
    return True


@pytest.fixture
def asyncbind_db() -> AsyncBind:
    """Your AsyncBind: override this fixture in your ``conftest.py``."""
    raise pytest.UsageError(
        "asyncbind_rollback needs your AsyncBind: define a fixture named 'asyncbind_db' in "
        "conftest.py that returns it (with its tables created), for example\n\n"
        "    @pytest.fixture\n    def asyncbind_db():\n        return myapp.db\n"
    )


if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    @pytest.fixture
    def asyncbind_rollback(request: pytest.FixtureRequest) -> dict[BindKey, AsyncConnection]:
        """Everything this test writes through sessions, on every bind, is rolled back when it
        ends; the value is the connection of each bind, by bind key.

        The work is done in the test's own event loop, whichever loop the other async fixtures
        run in (``asyncio_default_fixture_loop_scope``): the sessions of the test join
        connections of its loop. One fixture below per loop scope does it."""
        name = f"_asyncbind_rollback_in_{_test_loop_scope(request)}_loop"
        connections: dict[BindKey, AsyncConnection] = request.getfixturevalue(name)
        return connections

    def _test_loop_scope(request: pytest.FixtureRequest) -> str:
        """The scope of the event loop the test runs in, as pytest-asyncio chooses it: its
        ``asyncio`` mark's ``loop_scope``, else ``asyncio_default_test_loop_scope``."""
        mark = request.node.get_closest_marker("asyncio")
        scope = mark and (mark.kwargs.get("loop_scope") or mark.kwargs.get("scope"))
        if not scope:
            try:
                scope = request.config.getini("asyncio_default_test_loop_scope")
            except ValueError:  # pytest-asyncio before 0.26: each test has a loop of its own
                scope = None
        return str(scope or "function")

    def _rollback_fixture(loop_scope: _LoopScope) -> Any:
        """The fixture that runs :func:`rolled_back` in the event loop of ``loop_scope``."""

        @pytest_asyncio.fixture(
            name=f"_asyncbind_rollback_in_{loop_scope}_loop", loop_scope=loop_scope
        )
        async def rollback(
            asyncbind_db: AsyncBind,
        ) -> AsyncIterator[dict[BindKey, AsyncConnection]]:
            async with rolled_back(asyncbind_db) as connections:
                yield connections

        return rollback

    _rollback_in_function_loop = _rollback_fixture("function")
    _rollback_in_class_loop = _rollback_fixture("class")
    _rollback_in_module_loop = _rollback_fixture("module")
    _rollback_in_package_loop = _rollback_fixture("package")
    _rollback_in_session_loop = _rollback_fixture("session")

else:  # the plugin loads in every pytest run; only its fixture needs pytest-asyncio

    @pytest.fixture(name="asyncbind_rollback")
    def _needs_pytest_asyncio() -> None:
        raise pytest.UsageError(
            "asyncbind_rollback needs pytest-asyncio: pip install pytest-asyncio"
        )
