"""Tests whose writes vanish, over every bind at once: the ``asyncbind`` pytest plugin.

Registered under pytest's ``pytest11`` entry point as ``asyncbind``; it does nothing until a test
asks for its fixture. Define a fixture named ``asyncbind_db`` that returns your
:class:`~asyncbind.AsyncBind` (with its tables created, once per test session is the common case),
then ask for ``asyncbind_rollback`` in a test:

- one connection per bind is opened, each in an outer transaction;
- every session the app makes meanwhile (``db.session()``, the ``db.session`` proxy,
  ``db.scope()``, the Quart, Starlette and FastAPI request sessions) joins that bind's connection
  through a SAVEPOINT, so its ``commit()`` and ``rollback()`` work as usual, inside the outer
  transaction;
- when the test ends, every outer transaction is rolled back: nothing the test wrote is left.

Statements sent on ``db.engine`` or ``db.get_engine(key)`` directly (not through a session) take
connections of their own and are not rolled back. The sessions of one test share one connection
per bind, so they must not run statements at the same time (a test that gathers requests that
use the database concurrently needs real transactions instead).

:func:`rolled_back` is the same isolation as an async context manager, for other test runners.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from . import loops
from .config import BindKey
from .core import AsyncBind
from .exceptions import ConfigError

__all__ = ["asyncbind_db", "asyncbind_rollback", "rolled_back"]

#: The session options set while a test's isolation is on.
_JOINING = ("binds", "join_transaction_mode")
_UNSET: Any = object()


@contextlib.asynccontextmanager
async def rolled_back(db: AsyncBind) -> AsyncIterator[dict[BindKey, AsyncConnection]]:
    """Inside the block, every session ``db`` makes joins one connection per bind, in an outer
    transaction that is rolled back when the block ends; yields those connections by bind key.

    Not reentrant, and one at a time per AsyncBind: the sessions' options are ``db``'s own.
    """
    if not isinstance(db, AsyncBind):
        raise ConfigError(
            f"rolled_back() needs an AsyncBind, not {type(db).__name__}; the fixture "
            "'asyncbind_db' must return the app's AsyncBind."
        )
    maker = db.sessionmaker
    if maker.kw.get("join_transaction_mode") == "create_savepoint" and maker.kw.get("binds"):
        raise ConfigError(
            f"{db!r} is already inside rolled_back() (asyncbind_rollback); one at a time."
        )
    await loops.dispose_other_loops_pools(db.engines.values())
    async with contextlib.AsyncExitStack() as stack:
        connections: dict[BindKey, AsyncConnection] = {}
        for key, engine in db.engines.items():
            connection = await stack.enter_async_context(engine.connect())
            await connection.begin()  # rolled back when the connection closes
            if connection.dialect.name == "sqlite":
                # SQLite's Python driver sends BEGIN only before the first write, so the
                # sessions' SAVEPOINT would open the transaction and its RELEASE commit it.
                await connection.exec_driver_sql("BEGIN")
            connections[key] = connection
        saved = {name: maker.kw.get(name, _UNSET) for name in _JOINING}
        maker.configure(binds=dict(connections), join_transaction_mode="create_savepoint")
        try:
            yield connections
        finally:
            for name, value in saved.items():
                if value is _UNSET:
                    maker.kw.pop(name, None)
                else:
                    maker.kw[name] = value


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

    @pytest_asyncio.fixture
    async def asyncbind_rollback(
        asyncbind_db: AsyncBind,
    ) -> AsyncIterator[dict[BindKey, AsyncConnection]]:
        """Everything this test writes through sessions, on every bind, is rolled back when it
        ends; the value is the connection of each bind, by bind key."""
        async with rolled_back(asyncbind_db) as connections:
            yield connections

else:  # the plugin loads in every pytest run; only its fixture needs pytest-asyncio

    @pytest.fixture(name="asyncbind_rollback")
    def _needs_pytest_asyncio() -> None:
        raise pytest.UsageError(
            "asyncbind_rollback needs pytest-asyncio: pip install pytest-asyncio"
        )
