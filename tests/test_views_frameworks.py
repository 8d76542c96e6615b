"""The view helpers and query recording in real Quart, Starlette and FastAPI apps, on SQLite,
PostgreSQL and MariaDB: "not found" is the framework's own 404, rendered by the app's error
handler; ``paginate`` reads ``?page=`` and ``?per_page=``; each request has its recorded queries.

The same requests go to the three apps, which do the same thing each in its framework's way. The
numbers are those of Flask-SQLAlchemy 3.1's tests that go through a request
(tests/test_pagination.py ``test_paginate_qs``, ``test_paginate_max``, ``test_error_out``;
tests/test_record_queries.py), which a Flask app would give.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import fastapi
import httpx
import pytest
import sqlalchemy as sa
from quart import Quart, request, websocket
from sqlalchemy import orm as sa_orm
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from twobinds import lifespan_of
from werkzeug.exceptions import NotFound

from asyncbind import (
    AsyncBind,
    AsyncBindSession,
    NotFoundError,
    Pagination,
    get_recorded_queries,
)
from asyncbind.integrations import fastapi as fastapi_integration
from asyncbind.integrations import starlette as starlette_integration

Get = Callable[[str], Awaitable[tuple[int, Any]]]
Serve = Callable[[Any], AbstractAsyncContextManager[Get]]

# What each framework's 404 says when get_or_404() is given no description.
DEFAULT_DESCRIPTIONS = {
    "quart": NotFound.description,
    "starlette": "Not Found",
    "fastapi": "Not Found",
}


class Models:
    """``Todo`` in the default bind, ``Note`` in the ``"notes"`` bind."""

    def __init__(self, db: AsyncBind) -> None:
        self.db = db

        class Todo(db.Model):  # type: ignore[name-defined,misc]
            __tablename__ = "todo"
            id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
            title: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))

        class Note(db.Model):  # type: ignore[name-defined,misc]
            __tablename__ = "note"
            __bind_key__ = "notes"
            id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
            title: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))

        self.Todo, self.Note = Todo, Note

    async def fill(self) -> None:
        """45 todos, 3 notes (two of them titled "y")."""
        await self.db.create_all()
        async with self.db.session() as session:
            session.add_all(self.Todo(id=i, title=f"task {i}") for i in range(1, 46))
            session.add_all(self.Note(id=i, title=t) for i, t in enumerate("xyy", 1))
            await session.commit()


def page_json(page: Pagination[Any]) -> dict[str, Any]:
    return {
        "page": page.page,
        "per_page": page.per_page,
        "total": page.total,
        "pages": page.pages,
        "ids": [item.id for item in page],
    }


def recorded() -> list[list[Any]]:
    return [[q.bind_key, q.location] for q in get_recorded_queries()]


async def look_up(get_or_404: Callable[..., Awaitable[Any]], model: Any, text: str) -> str:
    """What a websocket answers when asked for todo ``text``: no request, so no 404 response."""
    try:
        return str((await get_or_404(model, int(text))).title)
    except NotFoundError as error:
        return f"NotFoundError: {error.missing}"


# -- the three apps --------------------------------------------------------------------------


def quart_app(urls: tuple[str, str]) -> tuple[Quart, Models]:
    app = Quart(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=urls[0],
        SQLALCHEMY_BINDS={"notes": urls[1]},
        SQLALCHEMY_RECORD_QUERIES=True,
    )
    db = AsyncBind(app=app)
    models = Models(db)
    Todo, Note = models.Todo, models.Note

    @app.errorhandler(404)
    async def not_found(error: NotFound) -> tuple[dict[str, Any], int]:
        return {"error": error.description}, 404

    @app.get("/todos/<int:todo_id>")
    async def show_todo(todo_id: int) -> dict[str, Any]:
        todo = await db.get_or_404(Todo, todo_id, description=f"No todo {todo_id}.")
        return {"title": todo.title, "queries": recorded()}

    @app.get("/own/<int:todo_id>")
    async def own_session(todo_id: int) -> dict[str, Any]:
        async with db.session() as session:  # a session of its own: still the request's 404
            return {"title": (await session.get_or_404(Todo, todo_id)).title}

    @app.get("/first")
    async def first() -> dict[str, Any]:
        title = request.args["title"]
        todo = await db.session.first_or_404(sa.select(Todo).filter_by(title=title))
        return {"id": todo.id}

    @app.get("/one")
    async def one() -> dict[str, Any]:
        note = await db.one_or_404(sa.select(Note).filter_by(title=request.args["title"]))
        return {"id": note.id}

    @app.get("/todos")
    async def todos() -> dict[str, Any]:
        page = await db.paginate(sa.select(Todo).order_by(Todo.id), max_per_page=30)
        return page_json(page)

    @app.get("/notes")
    async def notes() -> dict[str, Any]:
        page = await db.session.paginate(sa.select(Note).order_by(Note.id))
        return {**page_json(page), "queries": recorded()}

    @app.websocket("/ws")
    async def ws() -> None:
        await websocket.send(await look_up(db.get_or_404, Todo, await websocket.receive()))

    return app, models


def starlette_app(urls: tuple[str, str]) -> tuple[Starlette, Models]:
    db = AsyncBind(urls[0], binds={"notes": urls[1]}, record_queries=True)
    models = Models(db)
    Todo, Note = models.Todo, models.Note
    session_of = starlette_integration.request_session

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    async def show_todo(request: Request) -> JSONResponse:
        todo_id = request.path_params["todo_id"]
        todo = await db.get_or_404(Todo, todo_id, description=f"No todo {todo_id}.")
        return JSONResponse({"title": todo.title, "queries": recorded()})

    async def own_session(request: Request) -> JSONResponse:
        async with db.session() as session:
            todo = await session.get_or_404(Todo, request.path_params["todo_id"])
            return JSONResponse({"title": todo.title})

    async def first(request: Request) -> JSONResponse:
        select = sa.select(Todo).filter_by(title=request.query_params["title"])
        return JSONResponse({"id": (await session_of(request).first_or_404(select)).id})

    async def one(request: Request) -> JSONResponse:
        select = sa.select(Note).filter_by(title=request.query_params["title"])
        return JSONResponse({"id": (await db.one_or_404(select)).id})

    async def todos(request: Request) -> JSONResponse:
        page = await db.paginate(sa.select(Todo).order_by(Todo.id), max_per_page=30)
        return JSONResponse(page_json(page))

    async def notes(request: Request) -> JSONResponse:
        page = await session_of(request).paginate(sa.select(Note).order_by(Note.id))
        return JSONResponse({**page_json(page), "queries": recorded()})

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(await look_up(db.get_or_404, Todo, text))
        await websocket.close()

    app = Starlette(
        routes=[
            Route("/todos/{todo_id:int}", show_todo),
            Route("/own/{todo_id:int}", own_session),
            Route("/first", first),
            Route("/one", one),
            Route("/todos", todos),
            Route("/notes", notes),
            WebSocketRoute("/ws", ws),
        ],
        lifespan=starlette_integration.lifespan(db),
        middleware=[Middleware(starlette_integration.AsyncBindMiddleware, db=db)],
        exception_handlers={404: not_found},
    )
    return app, models


def fastapi_app(urls: tuple[str, str]) -> tuple[fastapi.FastAPI, Models]:
    db = AsyncBind(urls[0], binds={"notes": urls[1]}, record_queries=True)
    models = Models(db)
    Todo, Note = models.Todo, models.Note
    app = fastapi.FastAPI(lifespan=fastapi_integration.lifespan(db))
    session_dependency = fastapi.Depends(fastapi_integration.session_dependency(db))

    @app.exception_handler(fastapi.HTTPException)  # FastAPI's own, not Starlette's
    async def not_found(request: Request, exc: fastapi.HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.get("/todos/{todo_id}")
    async def show_todo(
        todo_id: int, session: AsyncBindSession = session_dependency
    ) -> dict[str, Any]:
        todo = await session.get_or_404(Todo, todo_id, description=f"No todo {todo_id}.")
        return {"title": todo.title, "queries": recorded()}

    @app.get("/own/{todo_id}")
    async def own_session(todo_id: int, _: AsyncBindSession = session_dependency) -> Any:
        async with db.session() as session:
            return {"title": (await session.get_or_404(Todo, todo_id)).title}

    @app.get("/first")
    async def first(title: str, session: AsyncBindSession = session_dependency) -> Any:
        return {"id": (await session.first_or_404(sa.select(Todo).filter_by(title=title))).id}

    @app.get("/one")
    async def one(title: str, _: AsyncBindSession = session_dependency) -> Any:
        return {"id": (await db.one_or_404(sa.select(Note).filter_by(title=title))).id}

    @app.get("/todos")
    async def todos(_: AsyncBindSession = session_dependency) -> Any:
        return page_json(await db.paginate(sa.select(Todo).order_by(Todo.id), max_per_page=30))

    @app.get("/notes")
    async def notes(session: AsyncBindSession = session_dependency) -> Any:
        page = await session.paginate(sa.select(Note).order_by(Note.id))
        return {**page_json(page), "queries": recorded()}

    @app.websocket("/ws")
    async def ws(
        websocket: fastapi.WebSocket, session: AsyncBindSession = session_dependency
    ) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(await look_up(session.get_or_404, Todo, text))
        await websocket.close()

    return app, models


@asynccontextmanager
async def serve_quart(app: Quart) -> AsyncIterator[Get]:
    async with app.test_app() as test_app:  # runs before_serving, as a server does
        client = test_app.test_client()

        async def get(path: str) -> tuple[int, Any]:
            response = await client.get(path)
            return response.status_code, await response.get_json()

        yield get


@asynccontextmanager
async def serve_asgi(app: Any) -> AsyncIterator[Get]:
    transport = httpx.ASGITransport(app=app)
    async with (
        lifespan_of(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):

        async def get(path: str) -> tuple[int, Any]:
            response = await client.get(path)
            return response.status_code, response.json()

        yield get


APPS: dict[str, tuple[Callable[[tuple[str, str]], tuple[Any, Models]], Serve]] = {
    "quart": (quart_app, serve_quart),
    "starlette": (starlette_app, serve_asgi),
    "fastapi": (fastapi_app, serve_asgi),
}


@pytest.fixture(params=list(APPS))
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def served(
    framework: str, backend: str, new_database: Any
) -> AsyncIterator[tuple[Get, Models]]:
    urls = (await new_database(backend), await new_database(backend))
    make, serve = APPS[framework]
    app, models = make(urls)
    await models.fill()
    try:
        async with serve(app) as get:
            yield get, models
    finally:
        await models.db.dispose()
    assert all(e.sync_engine.pool.checkedout() == 0 for e in models.db.engines.values())


# -- the requests ----------------------------------------------------------------------------


async def test_get_or_404_is_the_frameworks_404(served: tuple[Get, Models], framework: str) -> None:
    """Flask-SQLAlchemy ``test_view_get_or_404``, through the app: the 404 is the framework's,
    rendered by the app's own error handler with the ``description``."""
    get, _ = served
    status, body = await get("/todos/3")
    assert (status, body["title"]) == (200, "task 3")
    assert await get("/todos/46") == (404, {"error": "No todo 46."})
    # On a session of the handler's own too, with the framework's default text.
    assert await get("/own/2") == (200, {"title": "task 2"})
    assert await get("/own/99") == (404, {"error": DEFAULT_DESCRIPTIONS[framework]})


