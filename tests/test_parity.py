"""Flask-SQLAlchemy 3.1 parity: what an app ported from Flask-SQLAlchemy's binds set-up relies on.

Each test names the Flask-SQLAlchemy 3.1 behaviour it mirrors (its test, or the code that does it).
Where asyncbind differs on purpose (engine options reach every bind, not only the default one), the
test says so.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from quart import Quart
from sqlalchemy.orm import Mapped, mapped_column

from asyncbind import AsyncBind, ConfigError
from asyncbind.demo import demo
from asyncbind.exceptions import (
    PoolTimeoutError,
    ReadOnlyBindError,
    StatementTimeoutError,
    UnknownBindError,
    WrongEventLoopError,
)

# -- 1. a MetaData for every configured bind -------------------------------------------------


def _configured_by_constructor() -> AsyncBind:
    return AsyncBind("sqlite://", binds={"a": "sqlite://", "b": "sqlite://"})


def _configured_by_configure() -> AsyncBind:
    db = AsyncBind()
    db.configure("sqlite://", binds={"a": "sqlite://", "b": "sqlite://"})
    return db


def _configured_by_from_config() -> AsyncBind:
    return AsyncBind.from_config(
        {
            "SQLALCHEMY_DATABASE_URI": "sqlite://",
            "SQLALCHEMY_BINDS": {"a": "sqlite://", "b": "sqlite://"},
        }
    )


def _configured_by_init_app() -> AsyncBind:
    app = Quart(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite://", SQLALCHEMY_BINDS={"a": "sqlite://", "b": "sqlite://"}
    )
    db = AsyncBind()
    db.init_app(app)
    return db


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_configured_by_constructor, id="constructor"),
        pytest.param(_configured_by_configure, id="configure"),
        pytest.param(_configured_by_from_config, id="from_config"),
        pytest.param(_configured_by_init_app, id="init_app"),
    ],
)
async def test_every_configured_bind_has_a_metadata_before_any_model(
    make: Callable[[], AsyncBind],
) -> None:
    """Flask-SQLAlchemy's ``init_app`` makes a MetaData for every configured bind, with its
    ``info["bind_key"]`` and the default's naming convention (test_metadata.py
    ``test_metadata_per_bind``, ``test_copy_naming_convention``)."""
    db = make()
    assert set(db.metadatas) == {None, "a", "b"}
    for key in ("a", "b"):
        assert db.metadatas[key] is not db.metadata
        assert db.metadatas[key].info["bind_key"] == key
        assert db.metadatas[key].naming_convention == db.metadata.naming_convention
    await db.dispose()


def test_metadatas_of_configured_binds_copy_the_naming_convention() -> None:
    """Flask-SQLAlchemy copies the default metadata's naming convention into every bind's
    (test_metadata.py ``test_copy_naming_convention``)."""
    from sqlalchemy import orm as sa_orm

    class Base(sa_orm.DeclarativeBase):
        metadata = sa.MetaData(naming_convention={"pk": "spk_%(table_name)s"})

    db = AsyncBind(model_class=Base)
    db.configure("sqlite://", binds={"a": "sqlite://"})
    assert db.metadatas["a"].naming_convention["pk"] == "spk_%(table_name)s"


async def test_a_flask_migrate_style_loop_over_metadatas(
    backend: str, new_database: NewDatabase
) -> None:
    """Flask-Migrate's multi-database ``env.py`` runs over ``db.metadatas`` and the engine of
    each key; with Flask-SQLAlchemy every configured bind is there, with or without models."""
    db = AsyncBind(
        binds={None: await new_database(backend), "reports": await new_database(backend)}
    )

    class Item(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "items"
        id: Mapped[int] = mapped_column(primary_key=True)

    async with db:
        done = []
        for key in db.engines:
            metadata = db.metadatas[key]
            async with db.engines[key].begin() as conn:
                await conn.run_sync(metadata.create_all)
                tables = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
            done.append((key, sorted(tables)))
    assert done == [(None, ["items"]), ("reports", [])]


# -- 2. engine_options and session_options given before the binds ------------------------------

#: An isolation level that is not the backend's default, to see that an engine option arrived.
OTHER_LEVEL = {"sqlite": "READ UNCOMMITTED", "postgresql": "SERIALIZABLE", "mysql": "SERIALIZABLE"}


async def test_constructor_engine_options_reach_binds_from_init_app(
    backend: str, new_database: NewDatabase
) -> None:
    """Flask-SQLAlchemy's ``SQLAlchemy(engine_options=...)`` then ``init_app``: the options are
    defaults for every engine, and ``SQLALCHEMY_ENGINE_OPTIONS`` overrides them
    (test_engine.py ``test_init_engine_options``). Unlike Flask-SQLAlchemy, the config's options
    reach every bind, not only the default one."""
    app = Quart(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=await new_database(backend),
        SQLALCHEMY_BINDS={"other": await new_database(backend)},
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": False},
    )
    level = OTHER_LEVEL[backend]
    db = AsyncBind(engine_options={"isolation_level": level, "pool_pre_ping": True})
    db.init_app(app)
    async with db:
        for key, engine in db.engines.items():
            async with engine.connect() as conn:
                assert (key, await conn.get_isolation_level()) == (key, level)
            assert engine.sync_engine.pool._pre_ping is False  # the config wins


async def test_constructor_engine_options_reach_binds_from_configure(
    backend: str, url: str
) -> None:
    """The same for ``configure()``: its options override the constructor's."""
    level = OTHER_LEVEL[backend]
    db = AsyncBind(engine_options={"isolation_level": level, "echo": True})
    db.configure(binds={None: url}, engine_options={"echo": False})
    async with db, db.engine.connect() as conn:
        assert await conn.get_isolation_level() == level
    assert db.engine.echo is False


