"""The package as another project installs it: by pip, into a virtual environment of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# An agent's test, using only the library: publish to the stand-in, wait for the entry.
AGENT_TEST = """
import asyncio, uuid
from consumer import HistoryPublisher, InMemoryPublisher
from consumer.testing import wait_for_entries

async def main():
    history = InMemoryPublisher()
    task = uuid.uuid4()
    await history.publish({"task_id": task, "context_type": "agent_turn", "content": "x"})
    print(len(await wait_for_entries(history, task, 1)), HistoryPublisher.__name__)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def publisher_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with `pip install .` (no extra) done; its bin folder."""
    venv = tmp_path_factory.mktemp("publisher-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return venv / "bin"


class TestAPublisherOnlyInstall:
    """`pip install task-build-history`: the library, and the command line says what it lacks."""

    def test_it_installs_only_what_publishing_needs(self, publisher_only: Path) -> None:
        """No driver, web server or CLI framework comes with the library."""
        listed = subprocess.run(
            [str(publisher_only / "pip"), "list", "--format=freeze"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.lower()
        names = {line.split("==")[0] for line in listed.splitlines()}
        assert {"aio-pika", "pydantic", "task-build-history"} <= names
        assert not {"asyncpg", "fastapi", "uvicorn", "click", "rich", "structlog"} & names

    def test_publishing_and_its_test_double_work(self, publisher_only: Path) -> None:
        """HistoryPublisher imports; InMemoryPublisher publishes, and the waits read it."""
        result = subprocess.run(
            [str(publisher_only / "python"), "-c", AGENT_TEST],
            capture_output=True,
            text=True,
            check=False,
            cwd=publisher_only,  # not this checkout: the installed package
        )
        assert (result.returncode, result.stdout) == (0, "1 HistoryPublisher\n"), result.stderr

    def test_the_command_line_names_the_extra_it_needs(self, publisher_only: Path) -> None:
        """`task-history --help` there: one line naming the service extra, exit 1."""
        result = subprocess.run(
            [str(publisher_only / "task-history"), "--help"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 1
        [line] = result.stderr.splitlines()
        assert line.endswith("pip install 'task-build-history[service]'")
