"""Refusing a session used by two tasks at once.

An :class:`~sqlalchemy.ext.asyncio.AsyncSession` must not be used by two tasks concurrently
(``asyncio.gather`` over one session is the classic case). SQLAlchemy then fails only when the
timing is unlucky, with ``IllegalStateChangeError`` or a leaked connection. The sessions asyncbind
makes note the operation in flight and refuse another task that starts one meanwhile with
:class:`~asyncbind.SessionSharedError`, every time, before anything is sent.

Handing a session from one task to the next (one after the other) stays allowed: frameworks do it,
for example Starlette runs a streaming body in a task of its own. ``close()`` from another task
(or ``reset()``) waits for the operation in flight to finish, then closes: cleanup must not leak
the connection. For the same reason ``close()`` and ``reset()`` run to their end in a task of their
own, as the end of ``async with session:`` does: a caller cancelled meanwhile gets its
cancellation once the connection is back in the pool, instead of a connection thrown away halfway
through its rollback.

The bookkeeping sits in the *sync* session that the AsyncSession drives: every operation of an
AsyncSession is one call of a sync Session method, run in SQLAlchemy's greenlet from the first
to the last of its awaits, so that greenlet identifies the operation. Marking it there costs one
plain function call, where wrapping the coroutines would add a frame to every resumption of every
await.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import keyword
import linecache
import types
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import greenlet
from sqlalchemy import orm as sa_orm
from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction
from sqlalchemy.orm import SessionTransaction
from sqlalchemy.util import greenlet_spawn

from . import commits
from .exceptions import SessionSharedError
from .scoping import run_to_completion

__all__ = [
    "GuardedSessionTransaction",
    "guarded_session_class",
    "install_sharing_checks",
    "is_guarded",
]

_AS = TypeVar("_AS", bound=AsyncSession)

# The sync Session methods that AsyncSession's operations call (directly or through
# greenlet_spawn), plus the ones without I/O that still change the session's state.
_OPERATIONS = (
    "execute",
    "scalar",
    "scalars",
    "get",
    "get_one",
    "merge",
    "merge_all",
    "delete",
    "delete_all",
    "flush",
    "refresh",
    "commit",
    "rollback",
    "close",
    "reset",
    "begin",
    "begin_nested",
    "invalidate",
    "connection",
    "add",
    "add_all",
    "expire",
    "expire_all",
    "expunge",
    "expunge_all",
)

# What ``async with session.begin()`` and its transaction do, run through the sync session's
# check: SQLAlchemy calls the sync SessionTransaction for them, not a Session method.
_TRANSACTION_STEPS = {
    "_asyncbind_commit": "commit()",
    "_asyncbind_rollback": "rollback()",
    "_asyncbind_end_block": "the end of 'async with session.begin()'",
}

_async_classes: dict[type[AsyncSession], type[AsyncSession]] = {}


def _task_name(task: asyncio.Task[Any] | None) -> str:
    """``task``'s name; for the task a ``close()`` or ``reset()`` runs in (see
    :func:`~asyncbind.scoping.run_to_completion`), the name of the task that called it."""
    if task is None:
        return "<no task>"
    seen = {task}
    while (caller := _caller_of(task)) is not None and caller not in seen:
        seen.add(caller)
        task = caller
    return task.get_name()


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no event loop: plain sync use
        return None


def _awaits(task: asyncio.Task[Any]) -> Iterator[Any]:
    """The frames of the coroutines ``task`` is suspended in, outermost first."""
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None)
        if frame is not None:
            yield frame
        awaited = getattr(awaited, "cr_await", None)


_RUN_TO_COMPLETION = run_to_completion.__code__


def _caller_of(inner: asyncio.Task[Any]) -> asyncio.Task[Any] | None:
    """The task whose ``run_to_completion()`` is waiting for ``inner``, if one is."""
    for task in asyncio.all_tasks():
        for frame in _awaits(task):
            if frame.f_code is _RUN_TO_COMPLETION and frame.f_locals.get("task") is inner:
                return task
    return None


def _owner_of(session: Any) -> asyncio.Task[Any] | None:
    """The task whose operation on the sync ``session`` is in flight.

    An operation in flight waits in SQLAlchemy's ``greenlet_spawn``, which was handed the
    session's bound method (or, for ``run_sync``, the session itself): each other task's chain of
    awaits is searched for that call. Only an error message needs the owner, so operations never
    ask asyncio for their task.
    """
    try:
        current, tasks = asyncio.current_task(), asyncio.all_tasks()
    except RuntimeError:
        return None
    for task in tasks:
        if task is current:
            continue
        for frame in _awaits(task):
            if frame.f_code.co_name == "greenlet_spawn":
                fn, args = frame.f_locals.get("fn"), frame.f_locals.get("args", ())
                if getattr(fn, "__self__", None) is session or any(a is session for a in args):
                    return task
    return None


# The check, made for each guarded method with the method's own parameters: forwarding them by
# name costs a third of what packing them into *args and **kwargs and unpacking them again does,
# and this runs several times per operation. The operation in flight is known by its greenlet:
# SQLAlchemy runs each AsyncSession operation in a greenlet of its own, and calls nested in it (a
# get's autoflush) share it. The tasks involved are looked up only to word a refusal.
_guard_numbers = itertools.count(1)
_GUARD_SOURCE = """
def {name}({parameters}):
    _asyncbind_owner = {self}._asyncbind_greenlet
    if _asyncbind_owner is None:
        {self}._asyncbind_greenlet = _asyncbind_getcurrent()
        {self}._asyncbind_operation = _asyncbind_label
        try:
            return _asyncbind_method({arguments})
        finally:
            {self}._asyncbind_greenlet = None
            if {self}._asyncbind_waiter is not None:
                _asyncbind_release({self})
    if _asyncbind_owner is _asyncbind_getcurrent():  # an operation calling another one
        return _asyncbind_method({arguments})
    raise _asyncbind_refusal({self}, _asyncbind_label)
