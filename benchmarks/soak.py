"""Soak: mixed load over two binds, random cancellations, and one bind flapping.

    python -m benchmarks.soak --seconds 60 [--workers 32] [--flap maria] [--modes down,reset,...]

Two binds on throw-away databases: ``None`` on PostgreSQL and ``"maria"`` on MariaDB. The flapping
bind is reached through the fault proxy (``benchmarks.faultproxy``), which takes it down and brings
it back at random: server down (connections reset, new ones refused), connections reset, network
black-holed, latency beyond the bind's timeouts. Meanwhile workers read, write and commit, roll
back, stream, and commit across both binds, and a share of their operations is cancelled at a
random moment.

At the end it prints operations done, failures by bind, connections leaked (checked out of a pool,
idle in a transaction on a server, or still open on a server after ``dispose()``), rows lost (a
commit that returned but whose rows are missing) and peak memory. It exits 1 if any connection
leaked or any row was lost, 2 if the servers cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from asyncbind import AsyncBind

from .faultproxy import MODES, FaultProxy
from .servers import MYSQL, POSTGRESQL, admin, databases, server_url, unreachable

KEYS: tuple[str | None, ...] = (None, "maria")
BOTH = "(both binds)"
BACKEND = {None: POSTGRESQL, "maria": MYSQL}
#: Bound on one operation: far above the flapping bind's timeouts, so only a hang reaches it.
GUARD = 30.0
CONNECT_TIMEOUT = 1.0
STATEMENT_TIMEOUT = 2.0
#: Time allowed on top of the timeouts (SQLAlchemy's asyncpg close waits up to 2s) before an
#: operation counts as having overrun them.
SLACK = 3.0
SLEEP = {POSTGRESQL: "SELECT pg_sleep(:s)", MYSQL: "SELECT SLEEP(:s)"}
#: The proxy's fault modes, and latency beyond the statement timeout.
OUTAGES = (*MODES[1:], "latency")


class _CountingHandler(logging.Handler):
    """Counts warnings and errors logged during the run (SQLAlchemy logs some instead of
    raising, for example a connection that failed to reset on its way back to the pool)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        first_line = record.getMessage().splitlines()[0][:80] if record.getMessage() else ""
        self.counts[f"{record.name}: {first_line}"] += 1


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the load runs")
    parser.add_argument("--workers", type=int, default=32, help="concurrent workers")
    parser.add_argument(
        "--flap", choices=["pg", "maria"], default="maria", help="the bind behind the fault proxy"
    )
    parser.add_argument(
        "--modes",
        default=",".join(OUTAGES),
        help=f"outages to pick from, comma-separated (default: {','.join(OUTAGES)})",
    )
    parser.add_argument(
        "--cancel", type=float, default=0.3, help="share of operations cancelled (0-1)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    options = parser.parse_args(argv)
    modes = [m for m in options.modes.split(",") if m]
    unknown = sorted(set(modes) - set(OUTAGES))
    if unknown or not modes:
        parser.error(f"unknown or no --modes: {', '.join(unknown) or '(none)'}")
    options.modes = modes
    return options


@dataclass
class Stats:
    done: Counter[str] = field(default_factory=Counter)
    #: By bind key; BOTH for errors of cross-bind operations that name no bind.
    failures: dict[str | None, Counter[str]] = field(
        default_factory=lambda: {key: Counter() for key in (*KEYS, BOTH)}
    )
    committed: dict[str | None, set[str]] = field(default_factory=lambda: {k: set() for k in KEYS})
    outages: Counter[str] = field(default_factory=Counter)
    slowest: dict[str | None, float] = field(default_factory=lambda: dict.fromkeys(KEYS, 0.0))
    #: Operations that took longer than connect_timeout + statement_timeout + SLACK.
    overran: Counter[str | None] = field(default_factory=Counter)


def make_db(urls: dict[str | None, sa.URL], flap: str | None) -> AsyncBind:
    binds: dict[str | None, Any] = {}
    for key in KEYS:
        options: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 5}
        if key == flap:
            options |= {"connect_timeout": CONNECT_TIMEOUT, "statement_timeout": STATEMENT_TIMEOUT}
        binds[key] = {"url": urls[key], **options}
    db = AsyncBind(binds.pop(None), binds=binds)
    for key in KEYS:
        db.Table(
            "soak_rows",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("token", sa.String(40), unique=True, nullable=False),
            bind_key=key,
        )
    return db


