"""Bind configuration: parsed and validated eagerly, with no I/O.

A bind is configured by a URL (a string or a :class:`sqlalchemy.URL`) or by a dict of engine
options holding a ``"url"``. ``engine_options`` apply to every bind; a bind's own dict wins. An
option set to None means SQLAlchemy's default where SQLAlchemy's default is None. Every bind is
checked, and one :class:`ConfigError` names every problem found.
:func:`config_from_mapping` reads Flask-SQLAlchemy's keys, :func:`config_from_env` environment
variables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa

from .exceptions import ConfigError, bind_name
from .urls import (
    hide_option_passwords,
    normalize_url,
    option_passwords,
    render_url,
    sqlite_file_under,
    url_passwords,
)

__all__ = [
    "ALL",
    "BIND_OPTIONS",
    "BindConfig",
    "BindKey",
    "BindValue",
    "ParsedConfig",
    "check_config",
    "check_engine_options",
    "config_error",
    "config_from_env",
    "config_from_mapping",
    "parse_config",
    "place_sqlite_files",
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
    "replicas": (list, tuple),
    "replica_choice": (str,),
    "replica_fallback": (bool,),
    "replica_max_lag": _NUMBER,
    "replica_check_interval": _NUMBER,
    "pgbouncer": (bool,),
}
#: Options asyncbind handles itself; the rest go to create_async_engine().
BIND_OPTIONS = frozenset(
    {
        "read_only",
        "connect_timeout",
        "statement_timeout",
        "replicas",
        "replica_choice",
        "replica_fallback",
        "replica_max_lag",
        "replica_check_interval",
        "pgbouncer",
    }
)
#: Options that belong to one bind, never to the engine_options shared by every bind.
_OWN_OPTIONS = frozenset({"replicas"})
#: How a read picks among the replicas of a bind.
REPLICA_CHOICES = ("round_robin", "random")
# Options whose default is None: None is accepted and means the default (SQLAlchemy's, or the
# dialect default asyncbind sets, such as the in-memory SQLite pool).
_NONE_IS_DEFAULT = frozenset(
    {
        "echo",
        "echo_pool",
        "execution_options",
        "isolation_level",
        "logging_name",
        "pool",
        "pool_logging_name",
        "poolclass",
        "connect_timeout",
        "statement_timeout",
        "replica_max_lag",
    }
)
_POSITIVE = frozenset(
    {"connect_timeout", "statement_timeout", "replica_max_lag", "replica_check_interval"}
)
# Options that must be numbers, where a bool (an int subclass: True is 1) is a mistake.
_NOT_BOOL = frozenset(
    {
        "max_overflow",
        "pool_recycle",
        "pool_size",
        "pool_timeout",
        "query_cache_size",
        *_POSITIVE,
    }
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
    #: The URLs of the bind's read replicas; reads go to them (see :mod:`asyncbind.replicas`).
    replicas: tuple[sa.URL, ...] = ()
    #: How a read picks a replica: ``"round_robin"`` or ``"random"``.
    replica_choice: str = "round_robin"
    #: Whether reads go to the primary when no replica is usable (else ``NoReplicaError``).
    replica_fallback: bool = True
    #: Seconds of replay lag past which a replica is skipped; None: lag is not checked.
    replica_max_lag: float | None = None
    #: Seconds before a replica that failed (or lagged) is tried again, and between lag checks.
    replica_check_interval: float = 5.0
    #: Running behind PgBouncer in transaction pooling mode: no named prepared statements kept.
    pgbouncer: bool = False
    #: The names of the ``engine_options`` that came from the options shared by every bind, not
    #: from the bind's own dict.
    shared_options: frozenset[str] = frozenset()
    #: For a read replica's engine, its number among the bind's replicas (1, 2, ...); 0 for the
    #: bind's own engine.
    replica: int = 0
    #: For the engine of a tenant of a tenant group, the tenant (named by its errors); else None.
    tenant: str | None = None

    @property
    def passwords(self) -> list[str]:
        """Every password this bind is given: in its URL (``user:password@``, ``?password=``),
        its replicas' URLs and its ``connect_args``; for masking text that may repeat them."""
        found = [p for url in (self.url, *self.replicas) for p in url_passwords(url)]
        return found + option_passwords(self.engine_options)

    def __repr__(self) -> str:
        shown = hide_option_passwords(self.engine_options)
        options = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        extras = "".join(
            f", {name}={_shown(getattr(self, name))!r}"
            for name in sorted(BIND_OPTIONS)
            if getattr(self, name) != _DEFAULTS[name]
        )
        return (
            f"BindConfig(key={self.key!r}, url={render_url(self.url)!r}{extras}, "
            f"engine_options={{{options}}})"
        )


