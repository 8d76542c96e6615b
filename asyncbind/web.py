"""The web request being handled, as far as the view helpers need it: its query string, and how
its framework answers 404.

The integrations say which request is being handled: the Starlette middleware and the FastAPI
dependency set it for the request's task (:func:`handling`), the Quart integration adds a
provider that looks at Quart's own request context (:func:`add_provider`). This module imports no
framework. Outside every request, :func:`not_found` raises :class:`~asyncbind.NotFoundError`, and
pages default to 1 and 20 items.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NoReturn, Protocol

from .exceptions import NotFoundError

__all__ = [
    "DEFAULT_PAGE",
    "DEFAULT_PER_PAGE",
    "WebRequest",
    "add_provider",
    "current_request",
    "handling",
    "not_found",
    "page_args",
]

DEFAULT_PAGE = 1
DEFAULT_PER_PAGE = 20


class WebRequest(Protocol):
    """What the view helpers need of a framework's request."""

    def query_arg(self, name: str) -> str | None:
        """The first value of ``name`` in the query string, or None."""

    def not_found(self, description: str | None) -> NoReturn:
        """Raise the framework's own 404, with ``description`` for the error page."""


_request: ContextVar[WebRequest | None] = ContextVar("asyncbind_web_request", default=None)
_providers: list[Callable[[], WebRequest | None]] = []


@contextmanager
def handling(request: WebRequest) -> Iterator[None]:
    """Within the block, ``request`` is the one being handled (for this task and the tasks it
    starts)."""
    token = _request.set(request)
    try:
        yield
    finally:
        try:
            _request.reset(token)
        except ValueError:
            pass  # left in another context than it was entered in: that one is not ours


def add_provider(provider: Callable[[], WebRequest | None]) -> None:
    """Ask ``provider`` for the request being handled when no :func:`handling` block is open
    (a framework that keeps its own request context, such as Quart)."""
    if provider not in _providers:
        _providers.append(provider)


def current_request() -> WebRequest | None:
    """The request being handled, or None outside every request."""
    request = _request.get()
    if request is None:
        for provider in _providers:
            request = provider()
            if request is not None:
                break
    return request


def not_found(call: str, missing: str, description: str | None = None) -> NoReturn:
    """Answer 404: the framework's own in a request, :class:`NotFoundError` elsewhere."""
    request = current_request()
    if request is not None:
        request.not_found(description)
    raise NotFoundError(call, missing, description=description)


#: The most rows LIMIT and OFFSET take on every backend: a signed 64-bit integer.
_MOST_ROWS = 2**63 - 1


def _number(value: str | None, name: str, default: int, error_out: bool) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        if error_out:
            not_found("paginate()", f"?{name}={value!r} in the query string, not a whole number")
        return default


def page_args(
    page: int | None, per_page: int | None, max_per_page: int | None, error_out: bool
) -> tuple[int, int]:
    """The page and page size ``paginate()`` uses, worked out as Flask-SQLAlchemy 3.1 does.

    Those not given come from the query string (``?page=2&per_page=10``) in a request, else
    1 and 20. ``per_page`` is at most ``max_per_page``. A value that is not a whole number, is
    below 1, or puts the page's rows past what SQL's LIMIT and OFFSET can count (a 64-bit
    integer: ``?page=99999999999999999999``) is a 404 with ``error_out``; without it, page 1 or
    20 per page.
    """
    request = current_request()
    if request is not None:
        if page is None:
            page = _number(request.query_arg("page"), "page", DEFAULT_PAGE, error_out)
        if per_page is None:
            per_page = _number(
                request.query_arg("per_page"), "per_page", DEFAULT_PER_PAGE, error_out
            )
    page = DEFAULT_PAGE if page is None else page
    per_page = DEFAULT_PER_PAGE if per_page is None else per_page
    if max_per_page is not None:
        per_page = min(per_page, max_per_page)
    if page < 1:
        if error_out:
            not_found("paginate()", f"page {page}, below the first page (1)")
        page = DEFAULT_PAGE
    if per_page < 1 or per_page > _MOST_ROWS:
        if error_out:
            not_found("paginate()", f"{per_page} items per page, not between 1 and {_MOST_ROWS}")
        per_page = DEFAULT_PER_PAGE
    if (page - 1) * per_page > _MOST_ROWS:
        if error_out:
            not_found("paginate()", f"page {page} ({per_page} per page), past any table's rows")
        page = DEFAULT_PAGE
    return page, per_page
