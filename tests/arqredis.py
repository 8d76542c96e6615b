"""Redis for the arq tests: the server's test database, and a token that names every key a test
makes, so that the test can delete them all at its end.

The server comes from ``ASYNCBIND_TEST_REDIS_URL`` (default: database 7 of the local server). A
server that is down skips the test locally and fails it under ``CI=true``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job, JobResult
from conftest import IN_CI

REDIS_URL = os.environ.get("ASYNCBIND_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")


@dataclass
class Redis:
    pool: ArqRedis
    token: str

    @property
    def queue(self) -> str:
        """This test's queue."""
        return f"asyncbind-test:{self.token}"

    def job_id(self, name: object) -> str:
        """The id of this test's job ``name``."""
        return f"{self.token}:{name}"

    async def result(self, job_id: str) -> JobResult | None:
        """What arq recorded of the job, or None while it has not finished."""
        return await Job(job_id, self.pool, _queue_name=self.queue).result_info()


@asynccontextmanager
async def redis_for_test() -> AsyncIterator[Redis]:
    """A connection pool to the test database; the keys with the token are deleted at the end."""
    settings = RedisSettings.from_dsn(REDIS_URL)
    settings.conn_retries = 1
    try:
        pool = await create_pool(settings)
    except Exception as exc:  # any failure to connect means "no server"
        message = f"Redis is not reachable ({type(exc).__name__}: {exc})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    found = Redis(pool, uuid.uuid4().hex[:12])
    try:
        yield found
    finally:
        keys = [key async for key in pool.scan_iter(match=f"*{found.token}*", count=1000)]
        for start in range(0, len(keys), 500):
            await pool.delete(*keys[start : start + 500])
        await pool.aclose()
