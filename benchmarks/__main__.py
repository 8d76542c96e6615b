"""``python -m benchmarks <suite> [--quick]``: see ``benchmarks/__init__.py``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time

from . import SUITES, soak
from .harness import RESULTS
from .servers import print_header


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="asyncbind benchmarks against raw drivers, plain SQLAlchemy and peers.",
    )
    parser.add_argument("suite", choices=[*SUITES, "all"], help="which suite to run")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few runs (a smoke check)"
    )
    parser.add_argument("--repeat", type=int, default=0, help="runs per case (default: per suite)")
    parser.add_argument("--plot", metavar="FILE.png", help="scaling: draw the curves to FILE.png")
    parser.add_argument("--json", metavar="FILE", help="also write every table to FILE as JSON")
    parser.add_argument(
        "--against",
        metavar="COMMIT",
        help="instructions: also count asyncbind as it was at COMMIT, in the same run",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="instructions: also count the get lookup with a session kept per task, as "
        "sqlalchemy-bind-manager keeps one, and through sqlalchemy-bind-manager",
    )
    soak.add_arguments(parser.add_argument_group("soak"))
    return parser.parse_args(argv)


async def run(options: argparse.Namespace) -> list[tuple[int, str]]:
    """Run the suites; the verdicts of those that give one (exit status, last line)."""
    names = list(SUITES) if options.suite == "all" else [options.suite]
    await print_header(", ".join(names), options.quick)
    verdicts = []
    for name in names:
        module = importlib.import_module(f".{name}", __package__)
        started = time.perf_counter()
        verdict = await module.main(options)
        if verdict is not None:
            verdicts.append(verdict)
        print(f"({name}: {time.perf_counter() - started:.1f}s)")
    return verdicts


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    verdicts = asyncio.run(run(options))
    print(f"\ntotal: {time.perf_counter() - started:.1f}s")
    if options.json:
        with open(options.json, "w", encoding="utf-8") as file:
            json.dump(RESULTS, file, indent=1)
    # A verdict (the soak's: was an acknowledged row lost?) is the run's last line.
    for _, line in verdicts:
        print(line)
    return max((status for status, _ in verdicts), default=0)


sys.exit(main())
