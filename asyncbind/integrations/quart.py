"""Quart: ``db.init_app(app)``, or ``AsyncBind(app=app)``.

- The binds come from Flask-SQLAlchemy's keys in ``app.config`` (``SQLALCHEMY_DATABASE_URI``,
  ``SQLALCHEMY_BINDS``, ``SQLALCHEMY_ENGINE_OPTIONS``, ``SQLALCHEMY_ECHO``), read and validated by
  ``init_app``; an AsyncBind given its binds already keeps them. ``SQLALCHEMY_ENGINE_OPTIONS``
  override the AsyncBind's own ``engine_options``, as in Flask-SQLAlchemy.
- As in Flask-SQLAlchemy, a relative SQLite path is relative to ``app.instance_path``, which is
  created if needed; in-memory databases and absolute paths stay as they are.
- The engines are made by ``init_app`` (no connection is opened until one is used).
  ``before_serving`` resets their pools, so that the serving event loop starts with connections
  of its own; ``after_serving`` disposes every engine.
- Every app context gets its own ``db.session``, made on first use and closed in
  ``teardown_appcontext``, which rolls back whatever was not committed (a failed request's work).
  Quart pushes an app context per request and per websocket; ``async with app.app_context():``
  blocks, CLI commands and ``app.add_background_task`` tasks have their own too.
- In a request, ``get_or_404`` and the other view helpers call ``quart.abort(404)``, and
  ``paginate`` reads ``?page=`` and ``?per_page=`` from ``request.args``.
- With ``SQLALCHEMY_RECORD_QUERIES``, the statements of each app context are recorded for
  ``asyncbind.get_recorded_queries()``, as Flask-SQLAlchemy records them in ``g``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NoReturn

from quart import Quart, abort, has_app_context, has_request_context, request
from quart.globals import app_ctx

from .. import recording, web
from ..cancellation import run_to_completion
from ..config import config_from_mapping, parse_config, place_sqlite_files
from ..exceptions import ConfigError
from ..scoping import Scope

if TYPE_CHECKING:
    from ..core import AsyncBind

__all__ = ["init_app"]

#: The key of ``app.extensions`` that holds the app's AsyncBind (Flask-SQLAlchemy's is
#: ``"sqlalchemy"``).
EXTENSION_KEY = "asyncbind"
# The attribute of an AppContext that holds its scopes, one per AsyncBind.
_SCOPES = "_asyncbind_scopes"
# The attribute of an AppContext that holds its recorded queries.
_QUERIES = "_asyncbind_queries"


class _QuartRequest:
    """Quart's request being handled, for the view helpers: its query string and Quart's 404."""

    __slots__ = ()

    def query_arg(self, name: str) -> str | None:
        return request.args.get(name)

    def not_found(self, description: str | None) -> NoReturn:
        abort(404, description=description)


_REQUEST = _QuartRequest()


def _current_request() -> _QuartRequest | None:
    return _REQUEST if has_request_context() else None


def _current_queries() -> list[recording.QueryInfo] | None:
    """The app context's recorded queries, if its app's AsyncBind records them."""
    if not has_app_context():
        return None
    ctx = app_ctx._get_current_object()
    db = ctx.app.extensions.get(EXTENSION_KEY)
    if db is None or not db.record_queries:
        return None
    queries: list[recording.QueryInfo] | None = getattr(ctx, _QUERIES, None)
    if queries is None:
        queries = []
        setattr(ctx, _QUERIES, queries)
    return queries


def init_app(db: AsyncBind, app: Quart) -> None:
    """Set ``db`` up for ``app``; see the module's documentation."""
    registered = app.extensions.get(EXTENSION_KEY)
    if registered is db:
        return
    if registered is not None:
        raise ConfigError(
            f"App {app.name!r} already has an AsyncBind ({registered!r}). "
            "Import and use that one instead of making a second."
        )
    record_queries = recording.config_flag(app.config)
    _configure(db, app)
    if record_queries:
        db.record_queries = True
    app.extensions[EXTENSION_KEY] = db
    web.add_provider(_current_request)
    recording.add_provider(_current_queries)
    factory = db.session

    def current_scope() -> Scope | None:
        if not has_app_context():
            return None
        ctx = app_ctx._get_current_object()
        if ctx.app is not app:
            return None
        scopes: dict[object, Scope] | None = getattr(ctx, _SCOPES, None)
        if scopes is None:
            scopes = {}
            setattr(ctx, _SCOPES, scopes)
        scope = scopes.get(factory)
        if scope is None:
            scope = scopes[factory] = Scope(factory)
        return scope

    async def close_scope(exc: BaseException | None) -> None:
        ctx = app_ctx._get_current_object()
        # Kept, ended: a task of the context that outlives it gets NoCurrentSessionError, not a
        # new session that nobody would close.
        scope = getattr(ctx, _SCOPES, {}).get(factory)
        if scope is not None:
            await scope.end()

    async def reset_pools() -> None:
        await run_to_completion(db.dispose())

    db.add_scope_provider(current_scope)
    app.teardown_appcontext(close_scope)
    app.before_serving(reset_pools)
    app.after_serving(reset_pools)


def _configure(db: AsyncBind, app: Quart) -> None:
    parsed = config_from_mapping(app.config)
    if not parsed.has_database:
        if db.engines:
            return  # configured by its constructor
        raise ConfigError(
            f"Neither 'SQLALCHEMY_DATABASE_URI' nor 'SQLALCHEMY_BINDS' is set in the config of "
            f"app {app.name!r}. Set one before calling 'db.init_app(app)', or pass the URL to "
            "AsyncBind(...)."
        )
    placed = place_sqlite_files(parsed, app.instance_path)
    engine_options = placed.engine_options_over(db.engine_options)
    if db.engines:
        configs = parse_config(placed.url, placed.binds, engine_options)
        if configs == dict(db.bind_configs):
            return  # the same binds, for example a second app of one app factory
        raise ConfigError(
            f"{db!r} is already configured, with other binds than the config of app "
            f"{app.name!r}. An AsyncBind has one set of binds: make one AsyncBind per set, or "
            "configure it in one place only (app.config or AsyncBind(...))."
        )
    if placed is not parsed:
        os.makedirs(app.instance_path, exist_ok=True)  # as Flask-SQLAlchemy does
    db.configure(placed.url, binds=placed.binds, engine_options=engine_options)
