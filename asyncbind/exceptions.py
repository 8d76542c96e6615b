"""The errors asyncbind raises.

Every error is an :class:`AsyncBindError`; the configuration and lookup errors are also the
matching built-in exception (``ValueError``, ``LookupError``) so that callers can catch them by
meaning.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import exc as sa_exc

__all__ = [
    "AsyncBindError",
    "BindAuthenticationError",
    "BindErrors",
    "BindUnavailableError",
    "BulkCopyError",
    "ConfigError",
    "ConnectionEndedError",
    "CrossBindError",
    "DatabaseNotFoundError",
    "DeadlockError",
    "NoCurrentSessionError",
    "NoReplicaError",
    "NotConfiguredError",
    "NotFoundError",
    "PartialCommitError",
    "PoolTimeoutError",
    "ReadOnlyBindError",
    "SessionSharedError",
    "StartupCheckError",
    "StatementTimeoutError",
    "TenantMismatchError",
    "TwoPhaseInDoubtError",
    "TwoPhasePrepareError",
    "TwoPhaseTakenOverError",
    "TwoPhaseUnsupportedError",
    "UnknownBindError",
    "UnresolvedTenantError",
    "WrongEventLoopError",
    "bind_name",
    "first_line",
    "format_key",
    "format_keys",
    "shown",
]


def format_key(key: Hashable | None) -> str:
    """Render a bind key the way messages list it: ``the default bind`` for None (a bare "None"
    reads as "no bind"), names quoted."""
    return "the default bind" if key is None else repr(key)


def bind_name(
    key: Hashable | None, *, start: bool = False, replica: int = 0, tenant: str | None = None
) -> str:
    """Name a bind in a message: ``bind 'users'``, or ``the default bind`` for key None; one of
    its read replicas (``replica``, from 1) as ``replica 2 of bind 'users'``; a tenant of a
    tenant group (``tenant``) as ``tenant 'acme' of bind 'tenant'``.

    ``start=True`` capitalises it to begin a sentence.
    """
    name = "the default bind" if key is None else f"bind {key!r}"
    if replica:
        name = f"replica {replica} of {name}"
    if tenant is not None:
        name = f"tenant {tenant!r} of {name}"
    return name[0].upper() + name[1:] if start else name


def format_keys(keys: Iterable[Hashable | None]) -> str:
    """Render several bind keys, the default bind first and the rest sorted:
    ``the default bind, 'reports', 'users'``."""
    ordered = sorted(keys, key=lambda k: (k is not None, str(k)))
    return ", ".join(format_key(k) for k in ordered) or "none"


class AsyncBindError(Exception):
    """The base of every error raised by asyncbind.

    Every one of them pickles with its facts (its attributes and message), as process pools and
    task queues (arq) need to hand errors back, whatever its ``__init__`` takes.
    """

    def __reduce__(self) -> Any:
        return _rebuild, (type(self), self.__dict__, self.args)


class ConfigError(AsyncBindError, ValueError):
    """A bind's configuration is invalid; raised before any connection is made, except for a
    connect argument that only the driver checks, refused when the bind first connects."""


class NotConfiguredError(AsyncBindError):
    """The :class:`~asyncbind.AsyncBind` was used before any database was configured."""


class NoCurrentSessionError(AsyncBindError, RuntimeError):
    """``db.session.<attr>`` was used where there is no current session.

    The current session is the one of the request (an integration), the app context (Quart) or
    the task scope (``async with db.scope():``) being run; outside all of them there is none.
    """


class SessionSharedError(AsyncBindError):
    """One session was used by two tasks at once.

    A session and its connection belong to one task at a time; used from two, SQLAlchemy fails
    intermittently (``IllegalStateChangeError``) or leaks a connection, so asyncbind refuses the
    second task. ``operation`` is what the refused task called, ``task`` its name, ``owner`` the
    name of the task using the session and ``running`` what that task has in flight.
    """

    def __init__(self, operation: str, *, task: str, owner: str, running: str) -> None:
        self.operation = operation
        self.task = task
        self.owner = owner
        self.running = running
        super().__init__(
            f"Task {task!r} called '{operation}' on a session that task {owner!r} is using "
            f"(its '{running}' has not finished). A session belongs to one task at a time: give "
            "each task its own, with 'async with db.scope():' inside the task (db.session is "
            "then that task's session) or 'async with db.session() as session:'."
        )


class NotFoundError(AsyncBindError, LookupError):
    """``get_or_404()``, ``first_or_404()``, ``one_or_404()`` or ``paginate()`` found nothing
    where no web framework's request is being handled (in one, the framework's own 404 is raised).

    ``call`` is what was called, ``missing`` what it did not find, and ``description`` the
    ``description=`` it was given (None if none), the text meant for the error page.
    """

    def __init__(self, call: str, missing: str, *, description: str | None = None) -> None:
        self.call = call
        self.missing = missing
        self.description = description
        given = f" (description: {description!r})" if description is not None else ""
        super().__init__(
            f"'{call}' found {missing}{given}. In a request of an app set up with an integration "
            "this is the framework's 404 response; elsewhere catch NotFoundError (a "
            "LookupError), or use session.get() or session.scalar(), which return None."
        )


class UnknownBindError(AsyncBindError, KeyError):
    """A bind key has no engine configured.

    ``key`` is the missing key and ``configured`` the keys that do have an engine. A
    ``KeyError``, so that ``db.engines[key]`` and ``db.bind_configs[key]`` raise it as a mapping
    should, with the message in words rather than KeyError's quoted key.
    """

    __str__ = BaseException.__str__  # not KeyError's, which shows the message quoted

    def __init__(
        self,
        key: Hashable | None,
        configured: Iterable[Hashable | None],
        *,
        owner: str | None = None,
    ) -> None:
        self.key = key
        self.configured = tuple(configured)
        where = f" used by {owner}" if owner else ""
        what = "The default bind (key None)" if key is None else f"Bind key {key!r}"
        super().__init__(
            f"{what}{where} is not configured "
            f"(configured: {format_keys(self.configured)}). "
            f"Add it to binds=... or fix the '__bind_key__' / 'bind_key=' that names it."
        )


class UnresolvedTenantError(AsyncBindError, LookupError):
    """A statement reached a tenant group (``db.add_group()``) with no tenant chosen for it.

    ``group`` is the group's bind key. asyncbind never falls back to the default bind here: the
    rows would land in the wrong database.
    """

    def __init__(self, group: str, *, owner: str | None = None) -> None:
        self.group = group
        where = f" by {owner}" if owner else ""
        super().__init__(
            f"Tenant group {group!r} was used{where} with no tenant chosen for it. Run the work "
            f"inside 'async with db.route({group}=...)' (or 'with', as middleware does), or pass "
            f"tenant=... to create_all() / drop_all() / get_engine()."
        )


class TenantMismatchError(AsyncBindError):
    """One session was used for two tenants of the same group.

    A session's identity map would mix their rows (row 1 of one tenant would be returned for row
    1 of the other), so it stays with the first tenant it used: open another session for another
    tenant.

    Also raised by a flush that would write an object to another tenant's database than the one
    it was added or loaded in: ``owner`` then names the object, ``first`` is its tenant and
    ``then`` the flush's.
    """

    def __init__(self, group: str, first: str, then: str, *, owner: str | None = None) -> None:
        self.group = group
        self.first = first
        self.then = then
        self.owner = owner
        if owner is None:
            message = (
                f"This session was used for tenant {first!r} of group {group!r} and now for "
                f"tenant {then!r}. A session serves one tenant per group, so that their rows "
                f"never mix: open a new session (db.session() or db.scope()) inside the route "
                f"for {then!r}."
            )
        else:
            message = (
                f"{owner[0].upper()}{owner[1:]} belongs to tenant {first!r} of group {group!r} "
                f"(it was added or loaded there), and this flush would write it to tenant "
                f"{then!r}'s database: refused, before any SQL. Tenants' rows never mix: commit "
                f"it inside the route for {first!r}, or session.expunge() it, and open a session "
                f"for {then!r} inside the route for {then!r}."
            )
        super().__init__(message)


class CrossBindError(AsyncBindError):
    """One statement uses tables that live in different binds.

    Such a statement cannot run in one database. ``keys`` are the bind keys involved and
    ``tables`` maps each key to the names of its tables in the statement (and of the sequences
    it takes values from, as ``'sequence NAME'``).
    """

    def __init__(self, tables: Mapping[Any, Iterable[str]]) -> None:
        self.tables = {key: tuple(sorted(names)) for key, names in tables.items()}
        self.keys = tuple(self.tables)
        parts = "; ".join(
            f"{bind_name(key)}: {', '.join(repr(n) for n in names)}"
            for key, names in sorted(
                self.tables.items(), key=lambda kv: (kv[0] is not None, str(kv[0]))
            )
        )
        super().__init__(
            f"A statement uses tables of {len(self.tables)} binds ({parts}), "
            "so no single database can run it. Split it into one statement per bind, "
            "or move the tables into the same bind."
        )


class BindErrors(AsyncBindError, ExceptionGroup[Exception]):  # noqa: N818
    """An operation over several binds failed on some of them.

    The other binds ran to completion. ``errors`` maps each failed bind key to its cause; the
    causes are also the group's ``exceptions``, so ``except*`` works.
    """

    errors: dict[Hashable | None, Exception]

    def __new__(cls, operation: str, errors: Mapping[Hashable | None, Exception]) -> BindErrors:
        details = "; ".join(
            f"{bind_name(key)}: {type(exc).__name__}: {exc}" for key, exc in errors.items()
        )
        message = f"{operation} failed on bind(s) {format_keys(errors)} ({details})"
        self = super().__new__(cls, message, list(errors.values()))
        self.errors = dict(errors)
        return self

    def __init__(self, operation: str, errors: Mapping[Hashable | None, Exception]) -> None:
        super().__init__(self.message, list(errors.values()))

    def derive(self, excs: Sequence[Exception]) -> ExceptionGroup[Exception]:  # type: ignore[override]
        return ExceptionGroup(self.message, excs)

    def __reduce__(self) -> Any:
        return _rebuild_group, (type(self), self.__dict__, self.message, self.exceptions)


class ReadOnlyBindError(AsyncBindError):
    """A write reached a bind configured with ``read_only=True``, or one of a bind's read
    replicas (``replica`` is then its number, 1 for the first; 0 for the bind itself), or a
    read-only tenant of a tenant group (``tenant``; None for a bind that is not a group).

    Usually it is refused before any SQL is sent (``sent`` is False). A write asyncbind cannot
    recognise (raw SQL) is refused by the read-only connection itself: then ``sent`` is True, the
    driver's error is ``__cause__``, and the transaction must be rolled back before it is used
    again (PostgreSQL aborts it).
    """

    def __init__(
        self,
        key: Hashable | None,
        what: str,
        *,
        sent: bool = False,
        replica: int = 0,
        tenant: str | None = None,
    ) -> None:
        self.key = key
        self.sent = sent
        self.replica = replica
        self.tenant = tenant
        where = bind_name(key, start=True, replica=replica, tenant=tenant)
        if sent:
            message = (
                f"{where} is read-only, and its database refused {what}. "
                "Roll the transaction back before using it again. "
            )
        else:
            message = f"{where} is read-only, so {what} was refused before any SQL was sent. "
        if replica:
            fix = (
                "A read replica takes reads only: send writes to the primary, through a session "
                "(which sends them there) or db.get_engine(), not through db.replica_engines."
            )
        else:
            fix = "Write to a writable bind, or drop 'read_only' from the bind's options."
        super().__init__(message + fix)


class NoReplicaError(AsyncBindError):
    """A read was to go to a replica of a bind configured with ``replica_fallback=False``, and
    none of its replicas is in rotation (each is down or lags too much)."""

    def __init__(self, key: Hashable | None, reasons: Sequence[str]) -> None:
        self.key = key
        self.reasons = list(reasons)
        why = "; ".join(self.reasons) or "none is in rotation"
        super().__init__(
            f"{bind_name(key, start=True)} has no replica to read from ({why}). Replicas come "
            "back by themselves once they answer again; meanwhile set 'replica_fallback': True "
            "to read from the primary, or send the read there with 'async with db.primary():'."
        )


class PartialCommitError(AsyncBindError, sa_exc.SQLAlchemyError):
    """A commit across binds stopped part-way: some binds had committed when one failed.

    Binds commit one after the other, the default bind first and then the others in the order
    they were configured. ``committed`` are the binds whose changes landed, in that order;
    ``failed`` is the bind whose commit raised ``cause`` (also ``__cause__``); ``rolled_back``
    are the binds after it, which were rolled back. The session has been rolled back and is
    usable. Also SQLAlchemy's base error, so ``except SQLAlchemyError`` around a commit sees it.
    """

    def __init__(
        self,
        committed: Sequence[Hashable | None],
        failed: Hashable | None,
        cause: BaseException,
        rolled_back: Sequence[Hashable | None] = (),
    ) -> None:
        self.committed = tuple(committed)
        self.failed = failed
        self.cause = cause
        self.rolled_back = tuple(rolled_back)
        landed = ", ".join(format_key(key) for key in self.committed)
        undone = ", ".join(format_key(key) for key in self.rolled_back) or "none"
        if getattr(cause, "connection_invalidated", False) or isinstance(cause, TimeoutError):
            fate = (
                "The committed changes stay in their databases and the rolled-back ones did not "
                f"land; whether those of {bind_name(failed)} did is unknown (its connection was "
                "lost or abandoned during the commit), so check it"
            )
        else:
            fate = "The committed changes stay in their databases and the others did not land"
        super().__init__(
            f"A commit across binds stopped part-way. Committed: {landed}. "
            f"Failed: {format_key(failed)} ({first_line(cause)}). Rolled back: {undone}. "
            f"{fate}: undo or complete the committed ones, or retry the failed ones (written so "
            "that a retry is harmless). Writes that must land together belong in one bind."
        )


class TwoPhaseUnsupportedError(AsyncBindError):
    """A two-phase session used a bind whose database cannot prepare a transaction (SQLite), or
    a tenant's database of a tenant group, whose prepared transactions recovery would not find.

    Raised before anything is sent to that bind. ``bind_key`` names it (the group's key for a
    tenant), ``dialect`` is its dialect's name, ``tenant`` the tenant (None for a bind).
    """

    def __init__(self, bind_key: Hashable | None, dialect: str, tenant: str | None = None) -> None:
        self.bind_key = bind_key
        self.dialect = dialect
        self.tenant = tenant
        if tenant is None:
            super().__init__(
                f"{bind_name(bind_key, start=True)} ({dialect}) cannot take part in a two-phase "
                "session: only PostgreSQL and MySQL/MariaDB binds can prepare a transaction, and "
                "a two-phase session begins a two-phase transaction on every bind it uses, reads "
                "included. Nothing was sent to it. Use another session, without twophase=True, "
                f"for {bind_name(bind_key)}."
            )
            return
        super().__init__(
            f"Tenant {tenant!r} of group {bind_key!r} ({dialect}) cannot take part in a two-phase "
            "session: db.recover() finds in-doubt transactions on the configured binds only, "
            "not in tenants' databases, so a commit stopped part-way would leave its "
            "transaction prepared there, holding its locks, and could commit the other binds "
            "without it. Nothing was sent to it. Use a session without twophase=True for the "
            f"tenant's data, or configure the tenant's database as a bind of its own."
        )

    def __reduce__(self) -> Any:
        return type(self), (self.bind_key, self.dialect, self.tenant)


class TwoPhasePrepareError(AsyncBindError, sa_exc.InvalidRequestError):
    """``prepare()`` was called on a two-phase session: its ``commit()`` prepares every bind
    itself, then records the decision that :func:`~asyncbind.AsyncBind.recover` needs before it
    commits any. Nothing was sent; the transaction is still open."""

    def __init__(self) -> None:
        super().__init__(
            "prepare() on a two-phase session would prepare its binds without the decision "
            "record that db.recover() goes by, so a commit that stopped half-way could not be "
            "finished on every bind. Call commit(): it prepares every bind, records the "
            "decision, then commits. Nothing was sent; the transaction is still open."
        )

    def __reduce__(self) -> Any:
        return type(self), ()


class TwoPhaseTakenOverError(AsyncBindError):
    """Recovery (``db.recover()``, in another task or process) claimed the transactions of a
    two-phase commit that was still running, before it could record its decision: recovery
    rolls them back, and the commit rolled back every bind it could. Nothing was committed.
    ``binds`` are the session's binds."""

    def __init__(self, binds: Sequence[Hashable | None]) -> None:
        self.binds = tuple(binds)
        super().__init__(
            "A two-phase commit could not record its decision: db.recover(), running meanwhile, "
            "had found its transactions prepared with no decision and claimed them to roll "
            f"back. Nothing was committed on {format_keys(self.binds)}: each bind was rolled "
            "back, here or by that recovery. Retry the transaction; run db.recover() at start-up, "
            "before the application commits, rather than while commits are running."
        )

    def __reduce__(self) -> Any:
        return type(self), (self.binds,)