async def test_first_or_404_and_one_or_404(served: tuple[Get, Models], framework: str) -> None:
    """Flask-SQLAlchemy ``test_first_or_404`` and ``test_view_one_or_404``, through the app."""
    get, _ = served
    not_found = (404, {"error": DEFAULT_DESCRIPTIONS[framework]})
    assert await get("/first?title=task%205") == (200, {"id": 5})
    assert await get("/first?title=nothing") == not_found
    assert await get("/one?title=x") == (200, {"id": 1})
    assert await get("/one?title=y") == not_found  # MultipleResultsFound
    assert await get("/one?title=z") == not_found  # NoResultFound


async def test_paginate_reads_the_query_string(served: tuple[Get, Models]) -> None:
    """Flask-SQLAlchemy ``test_paginate`` (defaults 1 and 20), ``test_paginate_qs``
    (``?page=2&per_page=10``) and ``test_paginate_max`` (``max_per_page`` bounds the query
    string's ``per_page``)."""
    get, _ = served
    status, body = await get("/todos")
    assert status == 200
    assert body == {"page": 1, "per_page": 20, "total": 45, "pages": 3, "ids": list(range(1, 21))}
    status, body = await get("/todos?page=2&per_page=10")
    assert (body["page"], body["per_page"], body["ids"]) == (2, 10, list(range(11, 21)))
    status, body = await get("/todos?per_page=100")
    assert (body["per_page"], body["pages"], len(body["ids"])) == (30, 2, 30)
    status, body = await get("/todos?page=3")
    assert (status, body["ids"]) == (200, list(range(41, 46)))
    # A name given twice: the first value, as Werkzeug's args.get() reads it for Flask.
    status, body = await get("/todos?page=1&page=3&per_page=10&per_page=5")
    assert (status, body["page"], body["per_page"]) == (200, 1, 10)


