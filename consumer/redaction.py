"""Secrets kept out of messages and logs: passwords in URLs, and any secret named."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]+)@", re.IGNORECASE
)
_MASK = "***"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide passwords in URLs in `text`, and every one of `secrets`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _MASK)
    return _URL_PASSWORD.sub(rf"\g<head>{_MASK}@", text)


def url_secrets(*urls: str) -> list[str]:
    """The passwords in `urls`, to be masked wherever they show up.

    A value may list several URLs separated by commas (TASK_HISTORY_AMQP_URL): each one's.
    """
    passwords = []
    for url in urls:
        for part in url.split(","):
            try:
                password = urlsplit(part.strip()).password
            except ValueError:  # not a URL: nothing of it to mask
                continue
            if password:
                passwords.append(password)
    return passwords
