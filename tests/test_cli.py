"""The command line, run as ``python -m asyncbind`` in a folder holding the app's module, against
real SQLite, PostgreSQL and MariaDB databases."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import NewDatabase

import asyncbind
from asyncbind import AsyncBind

MakeDb = Callable[..., AsyncBind]

# The subprocess imports this asyncbind, whatever the folder it runs in.
PACKAGE_ROOT = str(Path(asyncbind.__file__).resolve().parent.parent)
PASSWORD = "Cli-Secret-7731"  # PostgreSQL trusts local logins, so a password can be given


@dataclass
class Run:
    status: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


async def cli(folder: Path, *args: str, env: dict[str, str] | None = None, stdin: str = "") -> Run:
    """``python -m asyncbind *args`` in ``folder``, with no ``ASYNCBIND_*`` variable unless
    ``env`` sets it."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCBIND_")}
    environ.update(env or {}, PYTHONPATH=PACKAGE_ROOT)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncbind",
        *args,
        cwd=folder,
        env=environ,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 120)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def write_module(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))


def with_password(url: str) -> str:
    return sa.make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def assert_no_password(run: Run) -> None:
    assert PASSWORD not in run.out and PASSWORD not in run.err


MODELS = """
    import sqlalchemy as sa
    from sqlalchemy.orm import Mapped, mapped_column
    from asyncbind import AsyncBind

    db = AsyncBind({main!r}, binds={binds!r})

    class Order(db.Model):
        __tablename__ = "orders"
        id: Mapped[int] = mapped_column(primary_key=True)

    class User(db.Model):
        __bind_key__ = "users"
        __tablename__ = "users"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))
"""


async def table_names(url: str, make_db: MakeDb) -> set[str]:
    db = make_db(url)
    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names()))


# -- check ------------------------------------------------------------------------------------


@pytest.mark.sqlite
@pytest.mark.postgresql
@pytest.mark.mysql
async def test_check_with_every_bind_up(tmp_path: Path, new_database: NewDatabase) -> None:
    main, users, audit = (
        await new_database("sqlite"),
        with_password(await new_database("postgresql")),
        await new_database("mysql"),
    )
    write_module(
        tmp_path, "config", MODELS.format(main=main, binds={"users": users, "audit": audit})
    )
    run = await cli(tmp_path, "--app", "config:db", "check")
    assert run.status == 0, run.err
    assert [line.split(": ok in ")[0] for line in run.lines] == [
        "the default bind",
        "bind 'users'",
        "bind 'audit'",
    ]
    assert_no_password(run)


@pytest.mark.sqlite
async def test_check_with_a_bind_down(tmp_path: Path, new_database: NewDatabase) -> None:
    down = f"postgresql://app:{PASSWORD}@127.0.0.1:{closed_port()}/nowhere"
    main = await new_database("sqlite")
    write_module(tmp_path, "config", MODELS.format(main=main, binds={"users": down}))
    run = await cli(tmp_path, "check", "--app", "config", "--timeout", "30")
    assert run.status == 1
    up, failed = run.lines
    assert up.startswith("the default bind: ok in ")
    assert failed.startswith("bind 'users': FAILED: BindUnavailableError")
    assert "Traceback" not in run.err
    assert_no_password(run)


# -- finding the app --------------------------------------------------------------------------

NOT_APPS = """
    from asyncbind import AsyncBind

    db = AsyncBind({main!r})
    number = 42
    unconfigured = AsyncBind()

    def broken():
        raise RuntimeError("the factory broke")
"""


