"""AsyncBind's lifecycle, event loops, its public state, how init_app finds the integration, and
the demo."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import NewDatabase

from asyncbind import AsyncBind, ConfigError, WrongEventLoopError, get_recorded_queries
from asyncbind.core import add_app_setup
from asyncbind.demo import demo


def checked_out(db: AsyncBind) -> int:
    return sum(engine.sync_engine.pool.checkedout() for engine in db.engines.values())


async def test_async_with_disposes_every_engine(
    backend_pair: tuple[str, str], new_database: NewDatabase
) -> None:
    first, second = backend_pair
    async with AsyncBind(await new_database(first), binds={"x": await new_database(second)}) as db:
        for key in (None, "x"):
            async with db.session() as session:
                await session.execute(sa.text("SELECT 1"), bind_arguments={"bind_key": key})
        pools = {key: engine.sync_engine.pool for key, engine in db.engines.items()}
        assert all(pool.checkedin() == 1 for pool in pools.values())
    assert all(pool.checkedin() == 0 for pool in pools.values())
    await db.dispose()  # idempotent
    async with db.session() as session:  # usable again afterwards
        assert (await session.execute(sa.text("SELECT 5"))).scalar() == 5
    await db.dispose()


async def test_dispose_on_exit_survives_cancellation(url: str) -> None:
    db = AsyncBind(url)
    started = asyncio.Event()

    async def work() -> None:
        async with db:
            async with db.session() as session:
                await session.execute(sa.text("SELECT 1"))
            started.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(work())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert db.engine.sync_engine.pool.checkedin() == 0
    assert checked_out(db) == 0


async def test_an_asyncbind_let_go_takes_its_engines_with_it(url: str) -> None:
    # Apps and test suites that make an AsyncBind per tenant or per test must not keep every
    # engine (pool, dialect, compiled cache) they ever made.
    engines: list[weakref.ref[sa.Engine]] = []
    for _ in range(3):
        db = AsyncBind(url, binds={"x": url})
        for key in (None, "x"):
            async with db.session() as session:
                await session.execute(sa.text("SELECT 1"), bind_arguments={"bind_key": key})
        engines += [weakref.ref(engine.sync_engine) for engine in db.engines.values()]
        await db.dispose()
        del db, session
    # The session class goes in the first collection, the engines its router held in the second.
    gc.collect()
    gc.collect()
    assert [engine() for engine in engines] == [None] * 6


def test_made_at_import_time_works_in_any_loop_and_in_a_second_after_dispose(url: str) -> None:
    db = AsyncBind(url)

    async def use(value: int) -> int:
        async with db.session() as session:
            return int((await session.execute(sa.text(f"SELECT {value}"))).scalar_one())

    async def use_then_dispose(value: int) -> int:
        try:
            return await use(value)
        finally:
            await db.dispose()

    assert asyncio.run(use_then_dispose(1)) == 1
    assert asyncio.run(use_then_dispose(2)) == 2


def test_live_engines_in_another_loop_give_a_clear_error(url: str) -> None:
    db = AsyncBind(url)

    async def use() -> None:
        async with db.session() as session:
            await session.execute(sa.text("SELECT 1"))

    runner = asyncio.Runner()
    runner.run(use())
    try:
        with asyncio.Runner() as second:
            with pytest.raises(WrongEventLoopError) as info:
                second.run(use())
            assert info.value.bind_key is None and "await db.dispose()" in str(info.value)
    finally:
        runner.run(db.dispose())
        runner.close()


async def test_demo_routes_to_three_binds(tmp_path: Path) -> None:
    lines: list[str] = []

    class Out:
        def write(self, text: str) -> None:
            lines.append(text)

    counts = await demo(tmp_path, Out())
    assert set(counts) == {None, "users", "audit"} and all(n >= 3 for n in counts.values())
    assert {p.name for p in tmp_path.iterdir()} == {"main.db", "users.db", "audit.db"}  # noqa: ASYNC240
    text = "".join(lines)
    assert "order 10: 'lamp' for 'ada'" in text


def test_demo_command_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "asyncbind", "demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "statements per bind: " in result.stdout
    assert "INSERT INTO audit_log" in result.stdout


def test_package_imports_no_framework() -> None:
    code = "import asyncbind, sys; print(sorted(m for m in ('quart', 'starlette', 'fastapi') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


async def test_record_queries_turned_on_and_off_later(make_db: Callable[..., AsyncBind]) -> None:
    """``db.record_queries = True`` records from then on, on the binds configured before and
    after (init_app does it for SQLALCHEMY_RECORD_QUERIES); False records no new scope."""
    db = make_db("sqlite://")
    assert db.record_queries is False
    db.record_queries = True
    async with db.scope():
        await db.session.execute(sa.text("SELECT 1"))
        assert [q.statement for q in get_recorded_queries()] == ["SELECT 1"]
    later = make_db()
    later.record_queries = True
    later.configure("sqlite://")
    async with later.scope():
        await later.session.execute(sa.text("SELECT 2"))
        assert [q.statement for q in get_recorded_queries()] == ["SELECT 2"]
    db.record_queries = False
    async with db.scope():
        await db.session.execute(sa.text("SELECT 3"))
        assert get_recorded_queries() == []
    with pytest.raises(ConfigError, match="expected True or False"):
        db.record_queries = "yes"  # type: ignore[assignment]


def test_engine_options_are_the_constructors_read_only() -> None:
    db = AsyncBind(engine_options={"pool_pre_ping": True})
    assert db.engine_options == {"pool_pre_ping": True}
    with pytest.raises(TypeError):
        db.engine_options["echo"] = True  # type: ignore[index]


class _ToyApp:
    """An app of a framework asyncbind has no integration for."""

    def __init__(self) -> None:
        self.set_up: list[AsyncBind] = []


def _set_up_toy_app(db: AsyncBind, app: object) -> bool:
    if not isinstance(app, _ToyApp):
        return False
    app.set_up.append(db)
    return True


def test_init_app_is_done_by_the_integration_registered_for_the_app() -> None:
    """init_app asks each registered setup in turn; the facade imports no integration."""
    add_app_setup(_set_up_toy_app)
    add_app_setup(_set_up_toy_app)  # registering twice registers once
    db, app = AsyncBind("sqlite://"), _ToyApp()
    db.init_app(app)
    assert app.set_up == [db]
    with pytest.raises(ConfigError, match="sets up a Quart app"):
        db.init_app(object())
