"""Run cases side by side and print medians, ranges and per-repetition ratios.

Each repetition runs every case of a table, so that a case and its baseline are measured moments
apart; a ratio is computed within each repetition and the table shows the median and range of
those ratios. With ``slices``, a repetition is cut into that many rounds in which every case does
its share of the work, the order reversing from one round to the next (ABBA), so that a slow
spell on a shared machine falls on every case alike instead of on whichever ran during it.

A case's docstring (its first line) is what the table prints for it.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Every table printed in this process, for ``--json`` and the plots.
RESULTS: list[dict[str, Any]] = []

SKIPPED_PEER = "skipped (install asyncbind[benchmarks])"
#: How many interleaved rounds the lookup suites cut each full run into.
SLICES = 6


@dataclass
class Case:
    name: str
    doc: str
    fn: Callable[[], Awaitable[float | None]] | None
    vs: tuple[str, ...] = ()
    ratio: str = "speed"
    skip: str | None = None
    combine: tuple[str, ...] = ()
    samples: list[float] = field(default_factory=list)


def doc_of(fn: Callable[..., Any]) -> str:
    text = inspect.getdoc(fn) or fn.__name__
    return text.strip().splitlines()[0]


class Table:
    """Cases measured together; ``ops`` (if given) turns times into a rate per second."""

    def __init__(
        self,
        title: str,
        *,
        repeat: int,
        ops: int | None = None,
        unit: str = "op",
        warmup: bool = True,
        slices: int = 1,
    ) -> None:
        self.title = title
        self.slices = slices
        self.warmup = warmup
        self.repeat = repeat
        self.ops = ops
        self.unit = unit
        self.cases: list[Case] = []

    def case(
        self,
        name: str,
        fn: Callable[[], Awaitable[float | None]] | None,
        *,
        doc: str | None = None,
        vs: Sequence[str] = (),
        ratio: str = "speed",
        skip: str | None = None,
    ) -> None:
        """Add a case. ``fn`` returns the seconds it measured itself, or None to be timed whole;
        with ``slices``, it is called that many times per repetition, each call doing one slice.

        ``vs`` names the baselines it is compared with; ``ratio="speed"`` prints how many times
        as fast as the baseline (baseline time / case time), ``"time"`` the time ratio.
        """
        text = doc or (doc_of(fn) if fn is not None else name)
        self.cases.append(Case(name, text, fn, tuple(vs), ratio, skip))

    def slowest_of(self, name: str, doc: str, names: Sequence[str]) -> None:
        """A derived case: in each repetition, the slowest of ``names``."""
        self.cases.append(Case(name, doc, None, combine=tuple(names)))

    async def run(self) -> None:
        """Run every case ``repeat`` times (after one untimed warm-up pass), then print."""
        if self.warmup:
            for case in self.cases:
                if case.fn is not None and not case.skip:
                    await case.fn()
        runnable = [c for c in self.cases if c.fn is not None and not c.skip]
        for _ in range(self.repeat):
            totals = dict.fromkeys((c.name for c in runnable), 0.0)
            for index in range(self.slices):
                for case in runnable if index % 2 == 0 else reversed(runnable):
                    assert case.fn is not None
                    started = time.perf_counter()
                    measured = await case.fn()
                    totals[case.name] += (
                        measured if measured is not None else time.perf_counter() - started
                    )
            for case in runnable:
                case.samples.append(totals[case.name])
        by_name = {c.name: c for c in self.cases}
        for case in self.cases:
            if case.combine and not case.skip:
                parts = [by_name[n].samples for n in case.combine if by_name[n].samples]
                case.samples = [max(values) for values in zip(*parts, strict=False)]
        self.print()

    def ratios(self, case: Case, baseline: Case) -> list[float]:
        pairs = zip(case.samples, baseline.samples, strict=False)
        if case.ratio == "speed":
            return [b / c for c, b in pairs if c > 0]
        return [c / b for c, b in pairs if b > 0]

    def print(self) -> None:
        by_name = {c.name: c for c in self.cases}
        width = max(len(c.doc) for c in self.cases)
        print(f"\n{self.title}")
        rate_head = f"{self.unit}s/s" if self.ops else ""
        print(f"  {'case':<{width}}  {'median':>9}  {'min - max':>17}  {rate_head:>9}  ratios")
        table: dict[str, Any] = {"title": self.title, "ops": self.ops, "cases": []}
        for case in self.cases:
            if case.skip:
                print(f"  {case.doc:<{width}}  {case.skip}")
                table["cases"].append({"name": case.name, "doc": case.doc, "skip": case.skip})
                continue
            if not case.samples:
                continue
            median = statistics.median(case.samples)
            low, high = min(case.samples), max(case.samples)
            rate = f"{self.ops / median:>9.0f}" if self.ops else " " * 9
            parts = []
            entry: dict[str, Any] = {
                "name": case.name,
                "doc": case.doc,
                "median_s": median,
                "min_s": low,
                "max_s": high,
                "ratios": {},
            }
            for other in case.vs:
                baseline = by_name.get(other)
                if baseline is None or baseline.skip or not baseline.samples:
                    continue
                values = self.ratios(case, baseline)
                if not values:
                    continue
                word = "x" if case.ratio == "speed" else "x the time of"
                parts.append(
                    f"{statistics.median(values):.2f}{word} "
                    f"({min(values):.2f}-{max(values):.2f}) vs {other}"
                )
                entry["ratios"][other] = {
                    "kind": case.ratio,
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                }
            print(
                f"  {case.doc:<{width}}  {_seconds(median):>9}  "
                f"{_seconds(low):>8}-{_seconds(high):<8}  {rate}  {'; '.join(parts)}"
            )
            table["cases"].append(entry)
        RESULTS.append(table)


def _seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f}s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f}ms"
    return f"{value * 1e6:.0f}us"
