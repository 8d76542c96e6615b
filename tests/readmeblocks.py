"""The README's Python code blocks, for the tests that run them as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"

_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_block(*headings: str) -> str:
    """The first Python code block of the README's section under ``headings``, each looked for
    inside the section of the one before (``"## Frameworks", "### Workers and scripts"``); with
    no headings, the README's first block."""
    text = README.read_text()
    for heading in headings:
        start = text.index(f"\n{heading}\n")
        level = len(heading) - len(heading.lstrip("#"))
        end = re.compile(rf"\n#{{1,{level}}} ").search(text, start + len(heading) + 1)
        text = text[start : end.start() if end else len(text)]
    code = _BLOCK.search(text)
    assert code is not None, f"no Python block under {' / '.join(headings) or 'README.md'}"
    return code.group(1)


def run_python(code: str, cwd: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with this interpreter (and its ``options``) in a process of its own, in
    ``cwd``, as a user would run the example."""
    return subprocess.run(
        [sys.executable, *options, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
