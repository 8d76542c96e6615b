"""Property-based tests: whatever configuration or bind key comes in, only asyncbind's errors go out.

Hypothesis generates URLs (text, URL-shaped text, :class:`sqlalchemy.URL` objects), bind keys of
every type, option dicts, Flask-SQLAlchemy keys for :meth:`AsyncBind.from_config` and environment
values for :meth:`AsyncBind.from_env`. For each, building an AsyncBind either works or raises an
:class:`~asyncbind.AsyncBindError` with a message; a rejected configuration leaves no engine alive.
At run time, bind keys of every type go to ``create_all``, ``drop_all``, ``reflect``,
``get_engine`` and ``session.execute(..., bind_arguments={"bind_key": ...})`` on real SQLite
databases: they work for a configured key and raise an AsyncBindError otherwise, and nothing hangs.
"""

from __future__ import annotations

import asyncio
import gc
import json
import string
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio.base import ReversibleProxy

from asyncbind import AsyncBind, AsyncBindError

pytestmark = pytest.mark.sqlite

FUZZ = settings(
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
GUARD = 20

# -- strategies --------------------------------------------------------------------------------

SCHEMES = [
    "postgresql",
    "postgres",
    "mysql",
    "mariadb",
    "sqlite",
    "postgresql+asyncpg",
    "postgresql+psycopg",
    "postgresql+psycopg2",
    "postgresql+pg8000",
    "mysql+aiomysql",
    "mysql+asyncmy",
    "mysql+pymysql",
    "mysql+mysqldb",
    "mariadb+aiomysql",
    "sqlite+aiosqlite",
    "sqlite+pysqlite",
    "oracle",
    "oracle+oracledb",
    "mssql",
    "mssql+aioodbc",
    "nosuch",
    "nosuch+driver",
    "postgresql+nosuch",
    "http",
    "",
    "+",
    "POSTGRESQL",
]
URL_TEXT = string.ascii_letters + string.digits + "@:/%#?&=+ -_.[]\\'\"ü€\x00\n"
short_text = st.text(alphabet=URL_TEXT, max_size=12)


@st.composite
def url_strings(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(SCHEMES))
    user = draw(st.one_of(st.just(""), short_text.map(lambda t: t + "@"), st.just("u:pw@")))
    host = draw(st.one_of(st.just("127.0.0.1"), st.just(""), short_text))
    port = draw(
        st.one_of(
            st.just(""),
            st.integers(-1, 70000).map(lambda p: f":{p}"),
            short_text.map(lambda t: ":" + t),
        )
    )
    database = draw(
        st.one_of(st.just(""), short_text, st.just(":memory:"), st.just("file:x?mode=memory"))
    )
    query = draw(
        st.one_of(st.just(""), short_text.map(lambda t: "?" + t), st.just("?charset=utf8mb4"))
    )
    slashes = draw(st.sampled_from(["://", ":///", ":/", "//", "://///", ""]))
    return f"{scheme}{slashes}{user}{host}{port}/{database}{query}"


@st.composite
def url_objects(draw: st.DrawFn) -> sa.URL:
    return sa.URL.create(
        draw(st.sampled_from([s for s in SCHEMES if s and s != "+"])),
        username=draw(st.one_of(st.none(), short_text)),
        password=draw(st.one_of(st.none(), short_text)),
        host=draw(st.one_of(st.none(), short_text)),
        port=draw(st.one_of(st.none(), st.integers(0, 65535))),
        database=draw(st.one_of(st.none(), short_text, st.just(":memory:"))),
        query=draw(st.dictionaries(short_text, short_text, max_size=2)),
    )


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.binary(max_size=5),
    st.lists(st.integers(), max_size=3),
    st.tuples(st.text(max_size=3)),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    st.builds(object),
)
urls = st.one_of(url_strings(), url_objects(), st.text(max_size=40), junk)
OPTION_NAMES = [
    "echo",
    "echo_pool",
    "hide_parameters",
    "isolation_level",
    "logging_name",
    "max_overflow",
    "pool_logging_name",
    "pool_pre_ping",
    "pool_recycle",
    "pool_size",
    "pool_timeout",
    "pool_use_lifo",
    "query_cache_size",
    "connect_args",
    "execution_options",
    "read_only",
    "connect_timeout",
    "statement_timeout",
    "poolclass",
    "pool_reset_on_return",
    "json_serializer",
    "future",
    "strategy",
    "url",
    "no_such_option",
]
option_values = st.one_of(
    junk,
    st.sampled_from(["debug", "AUTOCOMMIT", "SERIALIZABLE", "bogus", "", "rollback"]),
    st.sampled_from([sa.NullPool, sa.StaticPool, sa.QueuePool, int, AsyncEngine]),
    st.dictionaries(
        st.sampled_from(["server_settings", "timeout", "ssl", "charset", "check_same_thread", "x"]),
        st.one_of(junk, st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)),
        max_size=2,
    ),
)
raw_options = st.dictionaries(
    st.one_of(st.sampled_from(OPTION_NAMES), st.text(max_size=6), st.integers(), st.none()),
    st.one_of(option_values, st.just(True)),
    max_size=4,
)


