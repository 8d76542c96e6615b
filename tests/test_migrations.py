"""Migrations per bind: ``python -m asyncbind db ...`` and plain ``alembic``, run as subprocesses in
a folder holding the app's module, against SQLite, PostgreSQL and MariaDB binds together."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import POSTGRESQL_URL, NewDatabase
from faultproxy import FaultProxy
from test_cli import (
    PACKAGE_ROOT,
    PASSWORD,
    MakeDb,
    Run,
    assert_no_password,
    cli,
    closed_port,
    write_module,
)

from asyncbind import AsyncBind

pytestmark = [pytest.mark.sqlite, pytest.mark.postgresql, pytest.mark.mysql]

MODELS = """
    import sqlalchemy as sa
    from sqlalchemy.orm import Mapped, mapped_column
    from asyncbind import AsyncBind

    db = AsyncBind({main!r}, binds={{"users": {users!r}, "audit": {audit!r}}})

    class Order(db.Model):
        __tablename__ = "orders"
        id: Mapped[int] = mapped_column(primary_key=True)

    class User(db.Model):
        __bind_key__ = "users"
        __tablename__ = "users"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))
        {extra}

    class Event(db.Model):
        __bind_key__ = "audit"
        __tablename__ = "events"
        id: Mapped[int] = mapped_column(primary_key=True)
"""
EMAIL = "email: Mapped[str | None] = mapped_column(sa.String(100))"


async def alembic(folder: Path, *args: str) -> Run:
    """Plain ``python -m alembic *args`` in ``folder``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCBIND_")}
    environ["PYTHONPATH"] = PACKAGE_ROOT
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alembic",
        *args,
        cwd=folder,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


async def db_cmd(folder: Path, *args: str) -> Run:
    return await cli(folder, "--app", "models:db", "db", *args)


async def columns(url: str, make_db: MakeDb) -> dict[str, set[str]]:
    """Each table of ``url``'s database with its columns."""

    def read(sync: sa.Connection) -> dict[str, set[str]]:
        inspector = sa.inspect(sync)
        return {
            table: {column["name"] for column in inspector.get_columns(table)}
            for table in inspector.get_table_names()
        }

    async with make_db(url).engine.connect() as conn:
        return await conn.run_sync(read)


async def versions(url: str, make_db: MakeDb) -> list[str]:
    """The revisions in the version table of ``url``'s database."""
    async with make_db(url).engine.connect() as conn:
        found = await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
        return sorted(found.scalars())


def revisions(folder: Path) -> dict[str, str]:
    """The revision scripts by message (the file name's end)."""
    return {
        path.stem.split("_", 1)[1]: path.read_text()
        for path in (folder / "migrations" / "versions").glob("*.py")
    }


def revision_id(script: str) -> str:
    found = re.search(r"^revision: str = '(\w+)'", script, re.MULTILINE)
    assert found is not None
    return found.group(1)


def function(script: str, name: str) -> str:
    """The body of function ``name`` in a revision script."""
    return script.split(f"def {name}() -> None:", 1)[1].split("\ndef ", 1)[0]


async def three_binds(tmp_path: Path, new_database: NewDatabase) -> dict[str, str]:
    urls = {
        "main": await new_database("sqlite"),
        "users": await new_database("postgresql"),
        "audit": await new_database("mysql"),
    }
    write_module(tmp_path, "models", MODELS.format(extra="", **urls))
    return urls


async def test_init_autogenerate_upgrade_change_downgrade(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    urls = await three_binds(tmp_path, new_database)
    run = await db_cmd(tmp_path, "init")
    assert run.status == 0, run.err
    assert "asyncbind_app = models:db" in (tmp_path / "migrations" / "alembic.ini").read_text()
    assert (tmp_path / "migrations" / "env.py").is_file()

    # Autogenerate compares each bind's models with its own database only.
    run = await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "first")
    assert run.status == 0, run.err
    first = revisions(tmp_path)["first"]
    assert "create_table('orders'" in function(first, "upgrade_default")
    assert "create_table('users'" in function(first, "upgrade_users")
    assert "create_table('events'" in function(first, "upgrade_audit")
    assert "create_table" not in function(first, "upgrade_users").replace(
        "create_table('users'", ""
    )
    rev1 = revision_id(first)

    run = await db_cmd(tmp_path, "upgrade")
    assert run.status == 0, run.err
    assert run.lines == [
        f"the default bind: {rev1} (head)",
        f"bind 'users': {rev1} (head)",
        f"bind 'audit': {rev1} (head)",
    ]
    assert set(await columns(urls["main"], make_db)) == {"orders", "alembic_version"}
    assert set(await columns(urls["users"], make_db)) == {"users", "alembic_version"}
    assert set(await columns(urls["audit"], make_db)) == {"events", "alembic_version"}
    run = await db_cmd(tmp_path, "check")
    assert (run.status, run.out.strip()) == (0, "No new upgrade operations detected."), run.err

    # A model change: check sees it, a second revision adds the column to that bind only.
    write_module(tmp_path, "models", MODELS.format(extra=EMAIL, **urls))
    run = await db_cmd(tmp_path, "check")
    assert run.status == 1
    assert "New upgrade operations detected" in run.err and "email" in run.err
    run = await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "email")
    assert run.status == 0, run.err
    second = revisions(tmp_path)["email"]
    rev2 = revision_id(second)
    assert "add_column" in function(second, "upgrade_users")
    assert "pass" in function(second, "upgrade_default")
    assert "pass" in function(second, "upgrade_audit")
    run = await db_cmd(tmp_path, "upgrade")
    assert run.status == 0, run.err
    assert (await columns(urls["users"], make_db))["users"] == {"id", "name", "email"}
    run = await db_cmd(tmp_path, "check")
    assert run.status == 0, run.err

    run = await db_cmd(tmp_path, "downgrade", "-1")
    assert run.status == 0, run.err
    assert run.lines == [
        f"the default bind: {rev1}",
        f"bind 'users': {rev1}",
        f"bind 'audit': {rev1}",
    ]
    assert (await columns(urls["users"], make_db))["users"] == {"id", "name"}

    # --bind: only that bind moves.
    run = await db_cmd(tmp_path, "upgrade", "--bind", "users")
    assert run.status == 0, run.err
    assert run.lines == [f"bind 'users': {rev2} (head)"]
    run = await db_cmd(tmp_path, "current")
    assert run.lines == [
        f"the default bind: {rev1}",
        f"bind 'users': {rev2} (head)",
        f"bind 'audit': {rev1}",
    ]

    # Plain alembic finds the app through alembic.ini; -x bind= picks binds.
    ini = "migrations/alembic.ini"
    run = await alembic(tmp_path, "-c", ini, "-x", "bind=default", "upgrade", "head")
    assert run.status == 0, run.err
    run = await db_cmd(tmp_path, "current")
    assert run.lines == [
        f"the default bind: {rev2} (head)",
        f"bind 'users': {rev2} (head)",
        f"bind 'audit': {rev1}",
    ]
    run = await alembic(tmp_path, "-c", ini, "upgrade", "head")
    assert run.status == 0, run.err
    run = await db_cmd(tmp_path, "current")
    assert run.lines == [
        f"the default bind: {rev2} (head)",
        f"bind 'users': {rev2} (head)",
        f"bind 'audit': {rev2} (head)",
    ]
    run = await db_cmd(tmp_path, "history")
    assert run.status == 0, run.err
    assert f"{rev1} -> {rev2} (head), email" in run.out
    assert f"<base> -> {rev1}, first" in run.out


