"""Routing: every statement of one session goes to its bind's engine, on real databases."""

from __future__ import annotations

import gc
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from sqlalchemy import orm as sa_orm
from sqlalchemy.orm import Mapped, mapped_column

from asyncbind import (
    AsyncBind,
    AsyncBindSession,
    ConfigError,
    CrossBindError,
    RoutingSession,
    UnknownBindError,
)
from asyncbind.routing import Router, ShapeCacheInfo

Statements = Callable[[AsyncBind], list[tuple[Any, str]]]


def define(db: AsyncBind) -> tuple[Any, Any, sa.Table]:
    class User(db.Model):
        __bind_key__ = "users"
        __tablename__ = "user_account"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))

    class Item(db.Model):
        __tablename__ = "item"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(50))

    log = db.Table(
        "log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("msg", sa.String(50)),
        bind_key="users",
    )
    return User, Item, log


async def table_rows(db: AsyncBind, key: Any, table: str) -> list[tuple[Any, ...]]:
    """Read a table straight from one bind's engine, bypassing routing."""
    async with db.engines[key].connect() as conn:
        return [tuple(r) for r in await conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1"))]


async def has_table(db: AsyncBind, key: Any, table: str) -> bool:
    async with db.engines[key].connect() as conn:
        return await conn.run_sync(lambda c: sa.inspect(c).has_table(table))


@pytest.fixture
async def two_binds(
    backend: str, new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> AsyncBind:
    """Default bind and 'users', two databases on the test's backend."""
    return make_db(await new_database(backend), binds={"users": await new_database(backend)})


@pytest.fixture
async def two_servers(
    backend_pair: tuple[str, str], new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> AsyncBind:
    """Default bind on one server, 'users' on another."""
    first, second = backend_pair
    return make_db(await new_database(first), binds={"users": await new_database(second)})


async def test_orm_writes_and_reads_land_in_their_bind(
    two_binds: AsyncBind, statements: Statements
) -> None:
    db = two_binds
    User, Item, _ = define(db)
    await db.create_all()
    log = statements(db)
    async with db.session() as session:
        session.add_all([User(id=1, name="ada"), Item(id=1, title="lamp")])
        await session.commit()
        assert (await session.get(User, 1)).name == "ada"
        assert (await session.scalars(sa.select(Item))).one().title == "lamp"
    assert {k for k, sql in log if "user_account" in sql} == {"users"}
    assert {k for k, sql in log if "item" in sql} == {None}
    assert await table_rows(db, "users", "user_account") == [(1, "ada")]
    assert await table_rows(db, None, "item") == [(1, "lamp")]
    assert not await has_table(db, None, "user_account")
    assert not await has_table(db, "users", "item")


async def test_one_session_commits_every_bind_across_servers(
    two_servers: AsyncBind, statements: Statements
) -> None:
    db = two_servers
    User, Item, log_table = define(db)
    await db.create_all()
    async with db.session() as session:
        session.add(User(id=7, name="grace"))
        session.add(Item(id=8, title="desk"))
        await session.execute(sa.insert(log_table).values(id=1, msg="hello"))
        await session.commit()
    assert await table_rows(db, "users", "user_account") == [(7, "grace")]
    assert await table_rows(db, "users", "log") == [(1, "hello")]
    assert await table_rows(db, None, "item") == [(8, "desk")]
    log = statements(db)
    async with db.session() as session:
        assert (await session.execute(sa.select(log_table.c.msg))).scalar_one() == "hello"
        await session.execute(sa.update(log_table).values(msg="bye"))
        await session.execute(sa.delete(Item.__table__))
        await session.commit()
    assert [k for k, sql in log if "log" in sql] == ["users", "users"]
    assert [k for k, sql in log if "item" in sql] == [None]
    assert await table_rows(db, None, "item") == []


async def test_get_routes_by_its_model_unless_told_otherwise(
    two_binds: AsyncBind, statements: Statements
) -> None:
    """A primary-key lookup goes to its model's bind; explicit bind_arguments still win."""
    db = two_binds
    User, _, _ = define(db)
    await db.create_all()
    # The same table in the default bind, holding another row: where each get went shows.
    async with db.engines[None].begin() as conn:
        await conn.run_sync(lambda c: User.__table__.to_metadata(sa.MetaData()).create(c))
        await conn.execute(sa.text("INSERT INTO user_account (id, name) VALUES (1, 'default')"))
    async with db.session() as session:
        session.add(User(id=1, name="users"))
        await session.commit()
    log = statements(db)
    async with db.session() as session:
        assert (await session.get(User, 1)).name == "users"
    async with db.session() as session:
        # AsyncSession.get() takes no bind_arguments; the sync Session.get() does.
        found = await session.run_sync(
            lambda sync: sync.get(User, 1, bind_arguments={"bind_key": None})
        )
        assert found.name == "default"
    async with db.session() as session:
        assert (await session.get_one(User, 1)).name == "users"
    assert [k for k, sql in log if "user_account" in sql] == ["users", None, "users"]


async def test_text_goes_to_default_or_to_the_named_bind(
    two_servers: AsyncBind, statements: Statements
) -> None:
    db = two_servers
    log = statements(db)
    async with db.session() as session:
        await session.execute(sa.text("SELECT 1"))
        await session.execute(sa.text("SELECT 2"), bind_arguments={"bind_key": "users"})
        conn = await session.connection(bind_arguments={"bind_key": "users"})
        assert conn.engine is db.engines["users"]
        await session.execute(
            sa.text("SELECT 3"), bind_arguments={"bind": db.engines["users"].sync_engine}
        )
        with pytest.raises(UnknownBindError, match="'nope'"):
            await session.execute(sa.text("SELECT 4"), bind_arguments={"bind_key": "nope"})
    assert [(k, sql) for k, sql in log if sql.startswith("SELECT")] == [
        (None, "SELECT 1"),
        ("users", "SELECT 2"),
        ("users", "SELECT 3"),
    ]


async def test_same_table_name_in_two_binds_routes_each_to_its_own(two_servers: AsyncBind) -> None:
    db = two_servers
    columns = lambda: (sa.Column("id", sa.Integer, primary_key=True),)  # noqa: E731
    here = db.Table("twin", *columns())
    there = db.Table("twin", *columns(), bind_key="users")
    await db.create_all()
    async with db.session() as session:
        for _ in range(3):  # the second time round, routing comes from its cache
            await session.execute(sa.insert(here).values(id=1 + _))
            await session.execute(sa.insert(there).values(id=10 + _))
        await session.commit()
    assert await table_rows(db, None, "twin") == [(1,), (2,), (3,)]
    assert await table_rows(db, "users", "twin") == [(10,), (11,), (12,)]


async def test_cross_bind_statements_are_refused_before_any_sql(
    two_servers: AsyncBind, statements: Statements
) -> None:
    db = two_servers
    User, Item, log_table = define(db)
    await db.create_all()
    log = statements(db)
    cross = [
        sa.select(User).join(Item, User.id == Item.id),
        sa.select(Item).where(Item.id.in_(sa.select(User.id))),
        sa.select(log_table.c.id, Item.id),
        sa.insert(log_table).from_select(["id", "msg"], sa.select(Item.id, Item.title)),
    ]
    async with db.session() as session:
        for statement in cross:
            with pytest.raises(CrossBindError) as info:
                await session.execute(statement)
            assert set(info.value.keys) == {None, "users"}
            assert "'item'" in str(info.value) and "Split it" in str(info.value)
        assert (await session.execute(sa.select(sa.func.count()).select_from(Item))).scalar() == 0
    assert [sql for _, sql in log if "user_account" in sql or "log" in sql] == []


async def test_unknown_bind_key_names_the_model_and_the_configured_keys(
    two_binds: AsyncBind,
) -> None:
    db = two_binds

    class Report(db.Model):
        __bind_key__ = "reports"
        __tablename__ = "report"
        id: Mapped[int] = mapped_column(primary_key=True)

    async with db.session() as session:
        with pytest.raises(UnknownBindError) as info:
            await session.execute(sa.select(Report))
        assert info.value.key == "reports"
        message = str(info.value)
        assert "'Report'" in message and "configured: the default bind, 'users'" in message
        session.add(Report(id=1))
        with pytest.raises(UnknownBindError, match="'reports'"):
            await session.flush()


async def test_joined_inheritance_routes_by_the_local_table(two_binds: AsyncBind) -> None:
    db = two_binds

    class Person(db.Model):
        __bind_key__ = "users"
        __tablename__ = "person"
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str] = mapped_column(sa.String(20))
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "person"}

    class Engineer(Person):
        __tablename__ = "engineer"
        id: Mapped[int] = mapped_column(sa.ForeignKey("person.id"), primary_key=True)
        language: Mapped[str] = mapped_column(sa.String(20))
        __mapper_args__ = {"polymorphic_identity": "engineer"}

    class Manager(Person):
        __mapper_args__ = {"polymorphic_identity": "manager"}

    await db.create_all()
    async with db.session() as session:
        session.add_all([Engineer(id=1, language="python"), Manager(id=2)])
        await session.commit()
        kinds = (await session.scalars(sa.select(Person.kind).order_by(Person.id))).all()
        assert kinds == ["engineer", "manager"]
        assert (await session.get(Engineer, 1)).language == "python"
    assert await table_rows(db, "users", "engineer") == [(1, "python")]
    assert not await has_table(db, None, "person")


async def test_session_defaults(two_binds: AsyncBind, make_db: Callable[..., AsyncBind]) -> None:
    db = two_binds
    _, Item, _ = define(db)
    await db.create_all()
    async with db.session() as session:
        assert session.bind is db.engine
        assert session.sync_session.bind is db.engine.sync_engine
        assert session.get_bind() is db.engine.sync_engine
        item = Item(id=1, title="kept")
        session.add(item)
        await session.commit()
        assert item.title == "kept"  # not expired by the commit: no lazy load, no MissingGreenlet
    assert db.sessionmaker.kw["expire_on_commit"] is False
    other = make_db(str(db.engine.url), session_options={"expire_on_commit": True})
    assert other.sessionmaker.kw["expire_on_commit"] is True


async def test_custom_sync_session_class_keeps_routing(
    two_binds: AsyncBind, make_db: Callable[..., AsyncBind]
) -> None:
    class Audited(RoutingSession):
        audited = True

    url = two_binds.engine.url.render_as_string(hide_password=False)
    users = two_binds.engines["users"].url.render_as_string(hide_password=False)
    db = make_db(url, binds={"users": users}, session_options={"sync_session_class": Audited})
    define(db)
    await db.create_all()
    async with db.session() as session:
        assert isinstance(session.sync_session, Audited)
        conn = await session.connection(bind_arguments={"bind_key": "users"})
        assert conn.engine is db.engines["users"]


@pytest.mark.sqlite
async def test_in_memory_sqlite_is_shared_by_every_session(
    make_db: Callable[..., AsyncBind],
) -> None:
    db = make_db("sqlite://", binds={"users": "sqlite:///:memory:"})
    User, Item, _ = define(db)
    await db.create_all()
    async with db.session() as first:
        first.add_all([User(id=1, name="a"), Item(id=1, title="b")])
        await first.commit()
    async with db.session() as second:
        assert (await second.get(User, 1)).name == "a"
        assert (await second.get(Item, 1)).title == "b"
    assert isinstance(db.engines["users"].sync_engine.pool, sa.StaticPool)


async def test_routing_does_not_run_once_per_statement(
    two_binds: AsyncBind, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mapper's and a statement shape's bind is worked out once, then cached."""
    from asyncbind import routing

    db = two_binds
    User, Item, _ = define(db)
    await db.create_all()
    calls: list[Any] = []
    real = routing._tables_in
    monkeypatch.setattr(routing, "_tables_in", lambda c: calls.append(c) or real(c))
    async with db.session() as session:
        for i in range(5):
            await session.execute(sa.select(Item).where(Item.id == i))
            await session.get(User, i)
    assert 0 < len(calls) <= 6


async def test_orm_unions_route_by_their_tables(
    two_servers: AsyncBind, statements: Statements
) -> None:
    """SQLAlchemy hands get_bind() no statement for an ORM UNION; it must still reach its bind."""
    db = two_servers
    User, Item, log_table = define(db)
    await db.create_all()
    async with db.session() as session:
        session.add_all([User(id=1, name="ada"), Item(id=2, title="lamp")])
        await session.execute(sa.insert(log_table).values(id=3, msg="m"))
        await session.commit()
        log = statements(db)
        union = sa.select(User.id).union_all(sa.select(log_table.c.id))
        assert sorted((await session.execute(union)).scalars()) == [1, 3]
        assert sorted((await session.scalars(union)).all()) == [1, 3]
        assert await session.scalar(union) in (1, 3)
        assert sorted([i async for i in await session.stream_scalars(union)]) == [1, 3]
        assert {key for key, sql in log if "UNION" in sql} == {"users"}
        with pytest.raises(CrossBindError):
            await session.execute(sa.select(User.id).union(sa.select(Item.id)))


async def test_tables_and_bases_made_outside_asyncbind_route_too(
    backend_pair: tuple[str, str], new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """A user's own DeclarativeBase, and Core tables that carry their bind in ``info``."""

    class Base(sa.orm.DeclarativeBase):
        pass

    first, second = backend_pair
    db = make_db(
        await new_database(first), binds={"users": await new_database(second)}, model_class=Base
    )

    class Account(db.Model):
        __bind_key__ = "users"
        id: Mapped[int] = mapped_column(primary_key=True)

    elsewhere = sa.MetaData(info={"bind_key": "users"})
    by_metadata = sa.Table("by_metadata", elsewhere, sa.Column("id", sa.Integer, primary_key=True))
    by_info = sa.Table(
        "by_info",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        info={"bind_key": "users"},
    )
    await db.create_all()
    async with db.engines["users"].begin() as conn:
        await conn.run_sync(elsewhere.create_all)
        await conn.run_sync(by_info.create)
    async with db.session() as session:
        session.add(Account(id=1))
        await session.execute(sa.insert(by_metadata).values(id=2))
        await session.execute(sa.insert(by_info).values(id=3))
        await session.commit()
        assert (await session.scalar(sa.select(by_metadata.c.id))) == 2
        assert (await session.scalar(sa.select(by_info.c.id))) == 3
    assert await table_rows(db, "users", "account") == [(1,)]
    assert await table_rows(db, "users", "by_metadata") == [(2,)]
    assert not await has_table(db, None, "account")


# -- what the ORM adds when it compiles a statement ---------------------------------------------


@pytest.fixture(
    params=[
        pytest.param(
            None,
            id="sqlite+postgresql+mysql",
            marks=[pytest.mark.sqlite, pytest.mark.postgresql, pytest.mark.mysql],
        )
    ]
)
async def three_servers(new_database: NewDatabase, make_db: Callable[..., AsyncBind]) -> AsyncBind:
    """The default bind on SQLite, 'pg' on PostgreSQL, 'my' on MariaDB."""
    pg, my = await new_database("postgresql"), await new_database("mysql")
    return make_db(await new_database("sqlite"), binds={"pg": pg, "my": my})


@dataclass
class Related:
    """Models related across binds (see :func:`define_related`)."""

    Customer: Any
    Address: Any
    Purchase: Any
    Invoice: Any
    Receipt: Any
    Note: Any


def define_related(db: AsyncBind) -> Related:
    """``Customer`` and ``Address`` on 'pg'; ``Purchase``, ``Invoice`` and ``Receipt`` on 'my',
    each pointing at a customer; ``Note`` on the default bind, pointing at a customer too."""

    class Customer(db.Model):
        __bind_key__ = "pg"
        __tablename__ = "customer"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))
        # Within the bind, joined eagerly on every load of a customer.
        addresses: Mapped[list[Address]] = sa_orm.relationship(lazy="joined")
        purchases: Mapped[list[Purchase]] = sa_orm.relationship(
            primaryjoin="Customer.id == foreign(Purchase.customer_id)",
            back_populates="customer",
        )
        # Across binds, loaded by a statement of its own on the other bind.
        purchases_selectin: Mapped[list[Purchase]] = sa_orm.relationship(
            primaryjoin="Customer.id == foreign(Purchase.customer_id)",
            lazy="selectin",
            viewonly=True,
        )

    class Address(db.Model):
        __bind_key__ = "pg"
        __tablename__ = "address"
        id: Mapped[int] = mapped_column(primary_key=True)
        customer_id: Mapped[int] = mapped_column(sa.ForeignKey("customer.id"))
        city: Mapped[str] = mapped_column(sa.String(50))
        customer: Mapped[Customer] = sa_orm.relationship(viewonly=True)

    class Purchase(db.Model):
        __bind_key__ = "my"
        __tablename__ = "purchase"
        id: Mapped[int] = mapped_column(primary_key=True)
        customer_id: Mapped[int]
        customer: Mapped[Customer] = sa_orm.relationship(
            primaryjoin="foreign(Purchase.customer_id) == Customer.id",
            back_populates="purchases",
        )

    class Invoice(db.Model):
        __bind_key__ = "my"
        __tablename__ = "invoice"
        id: Mapped[int] = mapped_column(primary_key=True)
        customer_id: Mapped[int]
        customer: Mapped[Customer] = sa_orm.relationship(
            primaryjoin="foreign(Invoice.customer_id) == Customer.id", lazy="joined"
        )

    class Receipt(db.Model):
        __bind_key__ = "my"
        __tablename__ = "receipt"
        id: Mapped[int] = mapped_column(primary_key=True)
        customer_id: Mapped[int]

    Receipt.customer_name = sa_orm.column_property(
        sa.select(Customer.name)
        .where(Customer.id == Receipt.customer_id)
        .correlate_except(Customer)
        .scalar_subquery()
    )

    class Note(db.Model):
        __tablename__ = "note"
        id: Mapped[int] = mapped_column(primary_key=True)
        customer_id: Mapped[int]
        customer: Mapped[Customer] = sa_orm.relationship(
            primaryjoin="foreign(Note.customer_id) == Customer.id"
        )

    return Related(Customer, Address, Purchase, Invoice, Receipt, Note)


