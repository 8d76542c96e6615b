"""Engine construction: the arguments each bind's engine is created with, and what is wired into
it, so that what a bind does not use costs it nothing."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from sqlalchemy import pool as sa_pool
from sqlalchemy.events import ConnectionEvents

from asyncbind import AsyncBind, ConfigError, directddl, internals
from asyncbind.config import parse_config
from asyncbind.engines import engine_arguments
from asyncbind.registry import bind_config


def test_mysql_gets_recycle_and_utf8mb4_unless_told_otherwise() -> None:
    config = parse_config("mysql://root@h/db", None, None)[None]
    url, options = engine_arguments(config)
    assert url.query["charset"] == "utf8mb4"
    assert options["pool_recycle"] == 7200
    config = parse_config({"url": "mariadb://h/db?charset=latin1", "pool_recycle": 60}, None, None)[
        None
    ]
    url, options = engine_arguments(config)
    assert url.query["charset"] == "latin1"
    assert options["pool_recycle"] == 60


def arguments(url: str, **options: Any) -> dict[str, Any]:
    """The keyword arguments the engine of a default bind at ``url`` is created with."""
    return engine_arguments(parse_config({"url": url, **options}, None, None)[None])[1]


@pytest.mark.parametrize(
    ("url", "options", "pool"),
    [
        ("sqlite://", {}, sa_pool.StaticPool),  # one connection: every session sees the data
        ("sqlite:///app.db", {}, sa_pool.AsyncAdaptedQueuePool),
        ("postgresql://h/db", {}, sa_pool.AsyncAdaptedQueuePool),
        (
            "mysql://h/db",
            {"poolclass": sa_pool.AsyncAdaptedQueuePool},
            sa_pool.AsyncAdaptedQueuePool,
        ),
        ("postgresql://h/db", {"poolclass": sa_pool.StaticPool}, sa_pool.StaticPool),
    ],
)
def test_every_pool_knows_its_bind_and_event_loop(
    url: str, options: dict[str, Any], pool: type[sa_pool.Pool]
) -> None:
    poolclass = arguments(url, **options)["poolclass"]
    assert issubclass(poolclass, internals.BindPool) and issubclass(poolclass, pool)


def test_a_pool_of_the_binds_own_is_kept() -> None:
    assert arguments("postgresql://h/db", poolclass=sa.NullPool)["poolclass"] is sa.NullPool
    given = sa_pool.StaticPool(lambda: None)
    options = arguments("sqlite:///app.db", pool=given)
    assert options["pool"] is given and "poolclass" not in options
    assert "pool_reset_on_return" not in options  # the bind's pool resets as it was told


def test_asyncbind_resets_returned_connections_unless_the_bind_chose_how() -> None:
    assert arguments("sqlite:///app.db")["pool_reset_on_return"] is None
    chosen = arguments("sqlite:///app.db", pool_reset_on_return="commit")
    assert chosen["pool_reset_on_return"] == "commit"


def test_only_server_binds_get_asyncbinds_connector() -> None:
    assert "connect_args" not in arguments("sqlite:///app.db")
    for url in ("postgresql://h/db", "mysql://h/db"):
        assert callable(arguments(url)["connect_args"]["async_creator_fn"])
    own = arguments("postgresql://h/db", connect_args={"async_creator_fn": print})
    assert own["connect_args"]["async_creator_fn"] is print


def statement_listeners(db: AsyncBind, key: str | None) -> dict[str, int]:
    dispatch = db.engines[key].sync_engine.dialect.dispatch
    return {
        name: len(getattr(dispatch, name))
        for name in ("do_execute", "do_executemany", "do_execute_no_params")
    }


def replaced(db: AsyncBind, key: str | None) -> set[str]:
    """The dialect methods replaced on ``key``'s engine."""
    return set(vars(db.engines[key].sync_engine.dialect)) & internals.DIALECT_METHODS


