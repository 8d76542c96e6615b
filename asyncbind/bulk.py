"""Bulk copy for ETL jobs: stream rows out of one bind and load them into another at driver speed.

Reading uses a server-side cursor, so memory stays bounded by a few batches whatever the row count
(see :mod:`asyncbind.reading`: a table on MySQL or MariaDB is read through the driver's unbuffered
cursor). ``parallel=N`` copies N ranges of a table's integer primary key at once. Writing picks the
fastest path the target's driver has:

* PostgreSQL (asyncpg): binary ``COPY`` through ``copy_records_to_table``;
* MySQL / MariaDB (aiomysql, asyncmy): ``executemany``, which the driver sends as multi-row
  ``INSERT ... VALUES (...), (...)`` statements;
* SQLite (aiosqlite) and any other driver: ``executemany``.

Values are converted the way an ``INSERT`` through SQLAlchemy would convert them, and a value the
target column cannot hold exactly fails the batch instead of landing changed (see
:mod:`asyncbind.values`). NULL stays SQL NULL, also in JSON columns; a copy reads JSON columns as
their text, so JSON ``null`` stays JSON ``null`` and the text is what the source holds; text from
a text column going into a JSON column is the document itself (MariaDB's JSON is a LONGTEXT). A
timezone-aware datetime or time going into a column that cannot keep the zone (``DateTime()`` and
``Time()`` anywhere, every one on MySQL and SQLite) is stored as UTC; a naive datetime going into
PostgreSQL ``timestamptz`` is taken as UTC.

A copy within one SQLite database (one engine, or engines of the same file) reads and writes on one
connection, the target's, one batch after the other: in its default journal mode SQLite lets no
connection commit while another is reading the file, and an in-memory database is its pool's one
connection.

Every batch is its own transaction (a SAVEPOINT when loading through a connection that is already in
a transaction). When a batch fails it is rolled back, the batches before it stay, and
:class:`~asyncbind.exceptions.BulkCopyError` says how many rows landed (``rows_copied``).

Every batch, asyncpg's COPY included, is written inside a transaction that SQLAlchemy began and
ends, never one opened on the driver connection behind its back, so a cancellation cannot leave a
transaction open on a pooled connection; a COPY interrupted half-way discards its connection. A
load into MySQL or MariaDB adds ``NO_AUTO_VALUE_ON_ZERO`` (a 0 in an AUTO_INCREMENT column stays 0,
as with mysqldump) and ``STRICT_ALL_TABLES`` (a value a column cannot hold is an error, not a
warning and a changed value) to its session's ``sql_mode``, and gives the connection its own mode
back afterwards.

Python-side column defaults (``Column(default=...)``) of columns that are not copied are not
applied: give such columns a ``server_default`` or copy them explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Hashable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import util as sql_util

from .cancellation import run_to_completion
from .exceptions import (
    BulkCopyError,
    ConfigError,
    CrossBindError,
    ReadOnlyBindError,
    bind_name,
    first_line,
    shown,
)
from .models import bind_key_of
from .reading import Bind, connection, read_batches
from .registry import bind_config
from .urls import sqlite_file
from .values import exact_intervals, is_json, is_text, rows_converter

if TYPE_CHECKING:
    from .config import BindKey
    from .core import AsyncBind

__all__ = [
    "BATCH_SIZE",
    "CopyProgress",
    "CopyResult",
    "ProgressCallback",
    "copy",
    "copy_between_binds",
    "load_rows",
    "stream_rows",
]

#: Rows per batch when none is given: one server round trip and one transaction each.
BATCH_SIZE = 10_000

_AUTO: Any = object()
_DONE: Any = object()

#: A table to read or write: a Table (``Model.__table__``, which SQLAlchemy types as a
#: FromClause, too) or a mapped class; any other FromClause is refused when the call runs.
TableArg = sa.FromClause | type
#: What rows are read from: a table or a ``select()``.
Source = TableArg | sa.Select[Any]


@dataclass(frozen=True, slots=True)
class CopyResult:
    """What a bulk copy or load did."""

    rows: int
    """Rows written to the target (all of them committed when the target was an engine)."""
    batches: int
    """Batches written, each in its own transaction."""
    seconds: float
    """Wall-clock time of the whole operation."""

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class CopyProgress:
    """How far a bulk copy or load has got, given to ``on_progress`` after each batch lands."""

    rows: int
    """Rows written so far (committed, when the target is an engine)."""
    batches: int
    """Batches written so far."""
    batch_rows: int
    """Rows in the batch that just landed."""
    seconds: float
    """Time since the copy or load started."""

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


#: ``on_progress=``: called with a :class:`CopyProgress` after each batch; may be a coroutine
#: function, which is awaited before the next batch is written.
ProgressCallback = Callable[[CopyProgress], Awaitable[object] | object]


# -- public API ------------------------------------------------------------------------------


async def stream_rows(
    bind: Bind,
    source: Source,
    *,
    batch_size: int = BATCH_SIZE,
) -> AsyncGenerator[sa.Row[Any], None]:
    """Yield the rows of ``source`` (a Table, a mapped class or a ``select()``) from ``bind``.

    Rows are read through a server-side cursor ``batch_size`` at a time, so memory does not grow
    with the size of the result. Close the iterator if you stop early
    (``async with contextlib.aclosing(stream_rows(...)) as rows:``) so that the cursor and its
    connection are released at once.
    """
    _check_batch_size(batch_size)
    # aclosing: when the caller stops early, the cursor and connection are released now, not
    # whenever the event loop finalizes an abandoned generator.
    async with contextlib.aclosing(read_batches(bind, _as_select(source), batch_size)) as batches:
        async for batch in batches:
            for row in batch:
                yield cast("sa.Row[Any]", row)  # read through SQLAlchemy: its rows


async def load_rows(
    target: Bind,
    table: TableArg,
    rows: Iterable[Any] | AsyncIterable[Any],
    *,
    columns: Sequence[str] | None = None,
    batch_size: int = BATCH_SIZE,
    on_progress: ProgressCallback | None = None,
) -> CopyResult:
    """Write ``rows`` (sequences in the order of ``columns``, or mappings by the names in
    ``columns``) into ``table`` on ``target``, ``batch_size`` rows per statement and transaction.

    ``columns`` names the table's columns by their names in the database (or by their keys in
    ``table.c``), and defaults to all of them. With an engine every batch is committed as
    it lands; with a connection every batch is a SAVEPOINT in the connection's transaction, which
    the caller commits. On failure the failed batch is rolled back and
    :class:`~asyncbind.exceptions.BulkCopyError` reports ``rows_copied``. A ``target`` of a
    read-only bind raises :class:`~asyncbind.exceptions.ReadOnlyBindError` before any SQL is sent.
    ``on_progress`` is called with a :class:`CopyProgress` after each batch.
    """
    _check_batch_size(batch_size)
    _check_progress(on_progress)
    table = _as_table(table, "table")
    _refuse_read_only(target, table, "a bulk load")
    given = [c.name for c in table.columns] if columns is None else columns
    names = _column_names(table, given)
    tally = _Tally(on_progress)
    async with contextlib.aclosing(_batched(rows, given, batch_size)) as batches:
        await _write_batches(target, table, names, batches, tally=tally)
    return tally.result()


async def copy(
    source: Source,
    target: TableArg,
    *,
    source_engine: Bind,
    target_engine: Bind,
    columns: Sequence[str] | None = None,
    batch_size: int = BATCH_SIZE,
    parallel: int = 1,
    on_progress: ProgressCallback | None = None,
) -> CopyResult:
    """Copy the rows of ``source`` on ``source_engine`` into ``target`` on ``target_engine``.

    ``source`` is a Table, a mapped class, or a ``select()`` whose column names are columns of
    ``target``. With a table source, the columns both tables have (by name) are copied, or the
    ``columns`` given. Reading the next batch overlaps with writing the current one; a few batches
    are in memory at a time, whatever the number of rows. A ``target_engine`` of a read-only bind
    raises :class:`~asyncbind.exceptions.ReadOnlyBindError` before any SQL is sent.
    ``on_progress`` is called with a :class:`CopyProgress` after each batch lands.

    ``parallel=N`` splits a table source on its integer primary key into N ranges of key values
    and copies them at the same time, each over its own pair of connections (so each engine's pool
    needs N connections); both binds must then be engines.

    A copy within one SQLite database (one engine, or engines of the same file) runs on one
    connection, the target's, in one stream whatever ``parallel=`` says: each batch is read,
    then written, before the next is read. A connection as ``source_engine`` must then be the
    ``target_engine`` too (two connections of an in-memory database, its one connection, are used
    as given); otherwise :class:`~asyncbind.exceptions.ConfigError` is raised before any SQL is
    sent.
    """
    _check_batch_size(batch_size)
    _check_progress(on_progress)
    _check_parallel(parallel, source_engine, target_engine)
    target_table = _as_table(target, "target")
    _refuse_read_only(target_engine, target_table, "a bulk copy")
    select, names, raw_json, text_json = _plan(source, target_table, columns)
    select = exact_intervals(select, names, source_engine.dialect)
    key = _split_key(source) if parallel > 1 else None
    plain = not isinstance(source, sa.Select)
    tally = _Tally(on_progress)
    if _copies_on_one_connection(source_engine, target_engine):
        await _copy_on_one_connection(
            source_engine,
            select,
            target_engine,
            target_table,
            names,
            raw_json,
            text_json,
            batch_size,
            tally,
            plain,
        )
        return tally.result()
    ranges = await _key_ranges(source_engine, key, parallel) if key is not None else []

    async def stream(rows: sa.Select[Any]) -> None:
        await _copy_stream(
            source_engine,
            rows,
            target_engine,
            target_table,
            names,
            raw_json,
            text_json,
            batch_size,
            tally,
            plain,
        )

    if len(ranges) < 2:
        await stream(select)
        return tally.result()

    async def copy_range(where: sa.ColumnElement[bool]) -> None:
        try:
            await stream(select.where(where))
        except Exception as exc:
            # The other ranges stop before their next batch, so that every batch is either
            # counted or not written (cancelling them could interrupt a COMMIT that lands).
            tally.failure = tally.failure or exc

    async with asyncio.TaskGroup() as group:
        for where in ranges:
            group.create_task(copy_range(where))
    failure = tally.failure
    if isinstance(failure, BulkCopyError):
        raise BulkCopyError(
            f"{failure} The copy ran in {len(ranges)} key ranges at once; the others stopped "
            f"after their batch in progress, and {tally.rows} row(s) in all had landed.",
            rows_copied=tally.rows,
            table=target_table.fullname,
        ) from failure
    if failure is not None:
        raise failure  # what a copy in one stream raises, as it is: a server that went away, ...
    return tally.result()


async def _copy_stream(
    source_engine: Bind,
    select: sa.Select[Any],
    target_engine: Bind,
    target_table: sa.Table,
    names: list[str],
    raw_json: frozenset[str],
    text_json: frozenset[str],
    batch_size: int,
    tally: _Tally,
    plain: bool,
) -> None:
    """Stream ``select`` from ``source_engine`` into ``target_table``, reading the next batch
    while the last one is written. ``plain``: ``select`` reads a table, with no parameters but
    integers (see :func:`asyncbind.reading.read_batches`)."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)

    async def produce() -> None:
        try:
            async with contextlib.aclosing(
                read_batches(source_engine, select, batch_size, plain=plain)
            ) as batches:
                async for batch in batches:
                    await queue.put(batch)
        except Exception as exc:
            await queue.put(_ReadFailure(exc))
        else:
            await queue.put(_DONE)

    async def batches() -> AsyncGenerator[Sequence[Any], None]:
        while True:
            item = await queue.get()
            if item is _DONE:
                return
            if isinstance(item, _ReadFailure):
                raise item.error
            yield item

    producer = asyncio.get_running_loop().create_task(produce())
    try:
        async with contextlib.aclosing(batches()) as received:
            await _write_batches(
                target_engine,
                target_table,
                names,
                received,
                raw_json,
                text_json,
                tally=tally,
                source=_naming(source_engine, "from"),
            )
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer


