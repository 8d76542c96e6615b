"""Routing: which engine a statement goes to.

SQLAlchemy asks the *sync* :class:`~sqlalchemy.orm.Session` wrapped by an ``AsyncSession`` for its
bind, never ``AsyncSession.get_bind``. :class:`RoutingSession` answers with the ``sync_engine`` of
the right bind, in Flask-SQLAlchemy's order: an explicit ``bind``, an explicit ``bind_key``, the
mapper's table, the tables in the statement, then the default bind. A session given ``bind=`` or
``binds=`` of its own answers from those first, as SQLAlchemy's does.

This runs on every statement. A mapper's bind is worked out once; a statement's bind is cached by
the statement's SQL cache key, which SQLAlchemy memoizes on the statement and reuses to find the
compiled SQL, so a cache hit costs a dict lookup (most of it hashing that key).

A bind removed at run time (``db.remove_bind()``) keeps its engine until the sessions using it
are done. Meanwhile a session whose transaction holds a connection of that engine goes on sending
the key's statements there, even if the key has been added again with another database: one
transaction never spans two databases of a key. Its next transaction, and every other session,
gets the key's engine now (or :class:`UnknownBindError`). Only the statements of such a key pay
for the question, and only while that engine is in use.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Protocol, TypeGuard, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import orm as sa_orm
from sqlalchemy.sql import functions, visitors
from sqlalchemy.util import EMPTY_DICT

from . import commits, readonly, twophase
from .config import BindKey
from .exceptions import (
    ConfigError,
    CrossBindError,
    ReadOnlyBindError,
    TenantMismatchError,
    TwoPhasePrepareError,
    UnknownBindError,
    UnresolvedTenantError,
)
from .models import bind_key_of

if TYPE_CHECKING:
    from .replicas import ReplicaSet, SessionReplicas

__all__ = [
    "SESSION_TENANTS",
    "Group",
    "OuterTransactions",
    "Router",
    "RoutingSession",
    "ShapeCacheInfo",
    "check_session_class",
]

_MISSING: Any = object()
_NO_BINDS: Mapping[Any, Any] = MappingProxyType({})
#: The execution option that sends one statement to the primary:
#: ``select(User).execution_options(use_primary=True)`` (see :mod:`asyncbind.replicas`).
USE_PRIMARY = "use_primary"
#: The ``session.info`` key of the tenant a session works with, by group key.
SESSION_TENANTS = "asyncbind.tenants"
#: How many statement shapes the router remembers: enough for a thousand models' usual statements
#: (a few shapes each), since a miss walks the whole statement. An entry keeps the statement's
#: cache key alive, about 3 KB. (SQLAlchemy's compiled cache holds 500 per engine.)
STATEMENT_CACHE_SIZE = 5000

_V = TypeVar("_V")


class ShapeCacheInfo(NamedTuple):
    """What :meth:`Router.cache_info` reports about the router's statement shapes."""

    #: Statements whose shape was not cached, so that their tables were looked up.
    misses: int
    #: Shapes cached now.
    shapes: int
    #: The most shapes the router keeps.
    max_shapes: int


class _Shapes(Generic[_V]):
    """Routing decisions by statement shape, at most ``size`` of them, in two generations.

    A lookup reads ``recent`` first; a shape found only in ``older`` moves back to ``recent``.
    When ``recent`` holds half of ``size`` it becomes ``older``, and the shapes left in the
    previous ``older`` (unused for a whole generation) are dropped. A shape used at least once a
    generation stays, and a hit in ``recent`` is one dict lookup: no bookkeeping per hit, which an
    LRU's move-to-front would add to every statement.
    """

    __slots__ = ("older", "recent", "size")

    def __init__(self, size: int) -> None:
        if size < 2:
            raise ConfigError(
                f"The statement cache size is {size!r}; it must be at least 2 (two generations "
                f"of at least one shape). The default is {STATEMENT_CACHE_SIZE}."
            )
        self.size = size
        self.recent: dict[Hashable, _V] = {}
        self.older: dict[Hashable, _V] = {}

    def __len__(self) -> int:
        return len(self.recent) + len(self.older)

    def recall(self, shape: Hashable) -> _V | None:
        """The value of ``shape`` from the older generation, moved back to the recent one; None
        when the older one has none."""
        found = self.older.pop(shape, None)
        if found is not None:
            self.add(shape, found)
        return found

    def add(self, shape: Hashable, value: _V) -> None:
        if len(self.recent) >= self.size // 2:
            self.older = self.recent
            self.recent = {}
        self.recent[shape] = value

    def clear(self) -> None:
        self.recent = {}
        self.older = {}


