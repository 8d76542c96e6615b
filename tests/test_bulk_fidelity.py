"""A copy reproduces its source exactly, or fails: every direction between PostgreSQL, MariaDB and
SQLite, for the types people move, on real servers.

The source rows are written with plain SQLAlchemy (not the bulk path), both tables are read back
through SQLAlchemy, and the values are compared after the documented normalisation: aware
datetimes in UTC (PostgreSQL's ``timestamptz`` keeps them aware, the others naive), floats by
``repr``, JSON with whether it is SQL NULL.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import BACKENDS, NewDatabase
from sqlalchemy.dialects import mysql, postgresql

from asyncbind import AsyncBind, BulkCopyError
from asyncbind.bulk import load_rows

UTC = dt.UTC


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


def columns() -> list[sa.Column[Any]]:
    """One column per kind of value; MySQL's datetimes and times keep microseconds (fsp=6)."""
    micro: dict[str, Any] = {"fsp": 6}
    return [
        # AUTO_INCREMENT on MySQL, where a 0 means "the next value" unless told otherwise.
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("big", sa.BigInteger),
        sa.Column("num", sa.Numeric(18, 6)),
        sa.Column("dbl", sa.Double),
        sa.Column("text", sa.String(60)),
        sa.Column("blob", sa.LargeBinary),
        sa.Column("flag", sa.Boolean),
        sa.Column("day", sa.Date),
        sa.Column("clock", sa.Time().with_variant(mysql.TIME(**micro), "mysql", "mariadb")),
        sa.Column("naive", sa.DateTime().with_variant(mysql.DATETIME(**micro), "mysql", "mariadb")),
        sa.Column(
            "aware",
            sa.DateTime(timezone=True).with_variant(
                mysql.DATETIME(timezone=True, **micro), "mysql", "mariadb"
            ),
        ),
        sa.Column("doc", sa.JSON(none_as_null=True)),
        sa.Column("uid", sa.Uuid),
        sa.Column("color", sa.Enum(Color, name="color")),
        sa.Column("size", sa.Enum("S", "M", "L", name="size")),
    ]


NAMES = [c.name for c in columns()]
PLUS_TWO = dt.timezone(dt.timedelta(hours=2))
MINUS_FIVE_THIRTY = dt.timezone(-dt.timedelta(hours=5, minutes=30))
#: One row per interesting value; the columns a row does not name are NULL.
ROWS: list[dict[str, Any]] = [
    {
        "id": 0,
        "big": 0,
        "num": Decimal("0"),
        "dbl": 0.0,
        "text": "",
        "blob": b"",
        "flag": False,
        "day": dt.date(1970, 1, 1),
        "clock": dt.time(0, 0),
        "naive": dt.datetime(1970, 1, 1),
        "aware": dt.datetime(1970, 1, 1, tzinfo=UTC),
        "doc": {},
        "uid": uuid.UUID(int=0),
        "color": Color.RED,
        "size": "S",
    },
    {
        "id": -1,
        "big": -1,
        "num": Decimal("-1234.5"),
        "dbl": 0.1 + 0.2,
        "text": "Zoë 東京 Ελλάδα",
        "blob": b"\x00",
        "flag": True,
        "day": dt.date(2000, 2, 29),
        "clock": dt.time(23, 59, 59, 999_999),
        "naive": dt.datetime(2024, 2, 29, 23, 59, 59, 999_999),
        "aware": dt.datetime(2024, 1, 1, 1, 30, 0, 123_456, tzinfo=PLUS_TWO),
        "doc": sa.JSON.NULL,  # JSON null, not SQL NULL
        "uid": uuid.UUID(int=2**128 - 1),
        "color": Color.GREEN,
        "size": "M",
    },
    {
        "id": 1,
        "big": 2**63 - 1,
        "num": Decimal("123456789.123456"),
        "dbl": 1 / 3,
        "text": "emoji 🎉👍🏽 𝄞 (four bytes each)",
        "blob": bytes(range(256)),
        "day": dt.date(9999, 12, 31),
        "clock": dt.time(12, 34, 56, 789),
        "naive": dt.datetime(9999, 12, 31, 23, 59, 59, 999_999),
        "aware": dt.datetime(2038, 1, 19, 3, 14, 8, 1, tzinfo=MINUS_FIVE_THIRTY),
        "doc": {"nested": {"list": [1, 2.5, None, True, "é🎉"]}, "big": 2**63 - 1, "": "key"},
        "uid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "color": Color.BLUE,
        "size": "L",
    },
    {
        "id": 2,
        "big": -(2**63),
        "num": Decimal("-0.000001"),
        "dbl": 1.7976931348623157e308,
        "text": "quote ' \" \\ %s %(x)s ? :name $1 --",
        "blob": b"\x00\xff'\\\"\x00",
        "day": dt.date(1, 1, 1),
        "naive": dt.datetime(1, 1, 1),
        "doc": [],
    },
    {"id": 3, "dbl": 5e-324, "num": Decimal("99999999.999999"), "text": "tab\tnew\nline\r\n"},
    {"id": 4, "dbl": 2.2250738585072014e-308, "text": "trailing spaces  ", "doc": "a string"},
    {"id": 5, "dbl": -1e-300, "text": "  leading", "doc": [[], {}, "null", 0, -1.5e-10]},
    {"id": 6},  # SQL NULL everywhere
    {"id": 2**31 - 1, "flag": True, "doc": 0},
]


