"""Proof that nothing was reported: what a test records while it runs.

:class:`Reports` collects, between ``start()`` and ``stop()``: warnings (ResourceWarning from a
connection dropped unclosed included), exceptions raised where nobody could catch them (in
``__del__``, say), log records at WARNING and above on the root logger, and what asyncio's loop
exception handler is given (``Future exception was never retrieved``, ``Task exception was never
retrieved``, ``Exception in callback``), for every loop handed to :meth:`watch`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any


class _Handler(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
            if os.environ.get("ASYNCBIND_TRACEBACKS"):
                text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        self.into.append(text)


@dataclass
class Reports:
    warnings: list[str] = field(default_factory=list)
    unraisable: list[str] = field(default_factory=list)
    logged: list[str] = field(default_factory=list)
    loop_errors: list[str] = field(default_factory=list)
    _catcher: Any = None
    _handler: logging.Handler | None = None
    _hook: Any = None

    def start(self) -> Reports:
        self._catcher = warnings.catch_warnings(record=True)
        caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        self._caught = caught
        self._hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        self._handler = _Handler(self.logged)
        logging.getLogger().addHandler(self._handler)
        return self

    def stop(self) -> None:
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler = None
        if self._hook is not None:
            sys.unraisablehook = self._hook
            self._hook = None
        if self._catcher is not None:
            self.warnings += [f"{w.category.__name__}: {w.message}" for w in self._caught]
            self._catcher.__exit__(None, None, None)
            self._catcher = None

    def watch(self, loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
        """Record what ``loop``'s exception handler is given instead of logging it."""
        loop.set_exception_handler(self._loop_error)
        return loop

    def _unraisable(self, unraisable: Any) -> None:
        self.unraisable.append(
            f"{type(unraisable.exc_value).__name__}: {unraisable.exc_value} "
            f"({unraisable.err_msg or 'in'} {unraisable.object!r})"
        )

    def _loop_error(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        detail = f" [{type(exc).__name__}: {exc}]" if exc is not None else ""
        self.loop_errors.append(f"{context.get('message')}{detail}")

    def all(self) -> dict[str, list[str]]:
        """Everything recorded, by kind; each list is empty when nothing was reported."""
        return {
            "warnings": self.warnings,
            "unraisable": self.unraisable,
            "logged": self.logged,
            "loop_errors": self.loop_errors,
        }