class Group(Protocol):
    """A bind key whose engine depends on the running context (a tenant group, see
    :mod:`asyncbind.tenants`)."""

    def sync_engine(self, owner: str | None = None) -> sa.Engine:
        """The engine for the running context; ``owner`` names what asked, for errors."""
        ...

    def tenant_engine(self, tenant: str) -> sa.Engine:
        """The engine of ``tenant``."""
        ...

    def current_tenant(self) -> str | None:
        """The tenant routed in the running context, or None."""
        ...


class OuterTransactions(Protocol):
    """The transactions a test rolls back (:func:`asyncbind.testing.rolled_back`): a session given
    them joins them, through SAVEPOINTs, on every engine it uses."""

    def connection(self, engine: sa.Engine) -> sa.Connection | None:
        """The connection to use for ``engine``, in its outer transaction (opened on first use:
        called in the session's sync code, which may connect); None for an engine that is not
        the AsyncBind's (one of the session's own, used as it is)."""
        ...

    async def release(self, engine: sa.Engine) -> None:
        """Roll back and close ``engine``'s connection now, if it has one: its bind was removed
        (``db.remove_bind()`` waits for every connection of the bind to come back)."""
        ...


class _EarlierEngines(Exception):  # noqa: N818 (a signal, not an error)
    """What the router raises for a bind key that has *earlier engines*: engines of binds removed
    under that key (``db.remove_bind()``) that sessions may still hold connections of. Which
    engine a statement of the key goes to then depends on the session's transaction:
    :meth:`RoutingSession.get_bind` answers it, and this never reaches the application."""

    def __init__(self, key: BindKey, owner: str | None, engines: tuple[sa.Engine, ...]) -> None:
        super().__init__(key)
        self.key = key
        self.owner = owner
        self.engines = engines


