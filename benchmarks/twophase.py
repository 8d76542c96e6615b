"""twophase: commits per second of a write to two binds (PostgreSQL + MariaDB), with and without
``twophase=True``.

Each commit inserts one row in each bind in a session of its own, one commit after the other (a
two-phase commit is a chain of round trips: its cost is latency, not CPU). Cases, in one run:
asyncbind's ordered one-phase commit (the baseline); SQLAlchemy's own
``AsyncSession(binds=..., twophase=True)``, which prepares and commits but records no decision
and so cannot be recovered; asyncbind's two-phase commit, which also records the decision before
the first COMMIT and deletes it after the last (two more round trips to the log bind).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from asyncbind import AsyncBind

from .harness import Table
from .servers import DRIVERS, MYSQL, NAMES, POSTGRESQL, databases, unreachable, with_driver


async def main(options: Any) -> None:
    count = 20 if options.quick else 200
    repeat = options.repeat or (2 if options.quick else 7)
    missing = [NAMES[b] for b in (POSTGRESQL, MYSQL) if await unreachable(b)]
    if missing:
        print(f"\ntwophase: skipped ({', '.join(missing)} not reachable)")
        return
    async with databases("twophase", POSTGRESQL, MYSQL) as urls:
        db = AsyncBind(urls[POSTGRESQL], binds={"users": urls[MYSQL]}, twophase_name="bench")
        items = db.Table(
            "items",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(50)),
        )
        users = db.Table(
            "users",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(50)),
            bind_key="users",
        )
        await db.create_all()
        engines = {
            items: create_async_engine(with_driver(urls[POSTGRESQL], DRIVERS[POSTGRESQL])),
            users: create_async_engine(with_driver(urls[MYSQL], DRIVERS[MYSQL])),
        }
        try:

            def writes(make: Callable[[], AsyncSession], doc: str) -> Callable[[], Awaitable[None]]:
                async def run() -> None:
                    for _ in range(count):
                        async with make() as session:
                            await session.execute(sa.insert(items).values(name="x"))
                            await session.execute(sa.insert(users).values(name="x"))
                            await session.commit()

                run.__doc__ = doc
                return run

            table = Table(
                f"twophase: {count} commits per run, each a row in PostgreSQL and one in MariaDB, "
                f"one after the other, {repeat} runs",
                repeat=repeat,
                ops=count,
                unit="commit",
            )
            table.case(
                "one-phase",
                writes(db.session, "asyncbind, one-phase commit in bind order (baseline)"),
            )
            table.case(
                "sqlalchemy",
                writes(
                    lambda: AsyncSession(binds=engines, twophase=True),  # type: ignore[arg-type]
                    "plain SQLAlchemy twophase=True, no decision recorded",
                ),
                vs=["one-phase"],
            )
            table.case(
                "two-phase",
                writes(
                    lambda: db.session(twophase=True),
                    "asyncbind twophase=True, decision recorded",
                ),
                vs=["one-phase", "sqlalchemy"],
            )
            await table.run()
        finally:
            for engine in engines.values():
                await engine.dispose()
            await db.dispose()
