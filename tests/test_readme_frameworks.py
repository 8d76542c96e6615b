"""The examples of the README's "Frameworks" section run as written, and do what they say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from arq.connections import RedisSettings
from arq.worker import create_worker
from arqredis import REDIS_URL, redis_for_test
from readmeblocks import python_block, run_python
from twobinds import lifespan_of

pytestmark = pytest.mark.sqlite


def example(title: str) -> str:
    """The Python code block of the README's Frameworks subsection ``title``."""
    return python_block("## Frameworks", f"### {title}")


def run(title: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Execute an example in ``path`` (its SQLite files go there), as a module would be."""
    monkeypatch.chdir(path)
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    # dont_inherit: the example must not get this module's "from __future__ import annotations".
    exec(compile(example(title), f"README {title}", "exec", dont_inherit=True), namespace)
    return namespace


def files(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


def client_of(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def test_quart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example_ = run("Quart", tmp_path, monkeypatch)
    app, db = example_["app"], example_["db"]
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert await (await client.post("/users/ada")).get_json() == {"users": ["ada"]}
        assert await (await client.post("/users/bob")).get_json() == {"users": ["ada", "bob"]}
        assert await (await client.get("/users/2")).get_json() == {"name": "bob"}
        assert (await client.get("/users/3")).status_code == 404  # get_or_404: Quart's 404
        page = await client.get("/users?page=2&per_page=1")
        assert await page.get_json() == {"names": ["bob"], "pages": 2}
        assert (await client.get("/users?page=3&per_page=1")).status_code == 404
    # As in Flask-SQLAlchemy, relative SQLite paths are in the app's instance folder.
    assert app.instance_path == str(tmp_path / "instance")
    assert files(tmp_path) == {"instance"}
    assert files(tmp_path / "instance") == {"main.db", "users.db"}
    assert all(engine.sync_engine.pool.checkedin() == 0 for engine in db.engines.values())


async def test_flask_sqlalchemy_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example_ = run("Porting a Flask-SQLAlchemy app with binds to Quart", tmp_path, monkeypatch)
    app, db = example_["app"], example_["db"]
    async with app.test_app() as test_app:
        client = test_app.test_client()
        assert await (await client.post("/users/ada")).get_json() == {"id": 1}
        assert await (await client.get("/users/1")).get_json() == {"name": "ada"}
        assert (await client.get("/users/2")).status_code == 404  # was a 500 with get_one()
        async with app.app_context():
            audit = example_["audit"]
            rows = (await db.session.execute(audit.select())).all()
            assert rows == [("ada",)]
    assert files(tmp_path / "instance") == {"main.db", "meta.db", "auth.db"}


async def test_starlette(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example_ = run("Starlette", tmp_path, monkeypatch)
    app, db, User = example_["app"], example_["db"], example_["User"]
    async with lifespan_of(app), client_of(app) as client:
        assert (await client.post("/users/ada")).json() == {"added": "ada"}
        async with db.session() as session:
            assert (await session.get(User, 1)).name == "ada"  # committed by the middleware
        assert (await client.get("/users/1")).json() == {"name": "ada"}
        missing = await client.get("/users/2")
        assert (missing.status_code, missing.text) == (404, "Not Found")  # Starlette's 404


async def test_fastapi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example_ = run("FastAPI", tmp_path, monkeypatch)
    app = example_["app"]
    async with lifespan_of(app), client_of(app) as client:
        assert (await client.post("/users/ada")).json() == {"id": 1}
        assert (await client.post("/users/bob")).json() == {"id": 2}
        assert (await client.get("/users")).json() == {"names": ["ada", "bob"]}
        assert (await client.get("/users?page=2&per_page=1")).json() == {"names": ["bob"]}
        missing = await client.get("/users?page=3&per_page=1")
        assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})


def test_workers(tmp_path: Path) -> None:
    done = run_python(example("Workers and scripts"), tmp_path, "-W", "error")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "10"


@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning")  # arq's
async def test_arq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    example_ = run("arq workers", tmp_path, monkeypatch)
    db, User, settings = example_["db"], example_["User"], example_["WorkerSettings"]
    async with redis_for_test() as redis:
        for name in ("ada", "bob"):
            await redis.pool.enqueue_job(
                "add_user", name, _job_id=redis.job_id(name), _queue_name=redis.queue
            )
        # The example's WorkerSettings, on the test's Redis database and queue.
        worker = create_worker(
            settings,
            redis_settings=RedisSettings.from_dsn(REDIS_URL),
            queue_name=redis.queue,
            burst=True,
            handle_signals=False,
            poll_delay=0.01,
        )
        try:
            await worker.async_run()
        finally:
            await worker.close()
        returned = {}
        for name in ("ada", "bob"):
            found = await redis.result(redis.job_id(name))
            assert found is not None and found.success
            returned[name] = found.result
    assert files(tmp_path) == {"main.db", "users.db"}
    async with db.session() as session:  # committed by the jobs' scopes
        users = await session.scalars(sa.select(User))
        assert {user.name: user.id for user in users} == returned  # each job returned its id
    # A test can await a job directly, in its scope: committed when it returns.
    assert await settings.functions[0].coroutine({"job_id": "test"}, "cy") == 3
    async with db.session() as session:
        assert (await session.get(User, 3)).name == "cy"
    await db.dispose()
