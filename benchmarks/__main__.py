"""``python -m benchmarks <suite> [--quick]``: see ``benchmarks/__init__.py``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time

from . import SUITES
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
    return parser.parse_args(argv)


async def run(options: argparse.Namespace) -> None:
    names = list(SUITES) if options.suite == "all" else [options.suite]
    await print_header(", ".join(names), options.quick)
    for name in names:
        module = importlib.import_module(f".{name}", __package__)
        started = time.perf_counter()
        await module.main(options)
        print(f"({name}: {time.perf_counter() - started:.1f}s)")


def main(argv: list[str] | None = None) -> None:
    options = parse(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    asyncio.run(run(options))
    print(f"\ntotal: {time.perf_counter() - started:.1f}s")
    if options.json:
        with open(options.json, "w", encoding="utf-8") as file:
            json.dump(RESULTS, file, indent=1)


main()