def test_timeouts_are_wired_only_where_a_bind_sets_them(make_db: Callable[..., AsyncBind]) -> None:
    db = make_db(
        "mysql://h/db",
        binds={
            "connect": {"url": "mysql://h/db", "connect_timeout": 1},
            "statement": {"url": "mysql://h/db", "statement_timeout": 1},
        },
    )
    # No statement_timeout: the statement path has no listener to run.
    assert statement_listeners(db, None) == dict.fromkeys(statement_listeners(db, None), 0)
    # Every engine names its two-phase transactions (create_xid), timeouts or not, drops the
    # connections SQLAlchemy invalidates at once (do_terminate), and a MySQL engine's rollback
    # drops a connection whose stream was left unread (asyncbind.closing).
    always = {"do_close", "do_terminate", "create_xid", "do_rollback"}
    assert replaced(db, None) == always
    assert statement_listeners(db, "connect") == statement_listeners(db, None)
    assert replaced(db, "connect") == {"do_ping", *always}
    assert statement_listeners(db, "statement") == dict.fromkeys(statement_listeners(db, None), 1)
    assert replaced(db, "statement") == internals.DIALECT_METHODS - {"do_savepoint"}


def test_asyncpg_binds_send_ddl_directly_within_their_timeouts(
    make_db: Callable[..., AsyncBind],
) -> None:
    db = make_db(
        "postgresql://h/db",
        binds={
            "timed": {"url": "postgresql://h/db", "statement_timeout": 1},
            "other": "mysql://h/db",
        },
    )
    # Without a statement_timeout, one listener: the DDL path; with one, the timeout's listener
    # runs the DDL path itself, within the time.
    assert statement_listeners(db, None) == {
        "do_execute": 1,
        "do_executemany": 0,
        "do_execute_no_params": 0,
    }
    assert list(db.engines[None].sync_engine.dialect.dispatch.do_execute) == [directddl.listener]
    assert statement_listeners(db, "timed") == dict.fromkeys(statement_listeners(db, None), 1)
    assert directddl.listener not in db.engines["timed"].sync_engine.dialect.dispatch.do_execute
    assert statement_listeners(db, "other") == dict.fromkeys(statement_listeners(db, None), 0)


def test_read_only_listeners_go_on_read_only_binds_only(
    make_db: Callable[..., AsyncBind], tmp_path: Any
) -> None:
    db = make_db(
        f"sqlite:///{tmp_path / 'a.db'}",
        binds={"ro": {"url": f"sqlite:///{tmp_path / 'b.db'}", "read_only": True}},
    )
    assert not db.engines[None].sync_engine.dispatch.before_execute
    assert len(db.engines["ro"].sync_engine.dispatch.before_execute) == 1


def test_every_engine_is_registered_with_its_bind(make_db: Callable[..., AsyncBind]) -> None:
    db = make_db("sqlite://", binds={"users": "postgresql://h/db", "orders": "mysql://h/db"})
    for key, engine in db.engines.items():
        config = bind_config(engine)
        assert config is db.bind_configs[key] and config.key == key
        assert engine.sync_engine.pool._asyncbind_key == key  # type: ignore[attr-defined]


