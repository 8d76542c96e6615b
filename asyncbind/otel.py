"""OpenTelemetry: a span for every statement on every bind.

``pip install "asyncbind[otel]"``, then ``asyncbind.otel.instrument(db)`` once at start-up, with the
tracer provider of your OpenTelemetry set-up. The spans come from OpenTelemetry's own SQLAlchemy
instrumentation, attached to each bind's engine: each carries the statement, the database system
and the database name (``db.name``), so the spans of different binds tell apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .exceptions import ConfigError, NotConfiguredError

if TYPE_CHECKING:
    from .core import AsyncBind

__all__ = ["instrument", "uninstrument"]

_INSTALL = "pip install 'asyncbind[otel]'"


def _instrumentor() -> Any:
    try:
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    except ImportError:
        raise ImportError(
            f"asyncbind.otel needs opentelemetry-instrumentation-sqlalchemy: {_INSTALL}"
        ) from None
    return SQLAlchemyInstrumentor()


def instrument(*dbs: AsyncBind, **options: Any) -> None:
    """Trace every statement of every bind of ``dbs``.

    ``options`` go to ``SQLAlchemyInstrumentor().instrument()``: ``tracer_provider=``,
    ``meter_provider=``, ``enable_commenter=``, ... OpenTelemetry's instrumentor is one per
    process and instruments once, so pass every AsyncBind in one call; :func:`uninstrument` undoes
    it. Binds are instrumented as configured now: call this after ``configure()`` or
    ``init_app()``.
    """
    if not dbs:
        raise ConfigError("instrument() needs the AsyncBind(s) to trace: instrument(db).")
    engines: list[sa.Engine] = []
    for db in dbs:
        if not db.engines:
            raise NotConfiguredError(
                f"{db!r} has no binds yet; call instrument() after configure() or init_app()."
            )
        engines.extend(engine.sync_engine for engine in db.engines.values())
        for replicas in db.replica_engines.values():
            engines.extend(engine.sync_engine for engine in replicas)
    instrumentor = _instrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        raise ConfigError(
            "SQLAlchemy is already instrumented by OpenTelemetry in this process; its "
            "instrumentor works once. Pass every AsyncBind to one instrument(db1, db2) call, "
            "or call asyncbind.otel.uninstrument() first."
        )
    # The instrumentation declares the SQLAlchemy versions it was released against; it hooks only
    # the engine events that SQLAlchemy 2.x keeps, and asyncbind's tests run it on the SQLAlchemy
    # installed with asyncbind.
    options.setdefault("skip_dep_check", True)
    instrumentor.instrument(engines=engines, **options)


def uninstrument() -> None:
    """Stop tracing what :func:`instrument` traced."""
    _instrumentor().uninstrument()
