"""Configuration: binds, engine options, Flask-SQLAlchemy keys, the environment; all checked
before any I/O, every problem a ConfigError that names the bind."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase

from asyncbind import AsyncBind, ConfigError, NotConfiguredError, RoutingSession, UnknownBindError
from asyncbind.config import config_from_env, parse_config


def test_binds_accept_strings_urls_and_dicts() -> None:
    configs = parse_config(
        "postgresql://localhost/main",
        {
            "users": "mysql://root@localhost/users",
            "url_object": sa.make_url("sqlite:///x.db"),
            "appmeta": {"url": "sqlite:///appmeta.db", "pool_recycle": 3600},
        },
        {"echo": False},
    )
    assert list(configs) == [None, "users", "url_object", "appmeta"]
    assert configs[None].url.drivername == "postgresql+asyncpg"
    assert configs["users"].url.drivername == "mysql+aiomysql"
    assert configs["appmeta"].engine_options == {"echo": False, "pool_recycle": 3600}


def test_engine_options_reach_every_bind_and_a_bind_dict_wins() -> None:
    configs = parse_config(
        None,
        {"a": "sqlite:///a.db", "b": {"url": "sqlite:///b.db", "echo": True}},
        {"echo": False, "pool_pre_ping": True},
    )
    assert configs["a"].engine_options == {"echo": False, "pool_pre_ping": True}
    assert configs["b"].engine_options == {"echo": True, "pool_pre_ping": True}


def test_every_engine_gets_its_options(tmp_path: Any) -> None:
    db = AsyncBind(
        f"sqlite:///{tmp_path / 'a.db'}",
        binds={"b": f"sqlite:///{tmp_path / 'b.db'}"},
        engine_options={"echo": True},
    )
    assert all(engine.echo for engine in db.engines.values())


@pytest.mark.parametrize(
    ("binds", "fragment"),
    [
        ({"users": {"pool_size": 5}}, "Bind 'users': its options dict has no 'url'"),
        ({"__all__": "sqlite://"}, "'__all__' is reserved"),
        ({"users": {"url": "sqlite://", "pool_size": "5"}}, "'pool_size' in its options is str"),
        ({"users": {"url": "sqlite://", "pool_size": True}}, "'pool_size'"),
        ({"users": {"url": "sqlite://", "echo": 3}}, "'echo'"),
        ({"users": {"url": "sqlite://", "connect_timeout": -1}}, "positive number of seconds"),
        ({"users": {"url": "sqlite://", "statement_timeout": 0}}, "positive number of seconds"),
        # True is 1 to Python: one second, surely not what was meant.
        ({"users": {"url": "sqlite://", "statement_timeout": True}}, "is bool True; expected"),
        ({"users": {"url": "sqlite://", "connect_timeout": True}}, "is bool True; expected"),
        (
            {"users": "postgresql://u:hunter2@127.0.0.1:99999/x"},
            "Bind 'users': port 99999 in 'postgresql://u:***@127.0.0.1:99999/x' is not "
            "a TCP port; expected 1 to 65535",
        ),
        (
            {"users": {"url": "sqlite://", "no_such_option": 1}},
            "Bind 'users': its engine options were rejected",
        ),
        ({"users": 42}, "Bind 'users' is configured with a int"),
        ({3: "sqlite://"}, "Bind key 3 is a int"),
        ({"  ": "sqlite://"}, "is blank"),
        ({"users": "mysql+pymysql://root:hunter2@h/db"}, "Bind 'users': driver 'pymysql'"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_bind(binds: dict[Any, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        AsyncBind("sqlite://", binds=binds)
    assert fragment in str(info.value)
    assert "hunter2" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_config_leaves_no_engine_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The good binds' engines may be made while every bind is checked (no connection is
    opened); none of them outlives the error."""
    made: list[weakref.ref[Any]] = []
    from asyncbind import engines

    real = engines.create_async_engine

    def create(*args: Any, **kwargs: Any) -> Any:
        engine = real(*args, **kwargs)
        made.append(weakref.ref(engine))
        return engine

    monkeypatch.setattr(engines, "create_async_engine", create)
    with pytest.raises(ConfigError):
        AsyncBind(
            "sqlite://", binds={"ok": "sqlite://", "bad": {"url": "sqlite://", "pool_size": "x"}}
        )
    with pytest.raises(ConfigError):
        AsyncBind("sqlite://", binds={"ok": "sqlite://", "bad": {"url": "sqlite://", "nope": 1}})
    gc.collect()
    assert [ref() for ref in made] == [None] * len(made)


