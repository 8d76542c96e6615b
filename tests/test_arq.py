"""arq: workers on the real Redis whose jobs each run in a session scope of their own.

Two worker processes (``python -m arq arqworker.WorkerSettings``) take 1,000 jobs writing to
PostgreSQL and MariaDB: every job's rows land exactly once, failed and timed-out jobs leave
nothing, and no connection is left checked out or in a transaction. In-process workers on SQLite
show the rest: the session of each job, the hooks around the worker's own, the start-up check.

Redis comes from ``ASYNCBIND_TEST_REDIS_URL`` (default: database 7 of the local server); every key
a test makes carries the test's token and is deleted at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from arq import Retry, cron, func
from arq.connections import RedisSettings
from arq.worker import Worker, create_worker
from arqredis import REDIS_URL, Redis, redis_for_test
from conftest import NewDatabase
from twobinds import server_connections

from asyncbind import (
    AsyncBind,
    ConfigError,
    NoCurrentSessionError,
    NotConfiguredError,
    StartupCheckError,
)
from asyncbind.integrations.arq import in_scope, on_shutdown, on_startup, setup

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
#: A loopback port where nothing listens.
NOTHING_LISTENS = 25877
#: Guards, in seconds: how long to wait for what should come much sooner.
GUARD = 300

MakeDb = Callable[..., AsyncBind]

# arq closes its Redis client with redis-py's deprecated close().
arq_close_warning = pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    async with redis_for_test() as found:
        yield found


def job_rows(db: AsyncBind, bind_key: str | None) -> sa.Table:
    """The table of tests/arqworker.py (and of the in-process tests)."""
    return db.Table(
        "job_rows",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.String(100), nullable=False),
        sa.Column("worker", sa.Integer, nullable=False),
        bind_key=bind_key,
    )


async def rows_per_job(db: AsyncBind, bind_key: str | None) -> dict[str, int]:
    """How many rows each job left in ``bind_key``'s ``job_rows``, read on a connection of its own."""
    async with db.engines[bind_key].connect() as conn:
        result = await conn.execute(
            sa.text("SELECT job_id, COUNT(*) FROM job_rows GROUP BY job_id")
        )
        return {job_id: count for job_id, count in result}


async def workers_of(db: AsyncBind, bind_key: str | None) -> set[int]:
    async with db.engines[bind_key].connect() as conn:
        return set((await conn.execute(sa.text("SELECT DISTINCT worker FROM job_rows"))).scalars())


async def wait_until(what: str, done: Callable[[], Any], *, guard: float = GUARD) -> None:
    """Poll ``await done()`` until it is true; fail naming ``what`` after ``guard`` seconds."""
    for _ in range(int(guard / 0.1)):
        if await done():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"{what}: not within {guard:g} s")


# -- two worker processes, PostgreSQL and MariaDB ----------------------------------------------

#: How many jobs of each kind, out of 1,000; the others just write (see tests/arqworker.py).
SPECIAL = {
    "write_then_fail": 10,
    "write_then_retry": 10,
    "write_then_hang": 4,
    "write_then_hang_in_postgresql": 3,
    "write_then_hang_in_mariadb": 3,
}
JOBS = 1000


def plan() -> list[str]:
    """The function of each of the 1,000 jobs, the special ones spread among the others."""
    functions = ["write"] * JOBS
    index = 7
    for function, count in SPECIAL.items():
        for _ in range(count):
            functions[index] = function
            index += 31
    assert sum(f != "write" for f in functions) == sum(SPECIAL.values())
    return functions


async def start_worker(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "arq",
            "arqworker.WorkerSettings",
            cwd=TESTS,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )


