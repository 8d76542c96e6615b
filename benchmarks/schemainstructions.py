"""The client's instructions for ``create_all`` / ``drop_all`` of the schema suite's tables on its
3 binds (PostgreSQL, MariaDB, SQLite), asyncbind's or the raw drivers', counted by callgrind.

Not a suite: run it under valgrind, which counts only what runs inside ``sys.call_tracing`` (the
counted calls; set-up, warm-up and the opposite verb between them are not counted)::

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect='sys_call_tracing*' \\
        --callgrind-out-file=/dev/null python -m benchmarks.schemainstructions asyncbind drop_all 3

and read "Collected" (instructions of the counted calls, both threads: aiosqlite's thread too).
The servers' instructions are not the client's and are not counted. ``PYTHONPATH`` chooses which
``asyncbind`` is measured; the line "asyncbind imported from" says which one was. Counts move by
a percent or two with the hash seed (``PYTHONHASHSEED``) and with how the event loop's waits
fall, so compare a few seeds.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import asyncbind
from asyncbind import AsyncBind

from .schema import RawDDL, ddl, define_tables
from .servers import DRIVERS, MYSQL, POSTGRESQL, SQLITE, databases, with_driver

VERBS = ("create_all", "drop_all")


def main(who: str, verb: str, count: int) -> None:
    print(f"asyncbind imported from: {Path(asyncbind.__file__).parent}", file=sys.stderr)
    backends = [POSTGRESQL, MYSQL, SQLITE]
    loop = asyncio.new_event_loop()
    run = loop.run_until_complete
    made = databases("schemainstructions", *backends)
    urls = run(made.__aenter__())
    try:
        keys = {POSTGRESQL: "pg", MYSQL: "my", SQLITE: "lite"}
        db = AsyncBind(binds={keys[b]: urls[b] for b in backends})
        statements: dict[str, dict[str, list[str]]] = {verb: {} for verb in VERBS}
        for backend in backends:
            key = keys[backend]
            define_tables(lambda name, *cols, key=key: db.Table(name, *cols, bind_key=key), "t")
            metadata = sa.MetaData()
            define_tables(lambda name, *cols, m=metadata: sa.Table(name, m, *cols), "t")
            engine = create_async_engine(with_driver(urls[backend], DRIVERS[backend]))
            for each in VERBS:
                statements[each][backend] = ddl(metadata, engine.sync_engine.dialect, each)
            run(engine.dispose())
        raw = RawDDL(urls, statements)
        run(raw.open())

        def raw_verb(each: str) -> Callable[[], Awaitable[None]]:
            async def together() -> None:
                await asyncio.gather(*(raw.run(each, b) for b in backends))

            return together

        ops: dict[str, Callable[[], Awaitable[None]]]
        if who == "asyncbind":
            ops = {"create_all": db.create_all, "drop_all": db.drop_all}
        else:
            ops = {each: raw_verb(each) for each in VERBS}
        try:
            run(ops["create_all"]())  # warm-up: connections, the dialects' first queries
            run(ops["drop_all"]())
            for _ in range(count):
                if verb == "drop_all":
                    run(ops["create_all"]())
                sys.call_tracing(run, (ops[verb](),))
                if verb == "create_all":
                    run(ops["drop_all"]())
        finally:
            run(raw.close())
            run(db.dispose())
    finally:
        run(made.__aexit__(None, None, None))
        loop.close()


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("asyncbind", "raw") or sys.argv[2] not in VERBS:
        raise SystemExit(
            "usage: python -m benchmarks.schemainstructions asyncbind|raw create_all|drop_all N"
        )
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