def test_sqlite_needs_no_server_driver() -> None:
    """``pip install asyncbind`` without the postgresql and mysql extras: in a fresh interpreter
    where asyncpg, aiomysql and PyMySQL cannot be imported, SQLite works and a PostgreSQL bind is a
    ConfigError naming the extra."""
    script = textwrap.dedent(
        """
        import asyncio, importlib.abc, sys

        HIDDEN = ("asyncpg", "aiomysql", "pymysql")

        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in HIDDEN:
                    raise ImportError(f"{name} is hidden", name=name)
                return None

        sys.meta_path.insert(0, Hide())
        import sqlalchemy as sa
        import asyncbind

        async def main():
            async with asyncbind.AsyncBind("sqlite://", binds={"b": "sqlite://"}) as db:
                async with db.session() as session:
                    statement = sa.text("SELECT 1")
                    assert (await session.execute(statement)).scalar() == 1
            try:
                asyncbind.AsyncBind("postgresql://app@127.0.0.1/app")
            except asyncbind.ConfigError as exc:
                print(exc)

        asyncio.run(main())
        assert not any(name.split(".")[0] in HIDDEN for name in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'asyncbind[postgresql]'" in done.stdout


@pytest.mark.postgresql
@pytest.mark.mysql
async def test_shared_pool_sizing_reaches_only_the_pools_that_take_it(
    new_database: NewDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """Shared pool sizing sizes the queue pools; in-memory SQLite's StaticPool and a NullPool
    are made without it, and say so at DEBUG only."""
    caplog.set_level(logging.DEBUG, logger="asyncbind")
    postgresql, mysql = await new_database("postgresql"), await new_database("mysql")
    db = AsyncBind.from_config(
        {
            "SQLALCHEMY_DATABASE_URI": postgresql,
            "SQLALCHEMY_ENGINE_OPTIONS": {"pool_size": 2, "max_overflow": 1, "pool_timeout": 5},
            "SQLALCHEMY_BINDS": {
                "cache": "sqlite://",
                "legacy": {"url": mysql, "poolclass": sa.NullPool},
            },
        }
    )
    async with db:
        pool = db.engine.sync_engine.pool
        assert isinstance(pool, sa_pool.QueuePool)
        assert (pool.size(), pool._max_overflow, pool._timeout) == (2, 1, 5)
        assert isinstance(db.engines["cache"].sync_engine.pool, sa_pool.StaticPool)
        assert isinstance(db.engines["legacy"].sync_engine.pool, sa_pool.NullPool)
        for key in db.engines:
            async with db.engines[key].connect() as conn:
                assert (await conn.execute(sa.text("SELECT 1"))).scalar() == 1
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert all(r.levelno == logging.DEBUG for r in caplog.records if "left out" in r.getMessage())
    assert any("Bind 'cache'" in m and "'pool_size'" in m and "StaticPool" in m for m in left_out)
    assert any("Bind 'legacy'" in m and "'max_overflow'" in m and "NullPool" in m for m in left_out)


@pytest.mark.parametrize(
    ("bind", "pool"),
    [
        pytest.param({"url": "sqlite://", "pool_size": 3}, "StaticPool", id="memory-sqlite"),
        pytest.param(
            {"url": "postgresql://u:hunter2@h/db", "poolclass": sa.NullPool, "max_overflow": 3},
            "NullPool",
            id="null-pool",
        ),
    ],
)
def test_a_binds_own_pool_sizing_its_pool_does_not_take_is_refused(
    bind: dict[str, Any], pool: str
) -> None:
    with pytest.raises(ConfigError) as info:
        AsyncBind("sqlite:///app.db", binds={"cache": bind}, engine_options={"pool_size": 5})
    message = str(info.value)
    assert "Bind 'cache'" in message and pool in message
    assert repr(next(k for k in bind if k in ("pool_size", "max_overflow"))) in message
    assert "Remove it from the bind's options" in message
    assert "hunter2" not in message


def test_rejected_options_are_named_as_the_application_gave_them() -> None:
    with pytest.raises(ConfigError) as info:
        AsyncBind(
            binds={"cache": {"url": "postgresql://u:hunter2@h/db", "no_such_option": 1}},
            engine_options={"pool_recycle": 60, "echo": False},
        )
    message = str(info.value)
    assert "Bind 'cache': its engine options were rejected" in message
    assert "its own: no_such_option; shared by every bind: echo, pool_recycle" in message
    for added in ("poolclass", "pool_reset_on_return", "connect_args"):
        assert added not in message  # asyncbind's own, not the application's
    assert ".." not in message and "hunter2" not in message


def test_a_pool_made_already_gets_no_pool_options() -> None:
    given = sa_pool.NullPool(lambda: None)
    options = arguments("mysql://h/db", pool=given)
    assert options["pool"] is given and "pool_recycle" not in options
    config = parse_config({"url": "mysql://h/db", "pool": given}, None, {"pool_size": 5})[None]
    assert "pool_size" not in engine_arguments(config)[1]


def test_no_bind_listens_for_connection_events(make_db: Callable[..., AsyncBind]) -> None:
    """A connection event listener of any kind (``before_execute``, ``savepoint``, ...) puts every
    statement of its engine on SQLAlchemy's slower path with events: asyncbind adds none, on any
    backend, with or without timeouts (what it needs there goes through dialect events and
    methods)."""
    names = [name for name in vars(ConnectionEvents) if not name.startswith("_")]
    db = make_db(
        "sqlite:///app.db",
        binds={
            "pg": {"url": "postgresql://h/db", "statement_timeout": 1},
            "my": {"url": "mysql://h/db", "statement_timeout": 1, "connect_timeout": 1},
            "memory": "sqlite://",
        },
    )
    for key, engine in db.engines.items():
        listened = [name for name in names if getattr(engine.sync_engine.dispatch, name, None)]
        assert listened == [], key