async def test_autogenerate_with_no_change_on_any_bind_writes_no_revision(
    tmp_path: Path, new_database: NewDatabase
) -> None:
    """As Flask-Migrate's env.py does; a change on one bind (not the last compared) is written,
    and a revision without --autogenerate is written empty."""
    urls = await three_binds(tmp_path, new_database)
    assert (await db_cmd(tmp_path, "init")).status == 0
    assert (await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "first")).status == 0
    assert (await db_cmd(tmp_path, "upgrade")).status == 0

    ini = "migrations/alembic.ini"
    for run in (
        await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "nothing"),
        await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "nothing", "--bind", "audit"),
        await alembic(tmp_path, "-c", ini, "revision", "--autogenerate", "-m", "nothing"),
    ):
        assert run.status == 0, run.err
        assert "No changes in schema detected." in run.err
        assert "Generating" not in run.out
    assert list(revisions(tmp_path)) == ["first"]
    for run in (await db_cmd(tmp_path, "check"), await alembic(tmp_path, "-c", ini, "check")):
        assert (run.status, run.out.strip()) == (0, "No new upgrade operations detected.")

    run = await db_cmd(tmp_path, "revision", "-m", "empty")
    assert run.status == 0, run.err
    assert "pass" in function(revisions(tmp_path)["empty"], "upgrade_users")
    assert (await db_cmd(tmp_path, "upgrade")).status == 0

    write_module(tmp_path, "models", MODELS.format(extra=EMAIL, **urls))
    run = await alembic(tmp_path, "-c", ini, "revision", "--autogenerate", "-m", "email")
    assert run.status == 0, run.err
    assert "No changes in schema detected." not in run.err
    assert "add_column" in function(revisions(tmp_path)["email"], "upgrade_users")
    assert sorted(revisions(tmp_path)) == ["email", "empty", "first"]


