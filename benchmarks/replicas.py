"""replicas: read throughput of a bind with 0, 1 and 2 read replicas.

A private PostgreSQL primary and two hot standbys streaming from it (``tests/privateservers.py``,
ports 25540-25542), one ``item`` table. One operation is one request: a session, an ORM select of
one row by id, the session closed; 32 concurrent tasks. "0 replicas" reads from the primary; with
replicas, asyncbind sends each read to one of them (round robin).

Every server runs on this one machine, sharing its cores with the client. So the figure shows
what routing to replicas costs per read (choosing a replica, the pooled connection's ping) and
that reads do spread over the replicas; it does not show the capacity that replicas on machines of
their own add, which is the reason to have them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from asyncbind import AsyncBind
from tests.privateservers import (
    PostgreSQLServer,
    PostgreSQLStandby,
    ServerNotInstalledError,
    ServerStartError,
)

from . import lookups
from .harness import Table

PORT = 25540  # the primary; its standbys on the next two ports
ROWS = 1_000
#: Seconds the standbys may take to replay the table.
GUARD = 60.0


def _database(url: sa.URL, replicas: list[sa.URL]) -> tuple[AsyncBind, Any]:
    db = AsyncBind(
        {"url": url, "replicas": replicas},
        engine_options={"pool_size": lookups.POOL, "max_overflow": 0},
    )

    class Item(db.Model):
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(sa.String(50))

    return db, Item


async def _replayed(url: sa.URL) -> None:
    """Wait until the standby at ``url`` has every row (polled, bounded by GUARD)."""
    db, item = _database(url, [])
    deadline = time.monotonic() + GUARD
    try:
        while True:
            try:
                async with db.engine.connect() as conn:
                    count = await conn.scalar(sa.select(sa.func.count()).select_from(item))
                if count == ROWS:
                    return
            except sa.exc.DBAPIError:
                pass  # the table has not arrived yet
            if time.monotonic() > deadline:
                raise SystemExit(f"replicas: a standby did not replay the table in {GUARD:g}s")
            await asyncio.sleep(0.05)
    finally:
        await db.dispose()


async def main(options: Any) -> None:
    count = 300 if options.quick else 3_000
    repeat = options.repeat or (2 if options.quick else 7)
    try:
        primary = PostgreSQLServer(PORT)
        standbys = [PostgreSQLStandby(PORT + n, primary) for n in (1, 2)]
    except ServerNotInstalledError as exc:
        print(f"\nreplicas: skipped ({exc})")
        return
    started: list[PostgreSQLServer] = []
    try:
        try:
            for server in (primary, *standbys):
                await server.astart()
                started.append(server)
        except ServerStartError as exc:
            print(f"\nreplicas: skipped (a server did not start: {str(exc).splitlines()[0]})")
            return
        url = primary.url("postgres")
        setup, item = _database(url, [])
        await setup.create_all()
        async with setup.engine.begin() as conn:
            await conn.execute(
                sa.insert(item), [{"id": i, "name": f"item {i}"} for i in range(1, ROWS + 1)]
            )
        await setup.dispose()
        replica_urls = [standby.url("postgres") for standby in standbys]
        for replica in replica_urls:
            await _replayed(replica)

        made = {n: _database(url, replica_urls[:n]) for n in (0, 1, 2)}
        table = Table(
            f"replicas: {count} reads per run, {lookups.TASKS} tasks, pool of {lookups.POOL} per "
            f"server, {repeat} runs. ALL SERVERS ON THIS ONE MACHINE: the ratio is the cost of "
            "routing to replicas, not the capacity replicas on their own machines add",
            repeat=repeat,
            ops=count,
            unit="read",
        )
        for n, (db, model) in made.items():

            async def read(key: int, db: AsyncBind = db, model: Any = model) -> None:
                async with db.session() as session:
                    (await session.execute(sa.select(model).where(model.id == key))).one()

            async def run(read: Any = read) -> None:
                await lookups.run_concurrently(read, count)

            label = "primary only" if n == 0 else f"{n} replica{'s' * (n > 1)}"
            run.__doc__ = f"{label}: session, ORM select by id"
            table.case(f"{n} replicas", run, vs=[] if n == 0 else ["0 replicas"])
        try:
            await table.run()
            for n, (db, _) in made.items():
                pools = db.pool_status()[None]
                spread = ", ".join(f"{p.checked_in}" for p in pools.replicas)
                if n:
                    print(f"  {n} replica(s): open connections per replica: {spread}")
        finally:
            for db, _ in made.values():
                await db.dispose()
    finally:
        for server in reversed(started):
            await server.aremove()
        for server in (primary, *standbys):
            if server not in started:
                await server.aremove()
