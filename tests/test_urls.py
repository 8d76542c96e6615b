"""URL normalisation to async drivers, and URLs rendered without passwords."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from asyncbind import ConfigError
from asyncbind.urls import hide_url_passwords, is_memory_sqlite, normalize_url, render_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u@h/db", "postgresql+asyncpg"),
        ("postgresql://u@h/db", "postgresql+asyncpg"),
        ("mysql://u@h/db", "mysql+aiomysql"),
        ("mariadb://u@h/db", "mariadb+aiomysql"),
        ("sqlite:///app.db", "sqlite+aiosqlite"),
        ("sqlite://", "sqlite+aiosqlite"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg"),
        ("postgres+asyncpg://u@h/db", "postgresql+asyncpg"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
        ("mysql+aiomysql://u@h/db", "mysql+aiomysql"),
        ("mysql+asyncmy://u@h/db", "mysql+asyncmy"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite"),
    ],
)
def test_driver_is_made_async(given: str, expected: str) -> None:
    url = normalize_url(given, "k")
    assert url.drivername == expected
    assert url.database == sa.make_url(given).database


def test_sqlalchemy_url_objects_are_accepted() -> None:
    url = normalize_url(sa.URL.create("postgresql", username="u", host="h", database="d"), None)
    assert url.drivername == "postgresql+asyncpg"


@pytest.mark.parametrize(
    ("given", "driver", "instead"),
    [
        ("postgresql+psycopg2://u:pw@h/db", "psycopg2", "postgresql+asyncpg://u:***@h/db"),
        ("postgresql+pg8000://u:pw@h/db", "pg8000", "postgresql+asyncpg://u:***@h/db"),
        ("mysql+pymysql://u:pw@h/db", "pymysql", "mysql+aiomysql://u:***@h/db"),
        ("mysql+mysqldb://u:pw@h/db", "mysqldb", "mysql+aiomysql://u:***@h/db"),
        ("mariadb+pymysql://u:pw@h/db", "pymysql", "mariadb+aiomysql://u:***@h/db"),
        ("sqlite+pysqlite:///x.db", "pysqlite", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_sync_driver_is_refused_with_the_async_url(given: str, driver: str, instead: str) -> None:
    with pytest.raises(ConfigError) as info:
        normalize_url(given, "reports")
    message = str(info.value)
    assert "'reports'" in message
    assert repr(driver) in message
    assert instead in message
    assert "pw" not in message.replace("pymysql", "").replace("psycopg", "")


@pytest.mark.parametrize("given", ["oracle://u@h/db", "foo://x", "mssql://u@h/db"])
def test_scheme_without_a_default_async_driver_is_refused(given: str) -> None:
    with pytest.raises(ConfigError, match=r"Bind 'k'.*names no async driver.*postgresql://"):
        normalize_url(given, "k")


def test_unknown_driver_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"The default bind: SQLAlchemy has no dialect 'nope\+x'"):
        normalize_url("nope+x://a/b", None)


@pytest.mark.parametrize("given", ["not a url", "no-scheme-here", "postgresql://u:pw@[::1/db"])
def test_unparseable_url_is_named_by_its_key_never_echoed(given: str) -> None:
    with pytest.raises(ConfigError) as info:
        normalize_url(given, "users")
    assert "Bind 'users'" in str(info.value)
    assert given not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("given", [None, 5, b"sqlite://", ""])
def test_url_of_the_wrong_type_or_empty(given: object) -> None:
    with pytest.raises(ConfigError, match="Bind 'x'"):
        normalize_url(given, "x")


def test_render_hides_the_password() -> None:
    url = sa.URL.create("postgresql+asyncpg", "u", "p@ss:w/rd", "h", database="d")
    assert render_url(url) == "postgresql+asyncpg://u:***@h/d"


@pytest.mark.parametrize(
    ("url", "memory"),
    [
        ("sqlite://", True),
        ("sqlite:///:memory:", True),
        ("sqlite:///file:mem1?mode=memory&uri=true", True),
        ("sqlite:///app.db", False),
        ("postgresql://h/db", False),
    ],
)
def test_in_memory_sqlite_is_recognised(url: str, memory: bool) -> None:
    assert is_memory_sqlite(sa.make_url(url)) is memory


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('AsyncBind("postgresql://app:pw@db/app")', 'AsyncBind("postgresql://app:***@db/app")'),
        (
            "mysql+aiomysql://root:p%40ss@127.0.0.1:3306/x",
            "mysql+aiomysql://root:***@127.0.0.1:3306/x",
        ),
        (
            "'redis://:pw@localhost/0' and 'x://u:v@h'",
            "'redis://:***@localhost/0' and 'x://u:***@h'",
        ),
        ("postgresql://app@db/app sqlite:///a.db", "postgresql://app@db/app sqlite:///a.db"),
        ("https://example.com/a:b@c", "https://example.com/a:b@c"),  # no user:password part
    ],
)
def test_passwords_of_urls_written_in_text_are_hidden(text: str, expected: str) -> None:
    assert hide_url_passwords(text) == expected
