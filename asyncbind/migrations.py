"""Schema migrations per bind with Alembic: ``asyncbind db ...`` and the env.py it writes.

One script directory serves every bind. Each revision has an ``upgrade_<bind>()`` and a
``downgrade_<bind>()`` per bind (``default`` for the default bind), as in Alembic's multidb
template. env.py calls :func:`run_migrations`, which runs one migration context per bind on that
bind's async engine (``connection.run_sync``), with that bind's MetaData as the target of
autogenerate and the version table ``alembic_version`` in that bind's own database. Binds run one
after another, each in its own transaction and holding its database's migration lock (PostgreSQL,
MySQL/MariaDB), so that two processes migrating one database take turns; one failing does not
stop the others, and the error names it. Needs the ``alembic`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import shlex
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

import sqlalchemy as sa
from alembic import context
from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.autogenerate.render import render_op
from alembic.config import Config
from alembic.operations import ops
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import MultipleHeads, RevisionError
from alembic.util import CommandError as AlembicCommandError
from mako.template import Template  # type: ignore[import-untyped]
from sqlalchemy.ext.asyncio import AsyncConnection

from .config import BindKey
from .core import AsyncBind
from .exceptions import (
    AsyncBindError,
    BindUnavailableError,
    UnknownBindError,
    bind_name,
    format_keys,
)
from .findapp import UsageError, find_db, one_line
from .registry import bind_config
from .schema import check_bind_keys
from .twophase import TABLE_NAME as TWOPHASE_TABLE

__all__ = [
    "DEFAULT_NAME",
    "MigrationError",
    "config_for",
    "current",
    "init",
    "run_migrations",
    "script_name",
    "script_names",
    "select_binds",
]

#: How revision scripts and ``-x bind=`` name the default bind.
DEFAULT_NAME = "default"
#: The version table, one in each bind's database.
VERSION_TABLE = "alembic_version"
_TEMPLATE = Path(__file__).resolve().parent / "templates" / "asyncbind"
# What the asyncbind command hands to env.py through Config.attributes.
_DB, _KEYS, _AUTOGENERATE = "asyncbind_db", "asyncbind_binds", "asyncbind_autogenerate"
# What a command does to each bind, as its migration context tells (see _command()).
_Doing = Literal["compare", "stamp", "migrate"]

logger = logging.getLogger(__name__)


class _UnknownVersionError(AsyncBindError):
    """A bind's version table names revisions that no script has: nothing can run from there."""

    def __init__(self, revisions: Sequence[str]) -> None:
        super().__init__(
            f"its version table names {_revision_names(revisions)}, which no revision script has"
        )
        self.revisions = list(revisions)


def _revision_names(revisions: Sequence[str]) -> str:
    one = len(revisions) == 1
    return f"revision{'' if one else 's'} {', '.join(repr(rev) for rev in revisions)}"


class MigrationError(AsyncBindError):
    """The migration of one or more binds failed; ``errors`` holds each bind's exception."""

    def __init__(self, message: str, errors: dict[BindKey, BaseException]) -> None:
        super().__init__(message)
        self.errors = errors


# -- names ------------------------------------------------------------------------------------


def script_name(key: BindKey) -> str:
    """The name of bind ``key`` in revision scripts: ``default`` for the default bind."""
    if not _nameable(key):
        raise UsageError(
            f"Bind key {key!r} cannot name functions of a revision script (upgrade_<bind>); "
            f"migrations need bind keys that are Python identifiers other than "
            f"{DEFAULT_NAME!r}. Rename the bind, or name the binds to migrate with --bind "
            "(-x bind= for plain alembic)."
        )
    return DEFAULT_NAME if key is None else key


def _nameable(key: BindKey) -> bool:
    return key is None or (key.isidentifier() and key != DEFAULT_NAME)


def script_names(config: Config) -> list[str]:
    """The script names of the binds that revisions hold functions for: every bind of the
    AsyncBind that ``config`` names, but the read-only ones and those whose key cannot name a
    function (which cannot be migrated)."""
    db = _db(config)
    return [script_name(key) for key in db.engines if _migrated(db, key) and _nameable(key)]


