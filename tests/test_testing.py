"""The pytest plugin (``asyncbind.testing``): each test's writes on every bind are rolled back.

Each case runs a small test suite of a user's with pytester, in a subprocess, against real
databases on two backends: a Quart app writes to both binds and commits, the next test sees
nothing, the app's own rollback works, and afterwards the databases themselves hold no row. The
README's own conftest.py runs the same way, in each way pytest-asyncio may set its loops up.
"""

from __future__ import annotations

import asyncio
import importlib
import textwrap
import uuid
from collections.abc import Awaitable, Coroutine
from importlib.metadata import entry_points
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from readmeblocks import python_block
from sqlalchemy import orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncEngine

from asyncbind import AsyncBind, AsyncBindError, ConfigError
from asyncbind.config import BindKey

pytest_plugins = ["pytester"]

_T = TypeVar("_T")

# pytester puts sys.modules back as it found them after each test: a driver or dialect first
# imported during one (by the check of what the databases hold) would be imported a second time in
# the next, and asyncpg's compiled protocol does not survive that. So they are imported here.
for _module in (
    "asyncpg",
    "aiomysql",
    "aiosqlite",
    "pymysql",
    "quart",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "sqlalchemy.dialects.mysql.aiomysql",
    "sqlalchemy.dialects.sqlite.aiosqlite",
):
    importlib.import_module(_module)

CONFTEST = """
import os

import pytest
import pytest_asyncio
import sqlalchemy as sa
from quart import Quart
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from asyncbind import AsyncBind, BindKeyMixin


class Base(BindKeyMixin, DeclarativeBase):
    pass


db = AsyncBind(os.environ["MAIN_URL"], binds={"other": os.environ["OTHER_URL"]}, model_class=Base)


class Note(Base):
    __tablename__ = "note"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(50))


class Event(Base):
    __bind_key__ = "other"
    __tablename__ = "event"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(50))


app = Quart(__name__)
db.init_app(app)


@app.post("/write")
async def write():
    db.session.add_all([Note(text="a note"), Event(text="an event")])
    await db.session.commit()
    return "written"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def asyncbind_db():
    await db.create_all()
    yield db
    await db.dispose()


async def counts():
    async with db.session() as session:
        notes = await session.scalar(sa.select(sa.func.count()).select_from(Note))
        events = await session.scalar(sa.select(sa.func.count()).select_from(Event))
    return notes, events
"""

