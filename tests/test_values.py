"""Batches made ready for a target's driver: a column at a time, and value by value only where a
column needs it. No database: the dialects alone decide."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from asyncbind.values import rows_converter

PLUS_TWO = dt.timezone(dt.timedelta(hours=2))


def table() -> sa.Table:
    return sa.Table(
        "t",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("amount", sa.Numeric(12, 2)),
        sa.Column("at", sa.DateTime),
        sa.Column("note", sa.Text),
    )


NAMES = ["id", "amount", "at", "note"]


def convert(dialect: sa.Dialect, rows: list[Any]) -> Any:
    return rows_converter(table(), NAMES, dialect)(rows)


@pytest.mark.parametrize("dialect", [postgresql.asyncpg.dialect(), mysql.asyncmy.dialect()])
def test_a_batch_that_needs_no_change_is_given_back_as_it_is(dialect: sa.Dialect) -> None:
    rows = [
        (1, Decimal("1.25"), dt.datetime(2024, 1, 1, 12), "a"),
        (2, None, None, None),
        (3, Decimal("-0.00"), dt.datetime(2024, 1, 1), ""),
    ]
    assert convert(dialect, rows) is rows


def test_only_the_column_that_needs_it_is_converted() -> None:
    aware = dt.datetime(2024, 1, 1, 12, tzinfo=PLUS_TWO)
    rows = [(1, Decimal("1.25"), aware, "a"), (2, Decimal("2.50"), None, "b")]

    converted = convert(postgresql.asyncpg.dialect(), rows)

    assert converted == [
        (1, Decimal("1.25"), dt.datetime(2024, 1, 1, 10), "a"),
        (2, Decimal("2.50"), None, "b"),
    ]


def test_values_of_another_kind_are_checked_one_by_one() -> None:
    """A decimal of fewer places, an integer and a float fail the column test (not a decimal of
    scale 2) and pass the check of each value; one more place fails it."""
    rows = [(1, Decimal("1.5"), None, None), (2, 7, None, None), (3, 0.25, None, None)]
    assert convert(postgresql.asyncpg.dialect(), rows) == rows

    with pytest.raises(ValueError, match=r"'amount'.*2 decimal place"):
        convert(postgresql.asyncpg.dialect(), [*rows, (4, Decimal("0.125"), None, None)])


def test_microseconds_a_mysql_datetime_would_drop_are_refused() -> None:
    rows = [(1, None, dt.datetime(2024, 1, 1, 12, 0, 0), None)]
    assert convert(mysql.asyncmy.dialect(), rows) is rows

    with pytest.raises(ValueError, match=r"'at'.*fractional second"):
        convert(
            mysql.asyncmy.dialect(), [*rows, (2, None, dt.datetime(2024, 1, 1, 0, 0, 0, 5), None)]
        )


def test_a_row_of_another_width_is_refused() -> None:
    with pytest.raises(ValueError, match="a row has 3 value"):
        convert(postgresql.asyncpg.dialect(), [(1, None, None, None), (2, None, None)])


def test_a_native_boolean_takes_0_and_1_as_an_insert_does() -> None:
    flags = sa.Table("f", sa.MetaData(), sa.Column("id", sa.Integer), sa.Column("on", sa.Boolean))
    bools = [(1, True), (2, False), (3, None)]
    to_postgresql = rows_converter(flags, ["id", "on"], postgresql.asyncpg.dialect())

    assert to_postgresql(bools) is bools
    assert to_postgresql([(1, 1), (2, 0), (3, None)]) == bools
    with pytest.raises(ValueError, match="Value 2 is not None, True, or False"):
        to_postgresql([(1, 2)])


def test_an_aware_datetime_is_a_date_when_it_is_midnight_in_utc() -> None:
    days = sa.Table("d", sa.MetaData(), sa.Column("id", sa.Integer), sa.Column("day", sa.Date))
    to_mysql = rows_converter(days, ["id", "day"], mysql.asyncmy.dialect())

    assert to_mysql([(1, dt.datetime(2024, 1, 1, tzinfo=dt.UTC))]) == [(1, dt.date(2024, 1, 1))]
    with pytest.raises(ValueError, match=r"'day'.*not midnight"):
        to_mysql([(1, dt.datetime(2024, 1, 1, tzinfo=PLUS_TWO))])  # 22:00 the day before
