"""routing: is asyncbind's routed session as fast as a plain AsyncSession on one engine?

Primary-key ``get``, ORM ``select`` and Core ``select``, one session per lookup, 32 concurrent tasks
over a pool of 16, on PostgreSQL and on MariaDB; then a mixed workload that reads from both in
each session, against SQLAlchemy's own ``AsyncSession(binds={...})``. The raw driver shows where the
floor is. Target: asyncbind / plain >= 0.99 everywhere.
"""

from __future__ import annotations

from typing import Any

from . import lookups
from .harness import SLICES, Table
from .servers import MYSQL, NAMES, POSTGRESQL, databases, unreachable


def _case(op: lookups.Op, count: int, doc: str) -> Any:
    async def run() -> None:
        await lookups.run_concurrently(op, count)

    run.__doc__ = doc
    return run


async def main(options: Any) -> None:
    count = 300 if options.quick else 3_000
    repeat = options.repeat or (2 if options.quick else 7)
    slices = 2 if options.quick else SLICES
    share = count // slices
    rounds = f" in {slices} interleaved rounds" if slices > 1 else ""
    backends = [b for b in (POSTGRESQL, MYSQL) if not await unreachable(b)]
    for b in (POSTGRESQL, MYSQL):
        if b not in backends:
            print(f"\nrouting on {NAMES[b]}: skipped ({await unreachable(b)})")
    if not backends:
        return
    async with databases("routing", *backends) as urls:
        await lookups.fill(urls)
        ours, plain, raw = (
            lookups.AsyncbindSetup(urls),
            lookups.PlainSetup(urls),
            lookups.RawSetup(urls),
        )
        await raw.start()
        try:
            for backend in backends:
                name = NAMES[backend]
                driver = "asyncpg" if backend == POSTGRESQL else "aiomysql"
                table = Table(
                    f"routing on {name}: {count} lookups per run, {lookups.TASKS} tasks, "
                    f"pool of {lookups.POOL}, {repeat} runs{rounds}",
                    repeat=repeat,
                    ops=count,
                    unit="lookup",
                    slices=slices,
                )
                table.case(
                    f"raw {driver}",
                    _case(raw.get(backend), share, f"raw {driver} pool, fetch one row by id"),
                )
                for kind, label in (
                    ("get", "session.get(Item, id)"),
                    ("orm_select", "ORM select(Item).where(id)"),
                    ("core_select", "Core select(item).where(id)"),
                ):
                    plain_name = f"plain {kind}"
                    table.case(
                        plain_name,
                        _case(
                            getattr(plain, kind)(backend),
                            share,
                            f"plain AsyncSession, {label}",
                        ),
                        vs=[f"raw {driver}"],
                    )
                    table.case(
                        f"asyncbind {kind}",
                        _case(
                            getattr(ours, kind)(backend),
                            share,
                            f"asyncbind session, {label}",
                        ),
                        vs=[plain_name, f"raw {driver}"],
                    )
                await table.run()
            if len(backends) == 2:
                table = Table(
                    f"routing over two binds (PostgreSQL + MariaDB): {count} requests of one "
                    f"get on each, {lookups.TASKS} tasks, {repeat} runs{rounds}",
                    repeat=repeat,
                    ops=count,
                    unit="request",
                    slices=slices,
                )
                table.case(
                    "AsyncSession(binds=...)",
                    _case(plain.mixed(), share, "plain AsyncSession(binds={Pg: e1, My: e2})"),
                )
                table.case(
                    "asyncbind mixed",
                    _case(ours.mixed(), share, "asyncbind session, models with __bind_key__"),
                    vs=["AsyncSession(binds=...)"],
                )
                await table.run()
        finally:
            await ours.dispose()
            await plain.dispose()
            await raw.dispose()
