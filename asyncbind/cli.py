"""The command line: ``asyncbind [--app MODULE[:ATTRIBUTE]] COMMAND``, or ``python -m asyncbind``.

``--app`` (or ``ASYNCBIND_APP``) names the AsyncBind to work on the way ``flask --app`` names an
app; without it the binds come from the environment (:meth:`AsyncBind.from_env`). Exit status:
0 ok, 1 failure, 2 usage error. An error is one line on stderr (but for an app whose
configuration has several problems, listed one a line; ``--traceback`` adds the traceback), and
no password is ever printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from . import __version__, schema
from .bulk import BATCH_SIZE
from .config import BindKey
from .copyprogress import ProgressReport, estimate_rows
from .core import AsyncBind
from .exceptions import UnknownBindError, bind_name, format_keys
from .findapp import APP_ENV, DEFAULT_ATTRIBUTES, WHAT_APP_NAMES, UsageError, find_db, one_line
from .health import pool_status
from .models import bind_key_of
from .urls import hide_passwords, hide_url_passwords, render_url

__all__ = ["main"]

_USAGE, _FAILED = 2, 1


class CommandError(Exception):
    """The command ran and failed (exit status 1); ``details`` is the traceback, masked."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


# -- output ----------------------------------------------------------------------------------


def _hide(text: str, db: AsyncBind) -> str:
    """``text`` with every bind's passwords masked (in its URL or its connect_args), wherever a
    driver may have put them, and the password of any other URL written in it; by the rules of
    :func:`asyncbind.urls.hide_passwords`."""
    urls = [engine.url for engine in db.engines.values()]
    passwords = [found for config in db.bind_configs.values() for found in config.passwords]
    return hide_passwords(text, urls, passwords)


def _print_error(message: str, exc: BaseException | None = None) -> None:
    """``message`` on stderr as an error, after the traceback of ``exc`` if one is given, with
    the password of any URL in them masked (no AsyncBind is known here: the app's module may
    have failed to load)."""
    if exc is not None:
        print(hide_url_passwords("".join(traceback.format_exception(exc))), end="", file=sys.stderr)
    print(f"asyncbind: error: {hide_url_passwords(message)}", file=sys.stderr)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _batches(count: int) -> str:
    return f"{count} batch" if count == 1 else f"{count} batches"


def _table_names(tables: Sequence[str]) -> str:
    return ", ".join(tables) if tables else "none"


def _model_tables(db: AsyncBind) -> dict[BindKey, list[str]]:
    """The tables of the models and ``db.Table``s, by the bind key they name."""
    tables: dict[BindKey, list[str]] = {}
    for metadata in db.metadatas.values():
        for table in metadata.sorted_tables:
            tables.setdefault(bind_key_of(table), []).append(table.fullname)
    return tables


def _model_schemas(db: AsyncBind) -> dict[BindKey, list[str]]:
    """The schemas (``schema=``) that the models and ``db.Table``s use, by the bind key they
    name; the default schema is not among them."""
    schemas: dict[BindKey, set[str]] = {}
    for metadata in db.metadatas.values():
        for table in metadata.tables.values():
            if table.schema is not None:
                schemas.setdefault(bind_key_of(table), set()).add(table.schema)
    return {key: sorted(names) for key, names in schemas.items()}


def _bind_key(text: str) -> BindKey:
    return text or None


def _check_keys(db: AsyncBind, keys: Sequence[BindKey], option: str) -> None:
    unknown = [k for k in keys if k not in db.engines]
    if unknown:
        configured = ", ".join(repr(key or "") for key in db.engines)
        raise UsageError(
            f"{option} names bind(s) {format_keys(unknown)}, which are not configured "
            f"(configured: {configured}). Write the default bind as ''."
        )


def _check_models(db: AsyncBind) -> None:
    """Refuse models whose ``__bind_key__`` names no configured bind, as ``db.create_all()``
    does: a command over every bind would otherwise leave their tables out without a word."""
    try:
        schema.check_bind_keys(db.metadatas.values(), [*db.engines, *db.groups])
    except UnknownBindError as exc:
        raise CommandError(_hide(one_line(exc), db)) from None