@pytest.mark.sqlite
@pytest.mark.parametrize(
    ("app", "expected"),
    [
        pytest.param("nosuchmodule", ["Could not import module 'nosuchmodule'"], id="no-module"),
        pytest.param(
            "failing", ["Importing module 'failing' failed", "ZeroDivisionError"], id="import-fails"
        ),
        pytest.param("notapps:nothing", ["no attribute 'nothing'"], id="no-attribute"),
        pytest.param("notapps:number", ["'notapps:number' holds no AsyncBind"], id="no-asyncbind"),
        pytest.param("empty", ["tried 'db' (missing), 'app' (missing)"], id="module-alone"),
        pytest.param("notapps:unconfigured", ["has no database configured"], id="unconfigured"),
        pytest.param(
            "notapps:broken()", ["calling broken() failed", "the factory broke"], id="factory-fails"
        ),
        pytest.param("notapps:db(1)", ["is not an attribute name"], id="factory-arguments"),
        pytest.param("notapps:db()", ["'db' is an AsyncBind, not a factory"], id="not-a-factory"),
        pytest.param(
            "ending", ["failed: RuntimeError: Set DATABASE_URL first. Fix the module"], id="period"
        ),
        pytest.param(
            None, ["No database to work on", "--app", "ASYNCBIND_DATABASE_URL"], id="no-config"
        ),
    ],
)
async def test_a_bad_app_is_a_usage_error(
    tmp_path: Path, new_database: NewDatabase, app: str | None, expected: list[str]
) -> None:
    write_module(tmp_path, "notapps", NOT_APPS.format(main=await new_database("sqlite")))
    write_module(tmp_path, "failing", "1 / 0\n")
    write_module(tmp_path, "empty", "value = 1\n")
    write_module(tmp_path, "ending", "raise RuntimeError('Set DATABASE_URL first.')\n")
    run = await cli(tmp_path, *(["--app", app] if app else []), "check")
    assert run.status == 2
    assert run.out == ""
    error = run.err.strip()
    assert error.startswith("asyncbind: error: ") and "\n" not in error
    for text in expected:
        assert text in error


SEVERAL_PROBLEMS = f"""
    from asyncbind import AsyncBind

    def create_app():
        return AsyncBind(
            "postgresql+psycopg2://app:{PASSWORD}@127.0.0.1/app",
            binds={{"audit": "mysql+pymysql://root:{PASSWORD}@127.0.0.1/audit"}},
        )
"""


@pytest.mark.sqlite
@pytest.mark.parametrize(
    ("app", "failed", "fix"),
    [
        pytest.param("several", "Importing module 'several' failed", "Fix the module", id="module"),
        pytest.param(
            "factory:create_app()",
            "--app 'factory:create_app()': calling create_app() failed",
            "Fix the factory",
            id="factory",
        ),
    ],
)
async def test_a_configuration_with_several_problems_lists_them_all(
    tmp_path: Path, app: str, failed: str, fix: str
) -> None:
    write_module(tmp_path, "factory", SEVERAL_PROBLEMS)
    write_module(tmp_path, "several", "from factory import create_app\ndb = create_app()\n")
    run = await cli(tmp_path, "--app", app, "check")
    assert (run.status, run.out) == (2, "")
    first, *problems, last = run.err.strip().splitlines()
    assert first == (
        f"asyncbind: error: {failed}: ConfigError: The configuration has 2 problems; no bind "
        "was set up. Fix each of them:"
    )
    assert len(problems) == 2
    assert problems[0].startswith("- The default bind: driver 'psycopg2' in ")
    assert "Use 'postgresql+asyncpg://app:***@127.0.0.1/app' instead." in problems[0]
    assert problems[1].startswith("- Bind 'audit': driver 'pymysql' in ")
    assert last == f"{fix} (--traceback shows where)."
    assert_no_password(run)


@pytest.mark.sqlite
async def test_traceback_shows_where_the_module_failed(tmp_path: Path) -> None:
    write_module(tmp_path, "failing", "1 / 0\n")
    run = await cli(tmp_path, "--app", "failing", "--traceback", "check")
    assert run.status == 2
    assert "Traceback" in run.err and 'failing.py", line 1' in run.err


@pytest.mark.sqlite
async def test_a_traceback_through_the_apps_source_hides_its_passwords(tmp_path: Path) -> None:
    # The traceback quotes the line that failed, a URL written in the source included; so does a
    # message that repeats the URL. Neither is a bind asyncbind knows.
    write_module(
        tmp_path,
        "failing",
        f"""
        from asyncbind import AsyncBind
        AsyncBind("postgresql://app:{PASSWORD}@127.0.0.1/app", binds={{"bad": 42}})
        """,
    )
    write_module(
        tmp_path,
        "saying",
        f'raise RuntimeError("cannot reach mysql://app:{PASSWORD}@127.0.0.1/app")\n',
    )
    for app in ("failing", "saying"):
        run = await cli(tmp_path, "--app", app, "--traceback", "check")
        assert run.status == 2
        assert f'{app}.py", line' in run.err and "app:***@127.0.0.1" in run.err
        assert_no_password(run)