async def test_migrate_is_revision_autogenerate(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    """Flask-Migrate's 'db migrate': the same revision, the same checks, nothing when nothing
    changed."""
    urls = await three_binds(tmp_path, new_database)
    assert (await db_cmd(tmp_path, "init")).status == 0
    run = await db_cmd(tmp_path, "migrate", "-m", "first")
    assert run.status == 0, run.err
    assert re.fullmatch(r"Generating .*_first\.py \.\.\.  done", run.out.strip())
    first = revisions(tmp_path)["first"]
    assert "create_table('orders'" in function(first, "upgrade_default")
    assert "create_table('users'" in function(first, "upgrade_users")
    assert "create_table('events'" in function(first, "upgrade_audit")
    rev1 = revision_id(first)
    assert (await db_cmd(tmp_path, "upgrade")).status == 0

    run = await db_cmd(tmp_path, "migrate", "-m", "nothing")
    assert (run.status, run.out) == (0, ""), run.err
    assert "No changes in schema detected." in run.err
    assert list(revisions(tmp_path)) == ["first"]

    write_module(tmp_path, "models", MODELS.format(extra=EMAIL, **urls))
    run = await db_cmd(tmp_path, "migrate", "-m", "email", "--bind", "users")
    assert run.status == 0, run.err
    email = revisions(tmp_path)["email"]
    assert "add_column" in function(email, "upgrade_users")
    assert "pass" in function(email, "upgrade_default")
    assert f"down_revision: str | Sequence[str] | None = {rev1!r}" in email
    run = await db_cmd(tmp_path, "upgrade")
    assert run.status == 0, run.err
    assert (await columns(urls["users"], make_db))["users"] == {"id", "name", "email"}

    typo = """
    class Visit(db.Model):
        __bind_key__ = "adit"  # a typo: no such bind
        __tablename__ = "visits"
        id: Mapped[int] = mapped_column(primary_key=True)
    """
    write_module(tmp_path, "models", MODELS.format(extra=EMAIL, **urls) + typo)
    run = await db_cmd(tmp_path, "migrate", "-m", "visits")
    assert (run.status, run.out) == (1, ""), run.err
    assert last_error(run).startswith("asyncbind: error: UnknownBindError: Bind key 'adit'")
    assert sorted(revisions(tmp_path)) == ["email", "first"]
    run = await db_cmd(tmp_path, "migrate")
    assert run.status == 2
    assert "the following arguments are required: -m/--message" in run.err


async def test_stamp_sets_each_version_table_without_migrating(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    """Tables made by create-all, then 'db stamp head', as Flask-Migrate users do: each bind's
    version table holds the revision, nothing else is run."""
    urls = await three_binds(tmp_path, new_database)
    assert (await db_cmd(tmp_path, "init")).status == 0
    assert (await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "first")).status == 0
    assert (await db_cmd(tmp_path, "revision", "-m", "second")).status == 0
    rev1 = revision_id(revisions(tmp_path)["first"])
    rev2 = revision_id(revisions(tmp_path)["second"])
    assert (await cli(tmp_path, "--app", "models:db", "create-all")).status == 0

    run = await db_cmd(tmp_path, "stamp", "head")
    assert run.status == 0, run.err
    assert run.lines == [
        f"the default bind: {rev2} (head)",
        f"bind 'users': {rev2} (head)",
        f"bind 'audit': {rev2} (head)",
    ]
    assert "Running stamp_revision  -> " in run.err and "Running upgrade" not in run.err
    for url in urls.values():
        assert await versions(url, make_db) == [rev2]
    run = await db_cmd(tmp_path, "check")
    assert (run.status, run.out.strip()) == (0, "No new upgrade operations detected."), run.err

    run = await db_cmd(tmp_path, "stamp", rev1, "--bind", "users")
    assert (run.status, run.lines) == (0, [f"bind 'users': {rev1}"]), run.err
    assert [await versions(url, make_db) for url in urls.values()] == [[rev2], [rev1], [rev2]]
    run = await db_cmd(tmp_path, "stamp", "base", "--bind", "audit")
    assert (run.status, run.lines) == (0, ["bind 'audit': no revision"]), run.err
    assert await versions(urls["audit"], make_db) == []

    # --sql prints each bind's statements and changes no version table.
    run = await db_cmd(tmp_path, "stamp", "--sql", f"{rev1}:{rev2}")
    assert run.status == 0, run.err
    labels = re.findall(r"^-- .*bind.*$", run.out, flags=re.MULTILINE)
    assert labels[:2] == ["-- the default bind (sqlite)", "-- bind 'users' (postgresql)"]
    assert labels[2] in ("-- bind 'audit' (mysql)", "-- bind 'audit' (mariadb)")
    assert run.out.count(f"UPDATE alembic_version SET version_num='{rev2}'") == 3
    assert "CREATE TABLE" not in run.out
    assert [await versions(url, make_db) for url in urls.values()] == [[rev2], [rev1], []]

    # A version table naming a revision that is gone: stamp refuses, --purge empties it first.
    async with make_db(urls["users"]).engine.begin() as conn:
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = 'gone'"))
    run = await db_cmd(tmp_path, "stamp", "head", "--bind", "users")
    assert (run.status, run.out) == (1, ""), run.err
    assert "Can't locate revision identified by 'gone'" in last_error(run)
    run = await db_cmd(tmp_path, "stamp", "head", "--bind", "users", "--purge")
    assert (run.status, run.lines) == (0, [f"bind 'users': {rev2} (head)"]), run.err
    assert await versions(urls["users"], make_db) == [rev2]
    run = await db_cmd(tmp_path, "stamp", "head", "--sql", "--purge")
    assert (run.status, run.out) == (2, "")
    assert "stamp --purge empties each bind's version table, which --sql cannot do" in run.err
    assert [await versions(url, make_db) for url in urls.values()] == [[rev2], [rev2], []]


async def test_a_failed_stamp_says_what_was_stamped(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    """Each failure of stamp, from asyncbind and from plain alembic, in stamp's own words: what
    was stamped, not migrated, and the fix for stamp; and what each says to do works."""
    urls = await three_binds(tmp_path, new_database)
    assert (await db_cmd(tmp_path, "init")).status == 0
    assert (await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "first")).status == 0
    rev1 = revision_id(revisions(tmp_path)["first"])
    assert (await cli(tmp_path, "--app", "models:db", "create-all")).status == 0
    assert (await db_cmd(tmp_path, "stamp", "head")).status == 0
    ini = "migrations/alembic.ini"

    # The users bind's version table names a revision that no script has.
    async with make_db(urls["users"]).engine.begin() as conn:
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = 'gone'"))
    gone = (
        "CommandError: Can't locate revision identified by 'gone': nothing was "
        "stamped on bind 'users'. The other binds were stamped: the default bind, bind 'audit'. "
        "Name a revision that exists (asyncbind db history lists them, db current shows each "
        "bind's); if it is a bind's version table that names a revision no script has, add "
        "--purge to empty that table first. Then run the command again."
    )
    run = await db_cmd(tmp_path, "stamp", "head")
    assert (run.status, run.out) == (1, "")
    assert last_error(run) == f"asyncbind: error: MigrationError: {gone}"
    run = await alembic(tmp_path, "-c", ini, "stamp", "head")
    assert (run.status, last_error(run)) == (1, f"asyncbind.migrations.MigrationError: {gone}")
    run = await db_cmd(tmp_path, "stamp", "head", "--bind", "users")
    assert run.status == 1
    assert "'gone': nothing was stamped on any bind. Name a revision" in last_error(run)
    run = await db_cmd(tmp_path, "stamp", "head", "--bind", "users", "--purge")
    assert (run.status, run.lines) == (0, [f"bind 'users': {rev1} (head)"]), run.err

    # A table named alembic_version that is not Alembic's.
    async with make_db(urls["users"]).engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE alembic_version"))
        await conn.execute(sa.text("CREATE TABLE alembic_version (id INTEGER)"))
    run = await db_cmd(tmp_path, "stamp", "head")
    assert run.status == 1
    error = last_error(run)
    assert error.startswith("asyncbind: error: MigrationError: Stamping bind 'users' failed (")
    assert "column alembic_version.version_num does not exist" in error
    assert error.endswith(
        "); its transaction was rolled back. The other binds were stamped: the default bind, "
        "bind 'audit'. Fix the cause and run the command again."
    )
    async with make_db(urls["users"]).engine.begin() as conn:
        await conn.execute(sa.text("DROP TABLE alembic_version"))

    # Two heads: 'head' names neither.
    for message in ("left", "right"):
        run = await alembic(
            tmp_path, "-c", ini, "revision", "-m", message, "--head", rev1, "--splice"
        )
        assert run.status == 0, run.err
    heads = sorted(revision_id(revisions(tmp_path)[message]) for message in ("left", "right"))
    run = await db_cmd(tmp_path, "stamp", "head")
    assert (run.status, last_error(run)) == (
        1,
        f"asyncbind: error: MigrationError: The revisions have more than one head "
        f"({', '.join(heads)}), so nothing was stamped on any bind. Name them all ('heads') or "
        "one of them instead of 'head', or merge them (alembic -c migrations/alembic.ini merge "
        "heads -m MESSAGE), then run the command again.",
    )
    run = await db_cmd(tmp_path, "stamp", "heads")
    assert run.status == 0, run.err
    for url in urls.values():
        assert await versions(url, make_db) == heads

    # A bind that cannot be reached.
    down = f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere"
    binds = {"users": urls["users"], "audit": urls["audit"], "down": down}
    write_module(tmp_path, "models", TWO_SQLITE.format(main=urls["main"], binds=binds))
    run = await db_cmd(tmp_path, "stamp", "base")
    assert run.status == 1
    error = last_error(run)
    assert error.startswith("asyncbind: error: MigrationError: BindUnavailableError: Bind 'down'")
    assert error.endswith(
        "Nothing was done on bind 'down'. The other binds were stamped: the default bind, "
        "bind 'users', bind 'audit'."
    )
    assert [await versions(url, make_db) for url in urls.values()] == [[], [], []]
    assert "migrated" not in run.err


async def test_offline_sql_per_bind(tmp_path: Path, new_database: NewDatabase) -> None:
    await three_binds(tmp_path, new_database)
    assert (await db_cmd(tmp_path, "init", "schema")).status == 0
    run = await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "first", "--dir", "schema")
    assert run.status == 0, run.err
    run = await db_cmd(tmp_path, "upgrade", "--sql", "--dir", "schema")
    assert run.status == 0, run.err
    default, users, audit = re.split(r"^-- .*bind.*$", run.out, flags=re.MULTILINE)[1:]
    labels = re.findall(r"^-- .*bind.*$", run.out, flags=re.MULTILINE)
    assert labels[:2] == ["-- the default bind (sqlite)", "-- bind 'users' (postgresql)"]
    assert labels[2] in ("-- bind 'audit' (mysql)", "-- bind 'audit' (mariadb)")
    assert "CREATE TABLE orders" in default and "CREATE TABLE users" not in default
    assert "CREATE TABLE users" in users and "VARCHAR(50)" in users
    assert "CREATE TABLE events" in audit and "CREATE TABLE users" not in audit
    assert all("alembic_version" in sql for sql in (default, users, audit))

    (script,) = (tmp_path / "schema" / "versions").glob("*.py")
    rev1 = revision_id(script.read_text())
    run = await db_cmd(tmp_path, "downgrade", "--sql", f"{rev1}:base", "--dir", "schema")
    assert run.status == 0, run.err
    labels = re.findall(r"^-- .*bind.*$", run.out, flags=re.MULTILINE)
    assert labels[:2] == ["-- the default bind (sqlite)", "-- bind 'users' (postgresql)"]
    default, users, audit = re.split(r"^-- .*bind.*$", run.out, flags=re.MULTILINE)[1:]
    assert "DROP TABLE orders" in default and "DROP TABLE users" not in default
    assert "DROP TABLE users" in users and "DROP TABLE events" in audit