"""


class _Named:
    """A default shown by the name it has in the generated check's namespace."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _forwarding(method: Callable[..., Any]) -> tuple[str, str, str, dict[str, Any]] | None:
    """The parameter list of ``method``, the arguments that pass them on, the name of the first
    (the session) and the defaults they refer to; None when ``method`` has no plain Python
    signature to copy."""
    if not isinstance(method, types.FunctionType) or hasattr(method, "__signature__"):
        return None
    try:
        signature = inspect.signature(method, follow_wrapped=False)
    except (TypeError, ValueError):
        return None
    kinds = inspect.Parameter
    parameters = list(signature.parameters.values())
    if not parameters or parameters[0].kind not in (
        kinds.POSITIONAL_ONLY,
        kinds.POSITIONAL_OR_KEYWORD,
    ):
        return None  # no positional session parameter to mark
    bare: list[inspect.Parameter] = []
    passed: list[str] = []
    defaults: dict[str, Any] = {}
    for index, parameter in enumerate(parameters):
        name, kind = parameter.name, parameter.kind
        if name.startswith("_asyncbind_"):
            return None
        default = parameter.default
        if default is not parameter.empty:
            defaults[f"_asyncbind_default_{index}"] = default
            default = _Named(f"_asyncbind_default_{index}")
        bare.append(parameter.replace(annotation=parameter.empty, default=default))
        if kind is kinds.KEYWORD_ONLY:
            passed.append(f"{name}={name}")
        elif kind is kinds.VAR_POSITIONAL:
            passed.append(f"*{name}")
        elif kind is kinds.VAR_KEYWORD:
            passed.append(f"**{name}")
        else:
            passed.append(name)
    # inspect writes the parameter list, with its "/" and "*", as Python would read it back.
    declared = str(signature.replace(parameters=bare, return_annotation=signature.empty))
    return declared[1:-1], ", ".join(passed), parameters[0].name, defaults


def _refusal(session: Any, label: str) -> SessionSharedError:
    return SessionSharedError(
        label,
        task=_task_name(_current_task()),
        owner=_task_name(_owner_of(session)),
        running=session._asyncbind_operation,
    )


