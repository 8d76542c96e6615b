"""Two-phase commit across binds: ``db.session(twophase=True)`` and ``db.recover()``.

A two-phase session is SQLAlchemy's own ``Session(twophase=True)``: every bind it uses runs a
two-phase transaction (``Connection.begin_twophase()``), so ``ConnectionEvents`` such as
``prepare_twophase`` and ``commit_twophase`` fire. Its commit goes:

1. flush, then PREPARE on every bind (PostgreSQL ``PREPARE TRANSACTION``, MySQL/MariaDB
   ``XA END`` + ``XA PREPARE``); if any of that fails, SQLAlchemy rolls every bind back;
2. the decision: one row per transaction id, outcome ``commit``, inserted and committed in the
   table ``asyncbind_twophase`` of the log bind (the default bind unless ``twophase_log=`` names
   another), on a connection of its own;
3. COMMIT PREPARED / XA COMMIT on every bind, in the binds' commit order;
4. the decision rows are deleted.

A crash anywhere leaves prepared ("in-doubt") transactions, which :func:`recover` resolves the
same way on every bind: committed where a ``commit`` row exists, else rolled back. Recovery first
claims each undecided transaction by inserting a ``rollback`` row: the primary key makes the
claim and a coordinator's ``commit`` exclusive, so recovery may run while other processes commit.
Transaction ids are ``<name>.<32 hex digits>`` (``twophase_name=``, default ``asyncbind``), which
is how recovery tells this application's transactions from others' on a shared server. The first
8 digits stand for the bind and the deployment (:meth:`Coordinator.tag`: the bind key, the bind's
database and the decision log's database), the other 24 are random: MySQL and MariaDB list every
prepared transaction of the server to each bind on it, and the tag tells recovery which bind
prepared it, and that it is this deployment's rather than another's of the same application
whose databases share the server.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import secrets
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy import orm as sa_orm
from sqlalchemy.engine import TwoPhaseTransaction
from sqlalchemy.ext.asyncio import AsyncEngine

from . import commits
from .config import BindKey
from .exceptions import (
    AsyncBindError,
    ConfigError,
    TwoPhaseInDoubtError,
    TwoPhaseTakenOverError,
    TwoPhaseUnsupportedError,
    bind_name,
    first_line,
)
from .internals import replace_dialect_method
from .models import Unset
from .urls import render_url

__all__ = [
    "DEFAULT_NAME",
    "TABLE_NAME",
    "Coordinator",
    "Left",
    "Recovery",
    "Resolution",
    "bind_tag",
    "check_name",
    "check_participant",
    "name_transactions",
    "recover",
    "refuse_tenant",
]

logger = logging.getLogger("asyncbind")

#: The application name in transaction ids when ``twophase_name=`` is not given.
DEFAULT_NAME = "asyncbind"
#: The decision table, in the log bind's database.
TABLE_NAME = "asyncbind_twophase"
#: The dialects whose databases can prepare a transaction.
SUPPORTED_DIALECTS = frozenset({"postgresql", "mysql", "mariadb"})
#: A name short enough for MySQL's 64-byte XA ids with the 33 characters asyncbind adds.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,30}\Z")
#: How long a ``rollback`` claim is kept after recovery has rolled its transaction back: a
#: coordinator that recorded its decision later than this would find no claim to stop it.
CLAIM_KEPT = dt.timedelta(hours=1)
#: A coordinator that took longer than this (seconds) from PREPARE to its decision rolls back.
DECIDE_WITHIN = 600.0

#: How the servers say that a prepared transaction is held elsewhere: MariaDB while the
#: connection that prepared it lives, PostgreSQL while another session finishes it.
_BUSY = ("XAER_NOTA", "is busy")

_metadata = sa.MetaData()
decisions = sa.Table(
    TABLE_NAME,
    _metadata,
    sa.Column("xid", sa.String(64), primary_key=True),
    sa.Column("outcome", sa.String(8), nullable=False),
    sa.Column("decided_at", sa.DateTime(), nullable=False),
)


def check_name(name: object) -> str:
    """``name`` if it can name the application in transaction ids, else :class:`ConfigError`."""
    if isinstance(name, str) and _NAME.match(name):
        return name
    raise ConfigError(
        f"twophase_name={name!r} cannot name the application in two-phase transaction ids: "
        "expected 1 to 30 letters, digits, '_' or '-' (MySQL's XA ids hold 64 bytes). "
        "Example: twophase_name='shop'."
    )


def bind_tag(key: BindKey) -> str:
    """The 8 hex digits that began the digits of bind ``key``'s transaction ids made before the
    ids named their deployment too (see :meth:`Coordinator.tag`)."""
    return _digest(key)


def _digest(value: object) -> str:
    return hashlib.blake2s(repr(value).encode(), digest_size=4).hexdigest()


def name_transactions(engine: sa.Engine, coordinator: Coordinator, key: BindKey) -> None:
    """Make the ids of the two-phase transactions of ``engine``, bind ``key``'s,
    ``<name>.<tag><24 random hex digits>`` (see :meth:`Coordinator.tag`)."""

    def create_xid() -> str:
        return f"{coordinator.name}.{coordinator.tag(key, engine)}{secrets.token_hex(12)}"

    replace_dialect_method(engine.dialect, "create_xid", create_xid)


#: The engines of tenant groups' tenants, each with its group's key and its tenant: recover()
#: looks only at the configured binds, so a two-phase session refuses them.
_TENANTS: weakref.WeakKeyDictionary[sa.Engine, tuple[str, str]] = weakref.WeakKeyDictionary()


def refuse_tenant(engine: sa.Engine, group: str, tenant: str) -> None:
    """Make two-phase sessions refuse ``engine``, ``tenant``'s of tenant group ``group``."""
    _TENANTS[engine] = (group, tenant)