def test_from_config_merges_engine_options_as_flask_sqlalchemy_does() -> None:
    """``from_config(cfg, engine_options=...)``: the argument is the default, the config's
    ``SQLALCHEMY_ENGINE_OPTIONS`` override it, and ``SQLALCHEMY_ECHO`` only fills ``echo`` and
    ``echo_pool`` where neither set them (Flask-SQLAlchemy's ``init_app``)."""
    db = AsyncBind.from_config(
        {
            "SQLALCHEMY_DATABASE_URI": "sqlite://",
            "SQLALCHEMY_BINDS": {"a": "sqlite://"},
            "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": False},
            "SQLALCHEMY_ECHO": False,
        },
        engine_options={"echo": True, "pool_pre_ping": True, "logging_name": "ported"},
    )
    for engine in db.engines.values():
        assert engine.echo is True  # the argument's, not SQLALCHEMY_ECHO's
        assert engine.sync_engine.pool.echo is False  # SQLALCHEMY_ECHO's
        assert engine.sync_engine.pool._pre_ping is False
        assert engine.sync_engine.logging_name == "ported"


def test_from_env_merges_engine_options_the_same_way() -> None:
    db = AsyncBind.from_env(
        {"ASYNCBIND_DATABASE_URL": "sqlite://", "ASYNCBIND_ENGINE_OPTIONS": '{"echo": false}'},
        engine_options={"echo": True, "logging_name": "ported"},
    )
    assert db.engine.echo is False
    assert db.engine.sync_engine.logging_name == "ported"


async def test_configure_takes_session_options(url: str) -> None:
    """Flask-SQLAlchemy takes ``session_options`` in its constructor; ``configure()`` takes
    them too, over the constructor's."""
    db = AsyncBind(session_options={"autoflush": False, "info": {"app": "ported"}})
    db.configure(url, session_options={"info": {"app": "configured"}})
    async with db, db.session() as session:
        assert session.sync_session.autoflush is False
        assert session.info == {"app": "configured"}
        assert (await session.execute(sa.text("SELECT 3"))).scalar() == 3
    with pytest.raises(ConfigError, match="session_options= must be a mapping"):
        AsyncBind().configure("sqlite://", session_options=3)  # type: ignore[arg-type]


# -- 3. None where SQLAlchemy's default is None ------------------------------------------------


async def test_none_is_sqlalchemy_default(url: str) -> None:
    """``create_engine(pool=None, poolclass=None, ...)`` is SQLAlchemy's default; Flask-SQLAlchemy
    passes such options through, so the same config must work here and mean the default."""
    nones = {
        "pool": None,
        "poolclass": None,
        "logging_name": None,
        "pool_logging_name": None,
        "isolation_level": None,
        "execution_options": None,
        "echo": None,
        "echo_pool": None,
    }
    db = AsyncBind(
        binds={None: url, "mem": {"url": "sqlite://", "poolclass": None}},
        engine_options={**nones, "connect_timeout": None, "statement_timeout": None},
    )
    plain = AsyncBind(binds={None: url, "mem": "sqlite://"})
    for key in (None, "mem"):
        assert type(db.engines[key].sync_engine.pool) is type(plain.engines[key].sync_engine.pool)
    assert isinstance(db.engines["mem"].sync_engine.pool, sa.StaticPool)
    assert db.bind_configs[None].connect_timeout is None
    async with db, db.session() as session:
        assert (await session.execute(sa.text("SELECT 4"))).scalar() == 4
    await plain.dispose()