TESTS = """
import sqlalchemy as sa

from conftest import Event, Note, app, counts, db


async def test_1_a_request_writes_and_commits_to_both_binds(asyncbind_rollback):
    response = await app.test_client().post("/write")
    assert response.status_code == 200
    assert await counts() == (1, 1)  # committed, as the app sees it
    assert set(asyncbind_rollback) == {None, "other"}


async def test_2_the_next_test_sees_nothing(asyncbind_rollback):
    assert await counts() == (0, 0)


async def test_3_the_apps_own_rollback_and_commit_still_work(asyncbind_rollback):
    async with db.session() as session:
        session.add_all([Note(text="dropped"), Event(text="dropped")])
        await session.flush()
        await session.rollback()
        assert await counts() == (0, 0)
        session.add(Note(text="kept"))
        await session.commit()
    async with db.scope():
        db.session.add(Event(text="kept"))
        await db.session.commit()
    assert await counts() == (1, 1)
    async with db.session() as session:
        texts = await session.scalars(sa.select(Note.text))
        assert texts.all() == ["kept"]


async def test_4_and_again_nothing(asyncbind_rollback):
    assert await counts() == (0, 0)
"""

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = {fixtures}
asyncio_default_test_loop_scope = {tests}
"""


def run_app_tests(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    main: str,
    other: str,
    files: dict[str, str],
    *,
    fixtures: str,
    tests: str,
) -> pytest.RunResult:
    """Run the test modules ``files`` of the app of CONFTEST, on databases ``main`` and ``other``,
    with event loops of scope ``fixtures`` for fixtures and ``tests`` for tests, in a pytest of
    their own with warnings as errors."""
    monkeypatch.setenv("MAIN_URL", main)
    monkeypatch.setenv("OTHER_URL", other)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(**files)
    pytester.makeini(INI.format(fixtures=fixtures, tests=tests))
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", timeout=300)


def test_the_plugin_is_registered_under_pytest11() -> None:
    found = [e for e in entry_points(group="pytest11") if e.name == "asyncbind"]
    assert [e.value for e in found] == ["asyncbind.testing"]


@pytest.mark.parametrize("scope", ["session", "function"])
async def test_each_tests_writes_on_every_bind_are_rolled_back(
    pytester: pytest.Pytester,
    backend_pair: tuple[str, str],
    new_database: NewDatabase,
    monkeypatch: pytest.MonkeyPatch,
    scope: str,
) -> None:
    """With one event loop for the whole run, and with a loop per test (the AsyncBind made its
    tables in another loop: the plugin hands its pools over to the test's)."""
    main, other = [await new_database(backend) for backend in backend_pair]
    result = run_app_tests(
        pytester, monkeypatch, main, other, {"test_app": TESTS}, fixtures=scope, tests=scope
    )

    result.assert_outcomes(passed=4)
    # What the databases themselves hold afterwards: the tables, no row.
    async with AsyncBind(main, binds={"other": other}) as db:
        for key, table in ((None, "note"), ("other", "event")):
            async with db.get_engine(key).connect() as conn:
                count = await conn.scalar(sa.text(f"SELECT count(*) FROM {table}"))
            assert count == 0, f"{table} kept {count} row(s)"


EXPLICIT_TESTS = """
import sqlalchemy as sa

from conftest import Event, Note, counts, db

MODELS = {None: Note, "other": Event}


async def test_bind_arguments(asyncbind_rollback):
    for key, model in MODELS.items():
        bind = db.get_engine(key).sync_engine
        async with db.session() as session:
            await session.execute(sa.insert(model).values(text="x"), bind_arguments={"bind": bind})
            await session.commit()
    assert await counts() == (1, 1)


async def test_session_bind(asyncbind_rollback):
    for key, model in MODELS.items():
        async with db.session(bind=db.get_engine(key)) as session:
            session.add(model(text="x"))
            await session.commit()
    assert await counts() == (1, 1)


async def test_session_binds_by_model(asyncbind_rollback):
    async with db.session(binds={model: db.get_engine(key) for key, model in MODELS.items()}) as s:
        s.add_all([Note(text="x"), Event(text="x")])
        await s.commit()
    assert await counts() == (1, 1)


async def test_session_binds_by_key(asyncbind_rollback):
    async with db.session(binds={key: db.get_engine(key) for key in MODELS}) as session:
        session.add_all([Note(text="x"), Event(text="x")])
        await session.commit()
    assert await counts() == (1, 1)


async def test_the_next_test_sees_nothing(asyncbind_rollback):
    assert await counts() == (0, 0)
"""


async def test_sessions_given_an_engine_explicitly_join_the_rollback(
    pytester: pytest.Pytester,
    backend_pair: tuple[str, str],
    new_database: NewDatabase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bind's engine given to a session (bind_arguments, bind=, binds= by model and by bind
    key) is the test's connection of it: what the session commits is rolled back too."""
    main, other = [await new_database(backend) for backend in backend_pair]
    result = run_app_tests(
        pytester,
        monkeypatch,
        main,
        other,
        {"test_explicit": EXPLICIT_TESTS},
        fixtures="session",
        tests="function",
    )

    result.assert_outcomes(passed=5)
    assert await _row_counts(main, other) == {"note": 0, "event": 0}


async def _row_counts(main: str, other: str) -> dict[str, int]:
    """How many rows the tables of CONFTEST hold, read on connections of their own."""
    counts = {}
    async with AsyncBind(main, binds={"other": other}) as db:
        for key, table in ((None, "note"), ("other", "event")):
            async with db.get_engine(key).connect() as conn:
                counts[table] = int(await conn.scalar(sa.text(f"SELECT count(*) FROM {table}")))
    return counts


DDL_TESTS = """
import sqlalchemy as sa

from conftest import Note, db


async def test_the_app_runs_ddl(asyncbind_rollback):
    async with db.session() as session:
        session.add(Note(text="before the DDL"))
        await session.commit()
        await session.execute(sa.text("CREATE INDEX ix_note_text ON note (text)"))
"""


@pytest.mark.mysql
async def test_a_transaction_mariadb_committed_for_ddl_fails_the_test(
    pytester: pytest.Pytester, new_database: NewDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MariaDB commits the test's transaction before and after DDL, and with it what the test
    wrote: the test's teardown says so, names the bind and how to avoid it."""
    main, other = await new_database("mysql"), await new_database("sqlite")
    result = run_app_tests(
        pytester,
        monkeypatch,
        main,
        other,
        {"test_ddl": DDL_TESTS},
        fixtures="session",
        tests="function",
    )

    # The session's own end fails (its savepoint went with the commit), then the teardown.
    result.assert_outcomes(failed=1, errors=1)
    database = sa.make_url(main).database
    result.stdout.fnmatch_lines(
        [
            f"E * the server committed the test's transaction on the default bind "
            f"(database '{database}') before the test ended: what the test wrote there until "
            "then may remain *DDL (CREATE, ALTER, DROP, TRUNCATE*session-scoped 'asyncbind_db'*"
        ]
    )
    assert await _row_counts(main, other) == {"note": 1, "event": 0}  # as the error says


TIMEOUT_TESTS = """
import asyncio

import pytest
import sqlalchemy as sa

from conftest import Event, Note, counts, db

SLOW = {
    "postgresql": "SELECT pg_sleep(10)",
    "mysql": "SELECT SLEEP(10)",
    "mariadb": "SELECT SLEEP(10)",
    "sqlite": "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) "
    "SELECT count(*) FROM r",
}


async def test_a_request_times_out_then_the_next_one_works(asyncbind_rollback, caplog):
    for key, model in ((None, Note), ("other", Event)):
        slow = sa.text(SLOW[db.get_engine(key).dialect.name])
        async with db.session() as session:  # a request
            session.add(model(text="before"))
            await session.commit()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await session.execute(slow, bind_arguments={"bind_key": key})
        async with db.session() as session:  # the next request
            session.add(model(text="after"))
            await session.commit()
        async with db.session() as session:
            texts = await session.scalars(sa.select(model.text))
            assert texts.all() == ["after"]  # "before" went with the dropped connection
    assert caplog.text.count("was dropped") == 2
    assert not any(connection.invalidated for connection in asyncbind_rollback.values())


async def test_the_next_test_sees_nothing(asyncbind_rollback):
    assert await counts() == (0, 0)
"""


async def test_after_a_statement_timed_out_the_next_session_works(
    pytester: pytest.Pytester,
    backend_pair: tuple[str, str],
    new_database: NewDatabase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A statement cut short drops its connection, the test's, and the transaction with it: the
    next session gets a new connection in a new transaction, rolled back in its turn."""
    main, other = [await new_database(backend) for backend in backend_pair]
    result = run_app_tests(
        pytester,
        monkeypatch,
        main,
        other,
        {"test_timeout": TIMEOUT_TESTS},
        fixtures="session",
        tests="function",
    )

    result.assert_outcomes(passed=2)
    assert await _row_counts(main, other) == {"note": 0, "event": 0}


README_APP = """
import os

import sqlalchemy as sa
from quart import Quart, request
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from asyncbind import AsyncBind, BindKeyMixin


class Base(BindKeyMixin, DeclarativeBase):
    pass


db = AsyncBind(os.environ["MAIN_URL"], binds={"audit": os.environ["OTHER_URL"]}, model_class=Base)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


class Audit(Base):
    __bind_key__ = "audit"
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    what: Mapped[str] = mapped_column(sa.String(50))


app = Quart(__name__)
db.init_app(app)


@app.post("/signup")
async def signup():
    form = await request.form
    db.session.add_all([User(name=form["name"]), Audit(what="signup")])
    await db.session.commit()
    return "created", 201


async def counts():
    async with db.session() as session:
        users = await session.scalar(sa.select(sa.func.count()).select_from(User))
        audits = await session.scalar(sa.select(sa.func.count()).select_from(Audit))
    return users, audits
"""

README_TESTS = """
from myapp import counts


async def test_signup_writes_a_user_and_an_audit_row(client):
    response = await client.post("/signup", form={"name": "ada"})
    assert response.status_code == 201
    assert await counts() == (1, 1)  # committed, as the app sees it


async def test_the_next_test_sees_neither(asyncbind_rollback):
    assert await counts() == (0, 0)
"""

#: How the loops may be set up: the tests' loop scope, the async fixtures' default one, and
#: whether the README's asyncbind_db keeps its loop_scope="session". Not here: one loop for
#: everything (the test above), and asyncbind_db without loop_scope in function loops, which
#: pytest-asyncio refuses (a session fixture cannot use a function's loop).
LOOP_SETUPS = [
    pytest.param("function", "function", True, id="tests=function,fixtures=function"),
    pytest.param("module", "function", True, id="tests=module,fixtures=function"),
    pytest.param("session", "function", True, id="tests=session,fixtures=function"),
    pytest.param("function", "session", True, id="tests=function,fixtures=session"),
    pytest.param("module", "session", True, id="tests=module,fixtures=session"),
    pytest.param("function", "session", False, id="tests=function,fixtures=session,no-loop_scope"),
    pytest.param("module", "session", False, id="tests=module,fixtures=session,no-loop_scope"),
]


@pytest.mark.parametrize(("tests", "fixtures", "loop_scope"), LOOP_SETUPS)
async def test_the_readmes_conftest_works_in_every_loop_setup(
    pytester: pytest.Pytester,
    backend_pair: tuple[str, str],
    new_database: NewDatabase,
    monkeypatch: pytest.MonkeyPatch,
    tests: str,
    fixtures: str,
    loop_scope: bool,
) -> None:
    """The README's conftest.py as written: its session fixture creates the tables in the
    session's loop and drops them there at the end, after tests in two modules that ran in
    loops of their own or in that one."""
    main, other = [await new_database(backend) for backend in backend_pair]
    monkeypatch.setenv("MAIN_URL", main)
    monkeypatch.setenv("OTHER_URL", other)
    conftest = python_block("## Testing your app")
    if not loop_scope:
        assert ', loop_scope="session")' in conftest
        conftest = conftest.replace(', loop_scope="session")', ")")
    pytester.makeconftest(conftest)
    pytester.makepyfile(myapp=README_APP, test_one=README_TESTS, test_two=README_TESTS)
    pytester.makeini(INI.format(fixtures=fixtures, tests=tests))

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", timeout=300)

    result.assert_outcomes(passed=4)
    # drop_all() ran: the databases hold no table, so nothing the tests wrote either.
    async with AsyncBind(main, binds={"audit": other}) as db:
        for key in (None, "audit"):
            async with db.get_engine(key).connect() as conn:
                tables = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
            assert tables == [], f"bind {key!r} kept {tables}"


async def test_pools_taken_over_from_another_loop_are_handed_back(
    backend_pair: tuple[str, str], new_database: NewDatabase
) -> None:
    """rolled_back() in the loop that made the pools leaves them be (nothing is disposed); when
    they belong to another loop, it takes them over and, as each later block ends too, hands
    them back: they belong to no loop, and the next user, in whatever loop, can take them."""
    from twobinds import add_models, names

    from asyncbind.testing import rolled_back

    main, other = [await new_database(backend) for backend in backend_pair]
    two = add_models(AsyncBind(main, binds={"users": other}))
    db, Item, User = two.db, two.Item, two.User

    def pools() -> dict[BindKey, sa.Pool]:
        return {key: engine.sync_engine.pool for key, engine in db.engines.items()}

    def loops() -> dict[BindKey, object]:
        return {key: pool.event_loop for key, pool in pools().items()}  # type: ignore[attr-defined]

    def in_another_loop(coro: Coroutine[Any, Any, _T]) -> Awaitable[_T]:
        return asyncio.to_thread(asyncio.run, coro)

    try:
        await db.create_all()
        made = pools()
        for _ in range(2):
            async with rolled_back(db):
                pass
        assert pools() == made  # the same pools: nothing disposed

        await db.dispose()
        await in_another_loop(names(db))  # the pools are now that loop's, closed since
        for _ in range(2):
            async with rolled_back(db), db.session() as session:
                session.add_all([Item(name="a"), User(name="a")])
                await session.commit()
            assert loops() == {None: None, "users": None}
        assert await in_another_loop(names(db)) == ([], [])
    finally:
        await db.dispose()


async def test_remove_bind_returns_inside_rolled_back(
    backend_pair: tuple[str, str], new_database: NewDatabase
) -> None:
    """remove_bind() waits for the bind's connections, and the test holds one until it ends:
    that one is rolled back and closed at once, so the call returns; while a session's
    transaction is still open on it, the call says so instead of waiting for ever."""
    from asyncbind.testing import rolled_back

    main, reports = [await new_database(backend) for backend in backend_pair]
    db = AsyncBind(main, binds={"reports": reports})

    class Report(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "reports"
        __tablename__ = "reports"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
        title: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))

    try:
        await db.create_all()
        async with rolled_back(db) as connections:
            for _ in range(2):  # configured from the start, then added during the test
                async with db.session() as session:
                    session.add(Report(title="q3"))
                    await session.commit()
                async with asyncio.timeout(10):
                    await db.remove_bind("reports")
                assert set(connections) == {None}
                await db.add_bind("reports", reports)
            async with db.session() as session:
                await session.scalar(sa.select(sa.func.count()).select_from(Report))  # begins
                with pytest.raises(AsyncBindError) as raised:
                    async with asyncio.timeout(10):
                        await db.remove_bind("reports")
        message = str(raised.value)
        assert "transaction is still open on bind 'reports'" in message
        assert "commit(), rollback() or close the session" in message
        async with AsyncBind(main, binds={"reports": reports}) as check:
            async with check.get_engine("reports").connect() as conn:
                assert await conn.scalar(sa.text("SELECT count(*) FROM reports")) == 0
    finally:
        await db.dispose()


def test_without_asyncbind_db_the_error_says_what_to_define(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI.format(fixtures="function", tests="function"))
    pytester.makepyfile(
        textwrap.dedent(
            """
            async def test_it(asyncbind_rollback):
                pass
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define a fixture named 'asyncbind_db'*"])


@pytest.mark.postgresql
@pytest.mark.mysql
async def test_starlette_and_fastapi_request_sessions_join_and_vanish(
    new_database: NewDatabase,
) -> None:
    """rolled_back() directly (what the fixture runs): the sessions of a Starlette middleware
    and of a FastAPI dependency commit into the test's transactions, and nothing is left."""
    import httpx
    from fastapi import Depends, FastAPI
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from twobinds import add_models, make_urls, names

    from asyncbind import AsyncBindSession
    from asyncbind.integrations.fastapi import session_dependency
    from asyncbind.integrations.starlette import AsyncBindMiddleware, request_session
    from asyncbind.testing import rolled_back

    postgresql, mysql = await make_urls(new_database)
    two = add_models(AsyncBind(postgresql, binds={"users": mysql}))
    db, Item, User = two.db, two.Item, two.User
    await db.create_all()

    async def starlette_write(request: Request) -> PlainTextResponse:
        session = request_session(request)
        session.add_all([Item(name="starlette"), User(name="starlette")])
        await session.commit()
        return PlainTextResponse("ok")

    starlette = Starlette(
        routes=[Route("/write", starlette_write, methods=["POST"])],
        middleware=[Middleware(AsyncBindMiddleware, db=db)],
    )
    fastapi = FastAPI()

    @fastapi.post("/write")
    async def fastapi_write(
        session: AsyncBindSession = Depends(session_dependency(db)),  # noqa: B008
    ) -> str:
        session.add_all([Item(name="fastapi"), User(name="fastapi")])
        await session.commit()
        return "ok"

    try:
        async with rolled_back(db) as connections:
            assert set(connections) == {None, "users"}
            for app in (starlette, fastapi):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    assert (await client.post("/write")).status_code == 200
            async with db.session() as session:
                items = await session.scalars(sa.select(Item.name).order_by(Item.name))
                users = await session.scalars(sa.select(User.name).order_by(User.name))
                assert (items.all(), users.all()) == (["fastapi", "starlette"],) * 2
            with pytest.raises(ConfigError, match="one at a time"):
                async with rolled_back(db):
                    pass
        assert await names(db) == ([], [])  # read on connections of their own
        assert "binds" not in db.sessionmaker.kw
    finally:
        await db.dispose()


async def test_writes_to_tenant_databases_are_rolled_back_too(
    backend_pair: tuple[str, str], new_database: NewDatabase
) -> None:
    """A tenant's engine is made on demand, so rolled_back() cannot open its connection ahead:
    the first session that uses it inside the block opens one in an outer transaction."""
    from asyncbind.testing import rolled_back

    main_backend, tenant_backend = backend_pair
    main = await new_database(main_backend)
    tenants = {tenant: await new_database(tenant_backend) for tenant in ("acme", "globex")}
    db = AsyncBind(main)
    db.add_group("tenant", url=tenants.__getitem__)

    class Item(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "items"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
        name: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))

    class Note(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "tenant"
        __tablename__ = "notes"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
        text: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))

    async def count(engine: AsyncEngine, table: str) -> int:
        async with engine.connect() as conn:
            return int(await conn.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)

    try:
        await db.create_all(bind_key=None)
        for tenant in tenants:
            await db.create_all(bind_key="tenant", tenant=tenant)
        async with rolled_back(db) as connections:
            assert set(connections) == {None}
            for tenant in tenants:
                async with db.route(tenant=tenant), db.session() as session:
                    session.add_all([Note(text=tenant), Item(name=tenant)])
                    await session.commit()
            async with db.scope(), db.route(tenant="globex"):
                db.session.add(Note(text="again"))
                await db.session.commit()
            async with db.route(tenant="globex"), db.session() as session:
                texts = await session.scalars(sa.select(Note.text).order_by(Note.text))
                assert texts.all() == ["again", "globex"]
        # What the databases themselves hold, on connections of their own.
        assert await count(db.engine, "items") == 0
        for tenant in tenants:
            assert await count(db.get_engine("tenant", tenant=tenant), "notes") == 0
    finally:
        await db.dispose()


@pytest.mark.postgresql
@pytest.mark.mysql
async def test_two_phase_sessions_commit_in_one_phase_and_vanish(
    new_database: NewDatabase,
) -> None:
    """A two-phase session cannot begin its own transactions inside the test's: under
    rolled_back() it joins them and commits in one phase, and nothing is prepared."""
    from test_twophase import prepared
    from twobinds import add_models, make_urls, names

    from asyncbind.testing import rolled_back

    postgresql, mysql = await make_urls(new_database)
    name = f"rb{uuid.uuid4().hex[:10]}"
    options = {"twophase": True}
    two = add_models(
        AsyncBind(postgresql, binds={"users": mysql}, twophase_name=name, session_options=options)
    )
    db, Item, User = two.db, two.Item, two.User
    try:
        await db.create_all()
        async with rolled_back(db):
            async with db.session() as session:  # two-phase by session_options
                session.add_all([Item(name="options"), User(name="options")])
                await session.commit()
            async with db.session(twophase=True) as session:
                session.add_all([Item(name="call"), User(name="call")])
                await session.commit()
            async with db.scope(twophase=True):
                db.session.add_all([Item(name="scope"), User(name="scope")])
                await db.session.commit()
            async with db.session() as session:
                items = await session.scalars(sa.select(Item.name).order_by(Item.name))
                assert items.all() == ["call", "options", "scope"]
        assert await names(db) == ([], [])
        assert await prepared(name) == {"postgresql": [], "mysql": []}
        async with db.session() as session:  # outside the block, two-phase as configured
            assert session.sync_session.twophase
    finally:
        await db.dispose()
