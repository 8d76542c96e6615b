"""Commits across binds in a stable order, and an error that says what landed when one fails.

SQLAlchemy commits the connections of a session's transaction in set order, so which bind
commits first changes from run to run. When the session's root transaction holds connections to
two or more binds, asyncbind commits them itself, one after the other: the default bind first,
then the others in the order they were configured (engines that are not one of the binds', passed
as ``bind=``, last, in the order the session first used them).

When a commit fails, the binds after it are rolled back and so is the session, which stays
usable. If binds before it had committed, :class:`~asyncbind.exceptions.PartialCommitError` says
which (``committed``), which failed and why (``failed``, ``cause``) and which were rolled back
(``rolled_back``). If the first commit fails, nothing was committed: its error is raised as it is
(an ``IntegrityError`` stays one), with a note naming the bind.

A transaction with a single connection and SAVEPOINTs (``begin_nested()``) go through
SQLAlchemy's own commit; a ``twophase=True`` session commits through :mod:`asyncbind.twophase`,
which uses the same two steps (:func:`take_prepared`, :func:`in_order`). SessionEvents fire as
SQLAlchemy fires them: ``before_commit`` then the flush, then ``after_commit`` on success, or
``after_rollback`` when the session is rolled back after a failure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import orm as sa_orm
from sqlalchemy.engine import Transaction

from .engines import holds_the_database
from .exceptions import PartialCommitError, bind_name, format_key
from .urls import render_url

__all__ = [
    "Held",
    "commit_in_order",
    "commit_transaction",
    "end_transaction_block",
    "in_order",
    "take_prepared",
]

#: A bind's place in the commit order and the name it is reported by.
Rank = Callable[[sa.Engine], "tuple[int, Any] | None"]


class Held(NamedTuple):
    """A connection the root transaction was to commit, taken over by the ordered commit."""

    connection: sa.Connection
    transaction: Transaction
    close: bool  # opened by the session (from an engine), so closed by it


def take_prepared(root: sa_orm.SessionTransaction, at_least: int = 2) -> list[Held] | None:
    """Do the first part of ``root.commit()`` (``before_commit``, then the flush), then take the
    connections it would commit out of ``root`` when there are ``at_least`` (two) or more.

    Taken out, they are the caller's to commit, roll back and close; SQLAlchemy's own
    ``root.commit()`` or ``root.rollback()`` then ends a transaction that has nothing left to
    commit. With fewer, or none, nothing is taken (None): ``root.commit()`` does the rest as
    usual.

    With :func:`connections_held`, the one place that uses SQLAlchemy's private state:
    ``_prepare_impl()`` is what ``SessionTransaction.commit()`` runs first, and ``_connections``
    maps each connection and its engine to ``(connection, transaction, should_commit,
    autoclose)``, in the order they were acquired. ``test_commits.py`` checks both.
    """
    root._prepare_impl()
    entries = root._connections
    if len(entries) <= 2 and at_least > 1:  # one connection at most, known by itself and by
        return None  # its engine
    held = list(dict.fromkeys(entry for entry in entries.values() if entry[2]))
    if not held or len(held) < at_least:
        return None
    for entry in held:
        for key in [key for key, value in entries.items() if value is entry]:
            del entries[key]
    return [Held(conn, transaction, autoclose) for conn, transaction, _, autoclose in held]


def connections_held(root: sa_orm.SessionTransaction) -> list[tuple[sa.Connection, bool]]:
    """The connections the session transaction ``root`` holds, each with whether the session
    opened it (from an engine) rather than being given it (see :func:`take_prepared` for the
    private state read here)."""
    return [(entry[0], entry[3]) for entry in dict.fromkeys(root._connections.values())]


def _commit_root(root: sa_orm.SessionTransaction, rank: Rank) -> None:
    """``root.commit()``, with the connections of several binds committed in their order."""
    held = take_prepared(root)
    if held is None:
        root.commit()
        return
    held, names = in_order(held, rank)
    try:
        for position, current in enumerate(held):
            try:
                current.transaction.commit()
            except BaseException as exc:
                # Its COMMIT failed, so the transaction is inactive: rolling it back detaches it
                # from its connection and sends nothing.
                current.transaction.rollback()
                problems = _roll_back(held[position + 1 :], names[position + 1 :])
                # The session's transaction holds nothing of these binds any more: rolling it
                # back ends it as after any failed commit (objects expired, after_rollback).
                root.rollback()
                error = _reported(exc, names, position, problems)
                if error is exc:
                    raise
                raise error from exc
        root.commit()  # nothing left to commit: after_commit fires and the transaction ends
    finally:
        for h in held:
            if h.close:
                h.connection.close()


def in_order(held: list[Held], rank: Rank) -> tuple[list[Held], list[Any]]:
    """``held`` in commit order, and the name of each one's bind (its key, or its URL)."""
    ranks = [rank(h.connection.engine) for h in held]
    last = len(held)  # engines of no bind go last, in the order the session used them
    order = sorted(range(len(held)), key=lambda i: r[0] if (r := ranks[i]) is not None else last)
    names = [_name(held[i].connection.engine, ranks[i]) for i in order]
    return [held[i] for i in order], names


