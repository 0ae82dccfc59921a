"""A newcomer's first commands, as processes: what they print, on which stream, with which code."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from consumer.cli import main, publishing
from consumer.settings import Settings
from tests.cluster import free_port
from tests.harness import (
    REPOSITORY,
    ConsumerProcess,
    command_running,
    run_command,
    settings_environment,
    wait_for,
)
from tests.letters import bury, letter

TASK = "6f1c2a1e-7d4b-4c8e-9a0f-1b2c3d4e5f60"


def plain_environment() -> dict[str, str]:
    """This process's environment without any TASK_HISTORY_* variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TASK_HISTORY_")}


def with_netloc(url: str, *, netloc: str | None = None, path: str | None = None) -> str:
    """`url` with another user, password, host or port (`netloc`), or another path."""
    parts = urlsplit(url)
    return urlunsplit(
        parts._replace(
            netloc=parts.netloc if netloc is None else netloc,
            path=parts.path if path is None else path,
        )
    )


def host_of(url: str) -> str:
    """The host:port of `url`."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def assert_one_error_line(code: int, out: str, err: str, *, exit_code: int) -> str:
    """The run failed with `exit_code`, nothing on stdout, one error line on stderr; that line."""
    assert code == exit_code, out + err
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert err.startswith("task-history: error: "), err
    return err.strip()


async def new_task(sql: asyncpg.Connection) -> uuid.UUID:
    """A task row created the way the host application does."""
    task = uuid.uuid4()
    await sql.execute("INSERT INTO tasks (id) VALUES ($1)", task)
    return task


class TestGroupsWithoutACommand:
    """A group alone prints its help, as help, not as an error."""

    @pytest.mark.parametrize(
        ("argv", "heading"),
        [
            ((), "Usage: task-history [OPTIONS] COMMAND [ARGS]..."),
            (("dlq",), "Usage: task-history dlq [OPTIONS] COMMAND [ARGS]..."),
        ],
    )
    async def test_help_on_stdout_exit_0(self, argv: tuple[str, ...], heading: str) -> None:
        """`task-history` and `task-history dlq`: the usage and command list on stdout, exit 0."""
        code, out, err = await run_command(*argv, environment=plain_environment())
        assert code == 0, err
        assert err == ""
        assert out.startswith(heading)
        assert "Commands:" in out

    async def test_other_usage_errors_stay_one_line(self) -> None:
        """An unknown command is still one line on stderr, exit 2."""
        code, out, err = await run_command("frobnicate", environment=plain_environment())
        line = assert_one_error_line(code, out, err, exit_code=2)
        assert "No such command 'frobnicate'" in line


class TestGlobalOptionsAnywhere:
    """--database-url, --amqp-url, --log-format and --log-level go before or after a command."""

    async def test_after_a_nested_command(self, database_url: str) -> None:
        """`dlq list --json --database-url URL` reads that database."""
        code, out, err = await run_command(
            "dlq", "list", "--json", "--database-url", database_url, environment=plain_environment()
        )
        assert code == 0, err
        assert json.loads(out)["total"] == 0

    async def test_the_flag_wins_over_the_environment(self, database_url: str) -> None:
        """A flag after the command overrides TASK_HISTORY_DATABASE_URL pointing nowhere."""
        environment = plain_environment() | {
            "TASK_HISTORY_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x"
        }
        task = str(uuid.uuid4())
        code, out, err = await run_command(
            "show", task, "--json", "--database-url", database_url, environment=environment
        )
        assert code == 0, err
        assert out == ""

    async def test_the_last_one_given_wins(self, database_url: str) -> None:
        """Given before and after the command, the one after it is used."""
        nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
        code, _, err = await run_command(
            *("--database-url", nowhere, "dlq", "list", "--database-url", database_url),
            environment=plain_environment(),
        )
        assert code == 0, err

    async def test_a_bad_value_after_the_command(self) -> None:
        """`dlq list --log-level loud`: one usage line naming the option, exit 2."""
        code, out, err = await run_command(
            "dlq", "list", "--log-level", "loud", environment=plain_environment()
        )
        line = assert_one_error_line(code, out, err, exit_code=2)
        assert "'--log-level'" in line


class TestNumbersOutOfRange:
    """A number no command can use is a usage error naming its range, before any connection."""

    @pytest.mark.parametrize(
        ("argv", "says"),
        [
            (("show", TASK, "--limit", "999999999999999999999"), "1<=x<=1000000000"),
            (("show", TASK, "--since", "99999999d"), "out of range"),
            (("export", "--limit", "99999999999999"), "1<=x<=1000000000"),
            (("dlq", "list", "--sample", "99999999999999"), "0<=x<=10000"),
            (("dlq", "replay", "--max-replays", "99999999999999"), "0<=x<=1000000"),
            (("demo", "--rate", "nan"), "0.01<=x<=1000"),
            (("serve", "--port", "65536"), "0<=x<=65535"),
        ],
    )
    async def test_exit_2_one_line(self, argv: tuple[str, ...], says: str) -> None:
        """Each is one `task-history: error:` line naming the option and its range, exit 2."""
        # A database that answers nothing: a number that got through would fail otherwise.
        environment = plain_environment() | {
            "TASK_HISTORY_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x"
        }
        code, out, err = await run_command(*argv, environment=environment)
        line = assert_one_error_line(code, out, err, exit_code=2)
        assert f"Invalid value for '{argv[-2]}'" in line
        assert says in line


class TestBrokerConnectionFailures:
    """Each way of not reaching the broker is one line saying what to check, and no log."""

    async def publish(self, url: str) -> tuple[int, str, str]:
        """`publish` one event to the broker at `url`."""
        return await run_command(
            *("publish", "--task", TASK, "--type", "agent_turn", "--content", "hello"),
            *("--amqp-url", url),
            environment=plain_environment(),
        )

    async def test_a_vhost_that_does_not_exist(self, amqp_url: str) -> None:
        """The vhost is named, and the two reasons the broker refuses one."""
        vhost = f"no-such-vhost-{uuid.uuid4().hex[:8]}"
        code, out, err = await self.publish(with_netloc(amqp_url, path=f"/{vhost}"))
        line = assert_one_error_line(code, out, err, exit_code=1)
        assert f"the broker refused to open vhost '{vhost}' named in the AMQP URL" in line
        assert "doesn't exist, or the user" in line
        assert "Connection.Close" not in line

    async def test_refused_credentials(self, amqp_url: str) -> None:
        """A wrong password: the user is named, the password is not."""
        parts = urlsplit(amqp_url)
        netloc = f"{parts.username}:Wrong-S3cret@{host_of(amqp_url)}"
        code, out, err = await self.publish(with_netloc(amqp_url, netloc=netloc))
        line = assert_one_error_line(code, out, err, exit_code=1)
        assert f"the broker refused the credentials of user '{parts.username}'" in line
        assert "check the user name and password in the AMQP URL" in line
        assert "Wrong-S3cret" not in line

    async def test_an_unknown_host(self) -> None:
        """A host no resolver knows is named as such."""
        code, out, err = await self.publish("amqp://guest:guest@no-such-host.invalid:5672/")
        line = assert_one_error_line(code, out, err, exit_code=1)
        assert "no host 'no-such-host.invalid' is known" in line

    async def test_a_closed_port(self) -> None:
        """Nothing listening: the address and what to check."""
        port = free_port()
        code, out, err = await self.publish(f"amqp://guest:guest@127.0.0.1:{port}/")
        line = assert_one_error_line(code, out, err, exit_code=1)
        assert f"nothing accepts connections at 127.0.0.1:{port}" in line
        assert "that RabbitMQ runs there" in line


class TestDatabaseConnectionFailures:
    """Each way of not reaching the database is one line saying what to check."""

    async def show(self, url: str) -> tuple[int, str, str]:
        """`show` a task of the database at `url`."""
        return await run_command(
            "show", TASK, "--database-url", url, environment=plain_environment()
        )

    async def test_a_database_that_does_not_exist(self, postgres_server_url: str) -> None:
        """The database and the server are named, and how to create it."""
        url = with_netloc(postgres_server_url, path="/no_such_database")
        code, out, err = await self.show(url)
        line = assert_one_error_line(code, out, err, exit_code=1)
        assert "database 'no_such_database' does not exist on" in line
        assert "createdb no_such_database" in line

    async def test_a_role_that_does_not_exist(self, postgres_server_url: str) -> None:
        """The role the server refused is named, with what to check."""
        url = with_netloc(
            postgres_server_url, netloc=f"no_such_role@{host_of(postgres_server_url)}"
        )
        code, out, err = await self.show(url)
        line = assert_one_error_line(code, out, err, exit_code=1)
        assert "the database server refused role 'no_such_role'" in line
        assert "check the user and password in the database URL" in line

    async def test_an_unknown_host(self) -> None:
        """A host no resolver knows is named as such."""
        code, out, err = await self.show("postgresql://postgres@no-such-host.invalid:5432/x")
        line = assert_one_error_line(code, out, err, exit_code=1)
        assert line.startswith("task-history: error: database unavailable: no host")
        assert "'no-such-host.invalid'" in line

    async def test_a_closed_port(self) -> None:
        """Nothing listening: the address and what to check."""
        port = free_port()
        code, out, err = await self.show(f"postgresql://postgres@127.0.0.1:{port}/x")
        line = assert_one_error_line(code, out, err, exit_code=1)
        assert f"nothing accepts connections at 127.0.0.1:{port}" in line
        assert "that PostgreSQL runs there" in line


class TestUnknownTasks:
    """Events for a task that doesn't exist: `show` says so, and so does the consumer's log."""

    async def test_show_says_the_task_does_not_exist(self, settings: Settings) -> None:
        """Where such events go, and the ways to create the task or let the consumer do it."""
        task = str(uuid.uuid4())
        code, out, err = await run_command("show", task, environment=settings_environment(settings))
        assert code == 0, err
        assert f"no task {task} exists" in out
        assert "TASK_HISTORY_UNKNOWN_TASK_RETRY_SECONDS" in out
        assert f"INSERT INTO tasks (id) VALUES ('{task}')" in out
        assert "Store.create_task" in out
        assert "TASK_HISTORY_CREATE_MISSING_TASKS=true" in out

    async def test_show_counts_its_dead_letters(self, settings: Settings) -> None:
        """Events already dead-lettered for the missing task: how many, and how to replay them."""
        task = uuid.uuid4()
        await bury(settings.database_url, [letter(n, task=task) for n in range(2)])
        code, out, err = await run_command(
            "show", str(task), environment=settings_environment(settings)
        )
        assert code == 0, err
        assert "2 of its events are dead letters (unknown_task)" in out
        assert f"task-history dlq replay --task {task} --error unknown_task" in out

    async def test_publish_wait_blames_the_missing_task_not_the_consumer(
        self,
        settings: Settings,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """`publish --wait` for a task that does not exist ends saying so, not blaming `consume`."""
        for name, value in settings_environment(settings).items():
            if name.startswith("TASK_HISTORY_"):
                monkeypatch.setenv(name, value)
        monkeypatch.setattr(publishing, "WAIT_SECONDS", 1)
        assert await asyncio.to_thread(main, ["migrate"]) == 0
        task = str(uuid.uuid4())
        argv = ["publish", "--wait", "--task", task, "--type", "agent_turn", "--content", "x"]
        capsys.readouterr()
        assert await asyncio.to_thread(main, argv) == 1
        error = capsys.readouterr().err.splitlines()
        assert error[0].startswith(f"no task {task} exists")  # the hint, before the wait
        assert f"task {task} still does not exist" in error[-1]
        assert "--create-task" in error[-1]
        assert "is `task-history consume` running" not in error[-1]

    async def test_with_json_the_hint_goes_to_stderr(self, settings: Settings) -> None:
        """--json keeps stdout for JSON: nothing there, the hint on stderr."""
        task = str(uuid.uuid4())
        code, out, err = await run_command(
            "show", task, "--json", environment=settings_environment(settings)
        )
        assert code == 0, err
        assert out == ""
        assert f"no task {task} exists" in err

    async def test_the_consumer_logs_the_hint_once_per_task(
        self, settings: Settings, tmp_path: Path, sql: asyncpg.Connection
    ) -> None:
        """Three events for a missing task, one log line naming it, its wait and the remedies."""
        waiting = settings.model_copy(update={"unknown_task_retry_seconds": 300})
        consumer = ConsumerProcess(waiting, tmp_path / "consumer.log")
        consumer.start()
        task = str(uuid.uuid4())
        try:
            for number in range(3):
                code, _, err = await run_command(
                    *("publish", "--task", task, "--type", "agent_turn"),
                    *("--content", f"step {number}"),
                    environment=settings_environment(settings),
                )
                assert code == 0, err

            async def parked() -> int:
                """How many events the consumer's batches have parked so far."""
                batches = [line for line in consumer.log_lines() if line.get("event") == "batch"]
                return sum(int(line.get("waiting_for_task", 0)) for line in batches)

            await wait_for(parked, lambda seen: seen >= 3, what="three events parked")
        finally:
            consumer.kill()
        hints = [
            line for line in consumer.log_lines() if "a task that doesn't exist" in line["event"]
        ]
        assert len(hints) == 1, consumer.log()
        assert hints[0]["task_id"] == task
        assert hints[0]["waits_seconds"] == 300
        assert "Store.create_task" in hints[0]["create_it"]
        assert hints[0]["or_set"] == "TASK_HISTORY_CREATE_MISSING_TASKS=true"
        assert await sql.fetchval("SELECT count(*) FROM task_build_history") == 0


