"""Tenant groups: the same models in many databases, one per tenant.

``db.add_group("tenant", url=lambda tenant: f"postgresql://db/tenant_{tenant}")`` makes the bind
key ``"tenant"`` a *group*: a model with ``__bind_key__ = "tenant"`` lives in every tenant's
database, and each statement goes to the database of the tenant chosen for the code that runs it,
``with db.route(tenant="acme"):``. The choice lives in a :class:`~contextvars.ContextVar`, so each
task and request has its own, and tasks started inside a route inherit it. No tenant chosen is an
:class:`~asyncbind.exceptions.UnresolvedTenantError`, never the default database.

Each tenant's engine is made on first use and kept in least-recently-used order; past
``max_engines``, the least recently used engines whose connections are all back in their pools are
retired (disposed, see :mod:`asyncbind.retiring`). An engine a session is using is never
disposed, so the count may exceed the bound while more tenants than that are busy at once; it
comes back under it as they finish: while the group is past its bound, each connection that
comes back to one of its pools (the pool's ``checkin`` event) retires the idle engines past it,
without waiting for the next tenant to be looked up. An engine whose pool shares one connection
(an in-memory SQLite database) is never retired: its pool cannot tell whether a session uses it,
and disposing it would destroy the database. It stays until ``db.dispose()``.

A session serves one tenant per group: the first tenant it opens a transaction with stays its
tenant (its identity map holds that tenant's rows), and another raises
:class:`~asyncbind.exceptions.TenantMismatchError`. An object of a group's model belongs to the
tenant routed (else the session's) when it was added to a session, or to the session's when it
was loaded; it is kept in its ``InstanceState.info``. A flush that would write it to another
tenant is refused before any SQL, with the same error: ``add()`` opens no transaction, so the
session's tenant alone would not catch an object added in one route and flushed in another.

Routing pays for groups only on statements that use them: the router asks the group (see
:class:`asyncbind.routing.Router`) where it would otherwise take a cached engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import EMPTY_DICT

from . import twophase
from .config import BindConfig, BindValue, check_config, config_error
from .exceptions import ConfigError, TenantMismatchError, UnresolvedTenantError, shown
from .retiring import Retirements, in_use
from .routing import SESSION_TENANTS, RoutingSession

__all__ = [
    "DEFAULT_MAX_ENGINES",
    "OBJECT_TENANT",
    "Route",
    "TenantGroup",
    "TenantGroups",
    "UrlResolver",
    "check_tenant",
]

#: How many tenant engines a group keeps by default.
DEFAULT_MAX_ENGINES = 32

UrlResolver = Callable[[str], BindValue]
"""``url(tenant)``: the tenant's database, as a bind is configured (a URL string, a
:class:`sqlalchemy.URL` or a dict of engine options with a ``"url"``). Called once per engine
made, in the event loop: it must not block (no I/O)."""

EngineMaker = Callable[[BindConfig], AsyncEngine]

#: The ``InstanceState.info`` key of the group and tenant an object was added or loaded in.
OBJECT_TENANT = "asyncbind.tenant"

# Which group and tenant a tenant engine serves, for the one-tenant-per-session check.
_TENANT_OF: weakref.WeakKeyDictionary[sa.Engine, tuple[TenantGroup, str]] = (
    weakref.WeakKeyDictionary()
)


class TenantGroup:
    """One group: its bind key, how a tenant's database is found, and the engines made so far.

    :attr:`engines` shows the tenant engines alive now, least recently used first.
    """

    __slots__ = (
        "__weakref__",
        "_engine_options",
        "_engines",
        "_make_engine",
        "_retirements",
        "_routes",
        "_url",
        "key",
        "max_engines",
    )

    def __init__(
        self,
        key: str,
        url: UrlResolver,
        *,
        max_engines: int,
        engine_options: Mapping[str, Any],
        routes: ContextVar[_Chosen],
        make_engine: EngineMaker,
        retirements: Retirements,
    ) -> None:
        self.key = key
        self.max_engines = max_engines
        self._url = url
        self._engine_options = engine_options
        self._routes = routes
        self._make_engine = make_engine
        self._retirements = retirements
        self._engines: OrderedDict[str, AsyncEngine] = OrderedDict()

    @property
    def engines(self) -> Mapping[str, AsyncEngine]:
        """The engines alive now, by tenant, least recently used first (read-only)."""
        return MappingProxyType(self._engines)

    def current_tenant(self) -> str | None:
        """The tenant routed for this group in the running context, or None."""
        return self._routes.get().tenants.get(self.key)

    def sync_engine(self, owner: str | None = None) -> sa.Engine:
        """The sync engine of the routed tenant: what :class:`~asyncbind.routing.Router` asks."""
        tenant = self._routes.get().tenants.get(self.key)
        if tenant is None:
            raise UnresolvedTenantError(self.key, owner=owner)
        return self.engine(tenant).sync_engine

    def tenant_engine(self, tenant: str) -> sa.Engine:
        """The sync engine of ``tenant``: what a session asks for the tenant it works with."""
        return self.engine(tenant).sync_engine

    def engine(self, tenant: str) -> AsyncEngine:
        """``tenant``'s engine, made now if it has none (retiring idle ones past the bound)."""
        engine = self._engines.get(tenant)
        if engine is not None:
            self._engines.move_to_end(tenant)
            if len(self._engines) > self.max_engines:  # over the bound while all were busy
                self._evict()
            return engine
        engine = self._engines[tenant] = self._open(tenant)
        self._evict()
        return engine

    def _open(self, tenant: str) -> AsyncEngine:
        try:
            value = self._url(tenant)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"Tenant group {self.key!r}: url() raised {type(exc).__name__} for tenant "
                f"{tenant!r}. It must return the tenant's URL (or a dict with a 'url')."
            ) from exc
        configs, problems = check_config(None, {self.key: value}, self._engine_options)
        if problems:
            raise ConfigError(f"Tenant {tenant!r}: {config_error(problems)}")
        engine = self._make_engine(dataclasses.replace(configs[self.key], tenant=tenant))
        _TENANT_OF[engine.sync_engine] = (self, tenant)
        twophase.refuse_tenant(engine.sync_engine, self.key, tenant)
        sa.event.listen(engine.sync_engine, "checkin", self._returned)
        return engine

    def _returned(self, *_: Any) -> None:
        """A connection is back in the pool of one of the group's engines: past the bound, retire
        the idle engines now. The pool counts the connection back just after this event."""
        if len(self._engines) > self.max_engines:
            try:
                asyncio.get_running_loop().call_soon(self._evict)
            except RuntimeError:  # no event loop: the next lookup retires them
                pass

    def _evict(self) -> None:
        """Retire the least recently used idle engines until the group is within its bound."""
        excess = len(self._engines) - self.max_engines
        if excess <= 0:
            return
        for tenant, engine in list(self._engines.items())[:-1]:
            if excess <= 0:
                break
            if not in_use(engine) and not _one_connection(engine):
                del self._engines[tenant]
                self._retirements.retire(engine, f"tenant {tenant!r} of group {self.key!r}")
                excess -= 1

    def __repr__(self) -> str:
        return (
            f"<TenantGroup {self.key!r}: {len(self._engines)} engines, "
            f"max_engines={self.max_engines}>"
        )


