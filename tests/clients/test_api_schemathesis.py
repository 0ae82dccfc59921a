"""Schemathesis, reading /openapi.json, against a real `task-history serve`: no 5xx, ever.

Schemathesis (a property-based tester nobody here wrote) generates requests from the API's own
OpenAPI document, valid and invalid, in its examples, coverage, fuzzing and stateful phases,
and checks every answer: not a server error, a documented status, content type and headers,
the documented response schema, invalid data refused, the token required where the document
says so. The live stream is left out (a valid request to it never ends); the same server's
stream is fuzzed here with Hypothesis instead.

One check is left out, `positive_data_acceptance`: it expects every schema-valid request to
be accepted, and two of the API's rules can't be said in JSON Schema, so schema-valid values are
rightly refused: a cursor is opaque text this server gave out, and times must fall in years 1 to
9999 once in UTC.

The server has both tokens; Schemathesis sends the operator's, which reads everything too, so
the routes that replay and purge dead letters are fuzzed past their refusals (replays go to the
test's own exchange).

The same requests every run, from the number 1; TASK_HISTORY_TEST_FUZZ_SEED=N draws others (and the
stream's Hypothesis examples too). The counts (requests, statuses, failures, seed) are printed
in the test run's summary.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.settings import Settings
from tests.cluster import free_port
from tests.harness import REPOSITORY, settings_environment
from tests.helpers import run_sync
from tests.letters import bury, letter

TOKEN = "schemathesis-token"  # noqa: S105  # the test's own token: the operator's
READER_TOKEN = "schemathesis-reader"  # noqa: S105  # the test's own token
SCHEMATHESIS = Path(sys.executable).parent / "st"
SEED = os.environ.get("TASK_HISTORY_TEST_FUZZ_SEED")


@dataclass(frozen=True)
class Served:
    """A `serve` process's address, and the ids of what its database holds."""

    host: str
    port: int
    task: uuid.UUID

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://{self.host}:{self.port}"


async def _seed(database_url: str, task: uuid.UUID) -> None:
    """A task with 30 entries in one workspace and session, and 5 dead letters m1..m5."""
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("INSERT INTO tasks (id) VALUES ($1)", task)
        await connection.execute(
            """
            INSERT INTO task_build_history (task_id, workspace_id, session_id, context_type,
                                            content, metadata, created_at)
            SELECT $1, $1, $1, (ARRAY['agent_turn', 'error', 'chat_message'])[n % 3 + 1],
                   'entry ' || n, jsonb_build_object('n', n),
                   now() - make_interval(mins => 30 - n)
            FROM generate_series(1, 30) AS n ORDER BY n
            """,
            task,
        )
    finally:
        await connection.close()
    await bury(database_url, [letter(n, task=task) for n in range(1, 6)])


@pytest.fixture
def served(database_url: str, settings: Settings, tmp_path: Path) -> Iterator[Served]:
    """`task-history serve` with both tokens, on a database holding entries and dead letters.

    Its replays go to the test's own exchange; Schemathesis sends the operator's token, which
    reads too, so the operator routes are fuzzed beyond their refusals.
    """
    task = uuid.uuid4()
    run_sync(_seed(database_url, task))
    port = free_port()
    environment = settings_environment(settings.model_copy(update={"log_format": "json"}))
    environment["TASK_HISTORY_API_TOKEN"] = READER_TOKEN
    environment["TASK_HISTORY_API_OPERATOR_TOKEN"] = TOKEN
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "consumer", "serve", "--port", str(port)],
        cwd=REPOSITORY,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 30
        while not _answers("127.0.0.1", port):
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "serve did not answer in 30 s"
            time.sleep(0.1)
        yield Served("127.0.0.1", port, task)
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def _answers(host: str, port: int) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=2)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


