"""Connecting: within ``connect_timeout``, and a failure that names the bind, never the password.
(A password the driver's error repeats: ``test_secrets_latin1.py``; a refused login and a missing
database: ``test_causes.py``; cancellations mid-handshake: ``test_cancellation.py``.)"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from asyncbind import AsyncBind, BindUnavailableError


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    "scheme", [pytest.param("postgresql", id="postgresql"), pytest.param("mysql", id="mysql")]
)
async def test_unreachable_bind_fails_within_connect_timeout_naming_it(
    scheme: str, silent_port: int, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db(
        "sqlite://",
        binds={
            "silent": {
                "url": f"{scheme}://u:pw-secret@127.0.0.1:{silent_port}/db",
                "connect_timeout": 0.3,
            },
            "refused": f"{scheme}://u:pw-secret@127.0.0.1:1/db",
        },
    )
    async with db.session() as session:
        for key in ("silent", "refused"):
            async with asyncio.timeout(20):
                with pytest.raises(BindUnavailableError) as info:
                    await session.execute(sa.text("SELECT 1"), bind_arguments={"bind_key": key})
            assert info.value.bind_key == key and f"Bind {key!r} is unavailable" in str(info.value)
            assert isinstance(info.value, sa_exc.OperationalError)
            assert "pw-secret" not in str(info.value) and "pw-secret" not in repr(info.value)
        assert (await session.execute(sa.text("SELECT 1"))).scalar() == 1  # the others still work
