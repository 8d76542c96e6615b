"""A process that commits across two binds with ``twophase=True`` and stops at a given step, for
``test_twophase.py`` to kill with SIGKILL there.

``python twophase_child.py POSTGRESQL_URL MYSQL_URL NAME STEP ROW [MORE_URL]``: the default bind
is PostgreSQL (table ``items``), bind ``users`` is MariaDB (table ``users``); both get ``ROW``.
With ``MORE_URL`` (another MariaDB database), bind ``more`` (table ``members``) gets it too.
Steps: ``prepared`` (every bind prepared, the decision not recorded yet), ``decided`` (the
decision recorded, nothing committed), ``committed-one`` (the default bind committed, the other
not). At the step it prints ``XID <bind key> <transaction id>`` for each bind prepared, then
``PAUSED``, and waits for a line on stdin, so that the test kills it there, or lets it go on
after doing something meanwhile. At the end it prints ``DONE``, or ``FAILED <error type>`` when
the commit failed.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import sqlalchemy as sa

from asyncbind import AsyncBind

#: The transaction id each bind prepared, by bind key.
PREPARED: dict[str | None, str] = {}


def pause() -> None:
    for key, xid in PREPARED.items():
        print(f"XID {key} {xid}")
    print("PAUSED", flush=True)
    sys.stdin.readline()  # blocks the loop on purpose: the test kills the process here


def make_db(
    postgresql: str, mysql: str, name: str, more: str | None
) -> tuple[AsyncBind, list[sa.Table]]:
    binds = {"users": mysql} if more is None else {"users": mysql, "more": more}
    db = AsyncBind(postgresql, binds=binds, twophase_name=name)
    tables = [
        db.Table("items", sa.Column("name", sa.String(50), primary_key=True)),
        db.Table("users", sa.Column("name", sa.String(50), primary_key=True), bind_key="users"),
    ]
    if more is not None:
        tables.append(
            db.Table("members", sa.Column("name", sa.String(50), primary_key=True), bind_key="more")
        )
    return db, tables


async def main(
    postgresql: str, mysql: str, name: str, step: str, row: str, more: str | None = None
) -> None:
    db, tables = make_db(postgresql, mysql, name, more)
    commits: list[Any] = []

    def before_decision(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if step == "prepared" and statement.startswith("INSERT INTO asyncbind_twophase"):
            pause()

    def before_commit(conn: Any, xid: Any, is_prepared: bool) -> None:
        commits.append(xid)
        if (step == "decided" and len(commits) == 1) or (
            step == "committed-one" and len(commits) == 2
        ):
            pause()

    sa.event.listen(db.engine.sync_engine, "before_cursor_execute", before_decision)
    for key, engine in db.engines.items():
        sa.event.listen(engine.sync_engine, "commit_twophase", before_commit)
        sa.event.listen(
            engine.sync_engine,
            "prepare_twophase",
            lambda conn, xid, key=key: PREPARED.__setitem__(key, xid),
        )
    async with db:
        async with db.session(twophase=True) as session:
            for table in tables:
                await session.execute(sa.insert(table).values(name=row))
            try:
                await session.commit()
            except Exception as exc:
                print(f"FAILED {type(exc).__name__}", flush=True)
                return
    print("DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