_DEFAULTS = {name: BindConfig.__dataclass_fields__[name].default for name in BIND_OPTIONS}


def _shown(value: object) -> object:
    """A bind option as its repr shows it: replica URLs rendered with their passwords hidden."""
    if isinstance(value, tuple):
        return [render_url(url) for url in value]
    return value


@dataclass(frozen=True, slots=True)
class ParsedConfig:
    """The arguments of :class:`~asyncbind.AsyncBind` read from somewhere else."""

    url: BindValue | None = None
    binds: Mapping[Any, Any] = field(default_factory=dict)
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    #: ``SQLALCHEMY_ECHO`` / ``ASYNCBIND_ECHO``: ``echo`` and ``echo_pool`` where nothing else
    #: sets them.
    echo: bool | str | None = None

    def engine_options_over(self, defaults: object) -> dict[str, Any]:
        """The engine options for every bind, merged as Flask-SQLAlchemy merges them.

        ``defaults`` (the AsyncBind's own ``engine_options``) come first and the configuration's
        options override them; the echo setting then fills ``echo`` and ``echo_pool``, each only
        where neither set it.
        """
        options = {**_mapping(defaults, "engine_options"), **self.engine_options}
        if self.echo is not None:
            options.setdefault("echo", self.echo)
            options.setdefault("echo_pool", self.echo)
        return options

    @property
    def has_database(self) -> bool:
        """Whether a default URL or any bind is configured."""
        return self.url is not None or bool(self.binds)


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


def _say(subject: str | None, text: str) -> str:
    """``text`` about ``subject`` (a bind), or on its own when the problem is in no one bind."""
    return f"{subject}: {text}" if subject else text[0].upper() + text[1:]


def _check_options(subject: str | None, options: Mapping[Any, Any], what: str) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if not isinstance(name, str):
            raise ConfigError(
                _say(
                    subject,
                    f"option name {name!r} in {what} is not a string; "
                    "option names are create_async_engine() keyword arguments.",
                )
            )
        checked[name] = value
        if value is None and name in _NONE_IS_DEFAULT:
            continue
        expected = _OPTION_TYPES.get(name)
        bad_bool = name in _NOT_BOOL and isinstance(value, bool)
        if expected is not None and (bad_bool or not isinstance(value, expected)):
            wanted = " or ".join(t.__name__ for t in expected)
            if name in _NONE_IS_DEFAULT:
                wanted += " or None"
            # connect_args may hold a password: its value is never shown.
            shown = "" if name == "connect_args" else f" {value!r}"
            problem = f"is {type(value).__name__}{shown}; expected {wanted}."
        elif name in ("echo", "echo_pool") and isinstance(value, str) and value != "debug":
            problem = f"is {value!r}; expected True, False, 'debug' or None."
        elif name == "poolclass" and not (isinstance(value, type) and issubclass(value, sa.Pool)):
            problem = (
                f"is {value!r}; expected a sqlalchemy.pool.Pool subclass such as "
                "sqlalchemy.NullPool, or None."
            )
        elif name in _POSITIVE and not (0 < value < float("inf")):
            problem = f"is {value!r}; expected a positive number of seconds, or None."
        else:
            continue
        raise ConfigError(_say(subject, f"option {name!r} in {what} {problem}"))
    return checked


