"""Declarative models and tables that know which bind they live in.

Every bind key has its own :class:`~sqlalchemy.MetaData` with ``info["bind_key"]`` set. A model's
``__bind_key__`` (inherited from parents, abstract bases and mixins like any class attribute)
chooses the metadata its table is created in; ``db.Table(..., bind_key=...)`` (or
``info={"bind_key": ...}``) does the same for a Core table.

A class hierarchy lives in one bind, and a many-to-many relationship that writes its association
table has its target in that table's bind (SQLAlchemy writes the rows through the target's
connection): other layouts are refused when the class is defined, or when mappers are configured.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

import sqlalchemy as sa
from sqlalchemy import orm as sa_orm

from .config import BindKey
from .exceptions import ConfigError, bind_name

__all__ = [
    "UNSET",
    "AutoTableName",
    "BindKeyMixin",
    "MetadataRegistry",
    "Unset",
    "bind_key_of",
    "default_metadata",
    "make_model_base",
    "make_table",
    "table_name_for",
]

_MISSING: Any = object()


def bind_key_of(table: sa.FromClause | sa.Sequence) -> BindKey:
    """The bind key of ``table`` (or of a sequence): its own ``info["bind_key"]``, else its
    metadata's, else None."""
    info = table.info if isinstance(table, sa.Table | sa.Sequence) else {}
    key = info.get("bind_key", _MISSING)
    if key is _MISSING:
        metadata = getattr(table, "metadata", None)
        key = metadata.info.get("bind_key") if metadata is not None else None
    return key  # type: ignore[no-any-return]


class MetadataRegistry(dict[BindKey, sa.MetaData]):
    """``db.metadatas``: one MetaData per bind key, made when the bind is configured or when a
    model or table first uses the key.

    A new key's metadata copies the default metadata's naming convention, so constraint names are
    the same in every bind.
    """

    def __init__(self, default: sa.MetaData) -> None:
        super().__init__()
        default.info.setdefault("bind_key", None)
        self[default.info["bind_key"]] = default

    def for_key(self, key: BindKey) -> sa.MetaData:
        metadata = self.get(key)
        if metadata is None:
            default = self.get(None)
            convention = default.naming_convention if default is not None else None
            metadata = sa.MetaData(naming_convention=convention, info={"bind_key": key})
            self[key] = metadata
        return metadata


class Unset(enum.Enum):
    """The type of :data:`UNSET`."""

    UNSET = "UNSET"


#: ``db.Table``'s ``bind_key`` when the argument is not given (None names the default bind).
UNSET: Final = Unset.UNSET


def _check_table_key(table: str, key: object, where: str) -> BindKey:
    if key is not None and not isinstance(key, str):
        raise ConfigError(
            f"Table {table!r}: {where} is {key!r}; "
            "expected a bind key string, or None for the default bind."
        )
    return key


def make_table(
    metadatas: MetadataRegistry,
    name: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    bind_key: BindKey | Unset = UNSET,
) -> sa.Table:
    """``db.Table``: a :class:`sqlalchemy.Table` in the metadata of its bind.

    The bind is ``bind_key``, else ``info["bind_key"]`` (how Flask-SQLAlchemy's older docs
    spell it), else the default; the two must agree when both are given. A MetaData passed as
    the first argument is used as it is.
    """
    if args and isinstance(args[0], sa.MetaData):
        return sa.Table(name, *args, **kwargs)
    info = kwargs.get("info") or {}
    key: BindKey = None
    if bind_key is not UNSET:
        key = _check_table_key(name, bind_key, "bind_key=")
    if "bind_key" in info:
        from_info = _check_table_key(name, info["bind_key"], "info['bind_key']")
        if bind_key is not UNSET and from_info != key:
            raise ConfigError(
                f"Table {name!r} is given bind_key={key!r} and info={{'bind_key': "
                f"{from_info!r}}}, which disagree. A table lives in one bind: keep one of them "
                "(bind_key= is enough)."
            )
        key = from_info
    return sa.Table(name, metadatas.for_key(key), *args, **kwargs)


