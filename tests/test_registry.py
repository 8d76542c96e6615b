"""The binds: one dict of config and engine per key, and which bind an engine belongs to, for the
engine, its copies and its connections."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from asyncbind import AsyncBind, UnknownBindError
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


async def test_engines_and_bind_configs_are_live_read_only_views_of_the_binds(
    make_db: Callable[..., AsyncBind], tmp_path: Path
) -> None:
    """One dict holds each bind's config and engine; db.engines and db.bind_configs show it, and
    a view taken before configure() shows the binds configured afterwards."""
    db = make_db()
    engines, configs = db.engines, db.bind_configs
    assert dict(engines) == {} and dict(configs) == {}
    db.configure(
        "sqlite://", binds={"users": {"url": f"sqlite:///{tmp_path}/u.db", "read_only": True}}
    )
    assert list(engines) == list(configs) == [None, "users"] and len(engines) == 2
    for key in (None, "users"):
        assert engines[key] is db.get_engine(key)
        assert bind_config(engines[key]) is configs[key] and configs[key].key == key
    assert configs["users"].read_only and not configs[None].read_only
    assert "users" in repr(configs) and engines == dict(engines)
    with pytest.raises(TypeError):
        engines["other"] = engines[None]  # type: ignore[index]
    for view in (engines, configs):
        with pytest.raises(UnknownBindError) as caught:
            view["uesrs"]  # a typo: the error names the key and the configured ones
        assert isinstance(caught.value, KeyError) and caught.value.key == "uesrs"
        assert str(caught.value).startswith("Bind key 'uesrs' is not configured (configured: ")
        assert "'users'" in str(caught.value)
        assert "uesrs" not in view and view.get("uesrs") is None
    again = pickle.loads(pickle.dumps(caught.value))  # an arq job's error is pickled, say
    assert type(again) is UnknownBindError and str(again) == str(caught.value)
    assert (again.key, again.configured) == ("uesrs", (None, "users"))