class Router:
    """Maps mappers and statements to the sync engine of their bind.

    A group's engine changes with the context, so it is never cached: the caches of mappers and
    statement shapes hold engines of ordinary binds only, and a group's mappers and shapes are
    remembered apart, on the cache-miss path, so that ordinary binds route exactly as fast.

    A key with earlier engines (:meth:`hold`) is never cached either: the router raises
    :class:`_EarlierEngines` for it until they are released, so that ordinary binds pay nothing.

    ``statement_cache_size`` bounds the statement shapes remembered for ordinary binds, and
    apart from them those of groups; past it, shapes unused for a while are forgotten first, and
    shapes in use stay.
    """

    __slots__ = (
        "_current",
        "_earlier",
        "_engines",
        "_grouped",
        "_groups",
        "_mapper_keys",
        "_mappers",
        "_misses",
        "_order",
        "_read_only",
        "_read_only_engines",
        "_statements",
        "has_replicas",
        "replicas",
        "twophase",
    )

    def __init__(self, statement_cache_size: int = STATEMENT_CACHE_SIZE) -> None:
        #: Every bind's engine, by key.
        self._current: dict[BindKey, sa.Engine] = {}
        #: Engines of removed binds that sessions may still use, by key (see hold()).
        self._earlier: dict[BindKey, tuple[sa.Engine, ...]] = {}
        #: What routes without asking: the engines of the keys with no earlier engines.
        self._engines: dict[BindKey, sa.Engine] = {}
        self._read_only: frozenset[BindKey] = frozenset()
        self._read_only_engines: dict[sa.Engine, BindKey] = {}
        self._order: dict[sa.Engine, tuple[int, BindKey]] = {}
        self._mappers: dict[Any, sa.Engine] = {}
        self._mapper_keys: dict[Any, tuple[BindKey, str, str]] = {}
        self._statements: _Shapes[sa.Engine] = _Shapes(statement_cache_size)
        self._misses = 0
        #: The replicas of the binds that have some, by the primary's engine.
        self.replicas: Mapping[sa.Engine, ReplicaSet] = _NO_BINDS
        #: The two-phase commits of sessions made with ``twophase=True``.
        self.twophase: twophase.Coordinator | None = None
        #: Whether any bind has replicas (sessions then leave get_bind()'s fast path).
        self.has_replicas = False
        self._groups: dict[BindKey, Group] = {}
        self._grouped: _Shapes[tuple[Group, str | None]] = _Shapes(statement_cache_size)

    def set_engines(
        self,
        engines: Mapping[BindKey, sa.Engine],
        read_only: Iterable[BindKey] = (),
        replicas: Mapping[BindKey, ReplicaSet] = _NO_BINDS,
    ) -> None:
        """Route to ``engines`` from now on, forgetting every cached decision.

        Writes routed to a ``read_only`` bind raise :class:`ReadOnlyBindError`. Sessions send
        the reads of a bind with ``replicas`` to them (see :mod:`asyncbind.replicas`).
        """
        self.replicas = {engines[key]: found for key, found in replicas.items()}
        self.has_replicas = bool(self.replicas)
        self._current = dict(engines)
        self._read_only = frozenset(read_only)
        self._read_only_engines = {self._current[k]: k for k in self._read_only}
        self._arrange()
        self._forget()

    def hold(self, key: BindKey, engine: sa.Engine) -> None:
        """Keep ``engine``, which bind ``key`` had before it was removed, for the sessions whose
        transaction holds one of its connections, until :meth:`release`: they go on sending the
        key's statements there. Other sessions get the key's engine now, if it has one again."""
        self._earlier[key] = (*self._earlier.get(key, ()), engine)
        self._arrange()
        self._forget()

    def release(self, key: BindKey, engine: sa.Engine) -> None:
        """No session uses ``engine``, held for ``key``, any more: forget it."""
        earlier = tuple(held for held in self._earlier.get(key, ()) if held is not engine)
        if earlier:
            self._earlier[key] = earlier
        else:
            self._earlier.pop(key, None)
        self._arrange()  # nothing was cached for the key while it had earlier engines

    def _arrange(self) -> None:
        """What routes without asking, and the commit order: the default bind first, then the
        others in the order they were configured, then the earlier engines still held."""
        self._engines = {k: e for k, e in self._current.items() if k not in self._earlier}
        keys = sorted(self._current, key=lambda k: k is not None)
        order = [(self._current[k], k) for k in keys]
        order += [(engine, k) for k, held in self._earlier.items() for engine in held]
        self._order = {engine: (rank, k) for rank, (engine, k) in enumerate(order)}

    def set_groups(self, groups: Mapping[str, Group]) -> None:
        """Route the bind keys of ``groups`` to their groups from now on."""
        self._groups = {key: group for key, group in groups.items()}
        self._forget()

    def _forget(self) -> None:
        self._mappers.clear()
        self._mapper_keys.clear()
        self._statements.clear()
        self._grouped.clear()

    def engine(self, key: BindKey, owner: str | None = None) -> sa.Engine:
        """The engine of bind ``key`` now; :class:`UnknownBindError` when it has none."""
        try:
            return self._current[key]
        except (KeyError, TypeError):  # TypeError: an unhashable key
            group = self._groups.get(key) if isinstance(key, str) else None
        if group is not None:
            return group.sync_engine(owner)
        raise UnknownBindError(key, [*self._current, *self._groups], owner=owner) from None

    def _routed(self, key: BindKey, owner: str) -> sa.Engine:
        """The engine a statement of bind ``key`` goes to: :meth:`engine`, unless the key has
        earlier engines (:class:`_EarlierEngines`, for the session to answer)."""
        try:
            return self._engines[key]
        except (KeyError, TypeError):
            earlier = self._earlier.get(key) if isinstance(key, str) else None
        if earlier is not None:
            raise _EarlierEngines(key, owner, earlier)
        return self.engine(key, owner)

    def tenant_engine(self, key: str, tenant: str) -> sa.Engine:
        """The engine of ``tenant`` in group ``key``."""
        group = self._groups.get(key)
        if group is None:
            raise UnknownBindError(key, [*self._current, *self._groups]) from None
        return group.tenant_engine(tenant)

    def routed_tenant(self, mapper: Any) -> tuple[str, str | None] | None:
        """The group of ``mapper``'s bind key and the tenant routed for it now (None: none);
        None for a mapper of an ordinary bind."""
        key = self._mapper_key(mapper)[0]
        group = self._groups.get(key)
        if group is None or key is None:
            return None
        return key, group.current_tenant()

    def is_default(self, bind: sa.Engine | sa.Connection) -> bool:
        """Whether ``bind`` is the default bind's engine."""
        return bind is self._current.get(None)

    def for_key(self, key: BindKey, clause: Any) -> sa.Engine:
        """The engine of bind ``key``, named in ``bind_arguments``; a write to a read-only bind is
        refused."""
        engine = self._routed(key, "bind_arguments={'bind_key': ...}")
        if key in self._read_only and clause is not None:
            self.refuse_write(key, clause)
        return engine

    def check_bind(self, bind: sa.Engine | sa.Connection, clause: Any) -> None:
        """Refuse ``clause`` if it writes and ``bind`` (an engine or a connection, passed as
        ``bind=``) belongs to a read-only bind."""
        if not self._read_only_engines:
            return
        key = self._read_only_engines.get(bind.engine, _MISSING)
        if key is not _MISSING:
            self.refuse_write(key, clause)

    @staticmethod
    def refuse_write(key: BindKey, clause: Any, owner: str | None = None) -> None:
        """Raise :class:`ReadOnlyBindError` if ``clause`` writes (DML or DDL)."""
        error = readonly.refusal(key, clause, owner)
        if error is not None:
            raise error

    def commit_rank(self, engine: sa.Engine) -> tuple[int, BindKey] | None:
        """Where ``engine``'s bind commits among the binds, and its key; None for an engine that
        is not one of the binds'."""
        return self._order.get(engine)

    def for_mapper(self, mapper: Any) -> sa.Engine:
        engine = self._mappers.get(mapper)
        if engine is None:
            key, owner, _ = self._mapper_key(mapper)
            group = self._groups.get(key)
            if group is not None:
                return group.sync_engine(owner)
            engine = self._mappers[mapper] = self._routed(key, owner)
        return engine

    def for_statement(self, mapper: Any, clause: sa.ClauseElement) -> sa.Engine:
        cache_key = clause._generate_cache_key()
        if cache_key is None:
            return self._resolve(mapper, clause)
        shape = (mapper, cache_key.key)
        engine = self._statements.recent.get(shape)
        if engine is None:
            return self._for_shape(shape, mapper, clause)
        return engine

    def _for_shape(self, shape: Hashable, mapper: Any, clause: sa.ClauseElement) -> sa.Engine:
        """for_statement() of a shape not among the recent ordinary ones: a group's (looked up
        first, so that a group's statement costs two lookups), an older one, else worked out."""
        if self._groups:
            grouped = self._grouped.recent.get(shape) or self._grouped.recall(shape)
            if grouped is not None:
                return grouped[0].sync_engine(grouped[1])
        engine = self._statements.recall(shape)
        if engine is not None:
            return engine
        self._misses += 1
        key, owner, cacheable = self._resolve_key(mapper, clause)
        group = self._groups.get(key)
        if group is not None:
            if cacheable:
                self._grouped.add(shape, (group, owner))
            return group.sync_engine(owner)
        engine = self._routed(key, owner)
        if cacheable:
            self._statements.add(shape, engine)
        return engine

    def cache_info(self) -> ShapeCacheInfo:
        """How many statements missed the statement cache, and how many shapes it holds."""
        return ShapeCacheInfo(
            misses=self._misses,
            shapes=len(self._statements) + len(self._grouped),
            max_shapes=self._statements.size + self._grouped.size,
        )

    def _mapper_key(self, mapper: Any) -> tuple[BindKey, str, str]:
        """A mapper's bind key, the model's name and its table's, worked out once."""
        found = self._mapper_keys.get(mapper)
        if found is None:
            inspected = sa.inspect(mapper).mapper
            keys = _keys_of(_tables_in(inspected.local_table))
            if len(keys) > 1:
                raise CrossBindError(keys)
            key = next(iter(keys)) if keys else None
            owner = f"model {inspected.class_.__name__!r}"
            found = self._mapper_keys[mapper] = (key, owner, inspected.local_table.description)
        return found

    def _resolve(self, mapper: Any, clause: sa.ClauseElement) -> sa.Engine:
        key, owner, _ = self._resolve_key(mapper, clause)
        return self._routed(key, owner)

    def _resolve_key(self, mapper: Any, clause: sa.ClauseElement) -> tuple[BindKey, str, bool]:
        """The bind key of a statement, what to name it by in errors, and whether its shape may
        be cached; a write to a read-only bind is refused.

        A statement that takes values from a sequence is not cached: SQLAlchemy's cache key names
        a sequence by its name alone, so a sequence of the same name in another bind would share
        the shape.
        """
        found = list(_tables_in(clause))
        keys = _keys_of(found)
        cacheable = not any(isinstance(item, sa.Sequence) for item in found)
        owner = None
        if mapper is not None:
            key, owner, table = self._mapper_key(mapper)
            keys.setdefault(key, set()).add(table)
        if len(keys) == 1 and (mapper is not None or isinstance(clause, sa.CompoundSelect)):
            # An ORM statement (SQLAlchemy names no mapper for a UNION, whatever its SELECTs):
            # the tables the ORM adds when it compiles it count too.
            dialect = self._dialect(next(iter(keys)))
            for other, names in _keys_of(_compiled_tables(clause, dialect)).items():
                keys.setdefault(other, set()).update(names)
        if len(keys) > 1:
            raise CrossBindError(keys)
        if not keys:
            return None, "a statement with no tables (text(), a function, ...)", cacheable
        key = next(iter(keys))
        if owner is None:
            owner = _described(found[0])
        if key in self._read_only:
            self.refuse_write(key, clause, owner)
        return key, owner, cacheable

    def _dialect(self, key: BindKey) -> sa.Dialect | None:
        """The dialect statements of bind ``key`` compile with; None for a key with no engine of
        its own (a tenant group's depends on the tenant): statements then compile as ``str()``
        compiles them, which adds the same tables."""
        engine = self._current.get(key)
        return None if engine is None else engine.dialect

    def check_flush(self, session: sa_orm.Session) -> None:
        """Refuse a flush that would write to a read-only bind."""
        if not self._read_only:
            return
        for obj in (*session.new, *session.deleted, *session.dirty):
            key, owner, _ = self._mapper_key(sa.inspect(obj).mapper)
            if key in self._read_only and (obj not in session.dirty or session.is_modified(obj)):
                raise ReadOnlyBindError(key, f"a flush writing {owner}")


