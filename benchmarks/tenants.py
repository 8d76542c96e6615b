"""tenants: engines, connections and memory with 1,000 tenant databases.

Each tenant has a database of its own; one request per tenant, one tenant after another, writes a
row and reads it back. Three ways of holding the tenants' engines are compared, each in a fresh
child process so that one does not inherit the other's memory:

- ``asyncbind group``: ``db.add_group("tenant", url=..., max_engines=32)`` and ``db.route()``;
  engines made on demand, the least recently used idle ones disposed past the bound.
- ``engine per tenant``: what an application does by hand, an ``AsyncEngine`` per tenant made on
  first use and kept in a dict (each keeps its pool, so an idle connection per tenant).
- ``engine per request``: a new engine for every request, disposed at its end (the other way to
  stay bounded; it pays a new connection and a cold compiled cache every time).

The tenants are SQLite files, so that 1,000 databases need no server; an aiosqlite connection is a
thread and a file descriptor, so the figures count threads and open files as well as resident
memory (RSS, from ``/proc``) and Python's own allocations (``tracemalloc``). On PostgreSQL or
MariaDB an idle connection is also a server process or thread per tenant, which this does not
show. ``--quick``: 100 tenants, a bound of 8.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from asyncbind import AsyncBind

from .harness import RESULTS

#: The folder holding the ``benchmarks`` package, where the child processes run.
ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "group": "asyncbind group",
    "dict": "engine per tenant",
    "per_request": "engine per request",
}


class Base(sa_orm.DeclarativeBase):
    pass


class Note(Base):
    """The model of the plain SQLAlchemy variants."""

    __tablename__ = "notes"
    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    tenant: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(20))


def _group_model(db: AsyncBind) -> Any:
    """The same model for asyncbind, in the tenant group."""

    class GroupNote(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "tenant"
        __tablename__ = "notes"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
        tenant: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(20))

    return GroupNote


def _rss() -> int:
    """Resident memory of this process, in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def _url(folder: Path, tenant: str) -> str:
    return f"sqlite+aiosqlite:///{folder / tenant}.db"


async def _prepare(folder: Path, tenants: list[str]) -> None:
    """Make every tenant's database with its table, before anything is measured."""
    for tenant in tenants:
        engine = create_async_engine(_url(folder, tenant), poolclass=sa.NullPool)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await engine.dispose()


async def _request(session: AsyncSession, tenant: str, model: Any = Note) -> None:
    session.add(model(tenant=tenant))
    await session.commit()
    tenants = (await session.scalars(sa.select(model.tenant).distinct())).all()
    if tenants != [tenant]:
        raise AssertionError(f"tenant {tenant!r} read {tenants!r}")


async def _child(variant: str, folder: Path, count: int, bound: int) -> dict[str, Any]:
    """Run ``count`` requests, one per tenant, holding engines the ``variant`` way."""
    tenants = [f"t{i:04d}" for i in range(count)]
    await _prepare(folder, tenants)
    threads, files, rss = threading.active_count(), _open_files(), _rss()
    tracemalloc.start()
    started = time.perf_counter()
    peak = 0
    made = 0
    if variant == "group":
        db = AsyncBind(_url(folder, "main"))
        model = _group_model(db)
        urls_asked: list[str] = []  # url() is called once per engine made

        def url(tenant: str) -> str:
            urls_asked.append(tenant)
            return _url(folder, tenant)

        group = db.add_group("tenant", url=url, max_engines=bound)
        for tenant in tenants:
            async with db.route(tenant=tenant), db.session() as session:
                await _request(session, tenant, model)
            peak = max(peak, len(group.engines))
        made = len(urls_asked)
        alive = len(group.engines)
        disposer: Any = db
    elif variant == "dict":
        engines: dict[str, AsyncEngine] = {}
        for tenant in tenants:
            engine = engines.get(tenant)
            if engine is None:
                engine = engines[tenant] = create_async_engine(_url(folder, tenant))
                made += 1
            async with AsyncSession(engine, expire_on_commit=False) as session:
                await _request(session, tenant)
            peak = max(peak, len(engines))
        alive = len(engines)
        disposer = engines
    else:
        for tenant in tenants:
            engine = create_async_engine(_url(folder, tenant))
            made += 1
            async with AsyncSession(engine, expire_on_commit=False) as session:
                await _request(session, tenant)
            await engine.dispose()
            peak = 1
        alive = 0
        disposer = None
    seconds = time.perf_counter() - started
    current, _ = tracemalloc.get_traced_memory()
    result = {
        "variant": variant,
        "tenants": count,
        "engines_alive": alive,
        "engines_peak": peak,
        "engines_made": made,
        "threads": threading.active_count() - threads,
        "open_files": _open_files() - files,
        "rss_mib": (_rss() - rss) / 2**20,
        "traced_mib": current / 2**20,
        "ms_per_request": seconds * 1e3 / count,
    }
    tracemalloc.stop()
    if isinstance(disposer, dict):
        for engine in disposer.values():
            await engine.dispose()
    elif disposer is not None:
        await disposer.dispose()
    return result


async def _run(variant: str, count: int, bound: int) -> dict[str, Any]:
    """One variant in a child process of its own, in a temporary folder of tenant files."""
    with tempfile.TemporaryDirectory(prefix="asyncbind-tenants-") as folder:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.tenants",
            variant,
            folder,
            str(count),
            str(bound),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"tenants {variant} failed:\n{stderr.decode(errors='replace')[-2000:]}")
    return dict(json.loads(stdout.decode().strip().splitlines()[-1]))


async def main(options: Any) -> None:
    count, bound = (100, 8) if options.quick else (1_000, 32)
    title = (
        f"tenants: {count} SQLite tenant databases, one request each, one after another; "
        f"asyncbind's bound max_engines={bound}"
    )
    print(f"\n{title}")
    head = (
        f"  {'engines held':<20} {'alive':>6} {'peak':>6} {'made':>6} {'threads':>8} "
        f"{'files':>6} {'RSS MiB':>8} {'traced MiB':>11} {'ms/request':>11}"
    )
    print(head)
    table: dict[str, Any] = {"title": title, "cases": []}
    for variant, name in VARIANTS.items():
        found = await _run(variant, count, bound)
        print(
            f"  {name:<20} {found['engines_alive']:>6} {found['engines_peak']:>6} "
            f"{found['engines_made']:>6} {found['threads']:>8} {found['open_files']:>6} "
            f"{found['rss_mib']:>8.1f} {found['traced_mib']:>11.1f} "
            f"{found['ms_per_request']:>11.2f}"
        )
        table["cases"].append({"name": name, **found})
    RESULTS.append(table)


if __name__ == "__main__":
    _variant, _folder, _count, _bound = sys.argv[1:]
    _found = asyncio.run(_child(_variant, Path(_folder), int(_count), int(_bound)))
    print(json.dumps(_found))
