"""The :class:`AsyncBind` facade: config, engines, metadata, sessions and their lifecycle."""

from __future__ import annotations

import asyncio
import difflib
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, TypeVar, TypeVarTuple, overload

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.selectable import TypedReturnsRows

from . import bulk, health, recording, replicas, schema, stopping, twophase, views
from .cancellation import run_to_completion
from .config import (
    ALL,
    BindConfig,
    BindKey,
    ParsedConfig,
    check_config,
    check_engine_options,
    config_error,
    config_from_env,
    config_from_mapping,
)
from .engines import make_engine
from .exceptions import (
    ConfigError,
    NotConfiguredError,
    ReadOnlyBindError,
    UnknownBindError,
    UnresolvedTenantError,
    bind_name,
)
from .models import (
    UNSET,
    MetadataRegistry,
    Unset,
    default_metadata,
    make_model_base,
    make_table,
)
from .pagination import Pagination
from .registry import Bind, BindFields
from .retiring import Retirements
from .routing import Router, check_session_class
from .scoping import ScopeProvider, SessionFactory, SessionScope
from .tenants import (
    DEFAULT_MAX_ENGINES,
    Route,
    TenantGroup,
    TenantGroups,
    UrlResolver,
    check_tenant,
)
from .urls import render_url

__all__ = ["AppSetup", "AsyncBind", "SessionFactory", "add_app_setup"]

logger = logging.getLogger("asyncbind")

_O = TypeVar("_O", bound=object)
_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

_NOT_CONFIGURED = (
    "No database is configured on this AsyncBind. Pass a URL (AsyncBind('sqlite:///app.db')), "
    "binds=..., use AsyncBind.from_config()/from_env(), or call configure() (an integration's "
    "init_app() does) before using it."
)


