"""Tenant groups: the same models in one database per tenant, chosen by ``db.route()``.

Every row is written with the name of the tenant that wrote it, and each tenant's database is
read directly (never through the AsyncBind under test), so a row that landed in another tenant's
database, or in the default one, is seen.
"""

from __future__ import annotations

import asyncio
import pickle
import re
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase, require_server, server_url
from readmeblocks import python_block, run_python
from serverconns import no_server_connections, read_rows, server_connections, table_names
from sqlalchemy import orm as sa_orm

from asyncbind import (
    AsyncBind,
    BindErrors,
    BindUnavailableError,
    ConfigError,
    DatabaseNotFoundError,
    PoolTimeoutError,
    TenantMismatchError,
    UnknownBindError,
    UnresolvedTenantError,
)


@dataclass
class App:
    db: AsyncBind
    Note: Any  # group "tenant"
    Item: Any  # default bind


def make_app(db: AsyncBind) -> App:
    class Note(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "notes"
        __bind_key__ = "tenant"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
        tenant: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(40))
        text: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(40))

    class Item(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "items"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)

    return App(db, Note, Item)


async def rows_in(url: str) -> list[tuple[str, str]]:
    return [
        (str(tenant), str(text))
        for tenant, text in await read_rows(url, "SELECT tenant, text FROM notes ORDER BY id")
    ]