def _tables_in(clause: Any) -> Iterable[sa.Table | sa.Sequence]:
    """The tables a statement, DDL construct or selectable refers to, and the sequences it takes
    values from (``seq.next_value()``) or is DDL of. A sequence of no MetaData names no bind and
    is left out."""
    if isinstance(clause, sa.Table):
        yield clause
        return
    if isinstance(clause, sa.schema.ExecutableDDLElement):
        target = clause.target
        table = getattr(target, "table", target)
        if isinstance(table, sa.Table) or _in_metadata(table):
            yield table
        return
    for element in visitors.iterate(clause):
        if isinstance(element, sa.Table):
            yield element
        elif isinstance(element, functions.next_value) and _in_metadata(element.sequence):
            yield element.sequence


def _in_metadata(item: Any) -> TypeGuard[sa.Sequence]:
    """Whether ``item`` is a sequence of a MetaData (as a model's column makes it: its table's)."""
    return isinstance(item, sa.Sequence) and item.metadata is not None


def _compiled_tables(
    statement: sa.ClauseElement, dialect: sa.Dialect | None
) -> list[sa.Table | sa.Sequence]:
    """The tables of the statement SQLAlchemy compiles for an ORM ``statement``: with the joins
    along relationships, the eager joins and the column properties the ORM adds when it compiles
    it, which the statement as written does not hold.

    The ORM adds column properties and joins along relationships to the SELECTs nested in a
    statement too (subqueries, CTEs, the SELECTs of a UNION), as it compiles them, and the
    compiler keeps the state of the outermost only: each nested SELECT is compiled on its own.
    (On its own it gets its eager joins as well, which SQLAlchemy leaves out of a subquery; a
    lazy="joined" across binds is refused everywhere else anyway.)

    The compiler's ``compile_state`` is documented; its ``statement`` is not
    (``tests/test_routing.py`` fails if SQLAlchemy changes it).
    """
    tables: list[sa.Table | sa.Sequence] = []
    seen = {statement}
    pending = [statement]
    while pending:
        state = pending.pop().compile(dialect=dialect).compile_state
        if state is None:
            continue
        compiled = state.statement
        tables.extend(_tables_in(compiled))
        seen.add(compiled)
        for element in visitors.iterate(compiled):
            if isinstance(element, sa.SelectBase) and element not in seen:
                seen.add(element)
                pending.append(element)
    return tables