# -- commands ---------------------------------------------------------------------------------


def _run(
    args: argparse.Namespace, command: Callable[[AsyncBind], Awaitable[int]], db: AsyncBind
) -> int:
    """Run ``command(db)`` in a new event loop and dispose of ``db``'s engines in it."""

    async def within() -> int:
        async with db:
            return await command(db)

    try:
        return asyncio.run(within())
    except (CommandError, UsageError):
        raise
    except Exception as exc:
        details = "".join(traceback.format_exception(exc)) if args.traceback else ""
        raise CommandError(_hide(one_line(exc), db), _hide(details, db)) from exc


def _cmd_check(args: argparse.Namespace) -> int:
    async def check(db: AsyncBind) -> int:
        health = await db.ping(timeout=args.timeout)
        for found in health.values():
            _say(_hide(str(found), db))
        answered = all(
            found.ok and all(replica.ok for replica in found.replicas) for found in health.values()
        )
        return 0 if answered else _FAILED

    return _run(args, check, find_db(args.app))


def _cmd_show(args: argparse.Namespace) -> int:
    async def show(db: AsyncBind) -> int:
        modelled = _model_tables(db)
        schemas = _model_schemas(db)
        pools = pool_status(db.engines)
        async with asyncio.TaskGroup() as group:
            found = {
                key: group.create_task(
                    _database_tables(
                        engine, modelled.get(key, []), schemas.get(key, []), args.timeout, db
                    )
                )
                for key, engine in db.engines.items()
            }
        for number, (key, engine) in enumerate(db.engines.items()):
            config = db.bind_configs[key]
            pool = pools[key]
            settings = [pool.pool] + ([f"size {pool.size}"] if pool.size is not None else [])
            for option in ("max_overflow", "pool_timeout", "pool_recycle", "pool_pre_ping"):
                if option in config.engine_options:
                    settings.append(f"{option} {config.engine_options[option]}")
            timeouts = [
                f"{name} {value:g} s"
                for name, value in (
                    ("connect_timeout", config.connect_timeout),
                    ("statement_timeout", config.statement_timeout),
                )
                if value is not None
            ]
            if number:
                _say()
            _say(bind_name(key))
            _say(f"  url        {render_url(engine.url)}")
            _say(f"  driver     {engine.dialect.driver} ({engine.dialect.name})")
            _say(f"  pool       {', '.join(settings)}")
            if timeouts:
                _say(f"  timeouts   {', '.join(timeouts)}")
            _say(f"  read-only  {'yes' if config.read_only else 'no'}")
            _say(f"  models     {_table_names(modelled.get(key, []))}")
            _say(f"  database   {found[key].result()}")
        orphans = {k: t for k, t in modelled.items() if k not in db.engines}
        for key, tables in orphans.items():
            _say(f"\n{bind_name(key)} is not configured; its tables: {_table_names(tables)}")
        return 0

    return _run(args, show, find_db(args.app))


async def _database_tables(
    engine: AsyncEngine,
    modelled: Sequence[str],
    schemas: Sequence[str],
    limit: float,
    db: AsyncBind,
) -> str:
    """The tables in ``engine``'s database, those of its default schema and of ``schemas``
    (written ``schema.table``, as the ``modelled`` tables are), or ``unreachable: <why>``; never
    raises. A schema of the models that is the default one (``public`` on PostgreSQL, the URL's
    database on MySQL and MariaDB, ``main`` on SQLite) is read once, with the default schema."""

    def read(sync: sa.Connection) -> list[str]:
        inspector = sa.inspect(sync)
        default = inspector.default_schema_name
        named = set(modelled)
        names = [
            f"{default}.{table}" if f"{default}.{table}" in named else table
            for table in inspector.get_table_names()
        ]
        others = [name for name in schemas if name != default]
        existing = set(inspector.get_schema_names()) if others else set()
        for name in others:
            if name in existing:  # MySQL and MariaDB refuse to list an unknown one
                names += [f"{name}.{table}" for table in inspector.get_table_names(name)]
        return names

    try:
        async with asyncio.timeout(limit):
            async with engine.connect() as conn:
                names = await conn.run_sync(read)
    except TimeoutError:
        return f"unreachable: no answer within {limit:g} s"
    except Exception as exc:  # one bind's failure is that bind's line, not the command's
        return _hide(f"unreachable: {one_line(exc)}", db)
    return _table_names(sorted(names))


