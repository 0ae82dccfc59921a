"""What the code relies on inside its dependencies, beyond their documented API.

Each test names one private detail the project reaches into, so that an upgrade that changes it
fails here, saying which, rather than as a strange failure elsewhere. pyproject.toml bounds
these dependencies below their next release that could change them.
"""

from __future__ import annotations

import inspect
import logging
import re
from importlib.metadata import requires

import aio_pika.robust_connection
import aiormq.connection
import pamqp.frame
from asyncpg.connect_utils import _parse_connect_dsn_and_args
from pamqp import commands, header

from consumer.broker.amqp import connect_failures_raised
from consumer.broker.frames import install, lenient_unmarshal


class TestAsyncpg:
    """consumer.store.pool parses database URLs with the parser asyncpg's connect() runs."""

    def test_the_dsn_parser_takes_keywords_that_default_to_nothing(self) -> None:
        """Its keywords can all be given as None, beside `dsn`."""
        parameters = inspect.signature(_parse_connect_dsn_and_args).parameters
        assert "dsn" in parameters
        others = {name: None for name in parameters if name != "dsn"}
        addresses, params = _parse_connect_dsn_and_args(
            dsn="postgresql://u@h1:5433,h2/db?target_session_attrs=read-write", **others
        )
        assert addresses == [("h1", 5433), ("h2", 5432)]
        assert (params.user, params.database) == ("u", "db")


class TestPamqpAndAiormq:
    """consumer.broker.frames reads the frames pamqp can't, where aiormq reads every frame."""

    def test_aiormq_looks_up_pamqps_unmarshal_at_every_frame(self) -> None:
        """The client calls `pamqp.frame.unmarshal` through its module: install() takes effect."""
        assert "pamqp.frame.unmarshal(" in inspect.getsource(aiormq.connection)
        install()
        assert pamqp.frame.unmarshal is lenient_unmarshal

    def test_the_content_header_flag_reader(self) -> None:
        """`ContentHeader._get_flags(bytes)` gives (bytes consumed, the property flags)."""
        properties = commands.Basic.Properties(message_id="m", delivery_mode=2)
        encoded = header.ContentHeader(0, 3, properties).marshal()
        consumed, flags = header.ContentHeader._get_flags(encoded[12:])  # noqa: SLF001  # the point
        assert consumed == 2
        assert flags & properties.flags["message_id"]
        assert flags & properties.flags["delivery_mode"]

    def test_aiormqs_line_for_a_failed_connect(self) -> None:
        """The log line connect_failures_raised() drops is the one aiormq writes, and only then."""
        assert 'log.error("error when creating transport: %r", e)' in inspect.getsource(
            aiormq.connection
        )
        logger = logging.getLogger("aiormq.connection")
        record = logger.makeRecord(
            logger.name,
            logging.ERROR,
            "",
            0,
            "error when creating transport: %r",
            (OSError(),),
            None,
        )
        with connect_failures_raised():
            assert not logger.filter(record)
        assert logger.filter(record)  # a reconnect's failure, which nobody raises: logged


class TestAioPika:
    """consumer.broker.failover watches the robust connection's `transport` and sets its `url`."""

    def test_a_reconnect_clears_the_transport_then_connects_to_url(self) -> None:
        """RobustConnection clears `transport` as an attempt starts, and Connection reads `url`."""
        robust = inspect.getsource(aio_pika.robust_connection.RobustConnection)
        assert "self.transport = None" in robust
        connection = inspect.getsource(aio_pika.connection.Connection.connect)
        assert "self.url" in connection


class TestBounds:
    """Every dependency reached into above has an upper bound in pyproject.toml."""

    def test_upper_bounds(self) -> None:
        """asyncpg, aio-pika, aiormq and pamqp are each bounded above, wherever declared."""
        declared = {
            re.split(r"[<>=;\[ ]", line, maxsplit=1)[0].lower(): line
            for line in requires("task-build-history") or []
        }
        for name in ("asyncpg", "aio-pika", "aiormq", "pamqp"):
            assert "<" in declared[name].split(";")[0], declared[name]