class BindKeyMixin:
    """Puts each mapped subclass's table in the metadata of its ``__bind_key__``.

    ``db.Model`` has it. For models that type checkers understand, put it in a declarative base
    of your own and hand that to asyncbind, which then uses it as ``db.Model``::

        class Base(BindKeyMixin, DeclarativeBase):
            pass

        db = AsyncBind(..., model_class=Base)

        class User(Base):
            __bind_key__ = "users"
            __tablename__ = "users"
    """

    __asyncbind_metadatas__: ClassVar[MetadataRegistry]
    """The registry of the AsyncBind whose ``db.Model`` this is."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        own = cls.__dict__
        if (
            "__asyncbind_metadatas__" not in own
            and "metadata" not in own
            and "__table__" not in own
            and hasattr(cls, "__bind_key__")
        ):
            key = cls.__bind_key__
            if key is not None and not isinstance(key, str):
                raise ConfigError(
                    f"Model {cls.__name__!r}: __bind_key__ is {key!r}; "
                    "expected a bind key string, or None for the default bind."
                )
            metadatas = getattr(cls, "__asyncbind_metadatas__", None)
            if metadatas is None:  # a base of the application's own, not given to an AsyncBind yet
                raise ConfigError(
                    f"Model {cls.__name__!r} has __bind_key__ = {key!r}, but its base "
                    f"{cls.__mro__[1].__name__!r} is no AsyncBind's db.Model yet, so there is "
                    "no metadata of that bind to put its table in. Make the AsyncBind first "
                    "(db = AsyncBind(..., model_class=Base), in the module that defines Base), "
                    "then define the models."
                )
            metadata = metadatas.for_key(key)
            if getattr(cls, "metadata", None) is not metadata:
                cls.metadata = metadata  # type: ignore[attr-defined]
        super().__init_subclass__(**kwargs)
        _check_table_bind(cls)


def _check_table_bind(cls: type) -> None:
    """Refuse a mapped class whose table lives in another bind than its ``__bind_key__`` says:
    queries follow the table, so the declared key would be silently ignored. A subclass with a
    table of its own must live in its base class's bind (see :func:`_check_inherited_bind`)."""
    mapper = cls.__dict__.get("__mapper__")
    if mapper is None or not isinstance(mapper.local_table, sa.Table):
        return
    table = mapper.local_table
    actual = bind_key_of(table)
    _check_inherited_bind(cls, mapper, table)
    if not hasattr(cls, "__bind_key__") or actual == cls.__bind_key__:
        return
    declared = cls.__bind_key__
    if mapper.inherits is not None and mapper.single:
        parent = mapper.inherits.class_.__name__
        raise ConfigError(
            f"Model {cls.__name__!r} has __bind_key__ {declared!r}, but it shares the table "
            f"{table.fullname!r} of {parent!r} (single-table inheritance), which is in "
            f"{bind_name(actual)}. A table lives in one bind: drop __bind_key__ from "
            f"{cls.__name__!r} (it then lives in {bind_name(actual)} with {parent!r}), or make "
            f"it a model of its own instead of a subclass of {parent!r}."
        )
    raise ConfigError(
        f"Model {cls.__name__!r} has __bind_key__ {declared!r}, but its table "
        f"{table.fullname!r} is in {bind_name(actual)}. Make them agree: db.Table(..., "
        f"bind_key={declared!r}) for the table, or the table's bind in __bind_key__."
    )


def _check_inherited_bind(cls: type, mapper: sa_orm.Mapper[Any], own: sa.Table) -> None:
    """Refuse a subclass whose own table (joined or concrete inheritance) is in another bind than
    its base class's: SQLAlchemy's flush writes every class of a hierarchy through the connection
    of the base mapper, so its rows would be written to the base's bind."""
    base = mapper.base_mapper
    if base is mapper or not isinstance(base.local_table, sa.Table):
        return
    actual, expected = bind_key_of(own), bind_key_of(base.local_table)
    if expected == actual:
        return
    kind = "concrete-table" if mapper.concrete else "joined-table"
    name, parent, table = cls.__name__, base.class_.__name__, own.fullname
    raise ConfigError(
        f"Model {name!r} has its table {table!r} in {bind_name(actual)}, but it is a subclass "
        f"of {parent!r} ({kind} inheritance), which is in {bind_name(expected)}. SQLAlchemy "
        f"writes the rows of every class of a hierarchy through the connection of its base "
        f"class, so the rows of {name!r} would be written to {bind_name(expected)}. A class "
        f"hierarchy lives in one bind: keep {table!r} in {bind_name(expected)} with "
        f"{parent!r} (drop __bind_key__ from {name!r}; a __table__ of its own takes "
        f"bind_key={expected!r}), or make {name!r} a model of its own instead of a subclass "
        f"of {parent!r}."
    )


@sa.event.listens_for(sa_orm.Mapper, "mapper_configured")
def _check_association_tables(mapper: sa_orm.Mapper[Any], class_: type) -> None:
    """Refuse, when mappers are configured, a many-to-many relationship whose association rows
    SQLAlchemy would write to another bind than its secondary table's (see
    :func:`_check_association_table`)."""
    for relationship in mapper.relationships:
        _check_association_table(relationship)
        # A backref= made on a target configured earlier is checked here, with its origin.
        if relationship.backref is not None:
            backref = relationship.backref
            name = backref if isinstance(backref, str) else backref[0]
            _check_association_table(relationship.mapper.get_property(name))


