# ruff: noqa: F811  (fixtures imported from test_secrets are test arguments here)
"""A MySQL/MariaDB password outside latin-1, which aiomysql cannot send.

aiomysql encodes the password as latin-1 while it authenticates, and the ``UnicodeEncodeError``
it raises otherwise holds the whole password in its ``args`` and ``repr()``. asyncbind refuses
such a URL in the constructor, and its connector hides any driver error that repeats the password.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from conftest import MYSQL_URL, require_server
from test_secrets import PASSWORD, assert_exception_clean, capture  # noqa: F401

from asyncbind import AsyncBind, BindUnavailableError, ConfigError
from asyncbind.connector import connector

pytestmark = pytest.mark.mysql


def test_password_outside_latin1_is_refused_in_the_constructor(capture: Callable[[], int]) -> None:
    url = sa.URL.create("mysql", username="root", password=PASSWORD, host="127.0.0.1", database="d")
    with pytest.raises(ConfigError) as info:
        AsyncBind("sqlite://", binds={"m": url})
    assert "Bind 'm'" in str(info.value) and "latin-1" in str(info.value)
    assert_exception_clean(info.value)
    capture()


async def test_a_driver_error_that_repeats_the_password_is_hidden(
    capture: Callable[[], int],
) -> None:
    await require_server("mysql")
    connect = connector("aiomysql", "m", 10)
    assert connect is not None
    async with asyncio.timeout(30):
        with pytest.raises(BindUnavailableError) as info:
            await connect(
                host=MYSQL_URL.host or "127.0.0.1",
                port=MYSQL_URL.port or 3306,
                user="root",
                password=PASSWORD,
            )
    assert info.value.bind_key == "m" and "UnicodeEncodeError" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert_exception_clean(info.value)
    capture()
