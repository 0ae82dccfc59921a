"""The package as another project installs it: typed for strict mypy, licensed, classified."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import consumer

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

# Code a downstream project writes against the library: publish, and test with the stand-in.
DOWNSTREAM = """
import uuid

from consumer import HistoryEntry, HistoryPublisher, InvalidEventError
from consumer.testing import InMemoryPublisher, publish_and_wait, wait_for_entries


async def record(publisher: HistoryPublisher, task: uuid.UUID) -> uuid.UUID:
    try:
        return await publisher.publish(
            {"task_id": str(task), "context_type": "agent_turn", "content": "built"}
        )
    except InvalidEventError as exc:
        raise RuntimeError(exc.detail) from exc


async def check(task: uuid.UUID) -> list[HistoryEntry]:
    history = InMemoryPublisher(tasks=[task])
    await publish_and_wait(
        [{"task_id": task, "context_type": "error", "content": "failed"}], database=history
    )
    return await wait_for_entries(history, str(task), 1)
"""


def strict_mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Mypy --strict on `source` as a module of another project, outside this repository."""
    (tmp_path / "downstream.py").write_text(source, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "downstream.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )


class TestTypedForOtherProjects:
    """A project using the library type-checks against its annotations."""

    def test_the_package_is_marked_typed(self) -> None:
        """py.typed sits in the package, so type checkers read its annotations."""
        assert (Path(consumer.__file__).parent / "py.typed").is_file()

    def test_downstream_code_passes_strict_mypy(self, tmp_path: Path) -> None:
        """Publishing and the test helpers, used as documented, pass `mypy --strict`."""
        result = strict_mypy(tmp_path, DOWNSTREAM)
        assert result.returncode == 0, result.stdout + result.stderr

    def test_a_downstream_mistake_is_caught(self, tmp_path: Path) -> None:
        """The annotations are seen, not Any: a wrong use of a return value is an error."""
        mistake = DOWNSTREAM + "\n\nasync def wrong(p: HistoryPublisher) -> str:\n"
        mistake += "    return await p.publish({})\n"
        result = strict_mypy(tmp_path, mistake)
        assert result.returncode == 1
        assert 'Incompatible return value type (got "UUID", expected "str")' in result.stdout


class TestProjectMetadata:
    """What a package index and a licence checker read."""

    def test_the_licence_file_matches_the_declared_licence(self) -> None:
        """LICENSE is the MIT licence that pyproject.toml declares, and ships in the wheel."""
        assert PROJECT["license"] == "MIT"
        assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
        assert PROJECT["license-files"] == ["LICENSE"]

    def test_classifiers_say_typed_and_which_pythons(self) -> None:
        """Typed, and each Python version CI can run, from requires-python up."""
        classifiers = set(PROJECT["classifiers"])
        assert "Typing :: Typed" in classifiers
        assert f"Programming Language :: Python :: 3.{sys.version_info.minor}" in classifiers


class TestExtras:
    """What each install pulls (tests/clients/test_installs.py installs it for real)."""

    def test_the_base_install_is_six_packages(self) -> None:
        """aio-pika, aiormq, pamqp, pydantic, uuid6 and yarl; the rest under `service`."""
        base = {re.split(r"[<>=;]", name)[0] for name in PROJECT["dependencies"]}
        assert base == {"aio-pika", "aiormq", "pamqp", "pydantic", "uuid6", "yarl"}
        service = {
            re.split(r"[<>=]", name)[0] for name in PROJECT["optional-dependencies"]["service"]
        }
        assert {"asyncpg", "fastapi", "uvicorn", "rich", "click"} <= service
