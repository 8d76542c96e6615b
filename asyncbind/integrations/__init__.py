"""Framework integrations: :mod:`.quart`, :mod:`.starlette`, :mod:`.fastapi`, and :mod:`.arq` for
arq's job workers.

Each module imports its framework; this package and the rest of asyncbind import none, so
``import asyncbind`` works with no framework installed.

Importing this package (``import asyncbind`` does) registers with the facade how
``db.init_app(app)`` sets up a Quart app (see :func:`asyncbind.core.add_app_setup`); the Quart
integration itself is imported on the first ``init_app`` of a Quart app.
"""

from __future__ import annotations

import sys
from typing import Any

from ..core import AsyncBind, add_app_setup

__all__ = ["setup_quart_app"]


def setup_quart_app(db: AsyncBind, app: Any) -> bool:
    """``db.init_app(app)`` for a Quart ``app``; False for anything else."""
    quart = sys.modules.get("quart")  # an app of a framework that was never imported is not one
    if quart is None or not isinstance(app, quart.Quart):
        return False
    from .quart import init_app

    init_app(db, app)
    return True


add_app_setup(setup_quart_app)