def _cmd_schema(args: argparse.Namespace) -> int:
    """``create-all`` and ``drop-all``."""
    drop = args.command == "drop-all"
    db = find_db(args.app)
    named = args.bind is not None
    keys = [_bind_key(k) for k in args.bind] if named else list(db.engines)
    keys = list(dict.fromkeys(keys))
    _check_keys(db, keys, "--bind")
    if not named:
        _check_models(db)
    modelled = _model_tables(db)
    if drop and not args.yes:
        count = sum(len(modelled.get(k, [])) for k in keys)
        binds = ", ".join(bind_name(key) for key in keys)
        question = f"Drop every table of {binds} ({count} in the models)?"
        print(f"{question} [y/N] ", end="", flush=True)
        answer = sys.stdin.readline()
        if not sys.stdin.isatty():
            print()  # the answer was not typed, so no newline was echoed
        if answer.strip().lower() not in ("y", "yes"):
            print("Aborted: nothing was dropped.", file=sys.stderr)
            return _FAILED

    async def run_one(key: BindKey) -> tuple[BindKey, str | None, float]:
        started = time.perf_counter()
        first = asyncio.timeout(args.timeout)
        try:
            # The first connection is waited for --timeout seconds at most, as check does; it
            # goes back to the pool for the work, which may take longer. (drop_all refuses a
            # read-only bind before it connects: so does this.)
            if not db.bind_configs[key].read_only:
                async with first, db.engines[key].connect():
                    pass
            if drop:
                await db.drop_all(bind_key=key)
            else:
                await db.create_all(bind_key=key)
        except Exception as exc:  # reported on this bind's line; the others carry on
            why = f"no answer within {args.timeout:g} s" if first.expired() else one_line(exc)
            return key, _hide(why, db), time.perf_counter() - started
        return key, None, time.perf_counter() - started

    async def schema(db: AsyncBind) -> int:
        failed = False
        runs = []
        for key in keys:
            # create_all skips read-only binds; drop_all refuses one that is named.
            if db.bind_configs[key].read_only and (not drop or not named):
                _say(f"{bind_name(key)}: skipped (read-only)")
            else:
                runs.append(asyncio.create_task(run_one(key)))
        for finished in asyncio.as_completed(runs):
            key, error, seconds = await finished
            if error is None:
                tables = _table_names(modelled.get(key, []))
                _say(f"{bind_name(key)}: ok in {seconds * 1000:.0f} ms ({tables})")
            else:
                failed = True
                _say(f"{bind_name(key)}: FAILED: {error}")
        return _FAILED if failed else 0

    return _run(args, schema, db)


def _endpoint(text: str, what: str) -> tuple[BindKey, str]:
    key, colon, table = text.partition(":")
    if not colon or not table:
        raise UsageError(
            f"{what} {text!r} is not 'bind:table'. Write 'users:accounts', or ':accounts' for "
            "a table of the default bind."
        )
    return _bind_key(key), table