async def test_paginate_error_out(served: tuple[Get, Models]) -> None:
    """Flask-SQLAlchemy ``test_error_out`` and ``test_no_items_404``: a query string that is not a
    whole number, is below 1, or asks for a page past the last is the framework's 404."""
    get, _ = served
    huge = "99999999999999999999"  # past a 64-bit OFFSET: not the driver's error, a 404
    queries = ("page=abc", "per_page=abc", "page=0", "per_page=-1", "page=4", "page=1.5")
    for query in (*queries, f"page={huge}", f"page={huge}&per_page=1"):
        status, _ = await get(f"/todos?{query}")
        assert status == 404, query


async def test_each_request_has_its_recorded_queries(served: tuple[Get, Models]) -> None:
    """Flask-SQLAlchemy ``test_query_info``, per request: each request's own statements, with
    their bind and the handler's line; the count of a page of notes runs in the notes bind."""
    get, _ = served
    _, body = await get("/todos/7")
    (key, location), *more = body["queries"]
    assert key is None and not more
    assert "tests/test_views_frameworks.py:" in location and "(show_todo)" in location
    status, body = await get("/notes?per_page=2")
    assert (status, body["total"], body["pages"], body["ids"]) == (200, 3, 2, [1, 2])
    assert [key for key, _ in body["queries"]] == ["notes", "notes"]  # the page, its count
    assert all("(notes)" in location for _, location in body["queries"])