async def test_one_bind_failing_leaves_the_others_upgraded(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    urls = await three_binds(tmp_path, new_database)
    assert (await db_cmd(tmp_path, "init")).status == 0
    assert (await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "first")).status == 0
    assert (await db_cmd(tmp_path, "upgrade")).status == 0
    run = await db_cmd(tmp_path, "revision", "-m", "broken")
    assert run.status == 0, run.err
    path = next((tmp_path / "migrations" / "versions").glob("*_broken.py"))
    script = path.read_text()
    rev1, rev2 = revision_id(revisions(tmp_path)["first"]), revision_id(script)
    for name, table in (("default", "orders"), ("audit", "events")):
        script = script.replace(
            f"def upgrade_{name}() -> None:\n    pass",
            f"def upgrade_{name}() -> None:\n"
            f"    op.add_column({table!r}, sa.Column('note', sa.String(20)))",
        )
    script = script.replace(
        "def upgrade_users() -> None:\n    pass",
        "def upgrade_users() -> None:\n"
        "    op.add_column('users', sa.Column('note', sa.String(20)))\n"
        "    raise RuntimeError('users cannot take it')",
    )
    path.write_text(script)

    run = await db_cmd(tmp_path, "upgrade")
    assert run.status == 1
    error = run.err.strip().splitlines()[-1]
    assert error.startswith("asyncbind: error: MigrationError: Migrating bind 'users' failed")
    assert "users cannot take it" in error
    assert "The other binds were migrated: the default bind, bind 'audit'" in error
    run = await db_cmd(tmp_path, "current")
    assert run.lines == [
        f"the default bind: {rev2} (head)",
        f"bind 'users': {rev1}",
        f"bind 'audit': {rev2} (head)",
    ]
    assert "note" in (await columns(urls["main"], make_db))["orders"]
    assert "note" in (await columns(urls["audit"], make_db))["events"]
    # PostgreSQL rolled the failed bind's DDL back with its transaction.
    assert (await columns(urls["users"], make_db))["users"] == {"id", "name"}


async def test_autogenerate_never_drops_a_table_of_another_bind(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    urls = await three_binds(tmp_path, new_database)
    assert (await db_cmd(tmp_path, "init")).status == 0
    assert (await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "first")).status == 0
    assert (await db_cmd(tmp_path, "upgrade")).status == 0
    # The users database also holds a table named like the audit bind's, and one of no bind.
    async with make_db(urls["users"]).engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE events (id INTEGER PRIMARY KEY)"))
        await conn.execute(sa.text("CREATE TABLE stray (id INTEGER PRIMARY KEY)"))
    run = await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "second")
    assert run.status == 0, run.err
    second = revisions(tmp_path)["second"]
    assert "drop_table('stray')" in function(second, "upgrade_users")
    assert "events" not in function(second, "upgrade_users")
    assert "pass" in function(second, "upgrade_default")
    assert "pass" in function(second, "upgrade_audit")


SCHEMAS = """
    from sqlalchemy.orm import Mapped, mapped_column
    from asyncbind import AsyncBind

    db = AsyncBind({main!r}, binds={{"shop": {shop!r}, "audit": {audit!r}}})

    class Note(db.Model):
        __tablename__ = "notes"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Order(db.Model):
        __bind_key__ = "shop"
        __tablename__ = "orders"
        __table_args__ = {{"schema": "sales"}}
        id: Mapped[int] = mapped_column(primary_key=True)

    class Customer(db.Model):
        __bind_key__ = "shop"
        __tablename__ = "customers"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Event(db.Model):
        __bind_key__ = "audit"
        __tablename__ = "events"
        id: Mapped[int] = mapped_column(primary_key=True)
"""


async def test_autogenerate_compares_the_schemas_the_models_use_and_no_other(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    """A model in PostgreSQL schema 'sales' is created once, then found; the tables of a schema
    no model uses (on MariaDB: of another database of the server) are never proposed for
    dropping."""
    main, shop, audit = [await new_database(b) for b in ("sqlite", "postgresql", "mysql")]
    async with make_db(shop).engine.begin() as conn:
        await conn.execute(sa.text("CREATE SCHEMA sales"))
        await conn.execute(sa.text("CREATE SCHEMA legacy"))
        await conn.execute(sa.text("CREATE TABLE legacy.old_orders (id INTEGER PRIMARY KEY)"))
    elsewhere = await new_database("mysql")  # another database of the MariaDB server
    async with make_db(elsewhere).engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE stray (id INTEGER PRIMARY KEY)"))
    write_module(tmp_path, "models", SCHEMAS.format(main=main, shop=shop, audit=audit))
    assert (await db_cmd(tmp_path, "init")).status == 0

    run = await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "first")
    assert run.status == 0, run.err
    first = revisions(tmp_path)["first"]
    upgrade_shop = function(first, "upgrade_shop")
    assert "create_table('orders'" in upgrade_shop and "schema='sales'" in upgrade_shop
    assert "create_table('customers'" in upgrade_shop
    assert "old_orders" not in first and "stray" not in first
    for name in ("default", "shop", "audit"):
        assert "drop_table" not in function(first, f"upgrade_{name}")

    run = await db_cmd(tmp_path, "upgrade")
    assert run.status == 0, run.err
    async with make_db(shop).engine.connect() as conn:
        sales = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names("sales"))
    assert sales == ["orders"]
    run = await db_cmd(tmp_path, "check")
    assert (run.status, run.out.strip()) == (0, "No new upgrade operations detected."), run.err
    run = await alembic(tmp_path, "-c", "migrations/alembic.ini", "check")
    assert run.status == 0, run.err
    assert "legacy" not in run.err and "stray" not in run.err


async def test_check_and_autogenerate_refuse_a_model_of_no_configured_bind(
    tmp_path: Path, new_database: NewDatabase
) -> None:
    """Its table would be compared with no database: check would pass, and no revision would
    ever create it."""
    urls = await three_binds(tmp_path, new_database)
    assert (await db_cmd(tmp_path, "init")).status == 0
    assert (await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "first")).status == 0
    assert (await db_cmd(tmp_path, "upgrade")).status == 0
    typo = """
    class Visit(db.Model):
        __bind_key__ = "adit"  # a typo: no such bind
        __tablename__ = "visits"
        id: Mapped[int] = mapped_column(primary_key=True)
    """
    write_module(tmp_path, "models", MODELS.format(extra="", **urls) + typo)
    for command in (["check"], ["revision", "--autogenerate", "-m", "second"]):
        run = await db_cmd(tmp_path, *command)
        assert (run.status, run.out) == (1, ""), run.err
        error = run.err.strip().splitlines()[-1]
        assert error.startswith("asyncbind: error: UnknownBindError: Bind key 'adit' used by ")
        assert "table 'visits' is not configured" in error
    ini = "migrations/alembic.ini"
    for command in (["check"], ["revision", "--autogenerate", "-m", "second"]):
        run = await alembic(tmp_path, "-c", ini, *command)  # plain Alembic, through env.py
        assert run.status == 1, run.err
        error = run.err.strip().splitlines()[-1]
        assert error.startswith("asyncbind.exceptions.UnknownBindError: Bind key 'adit' used by ")
    assert list(revisions(tmp_path)) == ["first"]
    run = await db_cmd(tmp_path, "check", "--bind", "users")  # the binds named are compared
    assert run.status == 0, run.err
    run = await alembic(tmp_path, "-c", ini, "-x", "bind=users", "check")
    assert run.status == 0, run.err
    run = await alembic(tmp_path, "-c", ini, "upgrade", "head")  # upgrades compare nothing
    assert run.status == 0, run.err