async def _copy_on_one_connection(
    source_engine: Bind,
    select: sa.Select[Any],
    target_engine: Bind,
    target_table: sa.Table,
    names: list[str],
    raw_json: frozenset[str],
    text_json: frozenset[str],
    batch_size: int,
    tally: _Tally,
    plain: bool,
) -> None:
    """Copy ``select`` into ``target_table`` within one SQLite database, reading and writing on
    one connection: ``target_engine`` itself if it is a connection, else one of its connections.
    Each batch is read in full, then written (and committed, on a connection of an engine) before
    the next one is read.

    SQLite lets a connection commit while a SELECT of its own is still being read, but (in its
    default journal mode) not while another connection's is: that reader holds the file's lock
    against the commit. In memory, the reader's connection would be the writer's (the pool's one
    connection), and the end of the reading (a rollback) would end the transaction of the batch
    being written."""
    async with (
        connection(target_engine) as conn,
        contextlib.aclosing(read_batches(conn, select, batch_size, plain=plain)) as batches,
    ):
        await _write_batches(
            target_engine,
            target_table,
            names,
            batches,
            raw_json,
            text_json,
            tally=tally,
            source=_naming(source_engine, "from"),
            on=conn,
        )


async def copy_between_binds(
    db: AsyncBind,
    source: Source,
    target: TableArg,
    *,
    source_bind: BindKey = _AUTO,
    target_bind: BindKey = _AUTO,
    columns: Sequence[str] | None = None,
    batch_size: int = BATCH_SIZE,
    parallel: int = 1,
    on_progress: ProgressCallback | None = None,
) -> CopyResult:
    """:func:`copy` with engines looked up by bind key; a table's own bind when no key is given."""
    target_table = _as_table(target, "target")
    if source_bind is _AUTO:
        source_bind = _bind_key_of_source(source)
    if target_bind is _AUTO:
        target_bind = bind_key_of(target_table)
    return await copy(
        source,
        target_table,
        source_engine=db.get_engine(source_bind),
        target_engine=db.get_engine(target_bind),
        columns=columns,
        batch_size=batch_size,
        parallel=parallel,
        on_progress=on_progress,
    )