class TwoPhaseInDoubtError(AsyncBindError, sa_exc.SQLAlchemyError):
    """A two-phase commit stopped with prepared transactions left on some binds.

    ``decided`` is True when the decision to commit was recorded (the commit stands: the binds in
    ``in_doubt`` are committed by ``await db.recover()``), None when whether it was recorded is
    unknown (``recover()`` commits them if it was, else rolls every bind back), False when the
    session used one bind, whose commit records no decision: whether its COMMIT landed is unknown,
    and ``recover()`` rolls it back if it is still prepared. ``committed`` are the binds that
    committed already. The cause is ``__cause__``. The session has been rolled
    back and is usable.
    """

    def __init__(
        self,
        decided: bool | None,
        committed: Sequence[Hashable | None],
        in_doubt: Sequence[Hashable | None],
        cause: BaseException,
    ) -> None:
        self.decided = decided
        self.committed = tuple(committed)
        self.in_doubt = tuple(in_doubt)
        self.cause = cause
        waiting = ", ".join(format_key(key) for key in self.in_doubt)
        landed = ", ".join(format_key(key) for key in self.committed) or "none"
        if decided:
            what = (
                "The decision to commit was recorded, so the commit stands: "
                f"committed: {landed}; prepared and still to commit: {waiting}"
            )
        elif decided is None:
            what = f"Whether the decision to commit was recorded is unknown; prepared on: {waiting}"
        else:
            what = (
                f"Whether the COMMIT of {waiting}, the session's only bind, landed is unknown (no "
                "decision is recorded for one bind); if it did not, its transaction is still "
                "prepared, and recover() rolls it back"
            )
        super().__init__(
            f"A two-phase commit stopped part-way ({first_line(cause)}). {what}. Run "
            "'await db.recover()' (or 'asyncbind db recover') once the binds answer: it "
            "finishes every bind the same way. Until then the prepared transactions hold "
            "their locks."
        )


