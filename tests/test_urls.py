"""URL normalisation to async drivers, and URLs rendered without passwords."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from asyncbind import ConfigError
from asyncbind.urls import (
    MIN_BARE_PASSWORD,
    hide_option_passwords,
    hide_passwords,
    hide_url_passwords,
    is_memory_sqlite,
    normalize_url,
    option_passwords,
    render_url,
    sqlite_file,
    url_passwords,
)


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
        ("postgresql+psycopg2://u@h/db?password=pw", "psycopg2", "u@h/db?password=***"),
        ("mysql+pymysql://u@h/db?passwd=pw", "pymysql", "mysql+aiomysql://u@h/db?passwd=***"),
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


@pytest.mark.parametrize("name", ["password", "PASSWORD", "Passwd", "pwd", "sslpassword"])
def test_render_hides_query_parameters_named_like_a_password(name: str) -> None:
    url = sa.make_url(f"mssql+aioodbc://u@h/d?a=1&{name}=s%40cret&z=2")
    shown = render_url(url)
    assert shown.startswith("mssql+aioodbc://u@h/d?")
    assert sorted(shown.partition("?")[2].split("&")) == sorted(["a=1", f"{name}=***", "z=2"])
    assert url_passwords(url) == ["s@cret"]


def test_render_hides_a_password_inside_an_odbc_connection_string() -> None:
    url = sa.make_url("mssql+aioodbc:///?odbc_connect=DSN%3Dx%3BPWD%3Ds3cret%3BUID%3Du")
    assert "s3cret" not in render_url(url)
    assert render_url(url).startswith("mssql+aioodbc:///?odbc_connect=DSN%3Dx%3BPWD%3D***")


@pytest.mark.parametrize(
    "given",
    [
        "postgresql://u@h/db?password=s3cret&sslmode=disable",
        "postgresql+psycopg://u:other@h/db?password=s3cret&sslmode=disable",
        "mysql+asyncmy://u@h/db?sslmode=disable&password=s3cret",
    ],
)
def test_a_password_in_the_query_becomes_the_urls_password(given: str) -> None:
    """The drivers read ``?password=`` as the URL's password (the parameter wins over the
    other, as in SQLAlchemy's connect arguments); as the URL's password, SQLAlchemy's own reprs
    hide it too."""
    url = normalize_url(given, "k")
    assert url.password == "s3cret"
    assert dict(url.query) == {"sslmode": "disable"}
    assert "s3cret" not in repr(url) and "s3cret" not in repr(sa.create_mock_engine(url, None))


def test_a_password_in_the_query_of_another_driver_stays_there_hidden() -> None:
    url = normalize_url("mssql+aioodbc://u@h/db?password=s3cret", "k")
    assert url.password is None and url.query["password"] == "s3cret"
    assert render_url(url) == "mssql+aioodbc://u@h/db?password=***"


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
    "url",
    [
        "sqlite:///data/app.db",
        "sqlite:///{folder}/data/app.db",
        "sqlite:///{folder}/data/../data/./app.db",
        "sqlite:///{folder}/link.db",
        "sqlite+aiosqlite:///data/app.db",
        "sqlite:///file:data/app.db?uri=true&mode=ro",
        "sqlite:///file:{folder}/data/app.db?mode=ro&uri=true",
        "sqlite:///file://{folder}/data/app.db?uri=true",
        "sqlite:///file://localhost{folder}/data/app.db?uri=true",
        "sqlite:///file:data/%2561pp.db?uri=true",  # SQLite decodes the URI's %61 ("a")
    ],
)
def test_a_sqlite_file_is_named_by_its_resolved_path(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However a URL spells the file (relative, through a symbolic link, as a file: URI), the
    path is the one SQLite opens, so that two binds of one file are recognised as one."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "app.db").touch()
    (tmp_path / "link.db").symlink_to(tmp_path / "data" / "app.db")
    monkeypatch.chdir(tmp_path)
    assert sqlite_file(sa.make_url(url.format(folder=tmp_path))) == os.path.realpath(
        tmp_path / "data" / "app.db"
    )


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///file:mem?mode=memory&uri=true",
        "postgresql://h/d",
    ],
)
def test_a_database_that_is_no_sqlite_file_has_no_path(url: str) -> None:
    assert sqlite_file(sa.make_url(url)) is None


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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dsn 'host=h password=s3cret dbname=d'", "dsn 'host=h password=*** dbname=d'"),
        ("connect(user='u', password='s 3')", "connect(user='u', password=***)"),
        ("{'user': 'u', 'password': 'it\\'s'}", "{'user': 'u', 'password': '***'}"),
        ('{"sslpassword": "k3y", "port": 1}', '{"sslpassword": \'***\', "port": 1}'),
        ("DRIVER=x;PWD=s3cret", "DRIVER=x;PWD=***"),
        # Not a password: the words, MySQL's message, an empty setting.
        ("Access denied for user 'u'@'h' (using password: YES)", None),
        ("check the user name and password; 'password' in connect_args", None),
        ("password= and password=''", "password= and password=***"),
    ],
)
def test_passwords_set_in_text_are_hidden(text: str, expected: str | None) -> None:
    assert hide_url_passwords(text) == (text if expected is None else expected)


def test_a_short_password_is_hidden_where_the_text_shows_it_as_one() -> None:
    """A one-character password is masked in URLs, settings and as a quoted string, and nowhere
    else: the digits of timings, ports and addresses stay as they are."""
    urls = [sa.make_url("postgresql://u:1@127.0.0.1:5431/d"), sa.make_url("mysql://u@h/d?pwd=2")]
    text = (
        "bind 'a': ok in 1.2 ms; bind 'b': ok in 21.5 ms; "
        "postgresql://u:1@127.0.0.1:5431/d mysql://u@h/d?pwd=2 password='1' got '2'"
    )
    assert hide_passwords(text, urls) == (
        "bind 'a': ok in 1.2 ms; bind 'b': ok in 21.5 ms; "
        "postgresql://u:***@127.0.0.1:5431/d mysql://u@h/d?pwd=*** password=*** got '***'"
    )


def test_a_long_password_is_hidden_anywhere_as_a_word_of_its_own() -> None:
    secret = "Secret99"
    assert len(secret) == MIN_BARE_PASSWORD
    url = sa.make_url(f"postgresql://u:{secret}@h/d")
    text = f"auth {secret} failed; {secret}, ({secret}) but {secret}x and x{secret} are words"
    assert hide_passwords(text, [url]) == (
        "auth *** failed; ***, (***) but Secret99x and xSecret99 are words"
    )
    assert hide_passwords(f"got #{secret}#!", [], ["#" + secret + "#"]) == "got ***!"


def test_passwords_given_apart_from_urls_are_hidden_too() -> None:
    assert hide_passwords("login 'k3y' as Connect-Secret-1", [], ["k3y", "Connect-Secret-1"]) == (
        "login '***' as ***"
    )


def test_option_passwords_are_found_and_hidden() -> None:
    options = {
        "pool_size": 3,
        "connect_args": {"password": "s3cret", "SSLPassword": "k3y", "user": "u", "pw": 1},
    }
    assert option_passwords(options) == ["s3cret", "k3y"]
    assert hide_option_passwords(options) == {
        "pool_size": 3,
        "connect_args": {"password": "***", "SSLPassword": "***", "user": "u", "pw": 1},
    }
    assert options["connect_args"]["password"] == "s3cret"  # the options themselves unchanged