def select_binds(db: AsyncBind, named: Sequence[BindKey] | None) -> list[BindKey]:
    """The binds a migration command runs on: those ``named`` (``--bind``, ``-x bind=``), else
    every bind but the read-only ones. Each needs a key that can name functions of a revision;
    a read-only bind that is named is refused."""
    if named is None:
        keys = [key for key in db.engines if _migrated(db, key)]
    else:
        keys = list(dict.fromkeys(named))
        read_only = [key for key in keys if not _migrated(db, key)]
        if read_only:
            one = len(read_only) == 1
            raise UsageError(
                f"{_names(read_only, start=True)} {'is' if one else 'are'} read-only "
                "(read_only=True), and migrations do not change read-only binds. Leave "
                f"{'it' if one else 'them'} out of --bind (-x bind=), or configure "
                f"{'it' if one else 'them'} with read_only=False if this app owns the schema."
            )
    for key in keys:
        script_name(key)
    return keys


def _migrated(db: AsyncBind, key: BindKey) -> bool:
    """Whether migrations run on bind ``key`` unless it is named: not on a read-only bind."""
    return not db.bind_configs[key].read_only


def _db(config: Config) -> AsyncBind:
    db = config.attributes.get(_DB)
    if not isinstance(db, AsyncBind):
        db = find_db(config.get_main_option("asyncbind_app") or None)
        config.attributes[_DB] = db
    return db


def _selected(config: Config, db: AsyncBind) -> tuple[list[BindKey], bool]:
    """The binds to migrate: the asyncbind command's ``--bind``, else ``-x bind=KEY``, else every
    bind but the read-only ones (logged as skipped); and whether none was named."""
    named: list[BindKey] | None = config.attributes.get(_KEYS)
    if named is None:
        names = [x.partition("=")[2] for x in context.get_x_argument() if x.startswith("bind=")]
        by_name: dict[str, BindKey] = {key: key for key in db.engines if key is not None}
        by_name.update({DEFAULT_NAME: None, "": None})
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise UsageError(
                f"-x bind= names {format_keys(unknown)}, which are not binds (binds: "
                f"{format_keys([name for name in by_name if name])})."
            )
        named = [by_name[name] for name in names] or None
    keys = select_binds(db, named)
    if named is None:
        for key in db.engines:
            if not _migrated(db, key):
                logger.info("Skipping %s: it is read-only", bind_name(key))
    return keys, named is None


# -- env.py -----------------------------------------------------------------------------------


def run_migrations(config: Config, **options: Any) -> None:
    """What env.py does: migrate each selected bind in its own migration context.

    ``options`` go to each bind's ``context.configure()`` with asyncbind's own (Flask-Migrate's
    ``include_object=``, ``compare_server_default=``, ``user_module_prefix=``, ...): see
    :func:`_with_options`. Those that asyncbind sets for each bind itself (its connection,
    MetaData, version table, function names) are refused."""
    _check_options(options)
    db = _db(config)
    keys, every = _selected(config, db)
    if context.is_offline_mode():
        for key in keys:
            _offline(config, db, key, options)
    else:
        ini = config.config_file_name or "alembic.ini"
        asyncio.run(_online(db, keys, every, _autogenerating(config), ini, options))


# The options of each bind's migration context that asyncbind alone sets.
_OWN_OPTIONS = (
    "connection",
    "dialect_name",
    "output_buffer",
    "target_metadata",
    "version_table",
    "upgrade_token",
    "downgrade_token",
)


def _check_options(options: dict[str, Any]) -> None:
    taken = [name for name in _OWN_OPTIONS if name in options]
    if taken:
        raise UsageError(
            f"run_migrations() was given {', '.join(repr(name) for name in taken)}, which "
            "asyncbind sets for each bind itself (its connection, MetaData, version table and "
            "the names of its functions in revisions). Remove "
            f"{'it' if len(taken) == 1 else 'them'} from the call in env.py."
        )