def test_a_bind_none_undoes_a_shared_option() -> None:
    """A bind's own ``None`` beats the shared value and then means SQLAlchemy's default."""
    db = AsyncBind(
        "sqlite:///x.db",
        binds={"b": {"url": "sqlite:///y.db", "poolclass": None}},
        engine_options={"poolclass": sa.NullPool},
    )
    assert isinstance(db.engine.sync_engine.pool, sa.NullPool)
    assert not isinstance(db.engines["b"].sync_engine.pool, sa.NullPool)


# -- 4. SQLALCHEMY_ECHO sets echo_pool too -------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda: AsyncBind.from_config(
                {"SQLALCHEMY_DATABASE_URI": "sqlite://", "SQLALCHEMY_ECHO": True}
            ),
            id="SQLALCHEMY_ECHO",
        ),
        pytest.param(
            lambda: AsyncBind.from_env(
                {"ASYNCBIND_DATABASE_URL": "sqlite://", "ASYNCBIND_ECHO": "1"}
            ),
            id="ASYNCBIND_ECHO",
        ),
    ],
)
def test_echo_config_sets_echo_and_echo_pool(make: Callable[[], AsyncBind]) -> None:
    """Flask-SQLAlchemy's ``SQLALCHEMY_ECHO`` sets ``echo`` and ``echo_pool``
    (test_engine.py ``test_config_echo``)."""
    db = make()
    assert db.engine.echo is True
    assert db.engine.sync_engine.pool.echo is True


def test_echo_config_fills_only_what_engine_options_leave_unset() -> None:
    """Flask-SQLAlchemy sets ``echo`` and ``echo_pool`` from ``SQLALCHEMY_ECHO`` with
    ``setdefault``: an explicit engine option wins, each on its own."""
    db = AsyncBind.from_config(
        {
            "SQLALCHEMY_DATABASE_URI": "sqlite://",
            "SQLALCHEMY_ENGINE_OPTIONS": {"echo": False},
            "SQLALCHEMY_ECHO": True,
        }
    )
    assert db.engine.echo is False
    assert db.engine.sync_engine.pool.echo is True


# -- 5. relative SQLite paths under the Quart app's instance_path ---------------------------------


async def test_init_app_puts_relative_sqlite_files_under_instance_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flask-SQLAlchemy makes relative SQLite paths relative to ``app.instance_path`` and creates
    that folder (test_engine.py ``test_sqlite_relative_path``, ``test_sqlite_driver_level_uri``);
    in-memory databases and absolute paths stay as they are."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    instance = tmp_path / "instance"
    app = Quart(__name__, instance_path=str(instance))
    app.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite:///app.db",
        SQLALCHEMY_BINDS={
            "nested": "sqlite:///data/nested.db",
            "uri": {"url": "sqlite:///file:uri.db?uri=true", "pool_pre_ping": True},
            "absolute": f"sqlite:///{tmp_path / 'absolute.db'}",
            "memory": "sqlite://",
            "memory_file_uri": "sqlite:///file:mem?mode=memory&uri=true",
            "url_object": sa.make_url("sqlite:///object.db"),
        },
    )
    (instance / "data").mkdir(parents=True)  # sub-folders are the app's to make, as in Flask
    db = AsyncBind()
    db.init_app(app)

    class Note(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "notes"
        id: Mapped[int] = mapped_column(primary_key=True)

    async with db:
        await db.create_all()
    assert db.engine.url.database == str(instance / "app.db")
    assert db.engines["nested"].url.database == str(instance / "data" / "nested.db")
    assert db.engines["uri"].url.database == f"file:{instance / 'uri.db'}"
    assert db.engines["absolute"].url.database == str(tmp_path / "absolute.db")
    assert db.engines["memory"].url.database is None
    assert db.engines["memory_file_uri"].url.database == "file:mem"
    assert db.engines["url_object"].url.database == str(instance / "object.db")
    assert sorted(p.name for p in instance.iterdir()) == ["app.db", "data", "object.db", "uri.db"]
    assert sorted(os.listdir(cwd)) == []


async def test_init_app_creates_the_instance_folder(tmp_path: Path) -> None:
    """Flask-SQLAlchemy creates ``app.instance_path`` when a SQLite path is relative to it."""
    instance = tmp_path / "not" / "yet"
    app = Quart(__name__, instance_path=str(instance))
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///app.db"
    db = AsyncBind(app=app)
    assert instance.is_dir()
    async with db, db.engine.connect() as conn:
        await conn.execute(sa.text("CREATE TABLE t (id INTEGER)"))
    assert (instance / "app.db").is_file()


def test_only_init_app_moves_sqlite_files(tmp_path: Path) -> None:
    """Outside ``init_app`` (no app, so no instance folder) a relative path stays relative to the
    working directory, as SQLAlchemy has it; and an app without relative SQLite paths gets no
    instance folder."""
    assert AsyncBind("sqlite:///app.db").engine.url.database == "app.db"
    config = {"SQLALCHEMY_DATABASE_URI": "sqlite:///app.db"}
    assert AsyncBind.from_config(config).engine.url.database == "app.db"
    instance = tmp_path / "instance"
    app = Quart(__name__, instance_path=str(instance))
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'a.db'}"
    AsyncBind(app=app)
    assert not instance.exists()


