"""db.session as a factory and as the current session; db.scope() task scopes. On real PostgreSQL
and MariaDB."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from twobinds import TwoBinds, all_zero, checked_out, names

from asyncbind import (
    AsyncBind,
    AsyncBindSession,
    ConfigError,
    NoCurrentSessionError,
    NotConfiguredError,
    RoutingSession,
    stopping,
)

pytestmark = [pytest.mark.postgresql, pytest.mark.mysql]

SLEEP = {"postgresql": "SELECT pg_sleep(0.2)", "mysql": "SELECT SLEEP(0.2)"}
#: A generous bound on work that must finish, so that a regression fails instead of hanging.
GUARD = 60


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


async def test_db_session_follows_the_sessionmaker_as_configured_later(two: TwoBinds) -> None:
    # db.session() with no arguments builds the session from the sessionmaker's class and
    # options itself: what configure() changes afterwards must still apply.
    class Audited(AsyncBindSession):
        pass

    db = two.db
    db.sessionmaker.configure(autoflush=False, info={"source": "sessionmaker"})
    db.sessionmaker.class_ = Audited
    async with db.session() as session:
        assert type(session) is Audited
        assert session.sync_session.autoflush is False
        assert session.info == {"source": "sessionmaker"}
        session.info["mine"] = True
        assert type(session.sync_session) is RoutingSession
        assert await session.scalar(sa.select(sa.func.count()).select_from(two.Item)) == 0
    # The options' info dict is the session's own copy, as a sessionmaker call makes it.
    assert db.sessionmaker.kw["info"] == {"source": "sessionmaker"}
    async with db.session(info={"call": 1}) as session:
        assert session.info == {"source": "sessionmaker", "call": 1}
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
    with pytest.raises(NotConfiguredError, match=r"init_app") as scoped:
        async with db.scope():
            pass
    assert "'db.scope()' needs one" in str(scoped.value)
    with pytest.raises(NotConfiguredError, match="init_app"):
        db.session()


async def test_async_with_db_session_says_to_call_it(two: TwoBinds) -> None:
    """``async with db.session as session`` (no call) is the habit of AsyncSession(engine); the
    proxy is not a session of its own, so it says what to write instead, in a scope too."""
    db = two.db
    for scoped in (False, True):
        async with contextlib.AsyncExitStack() as stack:
            if scoped:
                await stack.enter_async_context(db.scope())
            with pytest.raises(TypeError) as error:
                async with db.session as session:
                    await session.execute(sa.select(1))
            assert "async with db.session() as session" in str(error.value)
            assert "async with db.scope() as session" in str(error.value)
    assert all_zero(checked_out(db))


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
    # The scopes' closes ran to completion before the tasks ended; the statements they cut
    # short are ended on the server over a connection of the pool's, given back when done.
    await stopping.settle(db.engines.values())
    assert all_zero(checked_out(db))
    assert await names(db) == ([], [])


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
