"""OpenTelemetry: one span per statement on every bind, with the database's name, through
OpenTelemetry's own SQLAlchemy instrumentation and an in-memory span exporter."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from conftest import IN_CI, NewDatabase

from asyncbind import AsyncBind, ConfigError, NotConfiguredError

if importlib.util.find_spec("opentelemetry.sdk") is None:
    if IN_CI:
        raise ImportError("the otel test needs opentelemetry-sdk: pip install -e '.[test]'")
    pytest.skip(
        "opentelemetry is not installed (pip install -e '.[test]')", allow_module_level=True
    )

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from asyncbind import otel

MakeDb = Callable[..., AsyncBind]


@pytest.fixture
def exporter() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    yield spans, provider
    otel.uninstrument()


def statements(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    """The spans of statements (the instrumentation also makes one per new connection)."""
    return [
        s for s in spans.get_finished_spans() if s.attributes and "db.statement" in s.attributes
    ]


async def test_one_span_per_statement_names_each_binds_database(
    url: str,
    new_database: NewDatabase,
    make_db: MakeDb,
    exporter: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    spans, provider = exporter
    other = await new_database("sqlite")
    db = make_db(url, binds={"other": other})
    otel.instrument(db, tracer_provider=provider)

    async with db.session() as session:
        await session.execute(sa.text("SELECT 1"))
        await session.execute(sa.text("SELECT 2"), bind_arguments={"bind_key": "other"})
        await session.execute(sa.text("SELECT 3"))

    found = [(s.attributes["db.statement"], s.attributes["db.name"]) for s in statements(spans)]
    main, second = sa.make_url(url).database, sa.make_url(other).database
    assert found == [("SELECT 1", main), ("SELECT 2", second), ("SELECT 3", main)]
    systems = {s.attributes["db.system"] for s in statements(spans)}
    assert systems == {sa.make_url(url).get_backend_name(), "sqlite"}


async def test_uninstrument_stops_the_spans(
    make_db: MakeDb, exporter: tuple[InMemorySpanExporter, TracerProvider]
) -> None:
    spans, provider = exporter
    db = make_db("sqlite://")
    otel.instrument(db, tracer_provider=provider)
    otel.uninstrument()
    async with db.session() as session:
        await session.execute(sa.text("SELECT 1"))
    assert statements(spans) == []


async def test_instrumenting_twice_says_how_to_instrument_several(
    make_db: MakeDb, exporter: tuple[InMemorySpanExporter, TracerProvider]
) -> None:
    _, provider = exporter
    first, second = make_db("sqlite://"), make_db("sqlite://")
    otel.instrument(first, tracer_provider=provider)
    with pytest.raises(ConfigError, match=r"instrument\(db1, db2\)"):
        otel.instrument(second, tracer_provider=provider)


def test_nothing_to_instrument_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs the AsyncBind"):
        otel.instrument()
    with pytest.raises(NotConfiguredError, match="after configure"):
        otel.instrument(AsyncBind())
