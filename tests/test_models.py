"""Models and tables: one MetaData per bind key, __bind_key__ inheritance, db.Table, model_class."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import NewDatabase
from sqlalchemy import orm as sa_orm
from sqlalchemy.orm import Mapped, foreign, mapped_column, relationship, selectinload

from asyncbind import AsyncBind, ConfigError
from asyncbind.models import (
    MetadataRegistry,
    bind_key_of,
    default_metadata,
    make_model_base,
    table_name_for,
)


@pytest.fixture
def db() -> AsyncBind:
    return AsyncBind("sqlite://", binds={"users": "sqlite://", "meta": "sqlite://"})


def test_each_bind_key_has_its_own_metadata(db: AsyncBind) -> None:
    class User(db.Model):
        __bind_key__ = "users"
        __tablename__ = "user"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Item(db.Model):
        __tablename__ = "item"
        id: Mapped[int] = mapped_column(primary_key=True)

    assert User.__table__.metadata is db.metadatas["users"]
    assert Item.__table__.metadata is db.metadata is db.metadatas[None]
    assert db.metadatas["users"].info["bind_key"] == "users"
    assert db.metadata.info["bind_key"] is None
    assert bind_key_of(User.__table__) == "users"
    assert isinstance(db.Model, type) and issubclass(db.Model, sa_orm.DeclarativeBase)


def test_bind_key_is_inherited_from_abstract_bases_and_mixins(db: AsyncBind) -> None:
    class UsersMixin:
        __bind_key__ = "users"

    class Abstract(db.Model):
        __abstract__ = True
        __bind_key__ = "meta"

    class FromMixin(UsersMixin, db.Model):
        __tablename__ = "from_mixin"
        id: Mapped[int] = mapped_column(primary_key=True)

    class FromAbstract(Abstract):
        __tablename__ = "from_abstract"
        id: Mapped[int] = mapped_column(primary_key=True)

    class BackToDefault(Abstract):
        __bind_key__ = None
        __tablename__ = "back_to_default"
        id: Mapped[int] = mapped_column(primary_key=True)

    assert bind_key_of(FromMixin.__table__) == "users"
    assert bind_key_of(FromAbstract.__table__) == "meta"
    assert bind_key_of(BackToDefault.__table__) is None


def test_joined_and_single_table_inheritance(db: AsyncBind) -> None:
    class Person(db.Model):
        __bind_key__ = "users"
        __tablename__ = "person"
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str]
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "person"}

    class Engineer(Person):  # joined: its own table, same bind
        __tablename__ = "engineer"
        id: Mapped[int] = mapped_column(sa.ForeignKey("person.id"), primary_key=True)
        __mapper_args__ = {"polymorphic_identity": "engineer"}

    class Manager(Person):  # single table: stays on the parent's table
        __mapper_args__ = {"polymorphic_identity": "manager"}

    assert Engineer.__table__.metadata is db.metadatas["users"]
    assert Manager.__table__ is Person.__table__
    assert sa.inspect(Manager).local_table is Person.__table__

    with pytest.raises(ConfigError) as error:

        class Director(Person):  # would share 'person', which is in bind 'users'
            __bind_key__ = "meta"
            __mapper_args__ = {"polymorphic_identity": "director"}

    message = str(error.value)
    assert "'Director'" in message and "'meta'" in message and "'users'" in message
    assert "single-table inheritance" in message and "drop __bind_key__" in message
    sa_orm.configure_mappers()  # the refused class left nothing broken behind


def test_a_subclass_with_a_table_in_another_bind_is_refused(db: AsyncBind) -> None:
    """SQLAlchemy writes every class of a hierarchy through its base mapper's connection: a
    subclass's own table in another bind would get its rows in the base's database."""

    class Person(db.Model):
        __bind_key__ = "users"
        __tablename__ = "person"
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str]
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "person"}

    contractors = db.Table(
        "contractor", sa.Column("person_id", sa.Integer, primary_key=True), bind_key="meta"
    )
    with pytest.raises(ConfigError) as joined:

        class Contractor(Person):  # its own table, in 'meta': joined-table inheritance
            __bind_key__ = "meta"
            __table__ = contractors
            __mapper_args__ = {
                "polymorphic_identity": "contractor",
                "inherit_condition": contractors.c.person_id == Person.__table__.c.id,
            }

    message = str(joined.value)
    assert "'Contractor'" in message and "'contractor'" in message and "'Person'" in message
    assert "in bind 'meta'" in message and "in bind 'users'" in message
    assert "joined-table inheritance" in message
    assert "drop __bind_key__ from 'Contractor'" in message and "bind_key='users'" in message

    with pytest.raises(
        ConfigError, match=r"'Consultant'.*concrete-table inheritance.*bind 'users'"
    ):

        class Consultant(Person):
            __bind_key__ = "meta"
            __tablename__ = "consultant"
            id: Mapped[int] = mapped_column(primary_key=True)
            kind: Mapped[str]
            __mapper_args__ = {"concrete": True, "polymorphic_identity": "consultant"}

    with pytest.raises(ConfigError, match=r"'Intern'.*in the default bind.*joined-table"):

        class Intern(Person):  # no __bind_key__ of its own, but a table in the default bind
            __table__ = db.Table("intern", sa.Column("person_id", sa.Integer, primary_key=True))
            __mapper_args__ = {
                "polymorphic_identity": "intern",
                "inherit_condition": __table__.c.person_id == Person.__table__.c.id,
            }

    class Engineer(Person):  # its own table in the base's bind: accepted
        __tablename__ = "engineer"
        id: Mapped[int] = mapped_column(sa.ForeignKey("person.id"), primary_key=True)
        __mapper_args__ = {"polymorphic_identity": "engineer"}

    class Lead(Engineer):  # two levels down, still in the base's bind
        __tablename__ = "lead"
        id: Mapped[int] = mapped_column(sa.ForeignKey("engineer.id"), primary_key=True)
        __mapper_args__ = {"polymorphic_identity": "lead"}

    assert bind_key_of(Lead.__table__) == bind_key_of(Engineer.__table__) == "users"


def test_a_model_whose_table_is_in_another_bind_is_refused(db: AsyncBind) -> None:
    with pytest.raises(ConfigError, match=r"'Audit' has __bind_key__ 'users'.*in bind 'meta'"):

        class Audit(db.Model):
            __bind_key__ = "users"
            __table__ = db.Table(
                "audit", sa.Column("id", sa.Integer, primary_key=True), bind_key="meta"
            )

    with pytest.raises(
        ConfigError, match=r"'Ledger' has __bind_key__ 'users'.*in the default bind"
    ):

        class Ledger(db.Model):
            __bind_key__ = "users"
            __table__ = db.Table("ledger", sa.Column("id", sa.Integer, primary_key=True))

    class Agreed(db.Model):
        __bind_key__ = "meta"
        __table__ = db.Table(
            "agreed", sa.Column("id", sa.Integer, primary_key=True), bind_key="meta"
        )

    assert bind_key_of(Agreed.__table__) == "meta"


def configure(db: AsyncBind) -> None:
    """Configure ``db``'s mappers; a configuration refused is disposed of, so that no other test's
    ``configure_mappers()`` meets it."""
    try:
        db.Model.registry.configure()
    except Exception:
        db.Model.registry.dispose()
        raise


def post_and_label(db: AsyncBind, *, posts: str | None, labels: str | None) -> tuple[Any, Any]:
    """``Post`` in bind ``posts`` and ``Label`` in bind ``labels``, no relationship yet."""

    class Post(db.Model):
        __bind_key__ = posts
        __tablename__ = "post"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Label(db.Model):
        __bind_key__ = labels
        __tablename__ = "label"
        id: Mapped[int] = mapped_column(primary_key=True)

    return Post, Label


def association(db: AsyncBind, bind_key: str | None) -> sa.Table:
    """``post_labels``, with no foreign keys (its rows point into other binds)."""
    return db.Table(
        "post_labels",
        sa.Column("post_id", sa.Integer, primary_key=True),
        sa.Column("label_id", sa.Integer, primary_key=True),
        bind_key=bind_key,
    )


def link(parent: Any, target: Any, table: sa.Table, **kwargs: Any) -> Any:
    """A many-to-many relationship from ``parent`` to ``target`` through ``table``."""
    ours = table.c.post_id if parent.__name__ == "Post" else table.c.label_id
    theirs = table.c.label_id if parent.__name__ == "Post" else table.c.post_id
    return relationship(
        target,
        secondary=table,
        primaryjoin=lambda: parent.id == foreign(ours),
        secondaryjoin=lambda: foreign(theirs) == target.id,
        **kwargs,
    )


def test_a_many_to_many_pair_across_binds_is_refused(db: AsyncBind) -> None:
    """SQLAlchemy writes a relationship's association rows through its target's connection:
    'Label.posts' would write rows of a table in 'meta' to bind 'users', where 'Post' is."""
    Post, Label = post_and_label(db, posts="users", labels="meta")
    table = association(db, "meta")
    Post.labels = link(Post, Label, table, back_populates="posts")
    Label.posts = link(Label, Post, table, back_populates="labels")
    with pytest.raises(ConfigError) as error:
        configure(db)
    message = str(error.value)
    assert "Relationship 'Label.posts'" in message and "'post_labels' is in bind 'meta'" in message
    assert "its target, 'Post', which is in bind 'users'" in message
    assert "drop 'Label.posts' and keep 'Post.labels'" in message
    assert "put 'post_labels' in bind 'users' with 'Post'" in message
    assert "and drop 'Post.labels'" in message and "association object" in message
    sa_orm.configure_mappers()  # the refused registry left nothing broken behind


def test_a_backref_made_on_a_target_configured_before_is_checked(db: AsyncBind) -> None:
    """'Label' is configured first (models are configured in the order they were defined);
    'Post.labels' then makes 'Label.posts' on it."""

    class Label(db.Model):
        __bind_key__ = "meta"
        __tablename__ = "label"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Post(db.Model):
        __bind_key__ = "users"
        __tablename__ = "post"
        id: Mapped[int] = mapped_column(primary_key=True)

    Post.labels = link(Post, Label, association(db, "meta"), backref="posts")
    with pytest.raises(ConfigError, match=r"Relationship 'Label.posts' .* in bind 'users'"):
        configure(db)


@pytest.mark.parametrize(
    ("posts", "labels", "table", "fix"),
    [
        # From the side whose target is elsewhere: the table goes with the target.
        ("users", "meta", "meta", "put 'post_labels' in bind 'users' with 'Post' (bind_key="),
        # Both models in one bind, the table in another: it goes with them.
        ("users", "users", None, "put 'post_labels' in bind 'users' with 'Post'"),
    ],
    ids=["other-side", "table-elsewhere"],
)
def test_a_many_to_many_whose_target_is_not_in_its_tables_bind_is_refused(
    db: AsyncBind, posts: str, labels: str, table: str | None, fix: str
) -> None:
    Post, Label = post_and_label(db, posts=posts, labels=labels)
    Label.posts = link(Label, Post, association(db, table))
    with pytest.raises(ConfigError) as error:
        configure(db)
    message = str(error.value)
    assert "Relationship 'Label.posts'" in message and fix in message
    assert "and drop" not in message and "keep" not in message


def test_a_many_to_many_from_the_side_of_its_tables_bind_is_accepted(db: AsyncBind) -> None:
    Post, Label = post_and_label(db, posts="users", labels="meta")
    table = association(db, "meta")
    Post.labels = link(Post, Label, table)  # target 'Label' in 'meta', with the table
    Label.posts = link(Label, Post, table, viewonly=True)  # writes nothing
    configure(db)

    class Tag(db.Model):  # both sides and the table in one bind
        __bind_key__ = "meta"
        __tablename__ = "tag"
        id: Mapped[int] = mapped_column(primary_key=True)
        labels = relationship(Label, secondary=lambda: tag_labels, backref="tags")

    tag_labels = db.Table(
        "tag_labels",
        sa.Column("tag_id", sa.ForeignKey("tag.id"), primary_key=True),
        sa.Column("label_id", sa.ForeignKey("label.id"), primary_key=True),
        bind_key="meta",
    )
    configure(db)


@pytest.mark.postgresql
@pytest.mark.mysql
async def test_a_many_to_many_across_binds_writes_its_rows_in_its_tables_bind(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """'Post' on PostgreSQL, 'Label' and the association table on MariaDB: 'Post.labels' inserts
    and deletes the association rows on MariaDB, none on PostgreSQL (which has a table of that
    name, as one left over from before a split would be)."""
    db = make_db(await new_database("postgresql"), binds={"labels": await new_database("mysql")})
    Post, Label = post_and_label(db, posts=None, labels="labels")
    table = association(db, "labels")
    Post.labels = link(Post, Label, table)
    await db.create_all()
    async with db.engines[None].begin() as conn:
        await conn.execute(sa.text("CREATE TABLE post_labels (post_id int, label_id int)"))

    async def rows() -> dict[str | None, list[tuple[int, int]]]:
        found = {}
        for key in (None, "labels"):
            async with db.engines[key].connect() as conn:
                sql = "SELECT post_id, label_id FROM post_labels ORDER BY post_id, label_id"
                found[key] = [tuple(row) for row in await conn.execute(sa.text(sql))]
        return found

    async with db.session() as session:
        session.add_all([Post(id=1), Post(id=2), Label(id=1), Label(id=2)])
        await session.commit()
    async with db.session() as session:
        post = await session.get(Post, 1, options=[selectinload(Post.labels)])
        post.labels.append(await session.get(Label, 1))
        post.labels.append(Label(id=3))
        session.add(Post(id=3, labels=[await session.get(Label, 2)]))
        await session.commit()
    assert await rows() == {None: [], "labels": [(1, 1), (1, 3), (3, 2)]}

    async with db.session() as session:
        post = await session.get(Post, 1, options=[selectinload(Post.labels)])
        assert sorted(label.id for label in post.labels) == [1, 3]
        post.labels.remove(await session.get(Label, 1))
        await session.delete(await session.get(Post, 3))
        await session.commit()
    assert await rows() == {None: [], "labels": [(1, 3)]}


@pytest.mark.postgresql
@pytest.mark.mysql
async def test_an_association_object_across_binds_writes_its_rows_in_its_bind(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """The other fix the refusal names: the association table mapped as a model of its own."""
    db = make_db(await new_database("postgresql"), binds={"labels": await new_database("mysql")})
    Post, Label = post_and_label(db, posts=None, labels="labels")

    class PostLabel(db.Model):
        __table__ = association(db, "labels")
        __bind_key__ = "labels"
        label = relationship(Label, primaryjoin=lambda: foreign(PostLabel.label_id) == Label.id)

    Post.post_labels = relationship(
        PostLabel, primaryjoin=lambda: Post.id == foreign(PostLabel.post_id)
    )
    await db.create_all()
    async with db.session() as session:
        session.add_all([Post(id=1), Label(id=1)])
        await session.flush()
        post = await session.get(Post, 1, options=[selectinload(Post.post_labels)])
        post.post_labels.append(PostLabel(label=await session.get(Label, 1)))
        post.post_labels.append(PostLabel(label=Label(id=2)))
        await session.commit()
    async with db.engines["labels"].connect() as conn:
        sql = "SELECT post_id, label_id FROM post_labels ORDER BY label_id"
        assert [tuple(row) for row in await conn.execute(sa.text(sql))] == [(1, 1), (1, 2)]
    async with db.engines[None].connect() as conn:
        assert not await conn.run_sync(lambda sync: sa.inspect(sync).has_table("post_labels"))


@pytest.mark.postgresql
@pytest.mark.mysql
async def test_a_many_to_many_pair_across_binds_writes_nothing(
    new_database: NewDatabase, make_db: Callable[..., AsyncBind]
) -> None:
    """The pair that wrote 'Label.posts' rows to PostgreSQL is refused at its first use."""
    db = make_db(await new_database("postgresql"), binds={"labels": await new_database("mysql")})
    Post, Label = post_and_label(db, posts=None, labels="labels")
    table = association(db, "labels")
    Post.labels = link(Post, Label, table, back_populates="posts")
    Label.posts = link(Label, Post, table, back_populates="labels")
    await db.create_all()
    async with db.engines[None].begin() as conn:
        await conn.execute(sa.text("CREATE TABLE post_labels (post_id int, label_id int)"))
    try:
        with pytest.raises(ConfigError, match=r"Relationship 'Label\.posts'"):
            async with db.session() as session:
                session.add(Label(id=1, posts=[Post(id=1)]))
                await session.commit()
    finally:
        db.Model.registry.dispose()
    for key in (None, "labels"):
        async with db.engines[key].connect() as conn:
            count = await conn.execute(sa.text("SELECT count(*) FROM post_labels"))
            assert count.scalar_one() == 0


def test_db_table_goes_to_its_bind(db: AsyncBind) -> None:
    log = db.Table("log", sa.Column("id", sa.Integer, primary_key=True), bind_key="meta")
    plain = db.Table("plain", sa.Column("id", sa.Integer, primary_key=True))
    own = sa.MetaData()
    explicit = db.Table("explicit", own, sa.Column("id", sa.Integer, primary_key=True))
    assert log.metadata is db.metadatas["meta"]
    assert plain.metadata is db.metadata
    assert explicit.metadata is own


def test_naming_convention_is_shared_by_every_bind() -> None:
    class Base(sa_orm.DeclarativeBase):
        metadata = sa.MetaData(naming_convention={"pk": "pk_%(table_name)s"})

    db = AsyncBind("sqlite://", binds={"users": "sqlite://"}, model_class=Base)
    assert db.metadatas.for_key("users").naming_convention["pk"] == "pk_%(table_name)s"


def test_model_class_a_declarative_base_of_your_own() -> None:
    class Base(sa_orm.DeclarativeBase):
        def hello(self) -> str:
            return "hi"

    db = AsyncBind("sqlite://", binds={"users": "sqlite://"}, model_class=Base)

    class User(db.Model):
        __bind_key__ = "users"
        __tablename__ = "user"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Item(db.Model):
        __tablename__ = "item"
        id: Mapped[int] = mapped_column(primary_key=True)

    assert issubclass(User, Base)
    assert User().hello() == "hi"
    # Flask-SQLAlchemy's repr, as with the default base.
    user = User()
    assert repr(user) == f"<User (transient {id(user)})>"
    assert db.metadata is Base.metadata
    assert Item.__table__.metadata is Base.metadata
    assert User.__table__.metadata is db.metadatas["users"]


def test_model_class_a_mixin() -> None:
    class Mixin:
        def hello(self) -> str:
            return "hi"

    db = AsyncBind("sqlite://", model_class=Mixin)

    class Item(db.Model):
        __tablename__ = "item"
        id: Mapped[int] = mapped_column(primary_key=True)

    assert Item().hello() == "hi"
    assert "transient" in repr(Item())


def test_a_repr_of_your_own_base_comes_first() -> None:
    class Base(sa_orm.DeclarativeBase):
        def __repr__(self) -> str:
            return "mine"

    db = AsyncBind("sqlite://", model_class=Base)

    class Item(db.Model):
        id: Mapped[int] = mapped_column(primary_key=True)

    assert repr(Item()) == "mine"


async def test_repr_names_the_primary_key_or_the_state() -> None:
    """Flask-SQLAlchemy's ``test_repr``: transient, pending, then the primary key."""
    db = AsyncBind("sqlite://")

    class Item(db.Model):
        id: Mapped[int] = mapped_column(primary_key=True)
        other: Mapped[int] = mapped_column(primary_key=True)

    try:
        await db.create_all()
        item = Item(id=1, other=2)
        assert repr(item) == f"<Item (transient {id(item)})>"
        async with db.session() as session:
            session.add(item)
            assert repr(item) == f"<Item (pending {id(item)})>"
            await session.commit()
            assert repr(item) == "<Item 1, 2>"
    finally:
        await db.dispose()


