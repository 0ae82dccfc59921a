"""How the tests control the servers under test, not just talk to them.

The suite talks to its servers by URL (tests/conftest.py). A few tests also need a server's own
tools: rabbitmqctl to add a vhost of a test's own, PostgreSQL's initdb and pg_ctl for a
throwaway cluster, the broker's scripts for nodes of a test's own (tests/rabbit_cluster.py: a
test that restarts a broker or imports users does it there, never to the servers the suite
shares with other programs). Those tools must belong to the servers under test, which are not
always this machine's own (.ci/trixie runs newer ones in a chroot beside them). Three variables
say where the tools are; with none set, the tests use this machine's.

- TASK_HISTORY_TEST_RABBITMQCTL: the command, as words, that runs rabbitmqctl for the broker
  under test (default: `rabbitmqctl` on PATH).
- TASK_HISTORY_TEST_SERVER_ROOT: the root folder the servers under test and their tools see (a
  chroot). Files handed to rabbitmqctl, throwaway clusters and private broker nodes go under
  it, and their binaries run in it with `chroot` (default: /, this machine).
- TASK_HISTORY_TEST_PG_BIN: the folder, as seen from that root, of the PostgreSQL binaries for
  throwaway clusters (default: the newest installed PostgreSQL that has pg_cron).

Before it adds a vhost, the broker's tool checks that its node listens on the port of the
broker under test, so a suite pointed at another broker never changes this machine's.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest

RABBITMQCTL_ENV = "TASK_HISTORY_TEST_RABBITMQCTL"
SERVER_ROOT_ENV = "TASK_HISTORY_TEST_SERVER_ROOT"
PG_BIN_ENV = "TASK_HISTORY_TEST_PG_BIN"
AMQP_PORT = 5672
TOOL_TIMEOUT = 120  # seconds; stop_app and start_app take a few


def server_root() -> Path | None:
    """The chroot the servers under test run in, or None for this machine's own."""
    root = os.environ.get(SERVER_ROOT_ENV, "").rstrip("/")
    return Path(root) if root else None


def scratch_folder(prefix: str) -> tuple[Path, PurePosixPath]:
    """A new temporary folder the servers under test can see: its path here, and theirs."""
    root = server_root()
    if root is None:
        folder = Path(tempfile.mkdtemp(prefix=prefix))
        return folder, PurePosixPath(folder)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=root / "tmp"))
    return folder, PurePosixPath("/") / folder.relative_to(root)


@dataclass(frozen=True)
class BrokerTools:
    """The rabbitmqctl of one broker: the command that runs it, and the environment it needs."""

    command: tuple[str, ...]
    environment: Mapping[str, str] | None = None

    def run(self, *arguments: str, timeout: float = TOOL_TIMEOUT) -> str:
        """Run `rabbitmqctl -q ARGUMENTS`; its output. A failure fails the test with its output."""
        result = subprocess.run(
            [*self.command, "-q", *arguments],
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, (
            f"rabbitmqctl {shlex.join(arguments)}: exit {result.returncode}\n"
            f"{result.stdout}{result.stderr}"
        )
        return result.stdout

    def import_definitions(self, definitions: object) -> None:
        """Import definitions (the JSON of a definitions file) into the broker under test."""
        # rabbitmqctl may run as the broker's OS user, and in its root: a file there, for anyone.
        folder, seen_as = scratch_folder("th_definitions_")
        try:
            folder.chmod(0o755)
            file = folder / "definitions.json"
            file.write_text(json.dumps(definitions), encoding="utf-8")
            file.chmod(0o644)
            self.run("import_definitions", str(seen_as / file.name))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start the broker's application (its queues and messages stay); wait for it."""
        self.run("stop_app")
        self.run("start_app")
        self.run("await_startup")


@functools.cache  # one check per broker and test run
def broker_tools_for(amqp_url: str) -> BrokerTools:
    """The rabbitmqctl for the broker at `amqp_url`; fails the test if it controls another one.

    The node rabbitmqctl reaches must list the URL's port among its AMQP listeners: a suite
    pointed at another broker (a chroot's, a container's) must not restart this machine's.
    """
    if words := os.environ.get(RABBITMQCTL_ENV):
        command = tuple(shlex.split(words))
    elif found := shutil.which("rabbitmqctl"):
        command = (found,)
    else:
        pytest.fail(
            f"rabbitmqctl is not on PATH: this test needs the broker's own tools; set"
            f" {RABBITMQCTL_ENV} to the command that runs rabbitmqctl for the broker under test",
            pytrace=False,
        )
    tools = BrokerTools(command)
    status = json.loads(tools.run("status", "--formatter", "json"))
    listeners = status.get("listeners", [])
    ports = {item["port"] for item in listeners if item["protocol"] == "amqp"}
    node = next((item["node"] for item in listeners), "its node")
    parts = urlsplit(amqp_url)
    port = parts.port or AMQP_PORT
    if port not in ports:
        pytest.fail(
            f"{shlex.join(command)} controls {node}, which listens for AMQP on"
            f" {sorted(ports)}, not on {parts.hostname}:{port}, the broker under test: set"
            f" {RABBITMQCTL_ENV} to the command that runs rabbitmqctl for that broker",
            pytrace=False,
        )
    return tools


@dataclass(frozen=True)
class PostgresTools:
    """PostgreSQL binaries for throwaway clusters: a bin folder, maybe in a chroot."""

    root: Path | None
    bin: PurePosixPath

    def command(self, tool: str, *arguments: str) -> list[str]:
        """`tool` run as the postgres OS user if we are root (PostgreSQL refuses root)."""
        line = [str(self.bin / tool), *arguments]
        if self.root is not None:
            return ["chroot", str(self.root), "runuser", "-u", "postgres", "--", *line]
        return ["runuser", "-u", "postgres", "--", *line] if os.geteuid() == 0 else line

    def give_to_owner(self, folder: Path, seen_as: PurePosixPath) -> None:
        """Make `folder` (`seen_as` from the root) the postgres OS user's, if we are root."""
        if self.root is not None:
            chown = ["chroot", str(self.root), "chown", "postgres:postgres", str(seen_as)]
            subprocess.run(chown, check=True, capture_output=True)
        elif os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")


def postgres_tools(*, library: str) -> PostgresTools | None:
    """The PostgreSQL binaries for throwaway clusters that have `library` (e.g. pg_cron), if any.

    $TASK_HISTORY_TEST_PG_BIN if set (None if it lacks the library), else the newest installed
    PostgreSQL, under the server root, that has it.
    """
    root = server_root()
    base = root or Path("/")
    if chosen := os.environ.get(PG_BIN_ENV):
        bin_folder = PurePosixPath(chosen)
        found = base / bin_folder.relative_to("/") / ".." / "lib" / f"{library}.so"
        return PostgresTools(root, bin_folder) if found.exists() else None
    installed = sorted(
        (base / "usr/lib/postgresql").glob(f"*/lib/{library}.so"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
        reverse=True,
    )
    if not installed:
        return None
    version = installed[0].parent.parent
    return PostgresTools(root, PurePosixPath("/") / version.relative_to(base) / "bin")