class AsyncBind:
    """An :class:`~sqlalchemy.ext.asyncio.AsyncEngine` per bind key, models that say which bind
    they live in, and sessions that send each statement to the right one.

    :param url: the default bind (key ``None``): a URL string, a :class:`sqlalchemy.URL`, or a dict
        of engine options with a ``"url"``. May be omitted.
    :param binds: the other binds, by key, configured the same way.
    :param engine_options: :func:`~sqlalchemy.ext.asyncio.create_async_engine` options for every
        bind; a bind's own dict overrides them. Kept for binds configured later
        (:meth:`configure`, :meth:`init_app`), whose own engine options override them.
    :param session_options: :class:`~sqlalchemy.ext.asyncio.async_sessionmaker` options;
        ``expire_on_commit`` defaults to False.
    :param model_class: a declarative base of your own, or a mixin for every model.
    :param disable_autonaming: require ``__tablename__`` on every model instead of naming tables
        after their class (``UserAccount`` -> ``user_account``) as Flask-SQLAlchemy does.
    :param record_queries: record the statements of each request and scope for
        :func:`asyncbind.get_recorded_queries` (Flask-SQLAlchemy's ``SQLALCHEMY_RECORD_QUERIES``,
        which ``from_config`` and ``init_app`` read too). Off, it costs nothing.
    :param twophase_name: the application's name in the ids of its two-phase transactions
        (``db.session(twophase=True)``), which :meth:`recover` looks for; default
        ``"asyncbind"``. Give each application that shares a database server its own.
    :param twophase_log: the key of the bind whose database holds the decisions of two-phase
        commits (table ``asyncbind_twophase``, made on first use); default the default bind, or
        the first bind configured when there is no default bind.

    Everything is validated here, before any I/O; a bad config raises one :class:`ConfigError`
    that names every bind that is wrong.
    """

    Model: Any
    """The declarative base for models; set ``__bind_key__`` on a model to choose its bind."""

    def __init__(
        self,
        url: str | sa.URL | Mapping[str, Any] | None = None,
        *,
        binds: Mapping[BindKey, Any] | None = None,
        engine_options: Mapping[str, Any] | None = None,
        session_options: Mapping[str, Any] | None = None,
        model_class: type | None = None,
        disable_autonaming: bool = False,
        record_queries: bool = False,
        twophase_name: str = twophase.DEFAULT_NAME,
        twophase_log: BindKey | Unset = UNSET,
        app: Any = None,
    ) -> None:
        twophase.check_name(twophase_name)
        binds_made, replicas_made = _build(url, binds, engine_options)
        if not isinstance(record_queries, bool):
            raise ConfigError(f"record_queries= is {record_queries!r}; expected True or False.")
        self._record_queries = record_queries
        self._engine_options = check_engine_options(engine_options)
        self._session_options = _check_session_options(session_options)
        self._router = Router()
        self._router.twophase = twophase.Coordinator(
            twophase_name, twophase_log, self._twophase_keys, self._twophase_log_engine
        )
        self._binds: dict[BindKey, Bind] = {}
        self._replicas: dict[BindKey, replicas.ReplicaSet] = {}
        self._groups = TenantGroups()
        self._retirements = Retirements()
        self.groups: Mapping[str, TenantGroup] = self._groups
        """The tenant groups (:meth:`add_group`), by bind key (read-only)."""
        self.engines: Mapping[BindKey, AsyncEngine] = BindFields(self._binds, _engine)
        """The engine of every configured bind, by key (read-only)."""
        self.bind_configs: Mapping[BindKey, BindConfig] = BindFields(self._binds, _config)
        """The validated :class:`~asyncbind.BindConfig` of every configured bind, by key
        (read-only); empty until the AsyncBind is configured."""
        self.metadatas = MetadataRegistry(default_metadata(model_class))
        """The :class:`~sqlalchemy.MetaData` of every configured bind, and of every other key
        that a model or table uses, by key."""
        self.Model = make_model_base(model_class, self.metadatas, autoname=not disable_autonaming)
        self.sessionmaker: async_sessionmaker[views.AsyncBindSession] = self._make_sessionmaker()
        """The :class:`~sqlalchemy.ext.asyncio.async_sessionmaker` behind :attr:`session`."""
        self._scope_providers: list[ScopeProvider] = []
        self.session = SessionFactory(self, self._scope_providers, self._binds)
        """Call ``db.session()`` for a new routing AsyncSession; ``db.session.<attr>`` is the
        current request's or task scope's session (see :meth:`scope`)."""
        if binds_made:
            self._install(binds_made, replicas_made)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        """Set this AsyncBind up for a Quart ``app`` (``AsyncBind(app=app)`` calls it).

        Reads Flask-SQLAlchemy's keys from ``app.config`` (``SQLALCHEMY_DATABASE_URI``,
        ``SQLALCHEMY_BINDS``, ``SQLALCHEMY_ENGINE_OPTIONS`` over the constructor's
        ``engine_options``, ``SQLALCHEMY_ECHO``) unless the AsyncBind was given its binds already;
        ``SQLALCHEMY_RECORD_QUERIES`` turns on ``record_queries``.
        As in Flask-SQLAlchemy, and only here, a relative SQLite path is taken relative to
        ``app.instance_path`` (created if needed), not the working directory. Gives every app
        context (so every request) its own ``db.session``, closed in teardown; disposes the
        engines when the app stops serving.
        Starlette and FastAPI apps use :mod:`asyncbind.integrations.starlette` and
        :mod:`asyncbind.integrations.fastapi` instead.

        The setting up is done by the integration of the app's framework, which registered itself
        with :func:`add_app_setup` when asyncbind was imported (:mod:`asyncbind.integrations.quart`
        for Quart); this module imports no integration.
        """
        for setup in _app_setups:
            if setup(self, app):
                return
        raise ConfigError(
            f"init_app() sets up a Quart app, not a "
            f"{type(app).__module__}.{type(app).__qualname__}. For Starlette use "
            "'Starlette(lifespan=asyncbind.integrations.starlette.lifespan(db), "
            "middleware=[Middleware(AsyncBindMiddleware, db=db)])'; for FastAPI use "
            "'FastAPI(lifespan=asyncbind.integrations.fastapi.lifespan(db))' and "
            "'Depends(asyncbind.integrations.fastapi.session_dependency(db))'."
        )

    def add_scope_provider(self, provider: ScopeProvider) -> None:
        """Make ``db.session`` the session of an ambient context when no ``db.scope()`` is open:
        ``provider()`` returns that context's :class:`~asyncbind.scoping.Scope`, or None outside
        one. Integrations call it (Quart: one per app context); asked in the order added."""
        if provider not in self._scope_providers:
            self._scope_providers.append(provider)

    def scope(self, **options: Any) -> SessionScope:
        """``async with db.scope() as session:``: a session of this task, as ``db.session``.

        Inside the block ``db.session.<attr>`` is this task's own session (the one returned);
        it is closed when the block ends, rolling back whatever was not committed. For workers:
        each of N concurrent tasks opens its own scope. ``options`` are those of
        ``db.session(...)``: ``db.scope(twophase=True)``.
        """
        return SessionScope(self.session, **options)

    # -- configuration --------------------------------------------------------------------

    @classmethod
    def from_config(cls, mapping: Mapping[str, Any], **kwargs: Any) -> AsyncBind:
        """Configure from Flask-SQLAlchemy keys (``SQLALCHEMY_DATABASE_URI``, ``SQLALCHEMY_BINDS``,
        ``SQLALCHEMY_ENGINE_OPTIONS``, ``SQLALCHEMY_ECHO``) in ``mapping``, e.g. ``app.config``.

        ``kwargs`` go to the constructor; an ``engine_options=`` among them is the default that
        ``SQLALCHEMY_ENGINE_OPTIONS`` overrides, as in Flask-SQLAlchemy. A mapping with neither
        ``SQLALCHEMY_DATABASE_URI`` nor ``SQLALCHEMY_BINDS`` is refused, as Flask-SQLAlchemy does.
        ``SQLALCHEMY_RECORD_QUERIES`` turns on ``record_queries``.
        """
        if recording.config_flag(mapping):
            kwargs["record_queries"] = True
        parsed = config_from_mapping(mapping)
        if not parsed.has_database:
            raise ConfigError(
                "Neither 'SQLALCHEMY_DATABASE_URI' nor 'SQLALCHEMY_BINDS' is set in the mapping "
                "given to 'AsyncBind.from_config()'. Set one of them, or make 'AsyncBind()' "
                "and call 'db.configure(...)' or 'db.init_app(app)' once the config is known."
            )
        return cls._from_parsed(parsed, kwargs)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        prefix: str = "ASYNCBIND_",
        **kwargs: Any,
    ) -> AsyncBind:
        """Configure from environment variables: ``ASYNCBIND_DATABASE_URL`` (the default bind),
        ``ASYNCBIND_BIND_<NAME>`` (bind ``name``), ``ASYNCBIND_BINDS`` and
        ``ASYNCBIND_ENGINE_OPTIONS`` (JSON objects, over an ``engine_options=`` argument),
        ``ASYNCBIND_ECHO``; ``ASYNCBIND_TWOPHASE_NAME`` and ``ASYNCBIND_TWOPHASE_LOG`` (a bind
        key) where ``twophase_name=`` and ``twophase_log=`` are not given."""
        env = os.environ if environ is None else environ
        for option in ("twophase_name", "twophase_log"):
            value = env.get(f"{prefix}{option.upper()}")
            if value:
                kwargs.setdefault(option, value)
        return cls._from_parsed(config_from_env(environ, prefix=prefix), kwargs)

    @classmethod
    def _from_parsed(cls, parsed: ParsedConfig, kwargs: dict[str, Any]) -> AsyncBind:
        options = parsed.engine_options_over(kwargs.pop("engine_options", None))
        return cls(parsed.url, binds=parsed.binds, engine_options=options, **kwargs)

    def configure(
        self,
        url: str | sa.URL | Mapping[str, Any] | None = None,
        *,
        binds: Mapping[BindKey, Any] | None = None,
        engine_options: Mapping[str, Any] | None = None,
        session_options: Mapping[str, Any] | None = None,
    ) -> None:
        """Configure the binds of an AsyncBind created without any (frameworks do this at start-up).

        ``engine_options`` and ``session_options`` override the constructor's, which apply too.
        Raises :class:`ConfigError` if it already has binds; call :meth:`dispose` and make a new
        AsyncBind to change them.
        """
        if self._binds:
            raise ConfigError(
                f"{self!r} is already configured; configure() sets the binds of an AsyncBind "
                "created without any."
            )
        shared: object = engine_options  # not a mapping: _build reports it
        if engine_options is None or isinstance(engine_options, Mapping):
            shared = {**self._engine_options, **(engine_options or {})}
        sessions = None
        if session_options is not None:
            sessions = {**self._session_options, **_check_session_options(session_options)}
        binds_made, replicas_made = _build(url, binds, shared)
        if not binds_made:
            raise ConfigError("configure() was given no database. Pass a URL or binds={...}.")
        if sessions is not None:
            self._session_options = sessions
            self.sessionmaker = self._make_sessionmaker()
        self._install(binds_made, replicas_made)

    def _install(
        self, binds: dict[BindKey, Bind], replica_sets: dict[BindKey, replicas.ReplicaSet]
    ) -> None:
        self._binds.update(binds)
        self._replicas.update(replica_sets)
        coordinator = self._router.twophase
        if coordinator is not None:
            for key, bind in binds.items():
                twophase.name_transactions(bind.engine.sync_engine, coordinator, key)
        if self._record_queries:
            for bind in binds.values():
                recording.install(bind.engine)
            for found in replica_sets.values():
                for engine in found.engines:
                    recording.install(engine)
        for key in binds:
            self.metadatas.for_key(key)
        self._route_binds()
        default = binds.get(None)
        if default is not None and "bind" not in self._session_options:
            self.sessionmaker.configure(bind=default.engine)

    def _route_binds(self) -> None:
        self._router.set_engines(
            {k: b.engine.sync_engine for k, b in self._binds.items()},
            read_only=[k for k, b in self._binds.items() if b.config.read_only],
            replicas=self._replicas,
        )

    # -- runtime binds and tenant groups (see asyncbind.tenants) ----------------------------

    async def add_bind(self, key: BindKey, config: str | sa.URL | Mapping[str, Any]) -> None:
        """Configure bind ``key`` while the application runs, as ``binds={key: config}`` would
        have (the constructor's ``engine_options`` apply under the bind's own).

        Sessions route to it from their next statement on; ``create_all(bind_key=key)`` creates
        its tables. No connection is made here. Raises :class:`ConfigError` if ``key`` is
        configured already (bind or group) or ``config`` is wrong.
        """
        if key in self._binds or key in self._groups:
            what = "a tenant group" if key in self._groups else "configured"
            raise ConfigError(
                f"add_bind(): {bind_name(key)} is {what} already. Remove it first "
                f"(await db.remove_bind({key!r})) or choose another key."
            )
        self._install(*_build(None, {key: config}, self._engine_options))
        logger.info("added %s", bind_name(key))

    async def remove_bind(self, key: BindKey) -> None:
        """Take bind ``key`` out of service while the application runs.

        New statements for it raise :class:`UnknownBindError` at once; sessions that hold one of
        its connections finish their transactions undisturbed, on it, even if ``key`` is added
        again meanwhile (see :mod:`asyncbind.routing`). Returns when the last of them is done and
        the engine is disposed (if this call is cancelled, the engine is still disposed then). The
        default bind cannot be removed. Inside :func:`asyncbind.testing.rolled_back`, the test's
        connection of the bind is rolled back and closed first.
        """
        if key is None:
            raise ConfigError(
                "remove_bind(None): the default bind cannot be removed; sessions fall back to it "
                "for statements with no tables. Make a new AsyncBind to change it."
            )
        if isinstance(key, str) and key in self._groups:
            raise ConfigError(
                f"remove_bind({key!r}): {key!r} is a tenant group, which stays for the life of "
                "the AsyncBind; its idle tenant engines are disposed by themselves."
            )
        bind = self._binds.get(key) if isinstance(key, str) else None
        if bind is None:
            raise UnknownBindError(key, self._binds, owner="remove_bind()")
        del self._binds[key]
        replica_set = self._replicas.pop(key, None)
        self._route_binds()
        logger.info("removed %s; its engine is disposed once its sessions are done", bind_name(key))
        engines = [bind.engine, *(replica_set.engines if replica_set is not None else ())]
        retiring = [
            task
            for engine in engines
            if (task := self._retirements.retire(engine, bind_name(key))) is not None
        ]
        if retiring:  # a task per engine, the bind's own first
            self._hold_until_disposed(key, bind.engine, retiring[0])
            outer = self.sessionmaker.kw.get("outer_transactions")
            if outer is not None:  # a test that rolls back holds a connection of it till it ends
                await outer.release(bind.engine.sync_engine)
            await asyncio.shield(asyncio.gather(*retiring))

    def _hold_until_disposed(
        self, key: BindKey, engine: AsyncEngine, retiring: asyncio.Task[None]
    ) -> None:
        """Route ``key`` to ``engine``, removed, for the sessions whose transaction holds one of
        its connections (they end it there), until ``retiring`` has disposed it."""
        router, held = self._router, engine.sync_engine
        router.hold(key, held)
        retiring.add_done_callback(lambda _: router.release(key, held))

    def add_group(
        self,
        key: str,
        url: UrlResolver,
        *,
        max_engines: int = DEFAULT_MAX_ENGINES,
        engine_options: Mapping[str, Any] | None = None,
    ) -> TenantGroup:
        """Make ``key`` a tenant group: the models with ``__bind_key__ = key`` live in one
        database per tenant, ``url(tenant)`` (a URL string, a :class:`sqlalchemy.URL` or a dict
        with a ``"url"``; called once per engine made, it must not block).

        Inside ``with db.route(key=tenant):`` their statements go to that tenant's database; with
        no tenant routed they raise :class:`~asyncbind.exceptions.UnresolvedTenantError`. At most
        ``max_engines`` idle engines are kept, least recently used ones disposed first; an engine
        in use by a session is never disposed. ``engine_options`` go over the constructor's.
        """
        if not isinstance(key, str) or key == ALL or key in self._binds or key in self._groups:
            raise ConfigError(
                f"add_group({key!r}): the key of a tenant group is a string that names no bind or "
                f"group yet and is not {ALL!r} (configured: "
                f"{', '.join(repr(k) for k in [*self._binds, *self._groups]) or 'none'})."
            )
        group = self._groups.add(
            key,
            url,
            max_engines=max_engines,
            engine_options={**self._engine_options, **check_engine_options(engine_options)},
            make_engine=self._tenant_engine,
            retirements=self._retirements,
        )
        self.metadatas.for_key(key)
        self._router.set_groups(self._groups)
        return group

    def _tenant_engine(self, config: BindConfig) -> AsyncEngine:
        engine = make_engine(config)
        if self._record_queries:
            recording.install(engine)
        return engine

    def route(self, **tenants: str) -> Route:
        """``with db.route(tenant="acme"):`` (or ``async with``): statements on the models of
        group ``"tenant"`` go to tenant ``"acme"``'s database inside the block, in this task and
        the tasks it starts. Routes nest; the inner one wins for the groups it names."""
        return self._groups.route(tenants)

    def _make_sessionmaker(self) -> async_sessionmaker[views.AsyncBindSession]:
        options = dict(self._session_options)
        session_class = options.pop("class_", views.AsyncBindSession)
        options.setdefault("expire_on_commit", False)
        # A sync_session_class given in session_options goes to the sessionmaker; otherwise the
        # class_'s own applies (SQLAlchemy reads the class attribute; AsyncBindSession's is
        # RoutingSession). Both were checked by _check_session_options().
        return async_sessionmaker(class_=session_class, router=self._router, **options)

    # -- accessors --------------------------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        """The default bind's engine (key ``None``)."""
        return self.get_engine(None)

    def get_engine(self, bind_key: BindKey = None, *, tenant: str | None = None) -> AsyncEngine:
        """The engine of ``bind_key``; :class:`UnknownBindError` if it is not configured.

        For a tenant group, the engine of ``tenant``, else of the routed tenant.
        """
        if isinstance(bind_key, str) and bind_key in self._groups:
            return self._tenant_engines(bind_key, tenant, "get_engine()")
        if not self._binds:
            raise NotConfiguredError(_NOT_CONFIGURED)
        self._router.engine(bind_key, "get_engine()")  # raises UnknownBindError
        return self._binds[bind_key].engine

    def _configured_engines(self) -> Mapping[BindKey, AsyncEngine]:
        if not self._binds:
            raise NotConfiguredError(_NOT_CONFIGURED)
        return self.engines

    @property
    def metadata(self) -> sa.MetaData:
        """The default bind's metadata (key ``None``)."""
        return self.metadatas[None]

    def Table(  # noqa: N802
        self, name: str, *args: Any, bind_key: BindKey | Unset = UNSET, **kwargs: Any
    ) -> sa.Table:
        """A :class:`sqlalchemy.Table` in the metadata of ``bind_key`` (or of
        ``info={"bind_key": ...}``; the default bind if neither is given).

        ``db.Table("log", sa.Column("id", sa.Integer, primary_key=True), bind_key="appmeta")``
        """
        return make_table(self.metadatas, name, args, kwargs, bind_key)

    # -- schema -----------------------------------------------------------------------------

    def _tenant_engines(self, key: str, tenant: str | None, owner: str) -> AsyncEngine:
        group = self._groups[key]
        chosen = group.current_tenant() if tenant is None else check_tenant(key, tenant)
        if chosen is None:
            raise UnresolvedTenantError(key, owner=owner)
        return group.engine(chosen)

    def _table_groups(
        self, bind_key: object, tenant: str | None, operation: str
    ) -> tuple[schema.TableGroups, dict[BindKey, AsyncEngine]]:
        """The tables of each bind ``bind_key`` selects, and the engine each runs on.

        A tenant group runs on the engine of ``tenant``, else of the routed tenant; with neither,
        it is skipped under ``"__all__"`` and refused when named.
        """
        if not self._binds and not self._groups:
            raise NotConfiguredError(_NOT_CONFIGURED)
        configured = [*self._binds, *self._groups]
        keys = schema.select_keys(bind_key, configured)
        named = bind_key if isinstance(bind_key, list | tuple | set | frozenset) else [bind_key]
        engines: dict[BindKey, AsyncEngine] = {}
        for key in list(keys):
            if key is None or key in self._binds:
                engines[key] = self._binds[key].engine
            elif key in named or tenant is not None or self._groups[key].current_tenant():
                engines[key] = self._tenant_engines(key, tenant, f"{operation}")
            else:
                keys.remove(key)
                logger.info("%s: skipped tenant group %r, no tenant routed", operation, key)
        if tenant is not None and not any(k in self._groups for k in keys):
            raise ConfigError(
                f"{operation} was given tenant={tenant!r} but selects no tenant group. Name the "
                "group: bind_key='<group>'."
            )
        # Under "__all__" every table's bind must be configured (a typo'd __bind_key__ creates
        # nothing anywhere); binds named one by one may leave out a bind added at run time.
        groups = schema.tables_by_bind(
            list(self.metadatas.values()), keys, configured, every_table=ALL in named
        )
        return groups, engines

    def _read_only(self, key: BindKey) -> bool:
        bind = self._binds.get(key)
        return bind is not None and bind.config.read_only

    async def create_all(
        self, bind_key: BindKey | list[BindKey] = ALL, *, tenant: str | None = None
    ) -> None:
        """Create the tables of ``bind_key``'s binds that do not exist yet, binds concurrently.

        ``bind_key`` is ``"__all__"`` (every bind), None, a key, or a list of those. A tenant
        group creates its tables in the database of ``tenant``, else of the routed tenant
        (:meth:`route`); ``"__all__"`` skips a group with neither.
        """
        groups, engines = self._table_groups(bind_key, tenant, "create_all()")
        for key in [k for k in groups if self._read_only(k)]:
            del groups[key]
            logger.info("create_all: skipped read-only %s", bind_name(key))

        async def create(key: BindKey, engine: AsyncEngine) -> None:
            async with engine.begin() as conn:
                await conn.run_sync(schema.create_tables, groups[key])

        await schema.run_per_bind("create_all", engines, list(groups), create)

    async def drop_all(
        self, bind_key: BindKey | list[BindKey] = ALL, *, tenant: str | None = None
    ) -> None:
        """Drop the tables of ``bind_key``'s binds that exist, binds concurrently.

        Read-only binds are refused (:class:`ReadOnlyBindError`, nothing dropped anywhere) when
        named, and skipped when ``bind_key`` is ``"__all__"``. Tenant groups as in
        :meth:`create_all`.
        """
        groups, engines = self._table_groups(bind_key, tenant, "drop_all()")
        for key in [k for k in groups if self._read_only(k)]:
            if bind_key == ALL:
                del groups[key]
                logger.info("drop_all: skipped read-only %s", bind_name(key))
            else:
                raise ReadOnlyBindError(key, "drop_all()")

        async def drop(key: BindKey, engine: AsyncEngine) -> None:
            async with engine.begin() as conn:
                await conn.run_sync(schema.drop_tables, groups[key])

        await schema.run_per_bind("drop_all", engines, list(groups), drop)

    async def reflect(self, bind_key: BindKey | list[BindKey] = ALL, **kwargs: Any) -> None:
        """Load the tables of ``bind_key``'s databases into :attr:`metadatas`, binds concurrently.

        ``kwargs`` go to :meth:`sqlalchemy.MetaData.reflect` (``only=``, ``schema=``, ``views=``).
        """
        if not self._binds:
            raise NotConfiguredError(_NOT_CONFIGURED)
        keys = schema.select_keys(bind_key, self._binds)
        metadatas = {key: self.metadatas.for_key(key) for key in keys}

        async def reflect(key: BindKey, engine: AsyncEngine) -> None:
            async with engine.connect() as conn:
                await conn.run_sync(lambda sync: metadatas[key].reflect(sync, **kwargs))

        await schema.run_per_bind("reflect", self.engines, keys, reflect)

    async def copy(
        self,
        source: Any,
        target: Any,
        *,
        source_bind: Any = bulk._AUTO,
        target_bind: Any = bulk._AUTO,
        columns: list[str] | None = None,
        batch_size: int = bulk.BATCH_SIZE,
        parallel: int = 1,
        on_progress: bulk.ProgressCallback | None = None,
    ) -> bulk.CopyResult:
        """Copy the rows of ``source`` (a Table, a mapped class or a ``select()``) into ``target``
        (a Table or mapped class), streaming from one bind and loading at driver speed into another.

        The binds default to the tables' own; ``source_bind=`` / ``target_bind=`` name others.
        Each batch of ``batch_size`` rows is committed as it lands; on failure that batch is rolled
        back and :class:`~asyncbind.exceptions.BulkCopyError` reports ``rows_copied``.
        ``on_progress`` (a function or coroutine function) is called with a
        :class:`~asyncbind.bulk.CopyProgress` after each batch lands. ``parallel=N`` copies N
        ranges of the source's integer primary key at once, over N connections to each bind. See
        :mod:`asyncbind.bulk`.
        """
        return await bulk.copy_between_binds(
            self,
            source,
            target,
            source_bind=source_bind,
            target_bind=target_bind,
            columns=columns,
            batch_size=batch_size,
            parallel=parallel,
            on_progress=on_progress,
        )

    # -- views and query recording (Flask-SQLAlchemy's) ------------------------------------

    async def get_or_404(
        self, entity: type[_O], ident: Any, *, description: str | None = None, **kwargs: Any
    ) -> _O:
        """``db.session.get_or_404(...)``: the current session's ``get()``, with a 404 instead of
        None (see :class:`asyncbind.views.ViewHelpers`)."""
        return await self.session.get_or_404(entity, ident, description=description, **kwargs)

    @overload
    async def first_or_404(
        self, statement: TypedReturnsRows[_T, *_Ts], *, description: str | None = None
    ) -> _T: ...

    @overload
    async def first_or_404(
        self, statement: Executable, *, description: str | None = None
    ) -> Any: ...

    async def first_or_404(self, statement: Executable, *, description: str | None = None) -> Any:
        """``db.session.first_or_404(...)``: the first row's first column, or a 404."""
        return await self.session.first_or_404(statement, description=description)

    @overload
    async def one_or_404(
        self, statement: TypedReturnsRows[_T, *_Ts], *, description: str | None = None
    ) -> _T: ...

    @overload
    async def one_or_404(self, statement: Executable, *, description: str | None = None) -> Any: ...

    async def one_or_404(self, statement: Executable, *, description: str | None = None) -> Any:
        """``db.session.one_or_404(...)``: the one row's first column, or a 404."""
        return await self.session.one_or_404(statement, description=description)

    @overload
    async def paginate(
        self,
        select: TypedReturnsRows[_T, *_Ts],
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination[_T]: ...

    @overload
    async def paginate(
        self,
        select: sa.Select[Any],
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination[Any]: ...

    async def paginate(
        self,
        select: Any,
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination[Any]:
        """``db.session.paginate(...)``: one page of ``select`` on the current session, as
        Flask-SQLAlchemy's ``db.paginate`` (see :meth:`asyncbind.views.ViewHelpers.paginate`)."""
        return await self.session.paginate(
            select,
            page=page,
            per_page=per_page,
            max_per_page=max_per_page,
            error_out=error_out,
            count=count,
        )

    # -- two-phase commit ----------------------------------------------------------------

    def _twophase_keys(self) -> list[BindKey]:
        return list(self._binds)

    def _twophase_log_engine(self, key: BindKey) -> sa.Engine:
        return self._router.engine(key, "twophase_log=")

    async def recover(self) -> twophase.Recovery:
        """Resolve this application's in-doubt two-phase transactions on every bind.

        After a crash between PREPARE and the last COMMIT of a ``twophase=True`` session, its
        transactions stay prepared (holding their locks). Each is committed where the decision
        to commit was recorded, else rolled back, the same way on every bind; the decision rows
        of finished commits are deleted. Idempotent, and safe to run at every start while other
        processes commit. Returns a :class:`~asyncbind.Resolution` per transaction resolved, in
        a list whose ``left`` lists the transactions it had to leave in doubt, still held by a
        live connection (:class:`~asyncbind.twophase.Left`): run it again once they are free.
        """
        coordinator = self._router.twophase
        engines = self._configured_engines()
        if coordinator is None:  # pragma: no cover - made in the constructor
            return twophase.Recovery([], [])
        log = self.get_engine(coordinator.log_key)
        return await twophase.recover(coordinator, engines, log)

    # -- health -----------------------------------------------------------------------------

    async def ping(
        self,
        *,
        timeout: float = 2.0,  # noqa: ASYNC109 (per bind: see asyncbind.health)
    ) -> dict[BindKey, health.BindHealth]:
        """Send ``SELECT 1`` to every bind concurrently, each bounded by ``timeout`` seconds.

        Returns a :class:`~asyncbind.BindHealth` per bind key (ok or not, latency, the error in
        words with no password); a bind that fails or hangs is reported, never raised.
        """
        return await health.ping(
            self._configured_engines(), timeout=timeout, replicas=self._replica_engines()
        )

    def pool_status(self) -> dict[BindKey, health.PoolStatus]:
        """Each bind's pool: size, connections checked out and in, overflow (no I/O); a bind's
        read replicas' pools in its ``replicas``."""
        return health.pool_status(self._configured_engines(), self._replica_engines())

    def _replica_engines(self) -> dict[BindKey, list[AsyncEngine]]:
        return {key: found.engines for key, found in self._replicas.items()}

    @property
    def replica_engines(self) -> Mapping[BindKey, list[AsyncEngine]]:
        """The engines of each bind's read replicas, in the order configured, by bind key; a
        bind without replicas has no entry. Sessions choose among them (see :meth:`primary`)."""
        return MappingProxyType(self._replica_engines())

    def primary(self) -> replicas.PrimaryBlock:
        """``async with db.primary():`` sends every statement of this AsyncBind's sessions in the
        block (in this task and the tasks it starts) to the primaries, never to a read replica.

        For one statement: ``select(User).execution_options(use_primary=True)``.
        """
        return replicas.PrimaryBlock(self._router)

    @property
    def record_queries(self) -> bool:
        """Whether statements are recorded for :func:`asyncbind.get_recorded_queries`.

        Set it to True to record from now on, on every bind configured now or later (``init_app``
        does with ``SQLALCHEMY_RECORD_QUERIES``); False records nothing in the requests and scopes
        that start afterwards.
        """
        return self._record_queries

    @record_queries.setter
    def record_queries(self, record: bool) -> None:
        if not isinstance(record, bool):
            raise ConfigError(f"record_queries is set to {record!r}; expected True or False.")
        self._record_queries = record
        if record:
            for bind in self._binds.values():
                recording.install(bind.engine)
            for found in self._replicas.values():
                for engine in found.engines:
                    recording.install(engine)
            for group in self._groups.values():
                for engine in group.engines.values():
                    recording.install(engine)

    @property
    def engine_options(self) -> Mapping[str, Any]:
        """The constructor's ``engine_options`` (read-only): every bind configured later gets
        them, under its own (``SQLALCHEMY_ENGINE_OPTIONS`` in :meth:`init_app`'s config)."""
        return MappingProxyType(self._engine_options)

    # -- lifecycle --------------------------------------------------------------------------

    async def dispose(self) -> None:
        """Close every pooled connection of every bind, concurrently.

        Connections made in another event loop, a closed one included, are closed too, without
        that loop (see :mod:`asyncbind.loops`). Safe to call more than once; the engines stay
        usable and open new connections on demand (in the event loop that uses them next).
        Tenant engines are disposed too, and removed or evicted engines still waiting for their
        sessions are disposed without waiting longer.
        """
        await self._retirements.dispose_now()
        engines = [bind.engine for bind in self._binds.values()]
        engines += [engine for found in self._replicas.values() for engine in found.engines]
        engines += [e for group in self._groups.values() for e in group.engines.values()]
        await stopping.settle(engines)
        if len(engines) == 1:
            await engines[0].dispose()
        elif engines:
            async with asyncio.TaskGroup() as group:
                for engine in engines:
                    group.create_task(engine.dispose())

    async def __aenter__(self) -> AsyncBind:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Disposing finishes even if this task is cancelled meanwhile.
        await run_to_completion(self.dispose())

    def __repr__(self) -> str:
        binds = ", ".join(_describe(key, bind.config) for key, bind in self._binds.items())
        return f"<AsyncBind {{{binds}}}>" if binds else "<AsyncBind (not configured)>"


AppSetup = Callable[[AsyncBind, Any], bool]
"""``setup(db, app)``: set ``db`` up for ``app`` and return True, or return False for an app of
another framework."""

_app_setups: list[AppSetup] = []


def add_app_setup(setup: AppSetup) -> None:
    """Let :meth:`AsyncBind.init_app` set up the apps that ``setup`` knows.

    An integration registers its setup when it is imported: integrations import the facade, never
    the reverse. ``import asyncbind`` imports :mod:`asyncbind.integrations`, which registers
    Quart's without importing Quart.
    """
    if setup not in _app_setups:
        _app_setups.append(setup)


def _describe(key: BindKey, config: BindConfig) -> str:
    """A bind as the AsyncBind's repr shows it: its URL and its replicas', passwords hidden."""
    text = f"{'None' if key is None else repr(key)}: {render_url(config.url)!r}"
    if config.replicas:
        text += f" (replicas: {', '.join(repr(render_url(url)) for url in config.replicas)})"
    return text


def _engine(bind: Bind) -> AsyncEngine:
    return bind.engine


def _config(bind: Bind) -> BindConfig:
    return bind.config


def _build(
    url: object, binds: object, engine_options: object
) -> tuple[dict[BindKey, Bind], dict[BindKey, replicas.ReplicaSet]]:
    """Validate every bind and make its engine and its replicas' (no connection yet).

    Every problem of every bind is found first, then raised as one :class:`ConfigError`; no
    engine is kept when any bind is wrong.
    """
    configs, problems = check_config(url, binds, engine_options)
    made: dict[BindKey, Bind] = {}
    replica_sets: dict[BindKey, replicas.ReplicaSet] = {}
    for key, config in configs.items():
        try:
            made[key] = Bind(config, make_engine(config))
            found = replicas.make_replica_set(config)
        except ConfigError as exc:
            problems.append(exc)
            continue
        if found is not None:
            replica_sets[key] = found
    if problems:
        raise config_error(problems)
    return made, replica_sets


def _check_session_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(
            f"session_options= must be a mapping of async_sessionmaker() options, "
            f"not {type(options).__name__}. Example: session_options={{'autoflush': False}}."
        )
    options = dict(options)
    session_class = options.get("class_", views.AsyncBindSession)
    if not (isinstance(session_class, type) and issubclass(session_class, views.AsyncBindSession)):
        given = session_class.__qualname__ if isinstance(session_class, type) else session_class
        raise ConfigError(
            f"session_options['class_'] is {given!r}; expected asyncbind.AsyncBindSession or a "
            "subclass of it, which refuses a session shared by two tasks and has the view "
            "helpers. Subclass it for a session class of your own: "
            "'class MySession(asyncbind.AsyncBindSession): ...'."
        )
    # The sync session class routes: one given here, else the class_'s own.
    sync_session_class = options.get("sync_session_class")
    if sync_session_class is not None:
        check_session_class(sync_session_class, "session_options['sync_session_class']")
    else:
        sync_session_class = session_class.sync_session_class
        check_session_class(
            sync_session_class,
            f"'{session_class.__qualname__}.sync_session_class' (session_options['class_'])",
        )
    known = _init_parameters(async_sessionmaker, session_class, sync_session_class)
    unknown = [name for name in options if name not in known]
    if unknown:
        guesses = [difflib.get_close_matches(name, known, n=1) for name in unknown]
        hints = "".join(
            f" ({name!r}: did you mean {found[0]!r}?)"
            for name, found in zip(unknown, guesses, strict=True)
            if found
        )
        raise ConfigError(
            f"session_options has {', '.join(repr(n) for n in unknown)}, which the sessions do "
            f"not take{hints}. They are async_sessionmaker() and Session() keyword arguments, "
            "such as 'autoflush', 'expire_on_commit', 'twophase' or 'info'."
        )
    return options


def _init_parameters(*classes: type) -> frozenset[str]:
    """The keyword parameters of the ``__init__`` of ``classes`` and their bases."""
    names: set[str] = set()
    for cls in classes:
        for base in cls.__mro__:
            init = base.__dict__.get("__init__")
            if init is None or base is object:
                continue
            for name, parameter in inspect.signature(init).parameters.items():
                if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                    names.add(name)
    names.discard("self")
    return frozenset(names)
