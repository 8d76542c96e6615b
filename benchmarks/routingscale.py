"""Routing's own cost at 1, 10 and 100 binds and 10 and 1,000 models (the scaling suite's curves).

Each configuration has ``binds`` SQLite binds (never connected: routing needs no connection) and
``models`` models spread over them in turn. A run asks the sync session which engine each of
``calls`` statements goes to, cycling through every model: its ORM ``select`` (with its mapper,
as ``get()`` and ORM statements are routed) and its Core ``select`` of the table (no mapper).
asyncbind's ``RoutingSession`` answers by bind key; the baseline is a plain ``Session(binds=...)``
with the same models mapped to engines of their own. Statements are built once, so their SQL
cache keys are memoized, as SQLAlchemy memoizes them for its compiled cache on every execution.
"""

from __future__ import annotations

import gc
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import orm as sa_orm

from asyncbind import AsyncBind

BINDS = (1, 10, 100)
MODELS = (10, 1_000)

Call = tuple[Any, sa.Select[Any]]


def _key(i: int) -> str | None:
    return None if i == 0 else f"b{i}"


class Routes:
    """asyncbind and a plain Session over ``binds`` binds and ``models`` models."""

    def __init__(self, folder: str, binds: int, models: int, calls: int) -> None:
        keys = [_key(i) for i in range(binds)]
        self.db = AsyncBind(binds={k: f"sqlite:///{folder}/ours_{k}.db" for k in keys})
        engines = {k: sa.create_engine(f"sqlite:///{folder}/plain_{k}.db") for k in keys}
        self.engines = engines

        class Base(sa_orm.DeclarativeBase):
            pass

        ours: list[Any] = []
        plain: list[Any] = []
        plain_binds: dict[Any, sa.Engine] = {}
        for i in range(models):
            key = keys[i % binds]
            ours.append(type(f"Ours{i}", (self.db.Model,), _namespace(i, key)))
            model = type(f"Plain{i}", (Base,), _namespace(i, None))
            plain.append(model)
            plain_binds[model] = engines[key]
        sa_orm.configure_mappers()
        self.ours_session = self.db.session().sync_session
        self.plain_session = sa_orm.Session(binds=plain_binds)
        self.ours_calls = _cycle(ours, calls)
        self.plain_calls = _cycle(plain, calls)

    def ours(self) -> float:
        """CPU seconds asyncbind's RoutingSession.get_bind() takes for the run's statements."""
        return _route(self.ours_session.get_bind, self.ours_calls)

    def plain(self) -> float:
        """The same with a plain Session(binds={Model: engine, ...})."""
        return _route(self.plain_session.get_bind, self.plain_calls)

    async def dispose(self) -> None:
        self.plain_session.close()
        await self.db.dispose()
        for engine in self.engines.values():
            engine.dispose()


def _namespace(i: int, key: str | None) -> dict[str, Any]:
    namespace: dict[str, Any] = {
        "__tablename__": f"t{i}",
        "id": sa_orm.mapped_column(sa.Integer, primary_key=True),
        "name": sa_orm.mapped_column(sa.String(20)),
    }
    if key is not None:
        namespace["__bind_key__"] = key
    return namespace


def _cycle(models: list[Any], calls: int) -> list[Call]:
    """``calls`` routing questions, cycling through each model's ORM and Core select."""
    questions: list[Call] = []
    for model in models:
        table = model.__table__
        questions.append((sa.inspect(model), sa.select(model).where(model.id == 1)))
        questions.append((None, sa.select(table).where(table.c.id == 1)))
    return list(itertools.islice(itertools.cycle(questions), calls))


def _route(get_bind: Callable[..., Any], calls: list[Call]) -> float:
    started = time.process_time()
    for mapper, clause in calls:
        get_bind(mapper, clause=clause)
    return time.process_time() - started


async def measure(calls: int, repeat: int) -> dict[tuple[int, int], dict[str, list[float]]]:
    """Per configuration (binds, models): nanoseconds per statement of each run, for
    ``asyncbind`` and ``plain``, the two interleaved (ABBA) after one warm-up run each."""
    results: dict[tuple[int, int], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="asyncbind-routing-scale-") as folder:
        for models in MODELS:
            for binds in BINDS:
                routes = Routes(folder, binds, models, calls)
                try:
                    routes.ours(), routes.plain()  # warm-up: caches filled
                    samples: dict[str, list[float]] = {"asyncbind": [], "plain": []}
                    for run in range(repeat):
                        gc.collect()
                        order = [("asyncbind", routes.ours), ("plain", routes.plain)]
                        for name, fn in order if run % 2 == 0 else order[::-1]:
                            samples[name].append(fn() / calls * 1e9)
                    results[binds, models] = samples
                finally:
                    await routes.dispose()
                del routes
                gc.collect()
    return results


def summary(samples: dict[str, list[float]]) -> tuple[float, float, list[float]]:
    """Median ns per statement of asyncbind and plain, and the per-run ratios asyncbind / plain."""
    ratios = [o / p for o, p in zip(samples["asyncbind"], samples["plain"], strict=True)]
    return statistics.median(samples["asyncbind"]), statistics.median(samples["plain"]), ratios
