"""The dlq commands without a server: the replayed copy, usage errors, and purge's question."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

import click
import pytest

from consumer.broker.headers import SIGNATURE
from consumer.broker.signing import HeaderSigner
from consumer.cli import main
from consumer.deadletters import ERROR_CODES, DeadLetter
from consumer.replay import replay_message
from consumer.store.deadletters import Extent
from tests.fakes import SIGNER

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
BODY = b'{"task_id": "6f1c2a1e-7d4b-4c8e-9a0f-1b2c3d4e5f60", "content": "x"}'


def stored(**fields: Any) -> DeadLetter:  # noqa: ANN401  # any field of DeadLetter
    """A dead letter as a row of the table holds it, every property set, `fields` replaced."""
    row: dict[str, Any] = {
        "id": 7,
        "message_id": "m7",
        "task_id": None,
        "routing_key": "history.agent_turn",
        "code": "unknown_task",
        "detail": "task_id: no task exists",
        "failed_at": NOW,
        "replay_count": 1,
        "headers": {"x-error": "unknown_task", "x-replay-count": 1, "app": "kept"},
        "properties": {
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "delivery_mode": 2,
            "priority": 3,
            "correlation_id": "c1",
            "reply_to": "replies",
            "expiration": "60000",
            "timestamp": NOW.isoformat(),
            "type": "event",
            "app_id": "agent-7",
            "user_id": "someone",
        },
        "body": BODY,
    }
    return DeadLetter(**row | fields)


class TestReplayMessage:
    """The copy a replay publishes, built from a row."""

    def test_body_properties_and_headers(self) -> None:
        """Same body and properties, persistent, the failure cleared, the replay counted."""
        message = replay_message(stored(), SIGNER)
        assert message.body == BODY
        headers = dict(message.headers)
        assert SIGNER.vouches_for(headers, body=BODY)
        del headers[SIGNATURE]
        assert headers == {"app": "kept", "x-replay-count": 2}
        assert (message.content_type, message.content_encoding) == ("application/json", "utf-8")
        assert (message.message_id, message.correlation_id, message.reply_to) == (
            "m7",
            "c1",
            "replies",
        )
        assert (message.priority, message.type, message.app_id) == (3, "event", "agent-7")
        assert message.timestamp == NOW
        assert message.delivery_mode == 2

    def test_no_user_id_and_no_expiration(self) -> None:
        """The broker refuses another user's id; a copy must not expire on its way back."""
        message = replay_message(stored(), SIGNER)
        assert message.user_id is None
        assert message.expiration is None

    def test_malformed_properties_are_left_out(self) -> None:
        """A property of the wrong type is not sent rather than failing the replay."""
        message = replay_message(
            stored(properties={"priority": "high", "timestamp": "yesterday", "type": 5}), SIGNER
        )
        assert (message.timestamp, message.type) == (None, None)
        assert not message.priority  # aio-pika's default, 0

    def test_signed_only_by_this_deployments_key(self) -> None:
        """Another deployment's consumer would not believe the count: it has another key."""
        message = replay_message(stored(), SIGNER)
        other = HeaderSigner(b"another deployment's key, 32 bytes")
        assert not other.vouches_for(dict(message.headers), body=BODY)