def test_model_class_errors() -> None:
    class Base(sa_orm.DeclarativeBase):
        pass

    class MappedModel(Base):
        __tablename__ = "m"
        id: Mapped[int] = mapped_column(primary_key=True)

    with pytest.raises(ConfigError, match="is a mapped class"):
        AsyncBind("sqlite://", model_class=MappedModel)
    with pytest.raises(ConfigError, match="must be a class"):
        AsyncBind("sqlite://", model_class="nope")  # type: ignore[arg-type]


def test_bad_bind_key_type_on_a_model(db: AsyncBind) -> None:
    with pytest.raises(ConfigError, match="Model 'Bad': __bind_key__ is 5"):

        class Bad(db.Model):
            __bind_key__ = 5
            __tablename__ = "bad"
            id: Mapped[int] = mapped_column(primary_key=True)


def test_tables_made_elsewhere_carry_their_bind_in_info() -> None:
    metadata = sa.MetaData(info={"bind_key": "meta"})
    by_metadata = sa.Table("a", metadata, sa.Column("id", sa.Integer))
    by_table = sa.Table("b", sa.MetaData(), sa.Column("id", sa.Integer), info={"bind_key": "users"})
    overridden = sa.Table("c", metadata, sa.Column("id", sa.Integer), info={"bind_key": None})
    assert bind_key_of(by_metadata) == "meta"
    assert bind_key_of(by_table) == "users"
    assert bind_key_of(overridden) is None
    assert bind_key_of(sa.Table("d", sa.MetaData(), sa.Column("id", sa.Integer))) is None