# -- planning --------------------------------------------------------------------------------


class _ReadFailure:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _check_progress(on_progress: object) -> None:
    if on_progress is not None and not callable(on_progress):
        raise ConfigError(
            f"on_progress={on_progress!r} is not callable; pass a function that takes a "
            "CopyProgress, for example on_progress=lambda p: print(p.rows)."
        )


class _Tally:
    """What a copy or load has written so far, over all its streams; tells ``on_progress`` (if
    any) about each batch that landed."""

    __slots__ = ("batches", "callback", "failure", "rows", "started")

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.started = time.perf_counter()
        self.rows = 0
        self.batches = 0
        #: What stopped one stream of a parallel copy; the others stop before their next batch.
        self.failure: Exception | None = None

    async def landed(self, batch_rows: int) -> None:
        self.rows += batch_rows
        self.batches += 1
        if self.callback is None:
            return
        seconds = time.perf_counter() - self.started
        result = self.callback(CopyProgress(self.rows, self.batches, batch_rows, seconds))
        if inspect.isawaitable(result):
            await result

    def result(self) -> CopyResult:
        return CopyResult(self.rows, self.batches, time.perf_counter() - self.started)


def _check_parallel(parallel: object, source: Bind, target: Bind) -> None:
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
        raise ConfigError(f"parallel={parallel!r} must be a positive integer, e.g. 2.")
    if parallel > 1 and (
        isinstance(source, AsyncConnection) or isinstance(target, AsyncConnection)
    ):
        raise ConfigError(
            f"parallel={parallel} needs engines for both binds, to open a connection per key "
            "range; a copy through a connection you pass runs on that one connection. Pass "
            "engines, or leave out parallel=."
        )


