"""Which bind an engine belongs to: the one answer, for every part of asyncbind that asks.

:func:`asyncbind.engines.make_engine` registers each engine it makes with its
:class:`~asyncbind.config.BindConfig` (the bind's key, URL, options, ``read_only``).
:func:`bind_config` answers for the engine, for its ``execution_options()`` copies, and for their
connections, sync or async: they all share the engine's dialect, which is the key here. The
answer outlives ``dispose()`` (which keeps the dialect), and the entry goes when the engine does.
An engine that asyncbind did not make belongs to no bind (None).
"""

from __future__ import annotations

import weakref

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .config import BindConfig

__all__ = ["bind_config", "register"]

Bind = AsyncEngine | AsyncConnection | sa.Engine | sa.Connection

_CONFIGS: weakref.WeakKeyDictionary[sa.Dialect, BindConfig] = weakref.WeakKeyDictionary()


def register(engine: AsyncEngine | sa.Engine, config: BindConfig) -> None:
    """Record that ``engine`` is the engine of ``config``'s bind."""
    _CONFIGS[engine.dialect] = config


def bind_config(bind: Bind) -> BindConfig | None:
    """The :class:`BindConfig` of the bind that ``bind`` (an engine or a connection, sync or
    async) belongs to, or None for an engine that asyncbind did not make."""
    return _CONFIGS.get(bind.dialect)
