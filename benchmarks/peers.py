"""peers: the same lookups through what people use today.

* Flask-SQLAlchemy 3.1 with binds: sync, psycopg 3 + PyMySQL, 16 threads, one app context (and so
  one scoped session) per request;
* sqlalchemy-bind-manager: async, one repository per bind, ``await repository.get(id)``. Its
  repositories keep one AsyncSession per task (``async_scoped_session`` keyed by the current task)
  and close it in that task, unshielded, after each call;
* plain SQLAlchemy used the same way ("per task"), to tell that pattern's cost from the layer's;
* asyncbind and a plain AsyncSession: a session per lookup, closed as ``async with`` closes it
  (in a task of its own, so a cancellation cannot interrupt it), 32 tasks over a pool of 16;
* asyncbind used as sqlalchemy-bind-manager uses SQLAlchemy ("asyncbind, per task"): a session
  kept per task and closed after each request, in a task of its own as any asyncbind close.

Workloads: primary-key lookups on PostgreSQL, and requests doing one lookup on PostgreSQL and one on
MariaDB. Targets: asyncbind >= 1.6x Flask-SQLAlchemy on PostgreSQL lookups, >= 1.25x on the mixed
ones, and >= 1.05x sqlalchemy-bind-manager.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_scoped_session

from . import lookups
from .harness import SKIPPED_PEER, SLICES, Table
from .servers import DRIVERS, MYSQL, POSTGRESQL, databases, unreachable, with_driver

THREADS = 16


def _plain_url(url: sa.URL, driver: str) -> str:
    return with_driver(url, driver).render_as_string(hide_password=False)


class FlaskSetup:
    """Flask-SQLAlchemy with the default bind on PostgreSQL and bind 'my' on MariaDB."""

    def __init__(self, urls: dict[str, sa.URL]) -> None:
        from flask import Flask
        from flask_sqlalchemy import SQLAlchemy

        app = Flask("asyncbind_benchmarks")
        app.config.update(
            SQLALCHEMY_DATABASE_URI=_plain_url(urls[POSTGRESQL], "psycopg"),
            SQLALCHEMY_BINDS={"my": _plain_url(urls[MYSQL], "pymysql")},
            SQLALCHEMY_ENGINE_OPTIONS=dict(lookups.ENGINE_OPTIONS),
        )
        db = SQLAlchemy(app)

        class FlaskPgItem(db.Model):  # type: ignore[name-defined,misc]
            __table__ = sa.Table("item", db.metadatas[None], *lookups.item_columns())

        class FlaskMyItem(db.Model):  # type: ignore[name-defined,misc]
            __bind_key__ = "my"
            __table__ = db.Table("item", *lookups.item_columns(), bind_key="my")

        self.app, self.db, self.pg, self.my = app, db, FlaskPgItem, FlaskMyItem
        self.executor = ThreadPoolExecutor(THREADS, thread_name_prefix="flask")

    def get(self, key: int) -> Any:
        with self.app.app_context():
            return self.db.session.get(self.pg, key)

    def mixed(self, key: int) -> Any:
        with self.app.app_context():
            return self.db.session.get(self.pg, key), self.db.session.get(self.my, key)

    async def run(self, op: Callable[[int], Any], count: int) -> None:
        keys = itertools.islice(itertools.cycle(lookups.ids()), count)
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    key = next(keys, None)
                if key is None:
                    return
                op(key)

        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.executor, worker) for _ in range(THREADS)))

    def dispose(self) -> None:
        with self.app.app_context():
            for engine in self.db.engines.values():
                engine.dispose()
        self.executor.shutdown()


class BindManagerSetup:
    """sqlalchemy-bind-manager with an async bind per database ('pg', 'my', 'lite', as
    asyncbind's keys), one repository each."""

    def __init__(self, urls: dict[str, sa.URL]) -> None:
        from sqlalchemy_bind_manager import SQLAlchemyBindManager, SQLAlchemyConfig
        from sqlalchemy_bind_manager.repository import SQLAlchemyAsyncRepository

        keys = {backend: lookups.BIND_KEYS[backend] for backend in urls}
        self.manager = SQLAlchemyBindManager(
            {
                key: SQLAlchemyConfig(
                    engine_url=_plain_url(urls[backend], DRIVERS[backend]),
                    engine_options=dict(lookups.ENGINE_OPTIONS),
                    async_engine=True,
                )
                for backend, key in keys.items()
            }
        )
        self.repositories = {}
        for backend, key in keys.items():
            bind = self.manager.get_bind(key)
            base = bind.declarative_base
            model = type(
                f"BindManager{key.title()}Item",
                (base,),
                {"__table__": sa.Table("item", base.metadata, *lookups.item_columns())},
            )
            self.repositories[backend] = SQLAlchemyAsyncRepository(bind=bind, model_class=model)

    def get(self, backend: str = POSTGRESQL) -> lookups.Op:
        repository = self.repositories[backend]

        async def op(key: int) -> Any:
            return await repository.get(key)

        return op

    def mixed(self) -> lookups.Op:
        pg, my = self.repositories[POSTGRESQL], self.repositories[MYSQL]

        async def op(key: int) -> Any:
            return await pg.get(key), await my.get(key)

        return op

    async def dispose(self) -> None:
        for bind in self.manager.get_binds().values():
            await bind.engine.dispose()


class PerTaskSetup:
    """Plain SQLAlchemy the way sqlalchemy-bind-manager uses it: an ``async_scoped_session`` per
    bind keyed by the current task, its session closed in place after each lookup and kept."""

    def __init__(self, plain: lookups.PlainSetup) -> None:
        self.models = plain.models
        self.sessions = {
            backend: async_scoped_session(maker, scopefunc=asyncio.current_task)
            for backend, maker in plain.sessions.items()
        }

    def _lookup(self, backend: str) -> lookups.Op:
        model, sessions = self.models[backend], self.sessions[backend]

        async def op(key: int) -> Any:
            session = sessions()
            try:
                return await session.get(model, key)
            finally:
                await session.close()

        return op

    def get(self, backend: str = POSTGRESQL) -> lookups.Op:
        return self._lookup(backend)

    def mixed(self) -> lookups.Op:
        pg, my = self._lookup(POSTGRESQL), self._lookup(MYSQL)

        async def op(key: int) -> Any:
            return await pg(key), await my(key)

        return op

    def dispose(self) -> None:
        # Every kept session was closed after its last lookup; only the tasks' entries remain.
        for sessions in self.sessions.values():
            sessions.registry.clear()


class AsyncbindPerTaskSetup:
    """asyncbind used the way sqlalchemy-bind-manager uses SQLAlchemy: one ``db.session()`` per
    task, kept, and closed after each request (a closed session can be used again); one session
    for both lookups of a mixed request."""

    def __init__(self, ours: lookups.AsyncbindSetup) -> None:
        self.ours = ours
        self.sessions: dict[asyncio.Task[Any], Any] = {}

    def _session(self) -> Any:
        task = asyncio.current_task()
        assert task is not None
        session = self.sessions.get(task)
        if session is None:
            session = self.sessions[task] = self.ours.db.session()
        return session

    def get(self, backend: str = POSTGRESQL) -> lookups.Op:
        model = self.ours.models[backend]

        async def op(key: int) -> Any:
            session = self._session()
            try:
                return await session.get(model, key)
            finally:
                await session.close()

        return op

    def mixed(self) -> lookups.Op:
        pg, my = self.ours.models[POSTGRESQL], self.ours.models[MYSQL]

        async def op(key: int) -> Any:
            session = self._session()
            try:
                return await session.get(pg, key), await session.get(my, key)
            finally:
                await session.close()

        return op

    def dispose(self) -> None:
        # Every kept session was closed after its last request.
        self.sessions.clear()


def _flask_or_reason(urls: dict[str, sa.URL]) -> tuple[FlaskSetup | None, str | None]:
    try:
        import flask_sqlalchemy  # noqa: F401
        import psycopg  # noqa: F401
        import pymysql  # noqa: F401
    except ImportError:
        return None, SKIPPED_PEER
    return FlaskSetup(urls), None


def _bind_manager_or_reason(
    urls: dict[str, sa.URL],
) -> tuple[BindManagerSetup | None, str | None]:
    try:
        import sqlalchemy_bind_manager  # noqa: F401
    except ImportError:
        return None, SKIPPED_PEER
    return BindManagerSetup(urls), None


def _async_case(op: lookups.Op, count: int, doc: str) -> Any:
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
    for backend in (POSTGRESQL, MYSQL):
        reason = await unreachable(backend)
        if reason:
            print(f"\npeers: skipped ({reason})")
            return
    async with databases("peers", POSTGRESQL, MYSQL) as urls:
        await lookups.fill(urls)
        ours, plain = lookups.AsyncbindSetup(urls), lookups.PlainSetup(urls)
        per_task = PerTaskSetup(plain)
        ours_per_task = AsyncbindPerTaskSetup(ours)
        flask, flask_skip = _flask_or_reason(urls)
        manager, manager_skip = _bind_manager_or_reason(urls)
        try:
            for workload, title in (
                ("get", f"PostgreSQL primary-key lookups, {count} per run"),
                (
                    "mixed",
                    f"requests with a lookup on PostgreSQL and one on MariaDB, {count} per run",
                ),
            ):
                table = Table(
                    f"peers, {title}, {repeat} runs{rounds}",
                    repeat=repeat,
                    ops=count,
                    unit="request",
                    slices=slices,
                )

                async def flask_run(workload: str = workload) -> None:
                    assert flask is not None
                    await flask.run(getattr(flask, workload), share)

                flask_run.__doc__ = (
                    f"Flask-SQLAlchemy 3.1, sync psycopg + PyMySQL, {THREADS} threads"
                )
                table.case("Flask-SQLAlchemy", flask_run, skip=flask_skip)
                table.case(
                    "sqlalchemy-bind-manager",
                    _async_case(
                        manager.get() if workload == "get" else manager.mixed(),
                        share,
                        "sqlalchemy-bind-manager async repositories, 32 tasks",
                    )
                    if manager is not None
                    else None,
                    doc=None
                    if manager is not None
                    else "sqlalchemy-bind-manager async repositories",
                    skip=manager_skip,
                )
                table.case(
                    "plain, per task",
                    _async_case(
                        per_task.get() if workload == "get" else per_task.mixed(),
                        share,
                        "plain AsyncSession kept per task, closed in place, 32 tasks",
                    ),
                )
                plain_op = plain.get(POSTGRESQL) if workload == "get" else plain.mixed()
                table.case(
                    "plain AsyncSession",
                    _async_case(
                        plain_op, share, "plain AsyncSession (one engine or binds=), 32 tasks"
                    ),
                )
                ours_op = ours.get(POSTGRESQL) if workload == "get" else ours.mixed()
                table.case(
                    "asyncbind",
                    _async_case(ours_op, share, "asyncbind session, 32 tasks"),
                    vs=[
                        "Flask-SQLAlchemy",
                        "sqlalchemy-bind-manager",
                        "plain, per task",
                        "plain AsyncSession",
                    ],
                )
                table.case(
                    "asyncbind, per task",
                    _async_case(
                        ours_per_task.get() if workload == "get" else ours_per_task.mixed(),
                        share,
                        "asyncbind session kept per task, closed after each request, 32 tasks",
                    ),
                    vs=["sqlalchemy-bind-manager", "plain, per task"],
                )
                await table.run()
        finally:
            ours_per_task.dispose()
            await ours.dispose()
            per_task.dispose()
            await plain.dispose()
            if manager is not None:
                await manager.dispose()
            if flask is not None:
                flask.dispose()
            gc.collect()