class BindUnavailableError(AsyncBindError, sa_exc.OperationalError):
    """A bind could not be reached: connection refused, reset or timed out.

    Also a :class:`sqlalchemy.exc.OperationalError`, so code that catches SQLAlchemy's errors keeps
    working. ``bind_key`` names the bind, and ``replica`` the read replica it happened on (its
    number, from 1; 0 for the bind's primary), or ``tenant`` the tenant of a tenant group (None
    for a bind that is not a group). The driver's error is ``orig`` and ``__cause__``.
    ``reason`` says why in words where the driver's error does not (the host and port, and
    whether the connection was refused, the host name not resolved or the attempt timed out);
    the message shows it in place of the driver's error. The connection involved has been
    discarded; the bind reconnects on its next use. Its subclasses name a more precise cause:
    :class:`BindAuthenticationError`, :class:`DatabaseNotFoundError`,
    :class:`ConnectionEndedError`.
    """

    def __init__(
        self,
        bind_key: Hashable | None,
        orig: BaseException,
        statement: str | None = None,
        replica: int = 0,
        reason: str | None = None,
        tenant: str | None = None,
    ) -> None:
        self.bind_key = bind_key
        self.replica = replica
        self.reason = reason
        self.tenant = tenant
        sa_exc.OperationalError.__init__(
            self, statement, None, orig, hide_parameters=True, connection_invalidated=True
        )

    def _reason(self) -> str:
        """``reason``, else the driver's error as ``Type: message``."""
        if self.reason:
            return self.reason
        return f"{type(self.orig).__name__}: {self.orig}".rstrip(": ")

    def __str__(self) -> str:
        return (
            f"{self._bind_name(start=True)} is unavailable ({self._reason()}). Check that its "
            "server is up and reachable; the bind reconnects by itself on its next use."
        )

    def _bind_name(self, *, start: bool = False) -> str:
        return bind_name(self.bind_key, start=start, replica=self.replica, tenant=self.tenant)

    def __reduce__(self) -> Any:
        return type(self), (
            self.bind_key,
            self.orig,
            self.statement,
            self.replica,
            self.reason,
            self.tenant,
        )


