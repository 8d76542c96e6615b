"""The README's code blocks marked ``<!-- mypy: strict -->`` pass ``mypy --strict``, as users'
typed code would, and every code block of the Frameworks section says whether it is checked (and
why not, if not). The view helpers' types are checked the same way."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# A marker is an HTML comment on the line just above the block's fence.
BLOCK = re.compile(r"(?:<!-- mypy: (?P<marker>[^\n]*?) -->\n)?```python\n(?P<code>.*?)```", re.S)


def blocks(text: str) -> list[tuple[int, str | None, str]]:
    """Every Python block of ``text``: the line of its fence, its marker (None if it has none),
    its code."""
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code"))
        found.append((line, match.group("marker"), match.group("code")))
    return found


def frameworks_section(text: str) -> tuple[int, str]:
    start = text.index("\n## Frameworks\n")
    end = text.index("\n## ", start + 1)
    return text.count("\n", 0, start), text[start:end]


def test_every_frameworks_block_says_whether_it_is_checked() -> None:
    offset, section = frameworks_section(README.read_text())
    found = blocks(section)
    assert len(found) >= 8
    for line, marker, _ in found:
        where = f"README.md line {offset + line}"
        assert marker is not None, f"{where}: no '<!-- mypy: ... -->' above the block"
        assert marker == "strict" or re.fullmatch(r"skip, \S.{10,}", marker), (
            f"{where}: the marker is 'strict' or 'skip, <why it is not checked>', not {marker!r}"
        )
    assert sum(marker == "strict" for _, marker, _ in found) >= 5


def mypy_strict(files: list[str]) -> None:
    """Run ``mypy --strict`` on ``files`` and assert that it finds nothing."""
    if importlib.util.find_spec("mypy") is None:
        message = "mypy is not installed (pip install -e '.[dev]')"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    # This checkout's asyncbind, whatever the environment has installed; the project's mypy
    # settings (pyproject.toml in the working directory), with --strict spelled out.
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *files],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    noun = "source file" if len(files) == 1 else "source files"
    assert f"no issues found in {len(files)} {noun}" in done.stdout


def test_marked_blocks_pass_mypy_strict(tmp_path: Path) -> None:
    files = []
    for line, marker, code in blocks(README.read_text()):
        if marker == "strict":
            path = tmp_path / f"readme_line_{line}.py"
            path.write_text(code)
            files.append(str(path))
    assert len(files) >= 5
    mypy_strict(files)


VIEW_HELPERS = """
from typing import Any, assert_type

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from asyncbind import AsyncBind, AsyncBindSession, BindKeyMixin, Pagination

class Base(BindKeyMixin, DeclarativeBase):
    pass

db = AsyncBind("sqlite://", binds={"users": "sqlite://"}, model_class=Base)

class User(Base):
    __bind_key__ = "users"
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]

async def helpers(session: AsyncBindSession) -> None:
    # Items and results are the first column, typed as it is, with one column or several.
    several = sa.select(User.id, User.name).order_by(User.id)
    assert_type(await session.paginate(several), Pagination[int])
    assert_type((await session.paginate(several)).items, list[int])
    assert_type(await db.paginate(sa.select(User.name, User.id)), Pagination[str])
    assert_type(await db.session.paginate(sa.select(User)), Pagination[User])
    assert_type(await session.first_or_404(several), int)
    assert_type(await session.one_or_404(sa.select(User.name, User.id)), str)
    assert_type(await db.first_or_404(several), int)
    assert_type(await db.one_or_404(sa.select(User)), User)
    assert_type(await db.session.first_or_404(several), int)
    assert_type(await session.first_or_404(sa.text("SELECT 1")), Any)
"""


def test_the_view_helpers_type_selects_of_one_column_or_several(tmp_path: Path) -> None:
    path = tmp_path / "view_helpers.py"
    path.write_text(VIEW_HELPERS)
    mypy_strict([str(path)])
