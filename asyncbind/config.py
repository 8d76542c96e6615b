"""Bind configuration: parsed and validated eagerly, with no I/O.

A bind is configured by a URL (a string or a :class:`sqlalchemy.URL`) or by a dict of engine
options holding a ``"url"``. ``engine_options`` apply to every bind; a bind's own dict wins.
:func:`config_from_mapping` reads Flask-SQLAlchemy's keys, :func:`config_from_env` environment
variables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa

from .exceptions import ConfigError, format_key
from .urls import normalize_url, render_url

__all__ = [
    "ALL",
    "BIND_OPTIONS",
    "BindConfig",
    "BindKey",
    "BindValue",
    "ParsedConfig",
    "config_from_env",
    "config_from_mapping",
    "parse_config",
]

#: A bind key: ``None`` is the default bind.
BindKey = str | None
#: What a bind may be configured with.
BindValue = str | sa.URL | Mapping[str, Any]

#: The key that means "every configured bind"; it cannot name a bind.
ALL = "__all__"

_NUMBER = (int, float)
# The engine options whose type we can check up front for a clearer error than the driver's.
_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "echo": (bool, str),
    "echo_pool": (bool, str),
    "hide_parameters": (bool,),
    "isolation_level": (str,),
    "logging_name": (str,),
    "max_overflow": (int,),
    "pool_logging_name": (str,),
    "pool_pre_ping": (bool,),
    "pool_recycle": _NUMBER,
    "pool_size": (int,),
    "pool_timeout": _NUMBER,
    "pool_use_lifo": (bool,),
    "query_cache_size": (int,),
    "connect_args": (Mapping,),
    "pool": (sa.Pool,),
    "execution_options": (Mapping,),
    "read_only": (bool,),
    "connect_timeout": _NUMBER,
    "statement_timeout": _NUMBER,
}
#: Options asyncbind handles itself; the rest go to create_async_engine().
BIND_OPTIONS = frozenset({"read_only", "connect_timeout", "statement_timeout"})
_POSITIVE = frozenset({"connect_timeout", "statement_timeout"})
# Options that must be whole numbers, where a bool (an int subclass) is a mistake.
_NOT_BOOL = frozenset(
    {"max_overflow", "pool_recycle", "pool_size", "pool_timeout", "query_cache_size"}
)


@dataclass(frozen=True, slots=True)
class BindConfig:
    """One bind, validated: its key, its async URL and the options for its engine."""

    key: BindKey
    url: sa.URL
    engine_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: Refuse writes, in the session and (where the driver allows) in the connection.
    read_only: bool = False
    #: Seconds to wait for a new connection, handshake included.
    connect_timeout: float | None = None
    #: Seconds a statement, commit or rollback may take before it is abandoned.
    statement_timeout: float | None = None

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.engine_options.items())
        extras = "".join(
            f", {name}={getattr(self, name)!r}"
            for name in sorted(BIND_OPTIONS)
            if getattr(self, name) not in (None, False)
        )
        return (
            f"BindConfig(key={self.key!r}, url={render_url(self.url)!r}{extras}, "
            f"engine_options={{{options}}})"
        )


@dataclass(frozen=True, slots=True)
class ParsedConfig:
    """The arguments of :class:`~asyncbind.AsyncBind` read from somewhere else."""

    url: BindValue | None = None
    binds: Mapping[Any, Any] = field(default_factory=dict)
    engine_options: Mapping[str, Any] = field(default_factory=dict)


def _check_key(key: object) -> BindKey:
    if key is None:
        return None
    if not isinstance(key, str):
        raise ConfigError(
            f"Bind key {key!r} is a {type(key).__name__}; bind keys are strings, "
            "or None for the default bind."
        )
    if key == ALL:
        raise ConfigError(
            f"Bind key {ALL!r} is reserved: it means 'every bind' in create_all(), "
            "drop_all() and reflect(). Rename the bind."
        )
    if not key.strip():
        raise ConfigError(
            f"Bind key {key!r} is blank; name the bind, or use None for the default bind."
        )
    return key


def _check_options(key: BindKey, options: Mapping[Any, Any], what: str) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if not isinstance(name, str):
            raise ConfigError(
                f"Bind {format_key(key)}: {what} has a non-string option name {name!r}; "
                "option names are create_async_engine() keyword arguments."
            )
        expected = _OPTION_TYPES.get(name)
        bad_bool = name in _NOT_BOOL and isinstance(value, bool)
        if expected is not None and (bad_bool or not isinstance(value, expected)):
            wanted = " or ".join(t.__name__ for t in expected)
            raise ConfigError(
                f"Bind {format_key(key)}: option {name!r} in {what} is "
                f"{type(value).__name__} {value!r}; expected {wanted}."
            )
        if name in ("echo", "echo_pool") and isinstance(value, str) and value != "debug":
            raise ConfigError(
                f"Bind {format_key(key)}: option {name!r} in {what} is {value!r}; "
                "expected True, False or 'debug'."
            )
        if name == "poolclass" and not (isinstance(value, type) and issubclass(value, sa.Pool)):
            raise ConfigError(
                f"Bind {format_key(key)}: option 'poolclass' in {what} is {value!r}; "
                "expected a sqlalchemy.pool.Pool subclass such as sqlalchemy.NullPool."
            )
        if name in _POSITIVE and not (0 < value < float("inf")):
            raise ConfigError(
                f"Bind {format_key(key)}: option {name!r} in {what} is {value!r}; "
                "expected a positive number of seconds."
            )
        checked[name] = value
    return checked


def _bind(key: BindKey, value: object, engine_options: Mapping[str, Any]) -> BindConfig:
    if isinstance(value, Mapping):
        if "url" not in value:
            raise ConfigError(
                f"Bind {format_key(key)}: its options dict has no 'url' "
                f"(keys: {', '.join(repr(k) for k in value) or 'none'}). "
                "Add the database URL as {'url': 'postgresql://...', ...}."
            )
        own = _check_options(key, {k: v for k, v in value.items() if k != "url"}, "its options")
        url = normalize_url(value["url"], key)
    elif isinstance(value, str | sa.URL):
        own = {}
        url = normalize_url(value, key)
    else:
        raise ConfigError(
            f"Bind {format_key(key)} is configured with a {type(value).__name__}; expected a URL "
            "string, a sqlalchemy.URL, or a dict of engine options with a 'url'."
        )
    options = {**engine_options, **own}
    extras = {name: options.pop(name) for name in BIND_OPTIONS if name in options}
    return BindConfig(key, url, MappingProxyType(options), **extras)


def parse_config(
    url: object,
    binds: Mapping[Any, Any] | None,
    engine_options: Mapping[Any, Any] | None,
) -> dict[BindKey, BindConfig]:
    """Validate the arguments of :class:`~asyncbind.AsyncBind` into one config per bind.

    Raises :class:`ConfigError` on the first problem, naming the bind it is in.
    """
    if binds is not None and not isinstance(binds, Mapping):
        raise ConfigError(
            f"binds= must be a mapping of bind key to URL, not {type(binds).__name__}. "
            "Example: binds={'users': 'mysql://root@localhost/users'}."
        )
    if engine_options is not None and not isinstance(engine_options, Mapping):
        raise ConfigError(
            f"engine_options= must be a mapping of create_async_engine() options, "
            f"not {type(engine_options).__name__}. Example: engine_options={{'echo': True}}."
        )
    shared = _check_options(None, engine_options or {}, "engine_options")
    if "url" in shared:
        raise ConfigError(
            "engine_options= has a 'url', but engine options are shared by every bind. "
            "Pass the default URL as the first argument and the others in binds=."
        )
    raw: dict[BindKey, object] = {}
    for key, value in (binds or {}).items():
        raw[_check_key(key)] = value
    if url is not None:
        if None in raw:
            raise ConfigError(
                "The default bind is configured twice: by the URL argument and by binds[None]. "
                "Keep one of them."
            )
        raw = {None: url, **raw}
    return {key: _bind(key, value, shared) for key, value in raw.items()}


def _truthy(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} is {value!r}; expected a boolean such as true/false or 1/0.")


def config_from_mapping(mapping: Mapping[str, Any]) -> ParsedConfig:
    """Read Flask-SQLAlchemy's configuration keys from ``mapping`` (``app.config``, a dict).

    ``SQLALCHEMY_DATABASE_URI`` is the default bind, ``SQLALCHEMY_BINDS`` the others,
    ``SQLALCHEMY_ENGINE_OPTIONS`` apply to every bind and ``SQLALCHEMY_ECHO`` sets ``echo``.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(
            f"from_config() takes a mapping such as app.config or a dict, "
            f"not {type(mapping).__name__}."
        )
    options = mapping.get("SQLALCHEMY_ENGINE_OPTIONS") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(
            f"SQLALCHEMY_ENGINE_OPTIONS must be a dict of engine options, "
            f"not {type(options).__name__}."
        )
    options = dict(options)
    if "SQLALCHEMY_ECHO" in mapping:
        options.setdefault("echo", _truthy("SQLALCHEMY_ECHO", mapping["SQLALCHEMY_ECHO"]))
    binds = mapping.get("SQLALCHEMY_BINDS") or {}
    if not isinstance(binds, Mapping):
        raise ConfigError(
            f"SQLALCHEMY_BINDS must be a dict of bind key to URL, not {type(binds).__name__}."
        )
    return ParsedConfig(mapping.get("SQLALCHEMY_DATABASE_URI"), binds, options)