async def related_rows(db: AsyncBind) -> Related:
    """The models of :func:`define_related`, their tables made and filled, and a ``customer``
    table of the same name in the default and 'my' databases, whose rows say they are in the
    wrong database: a statement sent there reads them instead of failing."""
    m = define_related(db)
    await db.create_all()
    for key in (None, "my"):
        async with db.engines[key].begin() as conn:
            await conn.execute(sa.text("CREATE TABLE customer (id INTEGER PRIMARY KEY, name TEXT)"))
            await conn.execute(sa.text(f"INSERT INTO customer VALUES (1, 'wrong: {key}')"))
    async with db.session() as session:
        session.add_all(
            [
                m.Customer(id=1, name="ada", addresses=[m.Address(id=1, city="Paris")]),
                m.Purchase(id=10, customer_id=1),
                m.Invoice(id=20, customer_id=1),
                m.Receipt(id=30, customer_id=1),
                m.Note(id=40, customer_id=1),
            ]
        )
        await session.commit()
    return m


async def test_joins_along_relationships_across_binds_are_refused_before_any_sql(
    three_servers: AsyncBind, statements: Statements
) -> None:
    """Joins the ORM adds when it compiles a statement (along a relationship, eager joins asked
    for or configured with lazy="joined"), and the criteria it adds to an ORM UPDATE or DELETE,
    count as the statement's tables: across binds they are refused, where they used to read the
    same-named table of the wrong database."""
    db = three_servers
    m = await related_rows(db)
    Customer, Purchase, Invoice, Note = m.Customer, m.Purchase, m.Invoice, m.Note
    criteria = sa_orm.with_loader_criteria(
        Purchase, Purchase.customer_id.in_(sa.select(Customer.id))
    )
    log = statements(db)
    async with db.session() as session:
        refused = {
            "join(Purchase.customer)": lambda: session.scalars(
                sa.select(Purchase).join(Purchase.customer)
            ),
            "outerjoin(Purchase.customer)": lambda: session.scalars(
                sa.select(Purchase).outerjoin(Purchase.customer)
            ),
            "joinedload(Purchase.customer)": lambda: session.scalars(
                sa.select(Purchase).options(sa_orm.joinedload(Purchase.customer))
            ),
            "join(Customer.purchases)": lambda: session.scalars(
                sa.select(Customer).join(Customer.purchases)
            ),
            "get(Customer, joinedload)": lambda: session.get(
                Customer, 1, options=[sa_orm.joinedload(Customer.purchases)]
            ),
            "lazy='joined' select": lambda: session.scalars(sa.select(Invoice)),
            "lazy='joined' get": lambda: session.get(Invoice, 20),
            "update with_loader_criteria": lambda: session.execute(
                sa.update(Purchase).options(criteria).values(customer_id=2)
            ),
            "delete with_loader_criteria": lambda: session.execute(
                sa.delete(Purchase).options(criteria)
            ),
        }
        for name, run in refused.items():
            with pytest.raises(CrossBindError) as info:
                await run()
            assert set(info.value.keys) == {"pg", "my"}, name
            assert "customer" in info.value.tables["pg"], name
            assert set(info.value.tables["my"]) & {"purchase", "invoice"}, name
        with pytest.raises(CrossBindError) as info:
            await session.scalars(sa.select(Note).join(Note.customer))
        assert info.value.tables == {None: ("note",), "pg": ("customer",)}
        assert "'note'" in str(info.value) and "'customer'" in str(info.value)
        assert log == []
        # A refresh loads with the model's own loaders: lazy="joined" too.
        invoice = Invoice(id=21, customer_id=1)
        session.add(invoice)
        await session.flush()
        with pytest.raises(CrossBindError, match="'invoice'"):
            await session.refresh(invoice)
    assert [(key, sql.split()[0]) for key, sql in log] == [("my", "INSERT")]