def _reported(
    exc: BaseException, names: list[Any], position: int, problems: list[str]
) -> BaseException:
    """The error to raise for the failed commit of ``names[position]``: a PartialCommitError when
    binds before it had committed, else ``exc`` itself with a note that nothing was committed.
    A cancellation stays what it is, with a note of what had landed."""
    committed, failed, rolled_back = names[:position], names[position], names[position + 1 :]
    error: BaseException = exc
    if not isinstance(exc, Exception):
        landed = ", ".join(format_key(name) for name in committed) or "none"
        undone = ", ".join(format_key(name) for name in rolled_back) or "none"
        exc.add_note(
            f"asyncbind: cancelled while committing {bind_name(failed)}, so whether that "
            f"commit landed is unknown. Committed: {landed}. Rolled back: {undone}, and the "
            "session."
        )
    elif committed:
        error = PartialCommitError(committed, failed, exc, rolled_back)
    else:
        others = ", ".join(format_key(name) for name in rolled_back)
        exc.add_note(
            f"asyncbind: {bind_name(failed)} was the first of the session's binds to "
            f"commit, so nothing was committed: the others ({others}) and the session were "
            "rolled back, and the session can be used again."
        )
    for problem in problems:
        error.add_note(problem)
    return error


def _roll_back(rest: list[Held], names: list[Any]) -> list[str]:
    """Roll back the transactions that had not committed yet; what went wrong doing so, as notes.

    A rollback that fails discards its connection, which ends the transaction on the server;
    except the one connection of an in-memory database, which is the database.
    """
    problems = []
    for held, name in zip(rest, names, strict=True):
        try:
            held.transaction.rollback()
        except Exception as exc:
            if holds_the_database(held.connection.engine):
                problems.append(
                    f"asyncbind: rolling back {bind_name(name)} failed ({type(exc).__name__}); "
                    "its connection was kept, as it is the in-memory database itself, and is "
                    "rolled back again when it goes back to its pool."
                )
                continue
            held.connection.invalidate(exc)
            problems.append(
                f"asyncbind: rolling back {bind_name(name)} failed ({type(exc).__name__}); "
                "its connection was discarded, so its server rolled the transaction back."
            )
    return problems


def _name(engine: sa.Engine, rank: tuple[int, Any] | None) -> Any:
    """How a bind is named in errors: its key, or its URL (password hidden) for an engine that
    belongs to no bind."""
    if rank is not None:
        return rank[1]
    return render_url(engine.url)


def _committer(session: sa_orm.Session) -> Callable[[sa_orm.SessionTransaction], None] | None:
    """How ``session``'s root transaction commits: in bind order, or, for a two-phase session,
    through its router's two-phase coordinator; None when SQLAlchemy's own commit applies."""
    router = getattr(session, "router", None)  # a RoutingSession's
    if router is None:
        return None
    rank = router.commit_rank
    if session.twophase:
        coordinator = router.twophase
        if coordinator is None:
            return None
        return lambda root: coordinator.commit_root(root, rank)
    return lambda root: _commit_root(root, rank)


def commit_in_order(session: sa_orm.Session) -> bool:
    """``session.commit()`` with the root transaction's binds committed in their order (a
    two-phase session: prepared, decided, then committed in that order); False, having done
    nothing, where SQLAlchemy's own commit applies (no transaction, or one that can no longer
    commit). SAVEPOINTs in progress are released first, as SQLAlchemy does."""
    commit_root = _committer(session)
    root = session.get_transaction()
    if commit_root is None or root is None or not root.is_active:
        return False
    while (nested := session.get_nested_transaction()) is not None:
        nested.commit()
    commit_root(root)
    return True


def commit_transaction(transaction: sa_orm.SessionTransaction) -> None:
    """``transaction.commit()`` (the transaction of ``session.begin()``), in bind order when it
    is the root transaction."""
    commit_root = _committer(transaction.session)
    if commit_root is None or transaction.parent is not None or not transaction.is_active:
        transaction.commit()
    else:
        commit_root(transaction)


def end_transaction_block(
    transaction: sa_orm.SessionTransaction, type_: Any, value: Any, traceback: Any
) -> None:
    """The end of ``with session.begin():``: commit in bind order when the block succeeded and
    ``transaction`` is the root, else SQLAlchemy's own ``__exit__``.

    After a failed commit the transaction is rolled back if it is still open, as SQLAlchemy's
    ``__exit__`` does, before the block's context is left with the error.
    """
    commit_root = _committer(transaction.session)
    if (
        type_ is not None
        or commit_root is None
        or transaction.parent is not None
        or not transaction.is_active  # ended inside the block: nothing to commit
    ):
        transaction.__exit__(type_, value, traceback)
        return
    try:
        commit_root(transaction)
    except BaseException as exc:
        if transaction.session.get_transaction() is transaction:
            transaction.rollback()
        transaction.__exit__(type(exc), exc, exc.__traceback__)
        raise
    transaction.__exit__(None, None, None)