def _copies_on_one_connection(source: Bind, target: Bind) -> bool:
    """Whether a copy from ``source`` into ``target`` reads and writes on one connection, the
    target's: both are of one SQLite database (:func:`_sqlite_database`), and the source is an
    engine or the target connection itself.

    Two connections the caller holds on one in-memory database are the pool's one connection:
    they are used as given. A source connection with any other target is refused, before any SQL
    is sent: the target would commit on another connection (one of an engine, in memory the
    source connection itself) or write into a file that the source connection is reading."""
    database = _sqlite_database(source, target)
    if database is None:
        return False
    if not isinstance(source, AsyncConnection) or source is target:
        return True
    if isinstance(target, AsyncConnection) and database == "in memory":
        return False
    raise ConfigError(
        f"source_engine is a connection of the SQLite database that target_engine writes to "
        f"({database}), and target_engine is not that connection. A copy within one SQLite "
        "database reads and writes on one connection: pass the connection as both "
        "source_engine and target_engine (each batch is then a SAVEPOINT in its transaction, "
        "which you commit), or pass the engine as source_engine."
    )


def _sqlite_database(source: Bind, target: Bind) -> str | None:
    """The SQLite database that ``source`` and ``target`` both reach (``"in memory"``, or
    ``"file '/srv/app.db'"``), through one pool or files at the same path; None if they reach two
    databases, or another kind of database. An in-memory database is one only through one pool:
    its pool's connection is the database."""
    source_engine = source.engine if isinstance(source, AsyncConnection) else source
    target_engine = target.engine if isinstance(target, AsyncConnection) else target
    if source_engine.dialect.name != "sqlite" or target_engine.dialect.name != "sqlite":
        return None
    path = sqlite_file(target_engine.url)
    if source_engine.sync_engine.pool is target_engine.sync_engine.pool:
        return "in memory" if path is None else f"file {path!r}"
    if path is not None and path == sqlite_file(source_engine.url):
        return f"file {path!r}"
    return None


def _split_key(source: Any) -> sa.Column[Any]:
    """The integer primary key column that ``parallel=`` splits a table source on."""
    table = None if isinstance(source, sa.Select) else _as_table(source, "source")
    keys = list(table.primary_key.columns) if table is not None else []
    if len(keys) != 1 or not _is_integer(keys[0]):
        what = "a select()" if table is None else f"table {table.fullname!r}"
        raise ConfigError(
            f"parallel= splits the source on its integer primary key, and {what} has none "
            "(or has one of several columns). Copy it with parallel=1, or copy a table that "
            "has one."
        )
    return keys[0]


def _is_integer(column: sa.Column[Any]) -> bool:
    try:
        python_type: type = column.type.python_type
    except NotImplementedError:
        return False
    return issubclass(python_type, int) and not issubclass(python_type, bool)


