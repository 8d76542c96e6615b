"""``create_all`` / ``drop_all`` / ``reflect`` over many binds at once.

Every table's bind is checked before any DDL runs, so a typo'd ``__bind_key__`` creates nothing
anywhere. Then one task per engine runs that bind's DDL in its own transaction; a failing bind does
not stop the others, and afterwards one :class:`~asyncbind.exceptions.BindErrors` names every bind
that failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from .config import ALL, BindKey
from .exceptions import AsyncBindError, BindErrors, UnknownBindError, format_key
from .models import bind_key_of

__all__ = ["TableGroups", "check_bind_keys", "run_per_bind", "select_keys", "tables_by_bind"]

#: For each bind key, the metadata objects with tables in that bind and those tables.
TableGroups = dict[BindKey, list[tuple[sa.MetaData, list[sa.Table]]]]


def select_keys(bind_key: object, configured: Iterable[BindKey]) -> list[BindKey]:
    """The bind keys named by ``bind_key``: ``"__all__"``, None, a key, or a list of those."""
    configured = list(configured)
    requested: Iterable[object]
    if isinstance(bind_key, list | tuple | set | frozenset):
        requested = bind_key
    else:
        requested = [bind_key]
    keys: list[BindKey] = []
    for key in requested:
        if key == ALL:
            selected: list[BindKey] = configured
        elif key is None or isinstance(key, str):
            if key not in configured:
                raise UnknownBindError(key, configured, owner="bind_key=")
            selected = [key]
        else:
            raise AsyncBindError(
                f"bind_key={key!r} is a {type(key).__name__}; expected '__all__', None, "
                "a bind key string, or a list of those."
            )
        keys.extend(k for k in selected if k not in keys)
    return keys


def tables_by_bind(
    metadatas: Iterable[sa.MetaData],
    keys: Sequence[BindKey],
    configured: Iterable[BindKey],
    *,
    every_table: bool = True,
) -> TableGroups:
    """Group the tables of ``metadatas`` that belong to ``keys`` by bind.

    Raises :class:`UnknownBindError` if any table names a bind that is not configured; with
    ``every_table=False``, only if a table of ``keys`` does (the others may belong to a bind
    that is added at run time).
    """
    configured = list(configured)
    groups: TableGroups = {key: [] for key in keys}
    for metadata in metadatas:
        per_key: dict[BindKey, list[sa.Table]] = {}
        # In definition order: SQLAlchemy's create_all / drop_all sort the tables they are given
        # by their foreign keys (and ``sorted_tables`` would sort every metadata once more).
        for table in metadata.tables.values():
            key = bind_key_of(table)
            if key not in configured and (every_table or key in groups):
                raise UnknownBindError(key, configured, owner=f"table {table.fullname!r}")
            per_key.setdefault(key, []).append(table)
        for key, tables in per_key.items():
            if key in groups:
                groups[key].append((metadata, tables))
    return groups


def check_bind_keys(metadatas: Iterable[sa.MetaData], configured: Iterable[BindKey]) -> None:
    """Raise :class:`UnknownBindError` if a table of ``metadatas`` names a bind that is not
    configured: what ``create_all()`` checks first when it runs over every bind."""
    tables_by_bind(metadatas, [], configured)


#: The tables' existence is already known from :func:`_find`, so DDL skips asking again table by
#: table (about 10% of a create_all); types, sequences and indexes are still checked (a
#: PostgreSQL enum may already exist).
_CHECK_ALL_BUT_TABLES = sa.CheckFirst.ALL & ~sa.CheckFirst.TABLES


def _find(
    conn: sa.Connection, groups: list[tuple[sa.MetaData, list[sa.Table]]]
) -> Callable[[sa.Table], bool | None]:
    """Whether a table of ``groups`` exists: True, False, or None when only a name differing in
    case exists (MySQL on a case-insensitive file system), which DDL must then check itself.

    One query per schema instead of one per table.
    """
    inspector = sa.inspect(conn)
    names: dict[str | None, set[str]] = {}
    for schema in {conn.schema_for_object(t) for _, tables in groups for t in tables}:
        names[schema] = set(inspector.get_table_names(schema=schema))
    folded = {schema: {n.lower() for n in found} for schema, found in names.items()}

    def exists(table: sa.Table) -> bool | None:
        schema = conn.schema_for_object(table)
        if table.name in names[schema]:
            return True
        return None if table.name.lower() in folded[schema] else False

    return exists


def create_tables(conn: sa.Connection, groups: list[tuple[sa.MetaData, list[sa.Table]]]) -> None:
    """Create the tables of ``groups`` that do not exist yet, in one bind.

    SQLAlchemy's ``create_all`` runs even when every table exists, as ``checkfirst=True`` would:
    its metadata events still fire (with ``tables=[]``) and its standalone sequences are checked.
    """
    exists = _find(conn, groups)
    for metadata, tables in groups:
        found = {t: exists(t) for t in tables}
        missing = [t for t in tables if found[t] is not True]
        unsure = any(found[t] is None for t in missing)
        checkfirst = True if unsure else _CHECK_ALL_BUT_TABLES
        metadata.create_all(conn, tables=missing, checkfirst=checkfirst)


def drop_tables(conn: sa.Connection, groups: list[tuple[sa.MetaData, list[sa.Table]]]) -> None:
    """Drop the tables of ``groups`` that exist, in one bind (SQLAlchemy's ``drop_all`` runs
    even when none does, as in :func:`create_tables`)."""
    exists = _find(conn, groups)
    for metadata, tables in reversed(groups):
        found = {t: exists(t) for t in tables}
        present = [t for t in tables if found[t] is not False]
        unsure = any(found[t] is None for t in present)
        checkfirst = True if unsure else _CHECK_ALL_BUT_TABLES
        metadata.drop_all(conn, tables=present, checkfirst=checkfirst)


async def run_per_bind(
    operation: str,
    engines: Mapping[BindKey, AsyncEngine],
    keys: Sequence[BindKey],
    work: Callable[[BindKey, AsyncEngine], Awaitable[Any]],
) -> None:
    """Run ``work`` for every bind in ``keys`` concurrently, one task per engine.

    A bind that fails does not stop the others; when all are done, :class:`BindErrors` names
    every failed bind and carries its cause.
    """
    errors: dict[BindKey, Exception] = {}

    async def one(key: BindKey) -> None:
        try:
            await work(key, engines[key])
        except Exception as exc:
            errors[key] = exc

    if len(keys) == 1:
        await one(keys[0])
    else:
        async with asyncio.TaskGroup() as group:
            for key in keys:
                group.create_task(one(key), name=f"asyncbind {operation} {format_key(key)}")
    if errors:
        raise BindErrors(operation, {key: errors[key] for key in keys if key in errors})
