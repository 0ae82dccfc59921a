"""The README's quick start, run as a newcomer runs it: three steps, then the event is shown.

Its shell lines are taken from README.md and run with bash, in a folder of the test's own,
against a fresh database and a fresh RabbitMQ vhost (where nothing was ever declared), with
this environment's `task-history` first on PATH: the lines that make and enter the virtual
environment are the only ones left out. The consumer of step 2 runs in the background, as in
the other terminal; the last line of step 3 is repeated until it shows the event, as a person
would run it again.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import wait_for
from tests.vhosts import empty_vhost

README = Path(__file__).resolve().parents[2] / "README.md"
# What makes, enters and fills the virtual environment: this test runs in one already.
SETUP = re.compile(r"python3 -m venv|pip install|^\. \.venv/bin/activate$")
RUN_SECONDS = 60


def quick_start_steps() -> list[list[str]]:
    """The shell lines of each step of the README's "Quick start", continuations joined."""
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
    """Start one README line with bash, as in another terminal; its output to consume.log."""
    with (cwd / "consume.log").open("wb") as log:
        return subprocess.Popen(
            ["bash", "-c", line],  # noqa: S607  # bash from PATH, as a reader's shell
            cwd=cwd,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the signal reaches bash's child
        )


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
    """From nothing to an event stored and shown, by the README's three steps."""

    def test_it_has_three_steps(self) -> None:
        """Three shell blocks: install and migrate, consume, then publish and show."""
        steps = quick_start_steps()
        assert len(steps) == 3, steps
        assert any("task-history consume" in line for line in steps[1])
        assert "task-history show" in steps[2][-1]

    async def test_the_event_is_stored_and_shown(
        self, newcomer_environment: dict[str, str], tmp_path: Path
    ) -> None:
        """Each line exits 0, and the last shows the content step 3 published."""
        install, consume, publish_and_show = quick_start_steps()

        def runnable(lines: list[str]) -> list[str]:
            return [line for line in lines if not SETUP.search(line)]

        for line in runnable(install):
            code, out, err = run_line(line, cwd=tmp_path, environment=newcomer_environment)
            assert code == 0, f"{line}\n{out}{err}"
        (consume_line,) = runnable(consume)
        consumer = start_in_background(consume_line, cwd=tmp_path, environment=newcomer_environment)
        try:
            *first, show = runnable(publish_and_show)
            content = ""
            for line in first:
                code, out, err = run_line(line, cwd=tmp_path, environment=newcomer_environment)
                assert code == 0, f"{line}\n{out}{err}"
                words = shlex.split(line)
                if "--content" in words:
                    content = words[words.index("--content") + 1]
            assert content, "step 3 publishes no --content"

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
            exit_code = await asyncio.to_thread(stop, consumer)
        assert exit_code == 0, (tmp_path / "consume.log").read_text(errors="replace")