async def _key_ranges(
    bind: Bind, key: sa.Column[Any], parallel: int
) -> list[sa.ColumnElement[bool]]:
    """``parallel`` conditions on ``key`` that together take in every row once: ranges of equal
    width between the smallest and the largest key (fewer when there are fewer keys)."""
    async with connection(bind) as conn:
        low, high = (await conn.execute(sa.select(sa.func.min(key), sa.func.max(key)))).one()
    if low is None:
        return []
    low, high = int(low), int(high)
    parts = min(parallel, high - low + 1)
    edges = [low + (high - low + 1) * i // parts for i in range(parts)]
    ranges: list[sa.ColumnElement[bool]] = [
        sa.and_(key >= start, key < end) for start, end in itertools.pairwise(edges)
    ]
    ranges.append(key >= edges[-1])
    return ranges


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer, e.g. 10000.")


def _refuse_read_only(target: Bind, table: sa.Table, what: str) -> None:
    """Raise :class:`ReadOnlyBindError` when ``target`` belongs to a bind configured read-only,
    or is one of a bind's read replicas."""
    config = bind_config(target)
    if config is not None and config.read_only:
        what = f"{what} into table {table.fullname!r}"
        raise ReadOnlyBindError(config.key, what, replica=config.replica)


def _naming(bind: Bind, preposition: str) -> str:
    """`` on bind 'users'`` (with ``preposition`` "on"), for a message that names the bind
    ``bind`` belongs to (`` from replica 2 of bind 'users'`` for one of its read replicas);
    nothing for an engine asyncbind did not make."""
    config = bind_config(bind)
    if config is None:
        return ""
    return f" {preposition} {bind_name(config.key, replica=config.replica)}"


def _as_table(obj: Any, what: str) -> sa.Table:
    if isinstance(obj, sa.Table):
        return obj
    if isinstance(obj, type):
        table: Any
        try:
            table = sa.inspect(obj).local_table
        except sa.exc.NoInspectionAvailable:
            table = None
        if isinstance(table, sa.Table):
            return table
    raise ConfigError(
        f"{what}={obj!r} is not a table; pass a sqlalchemy.Table, a mapped class "
        "or (for the source) a select()."
    )


def _as_select(source: Any) -> sa.Select[Any]:
    if isinstance(source, sa.Select):
        return source
    return sa.select(_as_table(source, "source"))


def _plan(
    source: Any, target: sa.Table, columns: Sequence[str] | None
) -> tuple[sa.Select[Any], list[str], frozenset[str], frozenset[str]]:
    """The SELECT to stream, the target column names its rows fill (in order), and those of them
    whose values are JSON text: read as text from JSON columns, and text going into JSON columns
    (see :func:`_json_as_text`)."""
    if isinstance(source, sa.Select):
        keys = [str(key) for key in source.selected_columns.keys()]
        names = _column_names(target, keys, "the select()'s column names")
        if columns is not None and _column_names(target, columns) != names:
            raise ConfigError(
                "columns= cannot reorder a select(); label the select()'s columns with the "
                f"target's names instead (the select() gives {keys})."
            )
        return _json_as_text(source, names, target)
    table = _as_table(source, "source")
    # Matched by the names in the databases; table.c is keyed by each column's key.
    source_columns = {c.name: c for c in table.columns}
    if columns is not None:
        names = _column_names(target, columns)
        missing = [n for n in names if n not in source_columns]
        if missing:
            raise ConfigError(
                f"Source table {table.fullname!r} has no column(s) {missing}; "
                f"it has {list(source_columns)}."
            )
    else:
        names = [c.name for c in target.columns if c.name in source_columns]
        if not names:
            raise ConfigError(
                f"Tables {table.fullname!r} and {target.fullname!r} have no column name in "
                "common. Pass a select() whose columns are labelled with the target's names."
            )
    return _json_as_text(sa.select(*(source_columns[n] for n in names)), names, target)


def _json_as_text(
    select: sa.Select[Any], names: list[str], target: sa.Table
) -> tuple[sa.Select[Any], list[str], frozenset[str], frozenset[str]]:
    """``select`` with its JSON columns read as their text; the names of those columns, and of
    the text columns that go into a JSON column of ``target``.

    Read as Python objects, JSON ``null`` and SQL NULL are both None, and a round trip through
    Python may change the text (key order, number spelling); as text they go into the target as
    they are. Text going into a JSON column is the JSON document itself (MariaDB's JSON is a
    LONGTEXT, and is reflected as one), so it goes as it is too, not serialised as a JSON string.
    """
    selected = list(select.selected_columns)
    target_columns = {c.name: c for c in target.columns}
    raw = frozenset(name for name, col in zip(names, selected, strict=True) if is_json(col.type))
    text = frozenset(
        name
        for name, col in zip(names, selected, strict=True)
        if is_text(col.type) and is_json(target_columns[name].type)
    )
    if not raw:
        return select, names, raw, text
    columns = [
        sa.cast(col, sa.Text).label(name) if name in raw else col
        for name, col in zip(names, selected, strict=True)
    ]
    return select.with_only_columns(*columns, maintain_column_froms=True), names, raw, text


def _column_names(table: sa.Table, given: Sequence[str], what: str = "columns=") -> list[str]:
    """The names in the database of the columns of ``table`` that ``given`` names, each by its
    name or else by its key in ``table.c``."""
    if isinstance(given, str):
        raise ConfigError(
            f"{what} is the string {given!r}; pass a list of column names, "
            f"for example columns=[{given!r}]."
        )
    by_name = {c.name: c.name for c in table.columns}
    by_key = {key: c.name for key, c in table.c.items()}
    names: list[str] = []
    unknown: list[str] = []
    for n in given:
        name = by_name.get(n, by_key.get(n))
        if name is None:
            unknown.append(n)
        else:
            names.append(name)
    if unknown or not names or len(set(names)) != len(names):
        problem = f"unknown column(s) {unknown}" if unknown else "no column or a repeated one"
        keys = f" (keys {list(by_key)})" if list(by_key) != list(by_name) else ""
        raise ConfigError(
            f"Target table {table.fullname!r}: {what} has {problem} ({list(given)}); "
            f"the table has {list(by_name)}{keys}."
        )
    return names


def _bind_key_of_source(source: Any) -> BindKey:
    if not isinstance(source, sa.Select):
        return bind_key_of(_as_table(source, "source"))
    tables: dict[Hashable | None, set[str]] = {}
    for table in sql_util.find_tables(source, include_joins=True, include_aliases=True):
        if isinstance(table, sa.Table):
            tables.setdefault(bind_key_of(table), set()).add(table.fullname)
    if len(tables) > 1:
        raise CrossBindError(tables)
    return next(iter(tables)) if tables else None  # type: ignore[return-value]


# -- batching --------------------------------------------------------------------------------


async def _batched(
    rows: Iterable[Any] | AsyncIterable[Any], names: Sequence[str], batch_size: int
) -> AsyncGenerator[Sequence[Any], None]:
    """Group rows into lists of ``batch_size``; mappings become sequences in ``names`` order."""
    batch: list[Any] = []

    def as_sequence(row: Any) -> Any:
        if isinstance(row, Mapping):
            try:
                return tuple(row[name] for name in names)
            except KeyError as exc:
                raise ConfigError(
                    f"A row has no value for column {exc.args[0]!r}: {shown(dict(row))}. "
                    "Give every column in columns=, or leave it out of columns=."
                ) from None
        return row

    if isinstance(rows, AsyncIterable):
        async for row in rows:
            batch.append(as_sequence(row))
            if len(batch) >= batch_size:
                yield batch
                batch = []
    else:
        for row in rows:
            batch.append(as_sequence(row))
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


# -- writing ---------------------------------------------------------------------------------


#: Added to a MySQL or MariaDB session's sql_mode for a load, and taken away after it:
#: NO_AUTO_VALUE_ON_ZERO keeps a 0 in an AUTO_INCREMENT column a 0 instead of making it the next
#: value (mysqldump sets it too); STRICT_ALL_TABLES makes a value that a column cannot hold an
#: error rather than a warning and a changed value.
_MYSQL_LOAD_MODE = (
    "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), "
    "'NO_AUTO_VALUE_ON_ZERO', 'STRICT_ALL_TABLES')"
)
_NOT_SET: Any = object()


class _Writer:
    """Writes batches of rows into one table through one connection, with the driver's fast path,
    each batch inside the transaction (or savepoint) that the caller began with SQLAlchemy."""

    def __init__(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        names: Sequence[str],
        raw_json: Collection[str] = (),
        text_json: Collection[str] = (),
    ) -> None:
        dialect = conn.dialect
        self._conn = conn
        self._table = table
        self._names = list(names)
        self._convert = rows_converter(table, names, dialect, raw_json, text_json)
        self._copy = dialect.name == "postgresql" and dialect.driver == "asyncpg"
        self._mysql = dialect.name in ("mysql", "mariadb")
        self._saved_mode: Any = _NOT_SET
        #: The records of a COPY that asyncpg could not encode, for explain().
        self._unencoded: Sequence[Sequence[Any]] | None = None
        if not self._copy:
            self._sql = _insert_sql(conn, table, names)

    async def write(self, rows: Sequence[Any]) -> None:
        records = self._convert(rows)
        if self._mysql and self._saved_mode is _NOT_SET:
            self._saved_mode = await self._conn.scalar(sa.text("SELECT @@SESSION.sql_mode"))
            await self._conn.exec_driver_sql(_MYSQL_LOAD_MODE)
        if self._copy:
            await self._copy_records(records)
        else:
            # The drivers' executemany takes tuples, not any sequence (rows read by SQLAlchemy).
            await self._conn.exec_driver_sql(self._sql, list(map(tuple, records)))

    async def _copy_records(self, records: Sequence[Sequence[Any]]) -> None:
        conn = self._conn
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        if not driver.is_in_transaction():
            # SQLAlchemy's asyncpg adapter sends its BEGIN with the first statement of a
            # transaction. Send one, so that the COPY runs in the transaction that SQLAlchemy
            # commits or rolls back, not in one of its own that nobody ends.
            await conn.exec_driver_sql("SELECT 1")
            dbapi = raw.dbapi_connection
            autocommit = dbapi is not None and conn.dialect.detect_autocommit_setting(dbapi)
            if not driver.is_in_transaction() and not autocommit:
                raise RuntimeError(
                    "the connection is not in a transaction although SQLAlchemy began one; "
                    "the COPY was not sent"
                )
        schema = _schema_of(conn, self._table)
        try:
            await driver.copy_records_to_table(
                self._table.name, records=records, columns=self._names, schema_name=schema
            )
        except Exception as exc:
            # asyncpg raises once the exchange is over (the server refused, or a value could not
            # be encoded): the transaction has failed and SQLAlchemy's rollback ends it. Unless
            # the connection itself is gone.
            if driver.is_closed():
                await _discard(conn)
            elif not _from_the_server(exc):
                self._unencoded = records  # asyncpg's codec raised: explain() finds the value
            raise
        except BaseException:
            # Interrupted half-way (a cancellation): the connection is in an unknown state. Drop
            # it at once, without the goodbye a COPY in progress would hold up, and discard it.
            driver.terminate()
            await _discard(conn)
            raise

    async def explain(self) -> str | None:
        """Once a failed batch has been rolled back: which column and value asyncpg's COPY could
        not encode, when that is why it failed; None otherwise, or when it cannot be told.

        The COPY's error names neither (a TypeError from the column's codec), so the batch is
        checked again, outside the COPY: each column's values are sent as the parameter of a
        ``SELECT $1::<the column's type>``, which asyncpg encodes with the same codec. A
        connection in the caller's transaction does this in a savepoint, rolled back after.
        """
        records, self._unencoded = self._unencoded, None
        conn = self._conn
        if records is None or conn.invalidated:
            return None
        try:
            if not conn.in_transaction():
                return await _unencodable(conn, self._table, self._names, records)
            savepoint = await conn.begin_nested()
            try:
                return await _unencodable(conn, self._table, self._names, records)
            finally:
                await savepoint.rollback()
        except Exception:
            return None  # the batch's own error is reported instead

    async def finish(self) -> None:
        """Give the connection back its own sql_mode, or discard it if that cannot be done, so
        that no pooled connection keeps the load's."""
        conn = self._conn
        if self._saved_mode is _NOT_SET or conn.invalidated:
            return
        try:
            await conn.execute(sa.text("SET SESSION sql_mode = :mode"), {"mode": self._saved_mode})
        except BaseException:
            await _discard(conn)
            raise


async def _discard(conn: AsyncConnection) -> None:
    """Invalidate ``conn`` (its pool opens a new connection in its place), even if the caller is
    cancelled meanwhile."""
    if not conn.invalidated:
        await run_to_completion(conn.invalidate())


def _from_the_server(error: Exception) -> bool:
    import asyncpg

    return isinstance(error, asyncpg.PostgresError)


async def _unencodable(
    conn: AsyncConnection, table: sa.Table, names: Sequence[str], records: Sequence[Sequence[Any]]
) -> str | None:
    """The first column (of ``names``) with a value in ``records`` that asyncpg cannot encode for
    its column of ``table``, that value and why; None when every value can be encoded."""
    driver: Any = (await conn.get_raw_connection()).driver_connection
    quote = conn.dialect.identifier_preparer.quote_identifier
    listed = ", ".join(map(quote, names))
    described = await driver.prepare(f"SELECT {listed} FROM {_table_sql(conn, table)} LIMIT 0")
    for i, (name, column) in enumerate(zip(names, described.get_attributes(), strict=True)):
        probe = f"SELECT $1::{quote(column.type.schema)}.{quote(column.type.name)}"
        values = [row[i] for row in records]
        found = await _first_unencodable(driver, probe, values)
        if found is not None:
            index, error = found
            return (
                f"column {name!r} ({column.type.name}) cannot take {shown(values[index])} (row "
                f"{index + 1} of the batch): {first_line(error.__cause__ or error)}"
            )
    return None


async def _first_unencodable(
    driver: Any, probe: str, values: list[Any]
) -> tuple[int, Exception] | None:
    """The index of a value that ``probe`` cannot take as its parameter, and asyncpg's error;
    None when it takes them all. Found by halving, in a few round trips whatever the batch."""
    import asyncpg

    # asyncpg's error for a parameter it cannot encode (its cause is the codec's error), and the
    # server's for one it cannot read.
    cannot_take: type[Exception] = asyncpg.DataError

    async def refused(part: list[Any]) -> Exception | None:
        try:
            await driver.executemany(probe, [(value,) for value in part])
        except cannot_take as exc:
            return exc
        return None

    error = await refused(values)
    if error is None:
        return None
    start, end = 0, len(values)  # values[start:end] holds one that cannot be taken
    while end - start > 1:
        middle = (start + end) // 2
        found = await refused(values[start:middle])
        if found is None:
            start = middle
        else:
            end, error = middle, found
    return start, error


def _table_sql(conn: AsyncConnection, table: sa.Table) -> str:
    """``table``'s name in SQL, with the schema ``conn`` sees for it."""
    preparer = conn.dialect.identifier_preparer
    schema = _schema_of(conn, table)
    name = preparer.format_table(table, use_schema=False)
    return f"{preparer.quote_schema(schema)}.{name}" if schema else name


def _schema_of(conn: AsyncConnection, table: sa.Table) -> str | None:
    """``table``'s schema as ``conn`` sees it (after any ``schema_translate_map``)."""
    sync = conn.sync_connection
    return sync.schema_for_object(table) if sync is not None else table.schema


def _insert_sql(conn: AsyncConnection, table: sa.Table, names: Sequence[str]) -> str:
    """``INSERT INTO t (a, b) VALUES (?, ?)`` in the driver's own parameter style."""
    dialect = conn.dialect
    preparer = dialect.identifier_preparer
    target = _table_sql(conn, table)
    # With the format styles the preparer writes a % in a name as %%, which the driver reads back.
    column_list = ", ".join(preparer.quote(name) for name in names)
    style = dialect.paramstyle
    if style == "qmark":
        marks = ["?"] * len(names)
    elif style in ("format", "pyformat"):
        marks = ["%s"] * len(names)
    elif style in ("numeric", "numeric_dollar"):
        sign = "$" if style == "numeric_dollar" else ":"
        marks = [f"{sign}{i}" for i in range(1, len(names) + 1)]
    else:
        raise BulkCopyError(
            f"Driver {dialect.driver!r} uses parameter style {style!r}, which the bulk path does "
            "not support; it supports qmark, format, pyformat and numeric.",
            rows_copied=0,
            table=table.fullname,
        )
    return f"INSERT INTO {target} ({column_list}) VALUES ({', '.join(marks)})"


async def _write_batches(
    target: Bind,
    table: sa.Table,
    names: Sequence[str],
    batches: AsyncIterator[Sequence[Any]],
    raw_json: Collection[str] = (),
    text_json: Collection[str] = (),
    *,
    tally: _Tally,
    source: str = "",
    on: AsyncConnection | None = None,
) -> None:
    """Write every batch, each in its own transaction. ``tally`` hears of each batch once it has
    landed; what its callback raises stops the writing, as a :class:`BulkCopyError` that says
    so. The counts in messages are this call's; ``rows_copied`` is the tally's. Messages name
    the target's bind, and ``source`` says where the rows come from (" from bind 'users'").
    ``on``: the connection to write on, when the caller opened it from ``target`` (an engine:
    each batch is then committed) and reads ``batches`` on it too."""
    rows_done = count = 0
    target_bind = _naming(target, "on")
    own = not isinstance(target, AsyncConnection)
    async with connection(target if on is None else on) as conn:
        writer = _Writer(conn, table, names, raw_json, text_json)
        try:
            async for batch in batches:
                if tally.failure is not None:
                    break
                if not batch:
                    continue
                try:
                    if own:
                        if conn.in_transaction():
                            # Begun by reading on this connection (``on``), with nothing but the
                            # read in it: ended, so that the batch has a transaction of its own.
                            await conn.commit()
                        async with conn.begin():
                            await writer.write(batch)
                    else:
                        async with conn.begin_nested():
                            await writer.write(batch)
                except Exception as exc:
                    cause = await writer.explain() or first_line(exc)
                    raise BulkCopyError(
                        f"Writing to table {table.fullname!r}{target_bind} failed in batch "
                        f"{count + 1} (rows {rows_done + 1} to {rows_done + len(batch)}), which "
                        f"was rolled back; the {rows_done} row(s) before it landed. "
                        f"Cause: {cause}",
                        rows_copied=tally.rows,
                        table=table.fullname,
                    ) from exc
                rows_done += len(batch)
                count += 1
                try:
                    await tally.landed(len(batch))
                except Exception as exc:
                    raise BulkCopyError(
                        f"on_progress raised {first_line(exc)}, so writing "
                        f"to table {table.fullname!r} stopped after {rows_done} row(s) had "
                        f"landed in {count} batch(es).",
                        rows_copied=tally.rows,
                        table=table.fullname,
                    ) from exc
        except BulkCopyError:
            raise
        except Exception as exc:
            raise BulkCopyError(
                f"Reading the rows for table {table.fullname!r}{source} failed after "
                f"{rows_done} row(s) had landed in {count} batch(es). Cause: {first_line(exc)}",
                rows_copied=tally.rows,
                table=table.fullname,
            ) from exc
        finally:
            await run_to_completion(writer.finish())
