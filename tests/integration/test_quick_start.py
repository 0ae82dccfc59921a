"""The README's quick start, run as a newcomer runs it: install, `up --demo`, then an own event.

Its shell lines are taken from README.md and run with bash, in a folder of the test's own,
against a fresh database and a fresh RabbitMQ vhost (where nothing was ever declared), with
this environment's `task-history` first on PATH: the lines that make and enter the virtual
environment are the only ones left out. `up` runs in the background, as in its own terminal,
until it prints the page's address; the page and the demo's entries are then read over HTTP,
and the last line of "Your own event" is repeated until it shows the event, as a person would
run it again.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness import wait_for
from tests.vhosts import empty_vhost

README = Path(__file__).resolve().parents[2] / "README.md"
# What makes, enters and fills the virtual environment: this test runs in one already.
SETUP = re.compile(r"python3 -m venv|pip install|^\. \.venv/bin/activate$")
RUN_SECONDS = 60


def quick_start_steps() -> list[list[str]]:
    """The shell lines of each block of the README's "Quick start", continuations joined."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^ *```sh\n(.*?)^ *```", section, flags=re.MULTILINE | re.DOTALL)
    steps = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", "", block)
        steps.append([line.strip() for line in joined.splitlines() if line.strip()])
    return steps


@pytest.fixture
def newcomer_environment(empty_database_url: str, amqp_url: str) -> Iterator[dict[str, str]]:
    """A shell environment whose defaults are a new database and a new vhost."""
    with empty_vhost(amqp_url) as vhost_url:
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("TASK_")
        }
        environment |= {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}",
            "TASK_HISTORY_DATABASE_URL": empty_database_url,
            "TASK_HISTORY_AMQP_URL": vhost_url,
            # Other tests' consumers may hold the usual metrics port on this machine.
            "TASK_HISTORY_METRICS_PORT": "0",
        }
        yield environment


def run_line(line: str, *, cwd: Path, environment: dict[str, str]) -> tuple[int, str, str]:
    """Run one README line with bash; (exit code, stdout, stderr)."""
    result = subprocess.run(
        ["bash", "-c", line],  # noqa: S607  # bash from PATH, as a reader's shell
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


def start_in_background(
    line: str, *, cwd: Path, environment: dict[str, str]
) -> subprocess.Popen[bytes]:
    """Start one README line with bash, as in another terminal; its output to up.log."""
    with (cwd / "up.log").open("wb") as log:
        return subprocess.Popen(
            ["bash", "-c", line],  # noqa: S607  # bash from PATH, as a reader's shell
            cwd=cwd,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the signal reaches bash's child
        )


def page_address(log: Path) -> str | None:
    """The address `up` said to open, once it has."""
    found = re.search(r"^open (http://\S+/) ", log.read_text(errors="replace"), re.MULTILINE)
    return found.group(1) if found else None


async def demo_entries(address: str) -> int:
    """Entries the page's API shows across the recent tasks."""
    async with aiohttp.ClientSession() as http, http.get(f"{address}tasks") as response:
        if response.status != 200:
            return 0
        body = json.loads(await response.text())
    return sum(int(task["entries"]) for task in body["tasks"])


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as Ctrl-C in that terminal would stop it gracefully; its exit code."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=RUN_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


class TestTheQuickStart:
    """From nothing to the page showing a demo stream, and an own event stored and shown."""

    def test_it_is_install_then_one_command(self) -> None:
        """Install; `task-history up --demo`; then publishing and showing an own event."""
        install, up, own_event = quick_start_steps()
        assert all(SETUP.search(line) for line in install), install
        assert up == ["task-history up --demo"]
        assert "task-history show" in own_event[-1]

    async def test_the_page_the_demo_and_an_own_event(
        self, newcomer_environment: dict[str, str], tmp_path: Path
    ) -> None:
        """`up` prints the page, which answers and shows the demo's entries; the event is shown."""
        _, (up_line,), own_event = quick_start_steps()
        everything = start_in_background(up_line, cwd=tmp_path, environment=newcomer_environment)
        log = tmp_path / "up.log"
        try:
            address = await wait_for(
                lambda: asyncio.to_thread(page_address, log),
                lambda found: found is not None or everything.poll() is not None,
                what="up to print the page's address",
                interval=0.2,
            )
            assert address is not None, log.read_text(errors="replace")
            async with aiohttp.ClientSession() as http, http.get(address) as response:
                assert response.status == 200
                assert "text/html" in response.headers["Content-Type"]
            await wait_for(
                lambda: demo_entries(address),
                lambda entries: entries >= 5,
                what="the demo's entries on the page's API",
                interval=0.5,
            )
            *first, show = [line for line in own_event if not SETUP.search(line)]
            content = ""
            for line in first:
                code, out, err = run_line(line, cwd=tmp_path, environment=newcomer_environment)
                assert code == 0, f"{line}\n{out}{err}"
                words = shlex.split(line)
                if "--content" in words:
                    content = words[words.index("--content") + 1]
            assert content, "no --content is published"

            async def shown() -> str:
                code, out, err = await asyncio.to_thread(
                    run_line, show, cwd=tmp_path, environment=newcomer_environment
                )
                return out if code == 0 else err

            await wait_for(
                shown,
                lambda out: content in out,
                what=f"{show!r} to show {content!r}",
                interval=0.5,
            )
        finally:
            exit_code = await asyncio.to_thread(stop, everything)
        assert exit_code == 0, log.read_text(errors="replace")