def _one_connection(engine: AsyncEngine) -> bool:
    """Whether ``engine``'s pool shares one connection (an in-memory SQLite database): it keeps
    no count of what is checked out, and closing the connection loses the database."""
    return isinstance(engine.sync_engine.pool, sa.pool.StaticPool | sa.pool.SingletonThreadPool)


class _Chosen:
    """What the routes' context variable holds: the tenant chosen for each group, and the route
    that chose them with what was chosen before it, to go back to when that route is left."""

    __slots__ = ("outer", "route", "tenants")

    def __init__(
        self, tenants: Mapping[str, str], route: Route | None = None, outer: _Chosen | None = None
    ) -> None:
        self.tenants = tenants
        self.route = route
        self.outer = outer


_NONE_CHOSEN = _Chosen(MappingProxyType({}))


class Route:
    """``with db.route(tenant="acme"):`` (or ``async with``): the tenants chosen inside the
    block, over those chosen outside it. Middleware may hold one open around a request.

    A route keeps nothing of its own between entering and leaving (what to go back to is in the
    context variable), so one route object may be entered by several tasks at once, and nested.
    """

    __slots__ = ("_routes", "_tenants")

    def __init__(self, routes: ContextVar[_Chosen], tenants: Mapping[str, str]) -> None:
        self._routes = routes
        self._tenants = dict(tenants)

    def __enter__(self) -> None:
        outer = self._routes.get()
        self._routes.set(_Chosen({**outer.tenants, **self._tenants}, self, outer))

    def __exit__(self, *exc_info: object) -> None:
        chosen = self._routes.get()
        if chosen.route is not self or chosen.outer is None:
            raise RuntimeError(
                f"{self!r} was left where it is not the route entered last: in another task or "
                "context than the one that entered it, or before a route entered inside it was "
                "left. Enter and leave a route in the same task, with 'with' or 'async with'."
            )
        self._routes.set(chosen.outer)

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__()

    def __repr__(self) -> str:
        tenants = ", ".join(f"{key}={tenant!r}" for key, tenant in self._tenants.items())
        return f"db.route({tenants})"


