"""The database servers the benchmarks use, their versions, and throw-away databases on them.

Servers come from ``ASYNCBIND_TEST_POSTGRESQL_URL`` and ``ASYNCBIND_TEST_MYSQL_URL`` (defaults: the
local servers, ``postgres`` and ``root`` with no password). Only loopback hosts are accepted: the
benchmarks create and drop databases and flood the server with queries.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

POSTGRESQL = "postgresql"
MYSQL = "mysql"
SQLITE = "sqlite"
NAMES = {POSTGRESQL: "PostgreSQL", MYSQL: "MariaDB", SQLITE: "SQLite"}
#: The asyncio driver each backend is measured with.
DRIVERS = {POSTGRESQL: "asyncpg", MYSQL: "aiomysql", SQLITE: "aiosqlite"}

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def server_url(backend: str) -> sa.URL:
    """The admin URL of ``backend``'s server, without a driver."""
    if backend == POSTGRESQL:
        raw = os.environ.get(
            "ASYNCBIND_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432"
        )
        url = sa.make_url(raw)
        url = url.set(drivername="postgresql", database=url.database or "postgres")
    else:
        raw = os.environ.get("ASYNCBIND_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306")
        url = sa.make_url(raw)
        url = url.set(drivername="mysql", database=None)
    if url.host not in _LOOPBACK:
        raise SystemExit(
            f"{NAMES[backend]} server {url.render_as_string(hide_password=True)!r} is not on "
            "127.0.0.1; the benchmarks only run against a local server."
        )
    return url


def driver_arguments(backend: str, url: sa.URL) -> dict[str, Any]:
    """``url`` as keyword arguments of asyncpg's or aiomysql's ``connect()`` / ``create_pool()``."""
    if backend == POSTGRESQL:
        return {
            "host": url.host,
            "port": url.port or 5432,
            "user": url.username,
            "password": url.password,
            "database": url.database,
        }
    arguments = {
        "host": url.host or "127.0.0.1",
        "port": url.port or 3306,
        "user": url.username or "root",
        "password": url.password or "",
    }
    if url.database:
        arguments["db"] = url.database
    return arguments


async def admin(backend: str, *statements: str) -> list[tuple[object, ...]]:
    """Run statements on ``backend``'s server with the raw driver; the last one's rows."""
    url = server_url(backend)
    rows: list[tuple[object, ...]] = []
    if backend == POSTGRESQL:
        import asyncpg

        conn = await asyncpg.connect(**driver_arguments(backend, url), timeout=10)
        try:
            for statement in statements:
                rows = [tuple(r) for r in await conn.fetch(statement)]
        finally:
            await conn.close()
    else:
        import aiomysql

        conn = await aiomysql.connect(
            **driver_arguments(backend, url), connect_timeout=10, autocommit=True
        )
        try:
            async with conn.cursor() as cursor:
                for statement in statements:
                    await cursor.execute(statement)
                    rows = list(await cursor.fetchall())
        finally:
            conn.close()
    return rows


_reachable: dict[str, str | None] = {}


async def unreachable(backend: str) -> str | None:
    """Why ``backend``'s server cannot be used, or None when it can."""
    if backend == SQLITE:
        return None
    if backend not in _reachable:
        try:
            await admin(backend, "SELECT 1")
            _reachable[backend] = None
        except Exception as exc:
            _reachable[backend] = f"{NAMES[backend]} not reachable ({type(exc).__name__})"
    return _reachable[backend]


@contextlib.asynccontextmanager
async def databases(suite: str, *backends: str) -> AsyncIterator[dict[str, sa.URL]]:
    """New empty databases, one per backend, dropped at the end: their URLs without a driver."""
    made: list[tuple[str, str]] = []
    tmp = tempfile.TemporaryDirectory(prefix=f"asyncbind_bench_{suite}_")
    urls: dict[str, sa.URL] = {}
    try:
        for backend in backends:
            name = f"asyncbind_bench_{suite}_{uuid.uuid4().hex[:8]}"
            if backend == SQLITE:
                urls[backend] = sa.make_url(f"sqlite:///{Path(tmp.name) / (name + '.sqlite')}")
                continue
            quote = '"' if backend == POSTGRESQL else "`"
            extra = " CHARACTER SET utf8mb4" if backend == MYSQL else ""
            await admin(backend, f"CREATE DATABASE {quote}{name}{quote}{extra}")
            made.append((backend, name))
            urls[backend] = server_url(backend).set(database=name)
        yield urls
    finally:
        for backend, name in made:
            if backend == POSTGRESQL:
                await admin(backend, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:
                await admin(backend, f"DROP DATABASE IF EXISTS `{name}`")
        tmp.cleanup()


def with_driver(url: sa.URL, driver: str) -> sa.URL:
    """``url`` with an explicit driver, and utf8mb4 for MySQL drivers (as asyncbind sets)."""
    backend = url.get_backend_name()
    url = url.set(drivername=f"{backend}+{driver}")
    if backend == MYSQL and "charset" not in url.query:
        url = url.update_query_dict({"charset": "utf8mb4"})
    return url


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


_PACKAGES = (
    "asyncbind",
    "SQLAlchemy",
    "asyncpg",
    "aiomysql",
    "asyncmy",
    "PyMySQL",
    "aiosqlite",
    "psycopg",
    "Flask-SQLAlchemy",
    "sqlalchemy-bind-manager",
    "matplotlib",
)


def _cpu() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


async def print_header(title: str, quick: bool) -> None:
    """Versions, machine and servers, printed once per run."""
    print(f"== asyncbind benchmarks: {title}{' (quick)' if quick else ''}")
    print(
        f"machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPU(s) ({_cpu()}), "
        f"Python {sys.version.split()[0]}"
    )
    print("packages: " + ", ".join(f"{p} {_version(p)}" for p in _PACKAGES))
    servers = [f"SQLite {sqlite3.sqlite_version}"]
    for backend, query in ((POSTGRESQL, "SHOW server_version"), (MYSQL, "SELECT VERSION()")):
        reason = await unreachable(backend)
        if reason:
            servers.append(reason)
            continue
        version = (await admin(backend, query))[0][0]
        url = server_url(backend).render_as_string(hide_password=True)
        servers.append(f"{NAMES[backend]} {version} at {url}")
    print("servers: " + "; ".join(servers))
