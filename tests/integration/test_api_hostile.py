"""The read API against hostile parameters: every one is refused with a 4xx and a reason.

Each kind below was tried from outside; none may get a 5xx, and a stream must be refused before
it starts (never a 200 followed by a broken body). The list is the regression record of what
an attacker or a careless client sends: numbers far out of range, times beyond year 9999 once
an offset is applied, forged cursors, NUL, ids the database cannot hold.
"""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from yarl import URL

from consumer.api.server import serving
from tests.integration.test_api import api_settings
from tests.letters import bury, letter

TASK = uuid.UUID("6f1c2a1e-7d4b-4c8e-9a0f-1b2c3d4e5f60")
HISTORY = f"/tasks/{TASK}/history"
STREAM = f"/tasks/{TASK}/history/stream"
NINES = "9" * 400


def cursor(text: str) -> str:
    """A cursor made by hand from its inner text (`a1|TIME|SEQ`), as a forger would."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


GOOD_TIME = "2026-11-26T10:00:00+00:00"


@dataclass(frozen=True)
class Attempt:
    """One hostile request: a path, a raw (already encoded) query and headers."""

    name: str
    path: str
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)


ATTEMPTS = [
    # Page sizes.
    Attempt("limit zero", HISTORY, "limit=0"),
    Attempt("limit negative", HISTORY, "limit=-1"),
    Attempt("limit over the maximum", HISTORY, "limit=1001"),
    Attempt("limit of 20 digits", HISTORY, "limit=99999999999999999999"),
    Attempt("limit of 400 nines", HISTORY, f"limit={NINES}"),
    Attempt("limit in exponent form", HISTORY, "limit=1e3"),
    Attempt("limit as a word", HISTORY, "limit=abc"),
    Attempt("limit empty", HISTORY, "limit="),
    Attempt("limit NUL", HISTORY, "limit=%00"),
    Attempt("limit with a fraction", HISTORY, "limit=1.5"),
    # Cursors.
    Attempt("after not a cursor", HISTORY, "after=not-a-cursor"),
    Attempt("after empty", HISTORY, "after="),
    Attempt("after with a huge seq", HISTORY, f"after={cursor(f'a1|{GOOD_TIME}|{10**30}')}"),
    Attempt("after with seq past bigint", HISTORY, f"after={cursor(f'a1|{GOOD_TIME}|{2**63}')}"),
    Attempt("after with a negative seq", HISTORY, f"after={cursor(f'a1|{GOOD_TIME}|-1')}"),
    Attempt("after with 400 digits", HISTORY, f"after={cursor(f'a1|{GOOD_TIME}|{NINES}')}"),
    Attempt(
        "after past year 9999 in UTC",
        HISTORY,
        f"after={cursor('a1|9999-12-31T23:59:59-23:59|1')}",
    ),
    Attempt(
        "after before year 1 in UTC",
        HISTORY,
        f"after={cursor('a1|0001-01-01T00:00:00+23:59|1')}",
    ),
    Attempt("after with a naive time", HISTORY, f"after={cursor('a1|2026-11-26T10:00:00|1')}"),
    Attempt("after with a bad date", HISTORY, f"after={cursor('a1|2026-13-45T00:00:00Z|1')}"),
    Attempt("after with an unknown tag", HISTORY, f"after={cursor(f'z9|{GOOD_TIME}|1')}"),
    Attempt("after with four fields", HISTORY, f"after={cursor(f'a1|{GOOD_TIME}|1|2')}"),
    Attempt("after of the other order", HISTORY, f"after={cursor(f'd1|{GOOD_TIME}|1')}"),
    Attempt("after of 5000 characters", HISTORY, f"after={'A' * 5000}"),
    Attempt("after with NUL", HISTORY, "after=YTF8%00"),
    Attempt("after not ASCII", HISTORY, "after=%C3%A9t%C3%A9"),
    Attempt("after not base64", HISTORY, "after=%2A%2A%2A%2A"),
    # Times.
    Attempt("since 300000 weeks", HISTORY, "since=300000w"),
    Attempt("since of 20 digits of weeks", HISTORY, "since=99999999999999999999w"),
    Attempt("since 400 nines of seconds", HISTORY, f"since={NINES}s"),
    Attempt("since 400 nines alone", HISTORY, f"since={NINES}"),
    Attempt("since +23:59 on year 1", HISTORY, "since=0001-01-01T00:00:00%2B23:59"),
    Attempt("until -23:59 on year 9999", HISTORY, "until=9999-12-31T23:59:59-23:59"),
    Attempt("since year 0", HISTORY, "since=0000-01-01T00:00:00Z"),
    Attempt("since year 10000", HISTORY, "since=10000-01-01T00:00:00Z"),
    Attempt("since nan", HISTORY, "since=nan"),
    Attempt("since inf", HISTORY, "since=inf"),
    Attempt("since in exponent form", HISTORY, "since=1e400s"),
    Attempt("since a negative age", HISTORY, "since=-5m"),
    Attempt("since NUL", HISTORY, "since=%00"),
    Attempt("since NUL after an age", HISTORY, "since=5m%00"),
    Attempt("since empty", HISTORY, "since="),
    Attempt("since of 5000 characters", HISTORY, f"since={'1' * 5000}"),
    Attempt("since a bad date", HISTORY, "since=2026-13-45T00:00:00Z"),
    Attempt("since without an offset", HISTORY, "since=2026-01-01T00:00:00"),
    Attempt("since after until", HISTORY, "since=1h&until=2h"),
    Attempt("since equal to until", HISTORY, f"since={GOOD_TIME}&until={GOOD_TIME}"),
    Attempt("since an unknown unit", HISTORY, "since=5y"),
    # Types, order, ids.
    Attempt("type unknown", HISTORY, "type=bogus"),
    Attempt("type NUL", HISTORY, "type=%00"),
    Attempt("type empty", HISTORY, "type="),
    Attempt("newest_first not a boolean", HISTORY, "newest_first=maybe"),
    Attempt("newest_first NUL", HISTORY, "newest_first=%00"),
    Attempt("task id not a UUID", "/tasks/not-a-uuid/history"),
    Attempt("task id of 5000 characters", f"/tasks/{'a' * 5000}/history"),
    Attempt("task id NUL", "/tasks/%00/history"),
    Attempt("task id with a slash", "/tasks/a%2Fb/history"),
    Attempt("workspace 300000 weeks", f"/workspaces/{TASK}/history", "since=300000w"),
    Attempt(
        "session forged cursor",
        f"/sessions/{TASK}/history",
        f"after={cursor(f'a1|{GOOD_TIME}|{10**30}')}",
    ),
    Attempt("workspace id NUL", "/workspaces/%00/history"),
    # The live stream: refused before it starts.
    Attempt(
        "Last-Event-ID with a huge seq",
        STREAM,
        headers={"Last-Event-ID": cursor(f"a1|{GOOD_TIME}|{10**30}")},
    ),
    Attempt("Last-Event-ID garbage", STREAM, headers={"Last-Event-ID": "garbage"}),
    Attempt("Last-Event-ID of 5000 characters", STREAM, headers={"Last-Event-ID": "A" * 5000}),
    Attempt("Last-Event-ID not ASCII", STREAM, headers={"Last-Event-ID": "\xe9\xe9\xe9\xe9"}),
    Attempt(
        "Last-Event-ID past year 9999",
        STREAM,
        headers={"Last-Event-ID": cursor("a1|9999-12-31T23:59:59-23:59|1")},
    ),
    Attempt("stream after with a huge seq", STREAM, f"after={cursor(f'a1|{GOOD_TIME}|{2**64}')}"),
    Attempt("stream of a task id not a UUID", "/tasks/x/history/stream"),
    Attempt("stream from_start not a boolean", STREAM, "from_start=maybe"),
    # Dead letters.
    Attempt("dead letter of 5000 digits", f"/dead-letters/{'9' * 5000}"),
    Attempt("dead letter NUL", "/dead-letters/%00"),
    Attempt("dead letter NUL inside", "/dead-letters/m1%00x"),
    Attempt("dead letter past bigint", "/dead-letters/99999999999999999999"),
    Attempt("dead letter negative", "/dead-letters/-1"),
    Attempt("dead letter of 300 characters", f"/dead-letters/{'m' * 300}"),
    Attempt("dead letter not UTF-8", "/dead-letters/%ED%A0%80"),
    Attempt("dead letter of 4 bytes per character", f"/dead-letters/{'%F0%9F%98%80' * 70}"),
    Attempt("census unknown error code", "/dead-letters", "error=bogus"),
    Attempt("census error code NUL", "/dead-letters", "error=%00"),
    Attempt("census sample negative", "/dead-letters", "sample=-1"),
    Attempt("census sample over the maximum", "/dead-letters", "sample=101"),
    Attempt("census sample of 20 digits", "/dead-letters", "sample=99999999999999999999"),
    Attempt("census task not a UUID", "/dead-letters", "task=x"),
    Attempt("census since 300000 weeks", "/dead-letters", "since=300000w"),
    Attempt("census until past year 9999", "/dead-letters", "until=9999-12-31T23:59:59-23:59"),
    Attempt("census since 400 nines", "/dead-letters", f"since={NINES}s"),
    Attempt("census since NUL", "/dead-letters", "since=%00"),
    # Encodings.
    Attempt("query not UTF-8", HISTORY, "since=%FF%FE"),
    Attempt("query with a bad escape", HISTORY, "since=%zz"),
    Attempt("query of 12000 characters", HISTORY, f"limit={'9' * 12000}"),
]

# Edge values that are valid: they must be answered 200, not refused.
VALID = [
    Attempt("since year 1 in UTC", HISTORY, "since=0001-01-01T00:00:00Z"),
    Attempt("until the end of year 9999", HISTORY, "until=9999-12-31T23:59:59Z"),
    Attempt("a 20-year age", HISTORY, "since=1043w"),
    Attempt("the largest limit", HISTORY, "limit=1000"),
    Attempt("a type 1000 times", HISTORY, "&".join(["type=error"] * 1000)),
    Attempt("an unknown parameter", HISTORY, "whatever=1"),
    Attempt("the largest seq", HISTORY, f"after={cursor(f'a1|{GOOD_TIME}|{2**63 - 1}')}"),
    Attempt("a dead letter by message id", "/dead-letters/m1"),
]


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[str]:
    """The API on this test's database, one dead letter `m1` in it."""
    await bury(database_url, [letter(1)])
    async with serving(api_settings(database_url)) as url:
        yield url


