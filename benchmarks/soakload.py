"""The soak's workload, and the ledger of every row asyncbind acknowledged.

Workers pick operations at random, on one bind or on both, and a share of them is cancelled at a
random moment:

- ``read``: a count and a few rows; ``stream``: a server-side cursor, sometimes left early;
- ``commit``: a few rows inserted into one bind and committed;
- ``both``: a row in each bind, one session, one commit (one per bind, not atomic);
- ``rollback``: rows inserted, then rolled back: no such row may ever be found;
- ``load``: ``asyncbind.bulk.load_rows`` into one bind, in batches (COPY on PostgreSQL);
- ``copy``: ``db.copy`` of a ``select()`` over one bind's seed table into the other bind.

Every row has an id unique over both binds and names the operation that wrote it. An id enters the
ledger only when the library acknowledged its row: the ``commit()``, ``load_rows()`` or ``copy()``
returned, or a :class:`~asyncbind.exceptions.BulkCopyError` said (``rows_copied``) that the batches
holding it had landed. A commit whose outcome is unknown (the connection died during COMMIT) is not
acknowledged, so its rows may be found or not.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import sqlalchemy as sa

from asyncbind import AsyncBind
from asyncbind.bulk import load_rows
from asyncbind.exceptions import BulkCopyError

Key = str | None
KEYS: tuple[Key, ...] = (None, "maria")
#: Where a failure of an operation over both binds goes when its error names no bind.
BOTH = "(both binds)"
#: Bound on one operation: far above the binds' timeouts, so only a hang reaches it.
GUARD = 30.0
#: Rows in each bind's seed table, the source of ``copy``.
SEED_ROWS = 500
LOAD_BATCH = 50
COPY_BATCH = 100

#: Operations and how often each is picked.
WEIGHTS = {"read": 3, "stream": 1, "commit": 3, "both": 2, "rollback": 1, "load": 2, "copy": 1}
#: A cancelled operation is cancelled this many seconds after it starts, at most (uniformly).
CANCEL_WITHIN = {"load": 0.25, "copy": 0.25}
CANCEL_WITHIN_DEFAULT = 0.05


def define_tables(db: AsyncBind) -> None:
    """``soak_rows`` (what the workers write) and ``soak_seed`` (0..SEED_ROWS-1) in each bind."""
    for key in KEYS:
        db.Table(
            "soak_rows",
            sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("kind", sa.String(20), nullable=False),
            bind_key=key,
        )
        db.Table(
            "soak_seed",
            sa.Column("n", sa.Integer, primary_key=True, autoincrement=False),
            bind_key=key,
        )


async def fill_seeds(db: AsyncBind) -> None:
    async with db.session() as session:
        for key in KEYS:
            seed = db.metadatas[key].tables["soak_seed"]
            await session.execute(sa.insert(seed), [{"n": n} for n in range(SEED_ROWS)])
        await session.commit()


@dataclass
class Ledger:
    """What asyncbind acknowledged, per bind: row id -> how it was acknowledged."""

    acknowledged: dict[Key, dict[int, str]] = field(
        default_factory=lambda: {key: {} for key in KEYS}
    )

    def add(self, key: Key, ids: range | list[int], how: str) -> None:
        self.acknowledged[key].update(dict.fromkeys(ids, how))


@dataclass
class Stats:
    """How each operation ended (ok, failed, cancelled) and the failures by bind."""

    outcomes: dict[str, Counter[str]] = field(
        default_factory=lambda: {kind: Counter() for kind in WEIGHTS}
    )
    failures: dict[Key, Counter[str]] = field(
        default_factory=lambda: {key: Counter() for key in (*KEYS, BOTH)}
    )
    examples: dict[tuple[Key, str], str] = field(default_factory=dict)
    """The first message of each kind of failure, by bind."""

    def failed(self, key: Key, name: str, exc: BaseException) -> None:
        self.failures[key][name] += 1
        if (key, name) not in self.examples:
            # A bulk error's own message says which batch; its cause says why.
            shown = exc.__cause__ if isinstance(exc, BulkCopyError) and exc.__cause__ else exc
            self.examples[key, name] = " ".join(str(shown).split()) or repr(shown)


class Load:
    """The workers: random operations, a share of them cancelled, each one bounded by GUARD."""

    def __init__(self, db: AsyncBind, rng: random.Random, cancel: float) -> None:
        self.db = db
        self.rng = rng
        self.cancel = cancel
        self.ledger = Ledger()
        self.stats = Stats()
        self._next_id = 1
        self._operations: dict[str, Callable[[Key], Awaitable[None]]] = {
            "read": self.read,
            "stream": self.stream,
            "commit": self.commit,
            "both": self.both,
            "rollback": self.rollback,
            "load": self.load,
            "copy": self.copy,
        }

    def table(self, key: Key, name: str = "soak_rows") -> sa.Table:
        return self.db.metadatas[key].tables[name]

    def new_ids(self, count: int) -> range:
        """``count`` ids that no other row of either bind has."""
        first, self._next_id = self._next_id, self._next_id + count
        return range(first, first + count)

    # -- operations --------------------------------------------------------------------------

    async def read(self, key: Key) -> None:
        table = self.table(key)
        async with self.db.session() as session:
            await session.scalar(sa.select(sa.func.count()).select_from(table))
            await session.execute(sa.select(table).order_by(table.c.id.desc()).limit(20))

    async def stream(self, key: Key) -> None:
        table = self.table(key)
        async with self.db.session() as session:
            result = await session.stream(sa.select(table.c.id).limit(300))
            async for _ in result:
                if self.rng.random() < 0.02:
                    break

    async def commit(self, key: Key) -> None:
        ids = self.new_ids(self.rng.randint(1, 5))
        async with self.db.session() as session:
            await session.execute(
                sa.insert(self.table(key)), [{"id": i, "kind": "commit"} for i in ids]
            )
            await session.commit()
            self.ledger.add(key, ids, "commit")

    async def both(self, key: Key) -> None:
        ids = {k: self.new_ids(1) for k in KEYS}
        async with self.db.session() as session:
            for k in KEYS:
                await session.execute(sa.insert(self.table(k)), [{"id": ids[k][0], "kind": "both"}])
            await session.commit()
            for k in KEYS:
                self.ledger.add(k, ids[k], "both")

    async def rollback(self, key: Key) -> None:
        ids = self.new_ids(self.rng.randint(1, 3))
        async with self.db.session() as session:
            rows = [{"id": i, "kind": "rollback"} for i in ids]
            await session.execute(sa.insert(self.table(key)), rows)
            await session.rollback()

    async def load(self, key: Key) -> None:
        ids = self.new_ids(self.rng.randint(LOAD_BATCH, 6 * LOAD_BATCH))
        try:
            await load_rows(
                self.db.get_engine(key),
                self.table(key),
                [(i, "load") for i in ids],
                batch_size=LOAD_BATCH,
            )
        except BulkCopyError as exc:
            # The batches before the failed one landed, in order.
            self.ledger.add(key, ids[: exc.rows_copied], "load, partial")
            raise
        self.ledger.add(key, ids, "load")

    async def copy(self, key: Key) -> None:
        """From ``key``'s seed table into the other bind's rows, ids computed by the select."""
        target = next(k for k in KEYS if k != key)
        ids = self.new_ids(self.rng.randint(COPY_BATCH, SEED_ROWS))
        seed = self.table(key, "soak_seed")
        source = (
            sa.select((seed.c.n + ids[0]).label("id"), sa.literal("copy").label("kind"))
            .where(seed.c.n < len(ids))
            .order_by(seed.c.n)
        )
        try:
            await self.db.copy(source, self.table(target), batch_size=COPY_BATCH)
        except BulkCopyError as exc:
            self.ledger.add(target, ids[: exc.rows_copied], "copy, partial")
            raise
        self.ledger.add(target, ids, "copy")

    # -- workers -----------------------------------------------------------------------------

    async def worker(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
        while loop.time() < deadline:
            kind = self.rng.choices(kinds, weights)[0]
            key = self.rng.choice(KEYS)
            task = loop.create_task(self.guarded(kind, key))
            handle = None
            if self.rng.random() < self.cancel:
                within = CANCEL_WITHIN.get(kind, CANCEL_WITHIN_DEFAULT)
                handle = loop.call_later(self.rng.uniform(0, within), task.cancel)
            try:
                outcome = await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # this worker was cancelled, not the operation
                outcome = "cancelled"
            finally:
                if handle is not None:
                    handle.cancel()
            self.stats.outcomes[kind][outcome] += 1
            if outcome == "failed":
                await asyncio.sleep(0.05)  # a bind that is down must not make this a busy loop

    async def guarded(self, kind: str, key: Key) -> str:
        """Run one operation; "ok" or "failed" (its error counted under the bind it names)."""
        failing: Key = BOTH if kind in ("both", "copy") else key
        try:
            async with asyncio.timeout(GUARD) as guard:
                await self._operations[kind](key)
        except TimeoutError as exc:
            name = f"{kind} hung" if guard.expired() else type(exc).__name__
            self.stats.failed(_bind_of(exc, failing), name, exc)
            return "failed"
        except Exception as exc:
            name = type(exc).__name__
            if isinstance(exc, BulkCopyError) and exc.__cause__ is not None:
                name += f" ({type(exc.__cause__).__name__})"  # why the batch failed
            self.stats.failed(_bind_of(exc, failing), name, exc)
            return "failed"
        return "ok"


def _bind_of(exc: BaseException, default: Key) -> Key:
    """The bind an error names (a bulk error's cause names it), else ``default``."""
    for error in (exc, exc.__cause__):
        key = getattr(error, "bind_key", default)
        if key != default:
            return key
    return default
