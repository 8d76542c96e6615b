"""Sessions refused to a second task while a first one is using them; handed from task to task;
cleaned up from another task or under cancellation. On real PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.util import await_
from twobinds import TwoBinds, add_models, all_zero, checked_out, make_urls, names

from asyncbind import (
    AsyncBind,
    AsyncBindSession,
    ConfigError,
    RoutingSession,
    SessionSharedError,
)
from asyncbind.tasksafety import TaskSafeSession

pytestmark = [pytest.mark.postgresql, pytest.mark.mysql]

SLEEP = "SELECT pg_sleep(0.2)"  # on the default bind, PostgreSQL
#: A generous bound on work that must finish, so that a regression fails instead of hanging.
GUARD = 60


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


@pytest.mark.parametrize(
    "call",
    ["add", "add_all", "expire", "expire_all", "expunge", "expunge_all"],
)
async def test_sync_methods_are_refused_while_another_task_is_in_flight(
    two: TwoBinds, call: str
) -> None:
    db = two.db
    async with db.session() as session:
        kept = two.Item(name="kept")
        session.add(kept)
        await session.flush()
        late = two.Item(name="late")
        arguments = {
            "add": (late,),
            "add_all": ([late],),
            "expire": (kept,),
            "expunge": (kept,),
        }.get(call, ())
        running = asyncio.create_task(session.execute(sa.text(SLEEP)))
        await asyncio.sleep(0)  # the task starts and sends its statement
        with pytest.raises(SessionSharedError) as error:
            getattr(session, call)(*arguments)
        assert error.value.operation == f"{call}()"
        assert error.value.running == "execute()"
        assert kept in session and late not in session  # refused before it did anything
        await running
        session.add(late)  # the session is free again
        await session.commit()
    assert await names(db) == (["kept", "late"], [])


OPERATIONS: dict[str, tuple[str, Callable[[AsyncSession, TwoBinds], Any]]] = {
    # operation: (the label the refusal gives it, the call)
    "execute": ("execute()", lambda s, two: s.execute(sa.select(two.Item))),
    "scalar": ("scalar()", lambda s, two: s.scalar(sa.select(two.Item))),
    "scalars": ("execute()", lambda s, two: s.scalars(sa.select(two.Item))),
    "stream": ("stream()", lambda s, two: s.stream(sa.select(two.Item))),
    "stream_scalars": ("stream()", lambda s, two: s.stream_scalars(sa.select(two.Item))),
    "get": ("get()", lambda s, two: s.get(two.Item, 1)),
    "flush": ("flush()", lambda s, two: s.flush()),
    "commit": ("commit()", lambda s, two: s.commit()),
    "rollback": ("rollback()", lambda s, two: s.rollback()),
    "connection": ("connection()", lambda s, two: s.connection()),
    "run_sync": ("run_sync()", lambda s, two: s.run_sync(lambda sync: None)),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_every_operation_that_awaits_is_refused_while_another_task_is_in_flight(
    two: TwoBinds, operation: str
) -> None:
    label, call = OPERATIONS[operation]
    async with two.db.session() as session:
        running = asyncio.create_task(session.execute(sa.text(SLEEP)))
        await asyncio.sleep(0)  # the task starts and sends its statement
        with pytest.raises(SessionSharedError) as error:
            await call(session, two)
        assert (error.value.operation, error.value.running) == (label, "execute()")
        await running
        await call(session, two)  # the session is free again


async def test_the_refusal_names_the_task_whose_run_sync_is_in_flight(two: TwoBinds) -> None:
    db = two.db

    def slow(sync_session: Any) -> Any:
        return sync_session.execute(sa.text(SLEEP)).all()

    async with db.session() as session:
        running = asyncio.create_task(session.run_sync(slow), name="the-owner")
        await asyncio.sleep(0)
        with pytest.raises(SessionSharedError) as error:
            await session.execute(sa.select(two.Item))
        assert error.value.owner == "the-owner" and error.value.running == "run_sync()"
        assert error.value.task == asyncio.current_task().get_name()  # type: ignore[union-attr]
        assert len(await running) == 1
    assert all_zero(checked_out(db))


async def test_an_operation_calling_another_in_the_same_task_goes_through(two: TwoBinds) -> None:
    """``scalars()`` calls ``execute()``; a run_sync() function may use the AsyncSession's own
    methods, and close it."""
    db = two.db
    session = db.session()

    def work(sync_session: Any) -> int:
        session.add(two.Item(name="from run_sync"))  # the AsyncSession's add, inside run_sync
        sync_session.flush()  # autoflush and flush run in the same operation
        count = sync_session.scalar(sa.select(sa.func.count()).select_from(two.Item))
        sync_session.commit()
        await_(session.close())  # does not wait for the operation it is part of
        return int(count)

    assert list(await session.scalars(sa.select(two.Item.name))) == []
    async with asyncio.timeout(GUARD):
        assert await session.run_sync(work) == 1
    assert all_zero(checked_out(db))
    assert not session.identity_map  # closed
    assert await names(db) == (["from run_sync"], [])
    await session.close()


def slow_rollbacks(
    db: AsyncBind, monkeypatch: pytest.MonkeyPatch
) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the default bind's rollbacks wait: the first event is set when one starts, and it
    goes on once the second is set."""
    dialect = db.engines[None].sync_engine.dialect
    rolling_back, release = asyncio.Event(), asyncio.Event()
    rollback = dialect.do_rollback

    def slow_rollback(dbapi_connection: Any) -> None:
        rolling_back.set()
        await_(release.wait())
        rollback(dbapi_connection)

    monkeypatch.setattr(dialect, "do_rollback", slow_rollback)
    return rolling_back, release