def _bind(key: BindKey, value: object, engine_options: Mapping[str, Any]) -> BindConfig:
    subject = bind_name(key, start=True)
    if isinstance(value, Mapping):
        if "url" not in value:
            raise ConfigError(
                f"{subject}: its options dict has no 'url' "
                f"(keys: {', '.join(repr(k) for k in value) or 'none'}). "
                "Add the database URL as {'url': 'postgresql://...', ...}."
            )
        own = _check_options(subject, {k: v for k, v in value.items() if k != "url"}, "its options")
        url = normalize_url(value["url"], key)
    elif isinstance(value, str | sa.URL):
        own = {}
        url = normalize_url(value, key)
    else:
        raise ConfigError(
            f"{subject} is configured with a {type(value).__name__}; expected a URL "
            "string, a sqlalchemy.URL, or a dict of engine options with a 'url'."
        )
    # A bind's own None overrides a shared value, then means the default.
    options = {
        name: value
        for name, value in {**engine_options, **own}.items()
        if not (value is None and name in _NONE_IS_DEFAULT)
    }
    extras = {name: options.pop(name) for name in BIND_OPTIONS if name in options}
    shared = frozenset(name for name in options if name not in own)
    if "replicas" in extras:
        extras["replicas"] = _replica_urls(key, extras["replicas"], url)
    choice = extras.get("replica_choice")
    if choice is not None and choice not in REPLICA_CHOICES:
        raise ConfigError(
            f"{subject}: option 'replica_choice' is {choice!r}; expected "
            f"{' or '.join(repr(c) for c in REPLICA_CHOICES)}."
        )
    return BindConfig(key, url, MappingProxyType(options), **extras, shared_options=shared)


def _replica_urls(key: BindKey, given: Sequence[Any], primary: sa.URL) -> tuple[sa.URL, ...]:
    """The replica URLs of bind ``key``, each normalised like the primary's and of its backend."""
    subject = bind_name(key, start=True)
    urls = []
    for number, value in enumerate(given, 1):
        if not isinstance(value, str | sa.URL):
            raise ConfigError(
                f"{subject}: replica {number} is a {type(value).__name__}; expected a URL "
                "string or a sqlalchemy.URL. Replicas share the bind's engine options."
            )
        url = normalize_url(value, key)
        if url.get_backend_name() != primary.get_backend_name():
            raise ConfigError(
                f"{subject}: replica {number} is a {url.get_backend_name()!r} database but the "
                f"primary is {primary.get_backend_name()!r}; a replica is a copy of its primary. "
                "Give a URL of the same kind of database."
            )
        urls.append(url)
    return tuple(urls)


