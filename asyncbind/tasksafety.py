"""Refusing a session used by two tasks at once.

An :class:`~sqlalchemy.ext.asyncio.AsyncSession` must not be used by two tasks concurrently
(``asyncio.gather`` over one session is the classic case). SQLAlchemy then fails only when the
timing is unlucky, with ``IllegalStateChangeError`` or a leaked connection. :class:`TaskSafeSession`
guards itself the way asyncpg guards a connection (its ``_Atomic`` flag, "another operation is in
progress"): each operation notes its task and its name on entry and clears them on exit; another
task starting an operation meanwhile gets :class:`~asyncbind.SessionSharedError`, every time,
before anything is sent. An operation calling another in the same task (``scalars()`` calls
``execute()``; a ``run_sync()`` function may call ``session.add()``) goes through.

Handing a session from one task to the next (one after the other) stays allowed: frameworks do it,
for example Starlette runs a streaming body in a task of its own. ``close()`` and ``reset()`` from
another task wait for the operation in flight to finish, then clean up: cleanup must not leak the
connection. Nor may a cancellation leave a connection in the pool halfway through its rollback:

- A session holding one connection, opened from its bind's pool, and closed by a task that is not
  being cancelled (the usual end of a request) closes in place, as SQLAlchemy's own close does. A
  cancellation landing during its rollback drops the connection instead (SQLAlchemy invalidates
  it; the server rolls its transaction back as it ends); the rest of the close runs, and then the
  cancellation is raised.
- A session holding several connections, a connection it was given (``rolled_back()``'s) or one
  every session shares (an in-memory SQLite database's), or closed by a task being cancelled
  already (the end of ``async with session:`` in a cancelled task, a framework's cleanup after
  the client went away), closes in a task of its own: a caller cancelled meanwhile gets its
  cancellation once the connections are back in the pool, rolled back, none thrown away.
- A session with no transaction (never used, or committed) holds no connection: its close does
  no I/O, so nothing can cut it short, and it runs in place.

Only operations of the AsyncSession are guarded; calls made on ``session.sync_session`` directly
from another task are not seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    ParamSpec,
    TypeVar,
    TypeVarTuple,
    overload,
)

from sqlalchemy.ext.asyncio import AsyncResult, AsyncSession, AsyncSessionTransaction
from sqlalchemy.ext.asyncio.exc import AsyncContextNotStarted
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.pool import SingletonThreadPool, StaticPool
from sqlalchemy.util import EMPTY_DICT, greenlet_spawn, immutabledict

from . import commits
from .cancellation import raise_handed_back, run_to_completion
from .exceptions import SessionSharedError
from .internals import EXECUTE_OPTIONS, STREAM_OPTIONS, ensure_sync_result

if TYPE_CHECKING:
    from sqlalchemy.engine import Result
    from sqlalchemy.engine.interfaces import (
        CoreExecuteOptionsParameter,
        _CoreAnyExecuteParams,
    )
    from sqlalchemy.ext.asyncio import AsyncConnection
    from sqlalchemy.orm._typing import OrmExecuteOptionsParameter
    from sqlalchemy.orm.interfaces import ORMOption
    from sqlalchemy.orm.session import _BindArguments, _EntityBindKey, _PKIdentityArgument
    from sqlalchemy.sql.base import Executable
    from sqlalchemy.sql.selectable import ForUpdateParameter, TypedReturnsRows

__all__ = ["TaskSafeSession", "TaskSafeTransaction"]

_O = TypeVar("_O", bound=object)
_T = TypeVar("_T", bound=Any)
_P = ParamSpec("_P")
_Ts = TypeVarTuple("_Ts")

#: Pools that hand one connection to every session (an in-memory SQLite database's): dropping it
#: would lose the database.
_SHARED_POOLS = (StaticPool, SingletonThreadPool)

#: What the end of ``async with session.begin():`` is called in a refusal.
END_OF_BEGIN_BLOCK = "the end of 'async with session.begin()'"


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no event loop: plain sync use
        return None


def _name(task: asyncio.Task[Any] | None) -> str:
    return "<no task>" if task is None else task.get_name()


def _ends_in_place(task: asyncio.Task[Any], root: SessionTransaction | None) -> bool:
    """Whether a session whose transaction is ``root`` closes in ``task``, the caller's (see the
    module's docstring): it holds no connection, or one it opened from a pool of its own bind's
    and no cancellation of ``task`` is under way."""
    if root is None:
        return True
    if task.cancelling():
        return False
    held = commits.connections_held(root)
    if not held:
        return True
    if len(held) > 1:
        return False
    connection, opened = held[0]
    return opened and not isinstance(connection.engine.pool, _SHARED_POOLS)


class TaskSafeSession(AsyncSession):
    """An AsyncSession that refuses a second task while one has an operation in flight
    (:class:`~asyncbind.SessionSharedError`), and whose ``close()``, ``reset()`` and end of
    ``async with`` run to their end even if the caller is cancelled, waiting for another task's
    operation in flight first."""

    #: The task whose operation is in flight, and the operation ("execute()").
    _owner: asyncio.Task[Any] | None = None
    _operation = ""
    #: Set when the operation in flight ends, for a close() or reset() waiting for it.
    _released: asyncio.Future[None] | None = None

    # -- the bookkeeping ---------------------------------------------------------------------

    def _take(self, operation: str) -> bool:
        """Note ``operation`` of the current task as the one in flight. False when an operation
        of this task is in flight already (one calling another); the outer one clears it.
        Called by coroutines only, so there is a running loop to ask for the task."""
        task = asyncio.current_task()
        owner = self._owner
        if owner is None:
            self._owner = task
            self._operation = operation
            return True
        if owner is task:
            return False
        raise self._refusal(operation, task)

    def _leave(self) -> None:
        """The operation :meth:`_take` noted has ended."""
        self._owner = None
        released = self._released
        if released is not None:
            self._released = None
            if not released.done():
                released.set_result(None)

    def _check(self, operation: str) -> None:
        """Refuse ``operation``, a call that does not await, while another task has one in
        flight."""
        owner = self._owner
        if owner is not None and owner is not (task := _current_task()):
            raise self._refusal(operation, task)

    def _refusal(self, operation: str, task: asyncio.Task[Any] | None) -> SessionSharedError:
        return SessionSharedError(
            operation,
            task=_name(task),
            owner=_name(self._owner),
            running=self._operation,
        )

    async def _end(self, operation: str, end: Callable[[], None]) -> None:
        """``end`` (the sync session's close or reset) in SQLAlchemy's greenlet, once no other
        task has an operation in flight: in place, or in a task of its own that the caller's
        cancellation does not stop (see the module's docstring for which)."""
        task = asyncio.current_task()  # a coroutine: there is a running loop
        owner = self._owner
        root = self.sync_session.get_transaction()
        if owner is None and task is not None and _ends_in_place(task, root):
            self._owner = task
            self._operation = operation
            try:
                await greenlet_spawn(end)
            except asyncio.CancelledError:
                # Cut short during the rollback: SQLAlchemy has dropped the connection. What is
                # left of the close sends nothing: the transaction ends (after_transaction_end
                # fires) and the session forgets its objects.
                if root is not None and root.is_active:
                    await greenlet_spawn(root.close)
                await greenlet_spawn(end)
                raise
            finally:
                self._leave()
            await raise_handed_back()
            return
        if task is not None and owner is task:
            # Called inside an operation of this task's own (from a run_sync() function, say):
            # there is nothing to wait for, and the operation in flight is this one.
            await greenlet_spawn(end)
            return
        # In a task of its own that the caller's cancellation does not stop, called after the
        # caller: refusals name the task the user knows.
        await run_to_completion(self._end_when_free(operation, end), name=_name(task))

    async def _end_when_free(self, operation: str, end: Callable[[], None]) -> None:
        while self._owner is not None:
            released = self._released
            if released is None:
                released = self._released = asyncio.get_running_loop().create_future()
            # Shielded: other cleanups may be waiting for the same future.
            await asyncio.shield(released)
        # This task's own: an operation that ends the session again from within this one
        # (from an event of the close, say) runs in place instead of waiting for itself.
        self._owner = asyncio.current_task()
        self._operation = operation
        try:
            await greenlet_spawn(end)
        finally:
            self._leave()

    # -- cleanup -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the session, as :meth:`AsyncSession.close`; runs to its end even if the caller
        is cancelled meanwhile (the cancellation is raised once it has finished; a connection
        whose rollback it cuts short is dropped, see the module's docstring), and from another
        task waits for the operation in flight instead of breaking it."""
        await self._end("close()", self.sync_session.close)

    async def reset(self) -> None:
        """Reset the session, as :meth:`AsyncSession.reset`, with the guarantees of
        :meth:`close`."""
        await self._end("reset()", self.sync_session.reset)

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        # SQLAlchemy's __aexit__ would close in a task of its own every time (asyncio.shield);
        # close() starts one only when a cancellation must not cut it short.
        await self.close()

    # -- operations that await ---------------------------------------------------------------
    #
    # SQLAlchemy's own method is one call of the sync session's method in its greenlet
    # (greenlet_spawn); the check makes that call itself: calling SQLAlchemy's method instead
    # would add a coroutine to every resumption of every await of the operation. What execute(),
    # scalar() and stream() add around the call (execution options, the server-side cursor
    # check) comes from asyncbind.internals, tested against SQLAlchemy's own AsyncSession.
    # scalars() and stream_scalars() are SQLAlchemy's own: they call execute() and stream(),
    # which check (a test pins this).

    @overload
    async def execute(
        self,
        statement: TypedReturnsRows[*_Ts],
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        _parent_execute_state: Any | None = None,
        _add_event: Any | None = None,
    ) -> Result[*_Ts]: ...

    @overload
    async def execute(
        self,
        statement: Executable,
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        _parent_execute_state: Any | None = None,
        _add_event: Any | None = None,
    ) -> Result[*tuple[Any, ...]]: ...

    async def execute(
        self,
        statement: Executable,
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> Result[*tuple[Any, ...]]:
        took = self._take("execute()")
        try:
            result: Result[*tuple[Any, ...]] = await greenlet_spawn(
                self.sync_session.execute,
                statement,
                params=params,
                execution_options=(
                    immutabledict(execution_options).union(EXECUTE_OPTIONS)
                    if execution_options
                    else EXECUTE_OPTIONS
                ),
                bind_arguments=bind_arguments,
                **kw,
            )
            await ensure_sync_result(result, self.execute)
            return result
        finally:
            if took:
                self._leave()

    @overload
    async def scalar(
        self,
        statement: TypedReturnsRows[_T],
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> _T | None: ...

    @overload
    async def scalar(
        self,
        statement: Executable,
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> Any: ...

    async def scalar(
        self,
        statement: Executable,
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> Any:
        took = self._take("scalar()")
        try:
            return await greenlet_spawn(
                self.sync_session.scalar,
                statement,
                params=params,
                execution_options=(
                    immutabledict(execution_options).union(EXECUTE_OPTIONS)
                    if execution_options
                    else EXECUTE_OPTIONS
                ),
                bind_arguments=bind_arguments,
                **kw,
            )
        finally:
            if took:
                self._leave()

    @overload
    async def stream(
        self,
        statement: TypedReturnsRows[*_Ts],
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> AsyncResult[*_Ts]: ...

    @overload
    async def stream(
        self,
        statement: Executable,
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> AsyncResult[*tuple[Any, ...]]: ...

    async def stream(
        self,
        statement: Executable,
        params: _CoreAnyExecuteParams | None = None,
        *,
        execution_options: OrmExecuteOptionsParameter = EMPTY_DICT,
        bind_arguments: _BindArguments | None = None,
        **kw: Any,
    ) -> AsyncResult[*tuple[Any, ...]]:
        took = self._take("stream()")
        try:
            result = await greenlet_spawn(
                self.sync_session.execute,
                statement,
                params=params,
                execution_options=(
                    immutabledict(execution_options).union(STREAM_OPTIONS)
                    if execution_options
                    else STREAM_OPTIONS
                ),
                bind_arguments=bind_arguments,
                **kw,
            )
            return AsyncResult(result)
        finally:
            if took:
                self._leave()

    async def get(
        self,
        entity: _EntityBindKey[_O],
        ident: _PKIdentityArgument,
        *,
        options: Sequence[ORMOption] | None = None,
        populate_existing: bool | None = None,
        with_for_update: ForUpdateParameter = None,
        identity_token: Any | None = None,
        execution_options: OrmExecuteOptionsParameter = EMPTY_DICT,
    ) -> _O | None:
        took = self._take("get()")
        try:
            return await greenlet_spawn(
                self.sync_session.get,
                entity,
                ident,
                options=options,
                populate_existing=populate_existing,
                with_for_update=with_for_update,
                identity_token=identity_token,
                execution_options=execution_options,
            )
        finally:
            if took:
                self._leave()

    async def get_one(
        self,
        entity: _EntityBindKey[_O],
        ident: _PKIdentityArgument,
        *,
        options: Sequence[ORMOption] | None = None,
        populate_existing: bool | None = None,
        with_for_update: ForUpdateParameter = None,
        identity_token: Any | None = None,
        execution_options: OrmExecuteOptionsParameter = EMPTY_DICT,
    ) -> _O:
        took = self._take("get_one()")
        try:
            return await greenlet_spawn(
                self.sync_session.get_one,
                entity,
                ident,
                options=options,
                populate_existing=populate_existing,
                with_for_update=with_for_update,
                identity_token=identity_token,
                execution_options=execution_options,
            )
        finally:
            if took:
                self._leave()

    async def merge(
        self, instance: _O, *, load: bool = True, options: Sequence[ORMOption] | None = None
    ) -> _O:
        took = self._take("merge()")
        try:
            return await greenlet_spawn(
                self.sync_session.merge, instance, load=load, options=options
            )
        finally:
            if took:
                self._leave()

    async def merge_all(
        self,
        instances: Iterable[_O],
        *,
        load: bool = True,
        options: Sequence[ORMOption] | None = None,
    ) -> Sequence[_O]:
        took = self._take("merge_all()")
        try:
            return await greenlet_spawn(
                self.sync_session.merge_all, instances, load=load, options=options
            )
        finally:
            if took:
                self._leave()

    async def delete(self, instance: object) -> None:
        took = self._take("delete()")
        try:
            await greenlet_spawn(self.sync_session.delete, instance)
        finally:
            if took:
                self._leave()

    async def delete_all(self, instances: Iterable[object]) -> None:
        took = self._take("delete_all()")
        try:
            await greenlet_spawn(self.sync_session.delete_all, instances)
        finally:
            if took:
                self._leave()

    async def flush(self, objects: Sequence[Any] | None = None) -> None:
        took = self._take("flush()")
        try:
            await greenlet_spawn(self.sync_session.flush, objects=objects)
        finally:
            if took:
                self._leave()

    async def refresh(
        self,
        instance: object,
        attribute_names: Iterable[str] | None = None,
        with_for_update: ForUpdateParameter = None,
    ) -> None:
        took = self._take("refresh()")
        try:
            await greenlet_spawn(
                self.sync_session.refresh,
                instance,
                attribute_names=attribute_names,
                with_for_update=with_for_update,
            )
        finally:
            if took:
                self._leave()

    async def commit(self) -> None:
        took = self._take("commit()")
        try:
            await greenlet_spawn(self.sync_session.commit)
        finally:
            if took:
                self._leave()
        await raise_handed_back()  # the close of an overflow connection returned to its pool

    async def rollback(self) -> None:
        took = self._take("rollback()")
        try:
            await greenlet_spawn(self.sync_session.rollback)
        finally:
            if took:
                self._leave()
        await raise_handed_back()

    async def connection(
        self,
        bind_arguments: _BindArguments | None = None,
        execution_options: CoreExecuteOptionsParameter | None = None,
        **kw: Any,
    ) -> AsyncConnection:
        took = self._take("connection()")
        try:
            return await super().connection(bind_arguments, execution_options, **kw)
        finally:
            if took:
                self._leave()

    async def run_sync(
        self, fn: Callable[Concatenate[Session, _P], _T], *arg: _P.args, **kw: _P.kwargs
    ) -> _T:
        took = self._take("run_sync()")
        try:
            return await super().run_sync(fn, *arg, **kw)
        finally:
            if took:
                self._leave()

    async def invalidate(self) -> None:
        took = self._take("invalidate()")
        try:
            await greenlet_spawn(self.sync_session.invalidate)
        finally:
            if took:
                self._leave()

    def begin(self) -> TaskSafeTransaction:
        return TaskSafeTransaction(self)

    def begin_nested(self) -> TaskSafeTransaction:
        return TaskSafeTransaction(self, nested=True)

    # -- operations that do not await --------------------------------------------------------

    def add(self, instance: object, *, _warn: bool = True) -> None:
        self._check("add()")
        super().add(instance, _warn=_warn)

    def add_all(self, instances: Iterable[object]) -> None:
        self._check("add_all()")
        super().add_all(instances)

    def expire(self, instance: object, attribute_names: Iterable[str] | None = None) -> None:
        self._check("expire()")
        super().expire(instance, attribute_names)

    def expire_all(self) -> None:
        self._check("expire_all()")
        super().expire_all()

    def expunge(self, instance: object) -> None:
        self._check("expunge()")
        super().expunge(instance)

    def expunge_all(self) -> None:
        self._check("expunge_all()")
        super().expunge_all()


class TaskSafeTransaction(AsyncSessionTransaction):
    """What ``begin()`` / ``begin_nested()`` of a :class:`TaskSafeSession` return: starting it,
    and the commit or rollback it makes (called, or at the end of the block), are refused while
    another task has an operation in flight, as the session's own are. Commits go through
    :mod:`asyncbind.commits`, as the session's own do."""

    __slots__ = ()

    session: TaskSafeSession

    async def start(self, is_ctxmanager: bool = False) -> TaskSafeTransaction:
        session = self.session
        took = session._take("begin_nested()" if self.nested else "begin()")
        try:
            await super().start(is_ctxmanager)
        finally:
            if took:
                session._leave()
        return self

    async def commit(self) -> None:
        await self._step("commit()", commits.commit_transaction)

    async def rollback(self) -> None:
        await self._step("rollback()", SessionTransaction.rollback)

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        await self._step(END_OF_BEGIN_BLOCK, commits.end_transaction_block, type_, value, traceback)

    async def _step(self, operation: str, step: Callable[..., None], *args: Any) -> None:
        """``step(sync_transaction, *args)`` in SQLAlchemy's greenlet, as ``operation`` of the
        session."""
        transaction = self.sync_transaction
        if transaction is None:
            raise AsyncContextNotStarted("This transaction has not started yet.")
        session = self.session
        took = session._take(operation)
        try:
            await greenlet_spawn(step, transaction, *args)
        finally:
            if took:
                session._leave()
        await raise_handed_back()
