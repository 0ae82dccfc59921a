"""The command line's manners: exit codes and one-line errors, without any server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from consumer.cli import main


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