class BindAuthenticationError(BindUnavailableError):
    """A bind's server refused its login: a wrong user name or password, or a user that may not
    connect (from this host, or to this database).

    ``user`` is the user name the bind logs in with; the password is never shown. A subclass of
    :class:`BindUnavailableError`, so handlers of that keep catching it.
    """

    def __init__(
        self,
        bind_key: Hashable | None,
        orig: BaseException,
        statement: str | None = None,
        user: str | None = None,
        replica: int = 0,
        tenant: str | None = None,
    ) -> None:
        self.user = user
        super().__init__(bind_key, orig, statement, replica, tenant=tenant)

    def __str__(self) -> str:
        who = f"user {self.user!r}" if self.user else "its user"
        return (
            f"{self._bind_name(start=True)}: its server refused the login of {who} "
            f"({self._reason()}). Check the user name and password of "
            f"{self._bind_name()} (in its URL, or 'user' and 'password' in its "
            "connect_args); the bind tries again on its next use."
        )

    def __reduce__(self) -> Any:
        return type(self), (
            self.bind_key,
            self.orig,
            self.statement,
            self.user,
            self.replica,
            self.tenant,
        )


class DatabaseNotFoundError(BindUnavailableError):
    """The database a bind names does not exist on its server (for SQLite: cannot be opened).

    ``database`` is the name the bind asked for. A subclass of :class:`BindUnavailableError`.
    """

    def __init__(
        self,
        bind_key: Hashable | None,
        orig: BaseException,
        statement: str | None = None,
        database: str | None = None,
        replica: int = 0,
        tenant: str | None = None,
    ) -> None:
        self.database = database
        super().__init__(bind_key, orig, statement, replica, tenant=tenant)

    def __str__(self) -> str:
        what = f"database {self.database!r}" if self.database else "its database"
        if self.tenant is not None:
            url = "the tenant's URL (what the group's url() gives for it)"
        else:
            url = "the replica's URL" if self.replica else "the bind's URL"
        return (
            f"{self._bind_name(start=True)}: {what} was not found "
            f"({self._reason()}). Create it (create_all() makes tables, not databases; SQLite "
            f"makes a missing file, not a missing folder), or fix the database in {url}."
        )

    def __reduce__(self) -> Any:
        return type(self), (
            self.bind_key,
            self.orig,
            self.statement,
            self.database,
            self.replica,
            self.tenant,
        )