def _check_association_table(relationship: sa_orm.MapperProperty[Any]) -> None:
    """Refuse a writable relationship whose secondary table is in another bind than its target.

    SQLAlchemy's flush writes a many-to-many relationship's association rows (INSERT, UPDATE and
    DELETE of its secondary table) through the connection of the relationship's target mapper,
    whatever the table: rows of a table in another bind would land in a same-named table of the
    target's database, or fail there. Of a pair (back_populates, backref), either side may write
    a row, whichever the flush processes first, so both sides' targets must be in the table's
    bind. A viewonly relationship writes nothing.
    """
    if not isinstance(relationship, sa_orm.RelationshipProperty):
        return
    secondary = relationship.secondary
    if relationship.viewonly or not isinstance(secondary, sa.Table):
        return
    target, rows = _bind_of(relationship.mapper), bind_key_of(secondary)
    if target is _MISSING or target == rows:
        return  # a target in several binds is refused by routing when it is used
    name = f"{relationship.parent.class_.__name__}.{relationship.key}"
    table, writer = secondary.fullname, relationship.mapper.class_.__name__
    other = relationship.back_populates
    reverse = f"{writer}.{other}" if isinstance(other, str) else None
    fixes = []
    if reverse is not None and _bind_of(relationship.parent) == rows:
        fixes.append(
            f"drop {name!r} and keep {reverse!r}, whose target is in {bind_name(rows)} "
            f"with {table!r}"
        )
    move = f"put {table!r} in {bind_name(target)} with {writer!r} (bind_key={target!r})"
    if reverse is not None and _bind_of(relationship.parent) != target:
        move += f" and drop {reverse!r}"
    fixes.append(move)
    fixes.append(
        f"map {table!r} as a model of its own (an association object), whose rows go to its "
        "own bind"
    )
    raise ConfigError(
        f"Relationship {name!r} would write its association rows to the wrong database: its "
        f"secondary table {table!r} is in {bind_name(rows)}, but SQLAlchemy writes the rows of "
        f"a many-to-many relationship through the connection of its target, {writer!r}, which "
        f"is in {bind_name(target)} (and loading {name!r} would join {writer!r} and {table!r} "
        "across binds). Across binds, a many-to-many relationship works from the side whose "
        "target is in its table's bind only. To fix it, " + "; or ".join(fixes) + "."
    )


def _bind_of(mapper: sa_orm.Mapper[Any]) -> BindKey:
    """The bind a session routes ``mapper`` to, as routing reads it (its own table's, or the
    tables' it is mapped to); ``_MISSING`` when they are in several binds, or there are none."""
    own = mapper.local_table
    tables = [own] if isinstance(own, sa.Table) else mapper.tables
    keys = {bind_key_of(table) for table in tables if isinstance(table, sa.Table)}
    return next(iter(keys)) if len(keys) == 1 else _MISSING


def table_name_for(class_name: str) -> str:
    """Flask-SQLAlchemy's table name for a model class: ``UserAccount`` -> ``user_account``."""
    # Before a capital that ends a lowercase run or starts a word: HTTPLog -> http_log, and (as
    # Flask-SQLAlchemy) My_Model -> my__model.
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<!^)(?=[A-Z][a-z])", "_", class_name)
    return snake.lower().lstrip("_")


def _is_model(cls: type) -> bool:
    return issubclass(cls, BindKeyMixin) and "__asyncbind_metadatas__" not in cls.__dict__


def _wants_table_name(cls: type) -> bool:
    """Whether ``cls`` should get an automatic ``__tablename__``, as in Flask-SQLAlchemy."""
    own = cls.__dict__
    if own.get("__abstract__", False) or "__table__" in own:
        return False
    for base in cls.__mro__:
        if "__tablename__" not in base.__dict__:
            continue
        if isinstance(base.__dict__["__tablename__"], sa_orm.declared_attr):
            return False
        # A mapped parent's name is its own; a mixin's or abstract base's is meant to be shared.
        return not (base is cls or base.__dict__.get("__abstract__", False) or not _is_model(base))
    return True


