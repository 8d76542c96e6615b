"""Starlette: the lifespan helper and AsyncBindMiddleware. The real app over httpx's ASGI transport
with its lifespan run, requests that read and write PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from twobinds import (
    LifespanError,
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

from asyncbind import AsyncBind, AsyncBindSession, NoCurrentSessionError
from asyncbind.integrations.starlette import AsyncBindMiddleware, lifespan, request_session

pytestmark = [pytest.mark.postgresql, pytest.mark.mysql]


def create_app(two: TwoBinds, *, autocommit: bool = False) -> tuple[Starlette, list[Any]]:
    """The app, and the list of every request's session (in order)."""
    db, Item, User = two.db, two.Item, two.User
    seen: list[Any] = []

    def session_of(request: Request) -> Any:
        session = request.state.session
        assert db.session.sync_session is session.sync_session  # db.session is the same one
        seen.append(session)
        return session

    async def create(request: Request) -> JSONResponse:
        session = session_of(request)
        name = request.path_params["name"]
        session.add_all([Item(name=name), User(name=name)])
        if not autocommit:
            await session.commit()
        return JSONResponse({"created": name})

    async def read(request: Request) -> JSONResponse:
        session = session_of(request)
        items = (await session.scalars(sa.select(Item.name).order_by(Item.name))).all()
        users = (await db.session.scalars(sa.select(User.name).order_by(User.name))).all()
        return JSONResponse({"items": list(items), "users": list(users)})

    async def fail(request: Request) -> JSONResponse:
        session = session_of(request)
        session.add_all([Item(name="failed"), User(name="failed")])
        await session.flush()
        raise RuntimeError("the handler failed")

    async def refuse(request: Request) -> JSONResponse:
        session = session_of(request)
        session.add(User(name=request.path_params["name"]))
        await session.flush()
        return JSONResponse({"refused": True}, status_code=409)

    async def stream(request: Request) -> StreamingResponse:
        session = session_of(request)

        async def body() -> AsyncIterator[bytes]:
            # Starlette iterates this in a task of its own: the session is handed over to it.
            for name in (await session.scalars(sa.select(User.name).order_by(User.name))).all():
                yield f"{name}\n".encode()

        return StreamingResponse(body())

    async def slow(request: Request) -> JSONResponse:
        session = session_of(request)
        session.add(User(name="never"))
        await session.flush()  # a MariaDB transaction is open
        request.app.state.started.set()
        await session.execute(sa.text("SELECT pg_sleep(30)"))  # and a PostgreSQL query runs
        return JSONResponse({})

    routes = [
        Route("/slow", slow, methods=["POST"]),
        Route("/pairs/{name}", create, methods=["POST"]),
        Route("/pairs", read),
        Route("/fail", fail, methods=["POST"]),
        Route("/refuse/{name}", refuse, methods=["POST"]),
        Route("/stream", stream),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan(db),
        middleware=[Middleware(AsyncBindMiddleware, db=db, autocommit=autocommit)],
    )
    app.state.started = asyncio.Event()
    return app, seen


