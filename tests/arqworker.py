"""The arq worker that tests/test_arq.py runs in processes of its own: ``python -m arq
arqworker.WorkerSettings``, configured by environment variables.

- ``ASYNCBIND_ARQ_POSTGRESQL``, ``ASYNCBIND_ARQ_MYSQL``: the default bind and bind ``"other"``,
  each with a table ``job_rows`` (``job_id``, ``worker``: the worker's process id).
- ``ASYNCBIND_ARQ_REDIS``, ``ASYNCBIND_ARQ_QUEUE``: where the jobs come from.
- ``ASYNCBIND_ARQ_REPORTS``: a folder; at shut-down, before asyncbind disposes the engines, the
  worker writes its pools' status there, as ``<pid>.json``.

Every job writes one row per bind in its own session (``db.session``), then succeeds, fails,
asks to be retried on its first try, or hangs until its timeout kills it.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from arq import Retry, func
from arq.connections import RedisSettings

from asyncbind import AsyncBind
from asyncbind.integrations.arq import setup

#: Seconds a hanging job runs before arq's job timeout cancels it.
HANG_TIMEOUT = 2

db = AsyncBind(
    os.environ["ASYNCBIND_ARQ_POSTGRESQL"], binds={"other": os.environ["ASYNCBIND_ARQ_MYSQL"]}
)


def job_rows(db: AsyncBind, bind_key: str | None) -> sa.Table:
    """The table ``job_rows`` of ``bind_key``."""
    return db.Table(
        "job_rows",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.String(100), nullable=False),
        sa.Column("worker", sa.Integer, nullable=False),
        bind_key=bind_key,
    )


main_rows = job_rows(db, None)
other_rows = job_rows(db, "other")


async def write(ctx: dict[str, Any]) -> int:
    row = {"job_id": ctx["job_id"], "worker": os.getpid()}
    await db.session.execute(main_rows.insert().values(row))
    await db.session.execute(other_rows.insert().values(row))
    return os.getpid()


async def write_then_fail(ctx: dict[str, Any]) -> None:
    await write(ctx)
    raise ValueError("this job fails on purpose")


async def write_then_retry(ctx: dict[str, Any]) -> int:
    await write(ctx)
    if ctx["job_try"] == 1:
        raise Retry(defer=0.01)
    return ctx["job_try"]  # type: ignore[no-any-return]


async def write_then_hang(ctx: dict[str, Any]) -> None:
    await write(ctx)
    await asyncio.sleep(3600)


async def write_then_hang_in_postgresql(ctx: dict[str, Any]) -> None:
    await write(ctx)
    await db.session.execute(sa.text("SELECT pg_sleep(3600)"))


async def write_then_hang_in_mariadb(ctx: dict[str, Any]) -> None:
    """MariaDB goes on with the SLEEP after the job is cancelled (and its connection dropped),
    until it ends: a short one, so that the test sees the server idle again."""
    await write(ctx)
    sleep = sa.text(f"SELECT SLEEP({HANG_TIMEOUT + 3})")
    await db.session.execute(sleep, bind_arguments={"bind_key": "other"})


async def announce(ctx: dict[str, Any]) -> None:
    """The worker's own on_startup: runs once asyncbind's start-up check has passed."""
    await ctx["redis"].sadd(f"{os.environ['ASYNCBIND_ARQ_QUEUE']}:ready", os.getpid())


async def report_pools(ctx: dict[str, Any]) -> None:
    """The worker's own on_shutdown: runs before asyncbind disposes the engines."""
    status = {str(key): vars_of(pool) for key, pool in db.pool_status().items()}
    path = Path(os.environ["ASYNCBIND_ARQ_REPORTS"]) / f"{os.getpid()}.json"
    path.write_text(json.dumps(status))


def vars_of(status: Any) -> dict[str, Any]:
    return {name: getattr(status, name) for name in ("pool", "size", "checked_out", "checked_in")}


class WorkerSettings:
    functions = [
        write,
        write_then_fail,
        write_then_retry,
        func(write_then_hang, timeout=HANG_TIMEOUT),
        func(write_then_hang_in_postgresql, timeout=HANG_TIMEOUT),
        func(write_then_hang_in_mariadb, timeout=HANG_TIMEOUT),
    ]
    on_startup = announce
    on_shutdown = report_pools
    queue_name = os.environ["ASYNCBIND_ARQ_QUEUE"]
    redis_settings = RedisSettings.from_dsn(os.environ["ASYNCBIND_ARQ_REDIS"])
    poll_delay = 0.05
    max_jobs = 10
    job_timeout = 300  # the jobs that do not hang finish long before, even on a busy machine
    max_tries = 3


setup(db, WorkerSettings)
