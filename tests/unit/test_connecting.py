"""Opening clients: a failure half-way leaves nothing running behind it."""

from __future__ import annotations

import aiohttp
import pytest

from consumer.broker.client import Broker
from consumer.errors import BrokerUnavailableError, NotConnectedError
from consumer.metrics import HealthServer, Metrics
from consumer.publisher import HistoryPublisher
from consumer.topology import Topology


class HalfOpenConnection:
    """A robust connection that opens, but whose channel never does."""

    def __init__(self) -> None:
        """Open, not yet closed."""
        self.closed = False

    async def channel(self, **_options: object) -> None:
        """Fail as a broker closing the channel would."""
        raise ConnectionResetError("channel refused")

    async def close(self) -> None:
        """Stop reconnecting."""
        self.closed = True


class TestBrokerConnect:
    """A connection whose channel can't be opened is closed, not left reconnecting."""

    @pytest.mark.parametrize("client", ["broker", "publisher"])
    async def test_the_connection_is_closed_when_the_channel_fails(
        self, monkeypatch: pytest.MonkeyPatch, client: str
    ) -> None:
        """Broker.connect and HistoryPublisher.connect close what they opened, then raise."""
        opened: list[HalfOpenConnection] = []

        async def connect_robust(_url: str, **_options: object) -> HalfOpenConnection:
            opened.append(HalfOpenConnection())
            return opened[-1]

        monkeypatch.setattr("aio_pika.connect_robust", connect_robust)
        url = "amqp://guest:guest@127.0.0.1:1/"
        opening = Broker(url, topology=Topology()) if client == "broker" else HistoryPublisher(url)
        with pytest.raises(BrokerUnavailableError, match="channel refused"):
            await opening.connect()
        assert [connection.closed for connection in opened] == [True]


class OpenConnection(HalfOpenConnection):
    """A robust connection that opened, with the callback sets aio-pika's has."""

    def __init__(self) -> None:
        """Open, with no callbacks yet."""
        super().__init__()
        self.close_callbacks: set[object] = set()
        self.reconnect_callbacks: set[object] = set()


class TestBrokerUse:
    """A broker used while not connected is a bug, said at once, never an outage to wait out."""

    async def test_before_connect_and_after_close(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Its channel is refused with NotConnectedError before connect() and after close()."""
        connection = OpenConnection()

        async def connect_confirming(
            _url: str, **_options: object
        ) -> tuple[OpenConnection, object]:
            return connection, object()

        monkeypatch.setattr("consumer.broker.client.connect_confirming", connect_confirming)
        broker = Broker("amqp://guest:guest@127.0.0.1:1/", topology=Topology())
        with pytest.raises(NotConnectedError):
            _ = broker.channel
        await broker.connect()
        assert broker.channel is not None
        await broker.close()
        assert connection.closed
        with pytest.raises(NotConnectedError):
            _ = broker.channel
        assert not NotConnectedError.retryable


class TestHealthServer:
    """The metrics and health server binds the port it reports."""

    async def test_port_zero_reports_the_port_it_got(self) -> None:
        """With port 0 the server picks a free port and says which; /healthz answers there."""

        async def ready() -> str | None:
            return None

        server = HealthServer(Metrics(), ready=ready, host="127.0.0.1", port=0)
        await server.start()
        try:
            assert server.port > 0
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{server.port}/healthz") as response,
            ):
                assert (response.status, await response.json()) == (200, {"status": "ok"})
        finally:
            await server.stop()