def test_an_app_factory_with_relative_sqlite_paths_compares_the_placed_files(
    tmp_path: Path,
) -> None:
    """One AsyncBind for several apps of one factory: the same relative path under the same
    instance folder is the same database; under another folder it is another one."""
    db = AsyncBind()
    for _ in range(2):
        app = Quart(__name__, instance_path=str(tmp_path / "one"))
        app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///app.db"
        db.init_app(app)
    other = Quart(__name__, instance_path=str(tmp_path / "two"))
    other.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///app.db"
    with pytest.raises(ConfigError, match="already configured"):
        db.init_app(other)


# -- 6. from_config refuses a config with no database ---------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({}, id="empty"),
        pytest.param(
            {"SQLALCHEMY_DATABASE_URI": None, "SQLALCHEMY_BINDS": {}}, id="none-and-empty"
        ),
        pytest.param({"SQLALCHEMY_TRACK_MODIFICATIONS": False}, id="other-keys"),
    ],
)
def test_from_config_without_a_database_is_refused(config: dict[str, Any]) -> None:
    """Flask-SQLAlchemy refuses such a config at set-up: "Either 'SQLALCHEMY_DATABASE_URI' or
    'SQLALCHEMY_BINDS' must be set." (test_engine.py ``test_no_binds_error``)."""
    with pytest.raises(ConfigError) as info:
        AsyncBind.from_config(config)
    message = str(info.value)
    assert "'SQLALCHEMY_DATABASE_URI'" in message and "'SQLALCHEMY_BINDS'" in message
    assert "from_config" in message


def test_from_config_with_binds_only_has_no_default_engine() -> None:
    """Flask-SQLAlchemy: ``SQLALCHEMY_BINDS`` alone is a valid config with no default engine
    (test_engine.py ``test_no_default_url``)."""
    db = AsyncBind.from_config({"SQLALCHEMY_BINDS": {"a": "sqlite://"}})
    assert list(db.engines) == ["a"]


# -- 7. db.Table(..., info={"bind_key": ...}) --------------------------------------------------


