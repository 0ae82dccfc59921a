"""Connection strings PostgreSQL users write: several hosts, target_session_attrs, the lot."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import pytest

from consumer.errors import ConfigurationError, DatabaseUnavailableError
from consumer.settings import load_settings
from consumer.store import Store

DOWN = "127.0.0.1:1"  # nothing listens on port 1 here: a host that is down


def with_hosts(database_url: str, *hosts: str, query: str = "") -> str:
    """`database_url` with its host part replaced by `hosts`, and `query` appended."""
    parts = urlsplit(database_url)
    credentials = parts.netloc.rsplit("@", 1)[0]
    return f"{parts.scheme}://{credentials}@{','.join(hosts)}{parts.path}{query}"


def server_of(database_url: str) -> str:
    """The host:port of `database_url`."""
    parts = urlsplit(database_url)
    return f"{parts.hostname}:{parts.port or 5432}"


class TestTheSettings:
    """The database URL is checked by the driver's own rules."""

    @pytest.mark.parametrize(
        "url",
        [
            "postgresql://u@h1:5441,h2:5442/db?target_session_attrs=read-write",
            "postgresql://u@/db?host=h1,h2&port=5441,5442&target_session_attrs=primary",
            "postgresql://u@h1/db?sslmode=prefer&application_name=history",
            "postgres://u:p%40ss@[::1]:5432/db",
        ],
    )
    def test_every_form_libpq_users_write(self, url: str) -> None:
        """Hosts in the host part or in the query, target_session_attrs, sslmode: accepted."""
        assert load_settings(database_url=url).database_url == url

    @pytest.mark.parametrize(
        ("url", "said"),
        [
            ("postgresql://u@h1:notaport/db", "invalid literal"),
            ("postgresql://u@h/db?target_session_attrs=bogus", "target_session_attrs"),
            ("postgresql://u@h/db?sslmode=nope", "sslmode"),
            ("mysql://u@h/db", "scheme"),
        ],
    )
    def test_what_the_driver_refuses(self, url: str, said: str) -> None:
        """One line naming the setting and the driver's reason."""
        with pytest.raises(ConfigurationError, match=f"TASK_HISTORY_DATABASE_URL: .*{said}"):
            load_settings(database_url=url)


class TestSeveralHosts:
    """The first host that answers as asked is used; none answering so is an outage."""

    async def test_a_host_that_is_down_is_skipped(self, database_url: str) -> None:
        """The first host refuses connections; the second, this test's server, is used."""
        url = with_hosts(
            database_url,
            DOWN,
            server_of(database_url),
            query="?target_session_attrs=read-write",
        )
        async with Store(url) as store:
            assert await store.count_by_task(uuid.uuid4()) == 0

    async def test_no_host_as_asked_is_an_outage(self, database_url: str) -> None:
        """Asking for a standby where there is none: unavailable, retried, not a crash."""
        url = with_hosts(
            database_url, server_of(database_url), query="?target_session_attrs=standby"
        )
        with pytest.raises(DatabaseUnavailableError, match="database unavailable") as raised:
            async with Store(url):
                pass
        assert raised.value.retryable


class TestReplication:
    """What the consumer reads at start-up to warn of asynchronous standbys."""

    async def test_a_server_without_standbys(self, database_url: str) -> None:
        """The test servers stream to no standby and have no synchronous ones."""
        async with Store(database_url) as store:
            assert await store.replication() == (0, False)