class TestPublishCreateTaskAndWait:
    """`publish --create-task --wait` creates the task, then prints the event once it is stored."""

    async def test_migrate_consume_publish(self, settings: Settings, tmp_path: Path) -> None:
        """migrate; consume in the background; publish --create-task --wait prints it stored."""
        environment = settings_environment(settings)
        code, out, err = await run_command("migrate", environment=environment)
        assert code == 0, err
        assert out.splitlines()[-1].startswith("declared exchange")
        consumer = ConsumerProcess(settings, tmp_path / "consumer.log")
        consumer.start()
        try:
            code, out, err = await run_command(
                *("publish", "--create-task", "--wait", "--task", TASK),
                *("--type", "agent_turn", "--content", "hello"),
                environment=environment,
            )
        finally:
            consumer.kill()
        assert code == 0, err + consumer.log()
        event_id, stored = out.splitlines()
        uuid.UUID(event_id)
        assert stored.startswith("stored: ")
        assert stored.endswith("agent_turn      hello")
        code, out, err = await run_command("show", TASK, environment=environment)
        assert code == 0, err
        assert f"task {TASK}: 1 entry, oldest first" in out
        assert "hello" in out


class TestOneVocabulary:
    """Commands say things the same way: positional ids, counts with units, what they wait for."""

    async def test_export_takes_the_task_id_positionally(
        self, settings: Settings, sql: asyncpg.Connection
    ) -> None:
        """`export TASK_ID` prints what `export --task TASK_ID` prints."""
        task = await new_task(sql)
        await sql.execute(
            "INSERT INTO task_build_history (id, task_id, context_type, content)"
            " VALUES ($1, $2, 'agent_turn', 'one')",
            uuid.uuid4(),
            task,
        )
        environment = settings_environment(settings)
        positional = await run_command("export", str(task), environment=environment)
        flagged = await run_command("export", "--task", str(task), environment=environment)
        assert positional == flagged
        assert positional[0] == 0
        assert json.loads(positional[1])["content"] == "one"

    async def test_expire_prints_the_count_with_its_unit(self, settings: Settings) -> None:
        """`expire` says what it deleted."""
        code, out, err = await run_command("expire", environment=settings_environment(settings))
        assert code == 0, err
        assert out == "deleted 0 expired entries and 0 dead letters past their retention\n"

    async def test_filters_that_match_nothing(
        self, settings: Settings, sql: asyncpg.Connection
    ) -> None:
        """A task with entries, none of the type asked for: the filters are what match nothing."""
        task = await new_task(sql)
        environment = settings_environment(settings)
        code, out, _ = await run_command("show", str(task), environment=environment)
        assert (code, out) == (0, f"task {task} has no history\n")
        await sql.execute(
            "INSERT INTO task_build_history (id, task_id, context_type, content)"
            " VALUES ($1, $2, 'agent_turn', 'one')",
            uuid.uuid4(),
            task,
        )
        code, out, _ = await run_command(
            "show", str(task), "--type", "error", environment=environment
        )
        assert (code, out) == (0, "no entries match these filters\n")

    def test_migrate_prints_its_result_once_on_a_terminal(self, settings: Settings) -> None:
        """On a terminal `migrate` says it once: no log line repeating it."""
        leader, follower = pty.openpty()
        with subprocess.Popen(
            [sys.executable, "-m", "consumer", "migrate", "--skip-broker"],
            cwd=REPOSITORY,
            env=settings_environment(settings) | {"TERM": "dumb"},
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=follower,
        ) as process:
            os.close(follower)
            chunks = []
            while True:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the terminal closed with the process
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            assert process.wait(timeout=60) == 0
        os.close(leader)
        text = b"".join(chunks).decode(errors="replace")
        assert text.replace("\r\n", "\n") == "database is up to date\n"


