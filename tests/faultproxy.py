"""A fault-injecting TCP proxy for outage tests and the soak script.

``FaultProxy`` listens on 127.0.0.1 (an ephemeral port) and forwards every connection to a real
server. Its mode can be switched at run time to simulate an outage of that server:

- ``"pass"``: forward bytes both ways (after ``latency`` seconds per chunk, if set).
- ``"refuse"``: stop listening, so new connections get ``ECONNREFUSED``; open ones keep working.
- ``"reset"``: accept new connections and reset them at once (TCP RST).
- ``"blackhole"``: accept new connections and forward nothing, in either direction, on new or open
  connections, like a network partition. Bytes are held, not dropped: when the mode goes back to
  ``"pass"`` they are delivered, as TCP would after the partition heals.

:meth:`FaultProxy.reset_connections` resets every open connection (mid-query, if one is running).
:meth:`FaultProxy.close` stops everything and waits for it: no task or socket is left behind.

    async with FaultProxy("127.0.0.1", 5432) as proxy:
        url = proxy.url_for(sa.make_url("postgresql://postgres@127.0.0.1:5432/app"))
        ...
        await proxy.set_mode("blackhole")
        ...
        await proxy.set_mode("pass")
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType
from typing import Any, Literal

__all__ = ["MODES", "FaultProxy", "Mode"]

Mode = Literal["pass", "refuse", "reset", "blackhole"]
MODES: tuple[Mode, ...] = ("pass", "refuse", "reset", "blackhole")

_CHUNK = 65536


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s socket at once with a TCP RST rather than a FIN."""
    transport = writer.transport
    if transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Connection:
    """One client connection and, once made, its upstream connection."""

    __slots__ = ("client", "upstream")

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None

    def abort(self) -> None:
        _abort(self.client)
        if self.upstream is not None:
            _abort(self.upstream)

    def close(self) -> None:
        # A clean end of one side ends the other cleanly too (FIN after the buffered bytes).
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()


class FaultProxy:
    """A TCP proxy in front of ``upstream_host:upstream_port`` whose faults switch at run time."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        connect_timeout: float = 10.0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.port = 0
        self.connect_timeout = connect_timeout
        self.latency = 0.0
        self.accepted = 0
        """How many connections the proxy has accepted, in every mode."""
        self._mode: Mode = "pass"
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        """Start listening; :attr:`port` is the port given by the OS (kept across ``refuse``)."""
        await self._listen()
        return self

    async def close(self) -> None:
        """Stop listening, reset every connection and wait for every task of the proxy to end."""
        if self._closed:
            return
        self._closed = True
        await self._stop_listening()
        self.reset_connections()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Give the event loop one turn to run the transports' connection_lost callbacks.
        await asyncio.sleep(0)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.close())

    # -- faults --------------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def open_connections(self) -> int:
        """How many client connections are open through the proxy right now."""
        return len(self._connections)

    async def set_mode(self, mode: Mode, *, latency: float | None = None) -> None:
        """Switch to ``mode`` (see the module docstring); ``latency`` delays each chunk sent."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if self._closed:
            raise RuntimeError("the proxy is closed")
        if latency is not None:
            if latency < 0:
                raise ValueError(f"latency {latency!r} is negative")
            self.latency = latency
        self._mode = mode
        if mode == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode == "refuse":
            await self._stop_listening()
        elif self._server is None:
            await self._listen()

    async def restore(self) -> None:
        """Back to ``"pass"`` with no latency."""
        await self.set_mode("pass", latency=0.0)

    def reset_connections(self) -> int:
        """Reset (TCP RST) every open connection, both sides; returns how many there were."""
        connections = list(self._connections)
        for connection in connections:
            connection.abort()
        return len(connections)

    def url_for(self, url: Any) -> Any:
        """``url`` (a :class:`sqlalchemy.URL`) pointed at the proxy instead of the server."""
        return url.set(host=self.host, port=self.port)

    # -- internals -----------------------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The stream machinery logs a cancelled callback task, so serve in a task of our own.
        self.accepted += 1
        connection = _Connection(writer)
        if self._closed or self._mode in ("reset", "refuse"):
            connection.abort()
            return
        self._connections.add(connection)
        self._spawn(self._serve(connection, reader))

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _serve(self, connection: _Connection, client_reader: asyncio.StreamReader) -> None:
        try:
            await self._flowing.wait()
            try:
                async with asyncio.timeout(self.connect_timeout):
                    up_reader, up_writer = await asyncio.open_connection(
                        self.upstream_host, self.upstream_port
                    )
            except OSError:
                return
            connection.upstream = up_writer
            if connection.client.transport.is_closing():
                return
            pumps = [
                self._spawn(self._pump(client_reader, up_writer)),
                self._spawn(self._pump(up_reader, connection.client)),
            ]
            try:
                # When either side ends, the connection is over.
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except TimeoutError:
            pass
        finally:
            self._connections.discard(connection)
            connection.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    return
                await self._flowing.wait()
                if self.latency:
                    await asyncio.sleep(self.latency)
                    await self._flowing.wait()
                if writer.transport.is_closing():
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return