async def test_db_table_with_info_bind_key_lives_in_that_bind(
    backend: str, new_database: NewDatabase
) -> None:
    """Flask-SQLAlchemy 3.1's ``db.Table(..., bind_key="users")`` puts the table in that bind's
    metadata (test_table_bind.py ``test_metadata_per_bind``); its 2.x docs spelled it
    ``info={"bind_key": "users"}``. Either way the table's foreign key to a model of that bind
    must resolve at ``create_all``."""
    db = AsyncBind(await new_database(backend), binds={"users": await new_database(backend)})

    class User(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "users"
        __tablename__ = "user"
        id: Mapped[int] = mapped_column(primary_key=True)

    roles = db.Table(
        "user_roles",
        sa.Column("user_id", sa.ForeignKey("user.id"), primary_key=True),
        sa.Column("role", sa.String(20), primary_key=True),
        info={"bind_key": "users"},
    )
    assert roles.metadata is db.metadatas["users"]
    async with db:
        await db.create_all()
        async with db.session() as session:
            session.add(User(id=1))
            await session.flush()
            await session.execute(sa.insert(roles), [{"user_id": 1, "role": "admin"}])
            await session.commit()
        async with db.engines["users"].connect() as conn:
            rows = (await conn.execute(sa.text("SELECT user_id, role FROM user_roles"))).all()
            names = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
        async with db.engine.connect() as conn:
            default_tables = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
    assert [tuple(row) for row in rows] == [(1, "admin")]
    assert sorted(names) == ["user", "user_roles"]
    assert default_tables == []


def test_db_table_bind_key_and_info_must_agree() -> None:
    db = AsyncBind("sqlite://", binds={"users": "sqlite://", "meta": "sqlite://"})
    same = db.Table(
        "same", sa.Column("id", sa.Integer), bind_key="users", info={"bind_key": "users"}
    )
    assert same.metadata is db.metadatas["users"]
    to_default = db.Table("to_default", sa.Column("id", sa.Integer), info={"bind_key": None})
    assert to_default.metadata is db.metadata
    with pytest.raises(ConfigError) as info:
        db.Table("t", sa.Column("id", sa.Integer), bind_key="meta", info={"bind_key": "users"})
    message = str(info.value)
    assert "'t'" in message and "'meta'" in message and "'users'" in message
    with pytest.raises(ConfigError, match="None"):
        db.Table("u", sa.Column("id", sa.Integer), bind_key=None, info={"bind_key": "users"})
    assert not any({"t", "u"} & set(metadata.tables) for metadata in db.metadatas.values())


# -- 8. every bad bind named; "the default bind" ------------------------------------------------


def test_a_config_error_names_every_bad_bind() -> None:
    with pytest.raises(ConfigError) as info:
        AsyncBind(
            "nope://x",
            binds={
                "good": "sqlite://",
                "no_url": {"pool_size": 5},
                "bad_type": {"url": "sqlite://", "pool_size": "5"},
                "sync": "mysql+pymysql://root:hunter2@h/db",
                "rejected": {"url": "sqlite://", "no_such_option": 1},
                "__all__": "sqlite://",
            },
        )
    message = str(info.value)
    assert "6 problems" in message
    for fragment in (
        "The default bind: scheme 'nope'",
        "Bind 'no_url': its options dict has no 'url'",
        "Bind 'bad_type': option 'pool_size' in its options is str",
        "Bind 'sync': driver 'pymysql'",
        "Bind 'rejected': its engine options were rejected",
        "Bind key '__all__' is reserved",
    ):
        assert fragment in message
    assert "'good'" not in message and "hunter2" not in message
    assert len(message.splitlines()) == 7  # a heading, then one line per problem


def test_one_bad_bind_is_one_plain_message() -> None:
    with pytest.raises(ConfigError) as info:
        AsyncBind("sqlite://", binds={"a": {"pool_size": 5}})
    assert str(info.value).startswith("Bind 'a': its options dict has no 'url'")


def test_bad_shared_engine_options_and_a_bad_bind_are_both_named() -> None:
    with pytest.raises(ConfigError) as info:
        AsyncBind("sqlite://", binds={"a": 42}, engine_options={"pool_size": "x"})
    message = str(info.value)
    assert "Option 'pool_size' in engine_options is str 'x'" in message
    assert "Bind 'a' is configured with a int" in message
    assert "Bind None" not in message and "default bind" not in message


def test_messages_call_the_default_bind_by_name() -> None:
    errors = [
        ReadOnlyBindError(None, "a flush"),
        StatementTimeoutError(None, 1.5),
        PoolTimeoutError(None, 2),
        WrongEventLoopError(None),
        UnknownBindError(None, ["users"], owner="model 'Item'"),
    ]
    for error in errors:
        assert "Bind None" not in str(error) and "the default bind" in str(error).lower()
    for make in (
        lambda: AsyncBind(""),
        lambda: AsyncBind("nope+x://h/db"),
        lambda: AsyncBind({"url": "sqlite://", "pool_size": "5"}),
        lambda: AsyncBind("sqlite://", engine_options={"read_only": True}),
    ):
        with pytest.raises(ConfigError) as info:
            make()
        assert str(info.value).startswith("The default bind: ")
    assert str(ReadOnlyBindError("users", "a flush")).startswith("Bind 'users' is read-only")


# -- 9. the demo, twice -----------------------------------------------------------------------


async def test_the_demo_runs_twice_in_one_folder_with_the_same_report(tmp_path: Path) -> None:
    first, second = io.StringIO(), io.StringIO()
    counts = await demo(tmp_path, first)
    assert await demo(tmp_path, second) == counts
    assert second.getvalue() == first.getvalue()
    assert "order 10: 'lamp' for 'ada'" in second.getvalue()