def check_participant(bind: sa.Engine | sa.Connection, rank: commits.Rank) -> None:
    """Refuse ``bind`` in a two-phase session, before anything is sent, if its database cannot
    prepare a transaction (SQLite), or if it is a tenant's (see :func:`refuse_tenant`)."""
    engine = bind.engine
    dialect = engine.dialect.name
    found = rank(engine)
    if found is None:
        tenant = _TENANTS.get(engine)
        if tenant is not None:
            raise TwoPhaseUnsupportedError(tenant[0], dialect, tenant[1])
    if dialect not in SUPPORTED_DIALECTS:
        key = found[1] if found is not None else render_url(engine.url)
        raise TwoPhaseUnsupportedError(key, dialect)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class _OutcomeUnknownError(Exception):
    """The decision's COMMIT failed: whether it landed is unknown."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Resolution(NamedTuple):
    """What :func:`recover` did with one in-doubt transaction."""

    bind_key: BindKey
    xid: str
    committed: bool  # False: rolled back

    def __str__(self) -> str:
        done = "committed" if self.committed else "rolled back"
        return f"{bind_name(self.bind_key)}: {done} {self.xid}"


class Left(NamedTuple):
    """A transaction in doubt that :func:`recover` had to leave: still held by a live connection."""

    bind_key: BindKey
    xid: str
    commit: bool  # what recovery will do with it: False, roll it back

    def __str__(self) -> str:
        todo = "commit" if self.commit else "roll back"
        return (
            f"{bind_name(self.bind_key)}: left {self.xid} prepared, as a live connection still "
            f"holds it (the process that prepared it, or another recovery); run recover() again "
            f"once that connection has ended, to {todo} it"
        )


class Recovery(list[Resolution]):
    """What :func:`recover` did: a list of :class:`Resolution`, one per transaction resolved, and
    :attr:`left`, the transactions it had to leave in doubt (:class:`Left`)."""

    def __init__(self, done: list[Resolution], left: list[Left]) -> None:
        super().__init__(done)
        self.left = left


class Coordinator:
    """The two-phase commits of one AsyncBind: the application's name in transaction ids, and
    the decision log on the bind ``log_key`` (``engine_of`` gives a key's sync engine). Without
    one, the log is on the default bind, or on the first bind configured when there is none
    (``keys`` gives the configured keys in order)."""

    def __init__(
        self,
        name: str,
        log_key: BindKey | Unset,
        keys: Callable[[], Sequence[BindKey]],
        engine_of: Callable[[BindKey], sa.Engine],
    ) -> None:
        self.name = check_name(name)
        self._log_key = log_key
        self._keys = keys
        self._engine_of = engine_of
        self._ours = re.compile(re.escape(name) + r"\.[0-9a-f]{32}\Z")
        self._tables: set[sa.Engine] = set()  # log engines whose table is known to exist

    def owns(self, xid: object) -> bool:
        """Whether ``xid`` is one of this application's transaction ids."""
        return isinstance(xid, str) and self._ours.match(xid) is not None

    @property
    def log_key(self) -> BindKey:
        """The key of the bind that holds the decisions."""
        if not isinstance(self._log_key, Unset):
            return self._log_key
        keys = self._keys()
        return None if None in keys or not keys else keys[0]

    def log_engine(self) -> sa.Engine:
        return self._engine_of(self.log_key)

    def tag(self, key: BindKey, engine: sa.Engine) -> str:
        """The 8 hex digits that begin the digits of the transaction ids of bind ``key``, whose
        engine is ``engine``: they stand for the key, the bind's database and the decision
        log's database, so that two deployments of one application sharing a server, each with
        databases of its own, never take each other's transactions for theirs."""
        return _digest((key, engine.url.database, self.log_engine().url.database))

    # -- the commit ------------------------------------------------------------------------

    def commit_root(self, root: sa_orm.SessionTransaction, rank: commits.Rank) -> None:
        """Commit the root transaction of a two-phase session: prepare, decide, commit."""
        try:
            # flush and PREPARE: all rolled back on failure
            held = commits.take_prepared(root, at_least=1)
        except sa_exc.DBAPIError as exc:
            if "prepared transactions are disabled" in str(exc):
                exc.add_note(
                    "asyncbind: this PostgreSQL server refuses PREPARE TRANSACTION while "
                    "'max_prepared_transactions' is 0 (its default). Set it, then restart the "
                    "server: ALTER SYSTEM SET max_prepared_transactions = 64. Every bind was "
                    "rolled back."
                )
            raise
        if held is None:  # no bind used
            root.commit()
            return
        prepared_at = time.monotonic()
        held, names = commits.in_order(held, rank)
        xids: list[str] = []
        try:
            if len(held) == 1:  # one bind: nothing to agree on, so no decision to record
                _commit_alone(root, held[0], names[0])
                return
            try:
                xids = [_xid(h) for h in held]
                self._record_commit(xids, names, prepared_at)
            except _OutcomeUnknownError as unknown:
                _leave_prepared(held)
                root.rollback()
                cause = unknown.cause
                if not isinstance(cause, Exception):  # a cancellation stays one
                    cause.add_note(
                        "asyncbind: cancelled while recording the decision of a two-phase "
                        f"commit; prepared on {', '.join(map(bind_name, names))}: run "
                        "'await db.recover()'."
                    )
                    raise cause from None
                raise TwoPhaseInDoubtError(None, [], names, cause) from cause
            except BaseException as exc:
                problems = _roll_back_prepared(held, names)
                root.rollback()
                exc.add_note(
                    "asyncbind: the decision of a two-phase commit could not be recorded on "
                    f"{bind_name(self.log_key)}, so every bind was rolled back."
                )
                for problem in problems:
                    exc.add_note(problem)
                raise
            for position, current in enumerate(held):
                try:
                    current.transaction.commit()
                except BaseException as exc:
                    # The decision stands: recover() commits what is left.
                    _leave_prepared(held[position:])
                    root.rollback()
                    if not isinstance(exc, Exception):
                        exc.add_note(
                            "asyncbind: cancelled during a two-phase commit that was decided: "
                            f"run 'await db.recover()' to commit {bind_name(names[position])} "
                            "and the binds after it."
                        )
                        raise
                    raise TwoPhaseInDoubtError(
                        True, names[:position], names[position:], exc
                    ) from exc
            self._forget(xids)
            root.commit()  # nothing left to commit: after_commit fires and the transaction ends
        finally:
            for h in held:
                if h.close:
                    h.connection.close()

    def _ready(self, conn: sa.Connection) -> None:
        """Create the decision table in the log bind's database if it is missing."""
        if conn.engine in self._tables:
            return
        try:
            decisions.create(conn, checkfirst=True)
            conn.commit()
        except sa_exc.DBAPIError:
            conn.rollback()  # made at the same time by another process
            if not sa.inspect(conn).has_table(TABLE_NAME):
                raise
        self._tables.add(conn.engine)

    def _record_commit(self, xids: list[str], names: list[Any], prepared_at: float) -> None:
        """Insert and commit the ``commit`` rows of ``xids``, the transactions of binds ``names``.
        :class:`_OutcomeUnknownError` when their COMMIT fails; any other error when they were not
        recorded (:class:`TwoPhaseTakenOverError` when recovery had claimed them)."""
        with self.log_engine().connect() as conn:
            self._ready(conn)
            if time.monotonic() - prepared_at > DECIDE_WITHIN:
                raise AsyncBindError(
                    f"A two-phase commit took more than {DECIDE_WITHIN:g}s from PREPARE to its "
                    "decision, so recovery may have rolled some of its binds back: it was rolled "
                    "back on every bind instead. Keep commits short."
                )
            now = _now()
            try:
                conn.execute(
                    sa.insert(decisions),
                    [{"xid": xid, "outcome": "commit", "decided_at": now} for xid in xids],
                )
            except sa_exc.IntegrityError as exc:  # recover() recorded 'rollback' for one first
                raise TwoPhaseTakenOverError(names) from exc
            try:
                conn.commit()
            except BaseException as exc:
                raise _OutcomeUnknownError(exc) from exc

    def _forget(self, xids: list[str]) -> None:
        """Delete the decision rows of a commit that is complete (recover() deletes them if
        this fails)."""
        try:
            with self.log_engine().begin() as conn:
                conn.execute(sa.delete(decisions).where(decisions.c.xid.in_(xids)))
        except Exception as exc:
            logger.warning(
                "Two-phase commit done, but its decision rows stay on %s (%s); "
                "db.recover() deletes them.",
                bind_name(self.log_key),
                first_line(exc),
            )

    # -- recovery (each runs in run_sync on a connection of its own) ------------------------

    def read_decisions(self, conn: sa.Connection) -> dict[str, tuple[str, dt.datetime]]:
        """This application's decision rows: outcome and time, by transaction id (none while
        the table has not been made)."""
        if conn.engine not in self._tables and not sa.inspect(conn).has_table(TABLE_NAME):
            return {}
        rows = conn.execute(
            sa.select(decisions).where(decisions.c.xid.startswith(self.name + ".", autoescape=True))
        )
        return {row.xid: (row.outcome, row.decided_at) for row in rows if self.owns(row.xid)}

    def in_doubt(self, conn: sa.Connection) -> list[str]:
        """This application's prepared transactions in ``conn``'s database."""
        if conn.dialect.name == "postgresql":
            # Only this database's: COMMIT PREPARED must run in the database that prepared.
            query = "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
            found: list[Any] = list(conn.scalars(sa.text(query)))
        else:
            # XA RECOVER outside any transaction (a started one makes XA COMMIT fail).
            found = conn.execution_options(isolation_level="AUTOCOMMIT").recover_twophase()
        found = [xid.decode() if isinstance(xid, bytes) else xid for xid in found]
        return sorted(xid for xid in found if self.owns(xid))

    def claim_rollback(self, conn: sa.Connection, xids: list[str]) -> dict[str, str]:
        """Record ``rollback`` for each of ``xids`` that has no decision yet; every one's outcome.

        A coordinator recording ``commit`` for the same id at the same time gets a duplicate key
        error and rolls back, or wins, and then this returns its ``commit``.
        """
        self._ready(conn)
        for xid in xids:
            try:
                with conn.begin():
                    conn.execute(
                        sa.insert(decisions).values(xid=xid, outcome="rollback", decided_at=_now())
                    )
            except sa_exc.IntegrityError:
                pass  # decided meanwhile
        rows = conn.execute(
            sa.select(decisions.c.xid, decisions.c.outcome).where(decisions.c.xid.in_(xids))
        )
        outcomes = {row.xid: row.outcome for row in rows}
        conn.commit()
        return outcomes

    @staticmethod
    def finish(conn: sa.Connection, xid: str, commit: bool) -> None:
        """COMMIT or ROLLBACK the prepared transaction ``xid`` from a connection of its own, with
        SQLAlchemy's ``Connection.commit_prepared()`` / ``rollback_prepared()`` (``recover=True``).

        MySQL and MariaDB refuse XA COMMIT inside a transaction, so there it runs in AUTOCOMMIT.
        PostgreSQL keeps SQLAlchemy's default: its dialect ends the transaction asyncpg's adapter
        began (ROLLBACK), commits, and begins again for the adapter to end (BEGIN, ROLLBACK).
        """
        if conn.dialect.name != "postgresql":
            conn.execution_options(isolation_level="AUTOCOMMIT")
        if commit:
            conn.commit_prepared(xid, recover=True)
        else:
            conn.rollback_prepared(xid, recover=True)

    def forget(self, conn: sa.Connection, xids: list[str]) -> None:
        if xids:
            with conn.begin():
                conn.execute(sa.delete(decisions).where(decisions.c.xid.in_(xids)))


def _xid(held: commits.Held) -> str:
    transaction = held.transaction
    if not isinstance(transaction, TwoPhaseTransaction):  # a connection given in binds=
        raise AsyncBindError(
            "A two-phase session was given a connection whose transaction is not two-phase. "
            "Give it engines, or let it route to the binds itself."
        )
    return str(transaction.xid)


def _commit_alone(root: sa_orm.SessionTransaction, only: commits.Held, name: Any) -> None:
    """Commit the prepared transaction of a two-phase session's only bind. When its COMMIT fails,
    roll it back if its connection is still sound (nothing was sent, or the server refused the
    COMMIT); else leave it to recover(), which rolls it back if it was not committed."""
    try:
        only.transaction.commit()
    except BaseException as exc:
        rolled_back = _roll_back_after_failed_commit(only)
        root.rollback()
        if rolled_back:
            exc.add_note(
                f"asyncbind: the two-phase commit of {bind_name(name)} failed before it was "
                "committed, so its prepared transaction was rolled back."
            )
            raise
        if not isinstance(exc, Exception):  # a cancellation stays one
            exc.add_note(
                f"asyncbind: cancelled while committing {bind_name(name)}, the only bind of a "
                "two-phase session: whether it committed is unknown. Run 'await db.recover()': "
                "it rolls the transaction back if it is still prepared."
            )
            raise
        raise TwoPhaseInDoubtError(False, [], [name], exc) from exc
    root.commit()  # nothing left to commit: after_commit fires and the transaction ends


def _roll_back_after_failed_commit(held: commits.Held) -> bool:
    """ROLLBACK PREPARED on the connection whose COMMIT PREPARED failed, unless SQLAlchemy
    discarded it (cut, or cancelled while waiting for the server: the COMMIT may have landed).
    Whether it was rolled back."""
    connection = held.connection
    held.transaction.rollback()  # inactive since its COMMIT: this only detaches it
    if connection.invalidated or connection.closed:
        return False
    try:
        # In its own transaction: MySQL and MariaDB refuse to switch it to AUTOCOMMIT as
        # Coordinator.finish() does, while it is prepared.
        connection.rollback_prepared(_xid(held), recover=True)
    except Exception:
        connection.invalidate()
        return False
    return True


def _leave_prepared(held: list[commits.Held]) -> None:
    """Discard the connections of prepared transactions without ending them: closing them
    normally would roll them back (ROLLBACK PREPARED), and the decision may be to commit."""
    for h in held:
        h.connection.invalidate()


def _roll_back_prepared(held: list[commits.Held], names: list[Any]) -> list[str]:
    """ROLLBACK PREPARED on every bind; what failed, as notes (recovery rolls those back)."""
    problems = []
    for h, name in zip(held, names, strict=True):
        try:
            h.transaction.rollback()
        except Exception as exc:
            h.connection.invalidate()
            problems.append(
                f"asyncbind: rolling back {bind_name(name)} failed ({type(exc).__name__}); its "
                "transaction stays prepared until 'await db.recover()' rolls it back."
            )
    return problems


async def recover(
    coordinator: Coordinator, engines: Mapping[BindKey, AsyncEngine], log: AsyncEngine
) -> Recovery:
    """Resolve this application's in-doubt transactions on every bind of ``engines``: commit
    where a ``commit`` decision was recorded, roll back otherwise. Returns what was done, and
    what had to be left (:class:`Recovery`).

    The decisions are read before the binds are listed, so that a decision whose transactions
    are no longer in doubt anywhere belongs to a finished commit, and its rows can go.
    """
    async with log.connect() as conn:
        known = await conn.run_sync(coordinator.read_decisions)
    found: dict[BindKey, list[str]] = {}
    tags: dict[str, BindKey] = {}
    for key, engine in engines.items():
        if engine.dialect.name in SUPPORTED_DIALECTS:
            tags[coordinator.tag(key, engine.sync_engine)] = key
            async with engine.connect() as conn:
                found[key] = await conn.run_sync(coordinator.in_doubt)
    owners = _owners(found, tags, known)
    found = {key: [xid for xid in xids if owners.get(xid) == key] for key, xids in found.items()}
    in_doubt = set(owners)
    outcomes = {xid: outcome for xid, (outcome, _) in known.items()}
    undecided = sorted(in_doubt - outcomes.keys())
    if undecided:
        async with log.connect() as conn:
            outcomes.update(await conn.run_sync(coordinator.claim_rollback, undecided))
    done: list[Resolution] = []
    left: list[Left] = []
    for key, xids in found.items():
        for xid in xids:
            commit = outcomes.get(xid) == "commit"
            state = await _finish(coordinator, engines[key], xid, commit)
            if state == "done":
                done.append(Resolution(key, xid, commit))
            elif state == "busy":
                left.append(Left(key, xid, commit))
    unresolved = {item.xid for item in left}
    # A commit's rows go once none of its transactions is in doubt; a rollback claim is kept a
    # while longer, to stop a coordinator that is late with its decision.
    kept_since = _now() - CLAIM_KEPT
    finished = [
        xid
        for xid, (outcome, decided_at) in known.items()
        if xid not in unresolved and (outcome == "commit" or decided_at < kept_since)
    ]
    finished += [r.xid for r in done if r.committed and r.xid not in known]
    async with log.connect() as conn:
        await conn.run_sync(coordinator.forget, sorted(set(finished)))
    return Recovery(done, left)


def _owners(
    found: Mapping[BindKey, list[str]], tags: Mapping[str, BindKey], known: Mapping[str, Any]
) -> dict[str, BindKey]:
    """The bind to resolve each of this deployment's transactions in doubt through, and name in
    its :class:`Resolution`: the one whose tag (``tags``) its id carries. A server shared by
    several binds lists each one's to all of them; ids with another tag are another
    deployment's, and left alone. An id made before ids named their deployment is this one's
    if this deployment's log has its decision (``known``): its bind is the one whose
    :func:`bind_tag` it carries, else (a bind since renamed) the first that lists it."""
    owners: dict[str, BindKey] = {}
    for key, xids in found.items():
        old_tag = bind_tag(key)
        for xid in xids:
            tag = xid[-32:-24]
            if tag in tags:
                owners[xid] = tags[tag]
            elif xid in known and (xid not in owners or tag == old_tag):
                owners[xid] = key
            elif tag == old_tag:
                logger.warning(
                    "recover(): %s on %s was made before transaction ids named their deployment "
                    "and has no decision in this deployment's log: left alone, as it may be "
                    "another deployment's. If it is this one's, roll it back by hand (ROLLBACK "
                    "PREPARED / XA ROLLBACK).",
                    xid,
                    bind_name(key),
                )
    return owners


async def _finish(coordinator: Coordinator, engine: AsyncEngine, xid: str, commit: bool) -> str:
    """Commit or roll back ``xid`` on ``engine``'s database: ``"done"``; ``"gone"`` when another
    process (its coordinator, another recovery) finished it first; ``"busy"`` when it is still
    held by a live connection (MariaDB lets only the connection that prepared it end it while
    that connection lives; PostgreSQL refuses one being finished elsewhere at that moment). Any
    other failure is raised."""
    try:
        async with engine.connect() as conn:
            await conn.run_sync(coordinator.finish, xid, commit)
        return "done"
    except sa_exc.DBAPIError as exc:
        async with engine.connect() as conn:
            if xid not in await conn.run_sync(coordinator.in_doubt):
                return "gone"
        if any(sign in str(exc.orig) for sign in _BUSY):
            logger.warning("recover(): %s is still in use, left for a later run (%s)", xid, exc)
            return "busy"
        raise