def client_of(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
async def two(new_database: Any) -> AsyncIterator[TwoBinds]:
    postgresql, mysql = await make_urls(new_database)
    binds = add_models(AsyncBind(postgresql, binds={"users": mysql}))
    await binds.db.create_all()
    yield binds
    await binds.db.dispose()


async def test_each_request_has_its_own_session_over_two_binds(two: TwoBinds) -> None:
    db = two.db
    app, seen = create_app(two)
    async with lifespan_of(app), client_of(app) as client:
        for name in ("alpha", "beta"):
            response = await client.post(f"/pairs/{name}")
            assert response.json() == {"created": name}
            assert all_zero(checked_out(db))  # closed by the middleware
        response = await client.get("/pairs")
        assert response.json() == {"items": ["alpha", "beta"], "users": ["alpha", "beta"]}
        assert all_zero(checked_out(db))
        response = await client.get("/stream")
        assert response.text == "alpha\nbeta\n"
        assert all_zero(checked_out(db))
        assert len(seen) == 4 and len({id(s) for s in seen}) == 4
        assert all(len(s.identity_map) == 0 for s in seen)  # every one closed
        pools = {key: engine.sync_engine.pool for key, engine in db.engines.items()}
        assert all(count >= 1 for count in checked_in(db).values())
    # The lifespan's shutdown disposed every engine.
    assert all(pool.checkedin() == 0 and pool.checkedout() == 0 for pool in pools.values())
    assert all_zero(await wait_for_no_server_connections(db))
    assert await names(db) == (["alpha", "beta"], ["alpha", "beta"])
    with pytest.raises(NoCurrentSessionError):
        db.session.add(two.Item(name="outside"))


async def test_a_failing_handler_is_rolled_back(two: TwoBinds) -> None:
    db = two.db
    app, _ = create_app(two)
    async with lifespan_of(app), client_of(app) as client:
        assert (await client.post("/pairs/kept")).status_code == 200
        assert (await client.post("/fail")).status_code == 500
        assert all_zero(checked_out(db))
        assert (await client.post("/refuse/refused")).status_code == 409
        assert all_zero(checked_out(db))
    assert await names(db) == (["kept"], ["kept"])


async def test_a_cancelled_request_still_closes_its_session(two: TwoBinds) -> None:
    """The server cancels the request (the client went away) in the middle of a query."""
    db = two.db
    app, _ = create_app(two, autocommit=True)
    async with lifespan_of(app), client_of(app) as client:
        request = asyncio.create_task(client.post("/slow"))
        async with asyncio.timeout(60):
            await app.state.started.wait()
            assert checked_out(db)["users"] == 1
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
        # The middleware's close ran to completion before the request task ended.
        assert all_zero(checked_out(db))
    assert await names(db) == ([], [])


async def test_autocommit_commits_successes_and_rolls_back_the_rest(two: TwoBinds) -> None:
    db = two.db
    app, _ = create_app(two, autocommit=True)
    async with lifespan_of(app), client_of(app) as client:
        assert (await client.post("/pairs/auto")).status_code == 200  # no commit in the handler
        assert (await client.post("/refuse/refused")).status_code == 409
        assert (await client.post("/fail")).status_code == 500
        # A commit that fails (a duplicate name) turns into a 500, not a 200 with a lost write.
        assert (await client.post("/pairs/auto")).status_code == 500
        assert all_zero(checked_out(db))
    assert await names(db) == (["auto"], ["auto"])


async def test_lifespan_refuses_to_start_without_a_database() -> None:
    app = Starlette(lifespan=lifespan(AsyncBind()))
    with pytest.raises(LifespanError, match="no database configured"):
        async with lifespan_of(app):
            pass


async def test_lifespan_runs_the_apps_own_lifespan_inside(two: TwoBinds) -> None:
    db = two.db
    events: list[str] = []

    @asynccontextmanager
    async def own(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.append("start")
        async with db.scope():  # the binds are usable while the app starts
            await db.session.execute(sa.select(two.Item))
        yield {"answer": 42}
        events.append("stop")

    async def answer(request: Request) -> JSONResponse:
        return JSONResponse({"answer": request.state.answer})

    app = Starlette(routes=[Route("/", answer)], lifespan=lifespan(db, own))
    async with lifespan_of(app):
        assert events == ["start"]
    assert events == ["start", "stop"]
    assert all_zero(checked_in(db)) and all_zero(checked_out(db))


async def test_lifespan_disposes_even_when_the_apps_lifespan_fails(two: TwoBinds) -> None:
    db = two.db

    @asynccontextmanager
    async def broken(app: Starlette) -> AsyncIterator[None]:
        yield
        raise RuntimeError("shutdown failed")

    async with db.session() as session:
        await session.execute(sa.select(two.Item))
    app = Starlette(lifespan=lifespan(db, broken))
    with pytest.raises(LifespanError, match="shutdown failed"):
        async with lifespan_of(app):
            await db.session().close()
            async with db.session() as session:
                await session.execute(sa.select(two.User))
            assert checked_in(db)["users"] == 1
    assert all_zero(checked_in(db))


async def test_a_request_no_route_answers_leaves_nothing_open(two: TwoBinds) -> None:
    db = two.db
    app, _ = create_app(two)
    async with lifespan_of(app), client_of(app) as client:
        assert (await client.get("/missing")).status_code == 404
    assert all_zero(checked_out(db))


async def test_request_state_is_shared_with_the_middleware_outside(two: TwoBinds) -> None:
    """A value the handler puts in ``request.state`` is seen by a middleware outside
    AsyncBindMiddleware (an access log), and the session is in the request's own state only,
    never in the lifespan's, which the server copies for each request."""
    db = two.db
    lifespan_state: dict[str, Any] = {"answer": 42}
    states: list[Any] = []

    class AccessLog(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: Any) -> Any:
            request.state.request_id = "r-1"
            response = await call_next(request)
            response.headers["x-user"] = request.state.user
            states.append(request.state)
            return response

    async def handler(request: Request) -> JSONResponse:
        request.state.user = "ada"
        await request.state.session.execute(sa.select(two.Item))
        return JSONResponse([request.state.request_id, request.state.answer])

    app = Starlette(
        routes=[Route("/", handler)],
        middleware=[Middleware(AccessLog), Middleware(AsyncBindMiddleware, db=db)],
    )

    async def server(scope: Any, receive: Any, send: Any) -> None:
        # As a server does: each request's state is a copy of the lifespan's.
        await app({**scope, "state": dict(lifespan_state)}, receive, send)

    async with client_of(server) as client:
        response = await client.get("/")
    assert response.json() == ["r-1", 42] and response.headers["x-user"] == "ada"
    assert not hasattr(states[0], "session")  # taken out when the session was closed
    assert lifespan_state == {"answer": 42}
    assert all_zero(checked_out(db))


async def test_a_websocket_has_its_own_session(two: TwoBinds) -> None:
    """Driven over ASGI as a server would: connect, two messages, disconnect."""
    db = two.db
    sessions: list[Any] = []

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        sessions.append(ws.state.session)
        async for name in ws.iter_text():
            db.session.add(two.User(name=name))
            await db.session.commit()
            await ws.send_text(str(await db.session.scalar(sa.select(sa.func.count(two.User.id)))))

    app = Starlette(
        routes=[WebSocketRoute("/ws", endpoint)],
        middleware=[Middleware(AsyncBindMiddleware, db=db)],
    )
    incoming = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "ada"},
        {"type": "websocket.receive", "text": "bob"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [], "query_string": b""}
    await app(scope, receive, send)
    assert [m.get("text") for m in sent if m["type"] == "websocket.send"] == ["1", "2"]
    assert len(sessions) == 1 and len(sessions[0].identity_map) == 0
    assert all_zero(checked_out(db))
    assert await names(db) == ([], ["ada", "bob"])


async def test_request_session_is_the_middlewares_session_typed(two: TwoBinds) -> None:
    """``request_session(request)`` is ``request.state.session`` (which type checkers see as
    Any) as an AsyncBindSession; without the middleware's session it says what to do."""
    db = two.db
    seen: list[bool] = []

    async def handler(request: Request) -> JSONResponse:
        session = request_session(request, state_key="mine")
        assert isinstance(session, AsyncBindSession)
        seen.append(session is request.state.mine)
        seen.append(session.sync_session is db.session.sync_session)
        return JSONResponse({"users": list(await session.scalars(sa.select(two.User.name)))})

    async def other_key(request: Request) -> JSONResponse:
        with pytest.raises(NoCurrentSessionError, match=r"request\.state\.session.*state_key="):
            request_session(request)
        seen.append(True)
        return JSONResponse({})

    routes = [Route("/", handler), Route("/other", other_key)]
    app = Starlette(
        routes=routes, middleware=[Middleware(AsyncBindMiddleware, db=db, state_key="mine")]
    )
    async with client_of(app) as client:
        assert (await client.get("/")).json() == {"users": []}
        assert (await client.get("/other")).status_code == 200
    async with client_of(Starlette(routes=routes)) as client:  # no middleware at all
        assert (await client.get("/other")).status_code == 200
    assert seen == [True, True, True, True]
    assert all_zero(checked_out(db))