class AutoTableName:
    """Names each model's table after its class unless ``__tablename__`` is given.

    A subclass that declares no primary key of its own stays on its parent's table (single-table
    inheritance); one that does gets its own (joined inheritance), as in Flask-SQLAlchemy.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        named = "__asyncbind_metadatas__" not in cls.__dict__ and _wants_table_name(cls)
        if named:
            cls.__tablename__ = table_name_for(cls.__name__)  # type: ignore[attr-defined]
        super().__init_subclass__(**kwargs)
        if named and cls.__dict__.get("__table__", _MISSING) is None:
            del cls.__table__  # type: ignore[attr-defined]  # single-table inheritance

    @classmethod
    def __table_cls__(cls, *args: Any, **kwargs: Any) -> sa.Table | None:
        has_primary_key = any(
            (isinstance(arg, sa.Column) and arg.primary_key)
            or isinstance(arg, sa.PrimaryKeyConstraint)
            for arg in args
        )
        parent_has_table = any("__table__" in base.__dict__ for base in cls.__mro__[1:])
        if has_primary_key or not parent_has_table:
            return sa.Table(*args, **kwargs)
        del cls.__tablename__  # type: ignore[attr-defined]
        return None


class _Repr:
    """Flask-SQLAlchemy's repr, which names the class and primary key without loading anything:
    ``<User 1>``, ``<User (transient 1403...)>``, ``<User (pending 1403...)>``."""

    def __repr__(self) -> str:
        state = sa.inspect(self)
        if state.identity is None:
            where = "pending" if state.pending else "transient"
            return f"<{type(self).__name__} ({where} {id(self)})>"
        ident = ", ".join(map(str, state.identity))
        return f"<{type(self).__name__} {ident}>"


def _is_declarative_base(cls: type) -> bool:
    return issubclass(cls, sa_orm.DeclarativeBase | sa_orm.DeclarativeBaseNoMeta) or isinstance(
        cls, sa_orm.DeclarativeMeta
    )


def _check_model_class(model_class: type | None) -> None:
    if model_class is not None and not isinstance(model_class, type):
        raise ConfigError(
            f"model_class= must be a class (a DeclarativeBase subclass or a mixin), "
            f"not {type(model_class).__name__}."
        )
    if model_class is not None and _is_declarative_base(model_class):
        if hasattr(model_class, "__mapper__"):
            raise ConfigError(
                f"model_class={model_class.__name__!r} is a mapped class; pass its declarative "
                "base (the class that subclasses DeclarativeBase) instead."
            )
        if issubclass(model_class, BindKeyMixin) and "__asyncbind_metadatas__" in vars(model_class):
            raise ConfigError(
                f"model_class={model_class.__name__!r} already belongs to another AsyncBind; "
                "give each AsyncBind a declarative base of its own."
            )


def default_metadata(model_class: type | None) -> sa.MetaData:
    """The default bind's MetaData for ``model_class`` (see :func:`make_model_base`): a declarative
    base's own, else a new one. Raises :class:`ConfigError` for a ``model_class`` that cannot be
    ``db.Model``."""
    _check_model_class(model_class)
    if model_class is not None and _is_declarative_base(model_class):
        metadata = getattr(model_class, "metadata", None)
        return metadata or model_class.registry.metadata  # type: ignore[attr-defined,no-any-return]
    return sa.MetaData(info={"bind_key": None})


def make_model_base(
    model_class: type | None, metadatas: MetadataRegistry, *, autoname: bool = True
) -> type[Any]:
    """Build ``db.Model``, whose models put their tables in ``metadatas`` by ``__bind_key__``.

    ``model_class`` may be a declarative base of the user's own (its metadata is the default
    bind's, made with :func:`default_metadata`), a plain class whose methods every model should
    have, or None. With ``autoname``, models without ``__tablename__`` are named after their class.
    """
    _check_model_class(model_class)
    naming: tuple[type, ...] = (AutoTableName,) if autoname else ()
    if model_class is not None and _is_declarative_base(model_class):
        if issubclass(model_class, BindKeyMixin):
            # The user's own base already routes by __bind_key__: it is db.Model itself.
            model_class.__asyncbind_metadatas__ = metadatas
            return model_class
        # _Repr after the user's base: a __repr__ of its own comes first.
        metaclass: Any = type(model_class)
        base: type[Any] = metaclass(
            "Model",
            (BindKeyMixin, *naming, model_class, _Repr),
            {"__abstract__": True, "__asyncbind_metadatas__": metadatas, "__module__": __name__},
        )
        return base
    mixins = (model_class,) if model_class else ()
    bases = (BindKeyMixin, *naming, *mixins, _Repr, sa_orm.DeclarativeBase)
    body = {
        "metadata": metadatas[None],
        "__asyncbind_metadatas__": metadatas,
        "__module__": __name__,
    }
    return type("Model", bases, body)