options = raw_options
keys = st.one_of(
    st.none(),
    st.sampled_from(["a", "b", "__all__", "", " ", "None", "__ALL__", "A", "a "]),
    st.text(max_size=8),
    st.integers(),
    st.floats(allow_nan=True),
    st.binary(max_size=3),
    st.booleans(),
    st.tuples(st.sampled_from(["a", "b"])),
    st.builds(object),
)
bind_values = st.one_of(urls, st.builds(lambda u, o: {"url": u, **o}, urls, options), options, junk)
binds = st.one_of(st.dictionaries(keys, bind_values, max_size=3), junk)

# -- helpers -----------------------------------------------------------------------------------


def _live_engines() -> set[int]:
    """ids of the AsyncEngines alive now (SQLAlchemy tracks them with weak references)."""
    return {
        id(proxy)
        for ref in list(ReversibleProxy._proxy_objects.values())
        if isinstance(proxy := ref(), AsyncEngine)
    }


def check_construction(make: Callable[[], AsyncBind]) -> AsyncBind | None:
    """Build an AsyncBind: success, or an AsyncBindError with a message and no engine left."""
    before = _live_engines()
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            db = make()
    except AsyncBindError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} with an empty message"
        rejected = True
    else:
        rejected = False
    if rejected:
        # Checked once the error (whose traceback holds the constructor's frames) is gone. An
        # engine made and dropped sits in a reference cycle until the collector runs.
        for _ in range(5):
            if not _live_engines() - before:
                break
            gc.collect()
        assert not _live_engines() - before, "a rejected configuration left an engine alive"
        return None
    assert isinstance(db, AsyncBind)
    assert all(isinstance(e, AsyncEngine) for e in db.engines.values())
    # An accepted configuration may draw SQLAlchemy's own warnings about it (for example query
    # arguments a driver ignores); nothing else.
    others = [w for w in warned if not issubclass(w.category, sa.exc.SAWarning)]
    assert not others, [f"{w.category.__name__}: {w.message}" for w in others]
    return db


# -- configuration -----------------------------------------------------------------------------


@FUZZ
@given(url=urls, binds=binds, engine_options=st.one_of(options, junk))
def test_constructor(url: Any, binds: Any, engine_options: Any) -> None:
    check_construction(lambda: AsyncBind(url, binds=binds, engine_options=engine_options))


@FUZZ
@given(key=keys, value=bind_values)
def test_one_bind(key: Any, value: Any) -> None:
    db = check_construction(lambda: AsyncBind(binds={key: value}))
    if db is not None:
        assert list(db.engines) == [key]


@FUZZ
@given(
    config=st.fixed_dictionaries(
        {},
        optional={
            "SQLALCHEMY_DATABASE_URI": urls,
            "SQLALCHEMY_BINDS": binds,
            "SQLALCHEMY_ENGINE_OPTIONS": st.one_of(options, junk),
            "SQLALCHEMY_ECHO": st.one_of(junk, st.sampled_from(["true", "0", "debug", "yes"])),
            "SQLALCHEMY_TRACK_MODIFICATIONS": junk,
        },
    )
)
def test_from_config(config: dict[str, Any]) -> None:
    check_construction(lambda: AsyncBind.from_config(config))


def _json_texts(values: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    jsonable = st.recursive(
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
        ),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=6,
    )
    return st.one_of(values.map(json.dumps), jsonable.map(json.dumps), st.text(max_size=20))