class Load:
    def __init__(self, db: AsyncBind, stats: Stats, rng: random.Random, cancel: float) -> None:
        self.db = db
        self.stats = stats
        self.rng = rng
        self.cancel = cancel
        self.serial = 0

    def table(self, key: str | None) -> sa.Table:
        return self.db.metadatas[key].tables["soak_rows"]

    def token(self) -> str:
        self.serial += 1
        return f"t{self.serial}"

    async def operation(self, key: str | None, kind: str) -> None:
        table = self.table(key)
        async with self.db.session() as session:
            if kind == "read":
                await session.execute(sa.select(sa.func.count()).select_from(table))
                await session.execute(
                    sa.text(SLEEP[BACKEND[key]]),
                    {"s": self.rng.choice((0, 0.01, 0.05))},
                    bind_arguments={"bind_key": key},
                )
            elif kind == "stream":
                result = await session.stream(sa.select(table.c.token).limit(200))
                async for _ in result:
                    if self.rng.random() < 0.05:
                        break
            elif kind == "commit":
                tokens = [self.token() for _ in range(self.rng.randint(1, 5))]
                await session.execute(sa.insert(table), [{"token": t} for t in tokens])
                await session.commit()
                self.stats.committed[key].update(tokens)
            elif kind == "rollback":
                await session.execute(sa.insert(table), [{"token": self.token()}])
                await session.rollback()
            elif kind == "both":
                # One session, a write on each bind, one commit per bind (not atomic across them).
                tokens = {k: self.token() for k in KEYS}
                for k in KEYS:
                    await session.execute(sa.insert(self.table(k)), [{"token": tokens[k]}])
                await session.commit()
                for k in KEYS:
                    self.stats.committed[k].add(tokens[k])
            else:
                raise ValueError(kind)

    async def worker(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            key = self.rng.choice(KEYS)
            kind = self.rng.choice(
                ("read", "read", "stream", "commit", "commit", "rollback", "both")
            )
            task = loop.create_task(self.guarded(key, kind))
            handle = None
            if self.rng.random() < self.cancel:
                handle = loop.call_later(self.rng.uniform(0, 0.05), task.cancel)
            try:
                outcome = await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
                outcome = "cancelled"
            finally:
                if handle is not None:
                    handle.cancel()
            self.stats.done[outcome] += 1
            if outcome not in ("ok", "cancelled"):
                await asyncio.sleep(0.05)  # a failing bind must not make this a busy loop

    async def guarded(self, key: str | None, kind: str) -> str:
        failing = BOTH if kind == "both" else key
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(GUARD) as guard:
                await self.operation(key, kind)
        except TimeoutError as exc:
            name = "hung" if guard.expired() else type(exc).__name__
            self.stats.failures[getattr(exc, "bind_key", failing)][name] += 1
            return "failed"
        except Exception as exc:
            self.stats.failures[getattr(exc, "bind_key", failing)][type(exc).__name__] += 1
            return "failed"
        finally:
            took = loop.time() - started
            if kind != "both":  # that one waits on both binds
                self.stats.slowest[key] = max(self.stats.slowest[key], took)
                if took > CONNECT_TIMEOUT + STATEMENT_TIMEOUT + SLACK:
                    self.stats.overran[key] += 1
        return "ok"


async def flapper(
    proxy: FaultProxy, modes: list[str], stats: Stats, rng: random.Random, deadline: float
) -> None:
    loop = asyncio.get_running_loop()
    try:
        while loop.time() < deadline:
            await asyncio.sleep(min(rng.uniform(1, 3), max(0.0, deadline - loop.time())))
            if loop.time() >= deadline:
                break
            mode = rng.choice(modes)
            stats.outages[mode] += 1
            if mode == "latency":
                await proxy.set_mode("pass", latency=2 * STATEMENT_TIMEOUT)
            else:
                await proxy.set_mode(mode)  # type: ignore[arg-type]
                if mode in ("refuse", "reset"):
                    proxy.reset_connections()
            # Some outages outlast every timeout of the bind (see SLACK).
            await asyncio.sleep(rng.uniform(1, 8))
            await proxy.restore()
    finally:
        await proxy.restore()


async def settle(db: AsyncBind) -> dict[str | None, int]:
    """Wait (bounded) for the pools to have nothing checked out; what is still out."""
    loop = asyncio.get_running_loop()
    end = loop.time() + GUARD
    while True:
        out = {key: engine.pool.checkedout() for key, engine in db.engines.items()}  # type: ignore[attr-defined]
        if not any(out.values()) or loop.time() > end:
            return out
        await asyncio.sleep(0.1)


async def open_transactions(backend: str, database: str) -> int:
    if backend == POSTGRESQL:
        sql = (
            "SELECT count(*) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND state LIKE 'idle in transaction%'"
        )
    else:
        sql = (
            "SELECT count(*) FROM information_schema.INNODB_TRX t JOIN "
            "information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
            f"WHERE p.DB = '{database}'"
        )
    # MariaDB fills INNODB_TRX from a cache refreshed at most every 0.1s: a leak is what stays.
    for _ in range(25):
        count = int((await admin(backend, sql))[0][0])  # type: ignore[call-overload]
        if not count:
            break
        await asyncio.sleep(0.2)
    return count


async def server_connections(backend: str, database: str) -> int:
    if backend == POSTGRESQL:
        sql = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}'"
    else:
        sql = f"SELECT count(*) FROM information_schema.PROCESSLIST WHERE DB = '{database}'"
    # A server notices a closed connection a moment later: a leak is what stays.
    for _ in range(50):
        count = int((await admin(backend, sql))[0][0])  # type: ignore[call-overload]
        if not count:
            break
        await asyncio.sleep(0.2)
    return count