def _json_object(name: str, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise ConfigError(
            f"{name} is not valid JSON; expected a JSON object such as "
            '{"users": "mysql://root@localhost/users"}.'
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must hold a JSON object, not a JSON {type(value).__name__}.")
    return value


def config_from_env(
    environ: Mapping[str, str] | None = None, *, prefix: str = "ASYNCBIND_"
) -> ParsedConfig:
    """Read the configuration from environment variables.

    - ``{prefix}DATABASE_URL``: the default bind's URL.
    - ``{prefix}BIND_<NAME>``: the URL of bind ``<name>`` (the key is ``NAME`` in lower case).
    - ``{prefix}BINDS``: a JSON object like ``SQLALCHEMY_BINDS``.
    - ``{prefix}ENGINE_OPTIONS``: a JSON object of engine options for every bind.
    - ``{prefix}ECHO``: ``1``/``true`` logs every statement.
    """
    env = os.environ if environ is None else environ
    binds: dict[str, Any] = {}
    if f"{prefix}BINDS" in env:
        binds.update(_json_object(f"{prefix}BINDS", env[f"{prefix}BINDS"]))
    marker = f"{prefix}BIND_"
    for name, value in env.items():
        if name.startswith(marker) and len(name) > len(marker):
            key = name[len(marker) :].lower()
            if key in binds:
                raise ConfigError(
                    f"Bind {key!r} is configured twice: in {prefix}BINDS and in {name}. "
                    "Keep one of them."
                )
            binds[key] = value
    options: dict[str, Any] = {}
    if f"{prefix}ENGINE_OPTIONS" in env:
        options.update(_json_object(f"{prefix}ENGINE_OPTIONS", env[f"{prefix}ENGINE_OPTIONS"]))
    if f"{prefix}ECHO" in env:
        options.setdefault("echo", _truthy(f"{prefix}ECHO", env[f"{prefix}ECHO"]))
    return ParsedConfig(env.get(f"{prefix}DATABASE_URL") or None, binds, options)