def test_default_bind_twice_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        AsyncBind("sqlite://", binds={None: "sqlite://"})
    assert "configured twice" in str(info.value)
    assert "url=" in str(info.value) and "binds={None: ...}" in str(info.value)


def test_default_bind_may_come_from_binds() -> None:
    db = AsyncBind(binds={None: "sqlite://", "x": "sqlite://"})
    assert set(db.engines) == {None, "x"}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"binds": ["sqlite://"]}, "binds= must be a mapping"),
        ({"engine_options": [("echo", True)]}, "engine_options= must be a mapping"),
        ({"engine_options": {"url": "sqlite://"}}, "engine_options= has a 'url'"),
        ({"session_options": 3}, "session_options= must be a mapping"),
        ({"session_options": {"sync_session_class": int}}, "RoutingSession"),
        ({"session_options": {"class_": dict}}, "AsyncBindSession or a subclass"),
        (
            {"session_options": {"autoflsh": False, "nope": 1}},
            r"session_options has 'autoflsh', 'nope', which the sessions do not take "
            r"\('autoflsh': did you mean 'autoflush'\?\)",
        ),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        AsyncBind("sqlite://", **kwargs)


def test_session_options_of_a_session_class_of_your_own_are_known() -> None:
    """The keyword arguments a sync session class of the application's own takes are session
    options too."""

    class Audited(RoutingSession):
        def __init__(self, *args: Any, audit_user: str = "-", **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.audit_user = audit_user

    db = AsyncBind(
        "sqlite://",
        session_options={"sync_session_class": Audited, "audit_user": "ann", "autoflush": False},
    )
    session = db.session()
    assert session.sync_session.audit_user == "ann"  # type: ignore[attr-defined]
    assert session.sync_session.autoflush is False


def test_from_config_reads_flask_sqlalchemy_keys() -> None:
    db = AsyncBind.from_config(
        {
            "SQLALCHEMY_DATABASE_URI": "sqlite://",
            "SQLALCHEMY_BINDS": {
                "users": "mysql://root@localhost/users",
                "appmeta": {"url": "sqlite:///appmeta.db", "pool_recycle": 3600},
            },
            "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
            "SQLALCHEMY_ECHO": True,
            "SQLALCHEMY_TRACK_MODIFICATIONS": False,
        }
    )
    assert set(db.engines) == {None, "users", "appmeta"}
    assert db.engines["users"].url.drivername == "mysql+aiomysql"
    assert all(engine.echo for engine in db.engines.values())
    assert db.engines["appmeta"].sync_engine.pool._recycle == 3600
    assert db.engines["users"].sync_engine.pool._pre_ping is True


async def current_database(db: AsyncBind) -> str:
    async with db.engine.connect() as conn:
        return str((await conn.execute(sa.text("SELECT current_database()"))).scalar())


@pytest.mark.postgresql
async def test_from_config_merges_the_uri_into_binds_none(
    new_database: NewDatabase, tmp_path: Path
) -> None:
    """As in Flask-SQLAlchemy: SQLALCHEMY_DATABASE_URI is the default bind's URL, and the other
    options of SQLALCHEMY_BINDS[None] stay."""
    uri = await new_database("postgresql")
    db = AsyncBind.from_config(
        {
            "SQLALCHEMY_DATABASE_URI": uri,
            "SQLALCHEMY_BINDS": {
                None: {"url": f"sqlite:///{tmp_path / 'unused.db'}", "pool_size": 3},
                "cache": "sqlite://",
            },
        }
    )
    async with db:
        assert set(db.engines) == {None, "cache"}
        assert await current_database(db) == sa.make_url(uri).database
        assert db.engine.sync_engine.pool.size() == 3  # type: ignore[attr-defined]
    db = AsyncBind.from_config(
        {"SQLALCHEMY_DATABASE_URI": uri, "SQLALCHEMY_BINDS": {None: "sqlite://"}}
    )
    async with db:
        assert await current_database(db) == sa.make_url(uri).database
    assert not (tmp_path / "unused.db").exists()


@pytest.mark.postgresql
async def test_from_config_takes_a_url_in_the_engine_options_as_the_default_bind(
    new_database: NewDatabase, tmp_path: Path
) -> None:
    """As in Flask-SQLAlchemy: a "url" in SQLALCHEMY_ENGINE_OPTIONS is the default bind's URL
    (SQLALCHEMY_DATABASE_URI wins over it); the other binds share the other options only."""
    uri = await new_database("postgresql")
    db = AsyncBind.from_config(
        {
            "SQLALCHEMY_ENGINE_OPTIONS": {"url": uri, "pool_size": 3},
            "SQLALCHEMY_BINDS": {"users": f"sqlite:///{tmp_path / 'users.db'}"},
        }
    )
    async with db:
        assert await current_database(db) == sa.make_url(uri).database
        assert "url" not in db.bind_configs["users"].engine_options
        assert all(e.sync_engine.pool.size() == 3 for e in db.engines.values())  # type: ignore[attr-defined]
    db = AsyncBind.from_config(
        {
            "SQLALCHEMY_DATABASE_URI": uri,
            "SQLALCHEMY_ENGINE_OPTIONS": {"url": "sqlite://"},
            "SQLALCHEMY_BINDS": {None: {"url": "sqlite://", "echo": True}},
        }
    )
    async with db:
        assert await current_database(db) == sa.make_url(uri).database
        assert db.engine.echo is True


def test_engine_options_url_in_the_constructor_says_to_pass_url() -> None:
    with pytest.raises(ConfigError) as info:
        AsyncBind(engine_options={"url": "postgresql://u:hunter2@h/db"})
    assert "engine_options= has a 'url'" in str(info.value)
    assert "url=" in str(info.value) and "binds=" in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("mapping", "fragment"),
    [
        ({"SQLALCHEMY_BINDS": "sqlite://"}, "SQLALCHEMY_BINDS must be a dict"),
        ({"SQLALCHEMY_ENGINE_OPTIONS": "x"}, "SQLALCHEMY_ENGINE_OPTIONS must be a dict"),
        ({"SQLALCHEMY_DATABASE_URI": "sqlite://", "SQLALCHEMY_ECHO": "maybe"}, "SQLALCHEMY_ECHO"),
    ],
)
def test_from_config_errors(mapping: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        AsyncBind.from_config(mapping)


def test_from_env() -> None:
    environ = {
        "ASYNCBIND_DATABASE_URL": "sqlite://",
        "ASYNCBIND_BIND_USERS": "mysql://root@localhost/users",
        "ASYNCBIND_BINDS": '{"appmeta": {"url": "sqlite:///m.db", "pool_recycle": 60}}',
        "ASYNCBIND_ENGINE_OPTIONS": '{"pool_pre_ping": true}',
        "ASYNCBIND_ECHO": "1",
        "UNRELATED": "x",
    }
    db = AsyncBind.from_env(environ)
    assert set(db.engines) == {None, "users", "appmeta"}
    assert db.engines["users"].sync_engine.pool._pre_ping is True
    assert all(engine.echo for engine in db.engines.values())


def test_from_env_prefix_and_errors() -> None:
    parsed = config_from_env({"APP_DATABASE_URL": "sqlite://"}, prefix="APP_")
    assert parsed.url == "sqlite://"
    with pytest.raises(ConfigError, match=r'ASYNCBIND_BINDS is not valid JSON.*"users"'):
        config_from_env({"ASYNCBIND_BINDS": "{nope"})
    with pytest.raises(ConfigError, match=r'ENGINE_OPTIONS is not valid JSON.*"pool_size"'):
        config_from_env({"ASYNCBIND_ENGINE_OPTIONS": "pool_size=5"})
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        config_from_env({"ASYNCBIND_ENGINE_OPTIONS": "[1]"})
    with pytest.raises(ConfigError, match="configured twice"):
        config_from_env(
            {"ASYNCBIND_BINDS": '{"users": "sqlite://"}', "ASYNCBIND_BIND_USERS": "sqlite://"}
        )


async def test_unconfigured_asyncbind_can_be_made_but_not_used() -> None:
    db = AsyncBind()
    assert repr(db) == "<AsyncBind (not configured)>"
    for use in (lambda: db.session(), lambda: db.engine, lambda: db.get_engine("x")):
        with pytest.raises(NotConfiguredError, match="No database is configured"):
            use()
    with pytest.raises(NotConfiguredError):
        await db.create_all()
    await db.dispose()  # nothing to dispose is fine


async def test_configure_later() -> None:
    db = AsyncBind()
    db.configure("sqlite://", binds={"x": "sqlite://"})
    async with db, db.session() as session:
        assert (await session.execute(sa.text("SELECT 7"))).scalar() == 7
    with pytest.raises(ConfigError, match="already configured"):
        db.configure("sqlite://")
    with pytest.raises(ConfigError, match="no database"):
        AsyncBind().configure()


def test_engine_accessors_and_unknown_keys() -> None:
    db = AsyncBind("sqlite://", binds={"users": "sqlite://"})
    assert db.engine is db.engines[None]
    assert db.get_engine("users") is db.engines["users"]
    with pytest.raises(UnknownBindError) as info:
        db.get_engine("reports")
    assert info.value.key == "reports"
    assert "configured: the default bind, 'users'" in str(info.value)
    assert isinstance(info.value, LookupError)
    with pytest.raises(TypeError):
        db.engines["x"] = db.engine  # type: ignore[index]


def test_repr_hides_passwords() -> None:
    db = AsyncBind("postgresql://u:topsecret@h/db", binds={"m": "mysql://r:topsecret@h/db"})
    text = repr(db) + repr(db.session) + repr(list(db.bind_configs.values()))
    assert "topsecret" not in text
    assert "postgresql+asyncpg://u:***@h/db" in text


def test_repr_hides_passwords_in_the_query_and_in_connect_args() -> None:
    db = AsyncBind(
        "postgresql://u@h/db?password=topsecret1",
        binds={
            "m": {
                "url": "mysql://r@h/db?ssl_password=topsecret2",
                "connect_args": {"password": "topsecret3", "connect_timeout": 3},
                "replicas": ["mysql://r:topsecret4@h2/db"],
            }
        },
    )
    text = repr(db) + repr(db.session) + repr(list(db.bind_configs.values()))
    text += repr(list(db.engines.values())) + "".join(map(str, db.bind_configs.values()))
    assert "topsecret" not in text
    assert "connect_args={'password': '***', 'connect_timeout': 3}" in text
    assert "ssl_password=***" in text
    assert db.bind_configs[None].passwords == ["topsecret1"]
    assert sorted(db.bind_configs["m"].passwords) == [f"topsecret{n}" for n in (2, 3, 4)]


def test_connect_args_that_are_not_a_mapping_are_refused_without_showing_them() -> None:
    with pytest.raises(ConfigError) as info:
        AsyncBind({"url": "sqlite://", "connect_args": [("password", "topsecret")]})
    assert "'connect_args'" in str(info.value) and "is list; expected Mapping" in str(info.value)
    assert "topsecret" not in str(info.value)


def test_a_missing_driver_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "asyncmy", None)  # as if it were not installed
    with pytest.raises(ConfigError) as info:
        AsyncBind("sqlite://", binds={"m": "mysql+asyncmy://u:hunter2@h/d"})
    assert "Bind 'm'" in str(info.value) and "'asyncmy'" in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("postgresql://u:hunter2@h/d", "asyncpg", "postgresql"),
        ("mysql://u:hunter2@h/d", "aiomysql", "mysql"),
        ("mariadb://u:hunter2@h/d", "aiomysql", "mysql"),
    ],
    ids=["postgresql", "mysql", "mariadb"],
)
def test_a_missing_driver_names_the_extra_that_installs_it(
    monkeypatch: pytest.MonkeyPatch, url: str, module: str, extra: str
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    with pytest.raises(ConfigError) as info:
        AsyncBind(binds={"m": url})
    assert f"no module {module!r}" in str(info.value)
    assert f"pip install 'asyncbind[{extra}]'" in str(info.value)
    assert "hunter2" not in str(info.value)