def _mapping(value: object, argument: str) -> Mapping[Any, Any]:
    """``value`` if it is a mapping (None is an empty one); else a ConfigError about
    ``argument``, ``binds`` or ``engine_options``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        if argument == "binds":
            what, example = "bind key to URL", "binds={'users': 'mysql://root@localhost/users'}"
        else:
            what, example = "create_async_engine() options", "engine_options={'echo': True}"
        raise ConfigError(
            f"{argument}= must be a mapping of {what}, not {type(value).__name__}. "
            f"Example: {example}."
        )
    return value


def check_engine_options(engine_options: object) -> dict[str, Any]:
    """Validate ``engine_options=``, the options shared by every bind."""
    shared = _check_options(None, _mapping(engine_options, "engine_options"), "engine_options")
    if "url" in shared:
        raise ConfigError(
            "engine_options= has a 'url', but engine options are shared by every bind. "
            "Pass the default bind's URL as url= (the first argument) and the other binds' "
            "in binds=."
        )
    for name in _OWN_OPTIONS & shared.keys():
        raise ConfigError(
            f"engine_options= has {name!r}, which belongs to one bind: engine options are shared "
            f"by every bind. Give it in that bind's dict: {{'url': ..., {name!r}: [...]}}."
        )
    return shared


def check_config(
    url: object, binds: object, engine_options: object
) -> tuple[dict[BindKey, BindConfig], list[ConfigError]]:
    """Validate the arguments of :class:`~asyncbind.AsyncBind`, every bind of them.

    Returns the config of each bind that is right, and a :class:`ConfigError` for each problem
    (one per bind at most, naming it), so that all of them can be reported at once.
    """
    problems: list[ConfigError] = []
    shared: dict[str, Any] = {}
    try:
        shared = check_engine_options(engine_options)
    except ConfigError as exc:
        problems.append(exc)
    try:
        given = _mapping(binds, "binds")
    except ConfigError as exc:
        problems.append(exc)
        given = {}
    raw: dict[BindKey, object] = {}
    for key, value in given.items():
        try:
            raw[_check_key(key)] = value
        except ConfigError as exc:
            problems.append(exc)
    if url is not None:
        if None in raw:
            problems.append(
                ConfigError(
                    "The default bind is configured twice: by the url argument and by "
                    "binds[None]. Give it once, as url=... or as binds={None: ...}."
                )
            )
        else:
            raw = {None: url, **raw}
    configs: dict[BindKey, BindConfig] = {}
    for key, value in raw.items():
        try:
            configs[key] = _bind(key, value, shared)
        except ConfigError as exc:
            problems.append(exc)
    return configs, problems


def config_error(problems: Sequence[ConfigError]) -> ConfigError:
    """One error for ``problems``: the problem itself when there is one, else an error that
    lists them, one line each."""
    if len(problems) == 1:
        return problems[0]
    lines = "\n".join(f"- {problem}" for problem in problems)
    return ConfigError(
        f"The configuration has {len(problems)} problems; no bind was set up. "
        f"Fix each of them:\n{lines}"
    )


def parse_config(
    url: object,
    binds: Mapping[Any, Any] | None,
    engine_options: Mapping[Any, Any] | None,
) -> dict[BindKey, BindConfig]:
    """Validate the arguments of :class:`~asyncbind.AsyncBind` into one config per bind.

    Raises one :class:`ConfigError` naming every bind that is wrong (see :func:`check_config`).
    """
    configs, problems = check_config(url, binds, engine_options)
    if problems:
        raise config_error(problems)
    return configs


def _truthy(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} is {value!r}; expected a boolean such as true/false or 1/0.")


def _echo(name: str, value: object) -> bool | str:
    """An echo setting: a boolean, or ``"debug"`` (which also logs result rows)."""
    if isinstance(value, str) and value.strip().lower() == "debug":
        return "debug"
    try:
        return _truthy(name, value)
    except ConfigError:
        raise ConfigError(
            f"{name} is {value!r}; expected a boolean such as true/false or 1/0, or 'debug'."
        ) from None


def config_from_mapping(mapping: Mapping[str, Any]) -> ParsedConfig:
    """Read Flask-SQLAlchemy's configuration keys from ``mapping`` (``app.config``, a dict).

    ``SQLALCHEMY_DATABASE_URI`` is the default bind, ``SQLALCHEMY_BINDS`` the others,
    ``SQLALCHEMY_ENGINE_OPTIONS`` apply to every bind and ``SQLALCHEMY_ECHO`` sets ``echo`` and
    ``echo_pool`` where they do not (see :meth:`ParsedConfig.engine_options_over`). As in
    Flask-SQLAlchemy, the default bind's URL may also be a ``"url"`` in
    ``SQLALCHEMY_ENGINE_OPTIONS`` (``SQLALCHEMY_DATABASE_URI`` wins), and either one takes the
    place of the URL of ``SQLALCHEMY_BINDS[None]``, whose other options stay.
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
    echo = None
    if mapping.get("SQLALCHEMY_ECHO") is not None:
        echo = _echo("SQLALCHEMY_ECHO", mapping["SQLALCHEMY_ECHO"])
    binds = mapping.get("SQLALCHEMY_BINDS") or {}
    if not isinstance(binds, Mapping):
        raise ConfigError(
            f"SQLALCHEMY_BINDS must be a dict of bind key to URL, not {type(binds).__name__}."
        )
    options, binds = dict(options), dict(binds)
    # The default bind's URL, as Flask-SQLAlchemy takes it: SQLALCHEMY_DATABASE_URI, else a
    # "url" in SQLALCHEMY_ENGINE_OPTIONS (which cannot stay there: they reach every bind), each
    # over the URL of SQLALCHEMY_BINDS[None], whose other options stay.
    url = options.pop("url", None)
    if mapping.get("SQLALCHEMY_DATABASE_URI") is not None:
        url = mapping["SQLALCHEMY_DATABASE_URI"]
    if url is not None and None in binds:
        default = binds.pop(None)
        if isinstance(default, Mapping):
            url = {**default, "url": url}
    return ParsedConfig(url, binds, options, echo)


