"""arq: workers whose every job runs in a session scope of its own.

::

    db = AsyncBind("postgresql://...", binds={"users": "mysql://..."})

    async def add_user(ctx: dict[str, Any], name: str) -> None:
        db.session.add(User(name=name))      # this job's own session

    class WorkerSettings:
        functions = [add_user]
        redis_settings = RedisSettings()

    setup(db, WorkerSettings)                # then: arq module.WorkerSettings

- Start-up (``on_startup``) checks that ``db`` has binds, gives its pools to the worker's event
  loop (connections opened before, at import time or in another loop, are closed) and sends
  ``SELECT 1`` to every bind (:meth:`AsyncBind.ping`); a bind that does not answer stops the
  worker with :class:`~asyncbind.StartupCheckError`. The worker's own ``on_startup`` runs after.
- Each job (each entry of ``functions`` and ``cron_jobs``) runs inside ``db.scope()``, in the job's
  own task: ``db.session`` is the job's session, committed when the job returns and rolled back
  when it raises (``arq.Retry`` included) or is cancelled (by its ``job_timeout``, an abort or the
  worker's shut-down). The connections go back to their pools either way.
- Shut-down (``on_shutdown``) runs the worker's own ``on_shutdown``, then disposes every engine,
  even if that hook fails.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, ParamSpec, TypeVar
from weakref import WeakKeyDictionary

from arq.cron import CronJob
from arq.worker import Function, func

from ..cancellation import run_to_completion
from ..core import AsyncBind
from ..exceptions import ConfigError, NotConfiguredError, StartupCheckError

__all__ = ["in_scope", "on_shutdown", "on_startup", "setup"]

_P = ParamSpec("_P")
_T = TypeVar("_T")
_Settings = TypeVar("_Settings")

Job = Callable[_P, Coroutine[Any, Any, _T]]
"""An arq job: ``async def job(ctx, *args, **kwargs)``."""

Hook = Callable[[dict[Any, Any]], Awaitable[Any]]
"""An arq ``on_startup`` / ``on_shutdown`` hook: ``async def hook(ctx) -> ...``."""

# The worker settings that setup() reads and changes.
_OPTIONS = ("functions", "cron_jobs", "on_startup", "on_shutdown")

#: Seconds each bind has to answer the start-up check, a new connection included.
PING_TIMEOUT = 10.0

# What this module made (jobs in a scope, start-up and shut-down hooks), and for which AsyncBind:
# setting a worker up twice for one AsyncBind changes nothing the second time.
_made_for: WeakKeyDictionary[Callable[..., Any], AsyncBind] = WeakKeyDictionary()


def setup(db: AsyncBind, settings: _Settings, *, ping_timeout: float = PING_TIMEOUT) -> _Settings:
    """Set up the arq worker of ``settings`` (a ``WorkerSettings`` class, or a dict of
    :class:`arq.worker.Worker` arguments) for ``db``, in place; returns ``settings``.

    Every entry of ``functions`` (a coroutine function, an import string or ``arq.func(...)``)
    and of ``cron_jobs`` runs :func:`in_scope`, under the same name and options;
    ``on_startup`` and ``on_shutdown`` become :func:`on_startup` and :func:`on_shutdown` around
    the ones ``settings`` has. ``ping_timeout`` bounds each bind's start-up check, in seconds.
    """
    _check_db(db, "setup(db, settings)")
    if isinstance(settings, dict):
        options: dict[str, Any] = settings
    elif isinstance(settings, type):
        options = {name: getattr(settings, name) for name in _OPTIONS if hasattr(settings, name)}
    else:
        raise ConfigError(
            f"setup(db, settings) was given a {type(settings).__name__} as settings; expected "
            "the WorkerSettings class that 'arq' runs, or a dict of arq Worker arguments. "
            "Example: 'setup(db, WorkerSettings)'."
        )
    changed = {
        "functions": [_job_function(db, entry) for entry in options.get("functions") or ()],
        "on_startup": on_startup(db, options.get("on_startup"), ping_timeout=ping_timeout),
        "on_shutdown": on_shutdown(db, options.get("on_shutdown")),
    }
    if options.get("cron_jobs") is not None:
        changed["cron_jobs"] = [_cron_job(db, job) for job in options["cron_jobs"]]
    for name, value in changed.items():
        if isinstance(settings, dict):
            settings[name] = value
        else:
            setattr(settings, name, value)
    return settings


def in_scope(db: AsyncBind) -> Callable[[Job[_P, _T]], Job[_P, _T]]:
    """A decorator: the arq job runs inside ``async with db.scope() as session:``, and
    ``session`` is committed when the job returns.

    An exception or a cancellation (a job timeout) rolls back instead: the scope closes the
    session, to completion, so its connections go back to their pools. A commit that fails fails
    the job. The job keeps its name (arq finds it by ``__qualname__``).
    """
    _check_db(db, "in_scope(db)")

    def decorate(job: Job[_P, _T]) -> Job[_P, _T]:
        if _made_for_db(job, db):
            return job
        if not inspect.iscoroutinefunction(job):
            raise ConfigError(
                f"The arq job {job!r} is not a coroutine function; arq runs 'async def "
                "job(ctx, ...)' functions only. Make it 'async def'."
            )

        @functools.wraps(job)
        async def in_a_scope(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            async with db.scope() as session:
                result = await job(*args, **kwargs)
                await session.commit()
            return result

        _made_for[in_a_scope] = db
        return in_a_scope

    return decorate


def on_startup(
    db: AsyncBind, then: Hook | None = None, *, ping_timeout: float = PING_TIMEOUT
) -> Hook:
    """An arq ``on_startup`` hook that readies ``db`` for the worker, then runs ``then`` (the
    worker's own hook), if any.

    It raises :class:`~asyncbind.NotConfiguredError` if ``db`` has no binds, resets every pool so
    that the worker's event loop opens connections of its own, and raises
    :class:`~asyncbind.StartupCheckError` if a bind does not answer ``SELECT 1`` within
    ``ping_timeout`` seconds.
    """
    _check_db(db, "on_startup(db)")
    _check_hook(then, "on_startup")
    if then is not None and _made_for_db(then, db):
        return then
    if isinstance(ping_timeout, bool) or not (
        isinstance(ping_timeout, int | float) and ping_timeout > 0
    ):
        raise ConfigError(
            f"ping_timeout={ping_timeout!r}; expected a positive number of seconds, like 10."
        )

    async def startup(ctx: dict[Any, Any]) -> None:
        if not db.engines:
            raise NotConfiguredError(
                "The arq worker is starting with an AsyncBind that has no database configured. "
                "Pass a URL, AsyncBind('postgresql://...', binds={...}), or call "
                "db.configure(...) before the worker starts."
            )
        await run_to_completion(db.dispose())
        health = await db.ping(timeout=ping_timeout)
        failed: dict[Hashable | None, str] = {
            key: str(found.error) for key, found in health.items() if not found.ok
        }
        if failed:
            raise StartupCheckError("The arq worker", failed)
        if then is not None:
            await then(ctx)

    _made_for[startup] = db
    return startup


def on_shutdown(db: AsyncBind, then: Hook | None = None) -> Hook:
    """An arq ``on_shutdown`` hook that runs ``then`` (the worker's own hook), if any, then
    disposes every engine of ``db``, whether ``then`` succeeded or not."""
    _check_db(db, "on_shutdown(db)")
    _check_hook(then, "on_shutdown")
    if then is not None and _made_for_db(then, db):
        return then

    async def shutdown(ctx: dict[Any, Any]) -> None:
        try:
            if then is not None:
                await then(ctx)
        finally:
            await run_to_completion(db.dispose())

    _made_for[shutdown] = db
    return shutdown


def _job_function(db: AsyncBind, entry: Any) -> Function:
    """``entry`` of ``functions`` as an arq Function (as arq itself would make it) in a scope."""
    if not isinstance(entry, str | Function) and not inspect.iscoroutinefunction(entry):
        raise ConfigError(
            f"The arq job {entry!r} in 'functions' is not a coroutine function; arq runs "
            "'async def job(ctx, ...)' functions, given as such, by import string or with "
            "arq.func(...)."
        )
    function = func(entry)
    return dataclasses.replace(function, coroutine=in_scope(db)(function.coroutine))


def _cron_job(db: AsyncBind, job: Any) -> CronJob:
    if not isinstance(job, CronJob):
        raise ConfigError(
            f"The entry {job!r} of 'cron_jobs' is not an arq CronJob; make it with "
            "arq.cron(coroutine, ...)."
        )
    return dataclasses.replace(job, coroutine=in_scope(db)(job.coroutine))


def _made_for_db(made: object, db: AsyncBind) -> bool:
    """Whether this module made ``made`` (a job in a scope, a hook) for ``db``."""
    try:
        return _made_for.get(made) is db  # type: ignore[call-overload]
    except TypeError:  # not weakly referable, so not made here
        return False


def _check_db(db: object, call: str) -> None:
    if not isinstance(db, AsyncBind):
        raise ConfigError(
            f"{call} was given a {type(db).__name__}, not an AsyncBind. Pass the AsyncBind your "
            "jobs use: 'db = AsyncBind(...)'."
        )


def _check_hook(hook: object, name: str) -> None:
    if hook is not None and not callable(hook):
        raise ConfigError(
            f"The worker's {name} is {hook!r}, which cannot be called; arq awaits "
            f"'{name}(ctx)': give it an 'async def {name}(ctx)' function."
        )
