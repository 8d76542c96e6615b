"""FastAPI: the session dependency and the lifespan. The real app over httpx's ASGI transport with
its lifespan run, requests that read and write PostgreSQL and MariaDB."""

# No "from __future__ import annotations": FastAPI reads the handlers' annotations at run time,
# and Session is local to create_app.
import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException
from sqlalchemy.ext.asyncio import AsyncSession
from twobinds import (
    TwoBinds,
    add_models,
    all_zero,
    checked_in,
    checked_out,
    lifespan_of,
    make_urls,
    names,
    wait_for_no_server_connections,
)

from asyncbind import AsyncBind
from asyncbind.integrations.fastapi import lifespan, session_dependency

pytestmark = [pytest.mark.postgresql, pytest.mark.mysql]


def create_app(two: TwoBinds) -> tuple[FastAPI, dict[str, list[Any]]]:
    """The app, and what its handlers saw: every request's session, every background task's."""
    db, Item, User = two.db, two.Item, two.User
    seen: dict[str, list[Any]] = {"request": [], "background": []}
    Session = Annotated[AsyncSession, Depends(session_dependency(db))]

    async def current_user_name(session: Session) -> str:
        # A sub-dependency asking for the session gets the request's (FastAPI's cache).
        seen["request"].append(session)
        return "from dependency"

    app = FastAPI(lifespan=lifespan(db))

    @app.post("/pairs/{name}")
    async def create(
        name: str, session: Session, user: Annotated[str, Depends(current_user_name)]
    ) -> dict[str, Any]:
        assert session is seen["request"][-1]  # one session for the whole request
        assert db.session.sync_session is session.sync_session
        session.add_all([Item(name=name), User(name=name)])
        await session.commit()
        return {"created": name, "user": user}

    @app.get("/pairs")
    async def read(session: Session) -> dict[str, Any]:
        seen["request"].append(session)
        items = (await session.scalars(sa.select(Item.name).order_by(Item.name))).all()
        users = (await session.scalars(sa.select(User.name).order_by(User.name))).all()
        return {"items": list(items), "users": list(users)}

    @app.post("/fail/{name}")
    async def fail(name: str, session: Session) -> dict[str, Any]:
        seen["request"].append(session)
        session.add_all([Item(name=name), User(name=name)])
        await session.flush()
        raise RuntimeError("the handler failed")

    @app.post("/refuse/{name}")
    async def refuse(name: str, session: Session) -> dict[str, Any]:
        session.add(User(name=name))
        await session.flush()
        raise HTTPException(status_code=409, detail="refused")

    @app.post("/slow")
    async def slow(session: Session) -> dict[str, Any]:
        session.add(User(name="never"))
        await session.flush()  # a MariaDB transaction is open
        app.state.started.set()
        await session.execute(sa.text("SELECT pg_sleep(30)"))  # and a PostgreSQL query runs
        return {}

    app.state.started = asyncio.Event()

    @app.post("/uncached")
    async def uncached(
        session: Session,
        other: Annotated[AsyncSession, Depends(session_dependency(db), use_cache=False)],
    ) -> dict[str, Any]:
        return {"same": session is other}

    @app.post("/background/{name}")
    async def background(name: str, session: Session, tasks: BackgroundTasks) -> dict[str, Any]:
        seen["request"].append(session)

        async def write() -> None:
            # After the response; a session of its own, not the request's.
            async with db.scope() as own:
                seen["background"].append(own)
                db.session.add(User(name=name))
                await db.session.commit()

        tasks.add_task(write)
        return {"scheduled": name}

    return app, seen


def client_of(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
async def two(new_database: Any) -> AsyncIterator[TwoBinds]:
    postgresql, mysql = await make_urls(new_database)
    binds = add_models(AsyncBind(postgresql, binds={"users": mysql}))
    await binds.db.create_all()
    yield binds
    await binds.db.dispose()


async def test_each_request_has_one_session_over_two_binds(two: TwoBinds) -> None:
    db = two.db
    app, seen = create_app(two)
    async with lifespan_of(app), client_of(app) as client:
        for name in ("alpha", "beta"):
            response = await client.post(f"/pairs/{name}")
            assert response.json() == {"created": name, "user": "from dependency"}
            assert all_zero(checked_out(db))  # closed when the request ended
        response = await client.get("/pairs")
        assert response.json() == {"items": ["alpha", "beta"], "users": ["alpha", "beta"]}
        assert all_zero(checked_out(db))
        sessions = seen["request"]
        assert len(sessions) == 3 and len({id(s) for s in sessions}) == 3
        assert all(len(s.identity_map) == 0 for s in sessions)
        pools = {key: engine.sync_engine.pool for key, engine in db.engines.items()}
        assert all(count >= 1 for count in checked_in(db).values())
    assert all(pool.checkedin() == 0 and pool.checkedout() == 0 for pool in pools.values())
    assert all_zero(await wait_for_no_server_connections(db))
    assert await names(db) == (["alpha", "beta"], ["alpha", "beta"])


async def test_a_failing_handler_is_rolled_back(two: TwoBinds) -> None:
    db = two.db
    app, _ = create_app(two)
    async with lifespan_of(app), client_of(app) as client:
        assert (await client.post("/pairs/kept")).status_code == 200
        assert (await client.post("/fail/lost")).status_code == 500
        assert all_zero(checked_out(db))
        assert (await client.post("/refuse/refused")).status_code == 409
        assert all_zero(checked_out(db))
        assert (await client.post("/pairs/after")).status_code == 200
    assert await names(db) == (["after", "kept"], ["after", "kept"])


async def test_a_cancelled_request_still_closes_its_session(two: TwoBinds) -> None:
    """The server cancels the request (the client went away) in the middle of a query."""
    db = two.db
    app, _ = create_app(two)
    async with lifespan_of(app), client_of(app) as client:
        request = asyncio.create_task(client.post("/slow"))
        async with asyncio.timeout(60):
            await app.state.started.wait()
            assert checked_out(db)["users"] == 1
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
        # The dependency's close ran to completion before the request task ended.
        assert all_zero(checked_out(db))
    assert await names(db) == ([], [])


async def test_dependency_caching_shares_only_within_a_request(two: TwoBinds) -> None:
    app, _ = create_app(two)
    async with lifespan_of(app), client_of(app) as client:
        assert (await client.post("/uncached")).json() == {"same": False}
    assert session_dependency(two.db) is session_dependency(two.db)
    assert all_zero(checked_out(two.db))


async def test_background_tasks_use_a_session_of_their_own(two: TwoBinds) -> None:
    db = two.db
    app, seen = create_app(two)
    async with lifespan_of(app), client_of(app) as client:
        for name in ("later", "later still"):
            assert (await client.post(f"/background/{name}")).json() == {"scheduled": name}
        assert all_zero(checked_out(db))
    request_sessions, background_sessions = seen["request"], seen["background"]
    assert len(background_sessions) == 2
    assert not {id(s) for s in background_sessions} & {id(s) for s in request_sessions}
    assert all(len(s.identity_map) == 0 for s in background_sessions)
    assert await names(db) == ([], ["later", "later still"])