def _json_object(name: str, text: str, example: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise ConfigError(
            f"{name} is not valid JSON; expected a JSON object such as {example}."
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
    - ``{prefix}ECHO``: ``1``/``true`` logs every statement (``echo`` and ``echo_pool``, where
      the engine options do not set them).
    - ``{prefix}DATABASE_REPLICAS`` and ``{prefix}REPLICAS_<NAME>``: the URLs of the read replicas
      of the default bind and of bind ``<name>``, separated by commas or spaces.
    """
    env = os.environ if environ is None else environ
    binds: dict[str, Any] = {}
    if f"{prefix}BINDS" in env:
        example = '{"users": "mysql://root@localhost/users"}'
        binds.update(_json_object(f"{prefix}BINDS", env[f"{prefix}BINDS"], example))
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
    url: BindValue | None = env.get(f"{prefix}DATABASE_URL") or None
    replicas_of = f"{prefix}REPLICAS_"
    for name, value in env.items():
        if name.startswith(replicas_of) and len(name) > len(replicas_of):
            key = name[len(replicas_of) :].lower()
            binds[key] = _with_replicas(name, binds.get(key), value)
    if f"{prefix}DATABASE_REPLICAS" in env:
        url = _with_replicas(f"{prefix}DATABASE_REPLICAS", url, env[f"{prefix}DATABASE_REPLICAS"])
    options: dict[str, Any] = {}
    if f"{prefix}ENGINE_OPTIONS" in env:
        example = '{"pool_size": 10, "pool_pre_ping": true}'
        options.update(
            _json_object(f"{prefix}ENGINE_OPTIONS", env[f"{prefix}ENGINE_OPTIONS"], example)
        )
    echo = _echo(f"{prefix}ECHO", env[f"{prefix}ECHO"]) if f"{prefix}ECHO" in env else None
    return ParsedConfig(url, binds, options, echo)


def _with_replicas(name: str, bind: Any, text: str) -> dict[str, Any]:
    """``bind`` (a URL, or a dict from a JSON object) with the replicas listed in ``text``, the
    value of environment variable ``name``: URLs separated by commas or spaces."""
    if bind is None:
        raise ConfigError(
            f"{name} lists replicas of a bind that is not configured. Set its URL too "
            "(the DATABASE_URL or BIND_<NAME> variable of the same prefix)."
        )
    if isinstance(bind, Mapping):
        if "replicas" in bind:
            raise ConfigError(
                f"{name} lists replicas of a bind whose JSON config has 'replicas' already. "
                "Keep one of them."
            )
        return {**bind, "replicas": text.replace(",", " ").split()}
    return {"url": bind, "replicas": text.replace(",", " ").split()}


def _placed(value: Any, folder: str) -> Any:
    """A bind's value with its relative SQLite file path under ``folder``; else ``value``."""
    if isinstance(value, Mapping) and "url" in value:
        url = _placed(value["url"], folder)
        return value if url is value["url"] else {**value, "url": url}
    if isinstance(value, str):
        try:
            parsed = sa.make_url(value)
        except Exception:  # reported, without the text, when the bind is parsed
            return value
        placed = sqlite_file_under(parsed, folder)
        return value if placed is parsed else placed
    if isinstance(value, sa.URL):
        return sqlite_file_under(value, folder)
    return value


def place_sqlite_files(parsed: ParsedConfig, folder: str) -> ParsedConfig:
    """``parsed`` with every relative SQLite file path made relative to ``folder`` (an app's
    instance folder) instead of the working directory, as Flask-SQLAlchemy does.

    In-memory databases and absolute paths stay as they are. Returns ``parsed`` itself when no
    path moved.
    """
    url = _placed(parsed.url, folder)
    binds = {key: _placed(value, folder) for key, value in parsed.binds.items()}
    if url is parsed.url and all(binds[k] is v for k, v in parsed.binds.items()):
        return parsed
    return ParsedConfig(url, binds, parsed.engine_options, parsed.echo)