class TenantGroups(Mapping[str, TenantGroup]):
    """The groups of one :class:`~asyncbind.AsyncBind` by key (``db.groups``), and the route
    that chooses each group's tenant."""

    __slots__ = ("_groups", "_routes")

    def __init__(self) -> None:
        self._groups: dict[str, TenantGroup] = {}
        self._routes: ContextVar[_Chosen] = ContextVar("asyncbind_routes", default=_NONE_CHOSEN)

    def add(
        self,
        key: str,
        url: UrlResolver,
        *,
        max_engines: int,
        engine_options: Mapping[str, Any],
        make_engine: EngineMaker,
        retirements: Retirements,
    ) -> TenantGroup:
        """Make and keep a group (the caller checked that ``key`` is free)."""
        _check_group(key, url, max_engines)
        _install_session_check()
        group = TenantGroup(
            key,
            url,
            max_engines=max_engines,
            engine_options=engine_options,
            routes=self._routes,
            make_engine=make_engine,
            retirements=retirements,
        )
        self._groups[key] = group
        return group

    def route(self, tenants: Mapping[str, str]) -> Route:
        """Choose the tenant of each group in ``tenants`` for the code inside the block."""
        for key, tenant in tenants.items():
            if key not in self._groups:
                known = ", ".join(repr(k) for k in self._groups) or "none"
                raise ConfigError(
                    f"route() names group {key!r}, which is not a tenant group (groups: "
                    f"{known}). Declare it with db.add_group({key!r}, url=...)."
                )
            check_tenant(key, tenant)
        return Route(self._routes, tenants)

    def __getitem__(self, key: str) -> TenantGroup:
        return self._groups[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)

    def __repr__(self) -> str:
        return repr(self._groups)


def _check_group(key: object, url: object, max_engines: object) -> None:
    if not isinstance(key, str) or not key.strip():
        raise ConfigError(f"add_group() key is {key!r}; expected a non-blank string.")
    if not callable(url):
        raise ConfigError(
            f"add_group({key!r}, url=...) got a {type(url).__name__}; expected a function of "
            f"the tenant returning its URL, e.g. url=lambda tenant: f'sqlite:///{{tenant}}.db'."
        )
    if isinstance(max_engines, bool) or not isinstance(max_engines, int) or max_engines < 1:
        raise ConfigError(
            f"add_group({key!r}, max_engines=...) is {max_engines!r}; expected a whole number "
            "of engines, 1 or more."
        )


def check_tenant(key: str, tenant: object) -> str:
    """``tenant`` if it can name a tenant of group ``key``; else a :class:`ConfigError`."""
    if not isinstance(tenant, str) or not tenant:
        raise ConfigError(
            f"Tenant {tenant!r} of group {key!r}: a tenant is a non-empty string, such as the "
            f"tenant's id as text: db.route({key}=str(tenant_id))."
        )
    return tenant


