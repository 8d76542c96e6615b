"""Quart: db.init_app(app) with Flask-SQLAlchemy's config keys, a session per app context, pools
reset at start and disposed at shutdown. Real app, real requests, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from quart import Quart, abort, websocket
from twobinds import (
    TwoBinds,
    add_models,
    all_zero,
    checked_in,
    checked_out,
    make_urls,
    names,
    wait_for_no_server_connections,
)

from asyncbind import AsyncBind, ConfigError, NoCurrentSessionError

pytestmark = [pytest.mark.postgresql, pytest.mark.mysql]


def create_app(postgresql: str, mysql: str, **config: Any) -> tuple[Quart, TwoBinds, list[Any]]:
    """A Flask-SQLAlchemy-style app: config keys, db = AsyncBind(), models, init_app.

    Returns the app, its binds, and the list of the sync session of every request that used
    ``db.session`` (in order).
    """
    app = Quart(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=postgresql,
        SQLALCHEMY_BINDS={"users": mysql},
        PROPAGATE_EXCEPTIONS=False,  # a failing handler answers 500, as in production
        **config,
    )
    db = AsyncBind()
    two = add_models(db)
    Item, User = two.Item, two.User
    seen: list[Any] = []

    @app.before_request
    async def remember_session() -> None:
        # Registered before init_app's hooks would run: db.session works in any hook.
        seen.append(db.session.sync_session)

    db.init_app(app)

    @app.post("/pairs/<name>")
    async def create(name: str) -> dict[str, Any]:
        db.session.add(Item(name=name))
        db.session.add(User(name=name))
        await db.session.commit()
        assert db.session.sync_session is seen[-1]
        return {"created": name}

    @app.get("/pairs")
    async def read() -> dict[str, Any]:
        items = (await db.session.scalars(sa.select(Item.name).order_by(Item.name))).all()
        users = (await db.session.execute(sa.select(User.name).order_by(User.name))).scalars()
        return {"items": list(items), "users": list(users)}

    @app.post("/fail/<name>")
    async def fail(name: str) -> dict[str, Any]:
        db.session.add_all([Item(name=name), User(name=name)])
        await db.session.flush()  # sent to both databases, not committed
        raise RuntimeError("the handler failed")

    @app.post("/abort/<name>")
    async def refuse(name: str) -> dict[str, Any]:
        db.session.add(User(name=name))
        await db.session.flush()
        abort(409)

    @app.post("/uncommitted/<name>")
    async def forget(name: str) -> dict[str, Any]:
        db.session.add(Item(name=name))
        await db.session.flush()
        return {"committed": False}

    @app.post("/background/<name>")
    async def background(name: str) -> dict[str, Any]:
        request_session = db.session.sync_session

        async def write() -> None:
            # Quart runs it in an app context of its own, so with a session of its own.
            assert db.session.sync_session is not request_session
            seen.append(db.session.sync_session)
            db.session.add(User(name=name))
            await db.session.commit()

        app.add_background_task(write)
        return {"scheduled": name}

    @app.post("/slow")
    async def slow() -> dict[str, Any]:
        db.session.add(User(name="never"))
        await db.session.flush()  # a MariaDB transaction is open
        app.extensions["test started"].set()
        await db.session.execute(sa.text("SELECT pg_sleep(30)"))  # and a PostgreSQL query runs
        return {}

    app.extensions["test started"] = asyncio.Event()

    @app.websocket("/ws")
    async def ws() -> None:
        while True:
            name = await websocket.receive()
            db.session.add(Item(name=name))
            await db.session.commit()
            await websocket.send(str(await db.session.scalar(sa.select(sa.func.count(Item.id)))))

    return app, two, seen


@pytest.fixture
async def urls(new_database: Any) -> tuple[str, str]:
    return await make_urls(new_database)


async def test_requests_read_and_write_two_binds_with_a_session_each(
    urls: tuple[str, str],
) -> None:
    app, two, seen = create_app(*urls)
    db = two.db
    await db.create_all()
    async with app.test_app() as test_app:
        client = test_app.test_client()
        for name in ("alpha", "beta"):
            response = await client.post(f"/pairs/{name}")
            assert response.status_code == 200
            assert await response.get_json() == {"created": name}
            assert all_zero(checked_out(db))  # closed in teardown
        response = await client.get("/pairs")
        assert await response.get_json() == {
            "items": ["alpha", "beta"],
            "users": ["alpha", "beta"],
        }
        assert all_zero(checked_out(db))
        assert len(seen) == 3 and len({id(s) for s in seen}) == 3  # one session per request
        assert await names(db) == (["alpha", "beta"], ["alpha", "beta"])
        pools = {key: engine.sync_engine.pool for key, engine in db.engines.items()}
        assert all(count >= 1 for count in checked_in(db).values())
    # after_serving disposed every engine: the idle connections were closed.
    assert all(pool.checkedin() == 0 and pool.checkedout() == 0 for pool in pools.values())
    assert all_zero(await wait_for_no_server_connections(db))


async def test_a_failed_request_is_rolled_back(urls: tuple[str, str]) -> None:
    app, two, _ = create_app(*urls)
    db = two.db
    await db.create_all()
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.post("/pairs/kept")).status_code == 200
        assert (await client.post("/fail/lost")).status_code == 500
        assert all_zero(checked_out(db))
        assert (await client.post("/abort/refused")).status_code == 409
        assert (await client.post("/uncommitted/forgotten")).status_code == 200
        assert all_zero(checked_out(db))
        assert await names(db) == (["kept"], ["kept"])
        # The failed request left the session usable for the next request.
        assert (await client.post("/pairs/after")).status_code == 200
    assert await names(db) == (["after", "kept"], ["after", "kept"])
    await db.dispose()  # names() connected again after shutdown


async def test_a_request_cancelled_by_a_disconnect_still_closes_its_session(
    urls: tuple[str, str],
) -> None:
    """Quart cancels the handler when the client goes away in the middle of a query."""
    app, two, _ = create_app(*urls)
    db = two.db
    await db.create_all()
    async with app.test_app() as test_app, asyncio.timeout(60):
        client = test_app.test_client()
        async with client.request("/slow", method="POST") as connection:
            await connection.send_complete()
            await app.extensions["test started"].wait()
            assert checked_out(db)["users"] == 1
            await connection.disconnect()
        assert all_zero(checked_out(db))  # teardown closed it
    assert await names(db) == ([], [])
    await db.dispose()  # names() connected again after shutdown


async def test_background_tasks_and_websockets_have_sessions_of_their_own(
    urls: tuple[str, str],
) -> None:
    app, two, seen = create_app(*urls)
    db = two.db
    await db.create_all()
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.post("/background/later")).status_code == 200
        async with client.websocket("/ws") as ws:
            for n, name in enumerate(["one", "two"], start=1):
                await ws.send(name)
                assert await ws.receive() == str(n)
    # Shutdown waited for the background task, then disposed the engines.
    assert len(seen) == 2 and seen[0] is not seen[1]
    assert await names(db) == (["one", "two"], ["later"])
    assert all_zero(checked_out(db))
    await db.dispose()  # names() connected again after shutdown


async def test_a_task_that_outlives_its_request_gets_no_session(urls: tuple[str, str]) -> None:
    """A task started in a request that uses db.session after the request's teardown is refused,
    as with db.scope(): a new session there would never be closed."""
    app, two, _ = create_app(*urls)
    db = two.db
    await db.create_all()
    request_over = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []

    async def later() -> None:
        await request_over.wait()
        await db.session.execute(sa.select(two.Item))

    @app.get("/later")
    async def start_later() -> str:
        await db.session.execute(sa.select(two.Item))
        tasks.append(asyncio.create_task(later()))
        return "started"

    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.get("/later")).status_code == 200
        request_over.set()
        async with asyncio.timeout(30):
            with pytest.raises(NoCurrentSessionError, match="scope that has ended"):
                await tasks[0]
        assert all_zero(checked_out(db))
    await db.dispose()


async def test_app_context_outside_a_request_has_a_session(urls: tuple[str, str]) -> None:
    app, two, _ = create_app(*urls)
    db = two.db
    async with app.app_context():  # a script or CLI command, as with Flask-SQLAlchemy
        await db.create_all()
        db.session.add(two.User(name="from a script"))
        await db.session.commit()
        await db.session.execute(sa.select(two.User))  # a new transaction holds a connection
        assert checked_out(db)["users"] == 1
    assert all_zero(checked_out(db))  # closed when the app context ended
    with pytest.raises(NoCurrentSessionError, match=r"db\.scope"):
        db.session.add(two.User(name="no context"))
    async with app.app_context(), db.scope() as session:
        # A task scope inside the app context wins.
        assert db.session.sync_session is session.sync_session
    assert await names(db) == ([], ["from a script"])
    await db.dispose()


async def test_flask_sqlalchemy_config_keys_reach_every_bind(urls: tuple[str, str]) -> None:
    app, two, _ = create_app(
        *urls, SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 3}, SQLALCHEMY_ECHO=False
    )
    db = two.db
    assert set(db.engines) == {None, "users"}
    assert db.engine.url.get_backend_name() == "postgresql"
    assert db.get_engine("users").url.get_backend_name() == "mysql"
    for engine in db.engines.values():
        assert engine.sync_engine.pool.size() == 3
        assert engine.echo is False
    assert app.extensions["asyncbind"] is db
    await db.dispose()


async def test_the_default_bind_may_come_from_engine_options_or_binds_none(
    urls: tuple[str, str],
) -> None:
    """As in Flask-SQLAlchemy: a "url" in SQLALCHEMY_ENGINE_OPTIONS is the default bind's URL,
    and it (or SQLALCHEMY_DATABASE_URI) takes the place of SQLALCHEMY_BINDS[None]'s URL."""
    postgresql, mysql = urls
    for config in (
        {"SQLALCHEMY_ENGINE_OPTIONS": {"url": postgresql}, "SQLALCHEMY_BINDS": {"users": mysql}},
        {
            "SQLALCHEMY_DATABASE_URI": postgresql,
            "SQLALCHEMY_BINDS": {None: {"url": mysql, "pool_size": 3}, "users": mysql},
        },
    ):
        app = Quart(__name__)
        app.config.update(config)
        db = AsyncBind(app=app)
        assert db.engine.url.get_backend_name() == "postgresql"
        async with app.app_context():
            assert (await db.session.execute(sa.text("SELECT 1"))).scalar() == 1
        await db.dispose()


