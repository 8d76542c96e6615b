"""Reading a copy's source in batches: through SQLAlchemy's streaming result, or, for a table read
from MySQL or MariaDB, straight from the driver's unbuffered cursor.

SQLAlchemy's result makes a ``Row`` of every row and runs each value through the column type's
result processor. For a plain table read (no parameters but the key range of a parallel copy,
which are integers written into the SQL), the driver's tuples need only the processors that the
columns' types have for this dialect (MySQL's BOOL comes as an integer and becomes a bool, an
ENUM's text becomes its Python enum, ...). They are applied a column at a time; a batch whose
columns have none goes on as the driver made it. The driver's cursor runs inside a transaction
that SQLAlchemy began, so that its connection is rolled back before it goes back to the pool.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .engines import holds_the_database

__all__ = ["Bind", "connection", "read_batches"]

Bind = AsyncEngine | AsyncConnection


@contextlib.asynccontextmanager
async def connection(bind: Bind) -> AsyncIterator[AsyncConnection]:
    """``bind`` itself if it is a connection, else a connection of the engine, closed after."""
    if isinstance(bind, AsyncConnection):
        yield bind
    else:
        async with bind.connect() as conn:
            yield conn


async def read_batches(
    bind: Bind, select: sa.Select[Any], batch_size: int, *, plain: bool = False
) -> AsyncGenerator[Sequence[Sequence[Any]], None]:
    """The rows of ``select``, ``batch_size`` at a time, through a server-side cursor.

    ``plain`` says that ``select`` reads table columns with no parameters of its own but
    integers, which the driver's cursor may then read (MySQL and MariaDB).
    """
    own = not isinstance(bind, AsyncConnection)
    async with connection(bind) as conn:
        cursor_class = _unbuffered_cursor(conn) if plain else None
        if cursor_class is None:
            batches = _through_sqlalchemy(conn, select, batch_size, own)
        else:
            batches = _through_the_driver(conn, select, batch_size, own, cursor_class)
        async with contextlib.aclosing(batches) as reading:
            async for batch in reading:
                yield batch


def _unbuffered_cursor(conn: AsyncConnection) -> Any:
    """The driver's unbuffered cursor class where this module reads through it, else None."""
    dialect = conn.dialect
    if dialect.name not in ("mysql", "mariadb"):
        return None
    sync = conn.sync_connection
    if sync is None or sync.get_execution_options().get("schema_translate_map"):
        return None  # the names in the SQL are SQLAlchemy's to translate
    if dialect.driver == "asyncmy":
        from asyncmy.cursors import SSCursor

        return SSCursor
    if dialect.driver == "aiomysql":
        import aiomysql

        return aiomysql.SSCursor
    return None


async def _through_sqlalchemy(
    conn: AsyncConnection, select: sa.Select[Any], batch_size: int, own: bool
) -> AsyncGenerator[Sequence[Sequence[Any]], None]:
    result = await conn.stream(select.execution_options(yield_per=batch_size))
    finished = False
    try:
        async for partition in result.partitions():
            yield partition
        finished = True
    finally:
        if conn.invalidated:
            pass  # discarded meanwhile (a statement on it was cut short): its cursor is gone
        elif finished or not own or holds_the_database(conn.sync_engine):
            # In memory, the connection is the database: kept, its result closed (SQLite reads
            # nothing more to close it; one cut short by a cancellation is waited for).
            await result.close()
        else:
            await _stopped_early(conn)


async def _through_the_driver(
    conn: AsyncConnection, select: sa.Select[Any], batch_size: int, own: bool, cursor_class: Any
) -> AsyncGenerator[Sequence[Sequence[Any]], None]:
    dialect = conn.dialect
    sql = str(select.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    if not conn.in_transaction():
        await conn.begin()  # SQLAlchemy's; nothing is sent until the SELECT, and it rolls back
    driver: Any = (await conn.get_raw_connection()).driver_connection
    cursor = driver.cursor(cursor_class)
    if inspect.isawaitable(cursor):  # aiomysql's cursor() is awaited, asyncmy's is not
        cursor = await cursor
    finished = False
    try:
        # With parameters, as SQLAlchemy runs it: the driver turns the compiler's %% back into %.
        await cursor.execute(sql, ())
        process = _processing(select, dialect, cursor.description)
        while rows := await cursor.fetchmany(batch_size):
            yield process(rows)
        finished = True
    finally:
        if finished or not own:
            await cursor.close()
        else:
            await _stopped_early(conn)


async def _stopped_early(conn: AsyncConnection) -> None:
    # Stopped early: by an error, a cancellation or a consumer that left. Closing the result
    # would read the rest of a MySQL result, or wait on a read that a cancellation interrupted
    # half-way; discard our connection instead.
    await conn.invalidate()


def _processing(
    select: sa.Select[Any], dialect: sa.Dialect, description: Sequence[Sequence[Any]]
) -> Callable[[list[Any]], Sequence[Sequence[Any]]]:
    """What makes the driver's rows what SQLAlchemy's result would give: each column's result
    processor (which SQLAlchemy calls for every value, None included), a column at a time."""
    width = len(description)
    todo = [
        (i, processor)
        for i, (column, described) in enumerate(
            zip(select.selected_columns, description, strict=True)
        )
        if (processor := column.type.dialect_impl(dialect).result_processor(dialect, described[1]))
        is not None
    ]

    def process(rows: list[Any]) -> Sequence[Sequence[Any]]:
        if not todo:
            return rows
        # Column by column, then back into rows: no Python code runs per row.
        columns: list[Iterable[Any]] = [map(itemgetter(i), rows) for i in range(width)]
        for i, processor in todo:
            columns[i] = map(processor, columns[i])
        return list(zip(*columns, strict=True))

    return process
