"""soak: mixed load over two binds on private servers, one restart, outages, cancellations; then
every row asyncbind acknowledged is looked for.

    python -m benchmarks soak [--quick] [--seconds 60] [--restart pg|maria] [--kill] ...

It starts a PostgreSQL server (bind ``None``) and a MariaDB server (bind ``"maria"``) of its own
(``tests/privateservers.py``), never the shared ones. Workers write through sessions (one bind and
both), read, stream, roll back, bulk-load with ``load_rows`` and copy between the binds with
``db.copy`` (``benchmarks/soakload.py``), with small pools, and a share of the operations is
cancelled at a random moment. Halfway through, one server is restarted (a clean stop, or SIGKILL
with ``--kill``); the other sits behind the fault proxy, which cuts it now and then.

Then, with both servers up, it prints per bind (``benchmarks/soakcheck.py``) the rows acknowledged
against those found, connections left checked out, connections idle in a transaction on the
server, connections still open after ``dispose()``, and connections never returned to their pool
that the garbage collector closed. The run's last line says whether an acknowledged row was lost;
the exit status is 1 if one was, or a rolled-back row was found, or a connection leaked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass

import sqlalchemy as sa

from asyncbind import AsyncBind
from asyncbind.exceptions import format_key
from tests.faultproxy import FaultProxy
from tests.privateservers import (
    HOST,
    MariaDBServer,
    PostgreSQLServer,
    PrivateServer,
    ServerNotInstalledError,
)

from .servers import DRIVERS
from .soakcheck import (
    DATABASE,
    WIDTH,
    LogCounter,
    Rows,
    admin,
    by_key,
    connections,
    counts,
    idle_in_transaction,
    rows_in,
    settle,
    verdict,
)
from .soakload import BOTH, KEYS, WEIGHTS, Key, Load, define_tables, fill_seeds

SECONDS, QUICK_SECONDS = 60.0, 6.0
POOL = {"pool_size": 3, "max_overflow": 3}
CONNECT_TIMEOUT = 1.0
STATEMENT_TIMEOUT = 2.0
#: Seconds with no outage at the end of the run: an operation an outage held up has failed by then.
CALM = CONNECT_TIMEOUT + STATEMENT_TIMEOUT
OUTAGES = ("refuse", "reset", "blackhole", "latency")
BIND_NAMES = {"pg": None, "maria": "maria"}
VERSION_SQL = {"postgresql": "SHOW server_version", "mysql": "SELECT VERSION()"}


def add_arguments(parser: argparse._ActionsContainer) -> None:
    """The soak's options, on ``python -m benchmarks``' command line."""
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help=f"soak: how long the load runs (default {SECONDS:g}, --quick {QUICK_SECONDS:g})",
    )
    parser.add_argument("--workers", type=int, default=6, help="soak: concurrent workers")
    parser.add_argument(
        "--cancel", type=float, default=0.3, help="soak: share of operations cancelled (0-1)"
    )
    parser.add_argument(
        "--restart",
        choices=list(BIND_NAMES),
        default="pg",
        help="soak: the server restarted halfway (the other one is behind the fault proxy)",
    )
    parser.add_argument(
        "--kill", action="store_true", help="soak: restart with SIGKILL instead of a clean stop"
    )
    parser.add_argument(
        "--outages",
        default=",".join(OUTAGES),
        help=f"soak: fault-proxy outages to pick from, or 'none' (default: {','.join(OUTAGES)})",
    )
    parser.add_argument(
        "--ports",
        default="25474,25475",
        help="soak: loopback ports of its PostgreSQL and MariaDB servers (default: 25474,25475)",
    )
    parser.add_argument("--seed", type=int, default=None, help="soak: random seed")


@dataclass
class Settings:
    seconds: float
    workers: int
    cancel: float
    restarted: Key
    kill: bool
    outages: list[str]
    ports: tuple[int, int]
    seed: int

    @classmethod
    def of(cls, options: argparse.Namespace) -> Settings:
        outages = [] if options.outages == "none" else options.outages.split(",")
        unknown = sorted(set(outages) - set(OUTAGES))
        if unknown:
            raise SystemExit(f"soak: unknown --outages {unknown}; pick from {', '.join(OUTAGES)}")
        ports = tuple(int(port) for port in options.ports.split(","))
        if len(ports) != 2:
            raise SystemExit(f"soak: --ports {options.ports!r} must be two ports, e.g. 25474,25475")
        return cls(
            seconds=options.seconds or (QUICK_SECONDS if options.quick else SECONDS),
            workers=options.workers,
            cancel=options.cancel,
            restarted=BIND_NAMES[options.restart],
            kill=options.kill,
            outages=outages,
            ports=(ports[0], ports[1]),
            seed=options.seed if options.seed is not None else random.randrange(2**32),
        )


@dataclass
class Results:
    """What the run did and what it found afterwards, per bind."""

    seconds: tuple[float, float, float]
    """Setting up (servers, schema), the load, and the checks afterwards."""
    load: Load
    versions: dict[Key, str]
    restart: tuple[float, float]
    outages: Counter[str]
    checked_out: dict[Key, int]
    idle_in_transaction: dict[Key, int]
    open_after_dispose: dict[Key, int]
    collected: dict[Key, int]
    """Connections never returned to the pool, which the garbage collector closed."""
    found: dict[Key, dict[int, str]]


async def main(options: argparse.Namespace) -> tuple[int, str] | None:
    """Run the soak; its verdict: the exit status and the line to end the run with."""
    settings = Settings.of(options)
    try:
        servers: dict[Key, PrivateServer] = {
            None: PostgreSQLServer(settings.ports[0]),
            "maria": MariaDBServer(settings.ports[1]),
        }
    except ServerNotInstalledError as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            return 2, f"soak: could not run: {exc}"
        print(f"\nsoak: skipped ({exc})")
        return None
    logged = LogCounter()
    logging.getLogger().addHandler(logged)
    logging.captureWarnings(True)
    try:
        async with contextlib.AsyncExitStack() as stack:
            for server in servers.values():
                stack.push_async_callback(_remove, server)
            results = await soak(servers, settings, logged)
    finally:
        logging.captureWarnings(False)
        logging.getLogger().removeHandler(logged)
    return report(settings, servers, results, logged.counts)


async def _remove(server: PrivateServer) -> None:
    await asyncio.shield(server.aremove())


async def start(servers: list[PrivateServer]) -> None:
    """Make every server's data directory at once (the slow part), then start each."""
    made = await asyncio.gather(
        *(asyncio.to_thread(server.create) for server in servers), return_exceptions=True
    )
    for outcome in made:
        if isinstance(outcome, BaseException):
            raise outcome
    for server in servers:
        await server.astart()