async def test_read_only_binds_are_skipped_unless_named(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    main, reports = await new_database("sqlite"), await new_database("postgresql")
    write_module(
        tmp_path,
        "models",
        f"""
        from sqlalchemy.orm import Mapped, mapped_column
        from asyncbind import AsyncBind

        db = AsyncBind({main!r}, binds={{"reports": {{"url": {reports!r}, "read_only": True}}}})

        class Order(db.Model):
            __tablename__ = "orders"
            id: Mapped[int] = mapped_column(primary_key=True)
        """,
    )
    assert (await db_cmd(tmp_path, "init")).status == 0
    for command in (["revision", "--autogenerate", "-m", "first"], ["upgrade"], ["check"]):
        run = await db_cmd(tmp_path, *command)
        assert run.status == 0, run.err
        assert "Skipping bind 'reports': it is read-only" in run.err
    rev1 = revision_id(revisions(tmp_path)["first"])
    assert "def upgrade_reports" not in revisions(tmp_path)["first"]
    run = await db_cmd(tmp_path, "current")
    assert run.lines == [f"the default bind: {rev1} (head)", "bind 'reports': skipped (read-only)"]
    assert set(await columns(reports, make_db)) == set()  # no version table made there

    for command in ("current", "upgrade", "check"):
        run = await db_cmd(tmp_path, command, "--bind", "reports")
        assert run.status == 2
        assert "Bind 'reports' is read-only (read_only=True)" in run.err
        assert "Leave it out of --bind" in run.err


TWO_SQLITE = """
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
"""


def last_error(run: Run) -> str:
    return run.err.strip().splitlines()[-1]


async def test_autogenerate_on_a_bind_behind_says_to_upgrade_it(
    tmp_path: Path, new_database: NewDatabase
) -> None:
    main, users = await new_database("sqlite"), await new_database("sqlite")
    write_module(tmp_path, "models", TWO_SQLITE.format(main=main, binds={"users": users}))
    assert (await db_cmd(tmp_path, "init")).status == 0
    assert (await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "first")).status == 0
    assert (await db_cmd(tmp_path, "upgrade", "--bind", "users")).status == 0
    for command in (["revision", "--autogenerate", "-m", "second"], ["check"]):
        run = await db_cmd(tmp_path, *command)
        assert run.status == 1
        error = last_error(run)
        assert "the default bind is behind (CommandError: Target database is not up to" in error
        assert "Upgrade first (asyncbind db upgrade --bind ''), then run" in error
        assert "migrated" not in error and "Fix the revision" not in error
    assert list(revisions(tmp_path)) == ["first"]


async def test_several_heads_say_to_merge_them(tmp_path: Path, new_database: NewDatabase) -> None:
    main, users = await new_database("sqlite"), await new_database("sqlite")
    write_module(tmp_path, "models", TWO_SQLITE.format(main=main, binds={"users": users}))
    assert (await db_cmd(tmp_path, "init")).status == 0
    assert (await db_cmd(tmp_path, "revision", "-m", "first")).status == 0
    rev1 = revision_id(revisions(tmp_path)["first"])
    ini = "migrations/alembic.ini"
    for message in ("left", "right"):
        run = await alembic(
            tmp_path, "-c", ini, "revision", "-m", message, "--head", rev1, "--splice"
        )
        assert run.status == 0, run.err
    heads = sorted(revision_id(revisions(tmp_path)[message]) for message in ("left", "right"))

    run = await db_cmd(tmp_path, "upgrade")
    assert run.status == 1
    error = last_error(run)
    assert f"The revisions have more than one head ({', '.join(heads)})" in error
    assert "nothing was migrated on any bind" in error
    assert "Merge them (alembic -c migrations/alembic.ini merge heads -m MESSAGE)" in error
    assert "Fix the revision" not in error

    # What it says to do works.
    assert (await alembic(tmp_path, "-c", ini, "merge", "heads", "-m", "merge")).status == 0
    run = await db_cmd(tmp_path, "upgrade")
    assert run.status == 0, run.err

    run = await db_cmd(tmp_path, "upgrade", "nosuch")
    assert run.status == 1
    error = last_error(run)
    assert "Can't locate revision identified by 'nosuch': nothing was migrated on any" in error
    assert "Name a revision that exists" in error


async def test_heads_and_merge(tmp_path: Path, new_database: NewDatabase, make_db: MakeDb) -> None:
    """Flask-Migrate's 'db heads' and 'db merge heads': the merge revision has each bind's
    functions, and every bind upgrades through it."""
    urls = await three_binds(tmp_path, new_database)
    assert (await db_cmd(tmp_path, "init")).status == 0
    run = await db_cmd(tmp_path, "heads")
    assert (run.status, run.out) == (0, ""), run.err
    assert (await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "first")).status == 0
    rev1 = revision_id(revisions(tmp_path)["first"])
    run = await db_cmd(tmp_path, "heads")
    assert (run.status, run.lines) == (0, [f"{rev1} (head)"]), run.err
    ini = "migrations/alembic.ini"
    for message in ("left", "right"):
        run = await alembic(
            tmp_path, "-c", ini, "revision", "-m", message, "--head", rev1, "--splice"
        )
        assert run.status == 0, run.err
    left, right = (revision_id(revisions(tmp_path)[message]) for message in ("left", "right"))
    run = await db_cmd(tmp_path, "heads")
    assert run.status == 0, run.err
    assert sorted(run.lines) == sorted([f"{left} (head)", f"{right} (head)"])
    assert "Running on" not in run.err  # no bind was touched

    run = await db_cmd(tmp_path, "merge", "heads", "nosuch", "-m", "merge")
    assert (run.status, run.out) == (1, "")
    assert "Can't locate revision identified by 'nosuch'" in last_error(run)
    assert sorted(revisions(tmp_path)) == ["first", "left", "right"]

    run = await db_cmd(tmp_path, "merge", "heads", "-m", "merge")
    assert run.status == 0, run.err
    assert re.fullmatch(r"Generating .*_merge\.py \.\.\.  done", run.out.strip())
    merge = revisions(tmp_path)["merge"]
    merged = re.search(r"^down_revision: .* = \((.*)\)$", merge, re.MULTILINE)
    assert merged is not None
    assert sorted(merged.group(1).replace("'", "").split(", ")) == sorted([left, right])
    for name in ("default", "users", "audit"):
        assert "pass" in function(merge, f"upgrade_{name}")
    rev = revision_id(merge)
    run = await db_cmd(tmp_path, "heads")
    assert (run.status, run.lines) == (0, [f"{rev} (head)"]), run.err

    run = await db_cmd(tmp_path, "upgrade")
    assert run.status == 0, run.err
    assert run.lines == [
        f"the default bind: {rev} (head)",
        f"bind 'users': {rev} (head)",
        f"bind 'audit': {rev} (head)",
    ]
    for url in urls.values():
        assert await versions(url, make_db) == [rev]