class ConnectionEndedError(BindUnavailableError):
    """A bind's connection was ended from the other end while asyncbind held it: by the server
    (an administrator, an idle timeout, a shutdown or restart) or by the network between them.

    ``server_message`` is the server's own account when the driver received one, else None. The
    connection has been discarded; roll the session back and retry. A subclass of
    :class:`BindUnavailableError`.
    """

    def __init__(
        self,
        bind_key: Hashable | None,
        orig: BaseException,
        statement: str | None = None,
        server_message: str | None = None,
        replica: int = 0,
        tenant: str | None = None,
    ) -> None:
        self.server_message = server_message
        super().__init__(bind_key, orig, statement, replica, tenant=tenant)

    def __str__(self) -> str:
        if self.server_message:
            what = f"the server ended its connection: {self.server_message!r}"
        else:
            what = f"its connection was closed from the other end ({self._reason()})"
        return (
            f"{self._bind_name(start=True)}: {what}. Usual reasons: an "
            "administrator ended it (pg_terminate_backend(), KILL); an idle timeout "
            "(MySQL/MariaDB 'wait_timeout', PostgreSQL 'idle_in_transaction_session_timeout' or "
            "'idle_session_timeout'); a server shutdown, restart or failover; a network failure "
            "in between. The connection was discarded: roll the session back and retry; "
            "'pool_pre_ping' replaces connections that die while idle in the pool."
        )

    def __reduce__(self) -> Any:
        return type(self), (
            self.bind_key,
            self.orig,
            self.statement,
            self.server_message,
            self.replica,
            self.tenant,
        )


