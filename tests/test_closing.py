"""Closing connections: a goodbye that fails drops the connection instead of leaving it open, and
is no error to report when the server had ended the connection already."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.util import greenlet_spawn

from asyncbind import AsyncBind

GUARD = 30


async def test_a_failing_close_where_the_dialect_has_no_terminate_is_not_retried_for_ever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # psycopg's async dialect has no do_terminate() of its own: SQLAlchemy's default closes the
    # connection instead. When that close fails, dropping the connection tries it once more and
    # reports the failure, instead of coming back to itself. SQLite stands in for such a
    # dialect, its terminate taken away and its connections' close failing.
    monkeypatch.setattr(SQLiteDialect_aiosqlite, "do_terminate", DefaultDialect.do_terminate)
    db = AsyncBind(f"sqlite:///{tmp_path / 'one.db'}")
    async with db.session() as session:
        await session.execute(sa.text("SELECT 1"))
    closes: list[Any] = []

    def failing_close(connection: Any) -> None:
        closes.append(connection)
        raise ConnectionResetError("the server reset the connection")

    monkeypatch.setattr(AsyncAdapt_aiosqlite_connection, "close", failing_close)
    with caplog.at_level(logging.ERROR):
        await db.dispose()
    monkeypatch.undo()
    assert len(closes) == 2, (
        f"close() was tried {len(closes)} times, not twice (politely, then to drop)"
    )
    connection, again = closes  # the polite close, then the drop
    assert again is connection
    assert [record.getMessage().split(" <")[0] for record in caplog.records] == [
        "Exception closing connection"
    ]
    await greenlet_spawn(connection.close)
