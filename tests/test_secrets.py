"""Passwords never leave asyncbind: not in messages, exception chains, reprs, logs or CLI output.

Real users are created on PostgreSQL and MariaDB with a password holding every character that is
awkward in a URL (``@ : / % # ? & = +``, a space, non-ASCII letters). The tests then connect with it
(given as a percent-encoded string, a :class:`sqlalchemy.URL`, a bind dict, Flask-SQLAlchemy keys
and environment variables), fail with it (wrong password, refused, silent and unresolvable hosts,
configuration errors), and capture everything that could show it: ``str``/``repr`` of the objects,
every exception in the chain and its formatted traceback, every log record at DEBUG (SQLAlchemy's
``echo`` and pool logging included), stdout/stderr, and ``python -m asyncbind demo``.

The password's distinctive core, :data:`TOKEN`, is built at run time, so no source line that a
traceback quotes contains it; it is searched for raw and in every URL encoding.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import traceback
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import MYSQL_URL, POSTGRESQL_URL, NewDatabase, _admin_execute

from asyncbind import AsyncBind, AsyncBindError, BindUnavailableError, ConfigError

pytestmark = [pytest.mark.postgresql, pytest.mark.mysql]

#: The distinctive part of the passwords; made here so that no source line holds it.
TOKEN = "".join(["Qv", "7x", "Kp", "3w"])
PASSWORD = f"p@ss:w/rd %{TOKEN}#frag?q=1&a+b ünï€"
#: aiomysql sends passwords as latin-1, so MariaDB's user gets the password without non-ASCII.
MYSQL_PASSWORD = PASSWORD.encode("ascii", "ignore").decode()
WRONG_PASSWORD = f"wr0ng@:/%#? {TOKEN[::-1]}"
GUARD = 30


def secret_forms(password: str) -> set[str]:
    """Every way ``password`` could appear in text: raw, percent-encoded, and its core."""
    forms = {
        password,
        urllib.parse.quote(password, safe=""),
        urllib.parse.quote_plus(password),
        urllib.parse.quote(password),
        password.encode("unicode_escape").decode("ascii"),
        repr(password)[1:-1],
    }
    return forms | {TOKEN, TOKEN[::-1]}


SECRETS = sorted(
    secret_forms(PASSWORD) | secret_forms(MYSQL_PASSWORD) | secret_forms(WRONG_PASSWORD), key=len
)


def leaks(text: str) -> list[str]:
    """The secret forms found in ``text`` (shown by length only, never printed)."""
    return [f"a {len(s)}-character secret form" for s in SECRETS if s in text]


def assert_clean(what: str, text: str) -> None:
    found = leaks(text)
    assert not found, f"{what} shows the password ({', '.join(found)})"


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception reachable by __cause__, __context__ and groups."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        orig = getattr(current, "orig", None)
        if isinstance(orig, BaseException):
            todo.append(orig)


def assert_exception_clean(exc: BaseException) -> None:
    for number, item in enumerate(exception_chain(exc)):
        name = f"exception #{number} ({type(item).__name__})"
        assert_clean(f"str() of {name}", str(item))
        assert_clean(f"repr() of {name}", repr(item))
        assert_clean(f"args of {name}", repr(getattr(item, "args", ())))
        for attribute in ("statement", "params", "detail", "hint", "message"):
            assert_clean(f"{name}.{attribute}", repr(getattr(item, attribute, None)))
    assert_clean("the formatted traceback", "".join(traceback.format_exception(exc)))


def assert_logs_clean(records: Iterable[logging.LogRecord]) -> int:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    count = 0
    for record in records:
        assert_clean(f"log record of {record.name!r}", formatter.format(record))
        assert_clean(f"args of a log record of {record.name!r}", repr(record.args))
        count += 1
    return count


@pytest.fixture
def capture(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> Iterator[Callable[[], int]]:
    """Capture every log record at DEBUG; ``check()`` asserts records and output are clean."""
    before = _logger_state()
    caplog.set_level(logging.DEBUG)

    def check() -> int:
        out, err = capfd.readouterr()
        assert_clean("stdout", out)
        assert_clean("stderr", err)
        return assert_logs_clean(caplog.records)

    yield check
    check()
    # SQLAlchemy's echo adds stdout handlers and levels to its loggers: undo that for the others.
    for name, logger in _loggers().items():
        handlers, level = before.get(name, ([], logging.NOTSET))
        for handler in [h for h in logger.handlers if h not in handlers]:
            logger.removeHandler(handler)
        logger.setLevel(level)


def _loggers() -> dict[str, logging.Logger]:
    return {
        name: logger
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }


def _logger_state() -> dict[str, tuple[list[logging.Handler], int]]:
    return {name: (list(logger.handlers), logger.level) for name, logger in _loggers().items()}


@dataclass
class User:
    backend: str
    name: str
    database: str

    @property
    def password(self) -> str:
        return PASSWORD if self.backend == "postgresql" else MYSQL_PASSWORD

    def url(self, password: str | None = None, **changes: Any) -> sa.URL:
        server = POSTGRESQL_URL if self.backend == "postgresql" else MYSQL_URL
        password = self.password if password is None else password
        url = sa.URL.create(
            self.backend,
            username=self.name,
            password=password,
            host=server.host,
            port=server.port,
            database=self.database,
        )
        return url.set(**changes) if changes else url


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


@pytest.fixture
async def users(new_database: NewDatabase) -> AsyncIterator[dict[str, User]]:
    """A user with :data:`PASSWORD` on each server, allowed into a new database; dropped after."""
    name = f"asyncbind_u{uuid.uuid4().hex[:10]}"
    made: dict[str, User] = {}
    pg_db = sa.make_url(await new_database("postgresql")).database or ""
    my_db = sa.make_url(await new_database("mysql")).database or ""
    try:
        await _admin_execute(
            "postgresql",
            f'CREATE ROLE "{name}" LOGIN PASSWORD {_literal(PASSWORD)}',
            f'GRANT ALL ON DATABASE "{pg_db}" TO "{name}"',
        )
        made["pg"] = User("postgresql", name, pg_db)
        hosts = ("localhost", "127.0.0.1", "%")
        await _admin_execute(
            "mysql",
            *(
                f"CREATE USER '{name}'@'{h}' IDENTIFIED BY {_literal(MYSQL_PASSWORD)}"
                for h in hosts
            ),
            *(f"GRANT ALL ON `{my_db}`.* TO '{name}'@'{h}'" for h in hosts),
        )
        made["maria"] = User("mysql", name, my_db)
        yield made
    finally:
        if "pg" in made:
            await _admin_execute(
                "postgresql",
                f'REVOKE ALL ON DATABASE "{pg_db}" FROM "{name}"',
                f'DROP ROLE IF EXISTS "{name}"',
            )
        if "maria" in made:
            await _admin_execute(
                "mysql",
                *(f"DROP USER IF EXISTS '{name}'@'{h}'" for h in ("localhost", "127.0.0.1", "%")),
            )


def _as_string(url: sa.URL) -> str:
    return url.render_as_string(hide_password=False)


ECHO = {"echo": True, "echo_pool": "debug"}


def _in_query(url: sa.URL) -> sa.URL:
    """``url`` with its password moved to a ``?password=`` query parameter."""
    return url.set(password=None).update_query_dict({"password": url.password or ""})


def _configure(form: str, urls: dict[str, sa.URL]) -> AsyncBind:
    """An AsyncBind over ``urls`` configured the way ``form`` names."""
    pg, maria = urls["pg"], urls["maria"]
    if form == "strings":
        return AsyncBind(_as_string(pg), binds={"maria": _as_string(maria)}, engine_options=ECHO)
    if form == "url-objects":
        return AsyncBind(pg, binds={"maria": maria}, engine_options=ECHO)
    if form == "bind-dicts":
        return AsyncBind(
            {"url": _as_string(pg), **ECHO},
            binds={"maria": {"url": maria, "pool_pre_ping": True, **ECHO}},
        )
    if form == "flask-config":
        return AsyncBind.from_config(
            {
                "SQLALCHEMY_DATABASE_URI": _as_string(pg),
                "SQLALCHEMY_BINDS": {"maria": _as_string(maria)},
                "SQLALCHEMY_ENGINE_OPTIONS": ECHO,
            }
        )
    if form == "query-string":  # ?password=..., which the drivers read as the password
        return AsyncBind(
            _as_string(_in_query(pg)),
            binds={"maria": _as_string(_in_query(maria))},
            engine_options=ECHO,
        )
    if form == "connect-args":
        return AsyncBind(
            {"url": pg.set(password=None), "connect_args": {"password": pg.password}, **ECHO},
            binds={
                "maria": {
                    "url": _as_string(maria.set(password=None)),
                    "connect_args": {"password": maria.password},
                    **ECHO,
                }
            },
        )
    if form == "environment":
        return AsyncBind.from_env(
            {
                "ASYNCBIND_DATABASE_URL": _as_string(pg),
                "ASYNCBIND_BIND_MARIA": _as_string(maria),
                "ASYNCBIND_ENGINE_OPTIONS": json.dumps(ECHO),
            }
        )
    raise AssertionError(form)


def assert_objects_clean(db: AsyncBind) -> None:
    assert_clean("repr(db)", repr(db))
    assert_clean("str(db)", str(db))
    assert_clean("repr(db.engines)", repr(dict(db.engines)))
    assert_clean("repr(db.session)", repr(db.session))
    for key, engine in db.engines.items():
        for what, value in (
            ("engine", engine),
            ("sync engine", engine.sync_engine),
            ("url", engine.url),
            ("pool", engine.pool),
            ("pool status", engine.pool.status()),
        ):
            assert_clean(f"repr() of bind {key!r}'s {what}", repr(value))
            assert_clean(f"str() of bind {key!r}'s {what}", str(value))
    assert set(db.bind_configs) == set(db.engines)
    for key, config in db.bind_configs.items():
        assert_clean(f"repr() of bind {key!r}'s config", repr(config))
        assert_clean(f"str() of bind {key!r}'s config", str(config))


@pytest.mark.parametrize(
    "form",
    [
        "strings",
        "url-objects",
        "bind-dicts",
        "query-string",
        "connect-args",
        "flask-config",
        "environment",
    ],
)
async def test_working_binds_never_show_the_password(
    form: str, users: dict[str, User], capture: Callable[[], int]
) -> None:
    db = _configure(form, {key: user.url() for key, user in users.items()})
    try:
        assert_objects_clean(db)
        async with db.session() as session:
            for key in ("pg", "maria"):
                bind_key = None if key == "pg" else key
                result = await session.execute(
                    sa.text("SELECT current_user" if key == "pg" else "SELECT CURRENT_USER()"),
                    bind_arguments={"bind_key": bind_key},
                )
                # The password went through the URL intact: the server let this user in.
                assert str(result.scalar()).split("@")[0] == users[key].name
            assert_clean("repr(session)", repr(session))
        assert_objects_clean(db)
    finally:
        await db.dispose()
    assert capture() > 0, "nothing was logged: echo and pool logging were not captured"


@dataclass
class Failure:
    id: str
    key: str
    make: Callable[[dict[str, User], int], Any]  # (users, silent port) -> AsyncBind argument
    options: dict[str, Any]


FAILURES = [
    # MariaDB checks the password; PostgreSQL's local test server trusts 127.0.0.1, so a wrong
    # password is not an error there: its failures are a missing database and the network.
    Failure("mysql-wrong-password", "maria", lambda u, p: u["maria"].url(WRONG_PASSWORD), {}),
    Failure("mysql-unknown-database", "maria", lambda u, p: u["maria"].url(database="nope_db"), {}),
    Failure("postgresql-unknown-database", "pg", lambda u, p: u["pg"].url(database="nope_db"), {}),
    Failure("postgresql-refused", "pg", lambda u, p: u["pg"].url(port=1), {}),
    Failure("mysql-refused", "maria", lambda u, p: u["maria"].url(port=1), {}),
    Failure("postgresql-silent", "pg", lambda u, p: u["pg"].url(port=p), {"connect_timeout": 0.5}),
    Failure("mysql-silent", "maria", lambda u, p: u["maria"].url(port=p), {"connect_timeout": 0.5}),
    Failure(
        "postgresql-unresolvable",
        "pg",
        lambda u, p: u["pg"].url(host="no-such-host.invalid"),
        {"connect_timeout": 5},
    ),
    Failure(
        "mysql-unresolvable",
        "maria",
        lambda u, p: u["maria"].url(host="no-such-host.invalid"),
        {"connect_timeout": 5},
    ),
]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("failure", [pytest.param(f, id=f.id) for f in FAILURES])
@pytest.mark.parametrize(
    "as_string", [pytest.param(True, id="string"), pytest.param(False, id="url")]
)
async def test_connection_failures_never_show_the_password(
    failure: Failure,
    as_string: bool,
    users: dict[str, User],
    silent_port: int,
    capture: Callable[[], int],
) -> None:
    url = failure.make(users, silent_port)
    bind = {"url": _as_string(url) if as_string else url, **ECHO, **failure.options}
    db = AsyncBind("sqlite://", binds={failure.key: bind})
    try:
        assert_objects_clean(db)
        async with asyncio.timeout(GUARD):
            with pytest.raises(Exception) as info:  # any error: the chain is checked
                async with db.session() as session:
                    await session.execute(
                        sa.text("SELECT 1"), bind_arguments={"bind_key": failure.key}
                    )
        error = info.value
        assert isinstance(error, AsyncBindError | sa.exc.DBAPIError), repr(type(error))
        if isinstance(error, BindUnavailableError):
            assert error.bind_key == failure.key
        assert_exception_clean(error)
        assert_objects_clean(db)
    finally:
        await db.dispose()
    capture()


def _config_errors(users: dict[str, User]) -> list[tuple[str, Callable[[], Any]]]:
    pg = users["pg"].url()
    pg_text = _as_string(pg)

    def text_with(**changes: Any) -> str:
        return _as_string(pg.set(**changes))

    return [
        ("sync-driver", lambda: AsyncBind(text_with(drivername="postgresql+psycopg2"))),
        (
            "sync-driver-mysql",
            lambda: AsyncBind(_as_string(users["maria"].url().set(drivername="mysql+pymysql"))),
        ),
        ("sync-driver-url", lambda: AsyncBind(pg.set(drivername="postgresql+psycopg2"))),
        (
            "sync-driver-query-password",
            lambda: AsyncBind(_as_string(_in_query(pg).set(drivername="postgresql+psycopg2"))),
        ),
        ("unknown-dialect", lambda: AsyncBind(text_with(drivername="nosuchdb"))),
        ("unknown-driver", lambda: AsyncBind(text_with(drivername="postgresql+nosuchdriver"))),
        ("bad-port", lambda: AsyncBind(pg_text.replace(f":{pg.port}/", ":port/"))),
        ("garbage", lambda: AsyncBind(f"::{PASSWORD}::")),
        ("bad-option-type", lambda: AsyncBind({"url": pg_text, "pool_size": "big"})),
        ("unknown-option", lambda: AsyncBind({"url": pg_text, "no_such_option": 1})),
        ("bad-timeout", lambda: AsyncBind({"url": pg_text, "connect_timeout": -1})),
        (
            "connect-args-not-a-mapping",
            lambda: AsyncBind({"url": pg_text, "connect_args": [("password", PASSWORD)]}),
        ),
        ("url-in-engine-options", lambda: AsyncBind(pg_text, engine_options={"url": pg_text})),
        ("bind-without-url", lambda: AsyncBind(binds={"x": {"uri": pg_text}})),
        ("default-twice", lambda: AsyncBind(pg_text, binds={None: pg_text})),
        (
            "pool-option-its-pool-does-not-take",
            lambda: AsyncBind({"url": pg_text, "poolclass": sa.NullPool, "pool_size": 3}),
        ),
        (
            "shared-connect-args-of-another-driver",
            lambda: AsyncBind(
                pg_text,
                binds={"m": _as_string(users["maria"].url())},
                engine_options={"connect_args": {"server_settings": {}}},
            ),
        ),
        ("reserved-key", lambda: AsyncBind(binds={"__all__": pg_text})),
        (
            "flask-binds-not-a-dict",
            lambda: AsyncBind.from_config({"SQLALCHEMY_BINDS": [pg_text]}),
        ),
        (
            "flask-sync-driver",
            lambda: AsyncBind.from_config(
                {"SQLALCHEMY_BINDS": {"a": text_with(drivername="postgresql+psycopg2")}}
            ),
        ),
        (
            "env-bad-json",
            lambda: AsyncBind.from_env({"ASYNCBIND_BINDS": "{'a': '" + pg_text + "'"}),
        ),
        (
            "env-json-not-object",
            lambda: AsyncBind.from_env({"ASYNCBIND_BINDS": json.dumps([pg_text])}),
        ),
        (
            "env-sync-driver",
            lambda: AsyncBind.from_env({"ASYNCBIND_BIND_X": text_with(drivername="mysql+pymysql")}),
        ),
        (
            "env-bad-options",
            lambda: AsyncBind.from_env(
                {
                    "ASYNCBIND_DATABASE_URL": pg_text,
                    "ASYNCBIND_ENGINE_OPTIONS": '{"pool_size": "x"}',
                }
            ),
        ),
    ]


CONFIG_ERRORS = [
    "sync-driver",
    "sync-driver-mysql",
    "sync-driver-url",
    "sync-driver-query-password",
    "unknown-dialect",
    "unknown-driver",
    "bad-port",
    "garbage",
    "bad-option-type",
    "unknown-option",
    "bad-timeout",
    "connect-args-not-a-mapping",
    "url-in-engine-options",
    "bind-without-url",
    "default-twice",
    "pool-option-its-pool-does-not-take",
    "shared-connect-args-of-another-driver",
    "reserved-key",
    "flask-binds-not-a-dict",
    "flask-sync-driver",
    "env-bad-json",
    "env-json-not-object",
    "env-sync-driver",
    "env-bad-options",
]


@pytest.mark.parametrize("case", CONFIG_ERRORS)
async def test_config_errors_never_show_the_password(
    case: str, users: dict[str, User], capture: Callable[[], int]
) -> None:
    make = dict(_config_errors(users))[case]
    with pytest.raises(ConfigError) as info:
        make()
    assert str(info.value).strip()
    assert_exception_clean(info.value)
    capture()


def test_config_error_cases_are_all_listed() -> None:
    fake = {
        "pg": User("postgresql", "u", "d"),
        "maria": User("mysql", "u", "d"),
    }
    assert [name for name, _ in _config_errors(fake)] == CONFIG_ERRORS


def test_demo_output_never_shows_the_password(tmp_path: Any) -> None:
    """``python -m asyncbind demo`` with configuration holding the password in its environment."""
    secret_url = f"postgresql://u:{urllib.parse.quote(PASSWORD, safe='')}@127.0.0.1:1/db"
    env = {
        **os.environ,
        "ASYNCBIND_DATABASE_URL": secret_url,
        "ASYNCBIND_BIND_OTHER": secret_url,
        "DATABASE_URL": secret_url,
        "SQLALCHEMY_DATABASE_URI": secret_url,
    }
    done = subprocess.run(
        [sys.executable, "-m", "asyncbind", "demo", "--dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:] if not leaks(done.stderr) else "(stderr leaks)"
    assert "statements per bind" in done.stdout
    assert_clean("demo stdout", done.stdout)
    assert_clean("demo stderr", done.stderr)
