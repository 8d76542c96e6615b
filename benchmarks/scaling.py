"""scaling: throughput and client CPU per lookup at 1, 8, 32 and 128 concurrent tasks.

PostgreSQL primary-key lookups (one session per lookup, pool of 16) through asyncbind, a plain
AsyncSession and raw asyncpg; then the memory of an open session. ``--plot FILE.png`` draws
throughput and CPU per lookup against the number of tasks (needs matplotlib).
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from typing import Any

from . import lookups
from .harness import RESULTS, SKIPPED_PEER
from .servers import POSTGRESQL, databases, unreachable

LEVELS = (1, 8, 32, 128)
SERIES = ("asyncbind", "plain AsyncSession", "raw asyncpg")
SESSIONS = 1_000


async def main(options: Any) -> None:
    count = 200 if options.quick else 2_000
    repeat = options.repeat or (2 if options.quick else 5)
    reason = await unreachable(POSTGRESQL)
    if reason:
        print(f"\nscaling: skipped ({reason})")
        return
    async with databases("scaling", POSTGRESQL) as urls:
        await lookups.fill(urls)
        ours, plain, raw = (
            lookups.AsyncbindSetup(urls),
            lookups.PlainSetup(urls),
            lookups.RawSetup(urls),
        )
        await raw.start()
        ops = {
            "asyncbind": ours.get(POSTGRESQL),
            "plain AsyncSession": plain.get(POSTGRESQL),
            "raw asyncpg": raw.get(POSTGRESQL),
        }
        results: dict[str, dict[int, dict[str, float]]] = {s: {} for s in SERIES}
        try:
            for op in ops.values():  # warm the pools
                await lookups.run_concurrently(op, lookups.POOL * 4, lookups.POOL)
            print(
                f"\nscaling: PostgreSQL lookups, {count} per run, pool of {lookups.POOL}, "
                f"{repeat} runs; lookups/s and client CPU per lookup (medians)"
            )
            header = "".join(f"  {s:>28}" for s in SERIES)
            print(f"  {'tasks':>5}{header}  asyncbind / plain")
            for tasks in LEVELS:
                samples: dict[str, list[tuple[float, float]]] = {s: [] for s in SERIES}
                for _ in range(repeat):
                    for series, op in ops.items():
                        gc.collect()
                        wall, cpu = time.perf_counter(), time.process_time()
                        await lookups.run_concurrently(op, count, tasks)
                        samples[series].append(
                            (time.perf_counter() - wall, time.process_time() - cpu)
                        )
                line = f"  {tasks:>5}"
                for series in SERIES:
                    walls = [w for w, _ in samples[series]]
                    cpus = [c for _, c in samples[series]]
                    rate = count / statistics.median(walls)
                    cpu_us = statistics.median(cpus) / count * 1e6
                    results[series][tasks] = {"per_second": rate, "cpu_us": cpu_us}
                    line += f"  {rate:>10.0f}/s {cpu_us:>8.0f} us CPU"
                ratio = statistics.median(
                    p / a
                    for (a, _), (p, _) in zip(
                        samples["asyncbind"], samples["plain AsyncSession"], strict=False
                    )
                )
                print(f"{line}  {ratio:.2f}x")
            RESULTS.append({"title": "scaling", "series": results})
            await _session_memory(ours, plain)
            if options.plot:
                _plot(results, options.plot, count)
        finally:
            await ours.dispose()
            await plain.dispose()
            await raw.dispose()


async def _session_memory(ours: lookups.AsyncbindSetup, plain: lookups.PlainSetup) -> None:
    print(f"\nscaling: memory per open session ({SESSIONS:,} sessions held at once, tracemalloc)")
    for name, factory in (
        ("asyncbind db.session()", ours.db.session),
        ("plain async_sessionmaker()", plain.sessions[POSTGRESQL]),
    ):
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            sessions = [factory() for _ in range(SESSIONS)]
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        for session in sessions:
            await session.close()
        del sessions
        print(f"  {name:<28} {held / SESSIONS / 1024:6.2f} KiB per session")


def _plot(results: dict[str, dict[int, dict[str, float]]], path: str, count: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"  plot: {SKIPPED_PEER}")
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for series, points in results.items():
        levels = sorted(points)
        left.plot(levels, [points[n]["per_second"] for n in levels], marker="o", label=series)
        right.plot(levels, [points[n]["cpu_us"] for n in levels], marker="o", label=series)
    for axis, label in ((left, "lookups per second"), (right, "client CPU per lookup (us)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(list(LEVELS), [str(n) for n in LEVELS])
        axis.set_xlabel("concurrent tasks (pool of 16)")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    left.legend()
    figure.suptitle(f"PostgreSQL primary-key lookups, one session each ({count} per run)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"  plot written to {path}")