class TestUsageErrors:
    """Bad flags are exit 2 and one line, before any server is asked."""

    def test_an_unknown_error_code_lists_the_known_ones(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`--error invalid-json` names the code it meant and every code there is."""
        assert main(["dlq", "replay", "--error", "invalid-json"]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1
        assert "'invalid-json' is not a dead-letter error code (did you mean invalid_json?)" in err
        for code in ERROR_CODES:
            assert code in err

    @pytest.mark.parametrize(
        "argv",
        [
            ["dlq", "purge", "--yes"],
            ["dlq", "purge", "--all", "--error", "invalid_json", "--yes"],
            ["dlq", "purge", "--error", "invalid_json"],  # no terminal to ask on, no --yes
            ["dlq", "list", "--since", "2h", "--newer-than", "3h"],
            ["dlq", "export", "--until", "1d", "--older-than", "2d"],
            ["dlq", "replay", "--since", "1h", "--until", "2h"],
            ["dlq", "replay", "--task", "not-a-uuid"],
            ["dlq", "list", "--error", "nope"],
            ["dlq", "list", "--sample", "10001"],
            ["dlq", "list", "--since", "99999999d"],
            ["dlq", "list", "--older-than", "9999-12-31T23:30:00-01:00"],
            ["dlq", "replay", "--limit", "1000000001"],
            ["dlq", "replay", "--max-replays", "1000001"],
            ["dlq", "purge", "--all", "--yes", "--limit", "999999999999999999999"],
            ["dlq", "export", "--limit", "0"],
            ["dlq", "list", "--log-format", "xml"],
        ],
    )
    def test_exit_2(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        """Each is one `task-history: error:` line and exit 2."""
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert len(captured.err.splitlines()) == 1
        assert captured.err.startswith("task-history: error: ")


class TestTheGroup:
    """`task-history dlq` alone, and what its help points to."""

    def test_alone_it_prints_its_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        """No subcommand: the group's help on stdout, exit 0."""
        assert main(["dlq"]) == 0
        captured = capsys.readouterr()
        assert captured.out.startswith("Usage: task-history dlq [OPTIONS] COMMAND [ARGS]...")
        assert captured.err == ""

    def test_the_help_points_to_the_operating_guide(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The guide it names is the operating guide's section on dead letters."""
        assert main(["dlq", "--help"]) == 0
        assert 'docs/operating.md, "Dead letters"' in " ".join(capsys.readouterr().out.split())

    def test_global_options_after_a_subcommand(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`dlq list --database-url URL` uses that URL: here one nothing answers at."""
        url = "postgresql://app:hunter2@127.0.0.1:1/db"
        assert main(["dlq", "list", "--database-url", url]) == 1
        err = capsys.readouterr().err
        assert err.startswith("task-history: error: database unavailable: nothing accepts")
        assert "hunter2" not in err


@pytest.fixture
def answering(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str | None], None]]:
    """A function that makes stdin a pipe holding an answer, then its end (None: at once)."""
    pipes: list[TextIO] = []

    def answer(text: str | None) -> None:
        reading, writing = os.pipe()
        os.write(writing, (text or "").encode())
        os.close(writing)
        pipes.append(os.fdopen(reading))
        monkeypatch.setattr(sys, "stdin", pipes[-1])

    yield answer
    for pipe in pipes:
        pipe.close()


@pytest.fixture
def purge_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`dlq purge` as on a terminal, 10 letters matching (of any number); no database.

    Returns the store calls made, one item each: the count, then (if it gets that far) the purge.
    """
    calls: list[str] = []

    def on_store(_ctx: click.Context, _work: Callable[[Any], Awaitable[Any]]) -> Any:  # noqa: ANN401
        calls.append("store")
        if len(calls) == 1:
            return Extent(count=10, last=99)
        pytest.fail("purge went on to delete after the question was not answered yes")

    monkeypatch.setattr("consumer.cli.deadletters.can_ask", lambda: True)
    monkeypatch.setattr("consumer.cli.deadletters._on_store", on_store)
    return calls


class TestPurgeQuestion:
    """On a terminal purge asks, saying how many match; anything but yes deletes nothing."""

    def test_ctrl_c_cancels(
        self,
        purge_on_a_terminal: list[str],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Ctrl-C at the question (its handler raising in the wait): exit 1, nothing deleted."""

        def interrupted(_wakeup: int) -> str:
            raise KeyboardInterrupt

        monkeypatch.setattr("consumer.cli.questions._read_line", interrupted)
        assert main(["dlq", "purge", "--error", "invalid_json"]) == 1
        assert len(purge_on_a_terminal) == 1  # counted, never purged
        err = capsys.readouterr().err
        assert "Delete 10 dead letters (error invalid_json)? [y/N]: \n" in err
        assert err.endswith("\npurge cancelled: nothing deleted\n")
        assert "Traceback" not in err

    @pytest.mark.parametrize("answer", [None, "n\n", "\n", "maybe\n"])
    def test_anything_but_yes_cancels(
        self,
        answer: str | None,
        purge_on_a_terminal: list[str],
        answering: Callable[[str | None], None],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The end of input, no, nothing or another word: the same. The count obeys --limit."""
        answering(answer)
        task = uuid.uuid4()
        assert main(["dlq", "purge", "--task", str(task), "--limit", "3"]) == 1
        assert len(purge_on_a_terminal) == 1
        err = capsys.readouterr().err
        assert f"Delete 3 dead letters (task {task})? [y/N]: " in err
        assert err.endswith("purge cancelled: nothing deleted\n")

    @pytest.mark.parametrize("answer", ["y\n", "YES\n", " yes \n"])
    def test_yes_purges(
        self, answer: str, purge_on_a_terminal: list[str], answering: Callable[[str | None], None]
    ) -> None:
        """A y or a yes, in any case: it goes on to purge."""
        answering(answer)
        with pytest.raises(pytest.fail.Exception, match="went on to delete"):
            main(["dlq", "purge", "--error", "invalid_json"])
        assert len(purge_on_a_terminal) == 2
