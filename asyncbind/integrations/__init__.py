"""Framework integrations: :mod:`.quart`, :mod:`.starlette`, :mod:`.fastapi`.

Each module imports its framework; this package and the rest of asyncbind import none, so
``import asyncbind`` works with no framework installed.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigError

if TYPE_CHECKING:
    from ..core import AsyncBind

__all__ = ["init_app"]


def init_app(db: AsyncBind, app: Any) -> None:
    """``db.init_app(app)``: set ``db`` up for ``app``, a Quart app."""
    quart = sys.modules.get("quart")  # an app of a framework that was never imported is not one
    if quart is not None and isinstance(app, quart.Quart):
        from .quart import init_app as init_quart

        init_quart(db, app)
        return
    raise ConfigError(
        f"init_app() sets up a Quart app, not a {type(app).__module__}.{type(app).__qualname__}. "
        "For Starlette use 'Starlette(lifespan=asyncbind.integrations.starlette.lifespan(db), "
        "middleware=[Middleware(AsyncBindMiddleware, db=db)])'; for FastAPI use "
        "'FastAPI(lifespan=asyncbind.integrations.fastapi.lifespan(db))' and "
        "'Depends(asyncbind.integrations.fastapi.session_dependency(db))'."
    )