async def soak(
    servers: dict[Key, PrivateServer], settings: Settings, logged: LogCounter
) -> Results:
    print(
        f"\nsoak: {settings.seconds:g}s, {settings.workers} workers, {settings.cancel:.0%} of "
        f"operations cancelled, seed {settings.seed}; starting private servers"
    )
    loop = asyncio.get_running_loop()
    began = loop.time()
    await start(list(servers.values()))
    versions: dict[Key, str] = {}
    for key, server in servers.items():
        await admin(server, f"CREATE DATABASE {DATABASE}")
        versions[key] = str((await admin(server, VERSION_SQL[server.backend]))[0][0])
    urls = {key: server.url(DATABASE) for key, server in servers.items()}
    rng = random.Random(settings.seed)
    outages: Counter[str] = Counter()
    async with contextlib.AsyncExitStack() as stack:
        proxy = None
        proxied = next(key for key in KEYS if key != settings.restarted)
        if settings.outages:
            proxy = FaultProxy(HOST, servers[proxied].port)
            await stack.enter_async_context(proxy)
            urls[proxied] = proxy.url_for(urls[proxied])
        db = make_db(urls)
        stack.push_async_callback(db.dispose)
        await db.create_all()
        await fill_seeds(db)
        load = Load(db, rng, settings.cancel)
        started = loop.time()
        deadline = started + settings.seconds
        async with asyncio.TaskGroup() as group:
            for _ in range(settings.workers):
                group.create_task(load.worker(deadline))
            restart = group.create_task(
                restarter(servers[settings.restarted], settings.kill, started, deadline)
            )
            if proxy is not None:
                group.create_task(flapper(proxy, settings.outages, rng, deadline, outages))
        ended = loop.time()
        checked_out = await settle(db)
        idle = {key: await idle_in_transaction(server) for key, server in servers.items()}
        await db.dispose()
        gc.collect()  # a connection dropped unreturned is found now, not after the report
        collected = {key: logged.collected[DRIVERS[s.backend]] for key, s in servers.items()}
    open_after = {key: await connections(server) for key, server in servers.items()}
    found = {key: await rows_in(server) for key, server in servers.items()}
    return Results(
        (started - began, ended - started, loop.time() - ended),
        load,
        versions,
        restart.result(),
        outages,
        checked_out,
        idle,
        open_after,
        collected,
        found,
    )


def make_db(urls: dict[Key, sa.URL]) -> AsyncBind:
    """Both binds with small pools (so that a connection is soon reused) and the recommended
    outage settings."""
    options = {
        **POOL,
        "pool_pre_ping": True,
        "connect_timeout": CONNECT_TIMEOUT,
        "statement_timeout": STATEMENT_TIMEOUT,
    }
    db = AsyncBind(
        {"url": urls[None], **options},
        binds={key: {"url": urls[key], **options} for key in KEYS if key is not None},
    )
    define_tables(db)
    return db


