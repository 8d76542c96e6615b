"""The command line's copy progress: the bar on a terminal (lines elsewhere and the estimates are
tested through the command, in test_cli.py)."""

from __future__ import annotations

import io

from asyncbind.bulk import CopyProgress
from asyncbind.copyprogress import ProgressReport


def test_the_progress_bar_on_a_terminal() -> None:
    """On a terminal the copy redraws one line: bar, rows, rows/s and the ETA from the estimate."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    report = ProgressReport(screen, total=1000)
    report(CopyProgress(rows=250, batches=1, batch_rows=250, seconds=1.0))
    report(CopyProgress(rows=500, batches=2, batch_rows=250, seconds=2.0))
    report.close()
    first, second = screen.getvalue().split("\r")[1:]
    assert first.startswith("[######..................]  25% 250 rows  250 rows/s  ETA 0:03")
    assert second.startswith("[############............]  50% 500 rows  250 rows/s  ETA 0:02")
    assert screen.getvalue().endswith("\n")