def _pin_tenant(session: sa_orm.Session, _transaction: Any, connection: sa.Connection) -> None:
    """A session keeps the first tenant of each group it opens a transaction with."""
    found = _TENANT_OF.get(connection.engine)
    if found is None:
        return
    group, tenant = found
    pinned = session.info.setdefault(SESSION_TENANTS, {})
    if isinstance(session, RoutingSession):
        session.works_with_tenants = True
    first = pinned.setdefault(group.key, tenant)
    if first != tenant:
        raise TenantMismatchError(group.key, first, tenant)


def _record_added(session: RoutingSession, state: sa_orm.InstanceState[Any]) -> None:
    """An object of a group's model added to ``session`` belongs to the tenant routed now, else
    to the session's (none known: it goes where its flush goes)."""
    found = session.router.routed_tenant(state.mapper)
    if found is None:
        return
    key, tenant = found
    if tenant is None:
        tenant = session.info.get(SESSION_TENANTS, EMPTY_DICT).get(key)
        if tenant is None:
            state.info.pop(OBJECT_TENANT, None)
            return
    state.info[OBJECT_TENANT] = (key, tenant)
    session.works_with_tenants = True


def _record_loaded(session: RoutingSession, state: sa_orm.InstanceState[Any]) -> None:
    """An object of a group's model loaded by ``session`` belongs to the session's tenant."""
    if not session.works_with_tenants:  # no transaction with a tenant: nothing loaded is one
        return
    found = session.router.routed_tenant(state.mapper)
    if found is not None:
        tenant = session.info.get(SESSION_TENANTS, EMPTY_DICT).get(found[0])
        if tenant is not None:
            state.info[OBJECT_TENANT] = (found[0], tenant)


def _record_attached(session: RoutingSession, state: sa_orm.InstanceState[Any]) -> None:
    """A detached object added to ``session`` keeps its tenant: its flush is checked."""
    if OBJECT_TENANT in state.info:
        session.works_with_tenants = True


def _check_flush(session: RoutingSession, _context: Any, _instances: Any) -> None:
    """Refuse a flush that would write an object to another tenant than its own."""
    if not session.works_with_tenants:
        return
    pinned = session.info.get(SESSION_TENANTS, EMPTY_DICT)
    dirty = session.dirty
    for obj in (*session.new, *dirty, *session.deleted):
        state: sa_orm.InstanceState[Any] = sa.inspect(obj)
        recorded = state.info.get(OBJECT_TENANT)
        if recorded is None:
            continue
        key, tenant = recorded
        found = session.router.routed_tenant(state.mapper)
        routed = found[1] if found is not None else None
        then = routed or pinned.get(key)
        if then is None or then == tenant:
            continue
        if obj in dirty and not session.is_modified(obj):
            continue
        raise TenantMismatchError(key, tenant, then, owner=_object_name(state))


def _object_name(state: sa_orm.InstanceState[Any]) -> str:
    model = state.mapper.class_.__name__
    if state.identity is None:
        return f"the new object {shown(state.obj())} of model {model!r}"
    key = ", ".join(repr(value) for value in state.identity)
    return f"the object of model {model!r} with primary key {key}"


_installed: list[bool] = []


def _install_session_check() -> None:
    """Listen for the sessions' transactions, the objects they add and load, and their flushes,
    once, when the first group is made: a process with no group pays nothing for it."""
    if not _installed:
        sa.event.listen(RoutingSession, "after_begin", _pin_tenant)
        sa.event.listen(RoutingSession, "transient_to_pending", _record_added, raw=True)
        sa.event.listen(RoutingSession, "loaded_as_persistent", _record_loaded, raw=True)
        sa.event.listen(RoutingSession, "detached_to_persistent", _record_attached, raw=True)
        sa.event.listen(RoutingSession, "before_flush", _check_flush)
        _installed.append(True)