class DeadlockError(AsyncBindError, sa_exc.OperationalError):
    """A bind's server rolled a transaction back to break a deadlock, or because it could not be
    serialized with a concurrent one (``serialization`` is then True).

    Retrying the whole transaction is the fix. Also SQLAlchemy's
    :class:`~sqlalchemy.exc.OperationalError` (a :class:`~sqlalchemy.exc.DBAPIError`), as the
    error it replaces was, so handlers of those keep catching it. ``server_message`` is the
    server's own account; the driver's error is ``orig`` and ``__cause__``. ``replica`` is the
    read replica it happened on (its number, from 1; 0 for the bind's primary): a hot standby
    cancels a read that conflicts with what it replays as a serialization failure. ``tenant``
    is the tenant of a tenant group it happened on (None for a bind that is not a group).
    """

    def __init__(
        self,
        bind_key: Hashable | None,
        orig: BaseException,
        statement: str | None = None,
        params: Any = None,
        server_message: str = "",
        serialization: bool = False,
        replica: int = 0,
        tenant: str | None = None,
    ) -> None:
        self.bind_key = bind_key
        self.replica = replica
        self.tenant = tenant
        self.server_message = server_message
        self.serialization = serialization
        sa_exc.OperationalError.__init__(self, statement, params, orig, hide_parameters=True)

    def __str__(self) -> str:
        if self.serialization:
            what = "could not serialize the transaction with a concurrent one"
        else:
            what = "rolled the transaction back to break a deadlock"
        said = f" ({self.server_message!r})" if self.server_message else ""
        subject = bind_name(self.bind_key, start=True, replica=self.replica, tenant=self.tenant)
        return (
            f"{subject}: the server {what}{said}. Roll the session back and run the whole "
            "transaction again."
        )

    def __reduce__(self) -> Any:
        return type(self), (
            self.bind_key,
            self.orig,
            self.statement,
            self.params,
            self.server_message,
            self.serialization,
            self.replica,
            self.tenant,
        )