def test_tables_are_named_after_their_class_as_in_flask_sqlalchemy(db: AsyncBind) -> None:
    class UserAccount(db.Model):
        __bind_key__ = "users"
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str]
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "user"}

    class Admin(UserAccount):  # no primary key of its own: single-table inheritance
        __mapper_args__ = {"polymorphic_identity": "admin"}

    class Engineer(UserAccount):  # its own primary key: joined inheritance
        id: Mapped[int] = mapped_column(sa.ForeignKey("user_account.id"), primary_key=True)
        __mapper_args__ = {"polymorphic_identity": "engineer"}

    class HTTPRequestLog(db.Model):
        id: Mapped[int] = mapped_column(primary_key=True)

    class Named(db.Model):
        __tablename__ = "explicit_name"
        id: Mapped[int] = mapped_column(primary_key=True)

    class NamedByMixin:
        __tablename__ = "from_mixin"

    class Mixed(NamedByMixin, db.Model):
        id: Mapped[int] = mapped_column(primary_key=True)

    assert UserAccount.__table__.name == "user_account"
    assert Admin.__table__ is UserAccount.__table__ and sa.inspect(Admin).single
    assert Engineer.__table__.name == "engineer"
    assert Engineer.__table__.metadata is db.metadatas["users"]
    assert HTTPRequestLog.__table__.name == "http_request_log"
    assert Named.__table__.name == "explicit_name"
    assert Mixed.__table__.name == "from_mixin"


