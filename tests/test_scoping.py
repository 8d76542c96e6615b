"""db.session as a factory and as the current session; db.scope() task scopes; sessions refused
to a second task while a first one is using them. On real PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.util import await_
from twobinds import TwoBinds, add_models, all_zero, checked_out, make_urls, names

from asyncbind import (
    AsyncBind,
    ConfigError,
    NoCurrentSessionError,
    NotConfiguredError,
    RoutingSession,
    SessionSharedError,
)
from asyncbind.sharing import guarded_session_class, is_guarded

pytestmark = [pytest.mark.postgresql, pytest.mark.mysql]

SLEEP = {"postgresql": "SELECT pg_sleep(0.2)", "mysql": "SELECT SLEEP(0.2)"}
#: A generous bound on work that must finish, so that a regression fails instead of hanging.
GUARD = 60


@pytest.fixture
async def two(new_database: Any, make_db: Callable[..., AsyncBind]) -> TwoBinds:
    """An AsyncBind over a new PostgreSQL database (default bind) and a new MariaDB database
    (bind 'users'), with their tables made."""
    postgresql, mysql = await make_urls(new_database)
    binds = add_models(make_db(postgresql, binds={"users": mysql}))
    await binds.db.create_all()
    return binds


# -- db.session() --------------------------------------------------------------------------------


async def test_calling_db_session_makes_new_independent_sessions(two: TwoBinds) -> None:
    db = two.db
    first, second = db.session(), db.session(autoflush=False)
    assert isinstance(first, AsyncSession) and isinstance(second, AsyncSession)
    assert first is not second
    assert second.sync_session.autoflush is False
    first.add(two.Item(name="first"))
    await first.commit()
    assert await second.scalar(sa.select(sa.func.count()).select_from(two.Item)) == 1
    await first.close()
    await second.close()
    assert all_zero(checked_out(db))


async def test_db_session_outside_any_scope_says_how_to_get_one(two: TwoBinds) -> None:
    db = two.db
    with pytest.raises(NoCurrentSessionError) as error:
        await db.session.execute(sa.select(1))
    message = str(error.value)
    assert "db.session.execute" in message
    assert "async with db.scope()" in message
    assert "async with db.session() as session" in message
    assert "init_app" in message
    with pytest.raises(NoCurrentSessionError, match=r"db\.session\.add"):
        db.session.add(two.Item(name="x"))
    with pytest.raises(NoCurrentSessionError, match=r"db\.session\.autoflush"):
        db.session.autoflush = False
    assert isinstance(NoCurrentSessionError("x"), RuntimeError)
    await db.session.remove()  # nothing to remove: not an error


async def test_db_session_before_configure_says_to_call_init_app() -> None:
    db = AsyncBind()
    with pytest.raises(NotConfiguredError) as error:
        db.session.add(object())
    assert "db.session.add" in str(error.value)
    assert "init_app(app)" in str(error.value)
    with pytest.raises(NotConfiguredError, match="init_app"):
        async with db.scope():
            pass
    with pytest.raises(NotConfiguredError, match="init_app"):
        db.session()


def test_private_names_are_not_forwarded() -> None:
    # Introspection (asyncio.iscoroutinefunction, copy, ...) must see a plain object.
    db = AsyncBind()
    assert not hasattr(db.session, "_is_coroutine")
    assert not asyncio.iscoroutinefunction(db.session)
    assert "SessionFactory" in repr(db.session)


def test_init_app_refuses_what_is_not_a_quart_app() -> None:
    with pytest.raises(ConfigError) as error:
        AsyncBind("sqlite://").init_app(object())
    message = str(error.value)
    assert "builtins.object" in message
    assert "AsyncBindMiddleware" in message and "session_dependency" in message


# -- db.scope() ----------------------------------------------------------------------------------


async def test_scope_makes_db_session_this_tasks_session_over_two_binds(two: TwoBinds) -> None:
    db, Item, User = two.db, two.Item, two.User
    async with db.scope() as session:
        assert isinstance(session, AsyncSession)
        db.session.add(Item(name="scoped item"))
        db.session.add_all([User(name="scoped user")])
        assert db.session.new == session.new and len(session.new) == 2
        await db.session.commit()
        assert (await db.session.execute(sa.select(User.name))).scalar_one() == "scoped user"
        assert await db.session.scalar(sa.select(Item.name)) == "scoped item"
        assert db.session.info is session.info
        loaded = await db.session.get(Item, 1)
        assert loaded in db.session
        assert loaded in list(db.session)
        assert not all_zero(checked_out(db))  # the session holds a connection per bind
    assert all_zero(checked_out(db))  # closed with the scope
    assert len(session.identity_map) == 0
    with pytest.raises(NoCurrentSessionError):
        db.session.add(Item(name="after"))
    assert await names(db) == (["scoped item"], ["scoped user"])


async def test_scope_rolls_back_what_was_not_committed(two: TwoBinds) -> None:
    db = two.db
    async with db.scope():
        db.session.add(two.Item(name="kept"))
        await db.session.commit()
        db.session.add_all([two.Item(name="flushed only"), two.User(name="flushed only")])
        await db.session.flush()
    with pytest.raises(LookupError, match="boom"):
        async with db.scope():
            db.session.add(two.User(name="failed"))
            await db.session.flush()
            raise LookupError("boom")
    assert all_zero(checked_out(db))
    assert await names(db) == (["kept"], [])


async def test_scopes_nest_and_restore_the_outer_session(two: TwoBinds) -> None:
    db = two.db
    async with db.scope() as outer:
        assert db.session.sync_session is outer.sync_session
        async with db.scope() as inner:
            assert inner is not outer
            assert db.session.sync_session is inner.sync_session
        assert db.session.sync_session is outer.sync_session
        scope = db.scope()
        async with scope:
            with pytest.raises(Exception, match="already open"):
                await scope.__aenter__()


async def test_remove_closes_the_current_session_and_the_next_use_makes_another(
    two: TwoBinds,
) -> None:
    db = two.db
    async with db.scope() as first:
        await db.session.execute(sa.select(two.Item))
        assert checked_out(db)[None] == 1
        await db.session.remove()
        assert checked_out(db)[None] == 0
        assert db.session.sync_session is not first.sync_session
    assert all_zero(checked_out(db))


async def test_a_task_that_outlives_its_inherited_scope_gets_no_session(two: TwoBinds) -> None:
    db = two.db
    go_on = asyncio.Event()

    async def late() -> None:
        await go_on.wait()
        db.session.add(two.Item(name="too late"))

    async with db.scope():
        task = asyncio.create_task(late())  # inherits the scope
    go_on.set()
    with pytest.raises(NoCurrentSessionError) as error:
        await task
    assert "scope that has ended" in str(error.value)
    assert "async with db.scope()" in str(error.value)
    assert all_zero(checked_out(db))


async def test_concurrent_tasks_each_with_their_own_scope(two: TwoBinds) -> None:
    """The worker pattern: N tasks at once, each with db.scope(), each writing to both binds."""
    db, Item, User = two.db, two.Item, two.User
    sessions: list[AsyncSession] = []

    async def worker(n: int) -> None:
        async with db.scope() as session:
            sessions.append(session)
            db.session.add_all([Item(name=f"item {n}"), User(name=f"user {n}")])
            await db.session.execute(sa.text(SLEEP["postgresql"]))  # overlap the tasks
            await db.session.commit()
            assert db.session.sync_session is session.sync_session

    async with db:
        await asyncio.gather(*(worker(n) for n in range(8)))
        assert len({id(s) for s in sessions}) == 8
        assert all_zero(checked_out(db))
        items, users = await names(db)
    assert items == [f"item {n}" for n in range(8)]
    assert users == [f"user {n}" for n in range(8)]


async def test_a_cancelled_scope_still_closes_its_session(two: TwoBinds) -> None:
    db = two.db
    started = asyncio.Event()

    async def slow() -> None:
        async with db.scope():
            db.session.add(two.User(name="never"))
            await db.session.flush()
            started.set()
            await db.session.execute(sa.text(SLEEP["postgresql"].replace("0.2", "30")))

    tasks = [asyncio.create_task(slow()) for _ in range(4)]
    await started.wait()
    await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    async with asyncio.timeout(GUARD):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    # The scopes' closes ran to completion before the tasks ended.
    assert all_zero(checked_out(db))
    assert await names(db) == ([], [])


# -- one session, two tasks ----------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["cold", "warm"])
async def test_one_session_gathered_over_tasks_is_refused(two: TwoBinds, pool: str) -> None:
    """SQLAlchemy fails here only sometimes (a cold pool), with IllegalStateChangeError; asyncbind
    refuses the second task every time, before it sends anything."""
    db = two.db
    if pool == "warm":
        async with db.session() as warm:
            await warm.execute(sa.select(two.Item))
            await warm.execute(sa.select(two.User))
    session = db.session()

    async def query(n: int) -> Any:
        asyncio.current_task().set_name(f"query-{n}")  # type: ignore[union-attr]
        # PostgreSQL only: were the session shared after all, a leaked MariaDB transaction would
        # hold a lock that DROP DATABASE waits for.
        return (await session.execute(sa.select(two.Item))).all()

    with pytest.raises(SessionSharedError) as error:
        async with asyncio.timeout(GUARD):
            await asyncio.gather(*(query(n) for n in range(4)))
    refused = error.value
    assert refused.owner == "query-0"
    assert refused.task == "query-1"
    assert refused.operation == "execute()" and refused.running == "execute()"
    message = str(refused)
    assert "'query-1'" in message and "'query-0'" in message
    assert "async with db.scope()" in message
    # close() waits for query-0's execute, then closes: nothing leaks.
    async with asyncio.timeout(GUARD):
        await session.close()
    assert all_zero(checked_out(db))


async def test_tasks_sharing_an_inherited_scope_are_refused(two: TwoBinds) -> None:
    db = two.db

    async def write(n: int) -> None:
        db.session.add(two.Item(name=f"item {n}"))
        await db.session.commit()

    with pytest.raises(SessionSharedError, match=r"db\.scope"):
        async with asyncio.timeout(GUARD), db.scope():
            await db.session.execute(sa.select(1))
            await asyncio.gather(*(write(n) for n in range(3)))
    assert all_zero(checked_out(db))


async def test_sync_methods_are_refused_while_another_task_is_in_flight(two: TwoBinds) -> None:
    db = two.db
    async with db.session() as session:
        running = asyncio.create_task(session.execute(sa.text(SLEEP["postgresql"])))
        await asyncio.sleep(0)  # the task starts and sends its statement
        with pytest.raises(SessionSharedError) as error:
            session.add(two.Item(name="late"))
        assert error.value.operation == "add()"
        assert error.value.running == "execute()"
        await running
        session.add(two.Item(name="late"))  # the session is free again
        await session.commit()
    assert await names(db) == (["late"], [])


async def test_the_refusal_names_the_task_whose_run_sync_is_in_flight(two: TwoBinds) -> None:
    db = two.db

    def slow(sync_session: Any) -> Any:
        return sync_session.execute(sa.text(SLEEP["postgresql"])).all()

    async with db.session() as session:
        running = asyncio.create_task(session.run_sync(slow), name="the-owner")
        await asyncio.sleep(0)
        with pytest.raises(SessionSharedError) as error:
            await session.execute(sa.select(two.Item))
        assert error.value.owner == "the-owner" and error.value.running == "execute()"
        assert error.value.task == asyncio.current_task().get_name()  # type: ignore[union-attr]
        assert len(await running) == 1
    assert all_zero(checked_out(db))


async def test_the_refusal_names_the_task_that_called_close_not_the_one_close_runs_in(
    two: TwoBinds, monkeypatch: pytest.MonkeyPatch
) -> None:
    # close() runs in a task of its own so that a cancellation cannot cut it short; the refusal
    # names the task the user knows, the one that called it.
    db = two.db
    dialect = db.engines[None].sync_engine.dialect
    rolling_back, release = asyncio.Event(), asyncio.Event()
    rollback = dialect.do_rollback

    def slow_rollback(dbapi_connection: Any) -> None:
        rolling_back.set()
        await_(release.wait())
        rollback(dbapi_connection)

    monkeypatch.setattr(dialect, "do_rollback", slow_rollback)
    session = db.session()
    await session.execute(sa.select(two.Item))
    closing = asyncio.create_task(session.close(), name="the-closer")
    try:
        async with asyncio.timeout(GUARD):
            await rolling_back.wait()
        with pytest.raises(SessionSharedError) as error:
            await session.execute(sa.select(two.Item))
        assert error.value.owner == "the-closer" and error.value.running == "close()"
        assert "task 'the-closer' is using" in str(error.value)
    finally:
        release.set()
        await closing
    assert all_zero(checked_out(db))


async def test_begin_blocks_commit_or_roll_back_on_both_binds(two: TwoBinds) -> None:
    db = two.db
    async with db.session() as session:
        async with session.begin():
            session.add_all([two.Item(name="kept"), two.User(name="kept")])
        with pytest.raises(ZeroDivisionError):
            async with session.begin():
                session.add_all([two.Item(name="undone"), two.User(name="undone")])
                await session.flush()
                1 / 0  # noqa: B018
        async with session.begin():
            session.add(two.Item(name="outer"))
            with pytest.raises(ZeroDivisionError):
                async with session.begin_nested():
                    session.add(two.Item(name="savepoint"))
                    await session.flush()
                    1 / 0  # noqa: B018
        transaction = await session.begin()
        session.add(two.User(name="called"))
        await transaction.commit()
    assert await names(db) == (["kept", "outer"], ["called", "kept"])
    assert all_zero(checked_out(db))


@pytest.mark.parametrize("ending", ["block", "commit"])
async def test_the_commit_of_a_begin_block_is_refused_while_another_task_is_in_flight(
    two: TwoBinds, ending: str
) -> None:
    db = two.db
    async with db.session() as session:
        transaction = await session.begin()
        session.add(two.Item(name="pending"))
        await session.flush()
        running = asyncio.create_task(session.execute(sa.text(SLEEP["postgresql"])), name="busy")
        await asyncio.sleep(0)
        with pytest.raises(SessionSharedError) as error:
            if ending == "block":
                await transaction.__aexit__(None, None, None)
            else:
                await transaction.commit()
        assert error.value.owner == "busy" and error.value.running == "execute()"
        expected = "the end of 'async with session.begin()'" if ending == "block" else "commit()"
        assert error.value.operation == expected
        assert len((await running).all()) == 1
        assert await names(db) == ([], [])  # nothing was committed by the refused call
        await transaction.commit()  # the session is free again
    assert await names(db) == (["pending"], [])
    assert all_zero(checked_out(db))


async def test_a_session_handed_from_task_to_task_is_allowed(two: TwoBinds) -> None:
    """One task after the other (Starlette runs a streaming body in a task of its own)."""
    db = two.db
    async with db.session() as session:
        for n in range(3):
            await asyncio.create_task(session.execute(sa.select(two.Item)))
            await asyncio.create_task(_add_and_flush(session, two.User(name=f"user {n}")))
        await session.commit()
    assert all_zero(checked_out(db))
    assert await names(db) == ([], ["user 0", "user 1", "user 2"])


async def _add_and_flush(session: AsyncSession, obj: Any) -> None:
    session.add(obj)
    await session.flush()


@pytest.mark.parametrize("cleanup", ["close", "reset"])
async def test_cleanup_from_another_task_waits_for_the_operation_in_flight(
    two: TwoBinds, cleanup: str
) -> None:
    db = two.db
    session = db.session()
    session.add(two.User(name="pending"))
    async with asyncio.timeout(GUARD):
        result, _ = await asyncio.gather(
            session.execute(sa.text(SLEEP["postgresql"])), getattr(session, cleanup)()
        )
    assert len(result.all()) == 1
    assert all_zero(checked_out(db))
    assert not session.new  # the cleanup ran, after the statement
    await session.close()
    assert await names(db) == ([], [])


async def test_a_sync_close_is_refused_while_another_task_is_in_flight(two: TwoBinds) -> None:
    """Waiting needs SQLAlchemy's greenlet; a plain sync call cannot wait, so it is refused."""
    db = two.db
    async with db.session() as session:
        running = asyncio.create_task(session.execute(sa.text(SLEEP["postgresql"])))
        await asyncio.sleep(0)
        with pytest.raises(SessionSharedError) as error:
            session.sync_session.close()
        assert error.value.operation == "close()" and error.value.running == "execute()"
        await running
    assert all_zero(checked_out(db))