def _guard(label: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` refused to a second task while an operation is in flight; ``label`` names the
    operation in the refusal."""
    forwarding = _forwarding(method)
    if forwarding is None:
        forwarding = ("self, *args, **kwargs", "self, *args, **kwargs", "self", {})
    parameters, arguments, session, defaults = forwarding
    name = getattr(method, "__name__", "")
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_asyncbind_"):
        name = "guarded"
    namespace: dict[str, Any] = {
        "_asyncbind_getcurrent": greenlet.getcurrent,
        "_asyncbind_label": label,
        "_asyncbind_method": method,
        "_asyncbind_release": _release,
        "_asyncbind_refusal": _refusal,
        **defaults,
    }
    source = _GUARD_SOURCE.format(
        name=name, parameters=parameters, arguments=arguments, self=session
    )
    qualname = getattr(method, "__qualname__", name)
    filename = f"<asyncbind guard of {qualname} #{next(_guard_numbers)}>"
    exec(compile(source, filename, "exec"), namespace)
    # Tracebacks through the check show its lines, as they do for dataclasses' methods.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    return functools.wraps(method)(namespace[name])


def _release(session: Any) -> None:
    """Wake the ``close()`` or ``reset()`` waiting for the operation that just ended."""
    waiter = session._asyncbind_waiter
    session._asyncbind_waiter = None
    if not waiter.done():
        waiter.set_result(None)


#: The checks made for each tuple of bases, so that every AsyncBind with the same session classes
#: shares one set (they hold nothing of the AsyncBind's own).
_checks: dict[tuple[type, ...], dict[str, Any]] = {}


def install_sharing_checks(cls: type[sa_orm.Session]) -> None:
    """Make ``cls``, a sync Session class just made, note the operation in flight and refuse
    another task meanwhile.

    The checks go into ``cls`` itself rather than a subclass of it: each class in the hierarchy
    is one more step for every attribute lookup that misses Python's type cache, and SQLAlchemy
    does several per operation. ``cls`` must not define the operations itself; each check wraps
    what ``cls`` inherits.
    """
    bases = cls.__bases__
    if any(is_guarded(base) for base in bases):
        return  # inherited
    checks = _checks.get(bases)
    if checks is None:
        inherited = super(cls, cls)
        checks = {
            "_asyncbind_guarded": True,
            "_asyncbind_greenlet": None,
            "_asyncbind_operation": None,
            "_asyncbind_waiter": None,
        }
        for name in _OPERATIONS:
            if hasattr(inherited, name):
                checks[name] = _guard(f"{name}()", getattr(inherited, name))
        for name, label in _TRANSACTION_STEPS.items():
            checks[name] = _guard(label, _call)
        _checks[bases] = checks
    for name, value in checks.items():
        setattr(cls, name, value)


async def _wait_until_free(session: AsyncSession) -> None:
    """Wait until no other task has an operation in flight on ``session``."""
    sync = session.sync_session
    # An operation in flight is another task's: this one is busy closing.
    while getattr(sync, "_asyncbind_greenlet", None) is not None:
        waiter = sync._asyncbind_waiter  # type: ignore[attr-defined]
        if waiter is None:
            waiter = sync._asyncbind_waiter = asyncio.get_running_loop().create_future()  # type: ignore[attr-defined]
        await asyncio.shield(waiter)


def _cleanup_steps(
    base: type[AsyncSession], name: str
) -> Callable[[AsyncSession], Coroutine[Any, Any, None]]:
    """What ``close()`` or ``reset()`` of a guarded subclass of ``base`` does: first wait for
    another task's operation in flight, then do as ``base`` does."""
    inherited = getattr(base, name)
    if inherited is getattr(AsyncSession, name):
        # SQLAlchemy's own close() and reset() are one call in its greenlet; made here, they
        # cost no extra coroutine on the way out of every ``async with`` block.
        async def steps(self: AsyncSession) -> None:
            sync = self.sync_session
            if getattr(sync, "_asyncbind_greenlet", None) is not None:
                await _wait_until_free(self)
            await greenlet_spawn(getattr(sync, name))

    else:

        async def steps(self: AsyncSession) -> None:
            await _wait_until_free(self)
            await inherited(self)

    return steps


def _cleanup(
    base: type[AsyncSession], name: str
) -> Callable[[AsyncSession], Coroutine[Any, Any, None]]:
    """``close()`` or ``reset()`` that runs to its end even if the caller is cancelled meanwhile
    (the cancellation is raised once it has finished): interrupted, it would leave the connection
    to be thrown away instead of returned to the pool."""
    steps = _cleanup_steps(base, name)

    async def cleanup(self: AsyncSession) -> None:
        await run_to_completion(steps(self))

    return functools.wraps(getattr(base, name))(cleanup)


def _exit(
    base: type[AsyncSession],
) -> Callable[[AsyncSession, Any, Any, Any], Coroutine[Any, Any, None]]:
    """``__aexit__`` that closes the session as SQLAlchemy's does, in one task of its own."""
    close = _cleanup_steps(base, "close")

    async def exit_(self: AsyncSession, type_: Any, value: Any, traceback: Any) -> None:
        await run_to_completion(close(self))

    return functools.wraps(AsyncSession.__aexit__)(exit_)


def _call(_session: Any, fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


async def _transaction_step(
    transaction: AsyncSessionTransaction,
    step: Callable[..., None],
    checked_as: str,
    *args: Any,
) -> None:
    """Run ``step`` (commit, rollback or ``__exit__``, given ``transaction``'s sync transaction)
    in SQLAlchemy's greenlet, through the session's sharing check ``checked_as`` when it has
    one."""
    method = functools.partial(step, transaction._sync_transaction())
    checked = getattr(transaction.session.sync_session, checked_as, None)
    if checked is None:
        await greenlet_spawn(method, *args)
    else:
        await greenlet_spawn(checked, method, *args)


class GuardedSessionTransaction(AsyncSessionTransaction):
    """What ``begin()`` / ``begin_nested()`` of a guarded session return: the commit or rollback
    they make, at the end of the block or called, is refused while another task has an operation
    in flight, as the session's own commit and rollback are. Commits go through
    :mod:`asyncbind.commits`, as the session's own do."""

    __slots__ = ()

    async def commit(self) -> None:
        await _transaction_step(self, commits.commit_transaction, "_asyncbind_commit")

    async def rollback(self) -> None:
        await _transaction_step(self, SessionTransaction.rollback, "_asyncbind_rollback")

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        await _transaction_step(
            self, commits.end_transaction_block, "_asyncbind_end_block", type_, value, traceback
        )


def _begin(self: AsyncSession) -> AsyncSessionTransaction:
    return GuardedSessionTransaction(self)


def _begin_nested(self: AsyncSession) -> AsyncSessionTransaction:
    return GuardedSessionTransaction(self, nested=True)


def guarded_session_class(base: type[_AS]) -> type[_AS]:
    """A subclass of ``base`` (an AsyncSession class) whose ``close()`` and ``reset()`` run to
    their end even if the caller is cancelled, and from another task wait for the operation in
    flight instead of breaking it; the refusal itself happens in the sync session
    (:func:`install_sharing_checks`)."""
    if is_guarded(base):
        return base
    guarded = _async_classes.get(base)
    if guarded is None:
        namespace: dict[str, Any] = {
            "__module__": base.__module__,
            "__qualname__": base.__qualname__,
            "__doc__": base.__doc__,
            "_asyncbind_guarded": True,
            "close": _cleanup(base, "close"),
            "reset": _cleanup(base, "reset"),
        }
        if base.__aexit__ is AsyncSession.__aexit__:
            # SQLAlchemy's __aexit__ runs close() in a task of its own; calling the close()
            # above from there would start a second task inside the first.
            namespace["__aexit__"] = _exit(base)
        for name, begin in (("begin", _begin), ("begin_nested", _begin_nested)):
            if getattr(base, name) is getattr(AsyncSession, name):
                namespace[name] = functools.wraps(getattr(base, name))(begin)
        guarded = _async_classes[base] = type(base.__name__, (base,), namespace)
    return guarded  # type: ignore[return-value]


def is_guarded(cls: type[Any]) -> bool:
    """Whether sessions of ``cls`` refuse use by two tasks at once."""
    return bool(getattr(cls, "_asyncbind_guarded", False))