async def soak(options: argparse.Namespace) -> int:
    for backend in (POSTGRESQL, MYSQL):
        reason = await unreachable(backend)
        if reason:
            print(f"soak: {reason}", file=sys.stderr)
            return 2
    seed = options.seed if options.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    flap: str | None = None if options.flap == "pg" else "maria"
    stats = Stats()
    print(
        f"soak: {options.seconds:g}s, {options.workers} workers, bind {options.flap!r} flapping "
        f"({', '.join(options.modes)}), {options.cancel:.0%} of operations cancelled, seed {seed}"
    )
    async with databases("soak", POSTGRESQL, MYSQL) as made:
        urls = {key: made[BACKEND[key]] for key in KEYS}
        names = {key: urls[key].database or "" for key in KEYS}
        target = server_url(BACKEND[flap])
        port = target.port or (5432 if BACKEND[flap] == POSTGRESQL else 3306)
        async with FaultProxy(target.host or "127.0.0.1", port) as proxy:
            urls[flap] = proxy.url_for(urls[flap])
            db = make_db(urls, flap)
            try:
                await db.create_all()
                loop = asyncio.get_running_loop()
                started = loop.time()
                deadline = started + options.seconds
                load = Load(db, stats, rng, options.cancel)
                async with asyncio.TaskGroup() as group:
                    group.create_task(flapper(proxy, options.modes, stats, rng, deadline))
                    for _ in range(options.workers):
                        group.create_task(load.worker(deadline))
                elapsed = loop.time() - started
                await proxy.restore()
                checked_out = await settle(db)
                open_trx = {k: await open_transactions(BACKEND[k], names[k]) for k in KEYS}
                lost = await rows_lost(db, stats)
            finally:
                await proxy.restore()
                await db.dispose()
            left_open = {k: await server_connections(BACKEND[k], names[k]) for k in KEYS}

    leaked = sum(checked_out.values()) + sum(open_trx.values()) + sum(left_open.values())
    total_lost = sum(lost.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    operations = sum(stats.done.values())
    print(
        f"operations done: {operations} in {elapsed:.1f}s ({operations / elapsed:.0f}/s): "
        + ", ".join(f"{k} {v}" for k, v in sorted(stats.done.items()))
    )
    print("outages: " + (", ".join(f"{k} {v}" for k, v in sorted(stats.outages.items())) or "none"))
    for key in KEYS:
        failures = stats.failures[key]
        label = f"{'None' if key is None else repr(key)} ({BACKEND[key]}"
        label += ", flapping)" if key == flap else ")"
        detail = ", ".join(f"{k} {v}" for k, v in failures.most_common()) or "none"
        print(f"failures by bind: {label}: {sum(failures.values())} ({detail})")
    if stats.failures[BOTH]:
        detail = ", ".join(f"{k} {v}" for k, v in stats.failures[BOTH].most_common())
        print(f"failures naming no bind, in operations over both binds: {detail}")
    limit = CONNECT_TIMEOUT + STATEMENT_TIMEOUT + SLACK
    print(
        f"slowest operation: {_by_key(stats.slowest, '{:.1f}s')}; "
        f"longer than {limit:g}s (the flapping bind's timeouts + {SLACK:g}s): "
        f"{_by_key({k: stats.overran[k] for k in KEYS})}"
    )
    print(
        f"connections leaked: {leaked} (checked out {_by_key(checked_out)}; idle in transaction "
        f"{_by_key(open_trx)}; open after dispose {_by_key(left_open)})"
    )
    committed = {k: len(v) for k, v in stats.committed.items()}
    print(f"rows lost: {total_lost} (of {_by_key(committed)} committed)")
    print(f"peak memory: {peak:.0f} MiB (max RSS)")
    return 1 if leaked or total_lost else 0


async def rows_lost(db: AsyncBind, stats: Stats) -> dict[str | None, int]:
    lost: dict[str | None, int] = {}
    async with db.session() as session:
        for key in KEYS:
            table = db.metadatas[key].tables["soak_rows"]
            present = set((await session.scalars(sa.select(table.c.token))).all())
            lost[key] = len(stats.committed[key] - present)
    return lost


def _by_key(values: dict[str | None, Any], form: str = "{}") -> str:
    return ", ".join(
        f"{'None' if k is None else repr(k)}={form.format(v)}" for k, v in values.items()
    )


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    logged = _CountingHandler()
    logging.getLogger().addHandler(logged)
    try:
        code = asyncio.run(soak(options))
    finally:
        logging.getLogger().removeHandler(logged)
    print(
        "logged warnings and errors: "
        + (", ".join(f"{n}x {m}" for m, n in logged.counts.most_common()) or "none")
    )
    print(f"total: {time.perf_counter() - started:.1f}s, exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