def _keys_of(tables: Iterable[sa.Table | sa.Sequence]) -> dict[BindKey, set[str]]:
    keys: dict[BindKey, set[str]] = {}
    for item in tables:
        name = item.fullname if isinstance(item, sa.Table) else f"sequence {_sequence_name(item)}"
        keys.setdefault(bind_key_of(item), set()).add(name)
    return keys


def _described(item: sa.Table | sa.Sequence) -> str:
    """A table or a sequence as errors name it: ``table 'users'``, ``sequence 'ids'``."""
    if isinstance(item, sa.Table):
        return f"table {item.fullname!r}"
    return f"sequence {_sequence_name(item)!r}"


def _sequence_name(sequence: sa.Sequence) -> str:
    return f"{sequence.schema}.{sequence.name}" if sequence.schema else sequence.name


class RoutingSession(sa_orm.Session):
    """A sync Session whose :meth:`get_bind` routes by bind key, asking ``router``.

    ``session.execute(stmt, bind_arguments={"bind_key": "users"})`` sends a statement to a bind by
    name, for example a ``text()`` that has no tables to route by.

    What the session was told comes first, in SQLAlchemy's order: ``bind=`` given to
    :meth:`get_bind`, then the session's ``binds=`` (by mapper, then by the statement's tables),
    then the session's own ``bind=``; routing decides the rest. ``binds=`` may also be keyed by bind
    key (``None`` for the default bind): ``binds={None: conn_a, "users": conn_b}`` sends whatever
    routes to a key to that connection.

    A ``sync_session_class`` of your own subclasses this class. Its ``commit()``, if it has one,
    keeps the binds' commit order by calling ``super().commit()``. With ``twophase=True`` (see
    :mod:`asyncbind.twophase`) the commit prepares every bind, records the decision, then
    commits; a bind that cannot prepare (SQLite) is refused before anything is sent to it.

    The AsyncSession passes its keyword arguments on, so ``router`` comes from the
    ``async_sessionmaker``'s ``router=``. ``outer_transactions`` is set inside
    :func:`asyncbind.testing.rolled_back`: every engine of the AsyncBind's that the session routes
    to (a tenant's too) or is given (``bind=``, ``binds=``, ``bind_arguments={"bind": ...}``) is
    then a connection of the test's, and the session runs in one phase, even if asked for two
    (everything is rolled back, so nothing needs the second).
    """

    #: The :class:`Router` this session routes with.
    router: Router
    #: Connections given in ``binds=`` by bind key, by the engine of that bind (class defaults:
    #: the session db.session() makes, given none, sets neither).
    _by_key: Mapping[sa.Engine, sa.Engine | sa.Connection] = _NO_BINDS
    #: Whether SQLAlchemy's own get_bind() is asked first (the session's bind= or binds=).
    _asks_sqlalchemy = False
    #: The transactions of a test that rolls back, which this session joins, if any.
    _outer: OuterTransactions | None = None
    #: get_bind()'s fast path, for a session with no binds of its own: the router, else None.
    _router_alone: Router | None
    #: What this session's transaction did with read replicas (see :mod:`asyncbind.replicas`).
    replica_reads: SessionReplicas | None = None
    #: Whether the running statement goes to the primary whatever it is, and the reads it makes
    #: with it: an UPDATE or DELETE (the ORM's SELECT of the rows it will change, with
    #: ``synchronize_session="fetch"``), or a call given ``execution_options={"use_primary":
    #: True}``, which get_bind() does not see (see :mod:`asyncbind.replicas`).
    on_primary = False
    #: Whether this session has opened a transaction with a tenant of a group, whose tenant it
    #: keeps, or holds an object that belongs to a tenant (see :mod:`asyncbind.tenants`).
    works_with_tenants = False

    # execute(), scalar() and scalars() hand an ORM UNION / INTERSECT / EXCEPT over to get_bind()
    # as the clause to route by: SQLAlchemy passes none, so it would go to the default bind
    # whatever its tables. With replicas, they run DML and calls given ``use_primary`` with
    # ``on_primary`` set. They run for every
    # statement, so the parameters are spelled out: packing them into **kw and out again costs
    # more than the checks themselves.

    def execute(
        self,
        statement: Any,
        params: Any = None,
        *,
        execution_options: Any = EMPTY_DICT,
        bind_arguments: Any = None,
        **kw: Any,
    ) -> Any:
        if not bind_arguments and isinstance(statement, sa.CompoundSelect):
            bind_arguments = {"clause": statement}
        elif (
            self._router_alone is None
            and self.router.has_replicas
            and _to_primary(statement, execution_options)
        ):
            return self._on_primary(
                super().execute, statement, params, execution_options, bind_arguments, kw
            )
        return super().execute(
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )

    def scalar(
        self,
        statement: Any,
        params: Any = None,
        *,
        execution_options: Any = EMPTY_DICT,
        bind_arguments: Any = None,
        **kw: Any,
    ) -> Any:
        if not bind_arguments and isinstance(statement, sa.CompoundSelect):
            bind_arguments = {"clause": statement}
        elif (
            self._router_alone is None
            and self.router.has_replicas
            and _to_primary(statement, execution_options)
        ):
            return self._on_primary(
                super().scalar, statement, params, execution_options, bind_arguments, kw
            )
        return super().scalar(
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )

    def scalars(
        self,
        statement: Any,
        params: Any = None,
        *,
        execution_options: Any = EMPTY_DICT,
        bind_arguments: Any = None,
        **kw: Any,
    ) -> Any:
        if not bind_arguments and isinstance(statement, sa.CompoundSelect):
            bind_arguments = {"clause": statement}
        elif (
            self._router_alone is None
            and self.router.has_replicas
            and _to_primary(statement, execution_options)
        ):
            return self._on_primary(
                super().scalars, statement, params, execution_options, bind_arguments, kw
            )
        return super().scalars(
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            **kw,
        )

    def _on_primary(
        self,
        run: Any,
        statement: Any,
        params: Any,
        execution_options: Any,
        bind_arguments: Any,
        kw: dict[str, Any],
    ) -> Any:
        """``run`` (Session's execute, scalar or scalars) of ``statement``, with
        :attr:`on_primary` set while it runs."""
        outer, self.on_primary = self.on_primary, True
        try:
            return run(
                statement,
                params,
                execution_options=execution_options,
                bind_arguments=bind_arguments,
                **kw,
            )
        finally:
            self.on_primary = outer

    def get(
        self,
        entity: Any,
        ident: Any,
        *,
        options: Any = None,
        populate_existing: Any = None,
        with_for_update: Any = None,
        identity_token: Any = None,
        execution_options: Any = EMPTY_DICT,
        bind_arguments: Any = None,
    ) -> Any:
        """As SQLAlchemy's; in a route for another tenant than the one this session works with,
        :class:`TenantMismatchError`. An object found in the identity map is returned without a
        statement, so the check the session makes when a transaction begins never sees it.
        (``get_one()`` calls this.) The parameters are spelled out, as in :meth:`execute`."""
        if self.works_with_tenants:  # only a session that has used a tenant group pays for it
            self._check_tenant(entity)
        return super().get(
            entity,
            ident,
            options=options,
            populate_existing=populate_existing,
            with_for_update=with_for_update,
            identity_token=identity_token,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
        )

    def _check_tenant(self, entity: Any) -> None:
        """Raise :class:`TenantMismatchError` if ``entity``'s group routes another tenant now
        than the one this session works with."""
        found = self.router.routed_tenant(entity)
        if found is None:
            return
        key, tenant = found
        first = self.info.get(SESSION_TENANTS, EMPTY_DICT).get(key)
        if first is not None and tenant is not None and tenant != first:
            raise TenantMismatchError(key, first, tenant)

    def __init__(
        self,
        bind: sa.Engine | sa.Connection | None = None,
        *,
        router: Router,
        binds: Mapping[Any, sa.Engine | sa.Connection] | None = None,
        outer_transactions: OuterTransactions | None = None,
        **kw: Any,
    ) -> None:
        if outer_transactions is not None:
            kw["twophase"] = False  # a test's transactions, rolled back: one phase is enough
        elif not binds and (bind is None or router.is_default(bind)):
            # What db.session() makes, once per session: routing alone decides.
            super().__init__(bind, **kw)
            self.router = router
            # A two-phase session checks each bind it is given (_given_bind()); binds with
            # replicas take the longer path, which asks them.
            self._router_alone = None if self.twophase or router.has_replicas else router
            return
        by_key: dict[sa.Engine, sa.Engine | sa.Connection] = {}
        by_target: dict[Any, sa.Engine | sa.Connection] = {}
        if binds:
            for target, given in binds.items():
                if target is None or isinstance(target, str):
                    by_key[router.engine(target, "db.session(binds={...})")] = given
                else:
                    by_target[target] = given
        # Every session is given the default bind's engine as bind=, to report it as its bind
        # (code reads session.bind.dialect); routing stands behind that one. Another is its own.
        own = bind is not None and not router.is_default(bind)
        if own and by_key:
            raise ConfigError(
                "db.session() was given bind= and binds= keyed by bind key. bind= takes every "
                "statement that binds= does not match by model or table, so the bind keys would "
                "never be used. Pass the default bind's connection as binds={None: conn} instead "
                "of bind=."
            )
        if by_target and not own:
            bind = None  # SQLAlchemy falls back to bind=; here routing does
        super().__init__(bind, binds=by_target or None, **kw)
        self.router = router
        self._by_key = by_key
        self._outer = outer_transactions
        self._asks_sqlalchemy = own or bool(by_target)
        told = own or bool(by_target or by_key) or outer_transactions is not None
        self._router_alone = None if told or self.twophase or router.has_replicas else router

    def bind_mapper(self, mapper: Any, bind: sa.Engine | sa.Connection) -> None:
        """As SQLAlchemy's: statements of ``mapper`` go to ``bind``, before routing."""
        self._binds_given()
        super().bind_mapper(mapper, bind)

    def bind_table(self, table: Any, bind: sa.Engine | sa.Connection) -> None:
        """As SQLAlchemy's: statements on ``table`` go to ``bind``, before routing."""
        self._binds_given()
        super().bind_table(table, bind)

    def _binds_given(self) -> None:
        if not self._asks_sqlalchemy:  # self.bind is the default bind's, not the session's own
            self.bind = None
        self._asks_sqlalchemy = True
        self._router_alone = None

    def prepare(self) -> None:
        """Refused on a two-phase session (:class:`TwoPhasePrepareError`): its commit prepares,
        records the decision, then commits (see :mod:`asyncbind.twophase`)."""
        if self.twophase:
            raise TwoPhasePrepareError()
        super().prepare()

    def commit(self) -> None:
        """Flush and commit; the binds of a transaction that spans several commit one after the
        other in a stable order (see :mod:`asyncbind.commits`)."""
        if not commits.commit_in_order(self):
            super().commit()

    def get_bind(
        self,
        mapper: Any = None,
        *,
        clause: Any = None,
        bind: Any = None,
        bind_key: Any = _MISSING,
        **kw: Any,
    ) -> sa.Engine | sa.Connection:
        router = self._router_alone
        if router is None:
            return self._given_bind(mapper, clause, bind, bind_key, kw)
        if bind is not None:
            if clause is not None:
                router.check_bind(bind, clause)
            return bind  # type: ignore[no-any-return]
        try:  # free unless it raises (Python 3.11+)
            return _route(router, mapper, clause, bind_key)
        except UnresolvedTenantError as error:
            return self._tenant_engine(error)
        except _EarlierEngines as earlier:
            return self._engine_of_transaction(earlier, clause)

    def _tenant_engine(self, error: UnresolvedTenantError) -> sa.Engine:
        """With no tenant routed for a group, the tenant this session already works with, if any
        (a session opened inside a route keeps working after it); else ``error``."""
        tenant = self.info.get(SESSION_TENANTS, EMPTY_DICT).get(error.group)
        if tenant is None:
            raise error
        return self.router.tenant_engine(error.group, tenant)

    def _engine_of_transaction(self, earlier: _EarlierEngines, clause: Any) -> sa.Engine:
        """The engine of a key removed (and maybe added again) at run time: the earlier engine
        whose connection this session's transaction holds, so that the transaction ends where it
        began; else the key's engine now (:class:`UnknownBindError` if it has none)."""
        transaction = self.get_transaction()
        if transaction is not None:
            for connection, _ in commits.connections_held(transaction):
                if connection.engine in earlier.engines:
                    return connection.engine
        try:
            engine = self.router.engine(earlier.key, earlier.owner)
        except UnresolvedTenantError as error:  # the key is a tenant group's now
            return self._tenant_engine(error)
        if clause is not None:
            self.router.check_bind(engine, clause)  # the bind added again may be read-only
        return engine

    def _given_bind(
        self, mapper: Any, clause: Any, bind: Any, bind_key: Any, kw: dict[str, Any]
    ) -> sa.Engine | sa.Connection:
        """get_bind() of a session given binds of its own: ``bind``, else SQLAlchemy's answer
        from the session's ``binds=`` and ``bind=``, else routing (with ``binds=`` by bind key
        applied). A two-phase session refuses a bind that cannot prepare (SQLite)."""
        found = self._found_bind(mapper, clause, bind, bind_key, kw)
        if self.twophase:
            twophase.check_participant(found, self.router.commit_rank)
        return found

    def _found_bind(
        self, mapper: Any, clause: Any, bind: Any, bind_key: Any, kw: dict[str, Any]
    ) -> sa.Engine | sa.Connection:
        router = self.router
        if bind is None and self._asks_sqlalchemy:
            try:
                bind = super().get_bind(mapper, clause=clause, **kw)
            except sa_exc.UnboundExecutionError:  # no match, and no bind of its own
                pass
        if bind is None:
            try:
                engine = _route(router, mapper, clause, bind_key)
            except UnresolvedTenantError as error:
                engine = self._tenant_engine(error)
            except _EarlierEngines as earlier:
                engine = self._engine_of_transaction(earlier, clause)
            bind = self._by_key.get(engine)
            if bind is None:
                if self._outer is not None:
                    bind = engine  # the test's connection of it, below
                else:
                    replicas = router.replicas.get(engine)
                    if replicas is not None:
                        return replicas.bind_for(self, engine, mapper, clause)
                    return engine
        if self._outer is not None and isinstance(bind, sa.Engine):
            # In a test that rolls back, an engine of the AsyncBind's, routed or given (bind=,
            # binds=, bind_arguments), is the test's connection of it.
            bind = self._outer.connection(bind) or bind
        if clause is not None:
            router.check_bind(bind, clause)
        return bind  # type: ignore[no-any-return]