@pytest.mark.parametrize(
    ("class_name", "table_name"),
    [
        ("User", "user"),
        ("UserAccount", "user_account"),
        ("HTTPLog", "http_log"),
        ("APIKey", "api_key"),
        ("OAuth2Token", "o_auth2_token"),
        ("User2FA", "user2_fa"),
        ("IPv4Address", "i_pv4_address"),
        ("getHTTPResponseCode", "get_http_response_code"),
        ("ABC", "abc"),
        # An underscore before a capital is kept, and one is added: existing tables of an app
        # ported from Flask-SQLAlchemy have these names.
        ("My_Model", "my__model"),
        ("Legacy_OrderLine", "legacy__order_line"),
        ("_Private", "private"),
        ("a_B_C", "a_b_c"),
    ],
)
def test_table_names_are_flask_sqlalchemys(class_name: str, table_name: str) -> None:
    """The names Flask-SQLAlchemy 3.1's camel_to_snake_case gives (checked against it)."""
    assert table_name_for(class_name) == table_name


def test_autonaming_can_be_disabled() -> None:
    db = AsyncBind("sqlite://", disable_autonaming=True)
    with pytest.raises(sa.exc.InvalidRequestError, match="__tablename__"):

        class Nameless(db.Model):
            id: Mapped[int] = mapped_column(primary_key=True)


