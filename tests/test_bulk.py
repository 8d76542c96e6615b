"""The bulk path: rows streamed out of one bind and loaded into another, on real servers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import logging
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from test_bulk_cancellation import cancelled_in_batch

from asyncbind import AsyncBind, BulkCopyError, ConfigError, CrossBindError, ReadOnlyBindError
from asyncbind.bulk import CopyProgress, copy, load_rows, stream_rows

UTC = dt.UTC
NewDatabase = Callable[..., Awaitable[str]]
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))
COLUMNS = ("id", "name", "amount", "day", "at", "at_tz", "flag", "blob", "doc", "note")


def columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(100)),
        sa.Column("amount", sa.Numeric(12, 2)),
        sa.Column("day", sa.Date),
        sa.Column("at", sa.DateTime),
        sa.Column("at_tz", sa.DateTime(timezone=True)),
        sa.Column("flag", sa.Boolean),
        sa.Column("blob", sa.LargeBinary),
        sa.Column("doc", sa.JSON),
        sa.Column("note", sa.Text),
    ]


def sample(n: int) -> list[tuple[Any, ...]]:
    """``n`` rows with awkward values; every fifth row is all NULLs but its key."""
    names = ["Zoë", "東京", "emoji 🎉", "", 'O\'Brien \\ "quoted"', "tab\tnew\nline", "%s %(x)s ?"]
    rows: list[tuple[Any, ...]] = []
    for i in range(1, n + 1):
        if i % 5 == 0:
            rows.append((i,) + (None,) * (len(COLUMNS) - 1))
            continue
        rows.append(
            (
                i,
                f"{names[i % len(names)]} {i}",
                decimal.Decimal(i) / 100 - decimal.Decimal("500.5"),
                dt.date(1999, 12, 31) + dt.timedelta(days=i),
                dt.datetime(2024, 2, 29, 23, 59, 58) + dt.timedelta(minutes=i),
                dt.datetime(2024, 1, 1, 1, 30, tzinfo=PLUS_TWO) + dt.timedelta(hours=i),
                i % 2 == 0,
                bytes([0, 255, 10, 13, 39, 92, i % 256]) * (1 + i % 3),
                {"i": i, "tags": ["é", None, True], "nested": {"x": 1.5}},
                "x" * (i % 50),
            )
        )
    return rows


def expected(rows: list[tuple[Any, ...]], backend: str) -> list[tuple[Any, ...]]:
    """What ``backend`` gives back for ``rows``: aware datetimes come back in UTC, and naive
    (in UTC) where the database keeps no zone."""
    out = []
    for row in rows:
        values = list(row)
        at_tz = values[COLUMNS.index("at_tz")]
        if at_tz is not None:
            at_tz = at_tz.astimezone(UTC)
            values[COLUMNS.index("at_tz")] = (
                at_tz if backend == "postgresql" else at_tz.replace(tzinfo=None)
            )
        out.append(tuple(values))
    return out


async def fetch(db: AsyncBind, table: sa.Table, key: str | None = None) -> list[tuple[Any, ...]]:
    async with db.get_engine(key).connect() as conn:
        result = await conn.execute(sa.select(table).order_by(table.c.id))
        return [tuple(row) for row in result]


async def count(db: AsyncBind, table: sa.Table, key: str | None = None) -> int:
    async with db.get_engine(key).connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)))


def two_tables(db: AsyncBind, source_key: str, target_key: str) -> tuple[sa.Table, sa.Table]:
    name = f"t_{uuid.uuid4().hex[:8]}"
    return (
        db.Table(name, *columns(), bind_key=source_key),
        db.Table(name, *columns(), bind_key=target_key),
    )


@pytest.fixture(
    params=[
        pytest.param(
            ("mysql", "postgresql"),
            id="mysql->postgresql",
            marks=[pytest.mark.mysql, pytest.mark.postgresql],
        ),
        pytest.param(
            ("sqlite", "postgresql"),
            id="sqlite->postgresql",
            marks=[pytest.mark.sqlite, pytest.mark.postgresql],
        ),
        pytest.param(
            ("postgresql", "mysql"),
            id="postgresql->mysql",
            marks=[pytest.mark.postgresql, pytest.mark.mysql],
        ),
    ]
)
def server_pair(request: pytest.FixtureRequest) -> tuple[str, str]:
    """A source backend and a different target backend."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def same_backend_db(
    backend: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> AsyncBind:
    """Binds 'source' and 'target': two databases on the test's backend."""
    return make_db(
        binds={"source": await new_database(backend), "target": await new_database(backend)}
    )


async def test_copy_round_trips_values(backend: str, same_backend_db: AsyncBind) -> None:
    db = same_backend_db
    source, target = two_tables(db, "source", "target")
    await db.create_all()
    rows = sample(2_345)
    loaded = await load_rows(db.get_engine("source"), source, rows, batch_size=1_000)
    assert (loaded.rows, loaded.batches) == (2_345, 3)

    result = await db.copy(source, target, batch_size=500)

    assert (result.rows, result.batches) == (2_345, 5)
    assert await fetch(db, target, "target") == expected(rows, backend)
    assert await fetch(db, source, "source") == expected(rows, backend)