def _with_options(own: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """asyncbind's options of a bind's migration context with those env.py gave: env.py's win,
    but ``include_name`` is asyncbind's and then env.py's (a name is compared only if both
    include it), and ``process_revision_directives`` is env.py's and then asyncbind's (which
    renders each bind's operations in its own dialect)."""
    merged = {**own, **options}
    if "include_name" in own and "include_name" in options:
        merged["include_name"] = _both(own["include_name"], options["include_name"])
    if "process_revision_directives" in own and "process_revision_directives" in options:
        merged["process_revision_directives"] = _in_turn(
            options["process_revision_directives"], own["process_revision_directives"]
        )
    return merged


def _both(first: Callable[..., bool], second: Callable[..., bool]) -> Callable[..., bool]:
    def include_name(*args: Any) -> bool:
        return first(*args) and second(*args)

    return include_name


def _in_turn(first: Callable[..., None], second: Callable[..., None]) -> Callable[..., None]:
    def process_revision_directives(*args: Any) -> None:
        first(*args)
        second(*args)

    return process_revision_directives


def _autogenerating(config: Config) -> bool:
    """Whether the command is ``revision --autogenerate``: the asyncbind command says so in
    ``Config.attributes``, plain alembic in its options (which Flask-Migrate's env.py reads too).
    Not ``check``, which compares the binds too but needs the revision it makes."""
    return bool(
        config.attributes.get(_AUTOGENERATE) or getattr(config.cmd_opts, "autogenerate", False)
    )


def _offline(config: Config, db: AsyncBind, key: BindKey, options: dict[str, Any]) -> None:
    name = script_name(key)
    dialect = db.engines[key].dialect.name
    output: TextIO = config.output_buffer or sys.stdout
    output.write(f"-- {bind_name(key)} ({dialect})\n\n")
    own = {"literal_binds": True, "dialect_opts": {"paramstyle": "named"}, **_bind_options(db, key)}
    context.configure(dialect_name=dialect, output_buffer=output, **_with_options(own, options))
    with context.begin_transaction():
        context.run_migrations(bind=name)
    output.write("\n")


async def _online(
    db: AsyncBind,
    keys: Sequence[BindKey],
    every: bool,
    autogenerating: bool,
    ini: str,
    options: dict[str, Any],
) -> None:
    """Migrate (or compare) ``keys`` one after another; ``every`` when no bind was named, for
    revision and check to refuse a model of no configured bind first; ``autogenerating`` for
    ``revision --autogenerate``, which writes no revision when no bind has a change;
    ``options`` from env.py for each bind's migration context."""
    errors: dict[BindKey, BaseException] = {}
    doing: list[_Doing] = []  # what each bind's migration context says the command does
    async with db:  # disposes of the engines in this event loop
        for key in keys:
            logger.info("Running on %s", bind_name(key))
            try:
                async with db.engines[key].connect() as conn, _migration_lock(conn):
                    last = autogenerating and key == keys[-1]
                    await conn.run_sync(_migrate, db, key, doing, every, last, options)
            except UnknownBindError:  # a model's, not this bind's: nothing was compared
                raise
            except Exception as exc:  # this bind's failure; the other binds carry on
                logger.error("%s failed: %s", bind_name(key, start=True), one_line(exc))
                errors[key] = exc
    if errors:
        ran = [key for key in keys if key not in errors]
        kept = [key for key in errors if db.engines[key].dialect.name not in _TRANSACTIONAL_DDL]
        message = _failure(errors, ran, doing[0] if doing else "migrate", ini, kept)
        raise MigrationError(message, errors) from next(iter(errors.values()))


# Held on the migration's own connection while a bind migrates, so that two processes migrating
# one database (two app instances starting) take turns: the second finds the first's revisions
# applied. Named after the database (PostgreSQL's advisory locks are per database already) and
# the version table, so apps on other databases of the server do not wait.
_LOCK_NAME = f"asyncbind migrations {VERSION_TABLE}"
_PG_LOCK_KEY = int.from_bytes(hashlib.sha256(_LOCK_NAME.encode()).digest()[:8], "big", signed=True)
_MYSQL_LOCK_NAME = sa.func.concat(
    "asyncbind:", sa.func.sha1(sa.func.concat(sa.func.database(), ".", _LOCK_NAME))
)
_LOCKS: dict[str, tuple[sa.Select[Any], sa.Select[Any]]] = {
    "postgresql": (
        sa.select(sa.func.pg_advisory_lock(_PG_LOCK_KEY)),
        sa.select(sa.func.pg_advisory_unlock(_PG_LOCK_KEY)),
    ),
    # GET_LOCK waits at most its timeout (a year here); MariaDB takes no negative one.
    "mysql": (
        sa.select(sa.func.get_lock(_MYSQL_LOCK_NAME, 31_536_000)),
        sa.select(sa.func.release_lock(_MYSQL_LOCK_NAME)),
    ),
}


@contextlib.asynccontextmanager
async def _migration_lock(conn: AsyncConnection) -> AsyncIterator[None]:
    """Hold the database's migration lock on ``conn`` (PostgreSQL, MySQL/MariaDB; SQLite has
    none). The lock belongs to the connection's session, not to a transaction: it is taken and
    committed before the migration begins its own, and released after it. Not behind PgBouncer
    (a bind with ``pgbouncer``): in transaction pooling the session's lock would stay on a server
    connection that the next transaction does not get, held there for good."""
    statements = _LOCKS.get(conn.dialect.name)
    config = bind_config(conn.engine)
    if statements is None or (config is not None and config.pgbouncer):
        yield
        return
    lock, unlock = statements
    got = await conn.scalar(lock)  # pg_advisory_lock() returns nothing; GET_LOCK() 1 if taken
    if conn.dialect.name == "mysql" and got != 1:
        raise AsyncBindError(
            f"Could not take the migration lock of the database (GET_LOCK() returned {got}). "
            "Check that no other migration has held it for a year, then run the command again."
        )
    await conn.commit()
    try:
        yield
    finally:
        try:
            await conn.rollback()
            await conn.execute(unlock)
            await conn.commit()
        except Exception:  # a connection in doubt must not go back to the pool holding the lock
            await conn.invalidate()
            raise


# The dialects whose DDL a transaction rolls back; the others commit each DDL statement.
_TRANSACTIONAL_DDL = ("postgresql", "mssql")


def _failure(
    errors: dict[BindKey, BaseException],
    ran: list[BindKey],
    command: _Doing,
    ini: str,
    kept: Sequence[BindKey] = (),
) -> str:
    """What went wrong, what it left behind and what to do, for the cause of the first error;
    ``command`` is what the command does to each bind (see :func:`_command`); ``kept``: the
    failed binds whose DDL is not transactional, where a failed revision's DDL remains."""
    first = next(iter(errors.values()))
    done = "stamped" if command == "stamp" else "migrated"
    migrated = ""
    if ran and command != "compare":
        migrated = f" The other binds were {done}: {_names(ran)}."
    refused = _revision_error(first)
    if isinstance(first, _UnknownVersionError):
        keys = [key for key, exc in errors.items() if isinstance(exc, _UnknownVersionError)]
        stamps = "; ".join(
            f"asyncbind db stamp --purge --bind {shlex.quote(key or '')} REV" for key in keys
        )
        text = (
            f"The version table of {_names(keys)} names {_revision_names(first.revisions)}, "
            f"which no revision script has (its file was removed, or is on a branch not merged "
            f"here), so nothing was {'compared' if command == 'compare' else 'migrated'} "
            f"there.{migrated} Restore the revision's file, or set the version table to the "
            f"revision the database matches ({stamps}; db history lists them), then run the "
            "command again."
        )
    elif _behind(first):
        keys = [key for key, exc in errors.items() if _behind(exc)]
        binds = " ".join(f"--bind {shlex.quote(key or '')}" for key in keys)
        text = (
            f"Autogenerate compares a bind with its models only at the head revision, and "
            f"{_names(keys)} {'is' if len(keys) == 1 else 'are'} behind ({one_line(first)}). "
            f"Nothing was written. Upgrade first (asyncbind db upgrade {binds}), then run the "
            "command again."
        )
    elif refused is not None:  # Alembic could not work out which revisions to run
        keys = [key for key, exc in errors.items() if _revision_error(exc) is not None]
        where = f"on {_names(keys)}" if ran else "on any bind"
        if isinstance(refused, MultipleHeads) and command == "stamp":
            text = (
                f"The revisions have more than one head ({', '.join(sorted(refused.heads))}), so "
                f"nothing was stamped {where}.{migrated} Name them all ('heads') or one of them "
                f"instead of 'head', or merge them (alembic -c {ini} merge heads -m MESSAGE), "
                "then run the command again."
            )
        elif isinstance(refused, MultipleHeads):
            text = (
                f"The revisions have more than one head ({', '.join(sorted(refused.heads))}), so "
                f"nothing was migrated {where}.{migrated} Merge them (alembic -c {ini} merge "
                "heads -m MESSAGE), or name one of them instead of 'head', then run the command "
                "again."
            )
        elif command == "stamp":
            text = (
                f"{one_line(first)}: nothing was stamped {where}.{migrated} Name a revision that "
                "exists (asyncbind db history lists them, db current shows each bind's); if it "
                "is a bind's version table that names a revision no script has, add --purge to "
                "empty that table first. Then run the command again."
            )
        else:
            text = (
                f"{one_line(first)}: nothing was migrated {where}.{migrated} Name a revision "
                "that exists and applies (asyncbind db history lists them, db current shows "
                "each bind's), then run the command again."
            )
    elif isinstance(first, BindUnavailableError):
        keys = [key for key, exc in errors.items() if isinstance(exc, BindUnavailableError)]
        text = f"{one_line(first)} Nothing was done on {_names(keys)}.{migrated}"
    elif command == "compare":
        keys = list(errors)
        text = (
            f"Autogenerate failed on {_names(keys)} ({one_line(first)}); nothing was written. "
            "Fix the cause and run the command again."
        )
    elif command == "stamp":
        keys = list(errors)
        text = (
            f"Stamping {_names(keys)} failed ({one_line(first)}); its transaction was rolled "
            f"back. The other binds were stamped: {_names(ran) if ran else 'none'}. Fix the "
            "cause and run the command again."
        )
    else:
        keys = list(errors)
        causes = one_line(first)
        if len(keys) > 1:
            causes = "; ".join(f"{bind_name(key)}: {one_line(errors[key])}" for key in keys)
        rolled_back = [key for key in keys if key not in kept]
        text = f"Migrating {_names(keys)} failed ({causes})."
        if rolled_back:
            text += (
                f" On {_names(rolled_back)} the failed revision was rolled back with its "
                "transaction, DDL included."
            )
        if kept:
            text += (
                f" On {_names(kept)}, whose database commits each DDL statement (MariaDB/MySQL, "
                "SQLite), the DDL that the failed revision ran before the failure remains, and "
                "the version table names the last revision that finished (db current shows "
                "it): undo that DDL by hand, or make the revision tolerate it."
            )
        text += (
            f" The other binds were migrated: {_names(ran) if ran else 'none'}. Fix the revision "
            "and run the command again."
        )
        return text
    others = [key for key in errors if key not in keys]
    if others:
        text += f" {_names(others, start=True)} failed too ({one_line(errors[others[0]])})."
    return text


def _behind(exc: BaseException) -> bool:
    """Whether ``exc`` is autogenerate's refusal of a bind that is not at the head revision."""
    return isinstance(exc, AlembicCommandError) and str(exc) == "Target database is not up to date."


def _revision_error(exc: BaseException | None) -> RevisionError | None:
    """The error of Alembic's revision map that ``exc`` was raised from, if any: the revisions
    to run could not be worked out (several heads, an unknown revision), so none ran."""
    while exc is not None:
        if isinstance(exc, RevisionError):
            return exc
        exc = exc.__cause__
    return None


def _names(keys: Sequence[BindKey] | dict[BindKey, Any], *, start: bool = False) -> str:
    return ", ".join(bind_name(key, start=start and not n) for n, key in enumerate(keys))


def _migrate(
    conn: sa.Connection,
    db: AsyncBind,
    key: BindKey,
    doing: list[_Doing],
    every: bool,
    last: bool,
    options: dict[str, Any],
) -> None:
    """Migrate (or compare, or stamp) bind ``key`` on ``conn``; add to ``doing`` what the
    command does (:func:`_command`). Comparing every bind, a model whose ``__bind_key__`` names
    no configured bind is refused first (:class:`UnknownBindError`), as ``create_all()`` refuses
    it: its table would be compared with no database, and no revision would ever create it.
    ``last``: the last bind that ``revision --autogenerate`` compares; ``options``: env.py's."""
    own = {
        **_bind_options(db, key),
        "render_as_batch": conn.dialect.name == "sqlite",
        "process_revision_directives": _render_in_last_bind if last else _render_in_this_bind,
    }
    context.configure(connection=conn, **_with_options(own, options))
    doing.append(_command())
    if doing[-1] != "stamp":  # stamp --purge is how to mend such a version table
        unknown = _unknown_versions(context.get_context().get_current_heads())
        if unknown:
            raise _UnknownVersionError(unknown)
    if doing[-1] == "compare" and every and len(doing) == 1:
        check_bind_keys(db.metadatas.values(), [*db.engines, *db.groups])
    with context.begin_transaction():
        context.run_migrations(bind=script_name(key))


def _unknown_versions(revisions: Sequence[str]) -> list[str]:
    """Those of ``revisions`` (a bind's version table's) that no revision script has."""
    unknown = []
    for rev in revisions:
        try:
            context.script.revision_map.get_revision(rev)
        except RevisionError:
            unknown.append(rev)
    return unknown


def _bind_options(db: AsyncBind, key: BindKey) -> dict[str, Any]:
    """The options of bind ``key``'s migration context, online and offline alike: its MetaData,
    its version table, the names of its functions in revisions, and what autogenerate compares
    (the schemas its models use, not the tables of other binds)."""
    name = script_name(key)
    return {
        "target_metadata": db.metadatas.get(key),
        "version_table": VERSION_TABLE,
        "upgrade_token": f"{name}_upgrades",
        "downgrade_token": f"{name}_downgrades",
        "include_schemas": True,
        "include_name": _only_this_bind(db, key),
    }


def _command() -> _Doing:
    """What the running command does to each bind: ``compare`` its models with its database
    (revision, check), ``stamp`` its version table without running any migration (stamp), else
    ``migrate`` it. Nothing public tells; Alembic's revision and check commands are those that
    hand their RevisionContext to the environment, stamp the one that hands its purge option,
    and the migration context holds the environment's options."""
    opts = context.get_context().opts
    if opts.get("revision_context") is not None:
        return "compare"
    return "stamp" if "purge" in opts else "migrate"


class _Rendered(ops.OpContainer):
    """Operations already rendered to lines of Python, in their own bind's dialect and settings.

    Holds the operations too, so that ``db check`` still lists them (``as_diffs()``).
    """

    def __init__(self, operations: Sequence[ops.MigrateOperation], lines: list[str]) -> None:
        super().__init__(operations)
        self.lines = lines


@renderers.dispatch_for(_Rendered)
def _render_rendered(_autogen_context: AutogenContext, rendered: _Rendered) -> list[str]:
    return rendered.lines


def _render_in_this_bind(
    migration_context: MigrationContext, _revision: Any, scripts: list[ops.MigrationScript]
) -> None:
    """``process_revision_directives``, called after each bind's comparison: render that bind's
    operations now, with its own dialect and settings (batch mode on SQLite).

    Alembic renders the whole revision file at the end with the last bind's settings, which
    would write a SQLite bind's changes without batch mode, or a PostgreSQL bind's types for
    another dialect; the lines rendered here are what it writes instead.
    """
    autogen_context = AutogenContext(migration_context, autogenerate=False)
    upgrades = migration_context.opts["upgrade_token"]
    downgrades = migration_context.opts["downgrade_token"]
    for script in scripts:
        containers: list[ops.OpContainer] = [
            *(c for c in script.upgrade_ops_list if c.upgrade_token == upgrades),
            *(c for c in script.downgrade_ops_list if c.downgrade_token == downgrades),
        ]
        for container in containers:
            if container.ops:
                lines = [line for op in container.ops for line in render_op(autogen_context, op)]
                container.ops = [_Rendered(container.ops, lines)]
        script.imports = script.imports | autogen_context.imports


def _render_in_last_bind(
    migration_context: MigrationContext, revision: Any, scripts: list[ops.MigrationScript]
) -> None:
    """``process_revision_directives`` of the last bind that ``revision --autogenerate``
    compares, where every bind's operations are known: :func:`_render_in_this_bind`, then no
    revision at all if no bind has a change, as Flask-Migrate's env.py does."""
    _render_in_this_bind(migration_context, revision, scripts)
    if all(upgrade.is_empty() for script in scripts for upgrade in script.upgrade_ops_list):
        scripts.clear()
        logger.info("No changes in schema detected.")


def _only_this_bind(db: AsyncBind, key: BindKey) -> Callable[..., bool]:
    """Autogenerate's ``include_name``: compare only the default schema and the schemas this
    bind's models use (``schema=``), and leave out the tables that another bind's models hold,
    so that autogenerate never proposes to drop the tables of a schema the app does not model
    (on MySQL and MariaDB, another database of the server) or of another bind; and the decision
    table of two-phase commits, which asyncbind makes itself."""
    mine = db.metadatas.get(key)
    own = set(mine.tables) if mine is not None else set()
    schemas = {table.schema for table in mine.tables.values()} if mine is not None else set()
    others = {
        name for other, metadata in db.metadatas.items() if other != key for name in metadata.tables
    }

    def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
        if type_ == "schema":  # None is the default schema
            return name is None or name in schemas
        if type_ != "table" or name is None:
            return True
        schema = parent_names.get("schema_name")
        full = f"{schema}.{name}" if schema else name
        return full in own or (full not in others and full != TWOPHASE_TABLE)

    return include_name


# -- the asyncbind command's helpers -----------------------------------------------------------


def init(folder: Path, app: str | None) -> list[Path]:
    """Write ``folder`` with alembic.ini, env.py, script.py.mako and versions/; the files."""
    if folder.exists() and any(folder.iterdir()):
        raise UsageError(
            f"Folder '{folder}' exists and is not empty. Name another folder (asyncbind db init "
            "DIR), or remove this one."
        )
    (folder / "versions").mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("env.py", "script.py.mako"):
        shutil.copyfile(_TEMPLATE / name, folder / name)
        written.append(folder / name)
    ini = folder / "alembic.ini"
    text = Template(filename=str(_TEMPLATE / "alembic.ini.mako")).render(
        script_location="%(here)s", asyncbind_app=app or "", config_path=ini.as_posix()
    )
    ini.write_text(text)
    written.append(ini)
    return written


def config_for(
    folder: Path, db: AsyncBind, keys: Sequence[BindKey] | None, *, autogenerate: bool = False
) -> Config:
    """Alembic's Config for ``folder``/alembic.ini, with ``db`` and the binds named for env.py
    (None: every bind but the read-only ones); ``autogenerate`` for ``revision
    --autogenerate``, which writes no revision when no bind has a change."""
    ini = folder / "alembic.ini"
    if not ini.is_file():
        raise UsageError(
            f"'{ini}' does not exist. Write the migrations folder first (asyncbind db init "
            f"{folder}), or name it with --dir."
        )
    config = Config(str(ini))
    config.attributes[_DB] = db
    if keys is not None:
        config.attributes[_KEYS] = list(keys)
    config.attributes[_AUTOGENERATE] = autogenerate
    return config


async def current(
    config: Config,
    db: AsyncBind,
    keys: Sequence[BindKey],
    *,
    timeout: float | None = None,  # noqa: ASYNC109
) -> tuple[list[str], bool]:
    """A line per bind: its revision(s) in its version table, ``(head)`` when at a head, or, for
    a bind whose version table could not be read, ``FAILED:`` and why (passwords are not hidden
    here); and whether every bind's was read. The binds are read concurrently, each within
    ``timeout`` seconds if given (``no answer within ... s`` past it, as ``db.ping()`` says), so
    one failing or hanging does not stop the others."""
    script = ScriptDirectory.from_config(config)
    heads = set(script.get_heads())

    def shown(key: BindKey, rev: str) -> str:
        if rev in heads:
            return f"{rev} (head)"
        try:
            script.revision_map.get_revision(rev)
        except RevisionError:
            logger.warning(
                "The version table of %s names revision %r, which no revision script has. "
                "Restore the revision's file, or set the version table to the revision the "
                "database matches (asyncbind db stamp --purge --bind %s REV).",
                bind_name(key),
                rev,
                shlex.quote(key or ""),
            )
            return f"{rev} (no revision script has it)"
        return rev

    def read(conn: sa.Connection) -> tuple[str, ...]:
        return MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_heads()

    async def line(key: BindKey) -> tuple[str, bool]:
        limit = asyncio.timeout(timeout)
        try:
            async with limit:
                async with db.engines[key].connect() as conn:
                    found = await conn.run_sync(read)
        except Exception as exc:  # this bind's line; the others are still read
            why = f"no answer within {timeout:g} s" if limit.expired() else one_line(exc)
            return f"{bind_name(key)}: FAILED: could not read its revision: {why}", False
        text = ", ".join(shown(key, rev) for rev in found)
        return f"{bind_name(key)}: {text or 'no revision'}", True

    async with db:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(line(key)) for key in keys]
    results = [task.result() for task in tasks]
    return [text for text, _ in results], all(ok for _, ok in results)
