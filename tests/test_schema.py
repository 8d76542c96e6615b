"""create_all / drop_all / reflect over many binds: checked first, then concurrent, per bind."""

from __future__ import annotations

import contextlib
import itertools
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase, server_url

from asyncbind import AsyncBind, AsyncBindError, BindErrors, UnknownBindError

Statements = Callable[[AsyncBind], list[tuple[Any, str]]]


async def tables_in(db: AsyncBind, key: Any) -> set[str]:
    async with db.engines[key].connect() as conn:
        return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))


def add_tables(db: AsyncBind, key: Any, *names: str) -> None:
    for name in names:
        db.Table(name, sa.Column("id", sa.Integer, primary_key=True), bind_key=key)


@pytest.fixture
async def three_binds(
    backend: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> AsyncBind:
    db = make_db(
        await new_database(backend),
        binds={"a": await new_database(backend), "b": await new_database(backend)},
    )
    add_tables(db, None, "t_default")
    add_tables(db, "a", "t_a1", "t_a2")
    add_tables(db, "b", "t_b")
    return db


async def test_create_all_and_drop_all_every_bind(three_binds: AsyncBind) -> None:
    db = three_binds
    await db.create_all()
    assert await tables_in(db, None) == {"t_default"}
    assert await tables_in(db, "a") == {"t_a1", "t_a2"}
    assert await tables_in(db, "b") == {"t_b"}
    await db.create_all()  # idempotent
    await db.drop_all()
    for key in (None, "a", "b"):
        assert await tables_in(db, key) == set()
    await db.drop_all()  # idempotent


async def test_bind_key_selects_binds(three_binds: AsyncBind) -> None:
    db = three_binds
    await db.create_all(bind_key="a")
    assert (await tables_in(db, None), await tables_in(db, "a")) == (set(), {"t_a1", "t_a2"})
    await db.create_all(bind_key=[None, "b"])
    assert await tables_in(db, None) == {"t_default"} and await tables_in(db, "b") == {"t_b"}
    await db.drop_all(bind_key=None)
    assert await tables_in(db, None) == set() and await tables_in(db, "b") == {"t_b"}
    await db.drop_all(bind_key=["a", "__all__"])
    assert all([await tables_in(db, k) == set() for k in (None, "a", "b")])


async def test_unknown_bind_key_creates_nothing_anywhere(
    three_binds: AsyncBind, statements: Statements
) -> None:
    db = three_binds
    add_tables(db, "typo", "t_typo")
    log = statements(db)
    with pytest.raises(UnknownBindError) as info:
        await db.create_all()
    assert info.value.key == "typo" and "'t_typo'" in str(info.value)
    assert log == []
    for key in (None, "a", "b"):
        assert await tables_in(db, key) == set()
    with pytest.raises(UnknownBindError, match="'nope'"):
        await db.create_all(bind_key="nope")
    with pytest.raises(AsyncBindError, match="bind_key=3 is a int"):
        await db.create_all(bind_key=3)  # type: ignore[arg-type]


async def test_a_table_can_name_its_bind_in_info(three_binds: AsyncBind) -> None:
    db = three_binds
    sa.Table(
        "t_moved",
        db.metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        info={"bind_key": "b"},
    )
    await db.create_all()
    assert await tables_in(db, "b") == {"t_b", "t_moved"}
    assert "t_moved" not in await tables_in(db, None)


async def test_foreign_keys_are_created_in_order(three_binds: AsyncBind) -> None:
    db = three_binds
    db.Table("parent", sa.Column("id", sa.Integer, primary_key=True), bind_key="b")
    db.Table(
        "child",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("parent_id", sa.ForeignKey("parent.id")),
        bind_key="b",
    )
    await db.create_all(bind_key="b")
    assert await tables_in(db, "b") == {"t_b", "parent", "child"}
    await db.drop_all(bind_key="b")
    assert await tables_in(db, "b") == set()


async def test_one_failing_bind_does_not_stop_the_others(
    backend_pair: tuple[str, str], new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    first, second = backend_pair
    missing = "asyncbind_no_such_database"
    broken = (
        f"sqlite:////nonexistent-dir/{missing}.db"
        if second == "sqlite"
        else server_url(second, missing).render_as_string(hide_password=False)
    )
    db = make_db(
        await new_database(first), binds={"ok": await new_database(second), "broken": broken}
    )
    add_tables(db, None, "t1")
    add_tables(db, "ok", "t2")
    add_tables(db, "broken", "t3")
    with pytest.raises(BindErrors) as info:
        await db.create_all()
    assert list(info.value.errors) == ["broken"]
    assert info.value.exceptions == (info.value.errors["broken"],)
    assert "create_all failed on bind(s) 'broken'" in str(info.value)
    assert await tables_in(db, None) == {"t1"}
    assert await tables_in(db, "ok") == {"t2"}


async def test_create_all_overlaps_binds(
    backend_pair: tuple[str, str],
    new_database: NewDatabase,
    make_db: Callable[..., AsyncBind],
    statements: Statements,
) -> None:
    """The binds' DDL interleaves instead of running bind after bind."""
    first, second = backend_pair
    db = make_db(await new_database(first), binds={"other": await new_database(second)})
    add_tables(db, None, *(f"first_{i}" for i in range(8)))
    add_tables(db, "other", *(f"other_{i}" for i in range(8)))
    log = statements(db)
    await db.create_all()
    creates = [key for key, sql in log if sql.lstrip().upper().startswith("CREATE TABLE")]
    assert sorted(creates, key=str) == sorted([None] * 8 + ["other"] * 8, key=str)
    keys = [key for key, _ in log]
    # Bind after bind switches once; one bind's DDL in the middle of the other's (while a slow
    # server answers, the other may send all of its own) switches twice.
    switches = sum(1 for x, y in itertools.pairwise(keys) if x != y)
    assert switches >= 2, f"binds ran one after the other: {keys}"


async def test_reflect_loads_each_bind_into_its_metadata(
    backend_pair: tuple[str, str], new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    first, second = backend_pair
    urls = {None: await new_database(first), "other": await new_database(second)}
    writer = make_db(urls[None], binds={"other": urls["other"]})
    add_tables(writer, None, "here")
    writer.Table(
        "there",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(20)),
        bind_key="other",
    )
    await writer.create_all()
    async with writer.session() as session:
        await session.execute(
            sa.text("INSERT INTO there (id, name) VALUES (1, 'x')"),
            bind_arguments={"bind_key": "other"},
        )
        await session.commit()

    db = make_db(urls[None], binds={"other": urls["other"]})
    await db.reflect()
    assert set(db.metadata.tables) == {"here"}
    assert set(db.metadatas["other"].tables) == {"there"}
    there = db.metadatas["other"].tables["there"]
    async with db.session() as session:  # reflected tables route to their bind
        assert (await session.execute(sa.select(there.c.name))).scalar_one() == "x"
    fresh = make_db(urls[None], binds={"other": urls["other"]})
    await fresh.reflect(bind_key="other", only=["there"])
    assert set(fresh.metadatas["other"].tables) == {"there"} and not fresh.metadata.tables


@pytest.mark.sqlite
async def test_names_differing_only_in_case_are_checked_by_the_database(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """SQLite (like MySQL on case-insensitive file systems) treats 'Users' and 'users' as one."""
    db = make_db(await new_database("sqlite"))
    async with db.engine.begin() as conn:
        await conn.execute(sa.text('CREATE TABLE "Users" (id INTEGER PRIMARY KEY)'))
    add_tables(db, None, "users")
    await db.create_all()  # must not try to create it again
    assert await tables_in(db, None) == {"Users"}
    await db.drop_all()
    assert await tables_in(db, None) == set()


def ddl_kind(sql: str) -> str | None:
    """'CREATE TABLE', 'DROP INDEX', ... for a DDL statement; None for anything else."""
    words = sql.split()
    if words and words[0].upper() in ("CREATE", "DROP", "ALTER"):
        return " ".join(w.upper() for w in words[:2])
    return None


def table_named(sql: str) -> str:
    """The table a CREATE TABLE / DROP TABLE statement names."""
    found = re.match(r"\s*(?:CREATE|DROP) TABLE\s+(?:IF EXISTS\s+)?[`\"]?(\w+)", sql, re.I)
    assert found is not None, sql
    return found.group(1)


async def test_existing_tables_are_found_with_one_query_per_bind(
    url: str, make_db: Callable[..., AsyncBind], statements: Statements
) -> None:
    db = make_db(url)
    db.Table(
        "parent",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(20), index=True),
    )
    for i in range(6):
        db.Table(
            f"child_{i}",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("parent_id", sa.ForeignKey("parent.id"), index=True),
        )
    async with db.engine.connect():
        pass  # the dialect's first-connect queries are not create_all's
    log = statements(db)

    await db.create_all()
    kinds = Counter(ddl_kind(sql) for _, sql in log)
    assert kinds == {None: 1, "CREATE TABLE": 7, "CREATE INDEX": 7}
    log.clear()
    await db.create_all()  # every table there: the one query, nothing else
    assert [ddl_kind(sql) for _, sql in log] == [None]
    log.clear()
    await db.drop_all()
    kinds = Counter(ddl_kind(sql) for _, sql in log)
    assert kinds[None] == 1 and kinds["DROP TABLE"] == 7
    log.clear()
    await db.drop_all()
    assert [ddl_kind(sql) for _, sql in log] == [None]
    assert await tables_in(db, None) == set()


async def test_ddl_events_and_dependency_order_are_sqlalchemys(
    url: str, make_db: Callable[..., AsyncBind], statements: Statements
) -> None:
    db = make_db(url)
    # Defined children first: the order comes from the foreign keys, not from the definitions.
    tables = [
        db.Table(
            "grandchild",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("child_id", sa.ForeignKey("child.id")),
        ),
        db.Table(
            "child",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("parent_id", sa.ForeignKey("parent.id")),
        ),
        db.Table(
            "parent",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(20)),
        ),
    ]
    events: list[tuple[str, str]] = []
    listed: list[list[str]] = []

    def record(event: str) -> Callable[..., None]:
        def listener(target: Any, connection: Any, **kw: Any) -> None:
            assert isinstance(connection, sa.Connection)
            name = target.name if isinstance(target, sa.Table) else "metadata"
            events.append((event, name))
            if name == "metadata":
                listed.append([t.name for t in kw["tables"]])

        return listener

    for target in (db.metadata, *tables):
        for event in ("before_create", "after_create", "before_drop", "after_drop"):
            sa.event.listen(target, event, record(event))
    sa.event.listen(
        tables[2], "after_create", sa.DDL("INSERT INTO parent (id, name) VALUES (1, 'seeded')")
    )
    log = statements(db)

    await db.create_all()
    order = ["parent", "child", "grandchild"]
    assert [table_named(sql) for _, sql in log if ddl_kind(sql) == "CREATE TABLE"] == order
    assert events == [
        ("before_create", "metadata"),
        *[(e, name) for name in order for e in ("before_create", "after_create")],
        ("after_create", "metadata"),
    ]
    assert listed == [order, order]
    async with db.engine.connect() as conn:  # the after_create DDL ran in the same transaction
        rows = (await conn.execute(sa.text("SELECT id, name FROM parent"))).all()
    assert [tuple(row) for row in rows] == [(1, "seeded")]

    events.clear(), listed.clear(), log.clear()
    await db.create_all()  # nothing to create: the metadata's events still fire, as SQLAlchemy's
    assert events == [("before_create", "metadata"), ("after_create", "metadata")]
    assert listed == [[], []]

    events.clear(), listed.clear(), log.clear()
    await db.drop_all()
    assert [table_named(sql) for _, sql in log if ddl_kind(sql) == "DROP TABLE"] == order[::-1]
    assert events == [
        ("before_drop", "metadata"),
        *[(e, name) for name in order[::-1] for e in ("before_drop", "after_drop")],
        ("after_drop", "metadata"),
    ]
    assert await tables_in(db, None) == set()


@pytest.mark.postgresql
async def test_postgresql_enums_and_sequences_are_created_and_dropped_once(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind], statements: Statements
) -> None:
    db = make_db(await new_database("postgresql"))
    mood = sa.Enum("sad", "ok", "happy", name="mood")
    for name in ("person", "pet"):
        db.Table(name, sa.Column("id", sa.Integer, primary_key=True), sa.Column("mood", mood))
    log = statements(db)

    async def types_and_sequences() -> set[str]:
        async with db.engine.connect() as conn:
            found = await conn.execute(
                sa.text(
                    "SELECT typname FROM pg_type WHERE typname = 'mood' "
                    "UNION ALL SELECT relname FROM pg_class WHERE relkind = 'S' "
                    "AND relname = 'counter'"
                )
            )
            return set(found.scalars())

    await db.create_all()
    assert [sql for _, sql in log if ddl_kind(sql) == "CREATE TYPE"] == [
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')"
    ]
    async with db.session() as session:
        await session.execute(sa.text("INSERT INTO pet (id, mood) VALUES (1, 'happy')"))
        await session.commit()
    # A standalone sequence added once the tables exist is still created, as by SQLAlchemy.
    sa.Sequence("counter", metadata=db.metadata)
    log.clear()
    await db.create_all()
    assert [ddl_kind(sql) for _, sql in log if ddl_kind(sql)] == ["CREATE SEQUENCE"]
    assert await types_and_sequences() == {"mood", "counter"}

    log.clear()
    await db.drop_all()
    kinds = Counter(ddl_kind(sql) for _, sql in log)
    assert (kinds["DROP TYPE"], kinds["DROP SEQUENCE"], kinds["DROP TABLE"]) == (1, 1, 2)
    assert await types_and_sequences() == set()
    assert await tables_in(db, None) == set()