class StatementTimeoutError(AsyncBindError, TimeoutError):
    """A statement, commit or rollback on a bind took longer than its ``statement_timeout``.

    ``replica`` is the read replica it ran on (its number, from 1; 0 for the bind's primary),
    ``tenant`` the tenant of a tenant group (None for a bind that is not a group). The
    connection was discarded (its state is unknown); the session must be rolled back.
    """

    def __init__(
        self,
        bind_key: Hashable | None,
        timeout: float,
        what: str = "a statement",
        *,
        replica: int = 0,
        tenant: str | None = None,
    ) -> None:
        self.bind_key = bind_key
        self.timeout = timeout
        self.replica = replica
        self.tenant = tenant
        subject = bind_name(bind_key, start=True, replica=replica, tenant=tenant)
        super().__init__(
            f"{subject}: {what} took longer than its statement_timeout of "
            f"{timeout:g}s and was abandoned. Roll the session back and retry, or raise the "
            "bind's 'statement_timeout'."
        )


class PoolTimeoutError(AsyncBindError, sa_exc.TimeoutError):
    """No pooled connection of a bind became free within its ``pool_timeout``.

    Also SQLAlchemy's :class:`sqlalchemy.exc.TimeoutError`, which it replaces. ``timeout`` is
    the pool's ``pool_timeout``, ``pool_size`` and ``max_overflow`` its limits (None where
    unknown); ``replica`` is the read replica whose pool it was (its number, from 1; 0 for the
    bind's primary), ``tenant`` the tenant of a tenant group (None for a bind that is not a group).
    """

    def __init__(
        self,
        bind_key: Hashable | None,
        timeout: float | None,
        *,
        pool_size: int | None = None,
        max_overflow: int | None = None,
        replica: int = 0,
        tenant: str | None = None,
    ) -> None:
        self.bind_key = bind_key
        self.timeout = timeout
        self.pool_size = pool_size
        self.max_overflow = max_overflow
        self.replica = replica
        self.tenant = tenant
        waited = f" for {timeout:g}s" if timeout is not None else ""
        limits = ""
        if pool_size is not None and max_overflow is not None:
            limits = f"; pool_size {pool_size}, max_overflow {max_overflow}"
        subject = bind_name(bind_key, start=True, replica=replica, tenant=tenant)
        super().__init__(
            f"{subject}: every connection of its pool stayed in use{waited} (pool_timeout"
            f"{limits}). Raise 'pool_size' / 'max_overflow', keep transactions short, or set "
            "'statement_timeout' so that a stuck statement gives its connection back."
        )


