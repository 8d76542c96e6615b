"""instructions: what asyncbind adds to a lookup, counted in CPU instructions instead of time.

Timings on a shared 2-vCPU machine vary by several percent from run to run, more than the 1% the
routing target allows. Here the lookups of the ``routing`` suite (``get``, ORM ``select``, Core
``select``, one session each, one after another) run under valgrind's callgrind, which counts the
instructions the process executes, on a SQLite file: no server, no network timing. Only the
lookups themselves are counted (not start-up, set-up or warm-up). A count still moves by a percent
or two with memory layout: the hash seed, and even the directory the suite runs from, change among
other things which attribute lookups collide in Python's type cache (a miss walks the class's
MRO). So each case runs under six hash seeds, the two sides of a ratio under the same seed, and
the ratio shown is the median of the six.

The lookups are the routing suite's own (``benchmarks/lookups.py``). The ratio is plain /
asyncbind, so 1.00x means asyncbind adds nothing. Needs ``valgrind`` on the PATH; without it the
suite prints "skipped".
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .harness import RESULTS
from .servers import SQLITE

KINDS = ("get", "orm_select", "core_select")
VARIANTS = ("plain", "asyncbind")
_COLLECTED = re.compile(r"Collected : (\d+)")


def _lookups(variant: str, kind: str, count: int, database: Path) -> None:
    """The child process: set up ``variant``, warm up, then run ``count`` counted lookups."""
    from . import lookups

    urls = {SQLITE: sa.make_url(f"sqlite:///{database}")}
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(lookups.fill(urls))
        setup: Any = (
            lookups.AsyncbindSetup(urls) if variant == "asyncbind" else lookups.PlainSetup(urls)
        )
        op = getattr(setup, kind)(SQLITE)
        loop.run_until_complete(lookups.run_concurrently(op, 100, tasks=1))
        # callgrind counts only what runs inside sys.call_tracing (see _count).
        sys.call_tracing(loop.run_until_complete, (lookups.run_concurrently(op, count, tasks=1),))
        loop.run_until_complete(setup.dispose())
    finally:
        loop.close()


async def _count(variant: str, kind: str, count: int, seed: int) -> int:
    """Instructions of ``count`` lookups of ``variant``, in a child process under callgrind."""
    with tempfile.TemporaryDirectory(prefix="asyncbind-instructions-") as tmp:
        process = await asyncio.create_subprocess_exec(
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=sys_call_tracing*",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "benchmarks.instructions",
            variant,
            kind,
            str(count),
            str(Path(tmp) / "lookups.db"),
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await process.communicate()
    text = stderr.decode(errors="replace")
    found = _COLLECTED.search(text)
    if process.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run of {variant} {kind} failed:\n{text[-2000:]}")
    return int(found.group(1))


async def main(options: Any) -> None:
    kinds = ("get",) if options.quick else KINDS
    seeds = (0,) if options.quick else tuple(range(6))
    count = 100 if options.quick else 250
    title = (
        f"instructions: {count} lookups one after another on SQLite, counted by callgrind, "
        f"hash seeds {', '.join(map(str, seeds))}"
    )
    if shutil.which("valgrind") is None:
        print(f"\n{title}: skipped (valgrind is not installed)")
        return
    slots = asyncio.Semaphore(os.cpu_count() or 1)

    async def one(variant: str, kind: str, seed: int) -> float:
        async with slots:
            return await _count(variant, kind, count, seed) / count

    jobs = [(variant, kind, seed) for kind in kinds for seed in seeds for variant in VARIANTS]
    per_lookup = dict(zip(jobs, await asyncio.gather(*(one(*job) for job in jobs)), strict=True))
    print(f"\n{title}")
    print(f"  {'lookup':<12} {'plain':>12} {'asyncbind':>12}  plain / asyncbind")
    table: dict[str, Any] = {"title": title, "cases": []}
    for kind in kinds:
        plain = [per_lookup["plain", kind, seed] for seed in seeds]
        ours = [per_lookup["asyncbind", kind, seed] for seed in seeds]
        ratios = [p / o for p, o in zip(plain, ours, strict=True)]
        ratio = f"{statistics.median(ratios):.3f}x"
        if len(ratios) > 1:
            ratio += f" ({min(ratios):.3f}-{max(ratios):.3f})"
        print(
            f"  {kind:<12} {statistics.median(plain):>12,.0f} {statistics.median(ours):>12,.0f}"
            f"  {ratio}"
        )
        table["cases"].append(
            {"name": kind, "plain": plain, "asyncbind": ours, "ratios": ratios, "unit": "instr"}
        )
    RESULTS.append(table)


if __name__ == "__main__":
    _variant, _kind, _count_text, _database = sys.argv[1:]
    _lookups(_variant, _kind, int(_count_text), Path(_database))