def sqlalchemys_ddl(metadata: sa.MetaData, dialect: sa.Dialect, verb: str) -> list[str]:
    """The statements SQLAlchemy's own ``create_all`` / ``drop_all`` (``verb``) sends for
    ``metadata`` into an empty or a full database, compiled for ``dialect``."""
    sent: list[str] = []

    def collect(construct: Any, *_args: Any, **_kwargs: Any) -> None:
        sent.append(str(construct.compile(dialect=dialect)))

    getattr(metadata, verb)(sa.create_mock_engine(f"{dialect.name}://", collect), checkfirst=False)
    return sent


@pytest.mark.parametrize("use_alter", [True, False], ids=["use_alter", "cycle_found"])
async def test_ddl_is_sqlalchemys_statement_for_statement_with_a_foreign_key_cycle(
    url: str, make_db: Callable[..., AsyncBind], statements: Statements, use_alter: bool
) -> None:
    """Tables defined in any order, two of them referring to each other (the cycle marked with
    ``use_alter``, or left for SQLAlchemy to find): the same statements in the same order as
    SQLAlchemy's own, the same events, and the same warnings (SQLAlchemy's own about a cycle it
    cannot drop in order without ALTER, on SQLite; none elsewhere: warnings fail the tests)."""
    db = make_db(url)
    db.Table(
        "invoice",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("customer_id", sa.ForeignKey("customer.id")),
        sa.Column("name", sa.String(20), index=True),
    )
    db.Table(
        "customer",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("last_id", sa.ForeignKey("invoice.id", use_alter=use_alter, name="fk_last")),
    )
    db.Table(
        "line",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("invoice_id", sa.ForeignKey("invoice.id")),
    )
    dialect = db.engine.sync_engine.dialect
    create = sqlalchemys_ddl(db.metadata, dialect, "create_all")

    def as_sqlalchemy_warns() -> contextlib.AbstractContextManager[object]:
        if use_alter or dialect.supports_alter:
            return contextlib.nullcontext()
        return pytest.warns(sa.exc.SAWarning, match="Can't sort tables for DROP")

    with as_sqlalchemy_warns():
        drop = sqlalchemys_ddl(db.metadata, dialect, "drop_all")
    created = [table_named(sql) for sql in create if ddl_kind(sql) == "CREATE TABLE"]
    assert sorted(created) == ["customer", "invoice", "line"]
    events: list[tuple[str, str]] = []
    for target in (db.metadata, *db.metadata.tables.values()):
        for event in ("before_create", "after_create", "before_drop", "after_drop"):
            name = getattr(target, "name", "metadata")
            sa.event.listen(target, event, lambda *_, e=event, n=name, **__: events.append((e, n)))
    async with db.engine.connect():
        pass  # the dialect's first-connect queries are not create_all's
    log = statements(db)

    await db.create_all()
    assert ddl_kind(log[0][1]) is None  # the one existence query
    assert [sql for _, sql in log[1:]] == create
    assert events == [
        ("before_create", "metadata"),
        *[(e, name) for name in created for e in ("before_create", "after_create")],
        ("after_create", "metadata"),
    ]
    assert await tables_in(db, None) == set(created)

    log.clear(), events.clear()
    with as_sqlalchemy_warns():
        await db.drop_all()
    assert [sql for _, sql in log[1:]] == drop
    dropped = [table_named(sql) for sql in drop if ddl_kind(sql) == "DROP TABLE"]
    assert events == [
        ("before_drop", "metadata"),
        *[(e, name) for name in dropped for e in ("before_drop", "after_drop")],
        ("after_drop", "metadata"),
    ]
    assert await tables_in(db, None) == set()
