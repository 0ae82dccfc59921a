"""TASK_HISTORY_AMQP_URL as a list: how it is split and checked, without a broker."""

from __future__ import annotations

import pytest

from consumer.broker.failover import amqp_urls, with_heartbeat
from consumer.errors import ConfigurationError
from consumer.settings import load_settings


class TestTheList:
    """Commas separate whole URLs; each is checked like a single one."""

    def test_split_on_commas_spaces_trimmed(self) -> None:
        """Two URLs, with spaces and a trailing comma, make two addresses."""
        assert amqp_urls(" amqp://a:5681/, amqps://u:p@b/vh ,") == [
            "amqp://a:5681/",
            "amqps://u:p@b/vh",
        ]

    def test_one_url_is_a_list_of_one(self) -> None:
        """The usual single URL is unchanged."""
        assert amqp_urls("amqp://guest:guest@localhost:5672/") == [
            "amqp://guest:guest@localhost:5672/"
        ]

    def test_the_settings_take_a_list(self) -> None:
        """Several nodes of a cluster, as the README shows them."""
        value = "amqp://u:p@rabbit-1:5672/vh,amqp://u:p@rabbit-2:5672/vh"
        assert load_settings(amqp_url=value).amqp_url == value

    @pytest.mark.parametrize(
        ("value", "said"),
        [
            ("amqp://a/,amqp://b:x/", "Port could not be cast"),
            ("amqp://a/,http://b/", "must start with amqp://"),
            (" , ", "names no broker"),
        ],
    )
    def test_a_bad_member_is_named(self, value: str, said: str) -> None:
        """One readable line, naming the setting."""
        with pytest.raises(ConfigurationError, match=f"TASK_HISTORY_AMQP_URL: .*{said}"):
            load_settings(amqp_url=value)


class TestHeartbeat:
    """The consumer asks for a short heartbeat, unless the URL asks for its own."""

    def test_added_to_a_url_without_one(self) -> None:
        """The heartbeat goes into the query, beside what is there."""
        assert with_heartbeat("amqp://u:p@h:5672/vh?name=x", 5) == (
            "amqp://u:p@h:5672/vh?name=x&heartbeat=5"
        )

    def test_the_urls_own_wins(self) -> None:
        """A URL's ?heartbeat= is the user's choice, kept as it is."""
        assert with_heartbeat("amqp://h/?heartbeat=30", 5) == "amqp://h/?heartbeat=30"

    def test_none_leaves_the_clients_default(self) -> None:
        """Publishers and commands keep the client's default."""
        assert with_heartbeat("amqp://h/", None) == "amqp://h/"
