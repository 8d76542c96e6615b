"""The demo (``asyncbind demo``): three SQLite binds, one session, and where each statement went."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from . import AsyncBind, __version__

__all__ = ["demo", "run_demo"]


async def demo(folder: Path, out: Any = sys.stdout) -> dict[Any, int]:
    """Run the demo in ``folder``; return how many statements each bind received.

    The demo's tables are dropped first, so a second run in the same folder starts afresh and
    prints the same report.
    """
    db = AsyncBind(
        f"sqlite:///{folder / 'main.db'}",
        binds={
            "users": f"sqlite:///{folder / 'users.db'}",
            "audit": {"url": f"sqlite:///{folder / 'audit.db'}", "pool_recycle": 3600},
        },
    )

    class User(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "users"
        __tablename__ = "users"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))

    class Order(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "orders"
        id: Mapped[int] = mapped_column(primary_key=True)
        user_id: Mapped[int]
        item: Mapped[str] = mapped_column(sa.String(50))

    audit = db.Table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("event", sa.String(100)),
        bind_key="audit",
    )

    async with db:
        await db.drop_all()  # the tables of an earlier run; not part of the report
    sent: list[tuple[Any, str]] = []
    for key, engine in db.engines.items():

        def record(conn: Any, cursor: Any, sql: str, *args: Any, _key: Any = key) -> None:
            sent.append((_key, " ".join(sql.split())))

        sa.event.listen(engine.sync_engine, "before_cursor_execute", record)

    def say(text: str = "") -> None:
        print(text, file=out)

    say(f"asyncbind {__version__} demo: three SQLite databases in {folder}")
    for key, engine in db.engines.items():
        say(f"  bind {key!r:8} -> {engine.url.database}")
    async with db:
        await db.create_all()
        say("\ncreate_all(): tables created in every bind, concurrently")
        async with db.session() as session:
            session.add_all([User(id=1, name="ada"), User(id=2, name="grace")])
            session.add_all(
                [Order(id=10, user_id=1, item="lamp"), Order(id=11, user_id=2, item="desk")]
            )
            events_in = [{"event": "two users"}, {"event": "two orders"}]
            await session.execute(sa.insert(audit), events_in)
            await session.commit()
            say("one session wrote users, orders and audit rows, one commit per bind")
            users = {u.id: u.name for u in await session.scalars(sa.select(User))}
            orders = (await session.scalars(sa.select(Order).order_by(Order.id))).all()
            events = (await session.scalars(sa.select(audit.c.event).order_by(audit.c.id))).all()
        say("\nread back through the same kind of session:")
        for order in orders:
            say(f"  order {order.id}: {order.item!r} for {users[order.user_id]!r}")
        say(f"  audit: {', '.join(events)}")

    say("\nwhere each statement went, bind by bind:")
    counts: dict[Any, int] = {}
    # The binds run concurrently: statements are listed per bind, in the order each received them.
    for bind in db.engines:
        for key, sql in sent:
            if key != bind or sql.upper().startswith(("PRAGMA", "SELECT NAME FROM")):
                continue  # another bind's, or schema inspection by create_all
            counts[key] = counts.get(key, 0) + 1
            say(f"  {key!r:8} {sql[:90]}")
    say("\nstatements per bind: " + ", ".join(f"{k!r}={n}" for k, n in counts.items()))
    return counts


def run_demo(folder: Path | None, out: Any = sys.stdout) -> dict[Any, int]:
    """Run the demo in ``folder`` (created if needed), or in a temporary folder if None."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        return asyncio.run(demo(folder, out))
    with tempfile.TemporaryDirectory(prefix="asyncbind-demo-") as temporary:
        return asyncio.run(demo(Path(temporary), out))