async def test_guarded_classes_wrap_custom_session_classes(two: TwoBinds) -> None:
    class Mine(AsyncSession):
        pass

    guarded = guarded_session_class(Mine)
    assert issubclass(guarded, Mine) and is_guarded(guarded)
    assert guarded_session_class(Mine) is guarded
    assert guarded_session_class(guarded) is guarded
    db = two.db
    assert is_guarded(db.sessionmaker.class_)
    custom = AsyncBind("sqlite://", session_options={"class_": Mine})
    try:
        session = custom.session()
        assert isinstance(session, Mine) and is_guarded(type(session))
        await session.close()
    finally:
        await custom.dispose()


class Tagging(RoutingSession):
    """A sync session whose methods take more than SQLAlchemy's, in every kind of parameter."""

    def add(self, instance: Any, /, *tags: str, _warn: bool = True, **labels: str) -> None:
        instance.name = " ".join([instance.name, *tags, *(f"{k}={v}" for k, v in labels.items())])
        super().add(instance, _warn=_warn)

    def expire(self, instance: Any, attribute_names: Any = None, *, why: str) -> None:
        instance.name = f"{instance.name} ({why})"


async def test_a_custom_sync_session_keeps_its_signatures_and_is_refused_too(
    new_database: Any, make_db: Callable[..., AsyncBind]
) -> None:
    """The check is made with each method's own parameters: arguments of every kind reach the
    user's methods as given, and a second task is still refused."""
    postgresql, mysql = await make_urls(new_database)
    options = {"sync_session_class": Tagging}
    two = add_models(make_db(postgresql, binds={"users": mysql}, session_options=options))
    await two.db.create_all()
    async with two.db.session() as session:
        sync = session.sync_session
        assert isinstance(sync, Tagging) and is_guarded(type(sync))
        lamp = two.Item(name="lamp")
        sync.add(lamp, "red", "new", colour="blue")
        sync.expire(lamp, why="sale")
        session.add(two.User(name="ada"))
        running = asyncio.create_task(session.execute(sa.text(SLEEP["postgresql"])))
        await asyncio.sleep(0)
        with pytest.raises(SessionSharedError) as error:
            sync.add(two.Item(name="late"), "x", colour="y")
        assert error.value.operation == "add()" and error.value.running == "execute()"
        with pytest.raises(SessionSharedError):
            sync.expire(lamp, why="late")
        await running
        await session.commit()
    assert await names(two.db) == (["lamp red new colour=blue (sale)"], ["ada"])
    assert all_zero(checked_out(two.db))


# -- no framework needed -------------------------------------------------------------------------


def test_import_asyncbind_needs_no_framework(tmp_path: Path) -> None:
    """In a fresh interpreter where the frameworks cannot be imported at all."""
    script = textwrap.dedent(
        """
        import asyncio, importlib.abc, sys

        HIDDEN = ("quart", "starlette", "fastapi", "httpx", "flask", "werkzeug", "anyio")

        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in HIDDEN:
                    raise ImportError(f"{name} is hidden")
                return None

        sys.meta_path.insert(0, Hide())
        import asyncbind
        import asyncbind.integrations
        import sqlalchemy as sa

        async def main():
            db = asyncbind.AsyncBind("sqlite://")
            async with db, db.scope():
                assert (await db.session.execute(sa.text("SELECT 1"))).scalar() == 1
            try:
                db.init_app(object())
            except asyncbind.ConfigError:
                pass
            else:
                raise SystemExit("init_app accepted an object")

        asyncio.run(main())
        loaded = sorted(n for n in sys.modules if n.split(".")[0] in HIDDEN)
        print("loaded:", loaded)
        """
    )
    path = tmp_path / "no_frameworks.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    done = subprocess.run(
        [sys.executable, "-W", "error", str(path)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "loaded: []"
