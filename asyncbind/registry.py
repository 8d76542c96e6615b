"""The binds: each bind's config with its engine, and which bind an engine belongs to.

:class:`Bind` holds one configured bind; :class:`~asyncbind.AsyncBind` keeps them in one dict by
key, and :class:`BindFields` shows one field of each (``db.engines``, ``db.bind_configs``).

:func:`asyncbind.engines.make_engine` registers each engine it makes with its
:class:`~asyncbind.config.BindConfig` (the bind's key, URL, options, ``read_only``).
:func:`bind_config` answers for the engine, for its ``execution_options()`` copies, and for their
connections, sync or async: they all share the engine's dialect, which is the key here. The
answer outlives ``dispose()`` (which keeps the dialect), and the entry goes when the engine does.
An engine that asyncbind did not make belongs to no bind (None).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .config import BindConfig, BindKey
from .exceptions import UnknownBindError

__all__ = ["Bind", "BindFields", "bind_config", "register"]

_V = TypeVar("_V")

EngineOrConnection = AsyncEngine | AsyncConnection | sa.Engine | sa.Connection


@dataclass(frozen=True, slots=True)
class Bind:
    """One configured bind: its validated config and the engine made from it."""

    config: BindConfig
    engine: AsyncEngine


class BindFields(Mapping[BindKey, _V], Generic[_V]):
    """A read-only, live view of one field of every bind, by key: ``db.engines`` shows each
    bind's engine, ``db.bind_configs`` its config."""

    __slots__ = ("_binds", "_field")

    def __init__(self, binds: Mapping[BindKey, Bind], field: Callable[[Bind], _V]) -> None:
        self._binds = binds
        self._field = field

    def __getitem__(self, key: BindKey) -> _V:
        try:
            bind = self._binds[key]
        except KeyError:
            raise UnknownBindError(key, self._binds) from None
        return self._field(bind)

    def __iter__(self) -> Iterator[BindKey]:
        return iter(self._binds)

    def __len__(self) -> int:
        return len(self._binds)

    def __repr__(self) -> str:
        return repr(dict(self))


_CONFIGS: weakref.WeakKeyDictionary[sa.Dialect, BindConfig] = weakref.WeakKeyDictionary()


def register(engine: AsyncEngine | sa.Engine, config: BindConfig) -> None:
    """Record that ``engine`` is the engine of ``config``'s bind."""
    _CONFIGS[engine.dialect] = config


def bind_config(bind: EngineOrConnection) -> BindConfig | None:
    """The :class:`BindConfig` of the bind that ``bind`` (an engine or a connection, sync or
    async) belongs to, or None for an engine that asyncbind did not make."""
    return _CONFIGS.get(bind.dialect)
