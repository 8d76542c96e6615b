"""Inputs that once escaped as built-in errors, each pinned as an example, plus the property
tests run over unhashable bind keys too.

- ``echo`` / ``echo_pool`` given a string other than "debug": SQLAlchemy's ``KeyError``.
- ``pool`` given something that is not a Pool: ``AttributeError`` from create_async_engine.
- a read-only asyncpg bind whose ``connect_args["server_settings"]`` is not a mapping.
- an unhashable bind key at run time (``db.get_engine([])``, ``bind_arguments={"bind_key":
  ["a"]}``, ``create_all(bind_key={"a": 1})``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from test_config_fuzz import (  # noqa: F401  (fixtures)
    FUZZ,
    check_construction,
    check_runtime_key,
    folder,
    keys,
    raw_options,
    urls,
)

from asyncbind import AsyncBind

pytestmark = pytest.mark.sqlite

PG = "postgresql://u@127.0.0.1/d"


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"echo": "yes"}, id="echo-string"),
        pytest.param({"echo_pool": "verbose"}, id="echo-pool-string"),
        pytest.param({"pool": 5}, id="pool-not-a-pool"),
        pytest.param(
            {"read_only": True, "connect_args": {"server_settings": 1}}, id="server-settings-int"
        ),
    ],
)
def test_bad_options_raise_config_error(options: dict[str, Any]) -> None:
    check_construction(lambda: AsyncBind({"url": PG, **options}))


@FUZZ
@given(url=urls, engine_options=raw_options)
@example(url=PG, engine_options={"echo": "on"})
@example(url=PG, engine_options={"pool": 0})
def test_constructor_without_filters(url: Any, engine_options: Any) -> None:
    check_construction(lambda: AsyncBind(url, engine_options=engine_options))


@pytest.mark.parametrize(
    "key",
    [
        pytest.param([], id="empty-list"),
        pytest.param(["a"], id="list"),
        pytest.param({"a": 1}, id="dict"),
        pytest.param({"a"}, id="set"),
    ],
)
def test_unhashable_bind_keys_raise_asyncbind_errors(folder: Path, key: Any) -> None:  # noqa: F811
    asyncio.run(check_runtime_key(folder, key))


@FUZZ
@given(
    key=st.one_of(
        keys, st.lists(keys, max_size=2), st.dictionaries(st.text(max_size=2), keys, max_size=1)
    )
)
def test_runtime_bind_keys_without_filters(folder: Path, key: Any) -> None:  # noqa: F811
    asyncio.run(check_runtime_key(folder, key))