async def test_copy_across_servers(
    server_pair: tuple[str, str], new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    source_backend, target_backend = server_pair
    db = make_db(
        binds={
            "source": await new_database(source_backend),
            "target": await new_database(target_backend),
        }
    )
    source, target = two_tables(db, "source", "target")
    await db.create_all()
    rows = sample(3_001)
    await load_rows(db.get_engine("source"), source, rows)

    result = await db.copy(source, target, batch_size=1_000)

    assert (result.rows, result.batches) == (3_001, 4)
    assert await fetch(db, target, "target") == expected(rows, target_backend)


async def test_failure_mid_copy_rolls_back_that_batch(
    backend: str, same_backend_db: AsyncBind
) -> None:
    db = same_backend_db
    source, target = two_tables(db, "source", "target")
    await db.create_all()
    await load_rows(db.get_engine("source"), source, sample(1_000))
    # Row 250 is already in the target: the third batch of 100 breaks its primary key.
    async with db.get_engine("target").begin() as conn:
        await conn.execute(target.insert(), {"id": 250, "name": "already there"})

    with pytest.raises(BulkCopyError) as caught:
        await db.copy(source, target, batch_size=100)

    assert caught.value.rows_copied == 200
    assert caught.value.table == target.name
    assert isinstance(caught.value.__cause__, Exception)
    assert "batch 3" in str(caught.value) and "200 row(s)" in str(caught.value)
    assert f"table {target.name!r} on bind 'target' failed" in str(caught.value)
    landed = [row[0] for row in await fetch(db, target, "target")]
    assert landed == [*range(1, 201), 250]


async def test_a_source_that_cannot_be_read_is_named(
    backend: str, same_backend_db: AsyncBind
) -> None:
    db = same_backend_db
    _, target = two_tables(db, "source", "target")
    await db.create_all()
    missing = sa.select(sa.table("missing", sa.column("id"), sa.column("name")))

    with pytest.raises(BulkCopyError) as caught:
        await db.copy(missing, target, source_bind="source")

    assert caught.value.rows_copied == 0
    assert str(caught.value).startswith(
        f"Reading the rows for table {target.name!r} from bind 'source' failed after 0 row(s)"
    )
    assert await count(db, target, "target") == 0


@pytest.mark.postgresql
async def test_a_value_the_copy_cannot_encode_is_named(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """asyncpg's COPY says only what a column's codec raised; the error names the column, the
    value and its row, and a connection's transaction stays usable."""
    db = make_db(await new_database("postgresql"))
    target = db.Table(
        "coded",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("note", sa.Text),
        sa.Column("code", sa.Integer),
        sa.Column("opens", sa.Time(timezone=True)),
    )
    await db.create_all()
    rows: list[tuple[Any, ...]] = [(i, "fine", i, None) for i in range(1, 1001)]
    rows[732] = (733, "bad", "A17", None)

    with pytest.raises(BulkCopyError) as caught:
        await load_rows(db.engine, target, rows, batch_size=500)

    assert caught.value.rows_copied == 500
    assert isinstance(caught.value.__cause__, TypeError)
    assert (
        "Cause: column 'code' (int4) cannot take 'A17' (row 233 of the batch): "
        "TypeError: 'str' object cannot be interpreted as an integer"
    ) in str(caught.value)
    async with db.engine.connect() as conn:
        naive = (2001, None, None, dt.time(9, 30))
        with pytest.raises(BulkCopyError) as caught:
            await load_rows(conn, target, [(2000, None, None, dt.time(9, 30, tzinfo=UTC)), naive])
        assert "column 'opens' (timetz) cannot take datetime.time(9, 30) (row 2 " in str(
            caught.value
        )
        long = "B" * 50_000  # shown cut short, with its length
        with pytest.raises(BulkCopyError) as caught:
            await load_rows(conn, target, [(2002, None, long, None)])
        message = str(caught.value)
        assert f"cannot take '{'B' * 199}... (50,002 characters in all) (row 1 " in message
        assert len(message) < 1_000
        await conn.execute(target.insert(), {"id": 3000})
        await conn.commit()
    assert await count(db, target) == 501


async def test_failure_in_the_first_batch_lands_nothing(
    backend: str, same_backend_db: AsyncBind
) -> None:
    db = same_backend_db
    _, target = two_tables(db, "source", "target")
    await db.create_all()
    rows = sample(50)
    rows[30] = (1, *rows[30][1:])  # a duplicate key inside the first batch

    with pytest.raises(BulkCopyError) as caught:
        await load_rows(db.get_engine("target"), target, rows, batch_size=100)

    assert caught.value.rows_copied == 0
    assert await count(db, target, "target") == 0


async def test_load_into_a_connection_uses_savepoints(
    backend: str, same_backend_db: AsyncBind
) -> None:
    db = same_backend_db
    _, target = two_tables(db, "source", "target")
    await db.create_all()
    rows = sample(30)
    rows[25] = (3, *rows[25][1:])  # breaks the second batch of 20

    async with db.get_engine("target").connect() as conn:
        await conn.execute(target.insert(), {"id": 1000, "name": "before"})
        with pytest.raises(BulkCopyError) as caught:
            await load_rows(conn, target, rows, batch_size=20)
        assert caught.value.rows_copied == 20
        # The caller's transaction is still usable: only the failed batch was rolled back.
        await conn.execute(target.insert(), {"id": 1001, "name": "after"})
        await conn.commit()

    landed = [row[0] for row in await fetch(db, target, "target")]
    assert landed == [*range(1, 21), 1000, 1001]


async def test_copy_from_a_select_with_labels(
    server_pair: tuple[str, str], new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    source_backend, target_backend = server_pair
    db = make_db(
        binds={
            "source": await new_database(source_backend),
            "target": await new_database(target_backend),
        }
    )
    source = db.Table("people", *columns(), bind_key="source")
    target = db.Table(
        "contacts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("display", sa.String(100)),
        sa.Column("born", sa.Date),
        bind_key="target",
    )
    await db.create_all()
    rows = sample(100)
    await load_rows(db.get_engine("source"), source, rows)
    query = (
        sa.select(source.c.id, source.c.name.label("display"), source.c.day.label("born"))
        .where(source.c.flag.is_(True))
        .order_by(source.c.id)
    )

    result = await db.copy(query, target, batch_size=7)

    wanted = [(r[0], r[1], r[3]) for r in rows if r[6] is True]
    assert result.rows == len(wanted) == 40
    assert await fetch(db, target, "target") == wanted


async def test_copy_models_by_their_bind_keys(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db(
        await new_database("sqlite"),
        binds={"archive": await new_database("sqlite")},
    )

    class Event(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "event"
        id: sa.orm.Mapped[int] = sa.orm.mapped_column(primary_key=True, autoincrement=False)
        what: sa.orm.Mapped[str] = sa.orm.mapped_column(sa.String(20))

    class ArchivedEvent(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "archive"
        __tablename__ = "event"
        id: sa.orm.Mapped[int] = sa.orm.mapped_column(primary_key=True, autoincrement=False)
        what: sa.orm.Mapped[str] = sa.orm.mapped_column(sa.String(20))

    await db.create_all()
    await load_rows(db.engine, Event, [{"id": i, "what": f"e{i}"} for i in range(1, 11)])

    result = await db.copy(Event, ArchivedEvent)

    assert result.rows == 10
    async with db.session() as session:
        archived = (
            await session.scalars(sa.select(ArchivedEvent).order_by(ArchivedEvent.id))
        ).all()
    assert [(e.id, e.what) for e in archived] == [(i, f"e{i}") for i in range(1, 11)]


async def test_copy_between_engines_with_explicit_columns(
    backend: str, same_backend_db: AsyncBind
) -> None:
    db = same_backend_db
    source, target = two_tables(db, "source", "target")
    await db.create_all()
    rows = sample(20)
    await load_rows(db.get_engine("source"), source, rows)

    result = await copy(
        source,
        target,
        source_engine=db.get_engine("source"),
        target_engine=db.get_engine("target"),
        columns=["id", "name"],
    )

    assert result.rows == 20
    fetched = await fetch(db, target, "target")
    assert [(r[0], r[1]) for r in fetched] == [(r[0], r[1]) for r in rows]
    assert all(r[2:] == (None,) * 8 for r in fetched)


async def test_columns_are_matched_by_their_names_in_the_database(
    backend: str, same_backend_db: AsyncBind
) -> None:
    """A column whose key in ``table.c`` is not its name is copied by its name; columns= takes
    names and keys."""
    db = same_backend_db

    def people(bind_key: str, column_key: str | None = None) -> sa.Table:
        return db.Table(
            "people",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("full name", sa.String(50), key=column_key),
            bind_key=bind_key,
        )

    source = people("source", "full_name")
    target = people("target", "full_name")
    await db.create_all()
    await load_rows(db.get_engine("source"), source, [(1, "Ada Lovelace"), (2, "Alan Turing")])
    want = [(1, "Ada Lovelace"), (2, "Alan Turing")]

    async def copied(source: Any, target: sa.Table, **options: Any) -> list[tuple[Any, ...]]:
        await db.copy(source, target, **options)
        rows = await fetch(db, target, "target")
        async with db.get_engine("target").begin() as conn:
            await conn.execute(target.delete())
        return rows

    assert await copied(source, target) == want
    assert await copied(source, target, columns=["id", "full name"]) == want
    assert await copied(source, target, columns=["id", "full_name"]) == want
    assert await copied(sa.select(source), target) == want
    # The same table with the name as its key, as reflection makes it.
    db.metadatas["target"].clear()
    assert await copied(source, people("target")) == want
    await load_rows(db.get_engine("target"), target, [{"id": 3, "full name": "Grace Hopper"}])
    await load_rows(
        db.get_engine("target"),
        target,
        [{"id": 4, "full_name": "Edsger Dijkstra"}],
        columns=["id", "full_name"],
    )
    assert await fetch(db, target, "target") == [(3, "Grace Hopper"), (4, "Edsger Dijkstra")]


async def test_column_errors_name_what_the_table_has(make_db: Callable[..., AsyncBind]) -> None:
    db = make_db("sqlite://", binds={"other": "sqlite://"})
    source = db.Table(
        "a",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("full name", sa.String(50), key="full_name"),
    )
    target = db.Table(
        "b",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("full name", sa.String(50), key="full_name"),
        bind_key="other",
    )

    with pytest.raises(ConfigError) as caught:
        await db.copy(source, target, columns=["id", "fullname"])
    message = str(caught.value)
    assert "unknown column(s) ['fullname']" in message
    assert "the table has ['id', 'full name'] (keys ['id', 'full_name'])" in message
    # A string is a sequence of one-letter names: refused, not read as ['i', 'd'].
    for bad in (
        lambda: db.copy(source, target, columns="id"),
        lambda: load_rows(db.get_engine("other"), target, [(1,)], columns="id"),
    ):
        with pytest.raises(ConfigError, match="columns= is the string 'id'; pass a list") as caught:
            await bad()
        assert "columns=['id']" in str(caught.value)


async def test_stream_rows_in_batches_and_stop_early(
    backend: str, same_backend_db: AsyncBind
) -> None:
    db = same_backend_db
    source, _ = two_tables(db, "source", "target")
    await db.create_all()
    rows = sample(1_050)
    await load_rows(db.get_engine("source"), source, rows)
    engine = db.get_engine("source")

    ids = [
        row.id
        async for row in stream_rows(
            engine, sa.select(source).order_by(source.c.id), batch_size=100
        )
    ]
    assert ids == list(range(1, 1_051))

    async with contextlib.aclosing(stream_rows(engine, source, batch_size=10)) as stream:
        first = [row async for _, row in _zip_range(stream, 15)]
    assert len(first) == 15
    # The stream's connection went back to the pool: the engine still works and nothing leaked.
    assert await count(db, source, "source") == 1_050
    assert engine.pool.checkedout() == 0


async def _zip_range(stream: Any, n: int) -> Any:
    i = 0
    async for row in stream:
        yield i, row
        i += 1
        if i == n:
            return


async def test_empty_source_copies_nothing(backend: str, same_backend_db: AsyncBind) -> None:
    db = same_backend_db
    source, target = two_tables(db, "source", "target")
    await db.create_all()

    result = await db.copy(source, target)

    assert (result.rows, result.batches) == (0, 0)
    assert await count(db, target, "target") == 0


async def test_argument_errors_name_the_problem(make_db: Callable[..., AsyncBind]) -> None:
    db = make_db("sqlite://", binds={"other": "sqlite://"})
    source = db.Table("a", sa.Column("id", sa.Integer, primary_key=True))
    target = db.Table("b", sa.Column("key", sa.Integer, primary_key=True), bind_key="other")
    unrelated = db.Table("c", sa.Column("id", sa.Integer, primary_key=True), bind_key="other")

    with pytest.raises(ConfigError, match="no column name in common"):
        await db.copy(source, target)
    with pytest.raises(ConfigError, match=r"unknown column\(s\) \['id'\]"):
        await db.copy(sa.select(source.c.id), target)
    with pytest.raises(ConfigError, match="batch_size=0"):
        await db.copy(source, unrelated, batch_size=0)
    with pytest.raises(ConfigError, match="not a table"):
        await db.copy(source, "b")
    with pytest.raises(ConfigError, match="not a table"):  # a FromClause that is not a Table
        await load_rows(db.engine, source.alias("x"), [{"id": 1}])
    with pytest.raises(CrossBindError):
        await db.copy(sa.select(source.c.id).join(unrelated, source.c.id == unrelated.c.id), target)
    with pytest.raises(BulkCopyError, match="no value for column 'key'") as caught:
        await load_rows(db.get_engine("other"), target, [{"id": 1}])
    assert isinstance(caught.value.__cause__, ConfigError)
    assert caught.value.rows_copied == 0


async def test_copy_memory_does_not_grow_with_row_count(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db(
        binds={"source": await new_database("sqlite"), "target": await new_database("sqlite")}
    )
    source, target = two_tables(db, "source", "target")
    await db.create_all()
    await load_rows(db.get_engine("source"), source, sample(30_000), batch_size=5_000)

    async def peak(rows: int) -> int:
        async with db.get_engine("target").begin() as conn:
            await conn.execute(target.delete())
        tracemalloc.start()
        try:
            await db.copy(sa.select(source).where(source.c.id <= rows), target, batch_size=500)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    await peak(1_000)  # warm SQLAlchemy's caches
    small, large = await peak(5_000), await peak(30_000)
    assert await count(db, target, "target") == 30_000
    # Six times the rows, about the same peak: a few batches of 500 rows are held at a time.
    assert large < small * 1.5, (small, large)


async def test_read_only_target_is_refused_before_any_sql(
    backend: str,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
    statements: Callable[[AsyncBind], list[tuple[Any, str]]],
) -> None:
    urls = {"source": await new_database(backend), "archive": await new_database(backend)}
    writable = make_db(binds=urls)
    source, target = two_tables(writable, "source", "archive")
    await writable.create_all()
    await load_rows(writable.get_engine("source"), source, sample(10))
    # The same databases, the archive configured read-only.
    db = make_db(
        binds={"source": urls["source"], "archive": {"url": urls["archive"], "read_only": True}}
    )
    source = db.Table(source.name, *columns(), bind_key="source")
    target = db.Table(target.name, *columns(), bind_key="archive")
    engine = db.get_engine("archive")
    log = statements(db)

    attempts: list[Callable[[], Awaitable[Any]]] = [
        lambda: db.copy(source, target),
        lambda: db.copy(sa.select(source).where(source.c.id > 5), target),
        lambda: load_rows(engine, target, sample(3)),
        lambda: load_rows(engine.execution_options(yield_per=10), target, sample(3)),
        lambda: copy(source, target, source_engine=db.get_engine("source"), target_engine=engine),
    ]
    for attempt in attempts:
        with pytest.raises(ReadOnlyBindError) as caught:
            await attempt()
        assert caught.value.key == "archive"
        assert f"into table '{target.name}'" in str(caught.value)
        assert "read-only" in str(caught.value)
    assert log == []
    # A connection of the bind, and the engine after dispose(), are refused as well.
    async with engine.connect() as conn:
        with pytest.raises(ReadOnlyBindError):
            await load_rows(conn, target, sample(3))
    await db.dispose()
    with pytest.raises(ReadOnlyBindError, match="a bulk load into table"):
        await load_rows(engine, target, sample(3))
    assert [sql for key, sql in log if key == "archive" and "INSERT" in sql.upper()] == []
    assert await count(writable, target, "archive") == 0


async def test_load_through_an_autocommit_engine(
    backend: str, url: str, make_db: Callable[..., AsyncBind]
) -> None:
    """With AUTOCOMMIT there is no transaction to write in: each batch (one COPY or INSERT)
    commits by itself."""
    db = make_db(url)
    target = db.Table("auto", *columns())
    await db.create_all()

    result = await load_rows(
        db.engine.execution_options(isolation_level="AUTOCOMMIT"), target, sample(25), batch_size=10
    )

    assert (result.rows, result.batches) == (25, 3)
    assert await fetch(db, target) == expected(sample(25), backend)


# -- progress --------------------------------------------------------------------------------


async def test_copy_reports_progress_after_each_batch_lands(
    backend: str, same_backend_db: AsyncBind
) -> None:
    """Each report comes once its batch is in the target: the rows counted are there."""
    db = same_backend_db
    source, target = two_tables(db, "source", "target")
    await db.create_all()
    await load_rows(db.get_engine("source"), source, sample(250))
    seen: list[CopyProgress] = []
    in_target: list[int] = []

    async def on_progress(progress: CopyProgress) -> None:  # a coroutine function is awaited
        seen.append(progress)
        in_target.append(await count(db, target, "target"))

    result = await db.copy(source, target, batch_size=100, on_progress=on_progress)

    assert [(p.rows, p.batches, p.batch_rows) for p in seen] == [
        (100, 1, 100),
        (200, 2, 100),
        (250, 3, 50),
    ]
    assert in_target == [100, 200, 250]
    assert all(p.seconds > 0 and p.rows_per_second > 0 for p in seen)
    assert [p.seconds for p in seen] == sorted(p.seconds for p in seen)
    assert (result.rows, result.batches) == (250, 3)


async def test_load_rows_reports_progress_to_a_plain_function(
    backend: str, same_backend_db: AsyncBind
) -> None:
    db = same_backend_db
    _, target = two_tables(db, "source", "target")
    await db.create_all()
    seen: list[tuple[int, int]] = []
    await load_rows(
        db.get_engine("target"),
        target,
        sample(30),
        batch_size=10,
        on_progress=lambda p: seen.append((p.rows, p.batch_rows)),
    )
    assert seen == [(10, 10), (20, 10), (30, 10)]


async def test_a_failing_progress_callback_stops_the_copy_and_says_so(
    backend: str, same_backend_db: AsyncBind
) -> None:
    """The batch it was told about has landed; nothing after it is written."""
    db = same_backend_db
    source, target = two_tables(db, "source", "target")
    await db.create_all()
    await load_rows(db.get_engine("source"), source, sample(300))

    def on_progress(progress: CopyProgress) -> None:
        if progress.batches == 2:
            raise RuntimeError("the terminal went away")

    with pytest.raises(BulkCopyError) as caught:
        await db.copy(source, target, batch_size=100, on_progress=on_progress)
    assert caught.value.rows_copied == 200
    assert "on_progress raised RuntimeError: the terminal went away" in str(caught.value)
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert await count(db, target, "target") == 200


async def test_on_progress_must_be_callable(same_backend_db: AsyncBind) -> None:
    db = same_backend_db
    source, target = two_tables(db, "source", "target")
    with pytest.raises(ConfigError, match="on_progress=42 is not callable"):
        await db.copy(source, target, on_progress=42)  # type: ignore[arg-type]


# -- parallel=N: key ranges at once ----------------------------------------------------------


def busiest(engine: Any) -> Callable[[], int]:
    """What the most connections checked out of ``engine``'s pool at once has been, so far."""
    out = [0, 0]

    def checkout(*args: Any) -> None:
        out[0] += 1
        out[1] = max(out)

    def checkin(*args: Any) -> None:
        out[0] -= 1

    sa.event.listen(engine.sync_engine, "checkout", checkout)
    sa.event.listen(engine.sync_engine, "checkin", checkin)
    return lambda: out[1]


async def test_parallel_copies_key_ranges_over_connections_at_once(
    backend: str, same_backend_db: AsyncBind
) -> None:
    db = same_backend_db
    source, target = two_tables(db, "source", "target")
    await db.create_all()
    rows = sample(3_001)
    await load_rows(db.get_engine("source"), source, rows)
    reading, writing = busiest(db.get_engine("source")), busiest(db.get_engine("target"))
    reports: list[CopyProgress] = []

    result = await db.copy(source, target, batch_size=250, parallel=3, on_progress=reports.append)

    # Ids 1-1000, 1001-2000, 2001-3001: 4 + 4 + 5 batches of up to 250.
    assert (result.rows, result.batches) == (3_001, 13)
    assert await fetch(db, target, "target") == expected(rows, backend)
    assert (reading(), writing()) == (3, 3)
    assert [p.rows for p in reports] == sorted(p.rows for p in reports)
    assert (reports[-1].rows, reports[-1].batches) == (3_001, 13)


async def test_parallel_copy_of_fewer_keys_than_ranges(
    backend: str, same_backend_db: AsyncBind
) -> None:
    db = same_backend_db
    source, target = two_tables(db, "source", "target")
    await db.create_all()
    await load_rows(db.get_engine("source"), source, sample(2))

    result = await db.copy(source, target, parallel=8)

    assert result.rows == 2
    assert [row[0] for row in await fetch(db, target, "target")] == [1, 2]
    source2, target2 = two_tables(db, "source", "target")
    await db.create_all()
    assert (await db.copy(source2, target2, parallel=8)).rows == 0


async def test_a_failure_in_one_range_stops_them_all_and_counts_what_landed(
    backend: str, same_backend_db: AsyncBind
) -> None:
    db = same_backend_db
    source, target = two_tables(db, "source", "target")
    await db.create_all()
    await load_rows(db.get_engine("source"), source, sample(3_000))
    # Id 2500 is already in the target: its range's batch of 2401-2600 breaks the primary key.
    async with db.get_engine("target").begin() as conn:
        await conn.execute(target.insert(), {"id": 2500, "name": "already there"})

    with pytest.raises(BulkCopyError) as caught:
        await db.copy(source, target, batch_size=200, parallel=3)

    landed = [row[0] for row in await fetch(db, target, "target")]
    assert caught.value.rows_copied == len(landed) - 1
    assert 2450 not in landed  # the failed batch was rolled back
    assert "3 key ranges" in str(caught.value)
    assert isinstance(caught.value.__cause__, BulkCopyError)


async def test_parallel_needs_a_table_with_an_integer_key_and_engines(
    make_db: Callable[..., AsyncBind],
) -> None:
    db = make_db("sqlite://", binds={"other": "sqlite://"})
    target = db.Table("b", sa.Column("id", sa.Integer, primary_key=True), bind_key="other")
    by_name = db.Table("c", sa.Column("id", sa.String(10), primary_key=True))
    by_two = db.Table(
        "d",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("n", sa.Integer, primary_key=True),
    )
    await db.create_all()
    with pytest.raises(ConfigError, match="parallel=0 must be a positive integer"):
        await db.copy(by_name, target, parallel=0)
    for source in (by_name, by_two, sa.select(by_two.c.id)):
        with pytest.raises(ConfigError, match="integer primary key") as caught:
            await db.copy(source, target, parallel=2)
        assert "parallel=1" in str(caught.value)
    async with db.engine.connect() as conn:
        with pytest.raises(ConfigError, match="needs engines for both binds"):
            await copy(
                by_two, target, source_engine=conn, target_engine=db.get_engine("other"), parallel=2
            )


@pytest.mark.mysql
@pytest.mark.parametrize("driver", ["aiomysql", "asyncmy"])
async def test_a_mysql_table_is_read_through_the_drivers_cursor(
    driver: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """SQLAlchemy sends no SELECT of a table source's rows (the driver's cursor does), and the
    rows land as they do through SQLAlchemy's result, which a select() source still uses."""

    async def database() -> str:
        url = sa.make_url(await new_database("mysql")).set(drivername=f"mysql+{driver}")
        return url.render_as_string(hide_password=False)

    db = make_db(binds={"source": await database(), "target": await database()})
    source, target = two_tables(db, "source", "target")
    _, by_select = two_tables(db, "source", "target")
    await db.create_all()
    rows = sample(300)
    await load_rows(db.get_engine("source"), source, rows)
    selects: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and source.name in statement:
            selects.append(statement)

    sa.event.listen(db.get_engine("source").sync_engine, "before_cursor_execute", seen)

    await db.copy(source, target, batch_size=100, parallel=2)
    assert [s for s in selects if "min(" not in s] == []  # only the key range's min and max
    selects.clear()
    await db.copy(sa.select(source), by_select, batch_size=100)
    assert len(selects) == 1

    assert await fetch(db, target, "target") == expected(rows, "mysql")
    assert await fetch(db, by_select, "target") == expected(rows, "mysql")


# -- within one SQLite database --------------------------------------------------------------


@pytest.fixture(params=["memory", "file"])
async def sqlite_database(request: pytest.FixtureRequest, new_database: NewDatabase) -> str:
    """The URL of a SQLite database in memory (one connection, which is the database) or in a
    file."""
    if request.param == "memory":
        return "sqlite://"
    return await new_database("sqlite")


def source_and_target(
    db: AsyncBind, source_key: str | None = None, target_key: str | None = None
) -> tuple[sa.Table, sa.Table]:
    """Two tables of the same columns under different names, for a copy within one database."""
    name = f"t_{uuid.uuid4().hex[:8]}"
    return (
        db.Table(f"{name}_from", *columns(), bind_key=source_key),
        db.Table(f"{name}_to", *columns(), bind_key=target_key),
    )


@pytest.mark.sqlite
async def test_a_copy_within_one_sqlite_database_is_exact(
    sqlite_database: str, make_db: Callable[..., AsyncBind]
) -> None:
    """Read and written on one connection: in memory no end of the reading rolls back a batch
    being written, and in a file no reader's lock holds up a commit. Each batch is committed
    as it lands: another connection sees it at once."""
    db = make_db(sqlite_database)
    source, target = source_and_target(db)
    await db.create_all()
    rows = sample(2_500)
    await load_rows(db.engine, source, rows)
    checked_out = busiest(db.engine)
    in_target: list[int] = []

    async def on_progress(progress: CopyProgress) -> None:
        in_target.append(await count(db, target))

    async with asyncio.timeout(60):
        result = await db.copy(source, target, batch_size=500, on_progress=on_progress)

    assert (result.rows, result.batches) == (2_500, 5)
    assert await fetch(db, target) == expected(rows, "sqlite")
    assert in_target == [500, 1_000, 1_500, 2_000, 2_500]
    assert checked_out() == 1 + 1  # the copy's connection, and on_progress's for a moment


@pytest.mark.sqlite
@pytest.mark.parametrize("spelling", ["same URL", "file URI", "symbolic link"])
async def test_a_copy_between_two_binds_of_one_sqlite_file_is_exact(
    spelling: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind], tmp_path: Path
) -> None:
    """Two binds that name one file, however spelt, are one database: the copy reads on the
    target bind's connection."""
    url = await new_database("sqlite")
    path = Path(sa.make_url(url).database or "")
    if spelling == "file URI":
        other = f"sqlite:///file:{path}?uri=true&cache=private"
    elif spelling == "symbolic link":
        (tmp_path / "link.sqlite").symlink_to(path)
        other = f"sqlite:///{tmp_path / 'link.sqlite'}"
    else:
        other = url
    db = make_db(url, binds={"archive": other})
    source, target = source_and_target(db, None, "archive")
    await db.create_all()
    rows = sample(2_500)
    await load_rows(db.engine, source, rows)

    async with asyncio.timeout(60):
        result = await db.copy(source, target, batch_size=500)

    assert (result.rows, result.batches) == (2_500, 5)
    assert await fetch(db, target, "archive") == expected(rows, "sqlite")


@pytest.mark.sqlite
async def test_a_failure_within_one_sqlite_database_keeps_the_batches_before_it(
    sqlite_database: str, make_db: Callable[..., AsyncBind]
) -> None:
    """The failed batch is rolled back on the connection that is still reading; the batches
    before it stay committed, as in any copy."""
    db = make_db(sqlite_database)
    source, target = source_and_target(db)
    await db.create_all()
    await load_rows(db.engine, source, sample(1_000))
    # Row 250 is already in the target: the third batch of 100 breaks its primary key.
    async with db.engine.begin() as conn:
        await conn.execute(target.insert(), {"id": 250, "name": "already there"})

    async with asyncio.timeout(60):
        with pytest.raises(BulkCopyError) as caught:
            await db.copy(source, target, batch_size=100)

    assert caught.value.rows_copied == 200
    assert "batch 3" in str(caught.value) and "200 row(s)" in str(caught.value)
    landed = [row[0] for row in await fetch(db, target)]
    assert landed == [*range(1, 201), 250]
    # The database is usable: the rest copies.
    rest = sa.select(source).where(source.c.id > 200, source.c.id != 250)
    assert (await db.copy(rest, target, batch_size=100)).rows == 799
    assert await count(db, target) == 1_000


@pytest.mark.sqlite
async def test_parallel_within_one_sqlite_database_copies_in_one_stream(
    sqlite_database: str, make_db: Callable[..., AsyncBind]
) -> None:
    """SQLite writes one transaction at a time: parallel= runs as one stream on one connection,
    with no lock waited for and no row lost."""
    db = make_db(sqlite_database)
    source, target = source_and_target(db)
    await db.create_all()
    rows = sample(3_001)
    await load_rows(db.engine, source, rows)
    checked_out = busiest(db.engine)

    async with asyncio.timeout(60):
        result = await db.copy(source, target, batch_size=250, parallel=3)

    assert (result.rows, result.batches) == (3_001, 13)
    assert await fetch(db, target) == expected(rows, "sqlite")
    assert checked_out() == 1


@pytest.mark.sqlite
@pytest.mark.parametrize("source_is", ["the engine", "the same connection"])
async def test_a_copy_within_one_sqlite_database_into_a_connection(
    source_is: str, sqlite_database: str, make_db: Callable[..., AsyncBind]
) -> None:
    """Into a connection the caller holds, the copy reads on that connection too, and writes
    each batch in a SAVEPOINT of its transaction; the caller's commit lands them all."""
    db = make_db(sqlite_database)
    source, target = source_and_target(db)
    await db.create_all()
    rows = sample(2_500)
    await load_rows(db.engine, source, rows)

    async with asyncio.timeout(60), db.engine.connect() as conn:
        result = await copy(
            source,
            target,
            source_engine=db.engine if source_is == "the engine" else conn,
            target_engine=conn,
            batch_size=500,
        )
        await conn.commit()

    assert (result.rows, result.batches) == (2_500, 5)
    assert await fetch(db, target) == expected(rows, "sqlite")


@pytest.mark.sqlite
async def test_a_source_connection_that_is_not_the_target_is_refused_within_one_database(
    sqlite_database: str, make_db: Callable[..., AsyncBind]
) -> None:
    """Batches committed on a connection of the target engine would wait for the source
    connection's read lock (in memory, that connection would be the source connection), and so
    would a second connection of the same file: refused before anything is written."""
    db = make_db(sqlite_database)
    source, target = source_and_target(db)
    await db.create_all()
    await load_rows(db.engine, source, sample(10))

    in_memory = sqlite_database == "sqlite://"
    async with db.engine.connect() as conn, db.engine.connect() as other:
        # In memory, two connections are the pool's one: used as given, as before.
        for target_engine in [db.engine] if in_memory else [db.engine, other]:
            with pytest.raises(ConfigError) as caught:
                await copy(source, target, source_engine=conn, target_engine=target_engine)
            message = str(caught.value)
            assert "source_engine is a connection of the SQLite database" in message
            assert ("(in memory)" if in_memory else "(file '") in message
            assert "pass the connection as both source_engine and target_engine" in message
            assert "or pass the engine as source_engine" in message
    assert await count(db, target) == 0


@pytest.mark.sqlite
async def test_a_copy_within_one_sqlite_database_cancelled_mid_batch(
    sqlite_database: str, make_db: Callable[..., AsyncBind], caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelled while its second batch is written: that batch is rolled back, the first stays,
    the database keeps its tables, and nothing is logged as an error."""
    db = make_db(sqlite_database)
    source, target = source_and_target(db)
    await db.create_all()
    await load_rows(db.engine, source, sample(3_000))
    with cancelled_in_batch(db.engine, 2) as batches:
        async with asyncio.timeout(60):
            batches.copying = asyncio.create_task(db.copy(source, target, batch_size=1_000))
            with pytest.raises(asyncio.CancelledError):
                await batches.copying

    assert batches.sent == 2
    assert [row[0] for row in await fetch(db, target)] == list(range(1, 1_001))
    assert await count(db, source) == 3_000
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# -- out of an in-memory SQLite database: its one connection is the database ------------------


@pytest.mark.sqlite
@pytest.mark.parametrize("stop", ["break", "cancel"])
async def test_a_stream_of_an_in_memory_database_stopped_early_keeps_the_database(
    stop: str, make_db: Callable[..., AsyncBind]
) -> None:
    """A stream left after its first row, or cancelled with its consumer, closes its result and
    keeps the connection: every table and row is still there."""
    db = make_db("sqlite://")
    source = db.Table("source", *columns())
    await db.create_all()
    await load_rows(db.engine, source, sample(2_500))

    async def read() -> None:
        async with contextlib.aclosing(stream_rows(db.engine, source, batch_size=100)) as rows:
            async for _ in rows:
                if stop == "break":
                    break
                await asyncio.sleep(30)  # cancelled here

    async with asyncio.timeout(60):
        if stop == "break":
            await read()
        else:
            reading = asyncio.create_task(read())
            await asyncio.sleep(0.1)
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading

    assert await count(db, source) == 2_500


@pytest.mark.sqlite
@pytest.mark.parametrize("target_in", ["a file", "memory"])
async def test_a_failed_copy_out_of_an_in_memory_database_keeps_the_database(
    target_in: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """The target refuses the second batch: the source's connection, which is its database, is
    kept with every row."""
    target_url = await new_database("sqlite") if target_in == "a file" else "sqlite://"
    db = make_db("sqlite://", binds={"target": target_url})
    source, target = source_and_target(db, None, "target")
    await db.create_all()
    await load_rows(db.engine, source, sample(5_000))
    async with db.get_engine("target").begin() as conn:
        await conn.execute(target.insert(), {"id": 1_500})

    async with asyncio.timeout(60):
        with pytest.raises(BulkCopyError) as caught:
            await db.copy(source, target, batch_size=1_000)

    assert caught.value.rows_copied == 1_000
    assert await count(db, source) == 5_000
    assert await count(db, target, "target") == 1_001