async def test_asyncbind_app_argument_and_a_url_given_to_the_constructor(
    urls: tuple[str, str],
) -> None:
    postgresql, mysql = urls
    app = Quart(__name__)
    db = AsyncBind(postgresql, binds={"users": mysql}, app=app)  # no SQLALCHEMY_* keys needed
    two = add_models(db)
    await db.create_all()

    @app.post("/<name>")
    async def create(name: str) -> str:
        db.session.add(two.User(name=name))
        await db.session.commit()
        return name

    async with app.test_app() as test_app:
        assert (await test_app.test_client().post("/direct")).status_code == 200
    assert await names(db) == ([], ["direct"])
    assert all_zero(checked_out(db))
    await db.dispose()  # names() connected again after shutdown


async def test_one_asyncbind_for_several_apps_of_one_factory(urls: tuple[str, str]) -> None:
    postgresql, mysql = urls
    db = AsyncBind()
    two = add_models(db)
    apps = []
    for _ in range(2):
        app = Quart(__name__)
        app.config.update(SQLALCHEMY_DATABASE_URI=postgresql, SQLALCHEMY_BINDS={"users": mysql})
        db.init_app(app)
        db.init_app(app)  # twice for one app: nothing more happens
        apps.append(app)
    await db.create_all()
    for n, app in enumerate(apps):
        async with app.app_context():
            db.session.add(two.Item(name=f"app {n}"))
            await db.session.commit()
    assert await names(db) == (["app 0", "app 1"], [])
    other = Quart(__name__)
    other.config["SQLALCHEMY_DATABASE_URI"] = mysql
    with pytest.raises(ConfigError, match="already configured"):
        db.init_app(other)
    await db.dispose()