async def test_show_a_revision_and_each_binds(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    """'db show REV' reads the script; 'db show current' reads each bind's version table."""
    urls = await three_binds(tmp_path, new_database)
    assert (await db_cmd(tmp_path, "init")).status == 0
    assert (await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "first")).status == 0
    assert (await db_cmd(tmp_path, "revision", "-m", "second")).status == 0
    rev1 = revision_id(revisions(tmp_path)["first"])
    rev2 = revision_id(revisions(tmp_path)["second"])

    run = await db_cmd(tmp_path, "show", "head")
    assert run.status == 0, run.err
    assert run.lines[:3] == [f"Rev: {rev2} (head)", f"Parent: {rev1}", run.lines[2]]
    assert re.fullmatch(rf"Path: .*/migrations/versions/{rev2}_second\.py", run.lines[2])
    assert "    second" in run.lines and f"    Revision ID: {rev2}" in run.lines
    assert "Running on" not in run.err
    run = await db_cmd(tmp_path, "show", rev1)
    assert (run.status, run.lines[:2]) == (0, [f"Rev: {rev1}", "Parent: <base>"]), run.err

    run = await db_cmd(tmp_path, "show", "nosuch")
    assert (run.status, run.out) == (1, "")
    assert last_error(run) == (
        "asyncbind: error: CommandError: Can't locate revision identified by 'nosuch'"
    )

    assert (await db_cmd(tmp_path, "upgrade", rev1)).status == 0
    assert (await db_cmd(tmp_path, "upgrade", "--bind", "users")).status == 0
    assert [await versions(url, make_db) for url in urls.values()] == [[rev1], [rev2], [rev1]]
    run = await db_cmd(tmp_path, "show", "current")
    assert run.status == 0, run.err
    shown = [line for line in run.lines if line.startswith("Rev: ")]
    assert shown == [f"Rev: {rev1}", f"Rev: {rev2} (head)", f"Rev: {rev1}"]
    run = await db_cmd(tmp_path, "show", "current", "--bind", "users")
    assert run.status == 0, run.err
    assert [line for line in run.lines if line.startswith("Rev: ")] == [f"Rev: {rev2} (head)"]


async def test_an_unreachable_bind_is_named_and_left_alone(
    tmp_path: Path, new_database: NewDatabase
) -> None:
    main, users = await new_database("sqlite"), await new_database("sqlite")
    down = f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere"
    write_module(
        tmp_path, "models", TWO_SQLITE.format(main=main, binds={"users": users, "down": down})
    )
    assert (await db_cmd(tmp_path, "init")).status == 0
    assert (await db_cmd(tmp_path, "revision", "-m", "first")).status == 0
    run = await db_cmd(tmp_path, "upgrade")
    assert run.status == 1
    error = last_error(run)
    assert "BindUnavailableError: Bind 'down' is unavailable (" in error
    assert error.endswith(
        "Nothing was done on bind 'down'. The other binds were migrated: the default bind, "
        "bind 'users'."
    )
    run = await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "second")
    assert run.status == 1
    error = last_error(run)
    assert "BindUnavailableError: Bind 'down' is unavailable (" in error
    assert error.endswith("Nothing was done on bind 'down'.")


async def test_current_shows_each_bind_it_can_read_and_why_not_the_others(
    tmp_path: Path, new_database: NewDatabase
) -> None:
    """As check does: a line per bind, the unreachable one's saying why, then exit status 1."""
    main, users, audit = [await new_database(b) for b in ("sqlite", "postgresql", "mysql")]
    down = f"postgresql://app:{PASSWORD}@127.0.0.1:{closed_port()}/nowhere"
    binds = {"down": down, "users": users, "audit": audit}
    write_module(tmp_path, "models", TWO_SQLITE.format(main=main, binds=binds))
    assert (await db_cmd(tmp_path, "init")).status == 0
    assert (await db_cmd(tmp_path, "revision", "-m", "first")).status == 0
    rev1 = revision_id(revisions(tmp_path)["first"])
    assert (await db_cmd(tmp_path, "upgrade")).status == 1  # all but 'down'

    run = await db_cmd(tmp_path, "current")
    assert run.status == 1
    default, failed, *others = run.lines
    assert [default, *others] == [
        f"the default bind: {rev1} (head)",
        f"bind 'users': {rev1} (head)",
        f"bind 'audit': {rev1} (head)",
    ]
    assert failed.startswith(
        "bind 'down': FAILED: could not read its revision: BindUnavailableError: Bind 'down' is "
        "unavailable ("
    )
    assert "Traceback" not in run.err
    assert_no_password(run)
    run = await db_cmd(tmp_path, "current", "--bind", "users")
    assert (run.status, run.lines) == (0, [f"bind 'users': {rev1} (head)"])


async def test_current_waits_for_each_bind_at_most_its_timeout(
    tmp_path: Path, new_database: NewDatabase
) -> None:
    """As check and show do: --timeout S (default 5) per bind, read concurrently; a bind that
    does not answer in time gets a line saying so, the others are still read, exit status 1."""
    main, users, audit = [await new_database(b) for b in ("sqlite", "postgresql", "mysql")]
    hung_database = sa.make_url(await new_database("postgresql")).database
    base = POSTGRESQL_URL
    async with FaultProxy(base.host or "127.0.0.1", base.port or 0) as proxy:
        hung = proxy.url_for(base).set(drivername="postgresql", database=hung_database)
        binds = {
            "users": users,
            "audit": audit,
            "hung": {"url": hung.render_as_string(hide_password=False), "connect_timeout": 300},
        }
        write_module(tmp_path, "models", TWO_SQLITE.format(main=main, binds=binds))
        assert (await db_cmd(tmp_path, "init")).status == 0
        assert (await db_cmd(tmp_path, "revision", "-m", "first")).status == 0
        rev1 = revision_id(revisions(tmp_path)["first"])
        assert (await db_cmd(tmp_path, "upgrade")).status == 0

        await proxy.set_mode("blackhole")
        expected = [
            f"the default bind: {rev1} (head)",
            f"bind 'users': {rev1} (head)",
            f"bind 'audit': {rev1} (head)",
        ]
        for options, limit in ((["--timeout", "0.5"], "0.5"), ([], "5")):
            run = await db_cmd(tmp_path, "current", *options)
            assert (run.status, run.lines) == (
                1,
                [
                    *expected,
                    f"bind 'hung': FAILED: could not read its revision: no answer within {limit} s",
                ],
            ), run.err
            assert "Traceback" not in run.err
        run = await db_cmd(tmp_path, "current", "--bind", "users", "--timeout", "0.5")
        assert (run.status, run.lines) == (0, [f"bind 'users': {rev1} (head)"]), run.err

        await proxy.set_mode("pass")
        run = await db_cmd(tmp_path, "current", "--timeout", "30")
        assert (run.status, run.lines) == (0, [*expected, f"bind 'hung': {rev1} (head)"]), run.err
    for bad in ("0", "-1", "soon"):
        run = await db_cmd(tmp_path, "current", "--timeout", bad)
        assert (run.status, run.out) == (2, "")
        assert "argument --timeout: " in run.err


