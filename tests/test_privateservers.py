"""Private database servers (``tests/privateservers.py``): started, used through asyncbind,
restarted, killed and started again, and always gone afterwards, process and directory.

One server per kind is shared by the module (each takes a second or more to make); every test
leaves it running. Ports 25470-25473 are this module's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import IN_CI

from asyncbind import AsyncBind, BindUnavailableError
from tests.privateservers import (
    MariaDBServer,
    PostgreSQLServer,
    PrivateServer,
    ServerNotInstalledError,
    ServerStartError,
    alive,
    find_mariadb,
    find_postgresql,
)

KINDS: dict[str, type[PrivateServer]] = {"postgresql": PostgreSQLServer, "mysql": MariaDBServer}
#: The shared server of each kind, and a second port for servers made by one test.
PORTS = {"postgresql": (25470, 25472), "mysql": (25471, 25473)}


def new_server(kind: type[PrivateServer], port: int) -> PrivateServer:
    """A server of ``kind``, not started; skips the test (fails it under CI) without binaries."""
    try:
        return kind(port)
    except ServerNotInstalledError as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(
    scope="module",
    params=[pytest.param(kind, id=kind, marks=getattr(pytest.mark, kind)) for kind in KINDS],
)
def kind(request: pytest.FixtureRequest) -> str:
    """Each test that uses it runs once per kind of server: postgresql, mysql."""
    return str(request.param)


@pytest.fixture(scope="module")
def shared_server(kind: str) -> Iterator[PrivateServer]:
    """The module's server of each kind; once removed, none of its processes is left."""
    server = new_server(KINDS[kind], PORTS[kind][0])
    with server:
        yield server
        processes = server.process_ids()
        directory = server.directory
    assert processes and [pid for pid in processes if alive(pid)] == []
    assert directory is not None and not directory.exists()


@pytest.fixture
def server(shared_server: PrivateServer) -> PrivateServer:
    """The shared server, running (a failed test may have left it stopped)."""
    if shared_server.pid is None:
        shared_server.start()
    return shared_server


async def new_database_on(server: PrivateServer, make_db: Callable[..., AsyncBind]) -> sa.URL:
    """A new database on ``server``, made through asyncbind."""
    name = f"asyncbind_{uuid.uuid4().hex[:12]}"
    admin = make_db(server.url())
    async with admin.engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(sa.text(f"CREATE DATABASE {name}"))
    await admin.dispose()
    return server.url(name)


async def names_in(db: AsyncBind) -> list[str]:
    async with db.session() as session:
        return list(await session.scalars(sa.text("SELECT name FROM things ORDER BY name")))


async def add(db: AsyncBind, name: str) -> None:
    async with db.session() as session:
        await session.execute(sa.text("INSERT INTO things (name) VALUES (:name)"), {"name": name})
        await session.commit()


async def test_connect_restart_kill_and_start_again(
    server: PrivateServer, make_db: Callable[..., AsyncBind]
) -> None:
    url = await new_database_on(server, make_db)
    assert url.host == "127.0.0.1" and url.port == server.port
    db = make_db(url, engine_options={"pool_pre_ping": True, "connect_timeout": 5})
    async with db.engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE things (name VARCHAR(20) PRIMARY KEY)"))
    await add(db, "before restart")

    before = server.process_ids()
    await server.arestart()
    assert [pid for pid in before if alive(pid)] == []
    assert server.pid is not None and server.pid not in before
    # The pooled connection died with the old server; the bind reconnects.
    assert await names_in(db) == ["before restart"]
    await add(db, "before kill")

    before = server.process_ids()
    await server.akill()
    assert server.pid is None and [pid for pid in before if alive(pid)] == []
    with pytest.raises(BindUnavailableError) as caught:
        await names_in(db)
    assert caught.value.bind_key is None

    await server.astart()
    # Both commits survived: the clean shutdown and the SIGKILL.
    assert await names_in(db) == ["before kill", "before restart"]


async def test_removed_on_error_with_no_process_or_directory_left(kind: str) -> None:
    server = new_server(KINDS[kind], PORTS[kind][1])
    with pytest.raises(ZeroDivisionError):
        async with server:
            processes = server.process_ids()
            directory = server.directory
            assert directory is not None and (directory / "data").is_dir()
            1 / 0  # noqa: B018
    assert processes and [pid for pid in processes if alive(pid)] == []
    assert directory is not None and not directory.exists()
    assert server.pid is None and server.directory is None


def test_a_port_in_use_is_refused_before_anything_is_made(server: PrivateServer) -> None:
    other = new_server(type(server), server.port)
    with pytest.raises(ServerStartError) as caught:
        other.start()
    message = str(caught.value)
    assert f"Port {server.port} on 127.0.0.1 is already in use" in message
    assert "Pick another port" in message
    assert other.directory is None and other.pid is None
    assert server.pid is not None and alive(server.pid)


class _BadSetting(PostgreSQLServer):
    def _command(self, data: Path) -> list[str]:
        return [*super()._command(data), "-c", "shared_buffers=lots"]


@pytest.mark.postgresql
def test_a_server_that_exits_while_starting_reports_its_log() -> None:
    bad = new_server(_BadSetting, PORTS["postgresql"][1])
    with pytest.raises(ServerStartError) as caught, bad:
        pass
    message = str(caught.value)
    assert f"The PostgreSQL server for port {bad.port} exited with status 1" in message
    assert 'invalid value for parameter "shared_buffers": "lots"' in message
    assert bad.directory is None and bad.pid is None


def test_missing_binaries_name_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(ServerNotInstalledError) as caught:
        find_postgresql(tmp_path)
    assert f"No PostgreSQL server binaries under '{tmp_path}'" in str(caught.value)
    assert "apt-get install postgresql" in str(caught.value)
    with pytest.raises(ServerNotInstalledError) as caught:
        find_mariadb(str(tmp_path))
    assert f"No MariaDB server binaries on '{tmp_path}'" in str(caught.value)
    assert "apt-get install mariadb-server" in str(caught.value)