#: Each backend, and MariaDB once more through asyncmy (the default MySQL driver is aiomysql).
DRIVERS = (*BACKENDS, "mysql+asyncmy")


def _direction(source: str, target: str) -> Any:
    backends = (source.partition("+")[0], target.partition("+")[0])
    marks = [getattr(pytest.mark, b) for b in dict.fromkeys(backends)]
    return pytest.param((source, target), id=f"{source}->{target}", marks=marks)


@pytest.fixture(
    params=[
        _direction(s, t)
        for s in DRIVERS
        for t in DRIVERS
        if {s, t} != {"mysql", "mysql+asyncmy"}  # MariaDB into itself: once per driver
    ]
)
def direction(request: pytest.FixtureRequest) -> tuple[str, str]:
    """A source backend and a target backend: the directions between different ones, and each
    backend into itself, with MariaDB through aiomysql and through asyncmy."""
    return request.param  # type: ignore[no-any-return]


async def database(new_database: NewDatabase, backend: str) -> str:
    """A new database on ``backend`` ("mysql+asyncmy": on MariaDB, through asyncmy)."""
    server, _, driver = backend.partition("+")
    url = await new_database(server)
    if not driver:
        return url
    return sa.make_url(url).set(drivername=backend).render_as_string(hide_password=False)