async def answer(http: aiohttp.ClientSession, base: str, attempt: Attempt) -> tuple[int, str]:
    """(status, body) of `attempt`; a stream's body only as far as its first line."""
    query = f"?{attempt.query}" if attempt.query else ""
    url = URL(f"{base}{attempt.path}{query}", encoded=True)
    async with http.get(url, headers=attempt.headers) as response:
        if response.content_type == "text/event-stream":
            return response.status, (await response.content.readline()).decode()
        return response.status, await response.text()


class TestHostileParameters:
    """Every hostile kind gets a 4xx with a reason; valid edge values get 200."""

    async def test_every_kind_is_refused_with_a_reason(
        self, api: str, request: pytest.FixtureRequest
    ) -> None:
        """No 5xx, no stream started; each JSON refusal says what is wrong in one line."""
        statuses: Counter[int] = Counter()
        wrong = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            for attempt in ATTEMPTS:
                status, body = await answer(http, api, attempt)
                statuses[status] += 1
                if not 400 <= status < 500 or not body.strip() or "\n" in body.strip():
                    wrong.append((attempt.name, status, body[:200]))
            # The server still answers after all of them.
            async with http.get(f"{api}{HISTORY}") as response:
                assert response.status == 200
        assert wrong == []
        assert len(ATTEMPTS) >= 81
        request.node.user_properties.append(
            ("summary", f"{len(ATTEMPTS)} hostile kinds: statuses {dict(sorted(statuses.items()))}")
        )

    async def test_valid_edges_are_answered(self, api: str) -> None:
        """The extremes of every range are accepted."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            for attempt in VALID:
                status, body = await answer(http, api, attempt)
                assert status == 200, (attempt.name, body[:200])