ENV_NAMES = st.one_of(
    st.sampled_from(
        [
            "ASYNCBIND_DATABASE_URL",
            "ASYNCBIND_BINDS",
            "ASYNCBIND_ENGINE_OPTIONS",
            "ASYNCBIND_ECHO",
            "ASYNCBIND_BIND_",
            "ASYNCBIND_BIND___ALL__",
            "ASYNCBIND_BIND_ ",
            "OTHER",
        ]
    ),
    st.text(alphabet=string.ascii_letters + "_ ", max_size=8).map(lambda t: "ASYNCBIND_BIND_" + t),
)
env_values = st.one_of(
    url_strings(),
    st.text(max_size=20),
    _json_texts(st.dictionaries(st.text(max_size=4), url_strings(), max_size=2)),
    _json_texts(
        options.filter(lambda o: all(isinstance(k, str) for k in o)).map(
            lambda o: {
                k: v for k, v in o.items() if isinstance(v, bool | int | float | str | type(None))
            }
        )
    ),
)


@FUZZ
@given(environ=st.dictionaries(ENV_NAMES, env_values, max_size=4))
def test_from_env(environ: dict[str, str]) -> None:
    check_construction(lambda: AsyncBind.from_env(environ))


@FUZZ
@given(
    prefix=st.text(max_size=6),
    environ=st.dictionaries(st.text(max_size=12), url_strings(), max_size=3),
)
def test_from_env_any_prefix(prefix: str, environ: dict[str, str]) -> None:
    check_construction(lambda: AsyncBind.from_env(environ, prefix=prefix))


# -- bind keys at run time ---------------------------------------------------------------------

hashable_runtime_keys = st.one_of(
    keys,
    st.tuples(st.one_of(st.none(), st.sampled_from(["a", "b", "__all__", "c"]))),
    st.frozensets(st.sampled_from(["a", "b", "c"]), max_size=2),
)
#: Lists are how several binds are named; get_engine() and bind_arguments do not take them.
schema_keys = st.one_of(
    hashable_runtime_keys,
    st.lists(
        st.one_of(st.none(), st.sampled_from(["a", "b", "__all__", "c"]), st.integers()), max_size=3
    ),
)
CONFIGURED = (None, "a", "b")


def _valid_single(key: Any) -> bool:
    try:
        return key in CONFIGURED
    except TypeError:
        return False


def _valid_many(key: Any) -> bool:
    items = key if isinstance(key, list | tuple | set | frozenset) else [key]
    try:
        return all(k == "__all__" or k in CONFIGURED for k in items)
    except TypeError:
        return False


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _runtime_db(folder: Path) -> AsyncBind:
    db = AsyncBind(
        f"sqlite:///{folder / 'main.db'}",
        binds={"a": f"sqlite:///{folder / 'a.db'}", "b": "sqlite://"},
    )
    for key in CONFIGURED:
        db.Table("things", sa.Column("id", sa.Integer, primary_key=True), bind_key=key)
    return db


async def _outcome(work: Any) -> BaseException | None:
    try:
        async with asyncio.timeout(GUARD):
            await work
    except AsyncBindError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} with an empty message"
        return exc
    return None


async def check_runtime_key(folder: Path, key: Any, *, single: bool = True) -> None:
    """``key`` through get_engine(), the schema operations and bind_arguments on real SQLite
    binds (``single``: also the calls that take one key)."""
    db = _runtime_db(folder)
    try:
        if single:
            # get_engine: a configured key gives its engine, anything else an AsyncBindError.
            try:
                engine = db.get_engine(key)
            except AsyncBindError as exc:
                assert str(exc).strip()
                assert not _valid_single(key)
            else:
                assert _valid_single(key) and engine is db.engines[key]

        # Schema operations take a key, "__all__", or a list of those.
        for operation in (db.create_all, db.reflect, db.drop_all):
            error = await _outcome(operation(bind_key=key))
            assert (error is None) == _valid_many(key), (operation.__name__, error)

        if single:
            # A statement sent to a bind by key.
            async with db.session() as session:
                error = await _outcome(
                    session.execute(sa.text("SELECT 1"), bind_arguments={"bind_key": key})
                )
                assert (error is None) == _valid_single(key), error
                # The session is still usable afterwards.
                await session.rollback()
                assert (await session.execute(sa.text("SELECT 2"))).scalar() == 2
    finally:
        await db.dispose()


@FUZZ
@given(key=hashable_runtime_keys)
def test_runtime_bind_keys(folder: Path, key: Any) -> None:
    asyncio.run(check_runtime_key(folder, key))


@FUZZ
@given(key=schema_keys)
def test_schema_operation_bind_keys(folder: Path, key: Any) -> None:
    asyncio.run(check_runtime_key(folder, key, single=False))