async def asgi_websocket(app: Any, text: str) -> str:
    """Send ``text`` over a websocket to ``/ws`` of an ASGI app, as a server would; the reply."""
    incoming = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": text},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    replies: list[str] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send":
            replies.append(message["text"])

    scope = {"type": "websocket", "path": "/ws", "headers": [], "query_string": b""}
    await app({**scope, "root_path": "", "scheme": "ws", "subprotocols": []}, receive, send)
    assert len(replies) == 1, replies
    return replies[0]


async def test_a_websocket_gets_not_found_error(
    framework: str, backend: str, new_database: Any
) -> None:
    """A websocket has no response to answer 404 with: the helpers raise NotFoundError there."""
    urls = (await new_database(backend), await new_database(backend))
    app, models = APPS[framework][0](urls)
    await models.fill()
    try:
        if framework == "quart":
            async with app.test_app() as test_app:
                for text in ("4", "46"):
                    async with test_app.test_client().websocket("/ws") as ws:
                        await ws.send(text)
                        assert await ws.receive() == (
                            "task 4"
                            if text == "4"
                            else "NotFoundError: no 'Todo' with primary key 46"
                        )
        else:
            assert await asgi_websocket(app, "4") == "task 4"
            assert await asgi_websocket(app, "46") == "NotFoundError: no 'Todo' with primary key 46"
    finally:
        await models.db.dispose()