class WrongEventLoopError(AsyncBindError):
    """A bind's pooled connections belong to another event loop than the one using them.

    ``replica`` is the read replica whose pool it was (its number, from 1; 0 for the bind's
    primary), ``tenant`` the tenant of a tenant group (None for a bind that is not a group).
    """

    def __init__(
        self, bind_key: Hashable | None, *, replica: int = 0, tenant: str | None = None
    ) -> None:
        self.bind_key = bind_key
        self.replica = replica
        self.tenant = tenant
        subject = bind_name(bind_key, start=True, replica=replica, tenant=tenant)
        super().__init__(
            f"{subject} has connections that belong to another event loop. "
            "Call 'await db.dispose()' before using the AsyncBind from a new loop "
            "(for example between two asyncio.run() calls), or make one AsyncBind per loop."
        )


class StartupCheckError(AsyncBindError):
    """A program's start-up check found binds that do not answer (an arq worker's, say).

    ``failed`` maps each such bind's key to why, in words with no password.
    """

    def __init__(self, what: str, failed: Mapping[Hashable | None, str]) -> None:
        self.what = what
        self.failed = dict(failed)
        details = "; ".join(f"{bind_name(key)}: {why}" for key, why in self.failed.items())
        super().__init__(
            f"{what} did not start: {len(self.failed)} bind(s) did not answer 'SELECT 1' "
            f"({details}). Check that each server is up and reachable from here and that the "
            "bind's URL is right, then start it again."
        )

    def __reduce__(self) -> Any:
        return type(self), (self.what, self.failed)


class BulkCopyError(AsyncBindError):
    """A bulk copy or load stopped part-way.

    The batch that failed was rolled back; the ``rows_copied`` rows of the batches before it are in
    ``table`` (committed when the target was an engine). The driver's error is ``__cause__``.
    """

    def __init__(self, message: str, *, rows_copied: int, table: str) -> None:
        self.rows_copied = rows_copied
        self.table = table
        super().__init__(message)


def _rebuild(cls: type[Exception], state: dict[str, Any], args: tuple[Any, ...]) -> Exception:
    """Unpickle an error whose ``__init__`` takes other arguments than its message."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


def _rebuild_group(
    cls: type[BindErrors],
    state: dict[str, Any],
    message: str,
    exceptions: Sequence[Exception],
) -> BindErrors:
    """Unpickle a :class:`BindErrors` (an exception group, made by ``__new__`` from its
    operation and errors)."""
    error = ExceptionGroup.__new__(cls, message, list(exceptions))
    error.__dict__.update(state)
    return error


#: The longest repr of a value that an error message shows whole.
SHOWN_LENGTH = 200


def shown(value: object) -> str:
    """``repr(value)`` for an error message, cut after :data:`SHOWN_LENGTH` characters and
    saying how long it was: a refused 200,000-character text would otherwise fill the message
    and every log line that carries it."""
    text = repr(value)
    if len(text) <= SHOWN_LENGTH:
        return text
    return f"{text[:SHOWN_LENGTH]}... ({len(text):,} characters in all)"


def first_line(error: BaseException) -> str:
    """``error``'s type and the first line of its message (SQLAlchemy adds SQL and a link)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
