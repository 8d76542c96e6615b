"""Which bind an engine belongs to: one answer, for the engine, its copies and its connections."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.ext.asyncio import create_async_engine

from asyncbind import AsyncBind
from asyncbind.registry import bind_config


async def test_bind_config_follows_the_engine(make_db: Callable[..., AsyncBind]) -> None:
    """Engines remember the bind they were made for; copies made with execution_options() and
    their connections too, and the memory outlives dispose()."""
    db = make_db("sqlite://", binds={"other": {"url": "sqlite://", "echo_pool": False}})
    engine = db.get_engine("other")
    config = bind_config(engine)
    assert config is not None and config.key == "other"
    assert config.engine_options["echo_pool"] is False
    assert bind_config(engine.execution_options(isolation_level="SERIALIZABLE")) is config
    assert bind_config(engine.sync_engine) is config
    async with engine.connect() as conn:
        assert bind_config(conn) is config
        assert bind_config(conn.sync_connection) is config  # type: ignore[arg-type]
    await db.dispose()
    assert bind_config(engine) is config
    assert bind_config(db.engine) is not config and bind_config(db.engine) is not None
    foreign = create_async_engine("sqlite+aiosqlite://")
    try:
        assert bind_config(foreign) is None
    finally:
        await foreign.dispose()


async def test_two_asyncbinds_with_the_same_keys_have_engines_of_their_own_binds(
    make_db: Callable[..., AsyncBind],
) -> None:
    first = make_db("sqlite://", binds={"users": "sqlite://"})
    second = make_db("sqlite://", binds={"users": {"url": "sqlite://", "read_only": False}})
    for key in (None, "users"):
        mine, theirs = bind_config(first.engines[key]), bind_config(second.engines[key])
        assert mine is not None and theirs is not None and mine is not theirs
        assert mine.key == theirs.key == key
        assert mine is first.bind_configs[key] and theirs is second.bind_configs[key]