async def test_column_properties_across_binds_are_refused_before_any_sql(
    three_servers: AsyncBind, statements: Statements
) -> None:
    """A column_property whose subquery reads another bind's table counts as the statement's:
    selecting the model, or getting one, is refused as the subquery written out is."""
    db = three_servers
    m = await related_rows(db)
    Receipt = m.Receipt
    log = statements(db)
    async with db.session() as session:
        for run in (
            lambda: session.scalars(sa.select(Receipt)),
            lambda: session.get(Receipt, 30),
            lambda: session.scalars(sa.select(Receipt).where(Receipt.id == 30)),
            lambda: session.execute(sa.select(Receipt.id, Receipt.customer_name)),
        ):
            with pytest.raises(CrossBindError) as info:
                await run()
            assert info.value.tables == {"my": ("receipt",), "pg": ("customer",)}
    assert log == []


async def test_what_the_orm_adds_to_subqueries_and_unions_across_binds_is_refused(
    three_servers: AsyncBind, statements: Statements
) -> None:
    """The ORM adds column properties and joins along relationships to the SELECTs nested in a
    statement and to the SELECTs of a UNION too: across binds, those are refused as well."""
    db = three_servers
    m = await related_rows(db)
    Customer, Address, Purchase, Receipt = m.Customer, m.Address, m.Purchase, m.Receipt
    receipts = sa.select(Receipt).cte("receipts")
    log = statements(db)
    async with db.session() as session:
        for statement in (
            sa.union_all(sa.select(Receipt), sa.select(Receipt)),
            sa.select(Purchase).where(sa.exists(sa.select(Receipt))),
            sa.select(Purchase).join(receipts, receipts.c.id == Purchase.id),
            sa.select(Purchase.id).where(
                Purchase.id.in_(sa.select(Purchase.id).join(Purchase.customer))
            ),
        ):
            with pytest.raises(CrossBindError) as info:
                await session.execute(statement)
            assert info.value.tables["pg"] == ("customer",)
            assert set(info.value.keys) == {"pg", "my"}
        assert log == []
        # Within one bind, the same shapes run.
        union = sa.union_all(sa.select(Purchase.id), sa.select(Purchase.id))
        assert (await session.execute(union)).scalars().all() == [10, 10]
        assert (await session.scalars(union)).all() == [10, 10]
        inner = sa.select(Customer).where(Customer.id == Address.customer_id)
        found = await session.scalars(sa.select(Address).where(sa.exists(inner)))
        assert [a.city for a in found] == ["Paris"]
    assert [key for key, _ in log] == ["my", "my", "pg"]


