"""instructions: what asyncbind adds to a lookup, counted in CPU instructions instead of time.

Timings on a shared 2-vCPU machine vary by several percent from run to run, more than the 1% the
routing target allows. Here the lookups of the ``routing`` suite (``get``, ORM ``select``, Core
``select``, one session each, one after another), and a ``get`` whose session commits before it
closes (``get_commit``), run under valgrind's callgrind, which counts the instructions the
process executes, on a SQLite file: no server, no network timing. Only the
lookups themselves are counted (not start-up, set-up or warm-up). A count still moves by a percent
or two with memory layout: the hash seed, and even the directory the suite runs from, change among
other things which attribute lookups collide in Python's type cache (a miss walks the class's
MRO), and so does the order in which classes were first used (see ``benchmarks/typetags.py``).
So each case runs under six layouts, each a hash seed and a number of classes tagged before
anything is imported, the two sides of a ratio under the same layout, and the ratio shown is the
median of the six.

The lookups are the routing suite's own (``benchmarks/lookups.py``). The ratio is plain /
asyncbind, so 1.00x means asyncbind adds nothing. Needs ``valgrind`` on the PATH; without it the
suite prints "skipped".

``--peers`` also counts the ``get`` lookup made the way sqlalchemy-bind-manager makes it (one
AsyncSession kept per task, closed in place after each lookup: ``per_task``), and through
sqlalchemy-bind-manager's own repository (``bind_manager``, skipped when it is not installed),
and prints each against asyncbind, whose session is made per lookup and closed by ``async with``,
and against asyncbind used the same way (one ``db.session()`` kept per task, closed after each
lookup: ``asyncbind_per_task``).

``--against COMMIT`` also counts asyncbind as it was at ``COMMIT`` (its ``asyncbind`` package,
taken with ``git archive`` into a temporary folder, next to a copy of the current one), with the
same lookups and seeds, and prints both ratios: ``python -m benchmarks instructions --against
edbdd52``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .harness import RESULTS
from .servers import SQLITE

KINDS = ("get", "orm_select", "core_select")
VARIANTS = ("plain", "asyncbind", "asyncbind_per_task", "per_task", "bind_manager")
#: For each hash seed (0, 1, ...), the classes tagged before the run (benchmarks/typetags.py):
#: apart from each other modulo the type cache's 4,096 entries.
TAG_SHIFTS = (0, 700, 1500, 2300, 3100, 3900)
_COLLECTED = re.compile(r"Collected : (\d+)")
_IMPORTED = re.compile(r"asyncbind imported from: (.*)")
#: The folder holding this checkout's ``asyncbind`` and ``benchmarks`` packages.
ROOT = Path(__file__).resolve().parent.parent


def _lookups(variant: str, kind: str, count: int, database: Path) -> None:
    """The child process: set up ``variant``, warm up, then run ``count`` counted lookups."""
    import asyncbind

    from . import lookups, peers

    print(f"asyncbind imported from: {Path(asyncbind.__file__).parent}", file=sys.stderr)
    urls = {SQLITE: sa.make_url(f"sqlite:///{database}")}
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(lookups.fill(urls))
        plain = lookups.PlainSetup(urls)
        ours = lookups.AsyncbindSetup(urls)
        setup: Any = {
            "plain": plain,
            "asyncbind": ours,
            "asyncbind_per_task": peers.AsyncbindPerTaskSetup(ours),
            "per_task": peers.PerTaskSetup(plain),
            "bind_manager": peers.BindManagerSetup(urls) if variant == "bind_manager" else None,
        }[variant]
        op = getattr(setup, kind)(SQLITE)
        loop.run_until_complete(lookups.run_concurrently(op, 100, tasks=1))
        # callgrind counts only what runs inside sys.call_tracing (see _count).
        sys.call_tracing(loop.run_until_complete, (lookups.run_concurrently(op, count, tasks=1),))
        # The per-task variants closed their sessions after each lookup; their engines are
        # plain's and asyncbind's.
        if variant == "bind_manager":
            loop.run_until_complete(setup.dispose())
        loop.run_until_complete(ours.dispose())
        loop.run_until_complete(plain.dispose())
    finally:
        loop.close()


async def _count(variant: str, kind: str, count: int, seed: int, package_root: Path) -> int:
    """Instructions of ``count`` lookups of ``variant``, in a child process under callgrind, with
    ``asyncbind`` imported from ``package_root``, in layout ``seed`` (a hash seed and a shift of
    the class version tags)."""
    with tempfile.TemporaryDirectory(prefix="asyncbind-instructions-") as tmp:
        # Run from the temporary folder, so that the current directory puts no asyncbind first
        # on sys.path: PYTHONPATH decides which one is imported.
        path = os.pathsep.join(dict.fromkeys([str(package_root), str(ROOT)]))
        process = await asyncio.create_subprocess_exec(
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=sys_call_tracing*",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "benchmarks.typetags",
            str(TAG_SHIFTS[seed % len(TAG_SHIFTS)]),
            "benchmarks.instructions",
            variant,
            kind,
            str(count),
            str(Path(tmp) / "lookups.db"),
            cwd=tmp,
            env={**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": path},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await process.communicate()
    text = stderr.decode(errors="replace")
    found = _COLLECTED.search(text)
    if process.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind run of {variant} {kind} failed:\n{text[-2000:]}")
    imported = _IMPORTED.search(text)
    expected = package_root / "asyncbind"
    if imported is None or Path(imported.group(1)) != expected:
        raise RuntimeError(f"callgrind run of {variant} {kind} did not import {expected}:\n{text}")
    return int(found.group(1))


def _export(commit: str, folder: Path) -> str:
    """Extract the ``asyncbind`` package as it is at ``commit`` into ``folder``; its short hash."""

    def git(*args: str) -> bytes:
        return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True).stdout

    short = git("rev-parse", "--short", f"{commit}^{{commit}}").decode().strip()
    archive = folder / "asyncbind.tar"
    archive.write_bytes(git("archive", "--format=tar", short, "asyncbind"))
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    archive.unlink()
    return short


async def main(options: Any) -> None:
    kinds = ("get",) if options.quick or options.peers else KINDS
    seeds = (0,) if options.quick else tuple(range(6))
    count = 100 if options.quick else 250
    title = (
        f"instructions: {count} lookups one after another on SQLite, counted by callgrind, "
        f"layouts {', '.join(map(str, seeds))}"
    )
    baselines = ["plain"]
    ours = ["asyncbind", "asyncbind_per_task"] if options.peers else ["asyncbind"]
    if options.peers:
        baselines.append("per_task")
        if importlib.util.find_spec("sqlalchemy_bind_manager") is not None:
            baselines.append("bind_manager")
        else:
            print("\ninstructions: bind_manager skipped (sqlalchemy-bind-manager is not installed)")
    if shutil.which("valgrind") is None:
        print(f"\n{title}: skipped (valgrind is not installed)")
        return
    with tempfile.TemporaryDirectory(prefix="asyncbind-against-") as folder:
        roots = {name: ROOT for name in (*baselines, *ours)}
        if options.against:
            # Both asyncbinds imported from folders whose paths have the same length, with the
            # same PYTHONPATH shape for every variant: the size of the environment moves the
            # process's memory layout, and with it the counts, by a percent or two.
            here, then = Path(folder) / "here", Path(folder) / "then"
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(ROOT / "asyncbind", here / "asyncbind", ignore=ignore)
            then.mkdir()
            against = _export(options.against, then)
            roots = {name: here for name in (*baselines, *ours)}
            roots[f"asyncbind@{against}"] = then
        per_lookup = await _count_all(roots, kinds, seeds, count)
    print(f"\n{title}")
    _print(per_lookup, list(roots), baselines, kinds, seeds, title)


async def _count_all(
    roots: dict[str, Path], kinds: tuple[str, ...], seeds: tuple[int, ...], count: int
) -> dict[tuple[str, str, int], float]:
    """Instructions per lookup of each variant (a name in ``roots``), kind and seed."""
    slots = asyncio.Semaphore(os.cpu_count() or 1)

    async def one(name: str, kind: str, seed: int) -> float:
        variant = name if name in VARIANTS else "asyncbind"  # asyncbind@<commit>
        async with slots:
            return await _count(variant, kind, count, seed, roots[name]) / count

    jobs = [(name, kind, seed) for kind in kinds for seed in seeds for name in roots]
    return dict(zip(jobs, await asyncio.gather(*(one(*job) for job in jobs)), strict=True))


def _print(
    per_lookup: dict[tuple[str, str, int], float],
    names: list[str],
    baselines: list[str],
    kinds: tuple[str, ...],
    seeds: tuple[int, ...],
    title: str,
) -> None:
    ours = [name for name in names if name not in baselines]  # asyncbind, asyncbind@<commit>
    pairs = [(base, name) for name in ours for base in baselines]
    header = "".join(f" {name:>18}" for name in names)
    ratios_header = "".join(f"  {base + ' / ' + name:>30}" for base, name in pairs)
    print(f"  {'lookup':<12}{header}{ratios_header}")
    table: dict[str, Any] = {"title": title, "cases": []}
    for kind in kinds:
        counts = {name: [per_lookup[name, kind, seed] for seed in seeds] for name in names}
        line = f"  {kind:<12}" + "".join(
            f" {statistics.median(counts[name]):>18,.0f}" for name in names
        )
        case: dict[str, Any] = {"name": kind, "unit": "instr", **counts}
        for base, name in pairs:
            ratios = [b / o for b, o in zip(counts[base], counts[name], strict=True)]
            ratio = f"{statistics.median(ratios):.3f}x"
            if len(ratios) > 1:
                ratio += f" ({min(ratios):.3f}-{max(ratios):.3f})"
            line += f"  {ratio:>30}"
            if base == "plain":
                case["ratios" if name == "asyncbind" else f"ratios {name}"] = ratios
            else:
                case[f"ratios {base} / {name}"] = ratios
        print(line)
        table["cases"].append(case)
    RESULTS.append(table)


if __name__ == "__main__":
    _variant, _kind, _count_text, _database = sys.argv[1:]
    _lookups(_variant, _kind, int(_count_text), Path(_database))