@pytest.fixture
async def two_tenants(
    backend: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> tuple[App, dict[str, str], str]:
    """An app whose group "tenant" has tenants "acme" and "globex" on ``backend``, their tables
    made; and the default bind's URL."""
    default = await new_database(backend)
    urls = {"acme": await new_database(backend), "globex": await new_database(backend)}
    app = make_app(make_db(default))
    app.db.add_group("tenant", url=urls.__getitem__, max_engines=4)
    await app.db.create_all()  # the default bind; the group is skipped with no tenant routed
    for tenant in urls:
        await app.db.create_all(bind_key="tenant", tenant=tenant)
    return app, urls, default


async def test_statements_go_to_the_routed_tenant(
    two_tenants: tuple[App, dict[str, str], str],
) -> None:
    app, urls, default = two_tenants
    db, Note = app.db, app.Note
    assert await table_names(default) == {"items"}
    assert await table_names(urls["acme"]) == {"notes"}
    for tenant in ("acme", "globex", "acme"):
        async with db.route(tenant=tenant), db.session() as session:
            session.add(Note(tenant=tenant, text="orm"))
            session.add(app.Item())  # the default bind, in the same session
            await session.commit()
            await session.execute(sa.insert(Note.__table__).values(tenant=tenant, text="core"))
            await session.commit()
            seen = (await session.scalars(sa.select(Note.tenant).distinct())).all()
            assert seen == [tenant]
            assert db.get_engine("tenant") is db.get_engine("tenant", tenant=tenant)
    assert await rows_in(urls["acme"]) == [("acme", "orm"), ("acme", "core")] * 2
    assert await rows_in(urls["globex"]) == [("globex", "orm"), ("globex", "core")]
    assert len(await read_rows(default, "SELECT id FROM items")) == 3


async def test_no_tenant_is_an_error_never_the_default_database(
    two_tenants: tuple[App, dict[str, str], str],
) -> None:
    app, urls, default = two_tenants
    db, Note = app.db, app.Note
    async with db.engine.begin() as conn:  # a table the statements would fit, were they sent
        await conn.run_sync(lambda sync: Note.__table__.to_metadata(sa.MetaData()).create(sync))
    async with db.session() as session:
        attempts = [
            session.execute(sa.select(Note)),
            session.get(Note, 1),
            session.execute(sa.insert(Note.__table__).values(tenant="x", text="core")),
            session.execute(sa.select(Note.id), bind_arguments={"bind_key": "tenant"}),
        ]
        for attempt in attempts:
            with pytest.raises(UnresolvedTenantError, match="'tenant'") as info:
                await attempt
            assert info.value.group == "tenant"
        session.add(Note(tenant="x", text="orm"))
        with pytest.raises(UnresolvedTenantError, match="model 'Note'"):
            await session.commit()
    for call in (
        db.create_all(bind_key="tenant"),
        db.drop_all(bind_key="tenant"),
    ):
        with pytest.raises(UnresolvedTenantError, match=r"db.route\(tenant=...\)"):
            await call
    with pytest.raises(UnresolvedTenantError):
        db.get_engine("tenant")
    assert await read_rows(default, "SELECT id FROM notes") == []
    for url in urls.values():
        assert await read_rows(url, "SELECT id FROM notes") == []


async def test_a_session_serves_one_tenant(
    two_tenants: tuple[App, dict[str, str], str],
) -> None:
    app, urls, _ = two_tenants
    db, Note = app.db, app.Note
    async with db.session() as session:
        with db.route(tenant="acme"):
            session.add(Note(tenant="acme", text="inside"))
            await session.flush()
        # Outside the route, the session keeps working with the tenant it used.
        session.add(Note(tenant="acme", text="after"))
        await session.commit()
        assert len((await session.scalars(sa.select(Note))).all()) == 2
        with db.route(tenant="globex"):
            with pytest.raises(TenantMismatchError, match=r"'acme'.*'globex'") as info:
                await session.execute(sa.select(Note))
        assert (info.value.first, info.value.then) == ("acme", "globex")
        one = (await session.scalars(sa.select(Note))).first()  # in the identity map
        assert one is not None
        with db.route(tenant="globex"):  # get() would answer from it without a statement
            with pytest.raises(TenantMismatchError, match=r"'acme'.*'globex'"):
                await session.get(Note, one.id)
            with pytest.raises(TenantMismatchError, match=r"'acme'.*'globex'"):
                await session.get_one(Note, one.id)
        assert await session.get(Note, one.id) is one
    assert await rows_in(urls["acme"]) == [("acme", "inside"), ("acme", "after")]
    assert await rows_in(urls["globex"]) == []


def log_tenant_statements(db: AsyncBind, tenants: list[str]) -> list[tuple[str, str]]:
    """Every statement the engines of ``tenants`` (group "tenant") run from now on, as
    ``(tenant, sql)``."""
    log: list[tuple[str, str]] = []
    for tenant in tenants:

        def listener(conn: Any, cursor: Any, sql: str, *args: Any, _tenant: str = tenant) -> None:
            log.append((_tenant, sql))

        engine = db.get_engine("tenant", tenant=tenant).sync_engine
        sa.event.listen(engine, "before_cursor_execute", listener)
    return log


async def test_an_object_is_written_only_to_the_tenant_it_was_added_or_loaded_in(
    two_tenants: tuple[App, dict[str, str], str],
) -> None:
    """The tenant an object belongs to is the one routed (or the session's) when it was added or
    loaded: a flush that would write it to another tenant is refused before any SQL."""
    app, urls, _ = two_tenants
    db, Note = app.db, app.Note
    ids = {}
    for tenant in ("acme", "globex"):
        async with db.route(tenant=tenant), db.session() as session:
            first = Note(tenant=tenant, text="one")
            session.add(first)
            await session.commit()
            ids[tenant] = first.id
    assert ids["acme"] == ids["globex"]  # the same primary key in both databases
    sent = log_tenant_statements(db, ["acme", "globex"])

    # Added in two routes, committed (or autoflushed) in the second.
    async with db.session() as session:
        with db.route(tenant="acme"):
            merged = await session.merge(Note(tenant="acme", text="merged"))
            for_acme = Note(tenant="acme", text="pending")
            session.add(for_acme)
        with db.route(tenant="globex"):
            session.add(Note(tenant="globex", text="two"))
            with pytest.raises(TenantMismatchError, match=r"'acme'.*'globex'") as info:
                await session.commit()
            assert (info.value.group, info.value.first, info.value.then) == (
                "tenant",
                "acme",
                "globex",
            )
            assert "new object" in str(info.value) and "model 'Note'" in str(info.value)
            with pytest.raises(TenantMismatchError, match=r"'acme'.*'globex'"):
                await session.execute(sa.select(Note))  # its autoflush
            assert sent == []
            session.expunge(for_acme)  # what the message suggests
            with pytest.raises(TenantMismatchError, match=r"'acme'.*'globex'"):
                await session.commit()
            session.expunge(merged)
            await session.commit()

    # Added in a route for another tenant than the session's, committed after the route ends,
    # where the session's own tenant would take it.
    async with db.session() as session:
        with db.route(tenant="acme"):
            session.add(Note(tenant="acme", text="three"))
            await session.flush()
        with db.route(tenant="globex"):
            session.add(Note(tenant="globex", text="meant for globex"))
        del sent[:]
        with pytest.raises(TenantMismatchError, match=r"'globex'.*'acme'"):
            await session.commit()
        assert sent == []
        await session.rollback()

    # Loaded from one tenant, then changed or deleted in a session of the other.
    async with db.route(tenant="acme"):
        async with db.session() as session:
            loaded = await session.get_one(Note, ids["acme"])
        async with db.session() as session:
            gone = await session.get_one(Note, ids["acme"])
    async with db.route(tenant="globex"), db.session() as session:
        session.add(loaded)
        loaded.text = "changed in globex"
        with pytest.raises(
            TenantMismatchError, match=rf"primary key {ids['acme']}.*'acme'.*'globex'"
        ):
            await session.commit()
        session.expunge(loaded)
    async with db.route(tenant="globex"), db.session() as session:
        session.add(gone)
        await session.delete(gone)
        with pytest.raises(TenantMismatchError, match=r"'acme'.*'globex'"):
            await session.commit()
    # In the session that loaded it, under another tenant's route.
    async with db.session() as session:
        with db.route(tenant="acme"):
            mine = await session.get_one(Note, ids["acme"])
        mine.text = "changed in globex"
        with db.route(tenant="globex"):
            with pytest.raises(TenantMismatchError, match=r"'acme'.*'globex'"):
                await session.commit()
    assert [sql for _, sql in sent if not sql.startswith("SELECT")] == []

    assert await rows_in(urls["acme"]) == [("acme", "one")]
    assert await rows_in(urls["globex"]) == [("globex", "one"), ("globex", "two")]


async def test_tasks_inherit_the_route_and_routes_nest(
    make_db: Callable[..., AsyncBind], tmp_path: Path
) -> None:
    app = make_app(make_db(f"sqlite:///{tmp_path / 'main.db'}"))
    db = app.db
    db.add_group("tenant", url=lambda tenant: f"sqlite:///{tmp_path / tenant}.db")
    db.add_group("region", url=lambda region: f"sqlite:///{tmp_path / region}.db")

    async def tenant_of() -> str:
        return str(db.get_engine("tenant").url.database).rsplit("/", 1)[-1]

    async with db.route(tenant="a", region="eu"):
        assert await asyncio.create_task(tenant_of()) == "a.db"
        with db.route(tenant="b"):
            assert await tenant_of() == "b.db"
            assert str(db.get_engine("region").url.database).endswith("eu.db")
        assert await tenant_of() == "a.db"
    assert db.groups["tenant"].current_tenant() is None


async def test_one_route_object_serves_concurrent_tasks(
    make_db: Callable[..., AsyncBind], tmp_path: Path
) -> None:
    """A db.route(...) kept and entered by several tasks at once (a module-level constant): each
    task is routed inside its block and not after it, whatever order they leave in."""
    db = make_app(make_db(f"sqlite:///{tmp_path / 'main.db'}")).db
    group = db.add_group("tenant", url=lambda tenant: f"sqlite:///{tmp_path / tenant}.db")
    admin = db.route(tenant="admin")
    first_in, second_in, first_out = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def first() -> list[str | None]:
        seen = []
        async with admin:
            first_in.set()
            await second_in.wait()
            seen.append(group.current_tenant())
        seen.append(group.current_tenant())
        first_out.set()
        return seen

    async def second() -> list[str | None]:
        seen = []
        await first_in.wait()
        with db.route(tenant="acme"):
            with admin:
                second_in.set()
                await first_out.wait()
                seen.append(group.current_tenant())
                with admin:  # the same object, nested
                    seen.append(group.current_tenant())
                seen.append(group.current_tenant())
            seen.append(group.current_tenant())
        seen.append(group.current_tenant())
        return seen

    assert await asyncio.gather(first(), second()) == [
        ["admin", None],
        ["admin", "admin", "admin", "acme", None],
    ]
    assert group.current_tenant() is None
    with pytest.raises(RuntimeError, match=r"db.route\(tenant='admin'\).*same task"):
        admin.__exit__(None, None, None)  # never entered here


async def test_groups_and_routes_refuse_what_is_wrong(
    make_db: Callable[..., AsyncBind], tmp_path: Path
) -> None:
    db = make_db(f"sqlite:///{tmp_path / 'main.db'}", binds={"users": "sqlite://"})
    make_app(db)

    def failing(tenant: str) -> str:
        raise KeyError(tenant)

    for key, url, max_engines, words in [
        ("users", str, 4, "names no bind or group yet"),
        (None, str, 4, "is a string"),
        ("__all__", str, 4, "'__all__'"),
        ("tenant", "sqlite:///x.db", 4, "a function of the tenant"),
        ("tenant", str, 0, "1 or more"),
        ("tenant", str, True, "1 or more"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            db.add_group(key, url=url, max_engines=max_engines)  # type: ignore[arg-type]
    assert dict(db.groups) == {}

    group = db.add_group("tenant", url=failing)
    with pytest.raises(ConfigError, match="'tenant'"):
        db.add_group("tenant", url=str)
    with pytest.raises(ConfigError, match=r"not a tenant group.*'tenant'"):
        db.route(tenantt="acme")
    with pytest.raises(ConfigError, match="non-empty string"):
        db.route(tenant=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="url\\(\\) raised KeyError for tenant 'acme'"):
        db.get_engine("tenant", tenant="acme")

    db.add_group(
        "secret", url=lambda tenant: {"url": "postgresql://u:s3cret@127.0.0.1/x", "pool_size": "2"}
    )
    with pytest.raises(ConfigError, match=r"Tenant 'acme'.*'pool_size'") as info:
        db.get_engine("secret", tenant="acme")
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match="selects no tenant group"):
        await db.create_all(bind_key=None, tenant="acme")
    assert dict(group.engines) == {}
    with pytest.raises(
        UnknownBindError, match="configured: the default bind, 'secret', 'tenant', 'users'"
    ):
        db.get_engine("tenantt")


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_errors_of_a_tenants_engine_name_the_tenant(
    make_db: Callable[..., AsyncBind], tmp_path: Path
) -> None:
    """A tenant whose server is down, whose database is missing or whose pool is exhausted: the
    error names the tenant as well as the group's bind key, and pickles with it."""
    for backend in ("postgresql", "mysql"):
        await require_server(backend)
    port = closed_port()
    missing = f"asyncbind_missing_{uuid.uuid4().hex[:12]}"
    urls: dict[str, Any] = {
        "down": f"postgresql://postgres@127.0.0.1:{port}/x",
        "mdown": f"mysql://root@127.0.0.1:{port}/x",
        "nodb": server_url("postgresql", missing),
        "mnodb": server_url("mysql", missing),
        "busy": {
            "url": f"sqlite:///{tmp_path / 'busy.db'}",
            "pool_size": 1,
            "max_overflow": 0,
            "pool_timeout": 0.01,
        },
    }
    app = make_app(make_db(f"sqlite:///{tmp_path / 'main.db'}"))
    db, Note = app.db, app.Note
    db.add_group("tenant", url=urls.__getitem__)
    failures: list[tuple[str, type[Exception], str]] = [
        ("down", BindUnavailableError, "is unavailable"),
        ("mdown", BindUnavailableError, "is unavailable"),
        ("nodb", DatabaseNotFoundError, f"database '{missing}' was not found.*the tenant's URL"),
        ("mnodb", DatabaseNotFoundError, f"database '{missing}' was not found.*the tenant's URL"),
    ]
    for tenant, error, words in failures:
        async with db.route(tenant=tenant), db.session() as session:
            with pytest.raises(
                error, match=rf"^Tenant '{tenant}' of bind 'tenant'.*{words}"
            ) as info:
                await session.execute(sa.select(Note))
        assert type(info.value) is error
        assert (info.value.bind_key, info.value.tenant) == ("tenant", tenant)
        again = pickle.loads(pickle.dumps(info.value))
        assert again.tenant == tenant and str(again) == str(info.value)
        with pytest.raises(BindErrors, match=rf"Tenant '{tenant}' of bind 'tenant'"):
            await db.create_all(bind_key="tenant", tenant=tenant)

    await db.create_all(bind_key="tenant", tenant="busy")
    async with db.route(tenant="busy"), db.session() as holding, db.session() as waiting:
        await holding.execute(sa.select(Note))  # the pool's one connection
        with pytest.raises(PoolTimeoutError, match=r"^Tenant 'busy' of bind 'tenant'") as timed:
            await waiting.execute(sa.select(Note))
        assert timed.value.tenant == "busy"


async def test_a_session_in_use_keeps_its_engine(
    backend: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    urls = {name: await new_database(backend) for name in ("t1", "t2", "t3")}
    app = make_app(make_db(await new_database(backend)))
    db, Note = app.db, app.Note
    group = db.add_group("tenant", url=urls.__getitem__, max_engines=1)
    for tenant in urls:
        await db.create_all(bind_key="tenant", tenant=tenant)

    async with db.route(tenant="t1"), db.session() as busy:
        busy.add(Note(tenant="t1", text="held"))
        await busy.flush()  # holds a connection of t1's engine
        held = db.get_engine("tenant")
        for other in ("t2", "t3"):
            async with db.route(tenant=other), db.session() as session:
                session.add(Note(tenant=other, text="x"))
                await session.commit()
        assert group.engines["t1"] is held  # in use: kept past the bound
        assert len(group.engines) <= 2
        await busy.commit()
    async with db.route(tenant="t2"), db.session() as session:  # t1 is idle now: evicted
        await session.execute(sa.select(Note))
    assert list(group.engines) == ["t2"]
    assert await rows_in(urls["t1"]) == [("t1", "held")]
    assert await no_server_connections(urls["t1"]) == 0
    async with db.route(tenant="t1"), db.session() as session:  # made again on demand
        assert (await session.scalars(sa.select(Note.text))).all() == ["held"]
    assert group.engines["t1"] is not held


async def test_engines_past_the_bound_are_disposed_as_their_sessions_finish(
    backend: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """More tenants busy at once than max_engines: the group holds an engine for each while they
    are, and is back within the bound once they finish, without waiting for another tenant to be
    looked up; the idle engines past it are disposed (no server connection left)."""
    names = [f"t{i}" for i in range(6)]
    urls = {name: await new_database(backend) for name in names}
    app = make_app(make_db(await new_database(backend)))
    db, Note = app.db, app.Note
    group = db.add_group("tenant", url=urls.__getitem__, max_engines=2)
    for name in names:
        await db.create_all(bind_key="tenant", tenant=name)
    busy: list[str] = []
    all_busy, release = asyncio.Event(), asyncio.Event()

    async def request(tenant: str) -> None:
        async with db.route(tenant=tenant), db.session() as session:
            session.add(Note(tenant=tenant, text="x"))
            await session.flush()  # holds a connection of the tenant's engine
            busy.append(tenant)
            if len(busy) == len(names):
                all_busy.set()
            await release.wait()
            await session.commit()

    tasks = [asyncio.create_task(request(name)) for name in names]
    await all_busy.wait()
    assert len(group.engines) == len(names)
    connected = 0 if backend == "sqlite" else 1
    assert [await server_connections(urls[name]) for name in names] == [connected] * len(names)
    release.set()
    await asyncio.gather(*tasks)
    assert len(group.engines) == 2
    for name in names:
        assert await rows_in(urls[name]) == [(name, "x")]
        if name not in group.engines:
            assert await no_server_connections(urls[name]) == 0
    assert len(group.engines) == 2


async def test_in_memory_tenants_are_kept_past_the_bound(
    make_db: Callable[..., AsyncBind],
) -> None:
    """An in-memory tenant's engine shares one connection (its pool cannot tell whether a session
    uses it) and is its whole database: it is never evicted, in use or idle."""
    app = make_app(make_db("sqlite://"))
    db, Note = app.db, app.Note
    group = db.add_group("tenant", url=lambda tenant: "sqlite://", max_engines=1)
    async with db.route(tenant="t0"), db.session() as busy:
        await db.create_all(bind_key="tenant")
        busy.add(Note(tenant="t0", text="held"))
        await busy.flush()  # t0's transaction is open
        async with db.route(tenant="t1"):
            await db.create_all(bind_key="tenant")
        await busy.commit()
        assert (await busy.scalars(sa.select(Note.text))).all() == ["held"]
    async with db.route(tenant="t2"):  # t0 and t1 are idle now, and still kept
        await db.create_all(bind_key="tenant")
    assert sorted(group.engines) == ["t0", "t1", "t2"]
    async with db.route(tenant="t0"), db.session() as session:
        assert (await session.scalars(sa.select(Note.text))).all() == ["held"]


@pytest.mark.parametrize(
    "backends",
    [
        pytest.param(
            ("postgresql", "mysql"),
            id="postgresql+mysql",
            marks=[pytest.mark.postgresql, pytest.mark.mysql],
        ),
        pytest.param(("sqlite",), id="sqlite", marks=pytest.mark.sqlite),
    ],
)
async def test_many_tenants_under_concurrent_requests(
    backends: tuple[str, ...], new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """52 tenant databases, a bound of 8 engines, many concurrent requests each in its own
    tenant: every row lands in its own tenant's database, the engines stay within the bound,
    evicted engines are disposed (no server connection left) and made again on demand."""
    for backend in backends:
        await require_server(backend)
    names = [f"t{i:02d}" for i in range(52)]
    urls = {name: await new_database(backends[i % len(backends)]) for i, name in enumerate(names)}
    app = make_app(make_db(await new_database(backends[0])))
    db, Note = app.db, app.Note
    bound = 8
    group = db.add_group("tenant", url=urls.__getitem__, max_engines=bound)
    engines_seen: dict[str, set[Any]] = {name: set() for name in names}
    peak = 0
    busy = asyncio.Semaphore(6)  # requests in flight at once, fewer than the bound

    async def request(tenant: str, number: int) -> None:
        nonlocal peak
        async with busy, db.route(tenant=tenant):
            async with db.session() as session:
                session.add_all(Note(tenant=tenant, text=f"{number}-{i}") for i in range(3))
                await session.commit()
                mine = (await session.scalars(sa.select(Note.tenant).distinct())).all()
                assert mine == [tenant]
                engines_seen[tenant].add(db.get_engine("tenant"))
                peak = max(peak, len(group.engines))

    async with asyncio.timeout(600):
        for name in names:
            async with busy:
                await db.create_all(bind_key="tenant", tenant=name)
        await asyncio.gather(*(request(name, number) for number in range(3) for name in names))

    assert peak <= bound and len(group.engines) <= bound
    for name in names:
        rows = await rows_in(urls[name])
        assert {tenant for tenant, _ in rows} == {name}
        assert sorted(text for _, text in rows) == sorted(
            f"{n}-{i}" for n in range(3) for i in range(3)
        )
    assert any(len(seen) > 1 for seen in engines_seen.values())  # evicted, then made again
    evicted = [name for name in names if name not in group.engines]
    assert len(evicted) >= len(names) - bound
    for name in evicted:
        assert await no_server_connections(urls[name]) == 0


def test_tenant_errors_survive_pickling() -> None:
    # Process pools and task queues pickle exceptions to hand them back.
    unresolved = pickle.loads(pickle.dumps(UnresolvedTenantError("tenant", owner="model 'Note'")))
    assert unresolved.group == "tenant" and "model 'Note'" in str(unresolved)
    mismatch = pickle.loads(pickle.dumps(TenantMismatchError("tenant", "acme", "globex")))
    assert (mismatch.group, mismatch.first, mismatch.then) == ("tenant", "acme", "globex")
    assert str(mismatch) == str(TenantMismatchError("tenant", "acme", "globex"))
    flushed = TenantMismatchError("tenant", "acme", "globex", owner="the object of model 'Note'")
    again = pickle.loads(pickle.dumps(flushed))
    assert again.owner == flushed.owner and str(again) == str(flushed)


def test_readme_tenants_example_runs(tmp_path: Path) -> None:
    result = run_python(python_block("## Tenants"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["acme", "['acme']", "globex", "['globex']"]


class TenantMiddleware:
    """The README's middleware: each request is routed to the tenant in its X-Tenant header."""

    def __init__(self, app: Any, db: AsyncBind) -> None:
        self.app = app
        self.db = db

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.datastructures import Headers

        tenant = Headers(scope=scope).get("x-tenant") if scope["type"] == "http" else None
        if tenant is None:
            await self.app(scope, receive, send)
            return
        with self.db.route(tenant=tenant):
            await self.app(scope, receive, send)


async def test_starlette_requests_routed_by_middleware(
    make_db: Callable[..., AsyncBind], tmp_path: Path
) -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from asyncbind.integrations.starlette import AsyncBindMiddleware

    app = make_app(make_db(f"sqlite:///{tmp_path / 'main.db'}"))
    db, Note = app.db, app.Note
    urls = {f"t{i}": f"sqlite:///{tmp_path / f't{i}.db'}" for i in range(8)}
    db.add_group("tenant", url=urls.__getitem__, max_engines=4)
    for tenant in urls:
        await db.create_all(bind_key="tenant", tenant=tenant)

    async def add(request: Request) -> JSONResponse:
        db.session.add(Note(tenant=request.headers["x-tenant"], text=request.query_params["text"]))
        return JSONResponse({}, status_code=201)  # committed by the middleware, in the route

    async def notes(request: Request) -> JSONResponse:
        found = (await db.session.scalars(sa.select(Note.tenant).distinct())).all()
        return JSONResponse(list(found))

    web = Starlette(
        routes=[Route("/notes", add, methods=["POST"]), Route("/notes", notes)],
        middleware=[
            Middleware(TenantMiddleware, db=db),
            Middleware(AsyncBindMiddleware, db=db, autocommit=True),
        ],
    )
    transport = httpx.ASGITransport(app=web)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

        async def post(tenant: str, number: int) -> int:
            response = await client.post(
                "/notes", params={"text": str(number)}, headers={"x-tenant": tenant}
            )
            return response.status_code

        statuses = await asyncio.gather(
            *(post(tenant, number) for number in range(5) for tenant in urls)
        )
        assert set(statuses) == {201}
        for tenant in urls:
            response = await client.get("/notes", headers={"x-tenant": tenant})
            assert response.json() == [tenant]
        with pytest.raises(UnresolvedTenantError):
            await client.get("/notes")  # no tenant: an error, not the default database
    for tenant, url in urls.items():
        rows = await rows_in(url)
        assert sorted(rows) == sorted((tenant, str(number)) for number in range(5))