def test_a_bind_keyed_model_before_its_asyncbind_is_a_config_error() -> None:
    from asyncbind import BindKeyMixin

    class Base(BindKeyMixin, sa_orm.DeclarativeBase):
        pass

    with pytest.raises(
        ConfigError,
        match=r"Model 'User' has __bind_key__ = 'users', but its base "
        r"'Base' is no AsyncBind's db.Model yet.*Make the AsyncBind first",
    ):

        class User(Base):
            __bind_key__ = "users"
            __tablename__ = "users"
            id: Mapped[int] = mapped_column(primary_key=True)


def test_a_typed_base_of_your_own_with_the_bind_key_mixin() -> None:
    from asyncbind import BindKeyMixin

    class Base(BindKeyMixin, sa_orm.DeclarativeBase):
        pass

    db = AsyncBind("sqlite://", binds={"users": "sqlite://"}, model_class=Base)
    assert db.Model is Base and db.metadata is Base.metadata

    class User(Base):
        __bind_key__ = "users"
        __tablename__ = "users"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Item(Base):
        __tablename__ = "items"
        id: Mapped[int] = mapped_column(primary_key=True)

    assert User.__table__.metadata is db.metadatas["users"]
    assert Item.__table__.metadata is db.metadata
    with pytest.raises(ConfigError, match="already belongs to another AsyncBind"):
        AsyncBind("sqlite://", model_class=Base)


def test_a_model_base_puts_tables_in_the_registry_it_is_given() -> None:
    """The metadata registry exists before the base that uses it (no call back into AsyncBind)."""
    metadatas = MetadataRegistry(default_metadata(None))
    Base = make_model_base(None, metadatas)

    class Log(Base):
        __bind_key__ = "logs"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Note(Base):
        id: Mapped[int] = mapped_column(primary_key=True)

    assert Log.__table__.metadata is metadatas["logs"] and Log.__tablename__ == "log"
    assert Note.__table__.metadata is metadatas[None] is Base.metadata
    assert metadatas["logs"].info == {"bind_key": "logs"}