def _cmd_copy(args: argparse.Namespace) -> int:
    source_key, source_name = _endpoint(args.source, "SOURCE")
    target_key, target_name = _endpoint(args.target, "TARGET")
    if args.where and args.parallel > 1:
        raise UsageError(
            "--parallel splits the whole table on its primary key, so it cannot be combined "
            "with --where. Leave out one of them."
        )
    db = find_db(args.app)
    _check_keys(db, [source_key, target_key], "SOURCE and TARGET")

    async def copy(db: AsyncBind) -> int:
        source, target = await asyncio.gather(
            _reflect(db.get_engine(source_key), source_name, source_key, args.timeout),
            _reflect(db.get_engine(target_key), target_name, target_key, args.timeout),
        )
        names = [c.name for c in target.columns if c.name in source.c]
        if not names:
            raise CommandError(
                f"Tables {source_name!r} and {target_name!r} have no column name in common; "
                "nothing to copy."
            )
        left_out = [c.name for c in source.columns if c.name not in target.c]
        if left_out:
            print(f"not copied (not in the target): {', '.join(left_out)}", file=sys.stderr)
        rows: sa.Table | sa.Select[Any] = source  # read from the driver's cursor where it can
        total = None
        if args.where:
            rows = sa.select(*(source.c[name] for name in names)).where(sa.text(args.where))
        else:
            total = await estimate_rows(db.get_engine(source_key), source)
        report = ProgressReport(sys.stderr, total)
        try:
            result = await db.copy(
                rows,
                target,
                source_bind=source_key,
                target_bind=target_key,
                columns=None if args.where else names,
                batch_size=args.batch_size,
                parallel=args.parallel,
                on_progress=report,
            )
        finally:
            report.close()
        _say(
            f"copied {result.rows:,} rows from {bind_name(source_key)} table {source_name!r} to "
            f"{bind_name(target_key)} table {target_name!r} in {_batches(result.batches)}, "
            f"{result.seconds:.2f} s ({result.rows_per_second:,.0f} rows/s)"
        )
        return 0

    return _run(args, copy, db)


async def _reflect(engine: AsyncEngine, name: str, key: BindKey, limit: float) -> sa.Table:
    """The table ``name`` (``schema.name`` allowed) as the database describes it, read within
    ``limit`` seconds (the connection included)."""
    schema, _, table = name.rpartition(".")

    def load(sync: sa.Connection) -> sa.Table:
        return sa.Table(table, sa.MetaData(), schema=schema or None, autoload_with=sync)

    within = asyncio.timeout(limit)
    try:
        async with within, engine.connect() as conn:
            return await conn.run_sync(load)
    except sa_exc.NoSuchTableError:
        raise CommandError(
            f"Table {name!r} does not exist in {bind_name(key)}. Check the name, or create it "
            "first (asyncbind create-all)."
        ) from None
    except TimeoutError:
        if not within.expired():
            raise
        raise CommandError(
            f"{bind_name(key, start=True)} did not answer within {limit:g} s (--timeout), so "
            f"table {name!r} could not be read and nothing was copied. Check that its server "
            "is up and reachable, or wait longer with --timeout."
        ) from None


