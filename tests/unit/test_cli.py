"""The command line's manners: exit codes and one-line errors, without any server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from consumer.cli import main
from consumer.errors import ConfigurationError, TaskHistoryError
from consumer.settings import Settings


@pytest.fixture
def plain_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No TASK_HISTORY_* variable and no .env file: every setting at its default."""
    for name in list(os.environ):
        if name.startswith("TASK_HISTORY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def consume_raises(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """Make `task-history consume` fail with `error` at once, connecting to nothing."""

    async def consume(_settings: Settings) -> None:
        raise error

    monkeypatch.setattr("consumer.worker.consume", consume)


def with_notes(error: Exception, *notes: str) -> Exception:
    """`error` with `notes` added, as code that catches, annotates and re-raises does."""
    for note in notes:
        error.add_note(note)
    return error


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines of `text`, in order; other lines left out."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


class TestUsageErrors:
    """Bad arguments: one line on stderr, exit 2."""

    @pytest.mark.parametrize(
        "argv",
        [
            ["frobnicate"],
            ["show"],
            ["show", "not-a-uuid"],
            ["show", "00000000-0000-0000-0000-000000000001", "--bogus"],
            ["show", "00000000-0000-0000-0000-000000000001", "--array"],
            ["show", "00000000-0000-0000-0000-000000000001", "--limit", "0"],
            ["--log-format", "xml", "expire"],
            ["--database-url", "mysql://x/y", "expire"],
        ],
    )
    def test_exit_2_with_one_line(
        self, argv: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Each bad invocation prints exactly one `task-history: error:` line."""
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert len(captured.err.splitlines()) == 1
        assert captured.err.startswith("task-history: error: ")


TASK = "00000000-0000-0000-0000-000000000001"
NOWHERE = "postgresql://postgres@127.0.0.1:1/x"


class TestGlobalOptions:
    """What the processes of test_first_steps don't show of the global options."""

    def test_between_a_command_and_its_argument(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`show --database-url URL TASK`: the option before the argument is still the one used."""
        assert main(["show", "--database-url", NOWHERE, TASK]) == 1
        assert capsys.readouterr().err.startswith(
            "task-history: error: database unavailable: nothing accepts connections at 127.0.0.1:1"
        )

    def test_an_overridden_environment_value_is_never_read(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A TASK_HISTORY_DATABASE_URL no command would accept is ignored under the flag."""
        monkeypatch.setenv("TASK_HISTORY_DATABASE_URL", "mysql://refused/if/used")
        assert main(["expire", "--database-url", NOWHERE]) == 1
        assert "database unavailable" in capsys.readouterr().err

    def test_listed_in_a_commands_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A command's --help lists them under a heading of their own."""
        assert main(["dlq", "list", "--help"]) == 0
        out = capsys.readouterr().out
        shared = out.split("Global options (before or after the command):", 1)[1]
        for option in ("--database-url", "--amqp-url", "--log-format", "--log-level"):
            assert option in shared


class TestNumbersOutOfRange:
    """Every number a command takes has a range; outside it, a usage error before connecting."""

    @pytest.mark.parametrize(
        "argv",
        [
            # Not the cases test_first_steps.TestNumbersOutOfRange runs as processes.
            ["show", TASK, "--until", "9999999999999999999999999w"],
            ["show", TASK, "--since", "0001-01-01T00:00:00+01:00"],
            ["export", "--since", "99999999d"],
            ["demo", "--count", "1000000001"],
            ["demo", "--agents", "101"],
            ["demo", "--rate", "inf"],
            ["consume", "--batch-size", "99999999999999999999"],
            ["consume", "--batch-wait-ms", "-1"],
            ["consume", "--prefetch", "65536"],
        ],
    )
    def test_exit_2_with_one_line(
        self, argv: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Each is one line naming the option, exit 2, and no database is tried."""
        assert main(["--database-url", NOWHERE, *argv]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert len(captured.err.splitlines()) == 1
        assert captured.err.startswith("task-history: error: Invalid value for '--")


class TestFailures:
    """Runtime failures: one line on stderr, exit 1, no secret."""

    def test_unreachable_database(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A database that doesn't answer is one line, without the URL's password."""
        url = "postgresql://app:hunter2@127.0.0.1:1/db"
        assert main(["--database-url", url, "expire"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("task-history: error: database unavailable")
        assert "hunter2" not in err
        assert len(err.splitlines()) == 1

    @pytest.mark.usefixtures("plain_environment")
    @pytest.mark.parametrize(
        ("error", "line", "code"),
        [
            (
                with_notes(TaskHistoryError("replay failed"), "stopped after moving 3", "safe"),
                "task-history: error: replay failed (stopped after moving 3; safe)",
                1,
            ),
            (
                with_notes(ConfigurationError("bad queue"), "see README"),
                "task-history: error: bad queue (see README)",
                2,
            ),
            (
                with_notes(TaskHistoryError("two\nlines"), "a note\non two lines"),
                # A line break in a message is shown escaped: the error stays one line.
                "task-history: error: two\\nlines (a note on two lines)",
                1,
            ),
        ],
    )
    def test_notes_on_the_same_line(
        self,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        error: Exception,
        line: str,
        code: int,
    ) -> None:
        """An exception's notes follow its message in brackets, on the one line."""
        consume_raises(monkeypatch, error)
        assert main(["consume"]) == code
        assert capsys.readouterr().err == line + "\n"


class TestTracebacks:
    """Where an error came from: logged at debug level, or at error level when consume crashes."""

    @pytest.mark.usefixtures("plain_environment")
    def test_debug_level_logs_the_traceback(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--log-level debug logs the failure's traceback, then prints the one line."""
        consume_raises(monkeypatch, TaskHistoryError("it broke"))
        assert main(["--log-level", "debug", "--log-format", "json", "consume"]) == 1
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == "task-history: error: it broke"
        [failure] = [log for log in json_lines(err) if log["event"] == "command failed"]
        assert failure["level"] == "debug"
        assert "Traceback (most recent call last)" in failure["exception"]
        assert "in consume" in failure["exception"]
        assert "TaskHistoryError: it broke" in failure["exception"]

    @pytest.mark.usefixtures("plain_environment")
    def test_info_level_prints_one_line(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """At the default level a failure is the one line, no traceback."""
        consume_raises(monkeypatch, TaskHistoryError("it broke"))
        assert main(["--log-format", "json", "consume"]) == 1
        assert capsys.readouterr().err == "task-history: error: it broke\n"

    def test_debug_traceback_hides_secrets(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The traceback masks the password of the URL, as every log line does."""
        url = "postgresql://app:hunter2@127.0.0.1:1/db"
        argv = ["--log-level", "debug", "--log-format", "json", "--database-url", url, "expire"]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "hunter2" not in err
        assert err.splitlines()[-1].startswith("task-history: error: database unavailable")
        assert any(log["event"] == "command failed" for log in json_lines(err))

    def test_failure_before_logging_is_set_up(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A setting refused before logging exists is still one line, on stderr only."""
        argv = ["--log-level", "debug", "--database-url", "mysql://x/y", "consume"]
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert len(captured.err.splitlines()) == 1
        assert captured.err.startswith("task-history: error: invalid setting")

    @pytest.mark.usefixtures("plain_environment")
    def test_consume_crash_logs_the_traceback(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An unexpected exception in consume is an error log line with its traceback first."""
        consume_raises(monkeypatch, RuntimeError("boom"))
        assert main(["--log-format", "json", "consume"]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        *logs, last = captured.err.splitlines()
        assert last == "task-history: error: unexpected RuntimeError: boom"
        [crash] = [json.loads(line) for line in logs]
        assert crash["level"] == "error"
        assert "Traceback (most recent call last)" in crash["exception"]
        assert "RuntimeError: boom" in crash["exception"]


class TestEntryPoints:
    """`task-history` and `python -m consumer` are the same program."""

    def test_python_dash_m(self) -> None:
        """`python -m consumer --help` lists the commands and exits 0."""
        result = subprocess.run(
            [sys.executable, "-m", "consumer", "--help"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0
        for command in ("migrate", "expire", "show"):
            assert command in result.stdout

    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--version prints the package version."""
        assert main(["--version"]) == 0
        assert "task-history, version" in capsys.readouterr().out


# A command with more output than a pipe holds, added to the real command line, run by main().
_LONG_OUTPUT = """
import sys
import click
from consumer.cli import main
from consumer.cli.root import cli

@cli.command()
def long() -> None:
    for n in range(20_000):
        click.echo(f"line {n:05} " + "x" * 60)

sys.exit(main(["long"]))
"""


def into_head(script: str) -> tuple[int, str]:
    """Run `script | head -1`: the script's exit status, and what it wrote on stderr."""
    writer = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().startswith(b"line 00000")
    writer.stdout.close()  # as head does after its line
    _, err = writer.communicate(timeout=60)
    return writer.returncode, err.decode()


class TestOutputThatCantBeWritten:
    """A reader that goes away, or a full disk: a conventional status, at most one line."""

    def test_a_closed_pipe_is_141_and_silent_every_time(self) -> None:
        """`| head -1` ends it as SIGPIPE ends other programs: 141, nothing on stderr (5 runs)."""
        assert [into_head(_LONG_OUTPUT) for _ in range(5)] == [(141, "")] * 5

    def test_a_full_disk_is_one_line(self) -> None:
        """Output to /dev/full: exit 1 and one line naming the reason."""
        with Path("/dev/full").open("w") as full:
            result = subprocess.run(
                [sys.executable, "-m", "consumer", "schema", "--typescript"],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                check=False,
            )
        assert result.returncode == 1
        assert (
            result.stderr
            == "task-history: error: can't write the output: No space left on device\n"
        )


class TestHelp:
    """What `--help` shows is whole."""

    def test_every_command_summary_is_a_whole_sentence(self) -> None:
        """The command lists show each first sentence whole, wrapped, never cut with '...'."""
        for group in ([], ["dlq"]):
            result = subprocess.run(
                [sys.executable, "-m", "consumer", *group, "--help"],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "COLUMNS": "80"},
            )
            commands = result.stdout.split("Commands:\n", 1)[1]
            assert "..." not in commands
            summaries = " ".join(commands.split()).split(". ")
            assert len(summaries) >= (6 if group else 12)

    def test_every_option_says_what_it_does(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The options of consume say what they do; export shows --task."""
        assert main(["consume", "--help"]) == 0
        help_text = capsys.readouterr().out
        assert "Events per batch" in help_text
        assert "Unacked messages the broker may send" in help_text
        assert main(["export", "--help"]) == 0
        assert "--task UUID" in capsys.readouterr().out

    def test_every_command_that_prints_data_has_json(self) -> None:
        """Every command has --json but those whose output is already JSON, logs or a schema."""
        from consumer.cli.root import cli  # noqa: PLC0415  # the command tree itself

        # Logs, JSON Lines, a schema or TypeScript, one indented JSON object.
        already = {"consume", "export", "schema", "dlq export", "dlq show"}
        missing = []
        for name, command in _commands(cli):
            options = {o for p in command.params for o in getattr(p, "opts", [])}
            if name not in already and "--json" not in options:
                missing.append(name)
        assert missing == []


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    """Every command under `group`, by its full name (`dlq list`)."""
    found: list[tuple[str, click.Command]] = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix}{name} ")
        else:
            found.append((f"{prefix}{name}", command))
    return found