async def test_orm_loads_within_a_bind_or_by_statements_per_bind_still_work(
    three_servers: AsyncBind, statements: Statements
) -> None:
    """Joined eager loading within one bind, loads across binds by a statement per bind
    (selectin, immediate, lazy) and column properties left out of the statement still run, each
    statement on its own bind and reading its rows."""
    db = three_servers
    m = await related_rows(db)
    Customer, Address, Purchase, Invoice, Receipt = (
        m.Customer,
        m.Address,
        m.Purchase,
        m.Invoice,
        m.Receipt,
    )
    log = statements(db)
    async with db.session() as session:
        customer = await session.get(Customer, 1)  # addresses joined, purchases by selectin
        assert [a.city for a in customer.addresses] == ["Paris"]
        assert [p.id for p in customer.purchases_selectin] == [10]
        address = await session.scalar(
            sa.select(Address).options(sa_orm.joinedload(Address.customer))
        )
        assert address.customer is customer
    async with db.session() as session:
        purchase = await session.scalar(
            sa.select(Purchase).options(sa_orm.selectinload(Purchase.customer))
        )
        assert purchase.customer.name == "ada"
        customer = await session.scalar(
            sa.select(Customer).options(sa_orm.immediateload(Customer.purchases))
        )
        assert [p.id for p in customer.purchases] == [10]
        invoice = await session.scalar(
            sa.select(Invoice).options(sa_orm.lazyload(Invoice.customer))
        )
        assert await session.run_sync(lambda _: invoice.customer.name) == "ada"
        receipt = await session.scalar(
            sa.select(Receipt).options(sa_orm.defer(Receipt.customer_name))
        )
        assert receipt.id == 30
    homes = {"customer": "pg", "address": "pg", "purchase": "my", "invoice": "my", "receipt": "my"}
    for key, sql in log:
        assert {homes[t] for t in homes if re.search(rf"\b{t}\b", sql)} == {key}, sql
    assert {key for key, _ in log} == {"pg", "my"}


