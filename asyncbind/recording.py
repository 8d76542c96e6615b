"""Query recording: Flask-SQLAlchemy's ``SQLALCHEMY_RECORD_QUERIES`` and
``get_recorded_queries()``.

Off by default, and then nothing is installed. With ``AsyncBind(record_queries=True)`` (or
``SQLALCHEMY_RECORD_QUERIES`` in the config), each engine gets a ``before_cursor_execute`` and an
``after_cursor_execute`` listener, and every statement sent inside a request, app context or
``db.scope()`` is added to that request's or scope's own list, kept in a context variable (the
Quart integration keeps it in the app context, as Flask-SQLAlchemy keeps it in ``g``). Statements
outside all of them are not recorded.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import greenlet
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from .config import BindKey
from .exceptions import ConfigError
from .registry import bind_config

__all__ = [
    "CONFIG_KEY",
    "QueryInfo",
    "Recording",
    "add_provider",
    "begin",
    "config_flag",
    "end",
    "get_recorded_queries",
    "install",
]

#: The Flask-SQLAlchemy config key that turns recording on.
CONFIG_KEY = "SQLALCHEMY_RECORD_QUERIES"
# When the statement in flight on a connection started (one at a time per connection).
_STARTED = "asyncbind.query_started"
# Code of these packages is not "where the query was run": the first frame outside them is.
_LIBRARIES = frozenset(
    {
        "asyncbind",
        "sqlalchemy",
        "greenlet",
        "asyncio",
        "contextlib",
        "quart",
        "starlette",
        "fastapi",
        "anyio",
        "werkzeug",
    }
)


@dataclass
class QueryInfo:
    """One statement that was sent, with Flask-SQLAlchemy's fields and its bind."""

    statement: str | None
    """The SQL, with parameter placeholders."""
    parameters: Any
    """The parameters sent with it (SQLAlchemy's execution context's ``parameters``)."""
    start_time: float
    """When it was sent, in :func:`time.perf_counter` seconds."""
    end_time: float
    """When its results came back, in :func:`time.perf_counter` seconds."""
    location: str
    """The line of code that ran it, ``"file:line (function)"``, or ``"<unknown>"``."""
    bind_key: BindKey
    """The bind it was sent to."""

    @property
    def duration(self) -> float:
        """How long it took, in seconds."""
        return self.end_time - self.start_time


Recording = Token[list[QueryInfo] | None] | None
"""What :func:`begin` returns, for :func:`end`."""

_queries: ContextVar[list[QueryInfo] | None] = ContextVar("asyncbind_queries", default=None)
_providers: list[Callable[[], list[QueryInfo] | None]] = []


def get_recorded_queries() -> list[QueryInfo]:
    """The statements recorded so far in the current request, app context or ``db.scope()``, in
    the order they were sent; empty outside them or when recording is off.

    Recording is on with ``AsyncBind(record_queries=True)`` or ``SQLALCHEMY_RECORD_QUERIES``.
    """
    queries = _current()
    return list(queries) if queries is not None else []


def _current() -> list[QueryInfo] | None:
    queries = _queries.get()
    if queries is None:
        for provider in _providers:
            queries = provider()
            if queries is not None:
                break
    return queries


def begin() -> Recording:
    """Start a list of this scope's queries, unless an outer request or scope has one."""
    if _current() is not None:
        return None
    return _queries.set([])


def end(recording: Recording) -> None:
    """End the list :func:`begin` started."""
    if recording is not None:
        try:
            _queries.reset(recording)
        except ValueError:
            pass  # left in another context than it was entered in: that one is not ours


def add_provider(provider: Callable[[], list[QueryInfo] | None]) -> None:
    """Ask ``provider`` for the current list when no scope has one (a framework's own context,
    such as Quart's app context)."""
    if provider not in _providers:
        _providers.append(provider)


def config_flag(config: Mapping[str, Any]) -> bool:
    """Whether ``SQLALCHEMY_RECORD_QUERIES`` in ``config`` turns recording on."""
    value = config.get(CONFIG_KEY)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(
            f"{CONFIG_KEY!r} is {value!r}; expected True or False (or leave it out for False)."
        )
    return value


def install(engine: AsyncEngine) -> None:
    """Record the statements ``engine`` sends (once per engine)."""
    target = engine.sync_engine
    if not sa.event.contains(target, "before_cursor_execute", _started):
        sa.event.listen(target, "before_cursor_execute", _started)
        sa.event.listen(target, "after_cursor_execute", _finished)


def _started(
    conn: sa.Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    if _current() is not None:
        conn.info[_STARTED] = perf_counter()


def _finished(
    conn: sa.Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    end_time = perf_counter()
    start_time = conn.info.pop(_STARTED, None)
    queries = _current()
    if queries is None or start_time is None:
        return
    config = bind_config(conn)
    queries.append(
        QueryInfo(
            statement=statement,
            parameters=context.parameters if context is not None else parameters,
            start_time=start_time,
            end_time=end_time,
            location=_location(),
            bind_key=config.key if config is not None else None,
        )
    )


def _location() -> str:
    """Where the statement was run: the innermost frame outside asyncbind, SQLAlchemy, asyncio
    and the web frameworks, found by walking the stack as Flask-SQLAlchemy does (it looks for the
    app's package instead). Only done when recording is on.

    A statement of an AsyncSession runs in SQLAlchemy's greenlet, whose frames end where the
    greenlet started: the awaiting code is in the frames of the greenlet that switched to it.
    """
    current = greenlet.getcurrent()
    frames = traceback.walk_stack(None)
    while True:
        for frame, line in frames:
            module = frame.f_globals.get("__name__")
            if module and module.partition(".")[0] not in _LIBRARIES:
                where = traceback.StackSummary.extract([(frame, line)], lookup_lines=False)[0]
                return f"{where.filename}:{where.lineno} ({where.name})"
        current = current.parent
        if current is None or current.gr_frame is None:
            return "<unknown>"
        frames = traceback.walk_stack(current.gr_frame)