def _cmd_db(args: argparse.Namespace) -> int:
    """The migration commands: init, revision (and migrate, Flask-Migrate's name for revision
    --autogenerate), upgrade, downgrade, stamp, current, history, heads, show, merge, check; and
    recover, which needs no Alembic."""
    if args.db_command == "recover":
        options = {"twophase_name": args.twophase_name} if args.twophase_name else {}
        return _run(args, _recover, find_db(args.app, **options))
    if getattr(args, "purge", False) and args.sql:  # Alembic refuses it after the first bind
        raise UsageError(
            "stamp --purge empties each bind's version table, which --sql cannot do (it writes "
            "the SQL of the change from a given revision). Leave out one of them."
        )
    try:
        from alembic import command

        from . import migrations
    except ModuleNotFoundError as exc:
        raise UsageError(
            f"The db commands need Alembic ({one_line(exc)}). Install it: "
            "pip install 'asyncbind[alembic]'."
        ) from exc
    db = find_db(args.app)
    if args.db_command == "init":
        app = args.app or os.environ.get(APP_ENV) or ""
        for path in migrations.init(args.directory, app):
            _say(f"wrote {path}")
        if not app:
            _say("asyncbind_app in alembic.ini is empty: plain 'alembic' will need $ASYNCBIND_APP")
        return 0
    named = None
    if args.bind is not None:
        named = list(dict.fromkeys(_bind_key(k) for k in args.bind))
        _check_keys(db, named, "--bind")
    # Commands that read the revisions only run on no bind, so any bind keys will do for them.
    reads_revisions_only = args.db_command in ("history", "heads", "merge") or (
        args.db_command == "show" and args.revision != "current"
    )
    keys = [] if reads_revisions_only else migrations.select_binds(db, named)
    autogenerate = getattr(args, "autogenerate", False)  # revision's option; migrate's default
    config = migrations.config_for(args.dir, db, named, autogenerate=autogenerate)
    compares = args.db_command == "check" or autogenerate
    if compares and named is None:
        _check_models(db)
    try:
        if args.db_command in ("revision", "migrate"):
            command.revision(config, message=args.message, autogenerate=autogenerate)
        elif args.db_command in ("upgrade", "downgrade", "stamp"):
            if args.db_command == "stamp":
                command.stamp(config, args.revision, sql=args.sql, purge=args.purge)
            else:
                run = command.upgrade if args.db_command == "upgrade" else command.downgrade
                run(config, args.revision, sql=args.sql)
            if not args.sql and not _show_current(config, db, keys, skipped=named is None):
                return _FAILED
        elif args.db_command == "current":
            shown = _show_current(config, db, keys, skipped=named is None, timeout=args.timeout)
            if not shown:
                return _FAILED
        elif args.db_command == "history":
            command.history(config)
        elif args.db_command == "heads":
            command.heads(config)
        elif args.db_command == "show":
            command.show(config, args.revision)
        elif args.db_command == "merge":
            command.merge(config, args.revisions, message=args.message)
        else:
            command.check(config)
    except UsageError:
        raise
    except Exception as exc:
        details = "".join(traceback.format_exception(exc)) if args.traceback else ""
        raise CommandError(_hide(one_line(exc), db), _hide(details, db)) from exc
    return 0


async def _recover(db: AsyncBind) -> int:
    done = await db.recover()
    for resolution in done:
        _say(_hide(str(resolution), db))
    for left in done.left:
        print(f"asyncbind: {_hide(str(left), db)}", file=sys.stderr)
    if done.left:
        return _FAILED
    if not done:
        _say("no two-phase transaction in doubt")
    return 0


def _show_current(
    config: Any,
    db: AsyncBind,
    keys: Sequence[BindKey],
    *,
    skipped: bool,
    timeout: float | None = None,
) -> bool:
    """A line per bind with its revision, or why it could not be read (as ``check`` says why a
    bind did not answer), each bind waited for ``timeout`` seconds at most if given; with
    ``skipped``, one per read-only bind too. Whether every bind's revision was read."""
    from . import migrations

    lines, every = asyncio.run(migrations.current(config, db, keys, timeout=timeout))
    for line in lines:
        _say(_hide(line, db))
    if skipped:
        for key in db.engines:
            if db.bind_configs[key].read_only:
                _say(f"{bind_name(key)}: skipped (read-only)")
    return every


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.dir)
    return 0


# -- the parser -------------------------------------------------------------------------------


