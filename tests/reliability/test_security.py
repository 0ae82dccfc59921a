"""Security: no secret in any log line or error, and every SQL statement parameterised.

That the consumer's database role can't change the schema is tested with the roles, in
tests/integration/test_roles.py (TestConsumerRoleIsNoMore).
"""

from __future__ import annotations

import ast
import asyncio
import re
import signal
import socket
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from consumer import store
from consumer.settings import Settings
from tests.conftest import Env
from tests.corpus import bad_bodies
from tests.harness import (
    Bus,
    ConsumerProcess,
    count_dead_letters,
    count_rows,
    event,
    run_command,
    settings_environment,
    wait_for,
)
from tests.helpers import new_task
from tests.reliability.conftest import Figures

# Passwords with characters that URLs encode: neither form may appear anywhere.
DATABASE_PASSWORD = "Pg-S3cret/pw"  # noqa: S105  # bait the test looks for
BROKER_PASSWORD = "Mq-S3cret@pw"  # noqa: S105  # bait the test looks for
SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|FROM|WHERE|VALUES)\b", re.IGNORECASE)


def with_password(url: str, password: str, *, port: int | None = None) -> str:
    """`url` with `password` (percent-encoded) and, if given, another port."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    host = f"{parts.hostname}:{port or parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def leaks(text: str, *passwords: str) -> list[str]:
    """Lines of `text` holding any password, plain or percent-encoded."""
    forms = {form for p in passwords for form in (p, quote(p, safe=""), quote(p))}
    return [line for line in text.splitlines() if any(form in line for form in forms)]


class TestNoSecretInLogs:
    """Passwords in the URLs never reach a log line or an error message."""

    async def test_a_working_consumer_logging_everything(self, env: Env, figures: Figures) -> None:
        """Debug logging, valid and invalid events, a stop: no line holds the password."""
        # The local server trusts local connections: any password is accepted, and carried.
        secret = env.settings.model_copy(
            update={
                "database_url": with_password(env.database_url, DATABASE_PASSWORD),
                "log_level": "debug",
            }
        )
        task = await new_task(env.sql)
        consumer = ConsumerProcess(secret, env.tmp_path / "consumer.log")
        consumer.start()
        try:
            async with Bus(env.amqp_url, env.topology) as bus:
                await bus.publish_many([event(task, f"ok {n}") for n in range(20)])
                for case in bad_bodies(task)[:10]:
                    await bus.publish(case.body, routing_key="history.agent_turn")
                await wait_for(lambda: count_rows(env.database_url), lambda n: n == 20)
                await wait_for(lambda: count_dead_letters(env.database_url), lambda n: n == 10)
        finally:
            consumer.signal(signal.SIGTERM)
            assert await consumer.exit_code() == 0, consumer.log()
        figures.events, figures.note = 30, "debug logging, database password in the URL"
        assert leaks(consumer.log(), DATABASE_PASSWORD) == []

    async def test_an_unreachable_database(self, settings: Settings, tmp_path: Path) -> None:
        """Retries against a closed port log the URL's host, never its password."""
        secret = settings.model_copy(
            update={
                "database_url": with_password(
                    settings.database_url, DATABASE_PASSWORD, port=closed_port()
                ),
                "log_level": "debug",
            }
        )
        consumer = ConsumerProcess(secret, tmp_path / "consumer.log")
        consumer.start()
        try:
            await wait_for(
                lambda: asyncio.sleep(0.2, consumer.log()),
                lambda log: log.count("retrying") >= 2,
                what="two retries logged",
            )
        finally:
            consumer.signal(signal.SIGTERM)
            assert await consumer.exit_code() == 0, consumer.log()
        assert leaks(consumer.log(), DATABASE_PASSWORD) == []

    async def test_a_broker_refusing_the_password(self, settings: Settings) -> None:
        """Refused credentials: one error line, exit 1, and the password nowhere."""
        secret = settings.model_copy(
            update={
                "database_url": with_password(settings.database_url, DATABASE_PASSWORD),
                "amqp_url": with_password(settings.amqp_url, BROKER_PASSWORD),
            }
        )
        code, out, err = await run_command(
            "--log-level", "debug", "consume", environment=settings_environment(secret)
        )
        assert code == 1, out + err
        assert "task-history: error: the broker refused the credentials" in err
        assert leaks(out + err, DATABASE_PASSWORD, BROKER_PASSWORD) == []

    @pytest.mark.parametrize("command", [["expire"], ["show", str(uuid.uuid4())], ["migrate"]])
    async def test_command_errors(self, command: list[str]) -> None:
        """A command that can't reach the database says so in one line, without the password."""
        url = with_password(
            "postgresql://postgres@127.0.0.1/x", DATABASE_PASSWORD, port=closed_port()
        )
        code, out, err = await run_command("--database-url", url, *command)
        assert code == 1
        assert len(err.strip().splitlines()) == 1, err
        assert leaks(out + err, DATABASE_PASSWORD) == []


def formatted_sql(source: str) -> list[tuple[int, str]]:
    """Where `source` builds text holding SQL with an f-string, % or str.format: (line, how)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            text = "".join(
                part.value
                for part in node.values
                if isinstance(part, ast.Constant) and isinstance(part.value, str)
            )
            if SQL_WORDS.search(text):
                found.append((node.lineno, "f-string"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            if isinstance(node.left, ast.Constant) and SQL_WORDS.search(str(node.left.value)):
                found.append((node.lineno, "% formatting"))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format"
            and isinstance(node.func.value, ast.Constant)
            and SQL_WORDS.search(str(node.func.value.value))
        ):
            found.append((node.lineno, "str.format"))
    return found


class TestParameterisedSql:
    """The only package that talks SQL never formats a value into a statement."""

    @pytest.mark.parametrize(
        "module", sorted(Path(store.__file__).parent.glob("*.py")), ids=lambda path: path.name
    )
    def test_no_formatted_sql_in_the_store(self, module: Path) -> None:
        """No f-string, % or str.format builds text holding SQL in any module of consumer/store/."""
        assert formatted_sql(module.read_text(encoding="utf-8")) == []

    def test_the_store_modules_are_all_checked(self) -> None:
        """The check above reads the whole package, the SQL texts and the read builder included."""
        names = {path.name for path in Path(store.__file__).parent.glob("*.py")}
        assert {"__init__.py", "queries.py", "pool.py", "reads.py"} <= names

    @pytest.mark.parametrize(
        ("snippet", "how"),
        [
            ('query = f"SELECT * FROM t WHERE id = {value}"', "f-string"),
            ('query = "DELETE FROM t WHERE id = %s" % value', "% formatting"),
            ('query = "UPDATE t SET a = {}".format(value)', "str.format"),
        ],
    )
    def test_the_check_finds_each_form(self, snippet: str, how: str) -> None:
        """Each of the three forms is found; plain constants with parameters are not."""
        assert formatted_sql(snippet) == [(1, how)]
        assert formatted_sql('query = "SELECT * FROM t WHERE id = $1"') == []
        assert formatted_sql('message = f"failed: {error}"') == []
