"""A small shop on Quart with three MySQL databases, written as a Flask-SQLAlchemy app would be:
an app factory, a config class, ``db.init_app(app)``, views that use ``get_or_404`` and
``paginate``."""

from __future__ import annotations

from quart import Quart
from werkzeug.exceptions import HTTPException

from .config import Config
from .models import db
from .views import bp

__all__ = ["create_app"]


def create_app(config: type[Config] = Config) -> Quart:
    app = Quart(__name__)
    app.config.from_object(config)
    db.init_app(app)
    app.register_blueprint(bp)

    @app.before_serving
    async def create_tables() -> None:
        await db.create_all()  # each bind's tables in its database

    @app.errorhandler(404)
    @app.errorhandler(400)
    async def error(error: HTTPException) -> tuple[dict[str, str | None], int]:
        return {"error": error.description}, error.code or 500

    return app
