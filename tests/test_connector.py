"""Connecting: within ``connect_timeout``, and a failure that names the bind, never the password.
(A password the driver's error repeats: ``test_secrets_latin1.py``; a refused login and a missing
database: ``test_causes.py``; cancellations mid-handshake: ``test_cancellation.py``.)"""

from __future__ import annotations

import asyncio
import pickle
import socket
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from sqlalchemy import exc as sa_exc

from asyncbind import AsyncBind, BindErrors, BindUnavailableError, ConfigError, connector

GUARD = 60  # seconds: a hang fails the test instead of stopping the run


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    "scheme", [pytest.param("postgresql", id="postgresql"), pytest.param("mysql", id="mysql")]
)
async def test_unreachable_bind_fails_within_connect_timeout_naming_it(
    scheme: str, silent_port: int, make_db: Callable[..., AsyncBind]
) -> None:
    db = make_db(
        "sqlite://",
        binds={
            "silent": {
                "url": f"{scheme}://u:pw-secret@127.0.0.1:{silent_port}/db",
                "connect_timeout": 0.3,
            },
            "refused": f"{scheme}://u:pw-secret@127.0.0.1:1/db",
        },
    )
    async with db.session() as session:
        for key in ("silent", "refused"):
            async with asyncio.timeout(20):
                with pytest.raises(BindUnavailableError) as info:
                    await session.execute(sa.text("SELECT 1"), bind_arguments={"bind_key": key})
            assert info.value.bind_key == key and f"Bind {key!r} is unavailable" in str(info.value)
            assert isinstance(info.value, sa_exc.OperationalError)
            assert "pw-secret" not in str(info.value) and "pw-secret" not in repr(info.value)
        assert (await session.execute(sa.text("SELECT 1"))).scalar() == 1  # the others still work


