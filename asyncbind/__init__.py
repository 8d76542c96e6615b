"""asyncbind: an async multi-database access layer on SQLAlchemy 2.x."""

from __future__ import annotations

# integrations registers how db.init_app() sets up a Quart app; it imports no framework.
from . import integrations  # noqa: F401
from .config import ALL, BindConfig
from .core import AsyncBind, SessionFactory
from .exceptions import (
    AsyncBindError,
    BindAuthenticationError,
    BindErrors,
    BindUnavailableError,
    BulkCopyError,
    ConfigError,
    ConnectionEndedError,
    CrossBindError,
    DatabaseNotFoundError,
    DeadlockError,
    NoCurrentSessionError,
    NoReplicaError,
    NotConfiguredError,
    NotFoundError,
    PartialCommitError,
    PoolTimeoutError,
    ReadOnlyBindError,
    SessionSharedError,
    StartupCheckError,
    StatementTimeoutError,
    TenantMismatchError,
    TwoPhaseInDoubtError,
    TwoPhasePrepareError,
    TwoPhaseTakenOverError,
    TwoPhaseUnsupportedError,
    UnknownBindError,
    UnresolvedTenantError,
    WrongEventLoopError,
)
from .health import BindHealth, PoolStatus
from .models import BindKeyMixin
from .pagination import Pagination
from .recording import QueryInfo, get_recorded_queries
from .replicas import USE_PRIMARY
from .routing import RoutingSession
from .scoping import SessionScope
from .tenants import TenantGroup
from .twophase import Resolution
from .views import AsyncBindSession, ViewHelpers

__all__ = [
    "ALL",
    "USE_PRIMARY",
    "AsyncBind",
    "AsyncBindError",
    "AsyncBindSession",
    "BindAuthenticationError",
    "BindConfig",
    "BindErrors",
    "BindHealth",
    "BindKeyMixin",
    "BindUnavailableError",
    "BulkCopyError",
    "ConfigError",
    "ConnectionEndedError",
    "CrossBindError",
    "DatabaseNotFoundError",
    "DeadlockError",
    "NoCurrentSessionError",
    "NoReplicaError",
    "NotConfiguredError",
    "NotFoundError",
    "Pagination",
    "PartialCommitError",
    "PoolStatus",
    "PoolTimeoutError",
    "QueryInfo",
    "ReadOnlyBindError",
    "Resolution",
    "RoutingSession",
    "SessionFactory",
    "SessionScope",
    "SessionSharedError",
    "StartupCheckError",
    "StatementTimeoutError",
    "TenantGroup",
    "TenantMismatchError",
    "TwoPhaseInDoubtError",
    "TwoPhasePrepareError",
    "TwoPhaseTakenOverError",
    "TwoPhaseUnsupportedError",
    "UnknownBindError",
    "UnresolvedTenantError",
    "ViewHelpers",
    "WrongEventLoopError",
    "get_recorded_queries",
]

__version__ = "0.1.0"