async def stop(process: asyncio.subprocess.Process) -> int:
    """SIGTERM (arq shuts down: cancels what runs, runs on_shutdown), then the exit code."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(process.wait(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise


async def server_sessions_busy(db: AsyncBind) -> dict[str, list[Any]]:
    """Sessions of the workers that are in a transaction or running a statement, on each
    server (asked on its admin database, so the question does not count itself)."""
    busy: dict[str, list[Any]] = {}
    for key, engine in db.engines.items():
        url = engine.url
        if url.get_backend_name() == "postgresql":
            admin = url.set(database="postgres")
            query = (
                "SELECT pid, state, query FROM pg_stat_activity "
                "WHERE datname = :name AND state IS DISTINCT FROM 'idle'"
            )
        else:
            admin = url.set(database="mysql")
            query = (
                "SELECT p.id, p.command, p.info FROM information_schema.processlist p "
                "LEFT JOIN information_schema.innodb_trx t ON t.trx_mysql_thread_id = p.id "
                "WHERE p.db = :name AND (p.command <> 'Sleep' OR t.trx_id IS NOT NULL)"
            )
        probe = sa.ext.asyncio.create_async_engine(admin, poolclass=sa.NullPool)
        try:
            async with probe.connect() as conn:
                rows = (await conn.execute(sa.text(query), {"name": url.database})).all()
        finally:
            await probe.dispose()
        busy[str(key)] = [tuple(row) for row in rows]
    return busy


#: What a worker's output must never show.
REPORTED = (
    "never retrieved",
    "Exception ignored",
    "unclosed",
    "ResourceWarning",
    "was never awaited",
    "Exception during reset",
    "Exception closing connection",
)


@pytest.mark.postgresql
@pytest.mark.mysql
async def test_two_worker_processes_take_1000_jobs_each_once(
    redis: Redis, new_database: NewDatabase, make_db: MakeDb, tmp_path: Path
) -> None:
    postgresql, mysql = await new_database("postgresql"), await new_database("mysql")
    db = make_db(postgresql, binds={"other": mysql})
    job_rows(db, None)
    job_rows(db, "other")
    await db.create_all()
    reports = tmp_path / "reports"
    reports.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]),
        "ASYNCBIND_ARQ_POSTGRESQL": postgresql,
        "ASYNCBIND_ARQ_MYSQL": mysql,
        "ASYNCBIND_ARQ_REDIS": REDIS_URL,
        "ASYNCBIND_ARQ_QUEUE": redis.queue,
        "ASYNCBIND_ARQ_REPORTS": str(reports),
    }
    logs = [tmp_path / "worker-1.log", tmp_path / "worker-2.log"]
    workers = [await start_worker(env, log) for log in logs]
    try:

        async def ready() -> bool:
            for worker, log in zip(workers, logs, strict=True):
                if worker.returncode is not None:
                    pytest.fail(f"a worker exited ({worker.returncode}):\n{log.read_text()}")
            return await redis.pool.scard(f"{redis.queue}:ready") == 2

        await wait_until("both workers started", ready)

        functions = plan()
        ids = [redis.job_id(n) for n in range(JOBS)]
        for start in range(0, JOBS, 50):
            await asyncio.gather(
                *(
                    redis.pool.enqueue_job(functions[n], _job_id=ids[n], _queue_name=redis.queue)
                    for n in range(start, start + 50)
                )
            )
        result_keys = [f"arq:result:{job_id}" for job_id in ids]

        async def finished() -> bool:
            return bool(await redis.pool.exists(*result_keys) == JOBS)

        await wait_until("every job finished", finished)
        results = [await redis.result(job_id) for job_id in ids]

        # What arq recorded: the writes succeeded, the retried jobs on their second try.
        for function, result in zip(functions, results, strict=True):
            assert result is not None
            if function == "write":
                assert result.success and result.job_try == 1
            elif function == "write_then_retry":
                assert (result.success, result.result, result.job_try) == (True, 2, 2)
            elif function == "write_then_fail":
                assert not result.success and isinstance(result.result, ValueError)
            else:  # killed by its job timeout
                assert not result.success and isinstance(result.result, TimeoutError)

        # What the databases hold: one row per bind for each job that succeeded (the retried
        # jobs' first tries rolled back), none for the others.
        landed = {
            job_id: 1
            for job_id, function in zip(ids, functions, strict=True)
            if function in ("write", "write_then_retry")
        }
        assert len(landed) == JOBS - 20

        # The workers are idle: none of their connections is in a transaction or a statement.
        # Of the jobs killed mid-statement, PostgreSQL cancelled the pg_sleep; MariaDB finishes
        # its SLEEP on the dropped connection, then rolls back.
        busy: dict[str, list[Any]] = {}

        async def idle() -> bool:
            nonlocal busy
            busy = await server_sessions_busy(db)
            return not any(busy.values())

        await wait_until("the workers' sessions are idle", idle, guard=60)
        assert busy == {"None": [], "other": []}
        assert await rows_per_job(db, None) == landed
        assert await rows_per_job(db, "other") == landed
        pids = {worker.pid for worker in workers}
        assert await workers_of(db, None) == pids  # both workers took jobs
        assert await workers_of(db, "other") == pids
    finally:
        codes = [await stop(worker) for worker in workers]
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], outputs
    for output in outputs:
        assert not [line for line in output.splitlines() if any(r in line for r in REPORTED)]

    # Each worker's pools at shut-down, before asyncbind disposed them: nothing checked out.
    statuses = [json.loads(path.read_text()) for path in sorted(reports.iterdir())]
    assert len(statuses) == 2
    for status in statuses:
        assert {key: pool["checked_out"] for key, pool in status.items()} == {
            "None": 0,
            "other": 0,
        }
    # ... and then disposed: the workers left no connection open on either server.
    await db.dispose()
    counts: dict[str | None, int] = {}

    async def closed() -> bool:
        nonlocal counts
        counts = await server_connections(db)
        return all(count == 0 for count in counts.values())

    await wait_until("the workers' connections closed", closed, guard=30)


# -- in-process workers on SQLite ---------------------------------------------------------------


@dataclass
class Sqlite:
    db: AsyncBind
    main: sa.Table
    other: sa.Table


@pytest.fixture
async def sqlite(new_database: NewDatabase, make_db: MakeDb) -> Sqlite:
    """An AsyncBind over two SQLite files, each with a ``job_rows`` table."""
    db = make_db(await new_database("sqlite"), binds={"other": await new_database("sqlite")})
    found = Sqlite(db, job_rows(db, None), job_rows(db, "other"))
    await db.create_all()
    await db.dispose()
    return found


def worker_of(settings: dict[str, Any], redis: Redis, *, burst: bool = True) -> Worker:
    """An in-process arq worker, by default in burst mode (it stops once the queue is empty)."""
    return create_worker(
        settings,
        redis_settings=RedisSettings.from_dsn(REDIS_URL),
        queue_name=redis.queue,
        burst=burst,
        handle_signals=False,
        poll_delay=0.01,
    )


async def write_rows(found: Sqlite, ctx: dict[str, Any]) -> None:
    row = {"job_id": ctx["job_id"], "worker": os.getpid()}
    await found.db.session.execute(found.main.insert().values(row))
    await found.db.session.execute(found.other.insert().values(row))


@pytest.mark.sqlite
@arq_close_warning
async def test_each_job_runs_in_a_scope_of_its_own(sqlite: Sqlite, redis: Redis) -> None:
    db = sqlite.db
    events: list[str] = []

    async def write(ctx: dict[str, Any]) -> bool:
        await write_rows(sqlite, ctx)
        session = db.session.info  # the job's session, the same after other jobs ran meanwhile
        session["job_id"] = ctx["job_id"]
        await asyncio.sleep(0.01)
        return bool(db.session.info["job_id"] == ctx["job_id"])

    async def commit_then_fail(ctx: dict[str, Any]) -> None:
        await write_rows(sqlite, ctx)
        await db.session.commit()  # what a job commits itself stays
        await write_rows(sqlite, {"job_id": ctx["job_id"] + ":after"})
        raise ValueError("this job fails on purpose")

    async def write_then_retry(ctx: dict[str, Any]) -> int:
        await write_rows(sqlite, ctx)
        if ctx["job_try"] == 1:
            raise Retry(defer=0.01)
        return int(ctx["job_try"])

    async def write_then_hang(ctx: dict[str, Any]) -> None:
        await write_rows(sqlite, ctx)
        await asyncio.sleep(3600)

    async def at_startup(ctx: dict[str, Any]) -> None:
        events.append(f"startup with {len(await db.ping())} binds answering")

    async def at_shutdown(ctx: dict[str, Any]) -> None:
        status = db.pool_status()
        events.append(f"shutdown with {sum(s.checked_out or 0 for s in status.values())} out")

    async def every_minute(ctx: dict[str, Any]) -> None:
        await write_rows(sqlite, {"job_id": "cron"})

    settings: dict[str, Any] = {
        "functions": [
            write,
            commit_then_fail,
            write_then_retry,
            func(write_then_hang, timeout=0.2),
        ],
        "cron_jobs": [cron(every_minute, run_at_startup=True, job_id=redis.job_id("cron"))],
        "on_startup": at_startup,
        "on_shutdown": at_shutdown,
        "max_jobs": 10,
    }
    assert setup(db, settings) is settings
    # arq names a job function by its __qualname__.
    jobs = {redis.job_id(n): write.__qualname__ for n in range(20)}
    jobs |= {
        redis.job_id("fail"): commit_then_fail.__qualname__,
        redis.job_id("retry"): write_then_retry.__qualname__,
        redis.job_id("hang"): write_then_hang.__qualname__,
    }
    for job_id, function in jobs.items():
        await redis.pool.enqueue_job(function, _job_id=job_id, _queue_name=redis.queue)
    worker = worker_of(settings, redis)
    try:
        await asyncio.wait_for(worker.async_run(), GUARD)
        assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (22, 2, 1)
        assert all(s.checked_out == 0 for s in db.pool_status().values())
    finally:
        await worker.close()
    assert events == ["startup with 2 binds answering", "shutdown with 0 out"]
    # Disposed at shut-down, after the worker's own hook.
    assert all(s.checked_in == 0 for s in db.pool_status().values())

    for n in range(20):
        result = await redis.result(redis.job_id(n))
        assert result is not None and (result.success, result.result) == (True, True)
    failed = await redis.result(redis.job_id("fail"))
    assert failed is not None and isinstance(failed.result, ValueError)
    hung = await redis.result(redis.job_id("hang"))
    assert hung is not None and isinstance(hung.result, TimeoutError)
    landed = {redis.job_id(n): 1 for n in range(20)}
    landed |= {redis.job_id("fail"): 1, redis.job_id("retry"): 1, "cron": 1}
    assert await rows_per_job(db, None) == landed
    assert await rows_per_job(db, "other") == landed
    await db.dispose()


@pytest.mark.sqlite
@arq_close_warning
async def test_a_job_cancelled_by_the_workers_shutdown_rolls_back(
    sqlite: Sqlite, redis: Redis
) -> None:
    db = sqlite.db
    started = asyncio.Event()
    out_at_shutdown: list[int | None] = []

    async def hang(ctx: dict[str, Any]) -> None:
        await write_rows(sqlite, ctx)
        started.set()
        await asyncio.sleep(3600)

    async def at_shutdown(ctx: dict[str, Any]) -> None:
        out_at_shutdown.extend(s.checked_out for s in db.pool_status().values())

    settings = setup(db, {"functions": [hang], "on_shutdown": at_shutdown})
    worker = worker_of(settings, redis, burst=False)
    await redis.pool.enqueue_job(
        hang.__qualname__, _job_id=redis.job_id("hang"), _queue_name=redis.queue
    )
    running = asyncio.create_task(worker.async_run())
    try:
        await asyncio.wait_for(started.wait(), GUARD)
    finally:
        await worker.close()  # as on SIGTERM: cancels the running jobs, then shuts down
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert out_at_shutdown == [0, 0]
    assert await rows_per_job(db, None) == {}
    assert await rows_per_job(db, "other") == {}
    await db.dispose()


@pytest.mark.sqlite
async def test_a_job_in_scope_by_hand(sqlite: Sqlite) -> None:
    """``in_scope(db)`` alone: the job commits when it returns, rolls back when it raises or is
    cancelled, and ``db.session`` is no longer there after it."""
    db = sqlite.db

    @in_scope(db)
    async def write(ctx: dict[str, Any], fail: bool = False) -> str:
        await write_rows(sqlite, ctx)
        if fail:
            raise ValueError("on purpose")
        return str(ctx["job_id"])

    assert write.__qualname__.endswith("write")  # arq's name for it
    assert await write({"job_id": "ok"}) == "ok"
    with pytest.raises(ValueError, match="on purpose"):
        await write({"job_id": "failed"}, fail=True)
    with pytest.raises(NoCurrentSessionError):
        db.session.info  # noqa: B018
    assert in_scope(db)(write) is write  # not put in a second scope
    assert await rows_per_job(db, None) == {"ok": 1}
    await db.dispose()


@pytest.mark.sqlite
async def test_shutdown_disposes_even_when_the_workers_hook_fails(sqlite: Sqlite) -> None:
    db = sqlite.db

    async def failing(ctx: dict[str, Any]) -> None:
        raise RuntimeError("the worker's own shut-down failed")

    await on_startup(db)({})  # opens a connection per bind, for the check
    assert all(s.checked_in == 1 for s in db.pool_status().values())
    with pytest.raises(RuntimeError, match="own shut-down failed"):
        await on_shutdown(db, failing)({})
    assert all(s.checked_in == 0 for s in db.pool_status().values())


@pytest.mark.sqlite
async def test_startup_refuses_an_unconfigured_db() -> None:
    db = AsyncBind()
    with pytest.raises(NotConfiguredError, match=r"db.configure\(\.\.\.\)"):
        await on_startup(db)({})


@pytest.mark.sqlite
@arq_close_warning
async def test_a_bind_that_does_not_answer_stops_the_worker(
    new_database: NewDatabase, make_db: MakeDb, redis: Redis
) -> None:
    unreachable = f"postgresql://app:secret-pw@127.0.0.1:{NOTHING_LISTENS}/app"
    db = make_db(await new_database("sqlite"), binds={"reports": unreachable})
    started: list[bool] = []

    async def at_startup(ctx: dict[str, Any]) -> None:
        started.append(True)

    async def job(ctx: dict[str, Any]) -> None:
        pass

    settings = setup(db, {"functions": [job], "on_startup": at_startup}, ping_timeout=5)
    worker = worker_of(settings, redis)
    try:
        with pytest.raises(StartupCheckError) as caught:
            await asyncio.wait_for(worker.async_run(), GUARD)
    finally:
        await worker.close()
    assert started == []  # the worker's own start-up never ran
    assert list(caught.value.failed) == ["reports"]
    assert "BindUnavailableError" in caught.value.failed["reports"]
    message = str(caught.value)
    assert "The arq worker did not start" in message
    assert "bind 'reports'" in message and "the default bind" not in message
    assert "secret-pw" not in message
    again = pickle.loads(pickle.dumps(caught.value))  # as arq and process pools hand errors back
    assert (type(again), str(again), again.failed) == (
        StartupCheckError,
        message,
        caught.value.failed,
    )


@pytest.mark.sqlite
async def test_setup_refuses_what_arq_would_not_run(sqlite: Sqlite) -> None:
    db = sqlite.db

    def not_async(ctx: dict[str, Any]) -> None:
        pass

    async def job(ctx: dict[str, Any]) -> None:
        pass

    with pytest.raises(ConfigError, match="WorkerSettings class"):
        setup(db, [job])
    with pytest.raises(ConfigError, match="not an AsyncBind"):
        setup("sqlite://", {"functions": [job]})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"not a coroutine function.*'async def"):
        setup(db, {"functions": [not_async]})
    with pytest.raises(ConfigError, match="not an arq CronJob"):
        setup(db, {"functions": [job], "cron_jobs": [job]})
    with pytest.raises(ConfigError, match="cannot be called"):
        setup(db, {"functions": [job], "on_startup": "startup"})
    with pytest.raises(ConfigError, match="positive number of seconds"):
        setup(db, {"functions": [job]}, ping_timeout=0)


@pytest.mark.sqlite
async def test_setup_changes_a_settings_class_once(sqlite: Sqlite) -> None:
    db = sqlite.db

    async def job(ctx: dict[str, Any]) -> None:
        pass

    class WorkerSettings:
        functions = [job, func(job, name="other_name", timeout=5)]

    assert setup(db, WorkerSettings) is WorkerSettings
    first = list(WorkerSettings.functions)
    hooks = WorkerSettings.on_startup, WorkerSettings.on_shutdown  # type: ignore[attr-defined]
    assert [f.name for f in first] == [job.__qualname__, "other_name"]  # type: ignore[union-attr]
    assert first[1].timeout_s == 5  # type: ignore[union-attr]
    setup(db, WorkerSettings)
    assert [f.coroutine for f in WorkerSettings.functions] == [f.coroutine for f in first]  # type: ignore[union-attr]
    assert (WorkerSettings.on_startup, WorkerSettings.on_shutdown) == hooks  # type: ignore[attr-defined]
