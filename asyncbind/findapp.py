"""Find the AsyncBind that ``--app`` (or ``ASYNCBIND_APP``) names, as ``flask --app`` finds an app.

``module:attribute`` names an AsyncBind, a Quart app that called ``db.init_app(app)``, a
Starlette or FastAPI app with ``AsyncBindMiddleware``, or a factory written
``module:create_app()`` (called with no arguments); ``module`` alone tries ``db``, ``app`` and
``application``. With neither, the environment configures the binds (:meth:`AsyncBind.from_env`).
Every way of not finding one is a :class:`UsageError` that says what was tried and how to fix it.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from .core import AsyncBind
from .exceptions import BindErrors, ConfigError, first_line

__all__ = ["APP_ENV", "DEFAULT_ATTRIBUTES", "WHAT_APP_NAMES", "UsageError", "find_db", "one_line"]

#: The environment variable that stands for ``--app``.
APP_ENV = "ASYNCBIND_APP"
#: What ``--app`` may name, for messages and help.
WHAT_APP_NAMES = (
    "an AsyncBind, a Quart app that called 'db.init_app(app)', a Starlette or FastAPI app with "
    "'AsyncBindMiddleware', or a factory written 'module:create_app()'"
)
#: What ``--app module`` (no attribute) looks for, in this order.
DEFAULT_ATTRIBUTES = ("db", "app", "application")
# The key of app.extensions that db.init_app(app) sets (asyncbind.integrations.quart.EXTENSION_KEY;
# not imported from there, which would import Quart).
_EXTENSION_KEY = "asyncbind"


class UsageError(Exception):
    """The command cannot run as written (the command line's exit status 2)."""


def find_db(spec: str | None, **env_options: Any) -> AsyncBind:
    """The AsyncBind that ``spec`` (``--app``), else ``ASYNCBIND_APP``, else the environment's
    ``ASYNCBIND_*`` variables configure (with ``env_options``, AsyncBind's arguments, such as
    ``twophase_name``); :class:`UsageError` when there is none."""
    spec = spec or os.environ.get(APP_ENV) or None
    if spec is None:
        return _from_env(env_options)
    if env_options:
        given = ", ".join(f"--{name.replace('_', '-')}" for name in env_options)
        raise UsageError(
            f"{given} configures an AsyncBind made from the ASYNCBIND_* environment variables, "
            f"but the app '{spec}' is given (--app / {APP_ENV}): it has its own. Leave out "
            f"{given}, or set it in the app's AsyncBind(...)."
        )
    module_name, _, attribute = spec.partition(":")
    if not module_name:
        raise UsageError(f"--app {spec!r} names no module; write 'module:attribute' or 'module'.")
    module = _import(module_name)
    if attribute:
        db = _db_of(_attribute(module, attribute, spec))
        if db is None:
            raise UsageError(
                f"'{spec}' holds no AsyncBind. Name {WHAT_APP_NAMES} in --app / {APP_ENV}."
            )
    else:
        db, tried = None, []
        for name in DEFAULT_ATTRIBUTES:
            found = getattr(module, name, None)
            db = _db_of(found)
            if db is not None:
                spec = f"{module_name}:{name}"
                break
            tried.append(f"'{name}' ({'missing' if found is None else 'no AsyncBind in it'})")
        if db is None:
            raise UsageError(
                f"Module {module_name!r} has no AsyncBind where asyncbind looks "
                f"(tried {', '.join(tried)}). Write --app {module_name}:NAME, where NAME is "
                f"{WHAT_APP_NAMES}."
            )
    if not db.engines:
        raise UsageError(
            f"The AsyncBind of '{spec}' has no database configured. Configure it when the module "
            "is imported (AsyncBind(url, binds=...), or db.init_app(app) with the app's config)."
        )
    return db


def _from_env(options: dict[str, Any]) -> AsyncBind:
    try:
        db = AsyncBind.from_env(**options)
    except ConfigError as exc:
        raise UsageError(f"The ASYNCBIND_* environment variables are invalid: {exc}") from exc
    if not db.engines:
        raise UsageError(
            f"No database to work on: --app is not given, {APP_ENV} is not set, and neither are "
            "ASYNCBIND_DATABASE_URL, ASYNCBIND_BIND_<NAME> or ASYNCBIND_BINDS. Pass --app "
            "module:attribute (from the folder that holds the module) or set "
            "ASYNCBIND_DATABASE_URL."
        )
    return db


def _import(name: str) -> ModuleType:
    """Import ``name`` with the current directory on ``sys.path``, as ``flask --app`` does."""
    folder = os.getcwd()
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise UsageError(
                f"Could not import module {name!r}: it is neither in {folder!r} nor on the Python "
                f"path. Run asyncbind from the folder that holds it, or fix --app / {APP_ENV}."
            ) from exc
        raise UsageError(
            _failed(
                f"Importing module {name!r}",
                exc,
                "Install what it needs, or fix the module (--traceback shows where).",
            )
        ) from exc
    except Exception as exc:  # the module's own code failed: still a problem with --app
        raise UsageError(
            _failed(f"Importing module {name!r}", exc, "Fix the module (--traceback shows where).")
        ) from exc


def _attribute(module: ModuleType, attribute: str, spec: str) -> object:
    """``module``'s ``attribute`` (dotted), called with no arguments if written ``name()``."""
    call = attribute.endswith("()")
    path = attribute[:-2] if call else attribute
    if not all(part.isidentifier() for part in path.split(".")):
        raise UsageError(
            f"--app {spec!r}: {attribute!r} is not an attribute name. Write 'module:db', or "
            "'module:create_app()' for a factory (called with no arguments)."
        )
    found: object = module
    for part in path.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise UsageError(
                f"Module {module.__name__!r} has no attribute {path!r} (--app {spec!r}). "
                f"Name {WHAT_APP_NAMES}."
            ) from None
    if not call:
        return found
    if not callable(found):
        kind = type(found).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise UsageError(f"--app {spec!r}: {path!r} is {article} {kind}, not a factory.")
    try:
        return found()
    except Exception as exc:
        raise UsageError(
            _failed(
                f"--app {spec!r}: calling {path}()",
                exc,
                "Fix the factory (--traceback shows where).",
            )
        ) from exc


def _db_of(found: object) -> AsyncBind | None:
    """The AsyncBind ``found`` is or holds (Quart extension, Starlette middleware), or None."""
    if isinstance(found, AsyncBind):
        return found
    extensions = getattr(found, "extensions", None)
    if isinstance(extensions, Mapping):
        registered = extensions.get(_EXTENSION_KEY)
        if isinstance(registered, AsyncBind):
            return registered
    for entry in getattr(found, "user_middleware", None) or ():
        try:
            _, args, kwargs = entry  # starlette.middleware.Middleware: (cls, args, kwargs)
        except (TypeError, ValueError):
            continue
        db = kwargs.get("db", args[0] if args else None)
        if isinstance(db, AsyncBind):
            return db
    return None


def _failed(what: str, exc: BaseException, fix: str) -> str:
    """``what`` failed, why (``exc``) and ``fix``, in one line; but a configuration with several
    problems is shown whole, each problem on its own line and ``fix`` on the last. (asyncbind
    writes a ConfigError's message itself, URLs masked; a driver's error stays one line.)"""
    if isinstance(exc, ConfigError) and "\n" in str(exc).strip():
        return f"{what} failed: {type(exc).__name__}: {str(exc).strip()}\n{fix}"
    return f"{what} failed: {_sentence(one_line(exc))} {fix}"


def _sentence(text: str) -> str:
    """``text`` ending with one full stop, to be followed by another sentence."""
    return text if text.endswith((".", "!", "?")) else f"{text}."


def one_line(exc: BaseException) -> str:
    """``exc``'s type and the first line of its message (SQLAlchemy adds SQL and a link)."""
    if isinstance(exc, BindErrors) and len(exc.errors) == 1:
        exc = next(iter(exc.errors.values()))
    return first_line(exc)