async def test_the_refusal_names_the_task_that_called_close_not_the_one_close_runs_in(
    two: TwoBinds, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The close of a session on two binds runs in a task of its own so that a cancellation
    # cannot cut it short; the refusal names the task the user knows, the one that called it.
    db = two.db
    rolling_back, release = slow_rollbacks(db, monkeypatch)
    session = db.session()
    await session.execute(sa.select(two.Item))
    await session.execute(sa.select(two.User))
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


async def test_the_session_used_from_an_event_of_its_own_close_is_not_refused(
    two: TwoBinds,
) -> None:
    # The close runs in a task of its own; what its events do with the session runs in that
    # task, as part of the close, and is not taken for another task's use.
    db = two.db
    session = db.session()
    seen: list[int] = []

    def transaction_ended(sync_session: Any, transaction: Any) -> None:
        session.expunge_all()
        seen.append(len(session.identity_map))

    sa.event.listen(session.sync_session, "after_transaction_end", transaction_ended)
    session.add(two.Item(name="rolled back"))
    await session.flush()
    await session.close()
    assert seen and seen[-1] == 0
    assert all_zero(checked_out(db))
    assert await names(db) == ([], [])


@pytest.mark.parametrize("cleanup", ["close", "reset", "async with"])
async def test_a_cleanup_cancelled_while_it_rolls_back_runs_to_its_end(
    two: TwoBinds, monkeypatch: pytest.MonkeyPatch, cleanup: str
) -> None:
    """The caller gets its cancellation once the connections of a session on two binds are
    back in the pool (a session on one connection drops it instead: test_cancellation)."""
    db = two.db
    rolling_back, release = slow_rollbacks(db, monkeypatch)
    session = db.session()

    async def use_and_clean_up() -> None:
        if cleanup == "async with":
            async with session:
                session.add_all([two.Item(name="never"), two.User(name="never")])
                await session.flush()
        else:
            session.add_all([two.Item(name="never"), two.User(name="never")])
            await session.flush()
            await getattr(session, cleanup)()

    task = asyncio.create_task(use_and_clean_up())
    async with asyncio.timeout(GUARD):
        await rolling_back.wait()
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done()  # waiting for the rollback, not cancelled halfway
    assert checked_out(db)[None] == 1
    release.set()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(GUARD):
            await task
    assert all_zero(checked_out(db))
    assert not session.in_transaction()
    assert await names(db) == ([], [])


@pytest.mark.parametrize("cleanup", ["close", "reset"])
@pytest.mark.parametrize("state", ["unused", "committed", "rolled back"])
async def test_a_session_holding_no_connection_cleans_up_in_place(
    two: TwoBinds, cleanup: str, state: str
) -> None:
    """With no transaction a session holds no connection: its cleanup does no I/O, so nothing
    can cut it short, and it ends at its first step, in the caller's task, without a task of its
    own to wait for (driving the coroutine one step shows it awaited nothing)."""
    db = two.db
    session = db.session()
    loaded: list[Any] = []
    if state != "unused":
        loaded = [two.Item(name="item"), two.User(name="user")]
        session.add_all(loaded)
        await session.flush()
        await (session.commit() if state == "committed" else session.rollback())
        await session.execute(sa.select(two.Item))  # a transaction again, on the default bind
        await session.commit()
        assert all_zero(checked_out(db))
        loaded.append((await session.scalars(sa.select(two.Item))).all())
        await session.rollback()
    assert not session.in_transaction()
    ending = getattr(session, cleanup)()
    with pytest.raises(StopIteration):
        ending.send(None)
    assert not session.identity_map
    assert all_zero(checked_out(db))
    expected = (["item"], ["user"]) if state == "committed" else ([], [])
    assert await names(db) == expected
    async with session:  # still usable after reset(); a closed session is, too
        assert len((await session.execute(sa.select(two.User))).all()) == len(expected[1])


async def test_a_session_kept_by_a_task_and_closed_after_each_request_is_used_again(
    two: TwoBinds, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pattern the README offers a task handling many requests: one session, closed after
    each. Every close hands the connections back, a cancelled one included (here of a request on
    both binds: to its end, the caller cancelled after), and the session serves the next
    request, in this task or another."""
    db = two.db
    session = db.session()
    for n in range(3):
        session.add_all([two.Item(name=f"item {n}"), two.User(name=f"user {n}")])
        await session.commit()
        assert len((await session.scalars(sa.select(two.Item))).all()) == n + 1
        await session.close()
        assert all_zero(checked_out(db)) and not session.identity_map

    rolling_back, release = slow_rollbacks(db, monkeypatch)

    async def request() -> None:
        await session.execute(sa.select(two.Item))
        await session.execute(sa.select(two.User))
        await session.close()

    task = asyncio.create_task(request())
    async with asyncio.timeout(GUARD):
        await rolling_back.wait()
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done() and checked_out(db)[None] == 1
    release.set()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(GUARD):
            await task
    assert all_zero(checked_out(db))

    async def next_request() -> list[str]:
        found = list(await session.scalars(sa.select(two.User.name).order_by(two.User.name)))
        await session.close()
        return found

    assert await asyncio.create_task(next_request()) == ["user 0", "user 1", "user 2"]
    assert all_zero(checked_out(db))
    assert await names(db) == (
        ["item 0", "item 1", "item 2"],
        ["user 0", "user 1", "user 2"],
    )


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


@pytest.mark.parametrize("ending", ["block", "commit", "rollback"])
async def test_the_commit_of_a_begin_block_is_refused_while_another_task_is_in_flight(
    two: TwoBinds, ending: str
) -> None:
    db = two.db
    async with db.session() as session:
        transaction = await session.begin()
        session.add(two.Item(name="pending"))
        await session.flush()
        running = asyncio.create_task(session.execute(sa.text(SLEEP)), name="busy")
        await asyncio.sleep(0)
        with pytest.raises(SessionSharedError) as error:
            if ending == "block":
                await transaction.__aexit__(None, None, None)
            else:
                await getattr(transaction, ending)()
        assert error.value.owner == "busy" and error.value.running == "execute()"
        expected = {"block": "the end of 'async with session.begin()'"}.get(ending, f"{ending}()")
        assert error.value.operation == expected
        with pytest.raises(SessionSharedError) as error:
            await session.begin_nested()
        assert error.value.operation == "begin_nested()"
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


@pytest.mark.parametrize("cleanup", ["close", "reset", "__aexit__"])
async def test_cleanup_from_another_task_waits_for_the_operation_in_flight(
    two: TwoBinds, cleanup: str
) -> None:
    db = two.db
    session = db.session()
    session.add(two.User(name="pending"))
    arguments = (None, None, None) if cleanup == "__aexit__" else ()
    async with asyncio.timeout(GUARD):
        result, _ = await asyncio.gather(
            session.execute(sa.text(SLEEP)), getattr(session, cleanup)(*arguments)
        )
    assert len(result.all()) == 1
    assert all_zero(checked_out(db))
    assert not session.new  # the cleanup ran, after the statement
    await session.close()
    assert await names(db) == ([], [])


# -- session classes -----------------------------------------------------------------------------


async def test_a_session_class_of_ones_own_is_task_safe_and_keeps_its_methods(
    two: TwoBinds, new_database: Any, make_db: Callable[..., AsyncBind]
) -> None:
    assert issubclass(AsyncBindSession, TaskSafeSession)
    assert type(two.db.session()) is AsyncBindSession
    closed: list[str] = []

    class Mine(AsyncBindSession):
        def marker(self) -> str:
            return "marked"

        async def close(self) -> None:
            closed.append("mine")
            await super().close()

    postgresql, mysql = await make_urls(new_database)
    mine = add_models(make_db(postgresql, binds={"users": mysql}, session_options={"class_": Mine}))
    await mine.db.create_all()
    async with mine.db.session() as session:
        assert type(session) is Mine and session.marker() == "marked"
        running = asyncio.create_task(session.execute(sa.text(SLEEP)), name="busy")
        await asyncio.sleep(0)
        with pytest.raises(SessionSharedError) as error:
            await session.get(mine.Item, 1)
        assert error.value.owner == "busy" and error.value.operation == "get()"
        await running
    assert closed == ["mine"]  # the end of 'async with' calls the class's own close()
    assert all_zero(checked_out(mine.db))


def test_a_session_class_that_is_not_an_asyncbind_session_is_refused() -> None:
    class Plain(AsyncSession):
        pass

    with pytest.raises(ConfigError) as error:
        AsyncBind("sqlite://", session_options={"class_": Plain})
    message = str(error.value)
    assert "Plain" in message  # what was given
    assert "asyncbind.AsyncBindSession" in message  # what is expected
    assert "class MySession(asyncbind.AsyncBindSession)" in message  # how to fix it
    db = AsyncBind()
    with pytest.raises(ConfigError, match="Plain"):
        db.configure("sqlite://", session_options={"class_": Plain})


class Tagging(RoutingSession):
    """A sync session whose methods take more than SQLAlchemy's, in every kind of parameter."""

    def add(self, instance: Any, /, *tags: str, _warn: bool = True, **labels: str) -> None:
        instance.name = " ".join([instance.name, *tags, *(f"{k}={v}" for k, v in labels.items())])
        super().add(instance, _warn=_warn)

    def expire(self, instance: Any, attribute_names: Any = None, *, why: str = "") -> None:
        instance.name = f"{instance.name} ({why})"


async def test_a_custom_sync_session_keeps_its_signatures_and_the_session_is_refused_too(
    new_database: Any, make_db: Callable[..., AsyncBind]
) -> None:
    """The sync session is the user's own, untouched: arguments of every kind reach its methods
    as given. The AsyncSession around it still refuses a second task."""
    postgresql, mysql = await make_urls(new_database)
    options = {"sync_session_class": Tagging}
    two = add_models(make_db(postgresql, binds={"users": mysql}, session_options=options))
    await two.db.create_all()
    async with two.db.session() as session:
        sync = session.sync_session
        assert isinstance(sync, Tagging)
        lamp = two.Item(name="lamp")
        sync.add(lamp, "red", "new", colour="blue")
        sync.expire(lamp, why="sale")
        session.add(two.User(name="ada"))
        running = asyncio.create_task(session.execute(sa.text(SLEEP)))
        await asyncio.sleep(0)
        with pytest.raises(SessionSharedError) as error:
            session.add(two.Item(name="late"))
        assert error.value.operation == "add()" and error.value.running == "execute()"
        with pytest.raises(SessionSharedError):
            session.expire(lamp)
        await running
        await session.commit()
    assert await names(two.db) == (["lamp red new colour=blue (sale)"], ["ada"])
    assert all_zero(checked_out(two.db))
