"""Event loops: dispose() in a new loop closes the connections made in an old one, closed or not.

A worker that runs each job with ``asyncio.run()``, or a test suite with a fresh loop per test,
disposes in one loop the connections another loop made. They are closed there and then, not left
to the garbage collector: the servers' connection counts are back to where they started right
after ``dispose()``, with the collector off, and nothing is reported later either.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from quiet import Reports
from serverstate import server_connections, settled_connections

from asyncbind import AsyncBind

pytestmark = [pytest.mark.sqlite, pytest.mark.postgresql, pytest.mark.mysql]

ROUNDS = 50
#: Sessions used at once in each round, so that each pool holds this many connections.
SESSIONS = 3
BACKEND_OF = {None: "postgresql", "maria": "mysql", "lite": "sqlite"}


class Binds:
    """One AsyncBind over a PostgreSQL, a MariaDB and a SQLite database, and their counts."""

    def __init__(self, urls: dict[str | None, str]) -> None:
        self.db = AsyncBind(urls[None], binds={k: u for k, u in urls.items() if k is not None})
        self.databases = {key: sa.make_url(url).database or "" for key, url in urls.items()}

    async def connections(self, expected: dict[str | None, int] | None = None) -> dict[Any, int]:
        """Each bind's open connections: the server's count, or SQLite's open files.

        With ``expected``, the servers are given time to notice connections that just ended.
        """
        counts: dict[Any, int] = {}
        for key, backend in BACKEND_OF.items():
            if backend == "sqlite":
                counts[key] = open_files(self.databases[key])
            elif expected is None:
                counts[key] = await server_connections(backend, self.databases[key])
            else:
                counts[key] = await settled_connections(backend, self.databases[key], expected[key])
        return counts

    async def use(self) -> None:
        """Use every bind from ``SESSIONS`` sessions at once."""

        async def one(key: str | None) -> None:
            async with self.db.session() as session:
                sql = sa.text("SELECT 1")
                assert (await session.execute(sql, bind_arguments={"bind_key": key})).scalar() == 1

        await asyncio.gather(*(one(key) for key in BACKEND_OF for _ in range(SESSIONS)))


def open_files(path: str) -> int:
    """How many file descriptors of this process are open on ``path``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == path
        except OSError:
            pass  # the listing's own descriptor, closed meanwhile
    return count


@pytest.fixture
async def binds(new_database: NewDatabase) -> AsyncIterator[Binds]:
    if not os.path.isdir("/proc/self/fd"):  # noqa: ASYNC240 (a check of the platform)
        pytest.skip("counts open files through /proc")
    binds = Binds({key: await new_database(backend) for key, backend in BACKEND_OF.items()})
    yield binds
    await binds.db.dispose()  # whichever loop made what a failed test left behind


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def run_in_new_loop(n: int, main: Callable[[], Coroutine[Any, Any, Any]], reports: Reports) -> Any:
    """Run ``main()`` in a new event loop, closed afterwards: with asyncio.run() in even rounds,
    with a bare loop (no shutdown of async generators or executor) in odd ones."""
    if n % 2 == 0:
        with asyncio.Runner() as runner:
            reports.watch(runner.get_loop())
            return runner.run(main())
    loop = reports.watch(asyncio.new_event_loop())
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def test_dispose_in_each_new_loop_closes_the_connections_of_the_closed_one_before(
    binds: Binds, collector_off: None
) -> None:
    reports = Reports().start()
    try:
        baseline = run_in_new_loop(0, binds.connections, reports)
        for n in range(ROUNDS):

            async def round_() -> dict[Any, int]:
                await binds.db.dispose()
                after_dispose = await binds.connections(expected=baseline)
                await binds.use()
                return after_dispose

            after_dispose = run_in_new_loop(n, round_, reports)
            assert after_dispose == baseline, f"round {n}: the previous loop's connections"
            assert reports.all() == {k: [] for k in reports.all()}, f"round {n}"

        async def last() -> dict[Any, int]:
            await binds.db.dispose()
            return await binds.connections(expected=baseline)

        assert run_in_new_loop(ROUNDS, last, reports) == baseline
        gc.enable()
        gc.collect()
    finally:
        reports.stop()
    assert reports.all() == {k: [] for k in reports.all()}


def test_dispose_closes_the_connections_of_a_loop_that_is_still_open(
    binds: Binds, collector_off: None
) -> None:
    reports = Reports().start()
    try:
        baseline = run_in_new_loop(0, binds.connections, reports)
        first = reports.watch(asyncio.new_event_loop())
        try:
            first.run_until_complete(binds.use())

            async def dispose() -> dict[Any, int]:
                before = await binds.connections()
                await binds.db.dispose()
                return {"before": before, "after": await binds.connections(expected=baseline)}

            counts = run_in_new_loop(1, dispose, reports)
            assert counts["before"] == {key: SESSIONS for key in BACKEND_OF}
            assert counts["after"] == baseline
            # The first loop lets go of its side when it next runs.
            first.run_until_complete(asyncio.sleep(0))
        finally:
            first.close()
        gc.enable()
        gc.collect()
    finally:
        reports.stop()
    assert reports.all() == {k: [] for k in reports.all()}
