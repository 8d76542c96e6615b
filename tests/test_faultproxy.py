"""The fault proxy that the outage tests and the soak script rely on does what each mode says.

An echo server stands in for the database, so these run anywhere and fast.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from faultproxy import FaultProxy

GUARD = 10


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    writers: list[asyncio.StreamWriter] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    for writer in writers:
        writer.close()
    await server.wait_closed()


@pytest.fixture
async def proxy(echo_port: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        yield proxy


async def roundtrip(
    proxy: FaultProxy, payload: bytes = b"ping"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(payload)
    await writer.drain()
    async with asyncio.timeout(GUARD):
        assert await reader.readexactly(len(payload)) == payload
    return reader, writer


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass


async def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    _, writer = await roundtrip(proxy)
    assert proxy.open_connections == 1
    await close(writer)


async def test_refuse_stops_listening_and_restore_listens_on_the_same_port(
    proxy: FaultProxy,
) -> None:
    port = proxy.port
    _, open_writer = await roundtrip(proxy)
    await proxy.set_mode("refuse")
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(proxy.host, port)
    # Connections made before keep working, as when a server stops accepting new ones.
    open_writer.write(b"x")
    await proxy.restore()
    assert proxy.port == port
    _, writer = await roundtrip(proxy)
    await close(writer)
    await close(open_writer)


async def test_reset_mode_resets_new_connections(proxy: FaultProxy) -> None:
    await proxy.set_mode("reset")
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    async with asyncio.timeout(GUARD):
        with pytest.raises(ConnectionResetError):
            writer.write(b"ping")
            await writer.drain()
            assert await reader.read(10) == b""  # reset arrives as an error, not an EOF
            raise AssertionError("the connection ended without a reset")
    writer.close()


async def test_reset_connections_resets_open_ones(proxy: FaultProxy) -> None:
    reader, writer = await roundtrip(proxy)
    assert proxy.reset_connections() == 1
    async with asyncio.timeout(GUARD):
        with pytest.raises(ConnectionResetError):
            await reader.read(10)
    writer.close()
    # New connections still pass.
    _, again = await roundtrip(proxy)
    await close(again)


async def test_blackhole_holds_bytes_until_restored(proxy: FaultProxy) -> None:
    reader, writer = await roundtrip(proxy)
    await proxy.set_mode("blackhole")
    writer.write(b"held")
    await writer.drain()
    new_reader, new_writer = await asyncio.open_connection(proxy.host, proxy.port)
    new_writer.write(b"new")
    reads = [asyncio.ensure_future(reader.read(10)), asyncio.ensure_future(new_reader.read(10))]
    done, _ = await asyncio.wait(reads, timeout=0.3)
    assert not done, "bytes went through a black hole"
    await proxy.restore()
    async with asyncio.timeout(GUARD):
        assert await asyncio.gather(*reads) == [b"held", b"new"]
    await close(writer)
    await close(new_writer)


async def test_latency_delays_but_delivers(proxy: FaultProxy) -> None:
    await proxy.set_mode("pass", latency=1.0)
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(b"slow")
    reply = asyncio.ensure_future(reader.readexactly(4))
    done, _ = await asyncio.wait([reply], timeout=0.1)
    assert not done, "the reply came back without the latency"
    async with asyncio.timeout(GUARD):
        assert await reply == b"slow"
    await close(writer)


async def test_close_leaves_no_task_or_connection(echo_port: int) -> None:
    proxy = await FaultProxy("127.0.0.1", echo_port).start()
    _, writer = await roundtrip(proxy)
    await proxy.set_mode("blackhole")
    stuck, stuck_writer = await asyncio.open_connection(proxy.host, proxy.port)
    await proxy.close()
    await proxy.close()  # idempotent
    assert proxy.open_connections == 0
    me = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not me and not t.done()] == []
    # The connections through it ended (reset).
    async with asyncio.timeout(GUARD):
        with pytest.raises(ConnectionResetError):
            await stuck.read(10)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(proxy.host, proxy.port)
    writer.close()
    stuck_writer.close()


def test_modes_are_checked() -> None:
    async def run() -> None:
        async with FaultProxy("127.0.0.1", 9) as proxy:
            with pytest.raises(ValueError, match="not one of"):
                await proxy.set_mode("flaky")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="negative"):
                await proxy.set_mode("pass", latency=-1)

    asyncio.run(run())
