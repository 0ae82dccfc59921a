"""No internal words where users read: README, docs/, --help, the schema, compose, the HTTP API."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from consumer import schema
from consumer.api import create_app
from consumer.cli import cli
from consumer.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "consumer" / "api" / "static"

# Words of the people who build the project, not of those who use it, each with the reason a
# reader would stumble on it. Matched case-insensitively, as whole words.
INTERNAL_WORDS: dict[str, str] = {
    r"seeds?": "the seed document is how the project began, not something a user has",
    r"design[ -]cards?": "a planning document users never see",
    r"bars": "the targets are targets, not bars to clear",
    r"issues? #?\d+": "an issue number means nothing outside the tracker",
    r"helpers?": "say what the thing is: a function, a test, a command",
    r"the lead": "who coordinates the work is not the reader's concern",
    r"design[- ]notes?": "an internal document",
    r"contract\.md": "an internal document; the guides state the contract",
    r"closing notes?": "an internal report",
    r"§\s*\d+": "a section of an internal document",
}
PATTERN = re.compile(
    "|".join(rf"(?<![\w-])(?:{word})(?![\w-])" for word in INTERNAL_WORDS), re.IGNORECASE
)


def internal_words(text: str) -> list[str]:
    """Each internal word in `text`, with the line it is on."""
    found: list[str] = []
    for line in text.splitlines():
        found.extend(f"{match.group(0)!r} in: {line.strip()}" for match in PATTERN.finditer(line))
    return found


def documents() -> list[Path]:
    """README.md, every guide under docs/, and the two generated schema files."""
    docs = ROOT / "docs"
    return [
        ROOT / "README.md",
        *sorted(docs.glob("*.md")),
        docs / "types.ts",
        docs / "event.schema.json",
        ROOT / "docker-compose.yml",
    ]


def command_helps() -> Iterator[tuple[str, str]]:
    """(`task-history dlq list`, its --help) for the group and every command under it."""

    def walk(
        command: click.Command, name: str, parent: click.Context | None
    ) -> Iterator[tuple[str, str]]:
        context = click.Context(command, info_name=name.rsplit(" ", 1)[-1], parent=parent)
        yield name, command.get_help(context)
        if isinstance(command, click.Group):
            for child in command.list_commands(context):
                sub = command.get_command(context, child)
                assert sub is not None
                yield from walk(sub, f"{name} {child}", context)

    yield from walk(cli, "task-history", None)


class TestTheWordList:
    """The list catches what it is for and leaves ordinary words alone."""

    @pytest.mark.parametrize(
        "text",
        [
            "the seed's nine fields",
            "see the design card",
            "all bars met",
            "as issue 17 asks",
            "fixed in issue #4",
            "a helper adds it",
            "the lead fills it in",
            "every rule of §1",
            "see design-notes.md",
        ],
    )
    def test_it_catches(self, text: str) -> None:
        """An internal word is found in a sentence that uses it."""
        assert internal_words(text)

    @pytest.mark.parametrize(
        "text",
        [
            "a progress bar on stderr",
            "the queue's leader node",
            "leads to a dead letter",
            "publish_and_wait and InMemoryPublisher",
            "issues a warning",
            "the seeded random numbers",
        ],
    )
    def test_it_leaves_ordinary_words(self, text: str) -> None:
        """Words that only contain or resemble an internal word pass."""
        assert internal_words(text) == []


class TestNoInternalWords:
    """Nothing a user reads speaks the project's internal words."""

    @pytest.mark.parametrize("path", documents(), ids=lambda path: path.name)
    def test_documents(self, path: Path) -> None:
        """README.md, the guides, the generated schema files and the compose file."""
        assert internal_words(path.read_text(encoding="utf-8")) == []

    @pytest.mark.parametrize(
        ("name", "text"), list(command_helps()), ids=[name for name, _ in command_helps()]
    )
    def test_command_help(self, name: str, text: str) -> None:
        """Every command's --help, the group's included."""
        assert internal_words(text) == [], name

    def test_openapi_document(self) -> None:
        """The API's /openapi.json, with and without a token: descriptions, summaries, titles."""
        for token in (None, "a-token"):
            document = create_app(load_settings(api_token=token)).openapi()
            assert internal_words(json.dumps(document, ensure_ascii=False)) == []

    @pytest.mark.parametrize("path", sorted(STATIC.iterdir()), ids=lambda path: path.name)
    def test_page_files(self, path: Path) -> None:
        """The timeline page's own files: what it shows, and what its source says."""
        assert internal_words(path.read_text(encoding="utf-8")) == []

    def test_schema_output(self) -> None:
        """What `task-history schema` and `schema --typescript` print."""
        assert internal_words(schema.event_json_schema_text()) == []
        assert internal_words(schema.typescript()) == []
