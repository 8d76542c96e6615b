"""scaling: lookups at 1 to 128 concurrent tasks, and routing's cost at 1 to 100 binds and 10 and
1,000 models.

PostgreSQL primary-key lookups (one session per lookup, pool of 16) through asyncbind, a plain
AsyncSession and raw asyncpg: throughput and client CPU per lookup against the number of tasks;
then the memory of an open session. Then routing alone, in CPU time per statement, against the
number of binds and of models (``benchmarks/routingscale.py``; no server needed). ``--plot
FILE.png`` draws both, each ratio on an axis of its own (needs matplotlib).
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from typing import Any

from . import lookups, routingscale
from .harness import RESULTS, SKIPPED_PEER
from .servers import POSTGRESQL, databases, unreachable

LEVELS = (1, 8, 32, 128)
SERIES = ("asyncbind", "plain AsyncSession", "raw asyncpg")
SESSIONS = 1_000


#: Routing questions per run of the routing curves.
CALLS = 20_000

Tasks = dict[str, dict[int, dict[str, Any]]]


async def main(options: Any) -> None:
    count = 200 if options.quick else 2_000
    repeat = options.repeat or (2 if options.quick else 5)
    tasks: Tasks | None = None
    reason = await unreachable(POSTGRESQL)
    if reason:
        print(f"\nscaling: lookups skipped ({reason})")
    else:
        tasks = await _lookups(count, repeat)
    calls = CALLS // 10 if options.quick else CALLS
    routes = await _routing(calls, repeat)
    if options.plot:
        _plot(tasks, routes, options.plot, count, calls, repeat)


async def _routing(calls: int, repeat: int) -> dict[tuple[int, int], dict[str, list[float]]]:
    print(
        f"\nscaling: routing alone, {calls:,} statements per run, {repeat} runs, CPU ns per "
        "statement (medians); asyncbind / plain Session(binds=...) per run"
    )
    results = await routingscale.measure(calls, repeat)
    print(f"  {'binds':>5}  {'models':>6}  {'asyncbind':>10}  {'plain':>10}  asyncbind / plain")
    table: dict[str, Any] = {"title": "scaling: routing", "calls": calls, "cases": []}
    for (binds, models), samples in results.items():
        ours, plain, ratios = routingscale.summary(samples)
        print(
            f"  {binds:>5}  {models:>6}  {ours:>8.0f}ns  {plain:>8.0f}ns  "
            f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        )
        table["cases"].append({"binds": binds, "models": models, **samples})
    RESULTS.append(table)
    return results


async def _lookups(count: int, repeat: int) -> Tasks:
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
        results: Tasks = {s: {} for s in SERIES}
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
                ratios = [
                    p / a
                    for (a, _), (p, _) in zip(
                        samples["asyncbind"], samples["plain AsyncSession"], strict=True
                    )
                ]
                results["asyncbind"][tasks]["ratios"] = ratios
                print(f"{line}  {statistics.median(ratios):.2f}x")
            RESULTS.append({"title": "scaling", "series": results})
            await _session_memory(ours, plain)
            return results
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


def _plot(
    tasks: Tasks | None,
    routes: dict[tuple[int, int], dict[str, list[float]]],
    path: str,
    count: int,
    calls: int,
    repeat: int,
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"  plot: {SKIPPED_PEER}")
        return
    figure, ((rate, rate_ratio), (cost, cost_ratio)) = plt.subplots(2, 2, figsize=(12, 8.5))
    if tasks is not None:
        for series, points in tasks.items():
            levels = sorted(points)
            rate.plot(levels, [points[n]["per_second"] for n in levels], marker="o", label=series)
        ours = tasks["asyncbind"]
        levels = sorted(ours)
        _ratio_line(rate_ratio, levels, [ours[n]["ratios"] for n in levels], "asyncbind / plain")
        for axis in (rate, rate_ratio):
            axis.set_xscale("log", base=2)
            axis.set_xticks(list(LEVELS), [str(n) for n in LEVELS])
            axis.set_xlabel("concurrent tasks (pool of 16)")
        rate.set_ylabel("lookups per second")
        rate.legend()
        rate_ratio.set_ylabel("throughput, asyncbind / plain")
        rate.set_title(
            f"PostgreSQL primary-key lookups, one session each:\n{count:,} per run, {repeat} runs, "
            "medians",
            fontsize=9,
        )
        rate_ratio.set_title(
            "same runs: asyncbind / plain AsyncSession per run\n(median, min-max)", fontsize=9
        )
    else:
        rate.set_title("PostgreSQL lookups: skipped (server not reachable)", fontsize=9)
    binds = list(routingscale.BINDS)
    for models, style, color in zip(routingscale.MODELS, "os", ("C0", "C1"), strict=True):
        runs = [routes[b, models] for b in binds]
        for name, line in (("asyncbind", "-"), ("plain", "--")):
            who = "asyncbind" if name == "asyncbind" else "plain Session(binds=...)"
            medians = [statistics.median(r[name]) / 1000 for r in runs]
            cost.plot(
                binds, medians, line, marker=style, color=color, label=f"{who}, {models:,} models"
            )
        ratios = [routingscale.summary(r)[2] for r in runs]
        _ratio_line(cost_ratio, binds, ratios, f"{models:,} models", marker=style, color=color)
    for axis in (cost, cost_ratio):
        axis.set_xscale("log")
        axis.set_xticks(binds, [str(b) for b in binds])
        axis.set_xlabel("binds (models spread over them)")
    top = max(statistics.median(r[n]) for r in routes.values() for n in ("asyncbind", "plain"))
    cost.set_ylim(0, top / 1000 * 1.5)  # room for the legend above the lines
    cost.set_ylabel("routing CPU per statement (us)")
    cost.legend(fontsize=8, loc="upper center", ncol=2)
    cost.set_title(
        f"routing alone: {calls:,} statements per run, {repeat} runs, medians\n"
        "(each model's ORM select, then its Core select, in turn)",
        fontsize=9,
    )
    cost_ratio.set_ylabel("routing CPU, asyncbind / plain")
    cost_ratio.set_title(
        "same runs: asyncbind / plain Session(binds=...) per run\n"
        "(median, min-max; below 1: asyncbind routes faster)",
        fontsize=9,
    )
    cost_ratio.legend(fontsize=8)
    for axis in (rate, rate_ratio, cost, cost_ratio):
        axis.grid(True, alpha=0.3)
    figure.suptitle("asyncbind scaling: concurrent tasks (top), binds and models (bottom)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"  plot written to {path}")


def _ratio_line(
    axis: Any,
    xs: list[int],
    ratios: list[list[float]],
    label: str,
    marker: str = "o",
    color: str = "C0",
) -> None:
    """Median ratio per point with its min-max as error bars, and the 1.0 line."""
    medians = [statistics.median(r) for r in ratios]
    below = [m - min(r) for m, r in zip(medians, ratios, strict=True)]
    above = [max(r) - m for m, r in zip(medians, ratios, strict=True)]
    axis.errorbar(
        xs, medians, yerr=[below, above], marker=marker, color=color, capsize=4, label=label
    )
    axis.axhline(1.0, color="grey", linewidth=1)
