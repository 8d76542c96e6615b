"""The command line's copy progress: a bar on a terminal, plain lines elsewhere, and the source's
row count estimate that the ETA comes from."""

from __future__ import annotations

import time
from typing import Any, TextIO

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from .bulk import CopyProgress

__all__ = ["ProgressReport", "estimate_rows"]


async def estimate_rows(engine: AsyncEngine, table: sa.Table) -> int | None:
    """About how many rows ``table`` holds, from the database's statistics where it keeps them
    (SQLite: ``count(*)``); None when it cannot tell. Never raises."""
    backend = engine.dialect.name
    if backend == "postgresql":
        quoted = engine.dialect.identifier_preparer.format_table(table)
        query: sa.Executable = sa.text(
            "SELECT reltuples FROM pg_class WHERE oid = to_regclass(:name)"
        )
        params: dict[str, Any] = {"name": quoted}
    elif backend in ("mysql", "mariadb"):
        query = sa.text(
            "SELECT TABLE_ROWS FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :name"
        )
        params = {"schema": table.schema, "name": table.name}
    elif backend == "sqlite":
        query, params = sa.select(sa.func.count()).select_from(table), {}
    else:
        return None
    try:
        async with engine.connect() as conn:
            rows = await conn.scalar(query, params)
    except Exception:  # no estimate is no ETA, not a failed copy
        return None
    # PostgreSQL says -1 for a table that was never analysed.
    return int(rows) if rows is not None and rows >= 0 else None


class ProgressReport:
    """``on_progress`` for the copy: a bar redrawn in place on a terminal, else a line at most
    about once a second (and the first)."""

    _WIDTH = 24

    def __init__(self, stream: TextIO, total: int | None) -> None:
        self.stream = stream
        self.total = total
        self.live = stream.isatty()
        self.drawn = False
        self.last: float | None = None

    def __call__(self, progress: CopyProgress) -> None:
        if self.live:
            self.stream.write(f"\r{self._bar(progress)}\x1b[K")
            self.stream.flush()
            self.drawn = True
            return
        now = time.monotonic()
        if self.last is None or now - self.last >= 1.0:
            self.last = now
            self.stream.write(f"progress: {self._text(progress)}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()

    def _eta(self, progress: CopyProgress) -> str | None:
        rate = progress.rows_per_second
        if self.total is None or rate <= 0 or progress.rows >= self.total:
            return None
        seconds = round((self.total - progress.rows) / rate)
        return f"{seconds // 60}:{seconds % 60:02d}"

    def _text(self, progress: CopyProgress) -> str:
        text = f"{progress.rows:,} rows"
        if self.total is not None:
            text += f" of about {self.total:,}"
        batches = f"{progress.batches} batch" + ("es" if progress.batches != 1 else "")
        text += f", {batches}, {progress.rows_per_second:,.0f} rows/s"
        eta = self._eta(progress)
        return text + (f", ETA {eta}" if eta else "")

    def _bar(self, progress: CopyProgress) -> str:
        if self.total:
            done = min(progress.rows / self.total, 1.0)
            filled = round(done * self._WIDTH)
            bar = f"[{'#' * filled}{'.' * (self._WIDTH - filled)}] {done:4.0%} "
        else:
            bar = ""
        eta = self._eta(progress)
        rate = f"{progress.rows_per_second:,.0f} rows/s"
        return f"{bar}{progress.rows:,} rows  {rate}" + (f"  ETA {eta}" if eta else "")