@pytest.mark.sqlite
async def test_usage_errors_of_argparse(tmp_path: Path) -> None:
    assert (await cli(tmp_path, "nocommand")).status == 2
    assert (await cli(tmp_path, "check", "--timeout", "-1")).status == 2
    assert (await cli(tmp_path)).status == 2
    version = await cli(tmp_path, "--version")
    assert (version.status, version.out.split()[:2]) == (0, ["asyncbind", asyncbind.__version__])
    for command in ("check", "show", "create-all", "drop-all", "copy", "demo"):
        run = await cli(tmp_path, command, "--help")
        assert run.status == 0 and run.out.startswith(f"usage: asyncbind {command}")
    assert "--bind ''" in (await cli(tmp_path, "drop-all", "--help")).out


@pytest.mark.sqlite
@pytest.mark.postgresql
async def test_asyncbind_app_names_the_app(tmp_path: Path, new_database: NewDatabase) -> None:
    main, users = await new_database("sqlite"), await new_database("postgresql")
    write_module(tmp_path, "config", MODELS.format(main=main, binds={"users": users}))
    run = await cli(tmp_path, "check", env={"ASYNCBIND_APP": "config"})
    assert run.status == 0, run.err
    assert len(run.lines) == 2


@pytest.mark.sqlite
@pytest.mark.mysql
async def test_without_app_the_environment_configures(
    tmp_path: Path, new_database: NewDatabase
) -> None:
    env = {
        "ASYNCBIND_DATABASE_URL": await new_database("sqlite"),
        "ASYNCBIND_BIND_REPORTS": await new_database("mysql"),
    }
    run = await cli(tmp_path, "check", env=env)
    assert run.status == 0, run.err
    assert run.lines[1].startswith("bind 'reports': ok in ")


# -- show -------------------------------------------------------------------------------------


@pytest.mark.sqlite
@pytest.mark.postgresql
async def test_show_hides_passwords_and_lists_tables(
    tmp_path: Path, new_database: NewDatabase
) -> None:
    main, users = await new_database("sqlite"), with_password(await new_database("postgresql"))
    down = f"mysql://root:{PASSWORD}@127.0.0.1:{closed_port()}/nowhere"
    binds = {
        "users": {"url": users, "pool_size": 3, "max_overflow": 7},
        "down": down,
        "replica": {"url": main, "read_only": True},
    }
    write_module(tmp_path, "config", MODELS.format(main=main, binds=binds))
    assert (await cli(tmp_path, "--app", "config", "create-all", "--bind", "users")).status == 0
    run = await cli(tmp_path, "--app", "config", "show")
    assert run.status == 0, run.err
    assert_no_password(run)
    blocks = {block.splitlines()[0]: block for block in run.out.split("\n\n")}
    assert list(blocks) == ["the default bind", "bind 'users'", "bind 'down'", "bind 'replica'"]
    users_block = blocks["bind 'users'"]
    assert "postgresql+asyncpg://postgres:***@" in users_block
    assert "asyncpg (postgresql)" in users_block
    assert "size 3, max_overflow 7" in users_block
    assert "models     users" in users_block and "database   users" in users_block
    assert "read-only  yes" in blocks["bind 'replica'"]
    assert "models     orders" in blocks["the default bind"]
    assert "database   none" in blocks["the default bind"]  # nothing created there yet
    assert "database   unreachable: BindUnavailableError" in blocks["bind 'down'"]


SCHEMAS = """
    from sqlalchemy.orm import Mapped, mapped_column
    from asyncbind import AsyncBind

    db = AsyncBind({main!r}, binds={{"maria": {maria!r}}})

    class Order(db.Model):
        __tablename__ = "orders"
        __table_args__ = {{"schema": "sales"}}
        id: Mapped[int] = mapped_column(primary_key=True)

    class User(db.Model):
        __tablename__ = "users"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Hit(db.Model):  # MariaDB: a schema is another database of the server
        __bind_key__ = "maria"
        __tablename__ = "hits"
        __table_args__ = {{"schema": {other!r}}}
        id: Mapped[int] = mapped_column(primary_key=True)

    class Visit(db.Model):  # in a database that does not exist (yet)
        __bind_key__ = "maria"
        __tablename__ = "visits"
        __table_args__ = {{"schema": "asyncbind_nowhere"}}
        id: Mapped[int] = mapped_column(primary_key=True)
"""