async def test_sequences_route_to_the_bind_of_their_metadata(
    three_servers: AsyncBind, statements: Statements
) -> None:
    """A statement that takes values from a sequence goes to the bind of the sequence's MetaData
    (a model column's sequence is its table's), even with a sequence of the same name in another
    bind, which SQLAlchemy's cache key does not tell apart; sequences and tables of two binds are
    refused as tables are."""
    db = three_servers

    class Ticket(db.Model):
        __bind_key__ = "pg"
        __tablename__ = "ticket"
        id: Mapped[int] = mapped_column(sa.Sequence("ticket_ids", start=7), primary_key=True)

    audit = db.Table("audit", sa.Column("id", sa.Integer, primary_key=True))
    db.Table("counter", sa.Column("id", sa.Integer, primary_key=True), bind_key="my")
    on_pg = sa.Sequence("ids", metadata=db.metadatas["pg"])
    on_my = sa.Sequence("ids", start=100, metadata=db.metadatas["my"])
    await db.create_all()
    later = sa.Sequence("later", start=50, metadata=db.metadatas["pg"])
    log = statements(db)
    async with db.session() as session:
        assert await session.scalar(sa.select(on_pg.next_value())) == 1
        assert await session.scalar(sa.select(on_my.next_value())) == 100
        assert await session.scalar(sa.select(on_pg.next_value())) == 2
        assert await session.scalar(sa.select(Ticket.__table__.c.id.default.next_value())) == 7
        await session.execute(sa.schema.CreateSequence(later))
        assert await session.scalar(sa.select(later.next_value())) == 50
        for statement in (
            sa.select(on_pg.next_value(), on_my.next_value()),
            sa.insert(audit).values(id=on_pg.next_value()),
        ):
            with pytest.raises(CrossBindError) as info:
                await session.execute(statement)
            assert info.value.tables["pg"] == ("sequence ids",)
        await session.commit()
    assert [key for key, _ in log] == ["pg", "my", "pg", "pg", "pg", "pg"]


