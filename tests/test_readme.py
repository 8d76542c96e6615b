"""The README's first example runs as written."""

from __future__ import annotations

from pathlib import Path

from readmeblocks import python_block, run_python


def test_first_example_runs(tmp_path: Path) -> None:
    result = run_python(python_block(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ada [1]"
    assert {p.name for p in tmp_path.iterdir()} == {"main.db", "users.db"}
