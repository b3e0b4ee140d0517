"""A TCP proxy that makes the embedded broker answer Metadata requests as Apache Kafka does.

No Apache Kafka runs in CI, and Tansu differs from it exactly where Flywheel once relied
on the difference. Placed between the clients and Tansu, :class:`KafkaAnswers` rewrites
the Kafka protocol in the two places Kafka's documented behaviour differs:

- a Metadata request with an *empty* topic list (aiokafka's bootstrap request) is
  answered with no topics (Tansu answers it with every topic);
- ``allow_auto_topic_creation`` is forced off in Metadata requests (v4+), as on a
  broker with ``auto.create.topics.enable=false`` (docker-compose.yml's; Tansu creates
  any topic a metadata request names).

Every Metadata response advertises the proxy as the broker, so every connection but the
group coordinator's (found with FindCoordinator) runs through it. Everything else is
passed through byte for byte.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any

from aiokafka.protocol import metadata as md

METADATA = 3
RESPONSES: dict[int, Any] = {
    0: md.MetadataResponse_v0,
    1: md.MetadataResponse_v1,
    2: md.MetadataResponse_v2,
    3: md.MetadataResponse_v3,
    4: md.MetadataResponse_v4,
    5: md.MetadataResponse_v5,
}


class KafkaAnswers:
    """The proxy; :meth:`running` runs it on its own thread and yields its address.

    Args:
        upstream: ``host:port`` of the broker behind it.
    """

    def __init__(self, upstream: str):
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.address = ("127.0.0.1", 0)
        self.empty_requests = 0
        """Empty-topic Metadata requests answered with no topics."""
        self.auto_create_refused = 0
        """Metadata requests whose ``allow_auto_topic_creation`` was turned off."""
        self._connections: set[asyncio.Task[None]] = set()

    async def _serve(self, started: threading.Event, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.address = server.sockets[0].getsockname()[:2]
        started.set()
        async with server:
            await stop.wait()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._pipe(reader, writer)
        finally:
            self._connections.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        pending: dict[int, int] = {}  # correlation id -> Metadata version, for responses
        empty: set[int] = set()  # correlation ids of empty-topic Metadata requests
        tasks = [
            asyncio.ensure_future(self._requests(reader, up_writer, pending, empty)),
            asyncio.ensure_future(self._responses(up_reader, writer, pending, empty)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()

    async def _requests(
        self,
        reader: asyncio.StreamReader,
        out: asyncio.StreamWriter,
        pending: dict[int, int],
        empty: set[int],
    ) -> None:
        while True:
            frame = await _frame(reader)
            api_key, version, correlation = struct.unpack(">hhi", frame[:8])
            if api_key == METADATA and version in RESPONSES:
                pending[correlation] = version
                frame = self._request(frame, version, correlation, empty)
            out.write(struct.pack(">i", len(frame)) + frame)
            await out.drain()

    def _request(self, frame: bytes, version: int, correlation: int, empty: set[int]) -> bytes:
        (client_len,) = struct.unpack(">h", frame[8:10])
        body = 10 + max(client_len, 0)
        (count,) = struct.unpack(">i", frame[body : body + 4])
        if count == 0 and version >= 1:
            empty.add(correlation)
        if version < 4:
            return frame
        at = body + 4
        for _ in range(max(count, 0)):
            (name_len,) = struct.unpack(">h", frame[at : at + 2])
            at += 2 + name_len
        if frame[at] != 0:
            self.auto_create_refused += 1
        return frame[:at] + b"\x00" + frame[at + 1 :]

    async def _responses(
        self,
        reader: asyncio.StreamReader,
        out: asyncio.StreamWriter,
        pending: dict[int, int],
        empty: set[int],
    ) -> None:
        while True:
            frame = await _frame(reader)
            (correlation,) = struct.unpack(">i", frame[:4])
            version = pending.pop(correlation, None)
            if version is not None:
                response = RESPONSES[version].decode(BytesIO(frame[4:]))
                response.brokers = [self._advertised(b) for b in response.brokers]
                if correlation in empty:
                    empty.discard(correlation)
                    response.topics = []
                    self.empty_requests += 1
                frame = frame[:4] + response.encode()
            out.write(struct.pack(">i", len(frame)) + frame)
            await out.drain()

    def _advertised(self, broker: tuple[Any, ...]) -> tuple[Any, ...]:
        node, _host, _port, *rest = broker
        return (node, self.address[0], self.address[1], *rest)

    @contextmanager
    def running(self) -> Iterator[str]:
        """Run the proxy on a thread until the block ends; yields ``host:port``."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        stop = asyncio.Event()

        def run() -> None:
            loop.run_until_complete(self._serve(started, stop))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert started.wait(10), "the proxy did not start"
        try:
            yield f"{self.address[0]}:{self.address[1]}"
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(10)
            loop.close()


async def _frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)
