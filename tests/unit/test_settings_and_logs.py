"""Settings from the environment, and secrets kept out of logs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import structlog

from consumer.cli import main
from consumer.errors import ConfigurationError
from consumer.logs import configure_logging
from consumer.redaction import redact, url_secrets
from consumer.settings import load_settings, unknown_variables


class TestSettings:
    """pydantic-settings with the contract's names."""

    @pytest.fixture(autouse=True)
    def clean_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """No TASK_HISTORY_* variable from the caller's shell leaks into these tests."""
        for name in [n for n in os.environ if n.startswith("TASK_HISTORY_")]:
            monkeypatch.delenv(name)

    def test_defaults(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """With nothing set, the contract's defaults apply."""
        monkeypatch.chdir(tmp_path)
        settings = load_settings()
        assert settings.database_url == "postgresql://postgres@localhost:5432/postgres"
        assert settings.amqp_url == "amqp://guest:guest@localhost:5672/"
        assert settings.unknown_task_retry_seconds == 300
        assert settings.create_missing_tasks is False
        assert settings.log_format is None

    def test_environment_and_dotenv(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """TASK_HISTORY_* variables are read, and a .env file in the working directory too."""
        monkeypatch.chdir(tmp_path)
        (tmp_path / ".env").write_text("TASK_HISTORY_CREATE_MISSING_TASKS=true\n")
        monkeypatch.setenv("TASK_HISTORY_UNKNOWN_TASK_RETRY_SECONDS", "0")
        settings = load_settings()
        assert settings.create_missing_tasks is True
        assert settings.unknown_task_retry_seconds == 0

    def test_flags_override_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A value given to load_settings wins; None means: not given."""
        monkeypatch.setenv("TASK_HISTORY_DATABASE_URL", "postgresql://env/db")
        assert load_settings(database_url="postgresql://flag/db").database_url == (
            "postgresql://flag/db"
        )
        assert load_settings(database_url=None).database_url == "postgresql://env/db"

    def test_invalid_value_names_the_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A bad value raises one readable line naming the variable."""
        monkeypatch.setenv("TASK_HISTORY_DATABASE_URL", "mysql://nope")
        with pytest.raises(ConfigurationError, match=r"DATABASE_URL: is not a .*scheme"):
            load_settings()

    def test_malformed_url_is_a_configuration_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A URL that can't be parsed is reported as a bad setting, not a crash."""
        monkeypatch.setenv("TASK_HISTORY_DATABASE_URL", "postgresql://u:p@[bad/x")
        with pytest.raises(ConfigurationError, match=r"not a PostgreSQL URL .*IPv6"):
            load_settings()
        monkeypatch.setenv("TASK_HISTORY_DATABASE_URL", "postgresql://localhost:99999/x")
        with pytest.raises(ConfigurationError, match=r"not a PostgreSQL URL .*\(port 99999\)"):
            load_settings()


class TestUnknownVariables:
    """A TASK_HISTORY_* name no setting has is reported, with the setting it resembles."""

    def test_a_typo_names_the_closest_setting(self) -> None:
        """A misspelt name, set in the environment or .env, gets the name it was meant to be."""
        found = unknown_variables(
            {"TASK_HISTORY_DATABSE_URL": "x", "TASK_HISTORY_DATABASE_URL": "y", "PATH": "/bin"},
            ["TASK_HISTORY_AMQP_URLS"],
        )
        assert [(u.name, u.source, u.closest) for u in found] == [
            ("TASK_HISTORY_DATABSE_URL", "environment", "TASK_HISTORY_DATABASE_URL"),
            ("TASK_HISTORY_AMQP_URLS", ".env", "TASK_HISTORY_AMQP_URL"),
        ]

    def test_a_name_set_twice_is_reported_once(self) -> None:
        """The same misspelt name in the environment and in .env: one report, the environment's."""
        [found] = unknown_variables({"TASK_HISTORY_PREFECH": "2"}, ["task_history_prefech"])
        assert (found.source, found.closest) == ("environment", "TASK_HISTORY_PREFETCH")

    def test_names_are_compared_as_the_settings_read_them(self) -> None:
        """Lower case is a known setting (they are read case-insensitively), not an unknown one."""
        assert unknown_variables({"task_history_log_level": "debug"}) == []

    def test_nothing_alike_gets_no_guess(self) -> None:
        """A name like no setting is still reported, without a guess drawn from the prefix."""
        [found] = unknown_variables({"TASK_HISTORY_ZZZ": "1"})
        assert found.closest is None

    def test_the_test_suites_variables_are_not_settings(self) -> None:
        """TASK_HISTORY_TEST_* and TASK_HISTORY_BENCH_* belong to the test suite: no warning."""
        names = {"TASK_HISTORY_TEST_DATABASE_URL": "x", "TASK_HISTORY_BENCH_AMQP_URL": "y"}
        assert unknown_variables(names) == []

    def test_a_command_warns_once_per_name_and_runs(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A command reading settings warns of each typo, then goes on with the defaults."""
        monkeypatch.chdir(tmp_path)
        (tmp_path / ".env").write_text("TASK_HISTORY_BATCHSIZE=10\n")
        monkeypatch.setenv("TASK_HISTORY_DATABSE_URL", "postgresql://elsewhere/db")
        nowhere = "postgresql://postgres@127.0.0.1:1/postgres"
        assert main(["--log-format", "json", "expire", "--database-url", nowhere]) == 1
        *warnings, error = capsys.readouterr().err.splitlines()
        assert error.startswith("task-history: error: database unavailable")
        lines = [json.loads(line) for line in warnings]
        assert [(line["event"], line["variable"], line["did_you_mean"]) for line in lines] == [
            ("unknown setting ignored", "TASK_HISTORY_DATABSE_URL", "TASK_HISTORY_DATABASE_URL"),
            ("unknown setting ignored", "TASK_HISTORY_BATCHSIZE", "TASK_HISTORY_BATCH_SIZE"),
        ]
        assert [line["set_in"] for line in lines] == ["environment", ".env"]


class TestRedaction:
    """Passwords never reach a log line or an error message."""

    def test_every_password_of_a_list_of_urls(self) -> None:
        """Each broker URL of a comma-separated list, and a multi-host database URL."""
        assert url_secrets(
            "postgresql://u:dbpw@h1:5432,h2:5432/db", "amqp://a:pw1@h/,amqp://b:pw2@k/"
        ) == ["dbpw", "pw1", "pw2"]

    def test_url_passwords_are_masked(self) -> None:
        """user:password@ in any URL becomes user:***@."""
        text = "failed: postgresql://app:s3cr3t@db:5432/x and amqp://u:p%40ss@mq/"
        assert redact(text) == "failed: postgresql://app:***@db:5432/x and amqp://u:***@mq/"

    def test_known_secrets_are_masked_anywhere(self) -> None:
        """A password given as a secret is masked even outside a URL."""
        secrets = url_secrets("postgresql://app:hunter2@db/x", "amqp://guest@mq/")
        assert secrets == ["hunter2"]
        assert redact("auth hunter2 refused", secrets) == "auth *** refused"

    def test_log_lines_are_redacted(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A JSON log line carrying a URL and an exception shows no password."""
        configure_logging(log_format="json", level="info", secrets=["hunter2"])
        structlog.get_logger().error(
            "connect failed", url="postgresql://app:hunter2@db/x", error=OSError("hunter2")
        )
        line = capsys.readouterr().err
        assert "hunter2" not in line
        assert json.loads(line)["event"] == "connect failed"