def one_object(out: str) -> dict[str, Any]:
    """Stdout holding exactly one JSON object on one line."""
    assert out.count("\n") == 1, out
    document = json.loads(out)
    assert isinstance(document, dict)
    return document


def fetch_text(url: str) -> str:
    """The body of a GET of `url`, as text."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  # a test's own URL
        return str(response.read().decode())


class TestJsonForScripts:
    """Every command that prints a result prints it as one JSON object with --json."""

    async def test_migrate_expire_and_publish(self, settings: Settings, tmp_path: Path) -> None:
        """migrate, expire, publish one event and a file: one object each, nothing else."""
        environment = settings_environment(settings)
        code, out, err = await run_command("migrate", "--json", environment=environment)
        assert code == 0, err
        assert one_object(out) == {
            "applied": [],
            "declared": {"exchange": settings.exchange, "queue": settings.queue},
        }
        code, out, err = await run_command("expire", "--json", environment=environment)
        assert code == 0, err
        assert one_object(out) == {"entries": 0, "dead_letters": 0}
        task = str(uuid.uuid4())
        code, out, err = await run_command(
            *("publish", "--json", "--create-task", "--task", task),
            *("--type", "agent_turn", "--content", "x"),
            environment=environment,
        )
        assert code == 0, err
        assert uuid.UUID(one_object(out)["id"])
        lines = tmp_path / "events.jsonl"
        good = {"task_id": task, "context_type": "error", "content": "y"}
        lines.write_text(json.dumps(good) + "\n{not json\n")
        code, out, err = await run_command(
            "publish", "--json", "--file", str(lines), environment=environment
        )
        assert code == 1
        assert one_object(out) == {"sent": 1, "refused": 1}
        assert err.startswith("line 2: ")

    async def test_replay_and_purge(self, settings: Settings) -> None:
        """Dlq replay --dry-run and dlq purge: the counts, as the API's answer has them."""
        await bury(settings.database_url, [letter(n, code="invalid_json") for n in range(3)])
        environment = settings_environment(settings)
        code, out, err = await run_command(
            "dlq", "replay", "--dry-run", "--json", environment=environment
        )
        assert code == 0, err
        assert one_object(out) == {
            "dry_run": True,
            "count": 3,
            "left_behind": {"at_max_replays": 0, "not_whole": 0, "unroutable": 0},
            "left": 3,
        }
        code, out, err = await run_command(
            *("dlq", "purge", "--error", "invalid_json", "--yes", "--json"),
            environment=environment,
        )
        assert code == 0, err
        assert one_object(out) == {"dry_run": False, "count": 3, "left_behind": {}, "left": 0}

    async def test_demo(self, settings: Settings) -> None:
        """Demo --count: the number published."""
        code, out, err = await run_command(
            *("demo", "--count", "5", "--rate", "500", "--json"),
            environment=settings_environment(settings),
        )
        assert code == 0, err
        assert one_object(out) == {"published": 5}

    @pytest.mark.parametrize("command", ["serve", "up"])
    async def test_the_address_of_serve_and_up(self, settings: Settings, command: str) -> None:
        """Serve and up: the address they listen on (here any free port), first thing on stdout."""
        async with command_running(
            command, "--port", "0", "--json", environment=settings_environment(settings)
        ) as process:
            assert process.stdout is not None
            first = await asyncio.wait_for(process.stdout.readline(), 60)
            announced = one_object(first.decode())
            assert set(announced) == ({"url"} if command == "serve" else {"url", "demo", "applied"})
            url = str(announced["url"])
            answer = await asyncio.to_thread(fetch_text, url + "/healthz")
            assert json.loads(answer) == {"status": "ok"}
            process.send_signal(signal.SIGINT)
            rest, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, err.decode()
        assert rest == b""