def _to_primary(statement: Any, execution_options: Any) -> bool:
    """Whether ``statement`` goes to the primary whatever it is: an UPDATE or DELETE, or a call
    given ``use_primary=True`` (``session.get(..., execution_options=...)`` comes here too)."""
    return isinstance(statement, sa.Update | sa.Delete) or bool(
        execution_options and execution_options.get(USE_PRIMARY)
    )


def _route(router: Router, mapper: Any, clause: Any, bind_key: Any) -> sa.Engine:
    """The engine routing gives a statement: by ``bind_key``, else its tables and ``mapper``'s,
    else the default bind."""
    if bind_key is not _MISSING:
        return router.for_key(bind_key, clause)
    if clause is not None:
        return router.for_statement(mapper, clause)
    if mapper is not None:
        return router.for_mapper(mapper)
    return router.engine(None, "a session operation with no statement")


@sa.event.listens_for(RoutingSession, "before_flush")
def _check_flush(session: RoutingSession, _context: Any, _instances: Any) -> None:
    """Refuse a flush that would write to a read-only bind."""
    session.router.check_flush(session)


def check_session_class(cls: Any, given_as: str) -> None:
    """Raise :class:`ConfigError` unless ``cls``, the ``sync_session_class`` given as
    ``given_as``, is a :class:`RoutingSession` subclass: routing lives there."""
    if isinstance(cls, type) and issubclass(cls, RoutingSession):
        return
    name = f"{cls.__module__}.{cls.__qualname__}" if isinstance(cls, type) else repr(cls)
    raise ConfigError(
        f"{given_as} is {name!r}, not a subclass of 'asyncbind.RoutingSession'. Sessions route "
        "each statement to its bind in RoutingSession, so a sync session class of your own "
        "must subclass it: class Audited(asyncbind.RoutingSession): ..."
    )