class TestSchemathesis:
    """Every operation of /openapi.json, fuzzed by Schemathesis: all checks pass, no 5xx."""

    def test_no_server_error_and_every_check_passes(
        self, served: Served, tmp_path: Path, request: pytest.FixtureRequest
    ) -> None:
        """Schemathesis's phases over every operation but the stream find no failure."""
        seed = int(SEED or 1)
        reports = tmp_path / "reports"
        result = subprocess.run(
            [
                str(SCHEMATHESIS),
                "run",
                f"{served.url}/openapi.json",
                *("--header", f"Authorization: Bearer {TOKEN}"),
                *("--checks", "all"),
                *("--exclude-checks", "positive_data_acceptance"),
                *("--exclude-path-regex", "/stream$"),
                *("--max-examples", "100"),
                *("--seed", str(seed)),
                *("--workers", "1"),
                *("--report", "json,har"),
                *("--report-dir", str(reports)),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
            cwd=tmp_path,
        )
        (run,) = [json.loads(path.read_text()) for path in reports.glob("json-*.json")]
        (har,) = [json.loads(path.read_text()) for path in reports.glob("har-*.json")]
        statuses = Counter(entry["response"]["status"] for entry in har["log"]["entries"])
        server_errors = sum(count for status, count in statuses.items() if status >= 500)
        request.node.user_properties.append(
            (
                "summary",
                (
                    f"schemathesis {run['schemathesis_version']} (seed {seed}):"
                    f" {run['operations']['tested']} operations,"
                    f" {run['test_cases']['generated']} test cases,"
                    f" {sum(statuses.values())} requests,"
                    f" statuses {dict(sorted(statuses.items()))},"
                    f" {server_errors} server errors, {len(run['failures'])} failures,"
                    f" {len(run['errors'])} errors"
                ),
            )
        )
        assert server_errors == 0, result.stdout[-5000:]
        assert run["failures"] == [], result.stdout[-5000:]
        assert run["errors"] == [], result.stdout[-5000:]
        assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
        assert run["operations"]["tested"] == run["operations"]["selected"] >= 16
        tried = {entry["request"]["url"].split("?")[0] for entry in har["log"]["entries"]}
        for route in (
            "/tasks",
            "/dead-letters/letters",
            "/dead-letters/replay",
            "/dead-letters/purge",
        ):
            assert f"{served.url}{route}" in tried, route


def _forged_cursor() -> st.SearchStrategy[str]:
    """Cursors made by hand: any tag, any time text, any number."""
    inner = st.tuples(
        st.sampled_from(["a1", "d1", "x1", ""]),
        st.one_of(
            st.datetimes(timezones=st.timezones()).map(lambda moment: moment.isoformat()),
            st.text(max_size=40),
        ),
        st.one_of(st.integers(), st.text(max_size=30)),
    ).map(lambda parts: "|".join(str(part) for part in parts))
    return inner.map(lambda text: base64.urlsafe_b64encode(text.encode()).decode().rstrip("="))


HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=300,
)


class TestStreamFuzzed:
    """The live stream, resumed from anything: refused before it starts, or started cleanly."""

    @given(
        value=st.one_of(HEADER_TEXT, _forged_cursor()),
        as_header=st.booleans(),
    )
    @settings(
        max_examples=300,
        deadline=None,
        derandomize=SEED is None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    def test_any_last_event_id_or_after(
        self, served: Served, value: str, *, as_header: bool
    ) -> None:
        """A 400 with a reason, or 200 whose first line is `retry:`; never a 5xx."""
        connection = http.client.HTTPConnection(served.host, served.port, timeout=10)
        path = f"/tasks/{served.task}/history/stream"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if as_header:
            headers["Last-Event-ID"] = value
        else:
            path += f"?after={quote(value, safe='')}"
        try:
            connection.putrequest("GET", path)
            for name, text in headers.items():
                connection.putheader(name, text.encode("latin-1"))
            connection.endheaders()
            response = connection.getresponse()
            if response.status == 200:
                assert response.getheader("Content-Type", "").startswith("text/event-stream")
                assert response.readline().startswith(b"retry: ")
            else:
                assert response.status in (400, 422), response.status
                assert json.loads(response.read())["detail"]
        finally:
            connection.close()