def _positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not above 0")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    # --app and --traceback are accepted before and after the command; SUPPRESS keeps a
    # command's parser from overwriting what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--app",
        default=argparse.SUPPRESS,
        metavar="MODULE[:ATTRIBUTE]",
        help=f"where your AsyncBind is: {WHAT_APP_NAMES}; 'MODULE' alone tries "
        f"{', '.join(DEFAULT_ATTRIBUTES)}. Default: ${APP_ENV}, else the ASYNCBIND_* "
        "environment variables (AsyncBind.from_env()). The current directory is on the path.",
    )
    common.add_argument(
        "--traceback",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of an error",
    )
    parser = argparse.ArgumentParser(
        prog="asyncbind",
        description="Work with the databases of an AsyncBind: check, show, create or drop "
        "tables, copy a table between binds.",
        epilog="Exit status: 0 ok, 1 failure, 2 usage error. '%(prog)s COMMAND --help' "
        "describes a command.",
        parents=[common],
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"asyncbind {__version__} (SQLAlchemy {sa.__version__})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], text: str) -> Any:
        sub = commands.add_parser(name, help=text, description=text, parents=[common])
        sub.set_defaults(run=run)
        return sub

    timeout = _positive(float)
    check = command("check", _cmd_check, "Ask every bind for SELECT 1; exit 1 unless all answer.")
    check.add_argument(
        "--timeout", type=timeout, default=5.0, metavar="S", help="seconds per bind (default 5)"
    )
    show = command(
        "show",
        _cmd_show,
        "Show each bind: URL (password hidden), driver, pool, read-only flag, the tables of "
        "its models and the tables in its database.",
    )
    show.add_argument(
        "--timeout",
        type=timeout,
        default=5.0,
        metavar="S",
        help="seconds to wait for each database's list of tables (default 5)",
    )
    bind_help = (
        "a bind key (repeat for several; the default bind is written --bind ''); "
        "default: every bind"
    )
    create = command(
        "create-all",
        _cmd_schema,
        "Create the models' tables that do not exist yet, binds concurrently; a line per bind "
        "as it finishes. Read-only binds are skipped.",
    )
    create.add_argument("--bind", action="append", metavar="KEY", help=bind_help)
    connect_help = (
        "seconds to wait for each bind's first connection (default 5); the work itself is not "
        "bounded"
    )
    create.add_argument("--timeout", type=timeout, default=5.0, metavar="S", help=connect_help)
    drop = command(
        "drop-all",
        _cmd_schema,
        "Drop the models' tables, binds concurrently, after asking for confirmation; a line per "
        "bind as it finishes.",
    )
    drop.add_argument("--bind", action="append", metavar="KEY", help=bind_help)
    drop.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    drop.add_argument("--timeout", type=timeout, default=5.0, metavar="S", help=connect_help)
    copy = command(
        "copy",
        _cmd_copy,
        "Copy the rows of a table into a table of another (or the same) bind, the columns "
        "both tables have. Progress goes to stderr, the result to stdout.",
    )
    copy.add_argument("source", metavar="SOURCE", help="bind:table (':table' for the default bind)")
    copy.add_argument("target", metavar="TARGET", help="bind:table (':table' for the default bind)")
    copy.add_argument(
        "--where", metavar="SQL", help="copy only the rows this SQL condition selects"
    )
    copy.add_argument(
        "--batch-size",
        type=_positive(int),
        default=BATCH_SIZE,
        metavar="N",
        help=f"rows per batch, each committed as it lands (default {BATCH_SIZE})",
    )
    copy.add_argument(
        "--parallel",
        type=_positive(int),
        default=1,
        metavar="N",
        help="copy N ranges of the source's integer primary key at once, over N connections to "
        "each bind (default 1)",
    )
    copy.add_argument(
        "--timeout",
        type=timeout,
        default=5.0,
        metavar="S",
        help="seconds to wait for each table's description, its bind's first connection "
        "included (default 5); the copy itself is not bounded",
    )
    _db_parser(command("db", _cmd_db, _DB_HELP), common, bind_help)
    demo = command(
        "demo",
        _cmd_demo,
        "Write and read three SQLite binds through one session and show where each statement "
        "went (needs no --app).",
    )
    demo.add_argument(
        "--dir", type=Path, help="folder for the databases (default: a temporary one)"
    )
    return parser


_DB_HELP = (
    "Schema migrations per bind with Alembic (needs the 'alembic' extra): one script folder, "
    "an upgrade_<bind>() per bind in each revision, a version table in each bind's database; "
    "and 'db recover' for two-phase commits."
)


def _db_parser(
    db: argparse.ArgumentParser, common: argparse.ArgumentParser, bind_help: str
) -> None:
    commands = db.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--dir",
        type=Path,
        default=Path("migrations"),
        help="the migrations folder, which holds alembic.ini (default: migrations)",
    )
    where.add_argument("--bind", action="append", metavar="KEY", help=bind_help)

    def sub(name: str, text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=text, description=text, parents=[common, where])

    init = commands.add_parser(
        "init",
        help="write the migrations folder",
        description="Write DIR (default: migrations) with alembic.ini, env.py, script.py.mako and "
        "versions/. alembic.ini names the app (--app), so plain 'alembic -c DIR/alembic.ini' "
        "works too.",
        parents=[common],
    )
    init.add_argument("directory", nargs="?", type=Path, default=Path("migrations"), metavar="DIR")
    revision = sub("revision", "Write a new revision script, with a function pair per bind.")
    revision.add_argument("-m", "--message", required=True, metavar="MSG")
    revision.add_argument(
        "--autogenerate",
        action="store_true",
        help="fill it in by comparing each bind's models with that bind's database",
    )
    migrate = sub(
        "migrate",
        "Flask-Migrate's name for 'revision --autogenerate': write a new revision filled in by "
        "comparing each bind's models with that bind's database; none if nothing changed.",
    )
    migrate.add_argument("-m", "--message", required=True, metavar="MSG")
    migrate.set_defaults(autogenerate=True)
    for name, text, default in (
        ("upgrade", "Upgrade each bind to REV (default: head), one bind after another.", "head"),
        ("downgrade", "Downgrade each bind to REV (e.g. -1, base).", None),
    ):
        change = sub(name, text)
        if default is None:
            change.add_argument("revision", metavar="REV")
        else:
            change.add_argument("revision", nargs="?", default=default, metavar="REV")
        change.add_argument(
            "--sql", action="store_true", help="print each bind's SQL instead of running it"
        )
    stamp = sub(
        "stamp",
        "Set each bind's version table to REV (e.g. head, base, a revision; several for several "
        "heads) without running any migration.",
    )
    stamp.add_argument("revision", nargs="+", metavar="REV")
    stamp.add_argument(
        "--sql", action="store_true", help="print each bind's SQL instead of running it"
    )
    stamp.add_argument(
        "--purge", action="store_true", help="empty each bind's version table before stamping"
    )
    current = sub("current", "Show each bind's revision; exit 1 unless every bind's was read.")
    current.add_argument(
        "--timeout",
        type=_positive(float),
        default=5.0,
        metavar="S",
        help="seconds to wait for each bind's revision (default 5)",
    )
    sub("history", "List the revisions.")
    sub("heads", "List the heads of the revisions (the database is not read).")
    show = sub(
        "show",
        "Show revision REV: its id, parents, path and message ('current': each bind's, one "
        "after another).",
    )
    show.add_argument("revision", metavar="REV")
    merge = sub("merge", "Write a revision that merges REVS (e.g. heads) into one head.")
    merge.add_argument("revisions", nargs="+", metavar="REVS")
    merge.add_argument("-m", "--message", required=True, metavar="MSG")
    sub("check", "Exit 1 if any bind's models and database differ (autogenerate would add to it).")
    recover = "Resolve the app's in-doubt two-phase transactions on every bind (db.recover())."
    commands.add_parser(
        "recover",
        help=recover,
        description=recover + " Each is committed where the decision to commit was recorded, "
        "else rolled back; one line per transaction resolved. Exit 1 when some had to be left "
        "(still held by a live connection), each named on stderr. Safe to run at every start.",
        parents=[common],
    ).add_argument(
        "--twophase-name",
        metavar="NAME",
        help="the app's twophase_name, for binds from the ASYNCBIND_* environment variables "
        "(no --app). Default: $ASYNCBIND_TWOPHASE_NAME, else 'asyncbind'; "
        "$ASYNCBIND_TWOPHASE_LOG names the log bind.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits for --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else _USAGE
    args.app = getattr(args, "app", None)
    args.traceback = getattr(args, "traceback", False)
    try:
        status: int = args.run(args)
        return status
    except UsageError as exc:
        _print_error(str(exc), exc if args.traceback else None)
        return _USAGE
    except CommandError as exc:
        if exc.details:
            print(exc.details, end="", file=sys.stderr)
        print(f"asyncbind: error: {exc}", file=sys.stderr)
        return _FAILED
    except KeyboardInterrupt:
        print("asyncbind: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # outside any bind's work (the demo): still one line
        _print_error(one_line(exc), exc if args.traceback else None)
        return _FAILED
