"""A RabbitMQ vhost of a test's own, where `task-history migrate` never ran: no exchange at all."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from tests.servers import broker_tools_for


def in_vhost(url: str, vhost: str) -> str:
    """`url` pointing at `vhost` instead."""
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(vhost, safe="")))


@contextmanager
def empty_vhost(url: str) -> Iterator[str]:
    """A new vhost the URL's user may use, with nothing declared in it; its URL. Deleted after."""
    vhost = f"th_bare_{uuid.uuid4().hex[:12]}"
    user = urlsplit(url).username or "guest"
    # The broker under test's own rabbitmqctl (tests/servers.py), wherever that broker runs.
    rabbitmqctl = broker_tools_for(url).run
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield in_vhost(url, vhost)
    finally:
        rabbitmqctl("delete_vhost", vhost)


def vhost_of(url: str) -> str:
    """The vhost an AMQP URL names ("/" when it names none)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"
