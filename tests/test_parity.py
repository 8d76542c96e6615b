"""Flask-SQLAlchemy 3.1 parity: what an app ported from Flask-SQLAlchemy's binds set-up relies on.

Each test names the Flask-SQLAlchemy 3.1 behaviour it mirrors (its test, or the code that does it).
Where asyncbind differs on purpose (engine options reach every bind, not only the default one), the
test says so.
"""

from __future__ import annotations

import pytest

from asyncbind import AsyncBind, ConfigError
from asyncbind.exceptions import (
    PoolTimeoutError,
    ReadOnlyBindError,
    StatementTimeoutError,
    UnknownBindError,
    WrongEventLoopError,
)

# -- 8. "the default bind", not "Bind None" ------------------------------------------------------


def test_messages_call_the_default_bind_by_name() -> None:
    errors = [
        ReadOnlyBindError(None, "a flush"),
        StatementTimeoutError(None, 1.5),
        PoolTimeoutError(None, 2),
        WrongEventLoopError(None),
        UnknownBindError(None, ["users"], owner="model 'Item'"),
    ]
    for error in errors:
        assert "Bind None" not in str(error) and "the default bind" in str(error).lower()
    for make in (
        lambda: AsyncBind(""),
        lambda: AsyncBind("nope+x://h/db"),
        lambda: AsyncBind("sqlite://", engine_options={"read_only": True}),
    ):
        with pytest.raises(ConfigError) as info:
            make()
        assert str(info.value).startswith("The default bind: ")
    assert str(ReadOnlyBindError("users", "a flush")).startswith("Bind 'users' is read-only")
