"""Real replication for tests and benchmarks: a PostgreSQL primary with a streaming hot standby,
and a MariaDB primary with a replica reading its binlog. Private servers on the caller's ports
(see :mod:`privateservers`), never the shared ones.

    with postgresql_replication(25510) as (primary, standby):    # ports 25510, 25511
        ...
    with mariadb_replication(25520) as (primary, replica):       # ports 25520, 25521
        ...

Both stop and remove their servers when the block ends, on error too. :func:`wait_until` polls a
condition with a guard timeout: replication is waited on, never slept on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from privateservers import HOST, MariaDBServer, PostgreSQLServer, PostgreSQLStandby

__all__ = ["mariadb_replication", "mysql_execute", "postgresql_replication", "wait_until"]

#: Seconds a condition on replication may take before the test fails.
GUARD = 30.0


@contextlib.contextmanager
def postgresql_replication(port: int) -> Iterator[tuple[PostgreSQLServer, PostgreSQLStandby]]:
    """A primary on ``port`` and a hot standby of it, made with pg_basebackup, on ``port + 1``."""
    with PostgreSQLServer(port) as primary:
        with PostgreSQLStandby(port + 1, primary) as standby:
            yield primary, standby


def mysql_execute(port: int, *statements: str) -> list[dict[str, Any]]:
    """Run ``statements`` as root on the MariaDB server on ``port`` (blocking); the rows of the
    last one, as dicts."""
    import pymysql  # type: ignore[import-untyped]

    connection = pymysql.connect(
        host=HOST,
        port=port,
        user="root",
        password="",
        autocommit=True,
        connect_timeout=10,
        cursorclass=pymysql.cursors.DictCursor,
    )
    try:
        with connection.cursor() as cursor:
            rows: list[dict[str, Any]] = []
            for statement in statements:
                cursor.execute(statement)
                rows = list(cursor.fetchall())
            return rows
    finally:
        connection.close()


@contextlib.contextmanager
def mariadb_replication(port: int) -> Iterator[tuple[MariaDBServer, MariaDBServer]]:
    """A primary on ``port`` writing a binlog (server_id 1) and a replica of it on ``port + 1``
    (server_id 2), replicating from the start of the primary's binlog."""
    primary_options = ("--log-bin=mariadb-bin", "--server-id=1", "--binlog-format=ROW")
    with MariaDBServer(port, options=primary_options) as primary:
        with MariaDBServer(port + 1, options=("--server-id=2", "--relay-log=relay-bin")) as replica:
            mysql_execute(
                replica.port,
                f"CHANGE MASTER TO MASTER_HOST='{HOST}', MASTER_PORT={primary.port}, "
                "MASTER_USER='root', MASTER_PASSWORD='', MASTER_USE_GTID=slave_pos, "
                "MASTER_CONNECT_RETRY=1",
                "START SLAVE",
            )
            deadline = time.monotonic() + GUARD
            while True:
                status = mysql_execute(replica.port, "SHOW SLAVE STATUS")[0]
                if status["Slave_IO_Running"] == "Yes" and status["Slave_SQL_Running"] == "Yes":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"MariaDB replication did not start: {status}")
                time.sleep(0.05)
            yield primary, replica


async def wait_until(
    condition: Callable[[], Awaitable[bool]], what: str, guard: float = GUARD
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``guard`` seconds."""
    deadline = time.monotonic() + guard
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {guard:g} s")
        await asyncio.sleep(0.05)