async def test_init_app_errors_say_what_to_fix() -> None:
    app = Quart("no_config")
    with pytest.raises(ConfigError) as error:
        AsyncBind().init_app(app)
    assert "'SQLALCHEMY_DATABASE_URI'" in str(error.value)
    assert "'no_config'" in str(error.value)

    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    app.config["SQLALCHEMY_BINDS"] = "not a dict"
    with pytest.raises(ConfigError, match="SQLALCHEMY_BINDS must be a dict"):
        AsyncBind().init_app(app)

    app.config["SQLALCHEMY_BINDS"] = {}
    first = AsyncBind(app=app)
    with pytest.raises(ConfigError, match="already has an AsyncBind"):
        AsyncBind().init_app(app)
    await first.dispose()

    # Errors name the AsyncBind by its URLs, passwords hidden.
    secret = AsyncBind("postgresql://app:s3cret@localhost/main")
    other = Quart("other")
    other.config["SQLALCHEMY_DATABASE_URI"] = "postgresql://app:s3cret@localhost/other"
    with pytest.raises(ConfigError) as error:
        secret.init_app(other)
    assert "already configured" in str(error.value)
    assert "s3cret" not in str(error.value) and "app:***@localhost/main" in str(error.value)
    await secret.dispose()


async def test_pools_start_clean_in_the_serving_loop(urls: tuple[str, str]) -> None:
    """before_serving resets the pools: connections made before serving are not reused."""
    app, two, _ = create_app(*urls)
    db = two.db
    await db.create_all()
    before = {key: engine.sync_engine.pool for key, engine in db.engines.items()}
    assert all(pool.checkedin() >= 1 for pool in before.values())
    async with app.test_app():
        assert all(pool.checkedin() == 0 for pool in before.values())
        await asyncio.sleep(0)