DIALECTS = """
    import sqlalchemy as sa
    from sqlalchemy.dialects import mysql, postgresql
    from sqlalchemy.orm import Mapped, mapped_column
    from asyncbind import AsyncBind

    db = AsyncBind({main!r}, binds={binds!r})
    CHANGED = {changed}

    class Note(db.Model):  # SQLite: changing a column takes batch mode
        __bind_key__ = {lite!r}
        __tablename__ = "notes"
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str | None] = mapped_column(sa.String(20), nullable=CHANGED)

    class Doc(db.Model):  # PostgreSQL: a type of its own dialect
        __bind_key__ = {pg!r}
        __tablename__ = "docs"
        id: Mapped[int] = mapped_column(primary_key=True)
        if CHANGED:
            data: Mapped[dict | None] = mapped_column(postgresql.JSONB)

    class Hit(db.Model):
        __bind_key__ = "maria"
        __tablename__ = "hits"
        id: Mapped[int] = mapped_column(primary_key=True)
        if CHANGED:
            count: Mapped[int | None] = mapped_column(mysql.MEDIUMINT)
"""


@pytest.mark.parametrize("first", ["sqlite", "postgresql"], ids=["sqlite-first", "pg-first"])
async def test_each_bind_is_rendered_in_its_own_dialect(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb, first: str
) -> None:
    """Alembic renders a whole revision with the settings of the last bind it compared; each
    bind's functions here are rendered with its own: batch mode for SQLite, PostgreSQL's types."""
    lite, pg, maria = [await new_database(b) for b in ("sqlite", "postgresql", "mysql")]
    if first == "sqlite":
        main, binds, keys = lite, {"pg": pg, "maria": maria}, {"lite": None, "pg": "pg"}
    else:
        main, binds, keys = pg, {"lite": lite, "maria": maria}, {"lite": "lite", "pg": None}
    names = {what: key or "default" for what, key in keys.items()}

    def models(changed: bool) -> str:
        return DIALECTS.format(main=main, binds=binds, changed=changed, **keys)

    write_module(tmp_path, "models", models(changed=False))
    assert (await db_cmd(tmp_path, "init")).status == 0
    assert (await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "first")).status == 0
    assert (await db_cmd(tmp_path, "upgrade")).status == 0

    write_module(tmp_path, "models", models(changed=True))
    run = await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "second")
    assert run.status == 0, run.err
    second = revisions(tmp_path)["second"]
    assert "batch_alter_table('notes'" in function(second, f"upgrade_{names['lite']}")
    assert "postgresql.JSONB(astext_type=sa.Text())" in function(second, f"upgrade_{names['pg']}")
    assert "op.add_column('docs'" in function(second, f"upgrade_{names['pg']}")
    assert "op.add_column('hits'" in function(second, "upgrade_maria")
    assert "batch_op" not in function(second, "upgrade_maria")

    run = await db_cmd(tmp_path, "upgrade")
    assert run.status == 0, run.err
    assert all(line.endswith("(head)") for line in run.lines)
    assert await nullable(lite, "notes", make_db) == {"id": False, "body": True}
    assert "data" in (await columns(pg, make_db))["docs"]
    assert "count" in (await columns(maria, make_db))["hits"]
    assert (await db_cmd(tmp_path, "check")).status == 0

    run = await db_cmd(tmp_path, "downgrade", "-1")
    assert run.status == 0, run.err
    assert await nullable(lite, "notes", make_db) == {"id": False, "body": False}
    assert (await columns(pg, make_db))["docs"] == {"id"}
    assert (await columns(maria, make_db))["hits"] == {"id"}


async def nullable(url: str, table: str, make_db: MakeDb) -> dict[str, bool]:
    """Whether each column of ``table`` is nullable."""

    def read(sync: sa.Connection) -> dict[str, bool]:
        return {c["name"]: c["nullable"] for c in sa.inspect(sync).get_columns(table)}

    async with make_db(url).engine.connect() as conn:
        return await conn.run_sync(read)


async def test_usage_errors(tmp_path: Path, new_database: NewDatabase) -> None:
    main = await new_database("sqlite")
    write_module(tmp_path, "models", f"from asyncbind import AsyncBind\ndb = AsyncBind({main!r})\n")
    run = await db_cmd(tmp_path, "upgrade")
    assert run.status == 2
    assert "alembic.ini' does not exist. Write the migrations folder first" in run.err
    assert (await db_cmd(tmp_path, "init")).status == 0
    run = await db_cmd(tmp_path, "init")
    assert run.status == 2
    assert "Folder 'migrations' exists and is not empty" in run.err
    run = await db_cmd(tmp_path, "current", "--bind", "nope")
    assert run.status == 2
    assert "--bind names bind(s) 'nope', which are not configured" in run.err
    write_module(
        tmp_path,
        "models",
        f"from asyncbind import AsyncBind\ndb = AsyncBind({main!r}, binds={{'my-bind': {main!r}}})\n",
    )
    run = await db_cmd(tmp_path, "current")
    assert run.status == 2
    assert "Bind key 'my-bind' cannot name functions of a revision script" in run.err
    assert "name the binds to migrate with --bind" in run.err
    # Only the binds a command runs on need such keys.
    for command in (["current"], ["upgrade"], ["revision", "-m", "first"]):
        run = await db_cmd(tmp_path, *command, "--bind", "")
        assert run.status == 0, run.err
    assert "upgrade_my" not in revisions(tmp_path)["first"]
    run = await alembic(tmp_path, "-c", "migrations/alembic.ini", "-x", "bind=default", "current")
    assert run.status == 0, run.err
    # Commands that read the revisions only, not the binds, take any keys.
    first = revision_id(revisions(tmp_path)["first"])
    for command in (["heads"], ["history"], ["show", first]):
        run = await db_cmd(tmp_path, *command)
        assert run.status == 0, run.err
        assert first in run.out, command


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait for ``condition`` to hold, failing after a generous guard (a test that hangs)."""
    async with asyncio.timeout(60):
        while not await condition():  # noqa: ASYNC110 (polls the server and a file)
            await asyncio.sleep(0.05)
    assert await condition(), what


async def someone_waits_for_a_lock(db: AsyncBind, database: str) -> bool:
    """Whether a session of ``database`` waits for a lock (a row's, an advisory or user lock)."""
    if db.engine.dialect.name == "postgresql":
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = :database"
            " AND wait_event_type IN ('Lock', 'Advisory')"
        )
    else:
        query = (
            "SELECT count(*) FROM information_schema.processlist p WHERE p.db = :database"
            " AND (p.state = 'User lock' OR p.id IN"
            " (SELECT trx_mysql_thread_id FROM information_schema.innodb_trx"
            " WHERE trx_state = 'LOCK WAIT'))"
        )
    async with db.engine.connect() as conn:
        return bool(await conn.scalar(sa.text(query), {"database": database}))


