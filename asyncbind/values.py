"""Values on their way into a bulk write: made ready for the target column's driver, or refused.

Each value is converted the way an ``INSERT`` through SQLAlchemy would convert it: the target
column type's bind processor for the target dialect (JSON is serialised, SQLite dates become
text, ...). A timezone-aware datetime or time going into a column that keeps no zone
(``DateTime()`` and ``Time()`` anywhere, every one on MySQL and SQLite) is stored as UTC.

A value the target column cannot hold exactly is refused with a ValueError that names the column
and the value, where the database would otherwise change it without an error:

* a decimal or float that is not a whole number into an integer column (PostgreSQL's COPY cuts
  it, MySQL rounds it, SQLite keeps it); one that is (``Decimal("2.00")``, ``2.0``) goes as the
  int it equals;
* a datetime into a date column, unless it is midnight (in UTC, if it is aware): then it goes as
  its date; a datetime into a time column (the databases drop its time or its date);
* a name the target's ``Enum`` lacks (SQLAlchemy passes it on, and a non-native enum, a VARCHAR,
  keeps it);
* text longer than a ``VARCHAR(n)`` or ``CHAR(n)`` of PostgreSQL or MySQL (which cut spaces at
  the end without an error, and refuse other characters);
* a decimal with more decimal places than a ``NUMERIC(p, s)`` keeps (PostgreSQL and MySQL round),
  and a float with more than MySQL's ``DOUBLE(M, D)`` or ``FLOAT(M, D)`` keeps;
* a decimal (or integer) that does not survive SQLite, which keeps decimals as 8-byte floats;
* a float that does not survive a single-precision column (MySQL ``FLOAT``, PostgreSQL ``REAL``;
  MySQL's ``FLOAT(M, D)`` gives back its 4-byte float rounded to D places);
* NaN into SQLite, which stores it as NULL, and NaN and infinities into MySQL, which has neither
  (floats and decimals alike: the drivers sent a decimal NaN as a bare SQL word);
* an interval into an ``sa.Interval`` of MySQL or SQLite, a datetime from 1970-01-01 there, that
  falls outside the years 1 to 9999;
* text that is not JSON into a SQLite JSON column, which stores any text (text from a text
  column is the JSON document itself, see ``rows_converter``);
* microseconds into a datetime, time or interval column that keeps fewer fractional digits
  (MySQL's ``DATETIME`` and ``TIME`` keep none unless declared with ``fsp``, and ``sa.Interval``
  is a ``DATETIME`` there; PostgreSQL's ``TIMESTAMP(p)`` and ``INTERVAL(p)``).

A float going into a decimal column goes as the decimal it prints as (its shortest repr, as
MySQL's drivers send it), and is checked as that decimal: ``0.1`` is ``Decimal("0.1")`` on every
target, where asyncpg would send PostgreSQL the float's binary fraction.

A value that the column type's bind processor refuses (MySQL's zero date, which comes as the
text '0000-00-00', into a SQLite date column) fails with the column, the value and what the
column takes.

A copy from PostgreSQL reads its intervals with :func:`exact_intervals`, which refuses one with
months or years (asyncpg would read each month as 30 days).

Out-of-range integers are refused by the driver or the server already (MySQL's strict mode is
set for the load, see :mod:`asyncbind.bulk`). Negative zero becomes zero on MySQL and SQLite.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
import math
import operator
import re
import struct
from collections.abc import Callable, Collection, Iterable, Sequence
from operator import attrgetter, itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .exceptions import first_line, shown

__all__ = ["exact_intervals", "is_json", "is_text", "rows_converter"]

Convert = Callable[[Any], Any]
#: Tests a column of non-None values: True when the step leaves every one of them unchanged.
Test = Callable[[list[Any]], bool]
#: The types of the values that a step leaves unchanged: a column is tested by its values' types
#: in one pass, without setting its None values apart first.
Types = frozenset[type]
#: A conversion of single values, and the test that shows it would change none of a column's.
Step = tuple[Convert, Test | Types | None]

_UTC = dt.UTC
_A_DAY = dt.date(2000, 1, 2)  # any day, to move a time of day by its offset
_MYSQL = ("mysql", "mariadb")
# NUMERIC(10, 2) -> precision 10, scale 2; FLOAT(24) -> precision 24; DATETIME(6) -> 6.
_SIZES = re.compile(r"\((\d+)(?:,\s*(\d+))?\)")


def rows_converter(
    table: sa.Table,
    names: Sequence[str],
    dialect: sa.Dialect,
    raw_json: Collection[str] = (),
    text_json: Collection[str] = (),
) -> Callable[[Sequence[Sequence[Any]]], Sequence[Sequence[Any]]]:
    """Make a batch of rows driver-ready: each row's values converted, in ``names`` order
    (the columns' names in the database).

    A batch whose values need no change comes back as it is (the same rows, not tuples). Each
    column is first tested as a whole, at C speed, for whether any value would change or be
    refused (a decimal of another scale, an aware datetime, ...); only a column that fails the
    test is converted value by value. ``raw_json`` names the columns whose values are already
    JSON text (read as text from a JSON column of the source), which go as they are: SQL NULL
    stays NULL and JSON ``null`` stays ``null``. ``text_json`` names the columns whose values are
    text from a text column of the source, each the JSON document itself: they go as they are
    too, after a check that they are JSON where the database makes none (SQLite).
    """
    width = len(names)
    columns = {c.name: c for c in table.columns}  # table.c is keyed by key, not name
    todo = [
        (i, *plan)
        for i, name in enumerate(names)
        if (plan := _plan(columns[name], dialect, name in raw_json, name in text_json)) is not None
    ]

    def convert(rows: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
        _check_widths(rows, width)
        changed: dict[int, list[Any]] = {}
        for i, check, process, tests in todo:
            if tests is not None and _unchanged(rows, i, *tests):
                continue
            values = map(itemgetter(i), rows)
            if check is not None:
                changed[i] = [None if v is None else check(v) for v in values]
            else:
                changed[i] = list(values)
            if process is not None:
                changed[i] = process(changed[i])
        if not changed:
            return rows
        # Column by column, then back into rows.
        columns: list[Iterable[Any]] = [
            changed[i] if i in changed else map(itemgetter(i), rows) for i in range(width)
        ]
        return list(zip(*columns, strict=True))

    return convert


_PRESENT = functools.partial(operator.is_not, None)


def _unchanged(
    rows: Sequence[Sequence[Any]], i: int, types: Types | None, tests: Sequence[Test]
) -> bool:
    """Whether column ``i`` of ``rows`` has values of ``types`` only (None aside) and passes
    every test."""
    if types is not None and not types.issuperset(map(type, map(itemgetter(i), rows))):
        return False
    if not tests:
        return True
    present = list(filter(_PRESENT, map(itemgetter(i), rows)))
    try:
        return all(test(present) for test in tests)
    except (TypeError, AttributeError, ValueError, ArithmeticError):
        return False  # a value of another kind than the test expects: convert value by value


def _check_widths(rows: Sequence[Sequence[Any]], width: int) -> None:
    widths = set(map(len, rows))
    if widths and widths != {width}:
        bad = next(len(row) for row in rows if len(row) != width)
        raise ValueError(f"a row has {bad} value(s), expected {width} (one per column)")


def is_json(type_: sa.types.TypeEngine[Any]) -> bool:
    """Whether ``type_`` is a JSON type (also under a TypeDecorator)."""
    return isinstance(_base_type(type_), sa.JSON)


def is_text(type_: sa.types.TypeEngine[Any]) -> bool:
    """Whether ``type_`` is a string type whose values are text (not an Enum's)."""
    base = _base_type(type_)
    return isinstance(base, sa.String) and not isinstance(base, sa.Enum)


def exact_intervals(
    select: sa.Select[Any], names: Sequence[str], dialect: sa.Dialect
) -> sa.Select[Any]:
    """``select`` (read from ``dialect``, its columns going into the target columns ``names``)
    with each PostgreSQL INTERVAL read in a way that keeps its months.

    asyncpg reads an interval of months as 30 days each ('1 mon' becomes 30 days), but a month
    has no fixed length. Such an interval is read as its length in seconds when it has no months
    or years (exact, and a timedelta again once read), and as its own text otherwise, which fails
    the read with an error that names the column and shows the interval.
    """
    if dialect.name != "postgresql":
        return select
    selected = list(select.selected_columns)
    if not any(isinstance(_base_type(col.type), _INTERVAL) for col in selected):
        return select
    columns = [
        _interval_read_exactly(col, name) if isinstance(_base_type(col.type), _INTERVAL) else col
        for col, name in zip(selected, names, strict=True)
    ]
    return select.with_only_columns(*columns, maintain_column_froms=True)


def _interval_read_exactly(column: Any, name: str) -> sa.Label[Any]:
    no_months = sa.and_(sa.extract("year", column) == 0, sa.extract("month", column) == 0)
    text = sa.case(
        (no_months, sa.cast(sa.extract("epoch", column), sa.Text)),
        else_=sa.cast(column, sa.Text),
    )
    return sa.type_coerce(text, _IntervalInSeconds(name)).label(name)


class _IntervalInSeconds(sa.types.TypeDecorator[dt.timedelta]):
    """A PostgreSQL interval read as text by :func:`exact_intervals`: its length in seconds,
    which becomes a timedelta, or the text of an interval with months, which is refused."""

    impl = sa.Text
    cache_ok = True

    def __init__(self, column: str) -> None:
        super().__init__()
        self.column = column

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> dt.timedelta | None:
        if value is None:
            return None
        try:
            seconds = decimal.Decimal(value)
            if seconds.is_finite():
                return dt.timedelta(microseconds=int(seconds.scaleb(6)))
        except decimal.InvalidOperation:
            pass  # the text of an interval with months or years
        except OverflowError:
            raise ValueError(
                f"column {self.column!r} of the source holds an interval of {seconds} seconds, "
                "longer than a Python timedelta (999,999,999 days) holds. Select it as text "
                "(sqlalchemy.cast(..., sqlalchemy.Text)) into a text column."
            ) from None
        raise ValueError(
            f"column {self.column!r} of the source holds {shown(value)}, an interval with "
            "months or years: a month has no fixed length in days, and PostgreSQL's driver "
            "(asyncpg) would read each one as 30 days. Select it as text "
            "(sqlalchemy.cast(..., sqlalchemy.Text)) into a text column, or give it a length "
            "in days in the source query if that is meant (extract(epoch FROM ...) * "
            "interval '1 second' counts a month as 30 days and a year as 365.25)."
        )


def _base_type(type_: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
    # sa.Interval is a TypeDecorator of DateTime (what it is stored as without a native
    # INTERVAL); its values are timedeltas all the same.
    while isinstance(type_, sa.types.TypeDecorator) and not isinstance(type_, sa.Interval):
        type_ = type_.impl_instance
    return type_


#: Converts a column of values (None among them) with the column type's bind processor.
Process = Callable[[list[Any]], list[Any]]


#: The types a column's values may have (None among them) and the tests they must pass for the
#: column to go as it is; None when the column is converted value by value whatever it holds.
Tests = tuple[Types | None, tuple[Test, ...]] | None


def _plan(
    column: sa.Column[Any], dialect: sa.Dialect, raw_json: bool, text_json: bool
) -> tuple[Convert | None, Process | None, Tests] | None:
    """What checks that ``column`` can hold a Python value (returning it, or it in the type the
    driver takes for it), what turns a column of such values into what ``dialect``'s driver
    takes (the type's bind processor), and the tests that show, for a whole column of values at
    once, that neither would change any of them; None when values go as they are. The check is
    never called with None."""
    base = _base_type(column.type)
    if isinstance(base, sa.JSON) and (raw_json or text_json):
        if text_json and dialect.name == "sqlite":
            return _json_document(column.name), None, None
        return None
    steps = _checks(column, base, dialect)
    if isinstance(base, sa.DateTime | sa.Time) and not (
        dialect.name == "postgresql" and base.timezone
    ):
        steps.append((_utc_naive, _all_naive))
    impl = column.type.dialect_impl(dialect)
    processor = impl.bind_processor(dialect)
    tests = [test for _, test in steps]
    if processor is not None:
        # A native BOOLEAN's processor leaves bools as they are: it turns 0 and 1 into bools and
        # refuses other values.
        native_bool = isinstance(impl, sa.Boolean) and dialect.supports_native_boolean
        tests.append(_BOOL if native_bool else None)
    if not tests:
        return None
    check = _chained([function for function, _ in steps]) if steps else None
    process = _processing(processor, column, dialect) if processor is not None else None
    return check, process, _combined(tests)


def _combined(tests: list[Test | Types | None]) -> Tests:
    """The steps' tests as one: the types all of them allow, and each other test once."""
    if None in tests:
        return None
    types: Types | None = None
    for allowed in tests:
        if isinstance(allowed, frozenset):
            types = allowed if types is None else types & allowed
    if types is not None:
        types |= _NONE_TYPE
    functions = (test for test in tests if test is not None and not isinstance(test, frozenset))
    return types, tuple(dict.fromkeys(functions))  # a test shared by steps runs once


def _processing(processor: Convert, column: sa.Column[Any], dialect: sa.Dialect) -> Process:
    """``processor`` over a column of values; a value it refuses fails with the column, the
    value and what the column takes, where the processor's own error names neither."""

    def process(values: list[Any]) -> list[Any]:
        try:
            return [None if v is None else processor(v) for v in values]
        except Exception:
            for value in values:
                try:
                    if value is not None:
                        processor(value)
                except Exception as exc:
                    raise _refuse(
                        column.name,
                        _ddl(column, dialect),
                        value,
                        first_line(exc).rstrip("."),
                        f"It takes {_takes(column.type)}: convert the values in the source "
                        "query (or make them NULL), or change the target column's type.",
                    ) from exc
            raise  # not one value alone: the processor's own error

    return process


def _takes(type_: sa.types.TypeEngine[Any]) -> str:
    """What values a column of ``type_`` takes, for a message: "datetime.date values"."""
    if is_json(type_):
        return "JSON values (dicts, lists, strings, numbers, booleans, None)"
    try:
        python_type = type_.python_type
    except NotImplementedError:
        return "values of its type"
    module = python_type.__module__
    name = python_type.__qualname__
    return f"{name} values" if module == "builtins" else f"{module}.{name} values"


def _chained(functions: list[Convert]) -> Convert:
    """One function that runs ``functions`` in turn, each on what the one before returned."""
    if len(functions) == 1:
        return functions[0]
    if len(functions) == 2:
        first, second = functions
        return lambda value: second(first(value))

    def chained(value: Any) -> Any:
        for function in functions:
            value = function(value)
        return value

    return chained


def _utc_naive(value: Any) -> Any:
    """A zone-aware datetime or time as the naive one in UTC; anything else as it is."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            return value.astimezone(_UTC).replace(tzinfo=None)
    elif isinstance(value, dt.time) and (offset := value.utcoffset()) is not None:
        # A time of day moves by its offset, round the clock: 01:00+05:30 is 19:30 in UTC.
        return (dt.datetime.combine(_A_DAY, value.replace(tzinfo=None)) - offset).time()
    return value


_NONE = frozenset((None,))
_NONE_TYPE = frozenset((type(None),))
_ZERO = frozenset((0,))
_BOOL = frozenset((bool,))
_TZINFO = attrgetter("tzinfo")
_MICROSECOND = attrgetter("microsecond")
_MICROSECONDS = attrgetter("microseconds")  # a timedelta's
_INTERVAL = sa.Interval | postgresql.INTERVAL


def _all_naive(values: list[Any]) -> bool:
    """Whether every value is a datetime (or time) without a zone."""
    return _NONE.issuperset(map(_TZINFO, values))


# -- what a column can hold ------------------------------------------------------------------


def _checks(column: sa.Column[Any], base: Any, dialect: sa.Dialect) -> list[Step]:
    """The steps that return a value the column holds exactly (or the same value in the type the
    driver takes for it) and raise ValueError for one the database would change, each with its
    column test if it has one; none when the database refuses what it cannot hold by itself."""
    if isinstance(base, sa.Integer):
        return [_whole_numbers(column.name, _ddl(column, dialect))]
    if isinstance(base, sa.Date):
        return [_dates(column.name, _ddl(column, dialect))]
    if isinstance(base, sa.Enum):
        return [_enum_names(column.name, _ddl(column, dialect), base)]
    if (
        is_text(base)
        and not isinstance(base, sa.Text)  # TEXT(n) is a type big enough for n, not a limit
        and base.length
        and dialect.name in ("postgresql", *_MYSQL)  # SQLite keeps any length
    ):
        ddl = _ddl(column, dialect)
        sizes = _SIZES.search(ddl)  # the length this dialect's column has (a variant's own)
        return [_text_length(column.name, ddl, int(sizes.group(1)))] if sizes else []
    steps = [_times(column.name, _ddl(column, dialect))] if isinstance(base, sa.Time) else []
    if isinstance(base, sa.Interval) and isinstance(base.dialect_impl(dialect), sa.Interval):
        # Without a native INTERVAL, a DATETIME: the epoch plus the interval.
        steps.append((_datetime_from_epoch(column.name, _ddl(column, dialect), base.epoch), None))
    if not isinstance(base, sa.Float | sa.Numeric | sa.DateTime | sa.Time | _INTERVAL):
        return steps
    name = dialect.name
    if name == "sqlite":
        if isinstance(base, sa.Float):
            return [(_no_nan(column.name, _ddl(column, dialect), name), None)]
        return _sqlite_decimals(column, dialect) if isinstance(base, sa.Numeric) else steps
    if name != "postgresql" and name not in _MYSQL:
        return steps
    return [*steps, *_sized(column.name, base, _ddl(column, dialect).upper(), name)]


def _ddl(column: sa.Column[Any], dialect: sa.Dialect) -> str:
    """What the column is, as the DDL it was created with says: NUMERIC(10, 2), DATETIME(6), ..."""
    return str(column.type.compile(dialect=dialect))


def _sized(column: str, base: Any, ddl: str, dialect: str) -> list[Step]:
    """The checks of a number or time column of PostgreSQL or MySQL (``dialect``) that its DDL
    (precision, scale, fractional second digits) calls for."""
    sizes = _SIZES.search(ddl)
    precision = int(sizes.group(1)) if sizes else None
    scale = int(sizes.group(2)) if sizes and sizes.group(2) else None
    mysql = dialect in _MYSQL
    if isinstance(base, sa.Float):
        if mysql and scale is not None:
            # DOUBLE(M, D) and FLOAT(M, D) round to D places; FLOAT(M, D) is 4 bytes too.
            places = _decimal_places(column, ddl, scale)
            steps = [(_no_nan(column, ddl, dialect), places[1]), places]
            if ddl.startswith("FLOAT"):
                steps.append((_single_precision_places(column, ddl, scale), None))
            return steps
        steps = [(_no_nan(column, ddl, dialect), _finite)] if mysql else []
        # MySQL's FLOAT and FLOAT(p <= 24) are 4 bytes, PostgreSQL's REAL and FLOAT(p <= 24) too.
        small = precision is None or precision <= 24
        if dialect == "postgresql":
            single = ddl == "REAL" or (ddl.startswith("FLOAT(") and small)
        else:
            single = ddl.startswith("FLOAT") and small
        return [*steps, (_single_precision(column, ddl), None)] if single else steps
    if isinstance(base, sa.Numeric):
        if dialect == "postgresql" and precision is None:
            return [(_float_as_decimal, _DECIMALS)]  # NUMERIC without a precision: any scale
        # MySQL's DECIMAL is (10, 0). Its test shows every value finite, too.
        places = _decimal_places(column, ddl, scale or 0, decimal_column=True)
        return [(_no_nan(column, ddl, dialect), places[1]), places] if mysql else [places]
    digits = precision if precision is not None else (6 if dialect == "postgresql" else 0)
    if digits >= 6:
        return []
    return [_fractional_seconds(column, ddl, digits, isinstance(base, _INTERVAL))]


def _refuse(column: str, ddl: str, value: Any, problem: str, fix: str) -> ValueError:
    return ValueError(f"column {column!r} ({ddl}) cannot hold {shown(value)}: {problem}. {fix}")


_WHOLE = frozenset((int, bool))


def _whole_numbers(column: str, ddl: str) -> Step:
    """Refuses a decimal or float that is not a whole number, which PostgreSQL's COPY would cut,
    MySQL round and SQLite keep in an integer column; one that is goes as the int it equals."""

    def check(value: Any) -> Any:
        if isinstance(value, decimal.Decimal):
            whole = value.is_finite() and value == value.to_integral_value()
        elif isinstance(value, float):
            whole = value.is_integer()
        else:
            return value  # the driver's or the database's to take or refuse
        if not whole:
            raise _refuse(
                column,
                ddl,
                value,
                "an integer column holds whole numbers only",
                "Round the values in the source query if that is meant, or give the target "
                "column a type that keeps fractions (sqlalchemy.Numeric, sqlalchemy.Double).",
            )
        return int(value)

    return check, _WHOLE


def _text_length(column: str, ddl: str, length: int) -> Step:
    """Refuses text longer than ``length`` characters. PostgreSQL and MySQL refuse it too, except
    when only spaces are past the length: those they cut without an error."""

    def short(values: list[Any]) -> bool:
        return max(map(len, values), default=0) <= length

    def check(value: Any) -> Any:
        if isinstance(value, str) and len(value) > length:
            raise _refuse(
                column,
                ddl,
                value,
                f"it is {len(value):,} characters, too long for {length} (PostgreSQL and MySQL "
                "would cut spaces at the end without an error)",
                "Give the target column a larger length, or trim the values in the source query "
                "if that is meant.",
            )
        return value

    return check, short


def _enum_names(column: str, ddl: str, enum: sa.Enum) -> Step:
    """Refuses a value that is none of ``enum``'s names (nor, with an enum class, its members).
    SQLAlchemy passes unknown text on to the database, which keeps it in a non-native enum's
    VARCHAR (and SQLite's) or refuses it with a message of its own."""
    names = tuple(enum.enums)
    members = () if enum.enum_class is None else enum.enum_class.__members__.values()
    known = frozenset((*names, *members))

    def all_known(values: list[Any]) -> bool:
        return known.issuperset(values)

    def check(value: Any) -> Any:
        try:
            found = value in known
        except TypeError:  # unhashable
            found = False
        if not found:
            raise _refuse(
                column,
                ddl,
                value,
                f"it is not a name of the target's enum {shown(names)}",
                "Add it to the target's Enum, or map it to one of them in the source query.",
            )
        return value

    return check, all_known


_DATE = frozenset((dt.date,))
_TIME = frozenset((dt.time,))
_MIDNIGHT = dt.time()


def _dates(column: str, ddl: str) -> Step:
    """Refuses a datetime whose time of day is not midnight (in UTC, for an aware one), which
    every database would drop; one at midnight goes as its date."""

    def check(value: Any) -> Any:
        if not isinstance(value, dt.datetime):
            return value
        naive = _utc_naive(value)
        if naive.time() != _MIDNIGHT:
            raise _refuse(
                column,
                ddl,
                value,
                "a date column keeps no time of day, and this one is not midnight",
                "Take its date in the source query (CAST(... AS DATE)) if that is meant, or "
                "give the target column a datetime type.",
            )
        return naive.date()

    return check, _DATE


def _times(column: str, ddl: str) -> Step:
    """Refuses a datetime, whose date a time column would drop."""

    def check(value: Any) -> Any:
        if isinstance(value, dt.datetime):
            raise _refuse(
                column,
                ddl,
                value,
                "a time column keeps no date",
                "Take its time of day in the source query (CAST(... AS TIME)) if that is meant, "
                "or give the target column a datetime type.",
            )
        return value

    return check, _TIME


#: Enough precision for any decimal a driver hands over, so that quantize() never rounds.
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


_DECIMALS = frozenset((decimal.Decimal, int, bool))  # no float among them


def _float_as_decimal(value: Any) -> Any:
    """A float as the decimal it prints as (its shortest repr): 0.1 is Decimal('0.1'), not the
    binary fraction 0.1000000000000000055511151231257827... that asyncpg would send."""
    return decimal.Decimal(repr(value)) if isinstance(value, float) else value


def _decimal_places(column: str, ddl: str, scale: int, *, decimal_column: bool = False) -> Step:
    """Refuses a decimal, or a float by the decimal it prints as, with more than ``scale``
    decimal places. Into a ``decimal_column`` a float goes as that decimal (MySQL's DOUBLE(M, D)
    takes floats)."""
    quantum = decimal.Decimal(1).scaleb(-scale)

    def same_scale(values: list[Any]) -> bool:
        return all(map(quantum.same_quantum, values))

    def check(value: Any) -> Any:
        number = _float_as_decimal(value)
        if (
            isinstance(number, decimal.Decimal)
            and not number.same_quantum(quantum)  # what a column of this scale gives: cheap
            and number.is_finite()  # NaN and infinities are the database's to refuse
            and number.quantize(quantum, context=_EXACT) != number
        ):
            raise _refuse(
                column,
                ddl,
                value,
                f"it keeps {scale} decimal place(s), so it would be rounded",
                "Give the target column a larger scale, or round the values first.",
            )
        return number if decimal_column else value

    return check, same_scale


def _sqlite_decimals(column: sa.Column[Any], dialect: sa.Dialect) -> list[Step]:
    """A float as the decimal it prints as, refused (as a decimal is) with more decimal places
    than the column's scale (SQLAlchemy reads the column back rounded to it) or when SQLite's
    8-byte float would change it."""
    ddl = _ddl(column, dialect)
    sizes = _SIZES.search(ddl)
    steps: list[Step] = (
        [_decimal_places(column.name, ddl, int(sizes.group(2)), decimal_column=True)]
        if sizes and sizes.group(2)
        else [(_float_as_decimal, None)]
    )
    steps.insert(0, (_no_nan(column.name, ddl, dialect.name), None))
    survives = _survives_sqlite(column, dialect)
    if survives is not None:
        steps.append((survives, None))
    return steps


def _survives_sqlite(column: sa.Column[Any], dialect: sa.Dialect) -> Convert | None:
    """SQLite keeps a decimal (and an integer going into a decimal column) as a float: refuse
    one that does not read back as it went in."""
    impl = column.type.dialect_impl(dialect)
    to_driver = impl.bind_processor(dialect)
    from_driver = impl.result_processor(dialect, None)
    if to_driver is None or from_driver is None:  # asdecimal=False: floats in, floats out
        return None
    ddl = _ddl(column, dialect)

    def check(value: Any) -> Any:
        if (
            isinstance(value, decimal.Decimal | int)
            and not isinstance(value, bool)
            and from_driver(to_driver(value)) != value
        ):
            raise _refuse(
                column.name,
                ddl,
                value,
                "SQLite keeps decimals as 8-byte floats, which would change it",
                "Store it in a String column, or copy into a server database.",
            )
        return value

    return check


def _finite(values: list[Any]) -> bool:
    return all(map(math.isfinite, values))


def _no_nan(column: str, ddl: str, dialect: str) -> Convert:
    """Refuses a float or decimal NaN, which SQLite stores as NULL, and on MySQL (which has
    neither) infinities too; the same message for floats and decimals."""
    mysql = dialect in _MYSQL
    if mysql:
        problem, what = "MySQL and MariaDB have no NaN or infinities", "them"
    else:
        problem, what = "SQLite stores NaN as NULL", "NaN"

    def check(value: Any) -> Any:
        if isinstance(value, decimal.Decimal):
            refused = value.is_nan() or (mysql and value.is_infinite())
        elif isinstance(value, float):
            refused = math.isnan(value) or (mysql and math.isinf(value))
        else:
            return value
        if refused:
            raise _refuse(
                column,
                ddl,
                value,
                problem,
                f"Replace {what} by NULL in the source query if that is what you mean.",
            )
        return value

    return check


def _json_document(column: str) -> Convert:
    def check(value: Any) -> Any:
        try:
            json.loads(value)
        except (TypeError, ValueError):
            raise _refuse(
                column,
                "SQLite JSON",
                value,
                "it is not a JSON document, and SQLite would store it as it is",
                "Correct the text in the source, or copy it into a text column.",
            ) from None
        return value

    return check


_FLOAT32 = struct.Struct("<f")


def _single_precision(column: str, ddl: str) -> Convert:
    def check(value: Any) -> Any:
        if isinstance(value, float) and value == value:
            try:
                same = _FLOAT32.unpack(_FLOAT32.pack(value))[0] == value
            except OverflowError:
                same = False
            if not same:
                raise _refuse(
                    column,
                    ddl,
                    value,
                    "it is a 4-byte float, which would round it",
                    "Declare the column as sqlalchemy.Double.",
                )
        return value

    return check


def _single_precision_places(column: str, ddl: str, scale: int) -> Convert:
    """Refuses a float that MySQL's ``FLOAT(M, D)`` would change: it keeps a 4-byte float, which
    it gives back rounded to ``scale`` places; a value with more significant digits than such a
    float holds comes back another."""
    within = decimal.Decimal(5).scaleb(-scale - 1)  # half of the last place kept

    def check(value: Any) -> Any:
        if isinstance(value, float) and math.isfinite(value):
            try:
                single = _FLOAT32.unpack(_FLOAT32.pack(value))[0]
            except OverflowError:
                single = math.inf
            if not abs(decimal.Decimal(single) - decimal.Decimal(repr(value))) < within:
                raise _refuse(
                    column,
                    ddl,
                    value,
                    "it is a 4-byte float, which keeps about 7 significant digits, so it would "
                    "come back another",
                    "Declare the column as mysql.DOUBLE(M, D) or sqlalchemy.Numeric(M, D).",
                )
        return value

    return check


def _datetime_from_epoch(column: str, ddl: str, epoch: dt.datetime) -> Convert:
    """Refuses an interval that, added to ``epoch``, falls outside the datetimes Python has."""

    def check(value: Any) -> Any:
        if isinstance(value, dt.timedelta):
            try:
                epoch + value
            except OverflowError:
                raise _refuse(
                    column,
                    ddl,
                    value,
                    f"sqlalchemy.Interval keeps an interval as the {ddl} {epoch} plus the "
                    "interval, and this one falls outside the years 1 to 9999",
                    "Store the durations another way (microseconds in a BigInteger), or copy "
                    "them into PostgreSQL, whose INTERVAL holds them.",
                ) from None
        return value

    return check


def _fractional_seconds(column: str, ddl: str, digits: int, interval: bool) -> Step:
    """Refuses a datetime or time (a timedelta for an ``interval`` column) whose microseconds
    the column would cut to ``digits`` fractional second digits."""
    unit = 10 ** (6 - digits)
    microseconds = _MICROSECONDS if interval else _MICROSECOND
    kind = dt.timedelta if interval else dt.datetime | dt.time

    def whole(values: list[Any]) -> bool:
        if digits == 0:
            return _ZERO.issuperset(map(microseconds, values))
        return not any(microsecond % unit for microsecond in map(microseconds, values))

    if interval and ddl.startswith("DATETIME"):  # sa.Interval on MySQL
        fix = (
            "MySQL and MariaDB keep a sqlalchemy.Interval as a DATETIME without them; store the "
            "durations another way (microseconds in a BigInteger), or truncate them first."
        )
    else:
        fix = (
            "Declare it with 6 (mysql.DATETIME(fsp=6), mysql.TIME(fsp=6), "
            "postgresql.TIMESTAMP(precision=6), an INTERVAL without a precision), or truncate "
            "the values first."
        )

    def check(value: Any) -> Any:
        if isinstance(value, kind) and microseconds(value) % unit:
            raise _refuse(
                column,
                ddl,
                value,
                f"it keeps {digits} fractional second digit(s) and would drop the rest",
                fix,
            )
        return value

    return check, whole