async def restarter(
    server: PrivateServer, kill: bool, started: float, deadline: float
) -> tuple[float, float]:
    """Restart ``server`` once, halfway; when (seconds into the run) and for how long."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, (started + deadline) / 2 - loop.time()))
    began = loop.time()
    await server.arestart(kill=kill)
    return began - started, loop.time() - began


async def flapper(
    proxy: FaultProxy, modes: list[str], rng: random.Random, deadline: float, done: Counter[str]
) -> None:
    """Cut the proxied server now and then, for longer than its bind's timeouts at times.

    The last outage ends CALM seconds before the deadline, so that operations it holds up
    end before the deadline too instead of keeping the run going."""
    loop = asyncio.get_running_loop()
    last = deadline - CALM
    try:
        while True:
            await asyncio.sleep(rng.uniform(1, 3))
            if loop.time() >= last:
                return
            mode = rng.choice(modes)
            done[mode] += 1
            if mode == "latency":
                await proxy.set_mode("pass", latency=2 * STATEMENT_TIMEOUT)
            else:
                await proxy.set_mode(mode)  # type: ignore[arg-type]
                if mode in ("refuse", "reset"):
                    proxy.reset_connections()
            await asyncio.sleep(min(rng.uniform(0.5, 4), max(0.0, last - loop.time())))
            await proxy.restore()
    finally:
        await proxy.restore()


# -- the report -----------------------------------------------------------------------------------


def report(
    settings: Settings,
    servers: dict[Key, PrivateServer],
    results: Results,
    logged: Counter[str],
) -> tuple[int, str]:
    """Print what the run did and found; the verdict (exit status, last line)."""

    def bind(key: Key) -> str:
        return f"{format_key(key)} ({servers[key].name})"

    for key, server in servers.items():
        role = (
            f"restarted halfway ({'SIGKILL' if settings.kill else 'clean stop'}, then start)"
            if key == settings.restarted
            else "behind the fault proxy"
            if settings.outages
            else "left alone"
        )
        print(
            f"bind {bind(key)}: {server.name} {results.versions[key]} on {HOST}:{server.port} "
            f"(private), {role}"
        )
    stats = results.load.stats
    setup, elapsed, checks = results.seconds
    print(f"time: {setup:.1f}s to set up, {elapsed:.1f}s of load, {checks:.1f}s of checks")
    total = sum(sum(c.values()) for c in stats.outcomes.values())
    print(
        f"operations: {total:,} in {elapsed:.1f}s ({total / elapsed:,.0f}/s), "
        "ok / failed / cancelled:"
    )
    for kind in WEIGHTS:
        c = stats.outcomes[kind]
        print(f"  {kind:<9} {c['ok']:>6,} {c['failed']:>6,} {c['cancelled']:>6,}")
    at, down = results.restart
    print(
        f"restart of {servers[settings.restarted].name}: {at:.1f}s into the run, "
        f"down for {down:.2f}s"
    )
    outages = ", ".join(f"{mode} {n}" for mode, n in sorted(results.outages.items()))
    print(f"fault-proxy outages: {outages or 'none'}")
    for key in (*KEYS, BOTH):
        failures = stats.failures[key]
        label = bind(key) if key != BOTH else "operations over both binds, naming neither"
        print(f"failures, {label}: {sum(failures.values()) or 'none'}")
        for name, n in failures.most_common():
            print(f"  {n:,}x {name}: {stats.examples[key, name][:WIDTH]}")

    rows = {key: Rows(results.load.ledger.acknowledged[key], results.found[key]) for key in KEYS}
    for key, of_bind in rows.items():
        print(
            f"rows in {bind(key)}: {len(of_bind.acknowledged):,} acknowledged, "
            f"{len(of_bind.found):,} found; lost {counts(of_bind.lost())}; "
            f"found but not acknowledged {counts(of_bind.unacknowledged())}"
        )
    rolled_back = {key: of_bind.unacknowledged()["rollback"] for key, of_bind in rows.items()}
    print(f"rows found that were rolled back: {by_key(rolled_back)}")
    leaks = {
        "checked out of the pool": results.checked_out,
        "idle in a transaction": results.idle_in_transaction,
        "open after dispose()": results.open_after_dispose,
        "never returned to the pool (garbage-collected)": results.collected,
    }
    print("connections: " + "; ".join(f"{what} {by_key(n)}" for what, n in leaks.items()))
    print(f"logged warnings and errors: {sum(logged.values()) or 'none'}")
    for message, n in logged.most_common():
        print(f"  {n}x {message}")
    return verdict(rows, leaks, {key: server.name for key, server in servers.items()})