@pytest.mark.postgresql
@pytest.mark.mysql
async def test_show_lists_the_tables_of_the_schemas_the_models_use(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    main, maria, other = [await new_database(b) for b in ("postgresql", "mysql", "mysql")]
    async with make_db(main).engine.begin() as conn:
        await conn.execute(sa.text("CREATE SCHEMA sales"))
        await conn.execute(sa.text("CREATE SCHEMA legacy"))  # no model uses it
        await conn.execute(sa.text("CREATE TABLE legacy.old_orders (id INTEGER PRIMARY KEY)"))
    async with make_db(other).engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE hits (id INTEGER PRIMARY KEY)"))
    other_name = sa.make_url(other).database
    write_module(tmp_path, "config", SCHEMAS.format(main=main, maria=maria, other=other_name))
    assert (await cli(tmp_path, "--app", "config", "create-all", "--bind", "")).status == 0
    run = await cli(tmp_path, "--app", "config", "show")
    assert run.status == 0, run.err
    blocks = {block.splitlines()[0]: block.splitlines() for block in run.out.split("\n\n")}
    assert "  models     sales.orders, users" in blocks["the default bind"]
    assert "  database   sales.orders, users" in blocks["the default bind"]
    modelled = ", ".join(sorted([f"{other_name}.hits", "asyncbind_nowhere.visits"]))
    assert f"  models     {modelled}" in blocks["bind 'maria'"]
    assert f"  database   {other_name}.hits" in blocks["bind 'maria'"]


DEFAULT_SCHEMAS = """
    from sqlalchemy.orm import Mapped, mapped_column
    from asyncbind import AsyncBind

    db = AsyncBind({main!r}, binds={{"maria": {maria!r}, "lite": {lite!r}}})

    class User(db.Model):  # PostgreSQL's default schema, named
        __tablename__ = "users"
        __table_args__ = {{"schema": "public"}}
        id: Mapped[int] = mapped_column(primary_key=True)

    class Order(db.Model):
        __tablename__ = "orders"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Hit(db.Model):  # MariaDB: the database of the bind's URL, named
        __bind_key__ = "maria"
        __tablename__ = "hits"
        __table_args__ = {{"schema": {maria_name!r}}}
        id: Mapped[int] = mapped_column(primary_key=True)

    class Note(db.Model):  # SQLite's default schema, named
        __bind_key__ = "lite"
        __tablename__ = "notes"
        __table_args__ = {{"schema": "main"}}
        id: Mapped[int] = mapped_column(primary_key=True)
"""


@pytest.mark.sqlite
@pytest.mark.postgresql
@pytest.mark.mysql
async def test_show_lists_a_table_of_the_default_schema_once_when_a_model_names_it(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    """schema='public' on PostgreSQL, the URL's database on MariaDB, 'main' on SQLite: each
    table once, written as the models write it; a table no model has, without its schema."""
    main, maria, lite = [await new_database(b) for b in ("postgresql", "mysql", "sqlite")]
    maria_name = sa.make_url(maria).database
    source = DEFAULT_SCHEMAS.format(main=main, maria=maria, lite=lite, maria_name=maria_name)
    write_module(tmp_path, "config", source)
    assert (await cli(tmp_path, "--app", "config", "create-all")).status == 0
    async with make_db(main).engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE legacy (id INTEGER PRIMARY KEY)"))
    run = await cli(tmp_path, "--app", "config", "show")
    assert run.status == 0, run.err
    blocks = {block.splitlines()[0]: block.splitlines() for block in run.out.split("\n\n")}
    tables = {
        name: [line for line in lines if line.startswith(("  models ", "  database "))]
        for name, lines in blocks.items()
    }
    assert tables == {
        "the default bind": [
            "  models     orders, public.users",
            "  database   legacy, orders, public.users",
        ],
        "bind 'maria'": [f"  models     {maria_name}.hits", f"  database   {maria_name}.hits"],
        "bind 'lite'": ["  models     main.notes", "  database   main.notes"],
    }


@pytest.mark.sqlite
@pytest.mark.postgresql
async def test_a_one_character_password_never_shows_and_the_output_stays_intact(
    tmp_path: Path, new_database: NewDatabase
) -> None:
    """The password '1', in a URL, as ``?password=1`` and in connect_args: check and show print
    no URL with it, and the digits of their output (timings, addresses, ports) are intact."""
    main, pg = await new_database("sqlite"), await new_database("postgresql")
    port = closed_port()
    binds = {
        "users": sa.make_url(pg).set(password="1").render_as_string(hide_password=False),
        "query": f"{pg}?password=1",
        "args": {"url": pg, "connect_args": {"password": "1"}},
        "down": f"postgresql://app:1@127.0.0.1:{port}/nowhere",
    }
    write_module(tmp_path, "config", MODELS.format(main=main, binds=binds))
    check = await cli(tmp_path, "--app", "config", "check", "--timeout", "30")
    show = await cli(tmp_path, "--app", "config", "show", "--timeout", "30")
    assert check.status == 1 and show.status == 0, check.err + show.err
    for run in (check, show):
        text = run.out + run.err
        assert not re.search(r":1@|password=1(?![\w%])", text), text
        assert f"'127.0.0.1', {port})" in text  # the refused address, as the driver gave it
    up = [line for line in check.lines if not line.startswith("bind 'down': FAILED: ")]
    assert len(up) == 4 and len(check.lines) == 5, check.out
    for line in up:
        assert re.fullmatch(r"(the default bind|bind '\w+'): ok in \d+\.\d ms", line), line
    urls = [line.split()[1] for line in show.lines if line.startswith("  url ")]
    assert urls[1:4] == [f"postgresql+asyncpg://postgres:***@{pg.split('@')[1]}"] * 2 + [
        f"postgresql+asyncpg://{pg.split('://')[1]}"
    ]
    assert urls[4] == f"postgresql+asyncpg://app:***@127.0.0.1:{port}/nowhere"


# -- create-all and drop-all ------------------------------------------------------------------


@pytest.mark.postgresql
@pytest.mark.mysql
async def test_create_all_and_drop_all(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    main, users = await new_database("postgresql"), await new_database("mysql")
    write_module(tmp_path, "config", MODELS.format(main=main, binds={"users": users}))

    run = await cli(tmp_path, "--app", "config", "create-all", "--bind", "users")
    assert run.status == 0, run.err
    assert [line.split(": ok in ")[0] for line in run.lines] == ["bind 'users'"]
    assert (await table_names(main, make_db), await table_names(users, make_db)) == (
        set(),
        {"users"},
    )

    run = await cli(tmp_path, "--app", "config", "create-all")
    assert sorted(line.split(": ok in ")[0] for line in run.lines) == [
        "bind 'users'",
        "the default bind",
    ]
    assert run.lines[0].endswith(("(orders)", "(users)"))
    assert await table_names(main, make_db) == {"orders"}

    refused = await cli(tmp_path, "--app", "config", "drop-all", "--bind", "", stdin="n\n")
    assert refused.status == 1
    assert "Drop every table of the default bind (1 in the models)? [y/N]" in refused.out
    assert "nothing was dropped" in refused.err
    assert await table_names(main, make_db) == {"orders"}

    run = await cli(tmp_path, "--app", "config", "drop-all", "--bind", "", stdin="y\n")
    assert run.status == 0, run.err
    assert run.lines[-1].startswith("the default bind: ok in ")
    assert await table_names(main, make_db) == set()
    assert await table_names(users, make_db) == {"users"}

    run = await cli(tmp_path, "--app", "config", "drop-all", "--bind", "users", "--yes")
    assert run.status == 0 and "[y/N]" not in run.out
    assert await table_names(users, make_db) == set()

    unknown = await cli(tmp_path, "--app", "config", "create-all", "--bind", "nope")
    assert unknown.status == 2 and "'nope'" in unknown.err
    assert "(configured: '', 'users'). Write the default bind as ''." in unknown.err


TYPO = """
    class Visit(db.Model):
        __bind_key__ = "uesrs"  # a typo: no such bind
        __tablename__ = "visits"
        id: Mapped[int] = mapped_column(primary_key=True)
"""


@pytest.mark.sqlite
@pytest.mark.postgresql
async def test_create_all_and_drop_all_refuse_a_model_of_no_configured_bind(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    """As db.create_all() does: over every bind, nothing is created anywhere."""
    main, users = await new_database("sqlite"), await new_database("postgresql")
    write_module(tmp_path, "config", MODELS.format(main=main, binds={"users": users}) + TYPO)
    for command in (["create-all"], ["drop-all", "--yes"]):
        run = await cli(tmp_path, "--app", "config", *command)
        assert (run.status, run.out) == (1, ""), run.err
        error = run.err.strip()
        assert error.startswith("asyncbind: error: UnknownBindError: Bind key 'uesrs' used by ")
        assert "table 'visits' is not configured" in error and "__bind_key__" in error
    assert await table_names(main, make_db) == await table_names(users, make_db) == set()
    # Named one by one, binds may leave out a bind added at run time, as db.create_all() does.
    run = await cli(tmp_path, "--app", "config", "create-all", "--bind", "users")
    assert run.status == 0, run.err
    assert await table_names(users, make_db) == {"users"}


@pytest.mark.sqlite
async def test_create_all_drop_all_and_copy_wait_for_a_silent_bind_at_most_their_timeout(
    tmp_path: Path, new_database: NewDatabase
) -> None:
    """A server that accepts connections and never answers (a socket nobody reads): each command
    waits --timeout seconds (default 5) for the bind's first connection, as check does, then
    says so on one line and exits with status 1, on MySQL (aiomysql waits for ever by itself)
    and PostgreSQL (asyncpg 60 s) alike."""
    main = await new_database("sqlite")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        binds = {
            "users": f"mysql://root:{PASSWORD}@127.0.0.1:{port}/shop",
            "slow": f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/shop",
            "ro": {"url": f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/ro", "read_only": True},
        }
        write_module(tmp_path, "config", MODELS.format(main=main, binds=binds))
        assert (await cli(tmp_path, "--app", "config", "create-all", "--bind", "")).status == 0
        named = ["--bind", "users", "--bind", "slow"]
        for command in (["create-all"], ["drop-all", "--yes"]):
            run = await cli(tmp_path, "--app", "config", *command, *named, "--timeout", "0.5")
            assert run.status == 1, run.err
            assert sorted(run.lines) == [
                "bind 'slow': FAILED: no answer within 0.5 s",
                "bind 'users': FAILED: no answer within 0.5 s",
            ]
        run = await cli(tmp_path, "--app", "config", "create-all", "--bind", "users")
        assert (run.status, run.lines) == (1, ["bind 'users': FAILED: no answer within 5 s"])
        # A read-only bind is refused before anything waits for it.
        run = await cli(tmp_path, "--app", "config", "drop-all", "--bind", "ro", "--yes")
        assert run.status == 1 and len(run.lines) == 1, run.err
        assert run.lines[0].startswith("bind 'ro': FAILED: ReadOnlyBindError: "), run.lines

        run = await cli(
            tmp_path, "--app", "config", "copy", "users:users", ":orders", "--timeout", "0.5"
        )
        assert (run.status, run.out) == (1, "")
        assert run.err.startswith(
            "asyncbind: error: Bind 'users' did not answer within 0.5 s (--timeout), so table "
            "'users' could not be read and nothing was copied."
        )
        assert len(run.err.splitlines()) == 1 and "--timeout" in run.err
        assert_no_password(run)
    for command in ("create-all", "drop-all", "copy"):
        run = await cli(tmp_path, command, "--timeout", "0")
        assert run.status == 2 and "argument --timeout: '0' is not above 0" in run.err


# -- copy -------------------------------------------------------------------------------------

PEOPLE = """
    import sqlalchemy as sa
    from asyncbind import AsyncBind

    db = AsyncBind({main!r}, binds={{"maria": {maria!r}, "pg": {pg!r}}})
    source = db.Table(
        "people",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50)),
        sa.Column("age", sa.Integer),
        sa.Column("nickname", sa.String(50)),
        bind_key="maria",
    )
    lite = db.Table(
        "people",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50)),
        sa.Column("age", sa.Integer),
    )
    target = db.Table(
        "people",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text),
        sa.Column("age", sa.Integer),
        sa.Column("city", sa.Text),
        bind_key="pg",
    )
"""


async def fill(url: str, make_db: MakeDb, rows: int) -> None:
    db = make_db(url)
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.text("INSERT INTO people (id, name, age) VALUES (:id, :name, :age)"),
            [{"id": i, "name": f"p{i}", "age": i % 90} for i in range(1, rows + 1)],
        )


async def target_rows(url: str, make_db: MakeDb) -> list[tuple[int, str, int, None]]:
    db = make_db(url)
    async with db.engine.connect() as conn:
        found = await conn.execute(sa.text("SELECT id, name, age, city FROM people ORDER BY id"))
        return [tuple(row) for row in found]  # type: ignore[misc]


async def people_from_mariadb(tmp_path: Path, new_database: NewDatabase, make_db: MakeDb) -> str:
    """The ``etl`` app of PEOPLE, its tables made, 500 people in MariaDB; the PostgreSQL URL."""
    main, maria = await new_database("sqlite"), await new_database("mysql")
    pg = with_password(await new_database("postgresql"))
    write_module(tmp_path, "etl", PEOPLE.format(main=main, maria=maria, pg=pg))
    assert (await cli(tmp_path, "--app", "etl", "create-all")).status == 0
    await fill(maria, make_db, 500)
    return pg


@pytest.mark.sqlite
@pytest.mark.postgresql
@pytest.mark.mysql
async def test_copy_from_mariadb_to_postgresql_with_where(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    pg = await people_from_mariadb(tmp_path, new_database, make_db)

    run = await cli(
        tmp_path,
        "--app",
        "etl",
        "copy",
        "maria:people",
        "pg:people",
        "--where",
        "age < 30 AND id <= 450",
        "--batch-size",
        "40",
    )
    assert run.status == 0, run.err
    expected = [(i, f"p{i}", i % 90, None) for i in range(1, 451) if i % 90 < 30]
    assert len(expected) == 150
    assert await target_rows(pg, make_db) == expected
    assert len(run.lines) == 1 and run.out.startswith(
        "copied 150 rows from bind 'maria' table 'people' to bind 'pg' table 'people' "
        "in 4 batches, "
    )
    err = run.err.splitlines()
    assert err[0] == "not copied (not in the target): nickname"
    progress = err[1:]
    assert progress[0].startswith("progress: 40 rows, 1 batch, ")
    assert "ETA" not in run.err and "about" not in run.err  # no estimate with --where
    # The first batch's line, then at most one a second, never one per batch here.
    assert 1 <= len(progress) <= 4 and all(line.startswith("progress: ") for line in progress)
    assert_no_password(run)

    # Copying the same rows again breaks the target's primary key: a failure, in one line.
    again = await cli(tmp_path, "--app", "etl", "copy", "maria:people", "pg:people")
    assert again.status == 1
    error = again.err.splitlines()[-1]
    assert error.startswith("asyncbind: error: BulkCopyError: ")
    assert "Traceback" not in again.err

    missing = await cli(tmp_path, "--app", "etl", "copy", "maria:people", "pg:nope")
    assert missing.status == 1 and "Table 'nope' does not exist in bind 'pg'" in missing.err
    malformed = await cli(tmp_path, "--app", "etl", "copy", "maria:people", "pg")
    assert malformed.status == 2 and "':accounts'" in malformed.err


@pytest.mark.sqlite
@pytest.mark.postgresql
@pytest.mark.mysql
async def test_copy_a_whole_table_in_parallel_key_ranges(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    pg = await people_from_mariadb(tmp_path, new_database, make_db)

    mixed = await cli(
        tmp_path, "--app", "etl", "copy", "maria:people", "pg:people", "--where", "id < 9",
        "--parallel", "2",
    )  # fmt: skip
    assert mixed.status == 2 and "cannot be combined with --where" in mixed.err
    assert await target_rows(pg, make_db) == []

    run = await cli(
        tmp_path, "--app", "etl", "copy", "maria:people", "pg:people", "--parallel", "3",
        "--batch-size", "50",
    )  # fmt: skip
    assert run.status == 0, run.err
    assert await target_rows(pg, make_db) == [(i, f"p{i}", i % 90, None) for i in range(1, 501)]
    # Three ranges of about 167 rows, in batches of at most 50: 4 batches each.
    assert run.out.startswith(
        "copied 500 rows from bind 'maria' table 'people' to bind 'pg' table 'people' in 12 "
        "batches, "
    )
    assert run.err.splitlines()[0] == "not copied (not in the target): nickname"
    assert_no_password(run)


@pytest.mark.postgresql
@pytest.mark.mysql
async def test_copy_of_a_mariadb_json_column_into_jsonb(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    """MariaDB's JSON is a LONGTEXT, and is reflected as one: its text is the document, which
    lands in jsonb as an object (not a JSON string), JSON null as null, SQL NULL as NULL."""
    maria, pg = await new_database("mysql"), await new_database("postgresql")
    write_module(
        tmp_path,
        "etl",
        f"""
        from asyncbind import AsyncBind
        db = AsyncBind(binds={{"maria": {maria!r}, "pg": {pg!r}}})
        """,
    )
    async with make_db(maria).engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE docs (id INT PRIMARY KEY, doc JSON)")
        await conn.exec_driver_sql(
            """INSERT INTO docs VALUES (1, '{"a": [1, null]}'), (2, 'null'), (3, NULL)"""
        )
    async with make_db(pg).engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE docs (id int PRIMARY KEY, doc jsonb)")

    run = await cli(tmp_path, "--app", "etl", "copy", "maria:docs", "pg:docs")

    assert run.status == 0, run.err
    async with make_db(pg).engine.connect() as conn:
        found = await conn.exec_driver_sql(
            "SELECT id, doc::text, jsonb_typeof(doc) FROM docs ORDER BY id"
        )
        assert found.all() == [
            (1, '{"a": [1, null]}', "object"),
            (2, "null", "null"),
            (3, None, None),
        ]


@pytest.mark.sqlite
@pytest.mark.postgresql
async def test_copy_from_the_default_bind_shows_the_estimate(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    """SQLite's estimate is count(*): the first progress line says how many rows to expect."""
    main, pg = await new_database("sqlite"), await new_database("postgresql")
    write_module(tmp_path, "etl", PEOPLE.format(main=main, maria=main, pg=pg))
    assert (
        await cli(tmp_path, "--app", "etl", "create-all", "--bind", "", "--bind", "pg")
    ).status == 0
    await fill(main, make_db, 300)
    run = await cli(tmp_path, "--app", "etl", "copy", ":people", "pg:people", "--batch-size", "100")
    assert run.status == 0, run.err
    assert run.err.splitlines()[0].startswith("progress: 100 rows of about 300, 1 batch, ")
    assert len(await target_rows(pg, make_db)) == 300
    assert run.out.startswith("copied 300 rows from the default bind table 'people' to bind 'pg'")


# -- frameworks -------------------------------------------------------------------------------


@pytest.mark.sqlite
@pytest.mark.postgresql
async def test_a_quart_app(tmp_path: Path, new_database: NewDatabase) -> None:
    main, users = await new_database("sqlite"), await new_database("postgresql")
    write_module(
        tmp_path,
        "quartapp",
        f"""
        from quart import Quart
        from asyncbind import AsyncBind

        app = Quart(__name__)
        app.config["SQLALCHEMY_DATABASE_URI"] = {main!r}
        app.config["SQLALCHEMY_BINDS"] = {{"users": {users!r}}}
        database = AsyncBind()
        database.init_app(app)
        """,
    )
    for app in ("quartapp:app", "quartapp"):  # the module alone finds 'app' after 'db'
        run = await cli(tmp_path, "--app", app, "check")
        assert run.status == 0, run.err
        assert run.lines[1].startswith("bind 'users': ok in ")


@pytest.mark.sqlite
async def test_a_starlette_app_and_a_factory(tmp_path: Path, new_database: NewDatabase) -> None:
    main, users = await new_database("sqlite"), await new_database("sqlite")
    write_module(
        tmp_path,
        "starapp",
        f"""
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from asyncbind import AsyncBind
        from asyncbind.integrations.starlette import AsyncBindMiddleware

        def create_app():
            database = AsyncBind({main!r}, binds={{"users": {users!r}}})
            return Starlette(middleware=[Middleware(AsyncBindMiddleware, db=database)])

        application = create_app()
        """,
    )
    for app in ("starapp:application", "starapp:create_app()", "starapp"):
        run = await cli(tmp_path, "--app", app, "check")
        assert run.status == 0, run.err
        assert [line.split(": ok in ")[0] for line in run.lines] == [
            "the default bind",
            "bind 'users'",
        ]


@pytest.mark.sqlite
async def test_demo_runs_twice_in_one_folder(tmp_path: Path) -> None:
    first = await cli(tmp_path, "demo", "--dir", "here")
    second = await cli(tmp_path, "demo", "--dir", "here")
    assert first.status == second.status == 0, first.err + second.err
    assert first.out == second.out and "statements per bind: " in first.out