# -- what the session was told: bind=, binds= and its own classes -------------------------------


async def rows_on(conn: Any, table: str) -> list[tuple[Any, ...]]:
    """A table's rows as ``conn`` (an AsyncConnection, maybe inside a transaction) sees them."""
    return [tuple(r) for r in await conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1"))]


async def test_bind_sends_every_statement_through_the_callers_connection(
    two_binds: AsyncBind,
) -> None:
    """``db.session(bind=conn)``: SQLAlchemy's meaning, the session's statements go through
    ``conn``, whose transaction stays the caller's: the session's commit does not end it."""
    db = two_binds
    User, Item, _ = define(db)
    await db.create_all()
    async with db.engine.connect() as conn:
        outer = await conn.begin()
        await conn.execute(sa.insert(Item).values(id=1, title="fixture"))
        async with db.session(bind=conn) as session:
            assert session.bind is conn
            assert (await session.connection()).sync_connection is conn.sync_connection
            # bind= takes what routing would send elsewhere too, as SQLAlchemy's does.
            assert session.sync_session.get_bind(User) is conn.sync_connection
            assert (await session.get(Item, 1)).title == "fixture"
            session.add(Item(id=2, title="lamp"))
            await session.commit()
            await session.execute(sa.text("INSERT INTO item (id, title) VALUES (3, 'desk')"))
            await session.commit()
        assert await rows_on(conn, "item") == [(1, "fixture"), (2, "lamp"), (3, "desk")]
        assert await table_rows(db, None, "item") == []  # nothing committed for real
        await outer.rollback()
    assert await table_rows(db, None, "item") == []


async def _external_transactions(db: AsyncBind, mode: str | None, by_key: bool) -> None:
    """SQLAlchemy's "join a session into an external transaction" recipe over two binds: the
    caller opens a transaction on a connection of each bind, the session writes and commits in
    them, and rolling the caller's transactions back leaves nothing anywhere."""
    User, Item, log = define(db)
    await db.create_all()
    options = {} if mode is None else {"join_transaction_mode": mode}
    async with db.engines[None].connect() as items, db.engines["users"].connect() as users:
        outer = [await items.begin(), await users.begin()]
        # A write first, as a test's fixture data would be (it also makes SQLite's driver open the
        # transaction, which a SAVEPOINT needs to be nested in).
        await items.execute(sa.insert(Item).values(id=1, title="fixture"))
        await users.execute(sa.insert(User).values(id=1, name="fixture"))
        binds: dict[Any, Any] = (
            {None: items, "users": users} if by_key else {User: users, Item: items}
        )
        async with db.session(binds=binds, **options) as session:
            session.add_all([User(id=2, name="ada"), Item(id=2, title="lamp")])
            await session.commit()
            if by_key:  # whatever routes to a key: Core tables and bind_key= too
                await session.execute(sa.insert(log).values(id=3, msg="m"))
                text = sa.text("SELECT count(*) FROM user_account")
                assert (await session.scalar(text, bind_arguments={"bind_key": "users"})) == 2
            await session.commit()
            assert (await session.get(User, 1)).name == "fixture"
            assert [u.name for u in await session.scalars(sa.select(User).order_by(User.id))] == [
                "fixture",
                "ada",
            ]
        assert await rows_on(users, "user_account") == [(1, "fixture"), (2, "ada")]
        assert await rows_on(items, "item") == [(1, "fixture"), (2, "lamp")]
        if by_key:
            assert await rows_on(users, "log") == [(3, "m")]
        # The session's commits did not commit the caller's transactions.
        assert await table_rows(db, "users", "user_account") == []
        assert await table_rows(db, None, "item") == []
        for transaction in outer:
            await transaction.rollback()
    assert await table_rows(db, "users", "user_account") == []
    assert await table_rows(db, "users", "log") == []
    assert await table_rows(db, None, "item") == []


JOIN_MODES = pytest.mark.parametrize(
    "mode", [None, "create_savepoint"], ids=["default_join", "create_savepoint"]
)


BINDS_BY = pytest.mark.parametrize("by_key", [False, True], ids=["by_model", "by_bind_key"])


@JOIN_MODES
@BINDS_BY
async def test_binds_join_the_callers_transactions(
    two_binds: AsyncBind, mode: str | None, by_key: bool
) -> None:
    await _external_transactions(two_binds, mode, by_key=by_key)


@JOIN_MODES
@BINDS_BY
async def test_binds_join_the_callers_transactions_across_servers(
    two_servers: AsyncBind, mode: str | None, by_key: bool
) -> None:
    await _external_transactions(two_servers, mode, by_key=by_key)


async def test_binds_match_before_routing_and_routing_does_the_rest(
    two_servers: AsyncBind, statements: Statements
) -> None:
    """A session's binds= for one model: the others still route, each to its bind, and so do
    models bound later with bind_mapper()."""
    db = two_servers
    User, Item, log_table = define(db)
    await db.create_all()
    async with db.engines[None].connect() as items:
        async with db.session(binds={Item: items}) as session:
            assert session.sync_session.get_bind(Item) is items.sync_connection
            assert session.sync_session.get_bind(User) is db.engines["users"].sync_engine
            assert session.sync_session.get_bind() is db.engine.sync_engine
            session.add_all([User(id=1, name="ada"), Item(id=1, title="lamp")])
            await session.execute(sa.insert(log_table).values(id=1, msg="m"))
            await session.commit()
        await items.commit()
        async with db.engines["users"].connect() as users:
            async with db.session() as session:
                await session.run_sync(lambda s: s.bind_mapper(User, users.sync_connection))
                assert session.sync_session.get_bind(User) is users.sync_connection
                assert session.sync_session.get_bind(Item) is db.engine.sync_engine
                assert (await session.get(User, 1)).name == "ada"
    assert await table_rows(db, "users", "user_account") == [(1, "ada")]
    assert await table_rows(db, "users", "log") == [(1, "m")]
    assert await table_rows(db, None, "item") == [(1, "lamp")]


async def test_binds_by_bind_key_are_checked(two_binds: AsyncBind) -> None:
    db = two_binds
    async with db.engine.connect() as conn:
        with pytest.raises(UnknownBindError, match="'nope'") as info:
            db.session(binds={"nope": conn})
        assert "binds=" in str(info.value)
        with pytest.raises(ConfigError, match=r"binds=\{None: conn\}"):
            db.session(bind=conn, binds={"users": conn})


async def test_a_sync_session_class_per_call_routes_and_others_are_refused(
    two_binds: AsyncBind, make_db: Callable[..., AsyncBind]
) -> None:
    db = two_binds
    User, Item, _ = define(db)
    await db.create_all()

    class Audited(RoutingSession):
        audited = True

    async with db.session(sync_session_class=Audited) as session:
        assert isinstance(session.sync_session, Audited)
        session.add_all([User(id=1, name="ada"), Item(id=1, title="lamp")])
        await session.commit()
    assert await table_rows(db, "users", "user_account") == [(1, "ada")]
    assert await table_rows(db, None, "item") == [(1, "lamp")]

    class Plain(sa.orm.Session):
        pass

    with pytest.raises(ConfigError) as info:
        db.session(sync_session_class=Plain)
    message = str(info.value)
    assert "db.session(sync_session_class=...)" in message and ".Plain'" in message
    assert "class Audited(asyncbind.RoutingSession)" in message
    with pytest.raises(ConfigError, match=r"session_options\['sync_session_class'\].*\.Plain'"):
        make_db(str(db.engine.url), session_options={"sync_session_class": Plain})


async def test_a_class_of_ones_own_keeps_its_sync_session_class(
    two_binds: AsyncBind, make_db: Callable[..., AsyncBind]
) -> None:
    """SQLAlchemy reads ``sync_session_class`` from the AsyncSession class: a ``class_`` that sets
    one keeps it, if it routes."""

    class Mine(RoutingSession):
        mine = True

    class MyAsyncSession(AsyncBindSession):
        sync_session_class = Mine

    url = two_binds.engine.url.render_as_string(hide_password=False)
    users = two_binds.engines["users"].url.render_as_string(hide_password=False)
    db = make_db(url, binds={"users": users}, session_options={"class_": MyAsyncSession})
    User, _, _ = define(db)
    await db.create_all()
    async with db.session() as session:
        assert isinstance(session, MyAsyncSession) and isinstance(session.sync_session, Mine)
        session.add(User(id=1, name="ada"))
        await session.commit()
    assert await table_rows(db, "users", "user_account") == [(1, "ada")]

    class Unrouted(AsyncBindSession):
        sync_session_class = sa.orm.Session

    with pytest.raises(ConfigError, match=r"Unrouted\.sync_session_class'.*RoutingSession"):
        make_db(url, session_options={"class_": Unrouted})


@pytest.mark.sqlite
async def test_a_dropped_asyncbind_is_collected_with_its_engines() -> None:
    """Sessions get their router through the constructor: no class or event listener made per
    AsyncBind keeps one, and its engines, alive."""
    db = AsyncBind("sqlite://", binds={"users": "sqlite://"})
    define(db)
    await db.create_all()
    async with db.session() as session:
        await session.execute(sa.text("SELECT 1"))
    engines = [weakref.ref(engine.sync_engine) for engine in db.engines.values()]
    await db.dispose()
    del db, session
    gc.collect()
    assert [engine() for engine in engines] == [None, None]


async def test_a_thousand_models_statements_are_worked_out_once(
    make_db: Callable[..., AsyncBind], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ORM and Core selects of 1,000 models over 10 binds stay in the router's cache: a
    second pass walks no statement again (what the scaling suite's routing curves measure)."""
    from asyncbind import routing

    keys = [None, *(f"b{i}" for i in range(1, 10))]
    db = make_db(binds={k: f"sqlite:///{tmp_path / f'{k}.db'}" for k in keys})
    questions = []
    for i in range(1000):
        key = keys[i % len(keys)]
        namespace = {
            "__tablename__": f"t{i}",
            "__bind_key__": key,
            "id": mapped_column(sa.Integer, primary_key=True),
        }
        model: Any = type(f"Model{i}", (db.Model,), namespace)
        engine = db.engines[key].sync_engine
        questions.append((sa.inspect(model), sa.select(model).where(model.id == 1), engine))
        questions.append(
            (None, sa.select(model.__table__).where(model.__table__.c.id == 1), engine)
        )
    walked: list[Any] = []
    tables_in = routing._tables_in

    def counted(clause: Any) -> Any:
        walked.append(clause)
        return tables_in(clause)

    monkeypatch.setattr(routing, "_tables_in", counted)
    session = db.session().sync_session
    passes = []
    for _ in range(2):
        for mapper, statement, engine in questions:
            assert session.get_bind(mapper, clause=statement) is engine
        passes.append(len(walked))
    assert passes[0] >= len(questions) and passes[1] == passes[0]


@pytest.mark.sqlite
def test_past_its_bound_the_statement_cache_keeps_the_shapes_in_use(tmp_path: Any) -> None:
    """A router that remembers 10 shapes, sent 300 other shapes between uses of 3 hot ones:
    each hot shape is worked out once, the cache never holds more than 10 shapes, and a shape
    unused since long ago is worked out again."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    users = sa.create_engine(f"sqlite:///{tmp_path / 'users.db'}")
    metadata = sa.MetaData(info={"bind_key": "users"})
    table = sa.Table("t", metadata, sa.Column("id", sa.Integer, primary_key=True))
    router = Router(statement_cache_size=10)
    router.set_engines({None: engine, "users": users})
    hot = [sa.select(table.c.id.label(f"hot{i}")) for i in range(3)]
    cold = [sa.select(table.c.id.label(f"cold{i}")) for i in range(300)]
    for statement in cold:
        for hot_statement in hot:
            assert router.for_statement(None, hot_statement) is users
        assert router.for_statement(None, statement) is users
        assert router.cache_info().shapes <= 10
    info = router.cache_info()
    assert info == ShapeCacheInfo(misses=3 + 300, shapes=info.shapes, max_shapes=20)
    assert 3 < info.shapes <= 10
    assert router.for_statement(None, cold[0]) is users
    assert router.cache_info().misses == 3 + 300 + 1
    metadata.create_all(users)
    with sa_orm.Session(users) as session:
        session.execute(table.insert(), [{"id": 1}])
        assert session.execute(hot[0]).all() == [(1,)]
    users.dispose()
    engine.dispose()


def test_a_statement_cache_of_fewer_than_two_shapes_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"statement cache size is 1.*at least 2"):
        Router(statement_cache_size=1)


def test_the_sqlalchemy_cache_key_routing_remembers_statements_by() -> None:
    """Routing remembers a statement's bind by SQLAlchemy's private
    ``ClauseElement._generate_cache_key().key``: equal for statements of one shape built apart,
    different when a where clause brings in another table, memoized on the statement."""
    metadata = sa.MetaData()
    a = sa.Table("a", metadata, sa.Column("id", sa.Integer, primary_key=True))
    b = sa.Table("b", metadata, sa.Column("id", sa.Integer, primary_key=True))

    def shape(statement: Any) -> Any:
        return statement._generate_cache_key().key

    first = sa.select(a).where(a.c.id == 1)
    assert shape(first) == shape(sa.select(a).where(a.c.id == 2))
    assert shape(first) != shape(sa.select(a).where(a.c.id.in_(sa.select(b.c.id))))
    assert first._generate_cache_key() is first._generate_cache_key()
    # A sequence counts by its name alone, whatever its MetaData: routing caches no statement
    # that takes values from one.
    here, there = sa.Sequence("s", metadata=metadata), sa.Sequence("s", metadata=sa.MetaData())
    assert shape(sa.select(here.next_value())) == shape(sa.select(there.next_value()))


def test_the_sqlalchemy_compile_state_routing_reads_orm_tables_from() -> None:
    """Routing reads the tables the ORM adds to a statement from the statement SQLAlchemy
    compiles, ``Compiled.compile_state.statement`` (the attribute is documented, the state's
    ``statement`` is not): it holds joins along relationships, eager joins and column property
    subqueries. The statement's cache key, by which routing remembers its bind, differs with
    each of them."""

    class Base(sa_orm.DeclarativeBase):
        pass

    class Parent(Base):
        __tablename__ = "parent"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Child(Base):
        __tablename__ = "child"
        id: Mapped[int] = mapped_column(primary_key=True)
        parent_id: Mapped[int] = mapped_column(sa.ForeignKey("parent.id"))
        parent: Mapped[Parent] = sa_orm.relationship()

    Child.parent_name = sa_orm.column_property(
        sa.select(Parent.id).where(Parent.id == Child.parent_id).scalar_subquery()
    )

    def compiled_tables(statement: Any) -> set[str]:
        compiled = statement.compile().compile_state.statement
        return {e.name for e in sa.sql.visitors.iterate(compiled) if isinstance(e, sa.Table)}

    def shape(statement: Any) -> Any:
        return statement._generate_cache_key().key

    plain = sa.select(Child).options(sa_orm.defer(Child.parent_name))
    assert compiled_tables(plain) == {"child"}
    assert compiled_tables(sa.select(Child)) == {"child", "parent"}
    joined = plain.join(Child.parent)
    eager = plain.options(sa_orm.joinedload(Child.parent))
    assert compiled_tables(joined) == compiled_tables(eager) == {"child", "parent"}
    criteria = sa_orm.with_loader_criteria(Child, Child.parent_id.in_(sa.select(Parent.id)))
    assert compiled_tables(sa.delete(Child).options(criteria)) == {"child", "parent"}
    assert len({shape(s) for s in (plain, sa.select(Child), joined, eager)}) == 4
    assert shape(eager) != shape(plain.options(sa_orm.selectinload(Child.parent)))