@pytest.mark.parametrize(
    "scheme", [pytest.param("mysql", id="aiomysql"), pytest.param("mysql+asyncmy", id="asyncmy")]
)
async def test_a_mysql_bind_without_connect_timeout_waits_the_default_at_most(
    scheme: str,
    silent_port: int,
    make_db: Callable[..., AsyncBind],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiomysql waits for ever for a server that accepts the connection and never answers (and
    asyncmy bounds the TCP connection only): without a connect_timeout of their own, MySQL and
    MariaDB binds wait PyMySQL's 10 s, an app's start-up (create_all) included; the driver's own
    connect_timeout, when given, takes its place and bounds the handshake too."""
    assert connector.DEFAULT_CONNECT_TIMEOUTS == {"aiomysql": 10.0, "asyncmy": 10.0}
    driver = "asyncmy" if scheme.endswith("asyncmy") else "aiomysql"
    monkeypatch.setitem(connector.DEFAULT_CONNECT_TIMEOUTS, driver, 0.5)  # a shorter test
    url = f"{scheme}://u:pw-secret@127.0.0.1:{silent_port}/db"
    db = make_db(
        "sqlite://",
        binds={"silent": url, "driver": {"url": url, "connect_args": {"connect_timeout": 1}}},
    )
    with pytest.raises(BindErrors) as failed:
        async with asyncio.timeout(GUARD):
            await db.create_all(bind_key="silent")
    error = failed.value.errors["silent"]
    assert isinstance(error, BindUnavailableError)
    assert str(error).startswith(
        f"Bind 'silent' is unavailable (TimeoutError: no connection to 127.0.0.1:{silent_port} "
        f"within 0.5 s, the default connect_timeout of {driver} binds: set the bind's "
        "'connect_timeout' to wait longer)"
    )
    with pytest.raises(BindUnavailableError) as info:
        async with asyncio.timeout(GUARD), db.engines["driver"].connect():
            pass
    assert "TimeoutError: no connection to 127.0.0.1:" in str(info.value)
    assert "within connect_timeout=1s)" in str(info.value)


@pytest.mark.parametrize(
    "scheme",
    [
        pytest.param("mysql", id="aiomysql"),
        pytest.param("mysql+asyncmy", id="asyncmy"),
        pytest.param("postgresql", id="asyncpg"),
    ],
)
async def test_a_failure_to_connect_names_the_host_port_and_what_the_network_said(
    scheme: str, silent_port: int, make_db: Callable[..., AsyncBind]
) -> None:
    """aiomysql and asyncmy say "Can't connect to MySQL server on '127.0.0.1'" whether the
    port is closed or the host unknown; asyncpg names no host for a name it cannot resolve."""
    free = closed_port()
    db = make_db(
        "sqlite://",
        binds={
            "refused": f"{scheme}://u:pw-secret@127.0.0.1:{free}/db",
            "unknown": f"{scheme}://u:pw-secret@no-such-host.invalid/db",
            "silent": {
                "url": f"{scheme}://u:pw-secret@127.0.0.1:{silent_port}/db",
                "connect_timeout": 0.3,
            },
        },
    )
    default_port = 5432 if scheme.startswith("postgresql") else 3306
    expected = {
        "refused": f"is unavailable (connection to 127.0.0.1:{free} refused; "
        "ConnectionRefusedError: ",
        "unknown": f"is unavailable (host name of no-such-host.invalid:{default_port} not "
        "resolved; gaierror: ",
        "silent": f"is unavailable (TimeoutError: no connection to 127.0.0.1:{silent_port} "
        "within connect_timeout=0.3s)",
    }
    for key, words in expected.items():
        with pytest.raises(BindUnavailableError) as info:
            async with asyncio.timeout(GUARD), db.engines[key].connect():
                pass
        message = str(info.value)
        assert message.startswith(f"Bind {key!r} {words}"), message
        assert "Check that its server is up and reachable" in message
        assert "pw-secret" not in message and "pw-secret" not in repr(info.value)
        again = pickle.loads(pickle.dumps(info.value))
        assert str(again) == message and again.reason == info.value.reason


@pytest.mark.postgresql
@pytest.mark.mysql
async def test_connect_args_a_driver_does_not_take_are_refused_in_the_constructor(
    new_database: NewDatabase,
) -> None:
    """Shared connect_args reach every bind: a key that one bind's driver does not take is a
    ConfigError naming that bind, before any connection; in the binds' own options they work."""
    postgresql, mysql = await new_database("postgresql"), await new_database("mysql")
    settings = {"server_settings": {"application_name": "shop"}}
    binds = {"legacy": mysql, "cache": "sqlite://"}
    with pytest.raises(ConfigError) as info:
        AsyncBind.from_config(
            {
                "SQLALCHEMY_DATABASE_URI": postgresql,
                "SQLALCHEMY_ENGINE_OPTIONS": {"connect_args": settings},
                "SQLALCHEMY_BINDS": binds,
            }
        )
    message = str(info.value)
    assert "2 problems" in message and "The default bind" not in message
    for bind, driver in (("Bind 'legacy'", "'aiomysql'"), ("Bind 'cache'", "'aiosqlite'")):
        line = next(line for line in message.splitlines() if bind in line)
        assert "connect_args key 'server_settings'" in line and driver in line
        assert "is not an argument of its driver" in line
        assert "shared by every bind" in line and "SQLALCHEMY_BINDS[None]" in line

    db = AsyncBind.from_config(
        {
            "SQLALCHEMY_DATABASE_URI": postgresql,
            "SQLALCHEMY_BINDS": {None: {"connect_args": settings}, **binds},
        }
    )
    async with db:
        async with db.engine.connect() as conn:
            assert await conn.scalar(sa.text("SHOW application_name")) == "shop"
        for key in ("legacy", "cache"):
            async with db.engines[key].connect() as conn:
                assert await conn.scalar(sa.text("SELECT 1")) == 1


def test_a_binds_own_connect_args_are_checked_unless_it_connects_itself() -> None:
    with pytest.raises(ConfigError) as info:
        AsyncBind(
            {"url": "mysql://u:hunter2@h/db", "connect_args": {"server_settings": {}, "ssl": None}}
        )
    message = str(info.value)
    assert "The default bind: connect_args key 'server_settings' is not an argument" in message
    assert "'aiomysql'" in message and "'ssl'" not in message and "hunter2" not in message
    with pytest.raises(ConfigError, match="connect_args keys 'nope', 'typo' are not arguments"):
        AsyncBind({"url": "postgresql://h/db", "connect_args": {"nope": 1, "typo": 2}})
    AsyncBind(  # what SQLAlchemy's asyncpg adapter takes itself, and sqlite3's own
        "postgresql://h/db",
        binds={"s": {"url": "sqlite://", "connect_args": {"check_same_thread": False}}},
        engine_options={"connect_args": {"prepared_statement_cache_size": 0, "timeout": 5}},
    )

    async def connect(**kwargs: object) -> None:
        raise AssertionError("not called")

    AsyncBind({"url": "postgresql://h/db", "connect_args": {"async_creator_fn": connect, "x": 1}})


@pytest.mark.postgresql
async def test_an_argument_the_driver_refuses_when_connecting_names_the_bind(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """What only the driver checks (here a URL query parameter, which SQLAlchemy passes on to
    asyncpg.connect()) is refused at the first connection, as a ConfigError naming the bind."""
    url = sa.make_url(await new_database("postgresql"))
    url = url.set(password="pw-secret").update_query_dict({"no_such_argument": "1"})
    db = make_db("sqlite://", binds={"reports": url})
    with pytest.raises(ConfigError) as info:
        async with db.engines["reports"].connect():
            pass
    message = str(info.value)
    assert message.startswith("Bind 'reports': asyncpg refused its connect arguments")
    assert "no_such_argument" in message and "pw-secret" not in message
    assert isinstance(info.value.__cause__, TypeError)