@pytest.mark.postgresql
async def test_the_migration_lock_is_not_taken_behind_pgbouncer(
    new_database: NewDatabase, make_db: MakeDb
) -> None:
    """A session's advisory lock taken through PgBouncer's transaction pooling would stay on a
    server connection the next transaction does not get: a bind marked pgbouncer takes none."""
    from asyncbind.migrations import _migration_lock

    url = await new_database("postgresql")
    db = make_db(url, binds={"pooled": {"url": url, "pgbouncer": True}})
    held = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = :pid")
    for key, expected in ((None, 1), ("pooled", 0)):
        async with db.engines[key].connect() as conn, _migration_lock(conn):
            pid = await conn.scalar(sa.text("SELECT pg_backend_pid()"))
            assert await conn.scalar(held, {"pid": pid}) == expected, key
            await conn.rollback()


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
async def test_two_upgrades_at_once_take_turns(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb, backend: str
) -> None:
    """Two processes upgrading one database (two app instances starting): the second waits for
    the first's migration, then finds the database at head; the data migration ran once."""
    url = await new_database(backend)
    write_module(tmp_path, "models", f"from asyncbind import AsyncBind\ndb = AsyncBind({url!r})\n")
    assert (await db_cmd(tmp_path, "init")).status == 0
    for message, body in (
        (
            "first",
            "op.create_table('events', sa.Column('id', sa.Integer, primary_key=True),"
            " sa.Column('kind', sa.String(20)))\n"
            "    op.execute(\"INSERT INTO events (id, kind) VALUES (1, 'seed')\")",
        ),
        (
            "second",
            "op.execute(\"UPDATE events SET kind = CONCAT(kind, '+')\")\n"
            "    Path('updated').touch()\n"
            "    for _ in range(1200):  # the test says go; a guard against hanging\n"
            "        if Path('go').exists():\n"
            "            break\n"
            "        time.sleep(0.05)\n"
            "    op.create_index('ix_events_kind', 'events', ['kind'])",
        ),
    ):
        assert (await db_cmd(tmp_path, "revision", "-m", message)).status == 0
        path = next((tmp_path / "migrations" / "versions").glob(f"*_{message}.py"))
        script = "import time\nfrom pathlib import Path\n" + path.read_text()
        path.write_text(
            script.replace(
                "def upgrade_default() -> None:\n    pass",
                f"def upgrade_default() -> None:\n    {body}",
            )
        )
        if message == "first":
            assert (await db_cmd(tmp_path, "upgrade")).status == 0

    db = make_db(url)
    database = sa.make_url(url).database or ""
    first = asyncio.create_task(db_cmd(tmp_path, "upgrade"))
    await until(lambda: asyncio.sleep(0, (tmp_path / "updated").exists()), "the first updated")
    second = asyncio.create_task(db_cmd(tmp_path, "upgrade"))
    await until(lambda: someone_waits_for_a_lock(db, database), "the second waits")
    (tmp_path / "go").touch()
    runs = [await first, await second]
    assert [run.status for run in runs] == [0, 0], [run.err for run in runs]
    async with db.engine.connect() as conn:
        assert list(await conn.scalars(sa.text("SELECT kind FROM events"))) == ["seed+"]


async def test_env_py_passes_options_to_each_binds_context(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    """include_object= from env.py keeps a table that the app does not model (an extension's)
    out of autogenerate and check, with asyncbind's own filter still at work."""
    urls = await three_binds(tmp_path, new_database)
    async with make_db(urls["users"]).engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE spatial_ref_sys (srid integer PRIMARY KEY)"))
    assert (await db_cmd(tmp_path, "init")).status == 0
    env = tmp_path / "migrations" / "env.py"
    env.write_text(
        env.read_text().replace(
            "run_migrations(context.config)",
            "run_migrations(\n"
            "    context.config,\n"
            "    include_object=lambda obj, name, type_, reflected, compare_to: (\n"
            "        name != 'spatial_ref_sys'\n"
            "    ),\n"
            "    compare_server_default=True,\n"
            ")",
        )
    )
    run = await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "first")
    assert run.status == 0, run.err
    script = revisions(tmp_path)["first"]
    assert "spatial_ref_sys" not in script
    assert "op.create_table('users'" in function(script, "upgrade_users")
    assert "op.create_table('events'" in function(script, "upgrade_audit")
    assert (await db_cmd(tmp_path, "upgrade")).status == 0
    run = await db_cmd(tmp_path, "check")
    assert run.status == 0, run.err
    assert "spatial_ref_sys" in (await columns(urls["users"], make_db))

    env.write_text(env.read_text().replace("compare_server_default=True", "version_table='v'"))
    run = await db_cmd(tmp_path, "check")
    assert run.status == 2
    assert "run_migrations() was given 'version_table', which asyncbind sets" in run.err


async def test_a_version_table_naming_a_revision_no_script_has_says_so(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    urls = await three_binds(tmp_path, new_database)
    assert (await db_cmd(tmp_path, "init")).status == 0
    assert (await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "first")).status == 0
    assert (await db_cmd(tmp_path, "upgrade")).status == 0
    rev1 = revision_id(revisions(tmp_path)["first"])
    async with make_db(urls["audit"]).engine.begin() as conn:
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = 'gone1234'"))

    run = await db_cmd(tmp_path, "current")
    assert run.status == 0
    assert "bind 'audit': gone1234 (no revision script has it)" in run.lines
    assert "names revision 'gone1234', which no revision script has" in run.err
    for command, done in (("upgrade", "migrated"), ("check", "compared")):
        run = await db_cmd(tmp_path, command)
        assert run.status == 1
        error = last_error(run)
        assert (
            "The version table of bind 'audit' names revision 'gone1234', which no revision "
            f"script has (its file was removed, or is on a branch not merged here), so nothing "
            f"was {done} there." in error
        ), error
        assert "asyncbind db stamp --purge --bind audit REV" in error
        assert "Name a revision" not in error
    assert (await db_cmd(tmp_path, "stamp", "--purge", "--bind", "audit", rev1)).status == 0
    assert (await db_cmd(tmp_path, "check")).status == 0


async def test_a_revision_failing_half_way_on_several_binds_names_each_cause(
    tmp_path: Path, new_database: NewDatabase, make_db: MakeDb
) -> None:
    urls = await three_binds(tmp_path, new_database)
    assert (await db_cmd(tmp_path, "init")).status == 0
    assert (await db_cmd(tmp_path, "revision", "--autogenerate", "-m", "first")).status == 0
    assert (await db_cmd(tmp_path, "upgrade")).status == 0
    assert (await db_cmd(tmp_path, "revision", "-m", "broken")).status == 0
    path = next((tmp_path / "migrations" / "versions").glob("*_broken.py"))
    script = path.read_text()
    for name, table in (("users", "users"), ("audit", "events")):
        script = script.replace(
            f"def upgrade_{name}() -> None:\n    pass",
            f"def upgrade_{name}() -> None:\n"
            f"    op.add_column({table!r}, sa.Column('note', sa.String(20)))\n"
            f"    raise RuntimeError('{name} cannot take it')",
        )
    path.write_text(script)

    run = await db_cmd(tmp_path, "upgrade")
    assert run.status == 1
    error = last_error(run)
    assert error.startswith(
        "asyncbind: error: MigrationError: Migrating bind 'users', bind 'audit' failed "
        "(bind 'users': RuntimeError: users cannot take it; "
        "bind 'audit': RuntimeError: audit cannot take it). "
        "On bind 'users' the failed revision was rolled back with its transaction, DDL included. "
        "On bind 'audit', whose database commits each DDL statement (MariaDB/MySQL, SQLite), the "
        "DDL that the failed revision ran before the failure remains"
    ), error
    assert "undo that DDL by hand, or make the revision tolerate it" in error
    assert "The other binds were migrated: the default bind." in error
    assert "note" in (await columns(urls["audit"], make_db))["events"]
    assert "note" not in (await columns(urls["users"], make_db))["users"]