async def copying_binds(
    direction: tuple[str, str], new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> AsyncBind:
    """An AsyncBind with a ``"source"`` and a ``"target"`` bind, each a new database on its end
    of ``direction``."""
    source_backend, target_backend = direction
    return make_db(
        binds={
            "source": await database(new_database, source_backend),
            "target": await database(new_database, target_backend),
        }
    )


async def source_and_target(
    direction: tuple[str, str], new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> tuple[AsyncBind, sa.Table, sa.Table]:
    db = await copying_binds(direction, new_database, make_db)
    source = db.Table("fidelity", *columns(), bind_key="source")
    target = db.Table("fidelity", *columns(), bind_key="target")
    await db.create_all()
    return db, source, target


async def one_column_tables(
    db: AsyncBind, name: str, column: str, source_type: Any, target_type: Any
) -> tuple[sa.Table, sa.Table]:
    """Tables ``name`` on the source and target binds, each an ``id`` and ``column`` of the type
    given for its side, created."""
    source, target = (
        db.Table(
            name,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column(column, type_),
            bind_key=key,
        )
        for key, type_ in (("source", source_type), ("target", target_type))
    )
    await db.create_all()
    return source, target


async def insert_plainly(db: AsyncBind, key: str, table: sa.Table, rows: Sequence[Any]) -> None:
    """Insert ``rows`` with a plain SQLAlchemy INSERT, every column given (NULL where a row has
    none). Aware datetimes are given in UTC: where the column keeps no zone, a plain INSERT drops
    the zone without converting. On MySQL the id 0 needs NO_AUTO_VALUE_ON_ZERO, on a connection
    then thrown away."""
    full = [{name: _in_utc(row.get(name)) for name in table.c.keys()} for row in rows]
    async with db.get_engine(key).connect() as conn:
        if conn.dialect.name in ("mysql", "mariadb"):
            await conn.exec_driver_sql("SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO'")
        await conn.execute(table.insert(), full)
        await conn.commit()
        await conn.invalidate()


def _in_utc(value: Any) -> Any:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    return value


async def read_back(db: AsyncBind, key: str | None, table: sa.Table) -> list[tuple[Any, ...]]:
    """Every row through SQLAlchemy, normalised, in id order."""
    query = sa.select(table, table.c.doc.is_(None).label("doc_is_sql_null")).order_by(table.c.id)
    async with db.get_engine(key).connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    aware = [row["aware"] for row in rows if row["aware"] is not None]
    if db.get_engine(key).dialect.name == "postgresql":
        assert all(v.utcoffset() == dt.timedelta(0) for v in aware)  # timestamptz: aware, UTC
    else:
        assert all(v.tzinfo is None for v in aware)  # no zone kept: naive, in UTC
    return [normalise(row, bool(row["doc_is_sql_null"])) for row in rows]


def normalise(row: Mapping[str, Any], doc_is_sql_null: bool) -> tuple[Any, ...]:
    values: list[Any] = []
    for name in NAMES:
        value = row.get(name)
        if name == "aware" and value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        elif name == "doc" and value is sa.JSON.NULL:
            value = None
        elif isinstance(value, float):
            value = repr(value)  # -0.0 and 0.0 differ, and so do close floats
        values.append(value)
    return (*values, doc_is_sql_null)


def differences(
    got: Sequence[tuple[Any, ...]], want: Sequence[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """(id, column, got, wanted) for every value that differs, and the rows only one side has."""
    names = [*NAMES, "doc_is_sql_null"]
    found = []
    for a, b in zip(got, want, strict=False):
        found += [(b[0], n, x, y) for n, x, y in zip(names, a, b, strict=True) if x != y]
    return found + [("row", "count", len(got), len(want))] * (len(got) != len(want))


def expected() -> list[tuple[Any, ...]]:
    rows = sorted(ROWS, key=lambda row: row["id"])
    return [normalise(row, row.get("doc") is None) for row in rows]


@pytest.mark.parametrize("parallel", [1, 3], ids=["one-stream", "parallel-3"])
async def test_copy_reproduces_every_value(
    direction: tuple[str, str],
    parallel: int,
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
) -> None:
    db, source, target = await source_and_target(direction, new_database, make_db)
    await insert_plainly(db, "source", source, ROWS)
    assert differences(await read_back(db, "source", source), expected()) == []

    result = await db.copy(source, target, batch_size=4, parallel=parallel)

    assert result.rows == len(ROWS)
    # One stream: 4 + 4 + 1 rows. Three key ranges of the ids -1 to 2**31 - 1: the ids up to 6
    # in the first (4 + 4 rows), none in the middle one, 2**31 - 1 in the last.
    assert result.batches == 3
    assert differences(await read_back(db, "target", target), expected()) == []


async def test_load_rows_writes_every_value(
    backend: str, url: str, make_db: Callable[..., AsyncBind]
) -> None:
    """The same values from Python (not from a source database) land as they are."""
    await load_and_compare(make_db(url))


@pytest.mark.mysql
async def test_load_rows_writes_every_value_through_asyncmy(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    await load_and_compare(make_db(await database(new_database, "mysql+asyncmy")))


async def load_and_compare(db: AsyncBind) -> None:
    target = db.Table("fidelity", *columns())
    await db.create_all()

    await load_rows(db.engine, target, [{n: row.get(n) for n in NAMES} for row in ROWS])

    assert differences(await read_back(db, None, target), expected()) == []


# -- values a target cannot hold -------------------------------------------------------------


def _case(target: str, type_: Any, good: Any, bad: Any, says: str, id: str) -> Any:
    return pytest.param(
        target, type_, good, bad, says, id=f"{id}-{target}", marks=[getattr(pytest.mark, target)]
    )


UNREPRESENTABLE = [
    _case("postgresql", sa.Integer, 2**31 - 1, 2**31, "int32", "int64-into-int32"),
    _case("mysql", sa.Integer, 2**31 - 1, 2**31, "Out of range", "int64-into-int32"),
    _case(
        "postgresql", sa.Numeric(10, 2), Decimal("1.20"), Decimal("1.239"), "decimal place", "scale"
    ),
    _case("mysql", sa.Numeric(10, 2), Decimal("1.20"), Decimal("1.239"), "decimal place", "scale"),
    _case("postgresql", sa.Numeric(10, 2), 1.5, 1 / 3, "decimal place", "float-scale"),
    _case(
        "postgresql", sa.Numeric(5, 2), Decimal("999.99"), Decimal("1000"), "overflow", "precision"
    ),
    _case(
        "mysql", sa.Numeric(5, 2), Decimal("999.99"), Decimal("1000"), "Out of range", "precision"
    ),
    _case(
        "sqlite",
        sa.Numeric(30, 10),
        Decimal("1234.5"),
        Decimal("12345678901234567890.1234567891"),
        "8-byte floats",
        "decimal",
    ),
    _case("postgresql", sa.REAL, 0.5, 0.1, "4-byte float", "double-into-real"),
    _case("mysql", sa.Float, 0.5, 0.1, "4-byte float", "double-into-float"),
    _case("sqlite", sa.Double, math.inf, math.nan, "NaN as NULL", "nan"),
    _case("mysql", sa.Double, 1.5, math.inf, "no NaN or infinities", "inf"),
    _case("mysql", sa.Double, 1.5, math.nan, "no NaN or infinities", "nan"),
    _case(
        "postgresql",
        postgresql.TIMESTAMP(precision=0),
        dt.datetime(2024, 1, 1, 1, 1, 1),
        dt.datetime(2024, 1, 1, 1, 1, 1, 500_000),
        "fractional second",
        "timestamp0-micro",
    ),
    _case(
        "mysql",
        sa.DateTime,
        dt.datetime(2024, 1, 1, 1, 1, 1),
        dt.datetime(2024, 1, 1, 1, 1, 1, 1),
        "fractional second",
        "datetime-micro",
    ),
    _case(
        "mysql",
        mysql.DATETIME(fsp=3),
        dt.datetime(2024, 1, 1, 1, 1, 1, 123_000),
        dt.datetime(2024, 1, 1, 1, 1, 1, 123_400),
        "3 fractional",
        "datetime3-micro",
    ),
    _case(
        "mysql",
        sa.Time,
        dt.time(1, 1, 1),
        dt.time(1, 1, 1, 999_999),
        "fractional second",
        "time-micro",
    ),
    _case(
        "mysql",
        sa.Interval,  # a DATETIME there, from 1970-01-01
        dt.timedelta(days=-1, seconds=5),
        dt.timedelta(days=-1, microseconds=999_999),
        "fractional second",
        "interval-micro",
    ),
    _case(
        "postgresql",
        sa.Interval(second_precision=0),
        dt.timedelta(seconds=1),
        dt.timedelta(seconds=1, microseconds=600_000),
        "fractional second",
        "interval0-micro",
    ),
    _case("postgresql", sa.String(5), "abcde", "abcdef", "too long", "string"),
    _case("mysql", sa.String(5), "abcde", "abcdef", "too long", "string"),
    _case("postgresql", sa.Enum("a", "b", name="ab"), "b", "c", "not a name of", "enum"),
    _case("mysql", sa.Enum("a", "b", name="ab"), "b", "c", "not a name of", "enum"),
]


@pytest.mark.parametrize(
    ("backend", "type_", "good", "bad", "says"), UNREPRESENTABLE, indirect=["backend"]
)
async def test_a_value_the_target_cannot_hold_fails_the_copy(
    backend: str,
    url: str,
    type_: Any,
    good: Any,
    bad: Any,
    says: str,
    make_db: Callable[..., AsyncBind],
) -> None:
    """Never something else instead: the batch with the value fails, the one before it stays."""
    db = make_db(url)
    target = db.Table(
        "narrow",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("v", type_),
    )
    await db.create_all()

    with pytest.raises(BulkCopyError) as caught:
        await load_rows(db.engine, target, [(1, good), (2, bad), (3, good)], batch_size=1)

    assert caught.value.rows_copied == 1
    assert says in str(caught.value)
    async with db.engine.connect() as conn:
        assert (await conn.execute(sa.select(target.c.id, target.c.v))).all() == [(1, good)]


def _refusals(
    targets: Sequence[str], type_: Any, good: Any, stored: Any, bad: Any, says: str, id: str
) -> list[Any]:
    """A case per target: ``good`` lands and reads back as ``stored``, ``bad`` fails."""
    return [
        pytest.param(
            target,
            type_,
            good,
            stored,
            bad,
            says,
            id=f"{id}-{target}",
            marks=[getattr(pytest.mark, target)],
        )
        for target in targets
    ]


#: Values that a database would change without an error (no strict mode stops it), each beside
#: a value of the same kind that the column holds exactly.
CHANGED_WITHOUT_AN_ERROR = [
    *_refusals(
        BACKENDS, sa.Integer, Decimal("2.00"), 2, Decimal("1.50"), "whole numbers", "decimal-int"
    ),
    *_refusals(BACKENDS, sa.BigInteger, 2.0, 2, 2.7, "whole numbers", "float-int"),
    *_refusals(
        BACKENDS,
        sa.Date,
        dt.datetime(2024, 5, 6),
        dt.date(2024, 5, 6),
        dt.datetime(2024, 5, 6, 13, 45, 10),
        "not midnight",
        "datetime-date",
    ),
    *_refusals(
        BACKENDS,
        sa.Time,
        dt.time(13, 45, 10),
        dt.time(13, 45, 10),
        dt.datetime(2024, 5, 6, 13, 45, 10),
        "keeps no date",
        "datetime-time",
    ),
    *_refusals(
        ["mysql"],
        mysql.DOUBLE(precision=10, scale=2),  # read as a decimal
        1.25,
        Decimal("1.25"),
        1.23456,
        "2 decimal place",
        "double-m-d",
    ),
    *_refusals(
        ["mysql"],
        mysql.FLOAT(precision=10, scale=2),
        0.1,
        0.1,
        1.239,
        "2 decimal place",
        "float-m-d",
    ),
    # Two places, but seven digits are all that a 4-byte float keeps: 1234567.88 would land.
    *_refusals(
        ["mysql"],
        mysql.FLOAT(precision=10, scale=2),
        99999.99,
        99999.99,
        1234567.89,
        "4-byte float",
        "float-m-d-digits",
    ),
    # A DATETIME there, from 1970-01-01: 2,000,000 days on is in the year 7445, 3,000,000 past 9999.
    *_refusals(
        ["mysql", "sqlite"],
        sa.Interval,
        dt.timedelta(days=2_000_000),
        dt.timedelta(days=2_000_000),
        dt.timedelta(days=3_000_000),
        "outside the years 1 to 9999",
        "interval-range",
    ),
    # Spaces at the end past the length are cut without an error (SQLite keeps any length).
    *_refusals(
        ["postgresql", "mysql"],
        sa.String(5),
        "abc  ",
        "abc  ",
        "abc      ",
        "9 characters, too long for 5",
        "trailing-spaces",
    ),
    # A VARCHAR without a CHECK constraint: a name of no member would land.
    *_refusals(
        ["postgresql", "mysql"],
        sa.Enum("a", "b", name="ab", native_enum=False),
        "b",
        "b",
        "c",
        "not a name of the target's enum ('a', 'b')",
        "enum-not-native",
    ),
    *_refusals(
        ["sqlite"],
        sa.Enum(Color, name="color"),
        "GREEN",
        Color.GREEN,
        "PURPLE",
        "not a name of the target's enum ('RED', 'GREEN', 'BLUE')",
        "enum-class",
    ),
    *_refusals(
        ["sqlite"],
        sa.Numeric(20, 4),
        Decimal("1.5"),
        Decimal("1.5"),
        Decimal("NaN"),
        "SQLite stores NaN as NULL",
        "decimal-nan",
    ),
    # An integer went as a float too: 2**60 + 1 landed as 2**60.
    *_refusals(
        ["sqlite"],
        sa.Numeric(30, 0),
        2**53,
        Decimal(2**53),
        2**60 + 1,
        "8-byte floats",
        "int-decimal",
    ),
    # SQLite read 1.005 back as Decimal('1.00').
    *_refusals(
        BACKENDS,
        sa.Numeric(10, 2),
        1.25,
        Decimal("1.25"),
        1.005,
        "2 decimal place",
        "float-decimal",
    ),
]


@pytest.mark.parametrize(
    ("backend", "type_", "good", "stored", "bad", "says"),
    CHANGED_WITHOUT_AN_ERROR,
    indirect=["backend"],
)
async def test_a_value_the_target_would_change_fails_its_batch(
    backend: str,
    url: str,
    type_: Any,
    good: Any,
    stored: Any,
    bad: Any,
    says: str,
    make_db: Callable[..., AsyncBind],
) -> None:
    """The batch with the value fails with an error naming the column and the value, and none
    of its rows lands; the batch before it, with a value of the same kind that the column holds
    exactly, lands."""
    db = make_db(url)
    target = db.Table(
        "narrow",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("v", type_),
    )
    await db.create_all()

    rows = [(1, good), (2, None), (3, good), (4, bad)]
    with pytest.raises(BulkCopyError) as caught:
        await load_rows(db.engine, target, rows, batch_size=2)

    assert type(caught.value) is BulkCopyError
    assert type(caught.value.__cause__) is ValueError
    assert caught.value.rows_copied == 2
    message = str(caught.value)
    assert f"column 'v' ({_ddl(type_, db)}) cannot hold {bad!r}" in message
    assert says in message
    async with db.engine.connect() as conn:
        got = (await conn.execute(sa.select(target.c.id, target.c.v).order_by(target.c.id))).all()
    assert got == [(1, stored), (2, None)]
    assert type(got[0][1]) is type(stored)


def _ddl(type_: Any, db: AsyncBind) -> str:
    return str(sa.types.to_instance(type_).compile(dialect=db.engine.dialect))


@pytest.mark.mysql
@pytest.mark.parametrize("driver", ["mysql", "mysql+asyncmy"])
async def test_nan_and_infinities_fail_in_mysql_with_one_message(
    driver: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """MySQL and MariaDB have neither: decimals (which went as bare SQL words, NaN an unknown
    column) and floats (refused by each driver in its own words, or not: asyncmy sent -inf as
    SQL too) fail with the same message, through either driver."""
    db = make_db(await database(new_database, driver))
    target = db.Table(
        "numbers",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("f", sa.Double),
        sa.Column("d", sa.Numeric(20, 4)),
    )
    await db.create_all()
    await load_rows(db.engine, target, [(1, 1.5, Decimal("1.5000"))])
    specials = [
        *(("f", value) for value in (math.nan, math.inf, -math.inf)),
        *(("d", Decimal(value)) for value in ("NaN", "Infinity", "-Infinity")),
        ("d", math.nan),
        ("d", -math.inf),
    ]

    for i, (name, value) in enumerate(specials, 2):
        with pytest.raises(BulkCopyError) as caught:
            await load_rows(db.engine, target, [{"id": i, name: value}], columns=["id", name])
        assert type(caught.value.__cause__) is ValueError
        assert f"column {name!r}" in str(caught.value)
        assert f"cannot hold {value!r}: MySQL and MariaDB have no NaN or infinities" in str(
            caught.value
        )

    async with db.engine.connect() as conn:
        assert (await conn.execute(sa.select(target))).all() == [(1, 1.5, Decimal("1.5000"))]


async def test_a_float_into_a_decimal_column_is_the_decimal_it_prints_as(
    backend: str, url: str, make_db: Callable[..., AsyncBind]
) -> None:
    """The same on every target: asyncpg would send PostgreSQL the float's binary fraction
    (0.1 is 0.1000000000000000055511151231257827...), while MySQL's drivers send 0.1."""
    db = make_db(url)
    numeric = sa.Numeric(20, 10).with_variant(sa.Numeric(), "postgresql")  # any scale there
    target = db.Table(
        "decimals", sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", numeric)
    )
    await db.create_all()
    floats = [0.1, 1e-7, 12345.789, 2.5, -0.3]

    await load_rows(db.engine, target, list(enumerate(floats)))

    async with db.engine.connect() as conn:
        got = (await conn.execute(sa.select(target.c.v).order_by(target.c.id))).scalars().all()
    assert got == [Decimal(repr(f)) for f in floats]


# -- what is documented rather than exact ----------------------------------------------------


TARGETS = [pytest.param(b, id=b, marks=getattr(pytest.mark, b)) for b in BACKENDS]
SPECIAL = [(1, -0.0), (2, math.inf), (3, -math.inf), (4, math.nan)]


@pytest.mark.postgresql
@pytest.mark.parametrize("target_backend", TARGETS)
async def test_infinities_nan_and_negative_zero(
    target_backend: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """PostgreSQL keeps all four; MariaDB refuses infinities and NaN, SQLite refuses NaN (it
    would store NULL); both keep no negative zero, which arrives as 0.0."""
    db = make_db(
        binds={
            "source": await new_database("postgresql"),
            "target": await new_database(target_backend),
        }
    )
    tables = await one_column_tables(db, "floats", "v", sa.Double, sa.Double)
    await insert_plainly(db, "source", tables[0], [{"id": i, "v": v} for i, v in SPECIAL])

    if target_backend == "postgresql":
        assert (await db.copy(tables[0], tables[1], batch_size=1)).rows == 4
    else:
        with pytest.raises(BulkCopyError) as caught:
            await db.copy(tables[0], tables[1], batch_size=1)
        assert caught.value.rows_copied == (1 if target_backend == "mysql" else 3)

    async with db.get_engine("target").connect() as conn:
        got = [
            (i, repr(v))
            for i, v in await conn.execute(sa.select(*tables[1].c).order_by(tables[1].c.id))
        ]
    everything = [(i, repr(v)) for i, v in SPECIAL]
    assert (
        got
        == {
            "postgresql": everything,
            "mysql": [(1, "0.0")],
            "sqlite": [(1, "0.0"), (2, "inf"), (3, "-inf")],
        }[target_backend]
    )


@pytest.mark.postgresql
@pytest.mark.parametrize("target_backend", TARGETS)
async def test_zone_aware_times_arrive_in_utc(
    target_backend: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """A PostgreSQL ``timetz`` into a time column that keeps no zone arrives in UTC, as aware
    datetimes do, round the clock; into a ``timetz`` it keeps its offset."""
    db = make_db(
        binds={
            "source": await new_database("postgresql"),
            "target": await new_database(target_backend),
        }
    )
    plain = sa.Time().with_variant(mysql.TIME(fsp=6), "mysql", "mariadb")
    tables = await one_column_tables(db, "clocks", "t", sa.Time(timezone=True), plain)
    india = dt.timezone(dt.timedelta(hours=5, minutes=30))
    given = [
        dt.time(10, 0, tzinfo=india),
        dt.time(1, 15, 0, 500_000, tzinfo=india),
        dt.time(23, 30, tzinfo=dt.timezone(-dt.timedelta(hours=2))),
        dt.time(12, 0, tzinfo=UTC),
        None,
    ]
    in_utc = [dt.time(4, 30), dt.time(19, 45, 0, 500_000), dt.time(1, 30), dt.time(12, 0), None]
    await insert_plainly(db, "source", tables[0], [{"id": i, "t": t} for i, t in enumerate(given)])

    await db.copy(tables[0], tables[1])

    async with db.get_engine("target").connect() as conn:
        got = (await conn.execute(sa.select(tables[1].c.t).order_by(tables[1].c.id))).scalars()
        assert got.all() == in_utc
    if target_backend == "postgresql":
        kept = db.Table(
            "kept",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("t", sa.Time(timezone=True)),
        )
        async with db.get_engine("target").begin() as conn:
            await conn.run_sync(kept.create)
        await db.copy(tables[0], kept, target_bind="target")
        async with db.get_engine("target").connect() as conn:
            got = (await conn.execute(sa.select(kept.c.t).order_by(kept.c.id))).scalars()
            assert got.all() == given


@pytest.mark.postgresql
@pytest.mark.parametrize("target_backend", TARGETS)
async def test_an_interval_of_months_fails_instead_of_becoming_days(
    target_backend: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """asyncpg reads '1 mon' as 30 days, but a month has no fixed length ('2024-01-31' plus
    1 month is 2024-02-29, plus 30 days 2024-03-01): a PostgreSQL interval with months or years
    fails its batch, naming the column and the interval. Intervals of days and time arrive as
    they are."""
    db = make_db(
        binds={
            "source": await new_database("postgresql"),
            "target": await new_database(target_backend),
        }
    )
    source, target = await one_column_tables(db, "durations", "v", postgresql.INTERVAL, sa.Interval)
    async with db.get_engine("source").begin() as conn:
        await conn.execute(
            sa.text(
                "INSERT INTO durations VALUES (1, '3 days 04:05:06'), (2, '-1 day'), (3, NULL), "
                "(4, '1 day'), (5, '1 year 2 mons'), (6, '1 day')"
            )
        )

    with pytest.raises(BulkCopyError) as caught:
        await db.copy(source, target, batch_size=2)

    assert type(caught.value) is BulkCopyError
    assert type(caught.value.__cause__) is ValueError
    assert caught.value.rows_copied == 4
    assert "column 'v' of the source holds '1 year 2 mons'" in str(caught.value)
    assert "months" in str(caught.value)
    async with db.get_engine("target").connect() as conn:
        got = (await conn.execute(sa.select(target).order_by(target.c.id))).all()
    assert got == [
        (1, dt.timedelta(days=3, hours=4, minutes=5, seconds=6)),
        (2, dt.timedelta(days=-1)),
        (3, None),
        (4, dt.timedelta(days=1)),
    ]
    if target_backend == "postgresql":
        async with db.get_engine("target").connect() as conn:
            texts = await conn.execute(sa.text("SELECT v::text FROM durations ORDER BY id"))
            assert texts.scalars().all() == ["3 days 04:05:06", "-1 days", None, "1 day"]


@pytest.mark.mysql
@pytest.mark.parametrize("target_backend", [t for t in TARGETS if t.id != "mysql"])
async def test_a_mysql_zero_date_fails_naming_the_column_and_the_value(
    target_backend: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """MariaDB's zero dates come as text ('0000-00-00'), which a date column of another
    database cannot take: the message names the column, the value and what the column takes
    (SQLite's said only "SQLite Date type only accepts Python date objects as input")."""
    db = make_db(
        binds={"source": await new_database("mysql"), "target": await new_database(target_backend)}
    )
    source, target = await one_column_tables(db, "days", "d", sa.Date, sa.Date)
    async with db.get_engine("source").connect() as conn:
        await conn.exec_driver_sql("SET SESSION sql_mode = ''")  # zero dates whatever the server's
        await conn.exec_driver_sql(
            "INSERT INTO days VALUES (1, '2024-01-01'), (2, NULL), (3, '2024-01-02'), "
            "(4, '0000-00-00')"
        )
        await conn.commit()
        await conn.invalidate()

    with pytest.raises(BulkCopyError) as caught:
        await db.copy(source, target, batch_size=2)

    assert type(caught.value) is BulkCopyError
    assert caught.value.rows_copied == 2
    assert "column 'd'" in str(caught.value)
    assert "'0000-00-00'" in str(caught.value)
    if target_backend == "sqlite":
        assert type(caught.value.__cause__) is ValueError
        assert "It takes datetime.date values" in str(caught.value)
    async with db.get_engine("target").connect() as conn:
        got = (await conn.execute(sa.select(target).order_by(target.c.id))).all()
    assert got == [(1, dt.date(2024, 1, 1)), (2, None)]


SOURCES = TARGETS  # each backend, as the source


@pytest.mark.postgresql
@pytest.mark.parametrize("source_backend", SOURCES)
async def test_the_largest_and_smallest_dates_are_infinities_in_postgresql(
    source_backend: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """asyncpg writes date.max and datetime.max as 'infinity', date.min and datetime.min as
    '-infinity' (as it does for any insert), and reads them back as the same Python values."""
    db = make_db(
        binds={
            "source": await new_database(source_backend),
            "target": await new_database("postgresql"),
        }
    )
    tables = [
        db.Table(
            "edges",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("day", sa.Date),
            sa.Column("at", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")),
            bind_key=key,
        )
        for key in ("source", "target")
    ]
    await db.create_all()
    rows = [
        {"id": 1, "day": dt.date.max, "at": dt.datetime.max},
        {"id": 2, "day": dt.date.min, "at": dt.datetime.min},
        {"id": 3, "day": dt.date(9999, 12, 30), "at": dt.datetime(9999, 12, 31, 23, 59, 59)},
    ]
    await insert_plainly(db, "source", tables[0], rows)

    await db.copy(tables[0], tables[1])

    target = tables[1]
    as_text = sa.select(sa.cast(target.c.day, sa.Text), sa.cast(target.c.at, sa.Text))
    async with db.get_engine("target").connect() as conn:
        texts = (await conn.execute(as_text.order_by(target.c.id))).all()
        values = (await conn.execute(sa.select(target).order_by(target.c.id))).mappings().all()
    assert texts == [
        ("infinity", "infinity"),
        ("-infinity", "-infinity"),
        ("9999-12-30", "9999-12-31 23:59:59"),
    ]
    assert [dict(row) for row in values] == rows


@pytest.mark.mysql
async def test_a_lax_mysql_session_still_fails_a_value_instead_of_changing_it(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """A session without strict mode, on a connection whose charset has no 4-byte characters,
    truncates strings and turns emoji into '?' with a warning; a load into it fails instead, and
    leaves the session's mode as it found it."""
    url = sa.make_url(await new_database("mysql")).update_query_dict({"charset": "utf8mb3"})
    db = make_db(
        {
            "url": url.render_as_string(hide_password=False),
            "connect_args": {"init_command": "SET SESSION sql_mode = ''"},
            "pool_size": 1,
            "max_overflow": 0,
        }
    )
    target = db.Table(
        "lax",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("v", sa.String(5)),
        mysql_charset="utf8mb4",
    )
    await db.create_all()
    async with db.session() as session:  # what a plain INSERT does there
        await session.execute(target.insert(), [{"id": 1, "v": "abcdefgh"}, {"id": 2, "v": "🎉"}])
        await session.commit()
        assert (
            await session.execute(sa.select(target.c.v).order_by(target.c.id))
        ).scalars().all() == ["abcde", "????"]

    for value, says in (("abcdefgh", "too long"), ("🎉", "Incorrect string value")):
        with pytest.raises(BulkCopyError, match=says):
            await load_rows(db.engine, target, [(3, value)])

    async with db.engine.connect() as conn:
        assert (await conn.execute(sa.text("SELECT @@SESSION.sql_mode"))).scalar() == ""
        assert (await conn.execute(sa.text("SELECT count(*) FROM lax"))).scalar() == 2


async def test_json_text_is_copied_as_the_source_holds_it(
    direction: tuple[str, str], new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """A copy does not parse and re-serialise JSON: spacing, escapes and number spelling stay
    (PostgreSQL's json, MariaDB's JSON and SQLite keep the text they were given; SQLite turns a
    document that is a bare number into a number, so none is one here)."""
    source_backend, target_backend = direction
    db = make_db(
        binds={
            "source": await new_database(source_backend),
            "target": await new_database(target_backend),
        }
    )
    tables = [
        db.Table(
            "docs",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("doc", sa.JSON),
            bind_key=key,
        )
        for key in ("source", "target")
    ]
    await db.create_all()
    texts = [
        '{"b":1,"a":[1.0, 1e2]}',
        '"\\u00e9 é"',
        "[0.1000000000000000055511151231257827]",
        "null",
    ]
    async with db.get_engine("source").begin() as conn:
        for i, text in enumerate(texts, 1):
            doc = (
                sa.cast(sa.literal(text), sa.Text)
                if source_backend != "postgresql"
                else sa.cast(sa.literal(text), postgresql.JSON)
            )
            await conn.execute(tables[0].insert().values(id=i, doc=doc))

    await db.copy(tables[0], tables[1])

    for key, table in zip(("source", "target"), tables, strict=True):
        async with db.get_engine(key).connect() as conn:
            stored = (
                (await conn.execute(sa.select(sa.cast(table.c.doc, sa.Text)).order_by(table.c.id)))
                .scalars()
                .all()
            )
        assert stored == texts, key


async def test_names_with_percent_signs(
    direction: tuple[str, str], new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """A % in a table or column name reaches the database as it is, also through MySQL's
    drivers, which read %% in their SQL as %."""
    db = await copying_binds(direction, new_database, make_db)
    tables = [
        db.Table(
            "rates %",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("tax_%", sa.Integer),
            sa.Column("%s", sa.String(10)),
            bind_key=key,
        )
        for key in ("source", "target")
    ]
    await db.create_all()
    rows = [{"id": 1, "tax_%": 20, "%s": "%d %%"}, {"id": 2, "tax_%": None, "%s": None}]
    await insert_plainly(db, "source", tables[0], rows)

    assert (await db.copy(tables[0], tables[1], parallel=2)).rows == 2

    async with db.get_engine("target").connect() as conn:
        got = (await conn.execute(sa.select(tables[1]).order_by(tables[1].c.id))).all()
    assert got == [(1, 20, "%d %%"), (2, None, None)]


async def test_integers_into_a_boolean_column(
    direction: tuple[str, str], new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """0 and 1 (MariaDB's BOOL is a TINYINT, reflected as one) become False and True, as an
    INSERT through SQLAlchemy makes them; another integer fails, as it does there."""
    db = await copying_binds(direction, new_database, make_db)
    tables = await one_column_tables(db, "flags", "active", sa.SmallInteger, sa.Boolean)
    await insert_plainly(
        db, "source", tables[0], [{"id": 1, "active": 1}, {"id": 2, "active": 0}, {"id": 3}]
    )

    await db.copy(tables[0], tables[1])

    async with db.get_engine("target").connect() as conn:
        got = (await conn.execute(sa.select(tables[1]).order_by(tables[1].c.id))).all()
    assert got == [(1, True), (2, False), (3, None)]
    assert [type(v) for _, v in got[:2]] == [bool, bool]
    await insert_plainly(db, "source", tables[0], [{"id": 4, "active": 2}])
    with pytest.raises(BulkCopyError, match="Value 2 is not None, True, or False"):
        await db.copy(sa.select(tables[0]).where(tables[0].c.id == 4), tables[1])


async def test_text_into_a_json_column_is_the_document(
    direction: tuple[str, str], new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """Text copied into a JSON column is the JSON document itself (MariaDB's JSON is a LONGTEXT,
    and is reflected as one), not a JSON string of it; text that is not JSON fails, also on
    SQLite, which would store it."""
    db = await copying_binds(direction, new_database, make_db)
    tables = await one_column_tables(db, "docs", "doc", sa.Text, sa.JSON)
    texts = ['{"a": [1, null, "é"]}', "null", '"a string"', "[1, 2.5, {}]", None]
    await insert_plainly(
        db, "source", tables[0], [{"id": i, "doc": t} for i, t in enumerate(texts)]
    )

    await db.copy(tables[0], tables[1], batch_size=2)

    target = tables[1]
    query = sa.select(target.c.doc, target.c.doc.is_(None)).order_by(target.c.id)
    async with db.get_engine("target").connect() as conn:
        got = (await conn.execute(query)).all()
    assert got == [
        ({"a": [1, None, "é"]}, False),
        (None, False),  # JSON null
        ("a string", False),
        ([1, 2.5, {}], False),
        (None, True),  # SQL NULL
    ]
    await insert_plainly(db, "source", tables[0], [{"id": 9, "doc": "not JSON"}])
    with pytest.raises(BulkCopyError) as caught:
        await db.copy(sa.select(tables[0]).where(tables[0].c.id == 9), target)
    assert caught.value.rows_copied == 0
    if direction[1] == "sqlite":
        assert "'doc' (SQLite JSON) cannot hold 'not JSON'" in str(caught.value)
        await insert_plainly(db, "source", tables[0], [{"id": 10, "doc": "x" * 50_000}])
        with pytest.raises(BulkCopyError) as caught:
            await db.copy(sa.select(tables[0]).where(tables[0].c.id == 10), target)
        assert "cannot hold 'xxxx" in str(caught.value)
        assert "... (50,002 characters in all):" in str(caught.value)
        assert len(str(caught.value)) < 1_000