def test_tables_made_in_one_loop_then_served_in_another(urls: tuple[str, str]) -> None:
    """A setup script's ``asyncio.run(...)`` before ``app.run()``: each loop its connections."""
    app, two, _ = create_app(*urls)
    db = two.db

    async def setup() -> None:
        async with db:  # disposed in the loop that made the connections
            await db.create_all()

    async def serve() -> Any:
        async with app.test_app() as test_app:
            client = test_app.test_client()
            assert (await client.post("/pairs/served")).status_code == 200
            return await (await client.get("/pairs")).get_json()

    asyncio.run(setup())
    assert asyncio.run(serve()) == {"items": ["served"], "users": ["served"]}
    assert all_zero(checked_in(db)) and all_zero(checked_out(db))


async def test_tables_made_in_before_serving_need_test_app_not_test_client(
    urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The README's way to test a Quart app: ``app.test_client()`` alone never runs
    ``before_serving``, so its tables are missing; ``app.test_app()`` runs it (and
    ``after_serving``, which closes every connection)."""
    app, two, _ = create_app(*urls)
    db = two.db

    @app.before_serving
    async def create_tables() -> None:
        await db.create_all()

    response = await app.test_client().post("/pairs/early")
    assert response.status_code == 500
    failures = [str(record.exc_info[1]) for record in caplog.records if record.exc_info]
    assert len(failures) == 1 and 'relation "items" does not exist' in failures[0]
    assert all_zero(checked_out(db))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert (await client.post("/pairs/served")).status_code == 200
        assert await (await client.get("/pairs")).get_json() == {
            "items": ["served"],
            "users": ["served"],
        }
    assert all_zero(checked_in(db)) and all_zero(checked_out(db))
