"""The guides can't go stale: links resolve, the reference covers every setting and option."""

from __future__ import annotations

import contextlib
import itertools
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from consumer.cli import cli
from consumer.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)\)")
FENCE = re.compile(r"^ *```")


def prose(text: str) -> str:
    """`text` without its fenced code blocks, where brackets are code, not links."""
    kept, inside = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            kept.append(line)
    return "\n".join(kept)


def code_blocks(text: str, languages: tuple[str, ...]) -> Iterator[str]:
    """The bodies of the fenced blocks of `text` opened with one of `languages`."""
    body: list[str] | None = None
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence and body is None:
            if line.strip().removeprefix("```") in languages:
                body = []
            continue
        if fence and body is not None:
            yield "\n".join(body)
            body = None
            continue
        if body is not None:
            body.append(line.strip())


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeated headings numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose(path.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> Iterator[str]:
    """Every relative link target of a Markdown file (outside code)."""
    for target in LINK.findall(prose(path.read_text(encoding="utf-8"))):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):
            yield target


def commands() -> Iterator[tuple[str, click.Command]]:
    """("task-history dlq list", the command) for every command and group under the root."""

    def walk(
        command: click.Command, name: str, parent: click.Context
    ) -> Iterator[tuple[str, click.Command]]:
        yield name, command
        if isinstance(command, click.Group):
            context = click.Context(command, info_name=name.rsplit(" ", 1)[-1], parent=parent)
            for child in command.list_commands(context):
                sub = command.get_command(context, child)
                assert sub is not None
                yield from walk(sub, f"{name} {child}", context)

    root = click.Context(cli, info_name="task-history")
    for child in cli.list_commands(root):
        command = cli.get_command(root, child)
        assert command is not None
        yield from walk(command, f"task-history {child}", root)


def reference_sections() -> dict[str, str]:
    """The reference's command sections: "task-history dlq list" -> its text."""
    text = REFERENCE.read_text(encoding="utf-8")
    parts = re.split(r"^#{3,4} `(task-history[^`]*)`\n", text, flags=re.MULTILINE)
    sections = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        sections[name] = re.split(r"^## ", body, maxsplit=1, flags=re.MULTILINE)[0]
    return sections


def reference_section(title: str) -> str:
    """The text of the reference's `## title` section."""
    text = REFERENCE.read_text(encoding="utf-8")
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def option_names(command: click.Command) -> set[str]:
    """Every option name a command takes (`--json`, `-o`), and its arguments' metavars."""
    names: set[str] = set()
    for parameter in command.params:
        if isinstance(parameter, click.Argument):
            names.add(parameter.metavar or parameter.name.upper() if parameter.name else "")
        else:
            names.update(parameter.opts + parameter.secondary_opts)
    return names - {"--help", "-h"}


def command_lines() -> Iterator[tuple[str, str]]:
    """(page name, command line) for every `task-history ...` line in a guide's shell blocks."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8").replace("\\\n", " ")
        for block in code_blocks(text, ("sh", "console")):
            for line in block.splitlines():
                command = line.removeprefix("$ ")
                if command.startswith(("task-history ", "TASK_HISTORY_")):
                    yield page.name, command


def parse_command_line(line: str) -> None:
    """Parse a documented `task-history` line as the CLI would, without running it."""
    words = shlex.split(line, comments=True)
    while words and re.match(r"TASK_HISTORY_\w+=", words[0]):
        words.pop(0)  # an environment variable for this one command
    for stop in ("|", ">", "&&", ";"):
        if stop in words:
            words = words[: words.index(stop)]
    assert words[0] == "task-history", line
    with contextlib.ExitStack() as contexts:  # closing a context closes the files it opened
        context = contexts.enter_context(cli.make_context("task-history", words[1:]))
        command: click.Command = cli
        while isinstance(command, click.Group):
            # What the group left unparsed: the command's name first, then its arguments.
            rest = [*getattr(context, "_protected_args", []), *context.args]
            if not rest:
                return  # the group alone: it prints its help
            name, found, arguments = command.resolve_command(context, rest)
            assert found is not None, line
            command = found
            context = contexts.enter_context(
                found.make_context(name or "", arguments, parent=context)
            )


COMMAND_IDS = [name for name, _ in commands()]
LINE_IDS = [f"{page}: {line.split('#')[0].strip()}" for page, line in command_lines()]


class TestLinks:
    """Every relative link in README.md and docs/*.md leads somewhere."""

    @pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
    def test_targets_exist(self, page: Path) -> None:
        """Each link names a file that exists, and a heading of it when it has an anchor."""
        broken = []
        for target in links(page):
            path_part, _, anchor = target.partition("#")
            destination = (page.parent / path_part).resolve() if path_part else page
            if not destination.exists():
                broken.append(f"{target}: no such file")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                broken.append(f"{target}: no such heading in {destination.name}")
        assert broken == []

    def test_the_readme_links_every_guide(self) -> None:
        """The README leads to each guide under docs/."""
        targets = {target.partition("#")[0] for target in links(README)}
        assert {f"docs/{page.name}" for page in DOCS.glob("*.md")} <= targets

    def test_the_slugs_follow_github(self) -> None:
        """Anchors are made as GitHub makes them."""
        assert slug("From Python: `HistoryPublisher`") == "from-python-historypublisher"
        assert (
            slug("Events for tasks that don't exist yet") == "events-for-tasks-that-dont-exist-yet"
        )
        assert slug("Testing code: `consumer.testing`") == "testing-code-consumertesting"


def paragraphs(page: Path) -> list[str]:
    """The prose paragraphs of a page: no code, table, heading, list or quote."""
    blocks = re.split(r"\n\s*\n", prose(page.read_text(encoding="utf-8")))
    return [
        block.strip()
        for block in blocks
        if block.strip() and not block.lstrip().startswith(("|", "#", "-", "*", ">", "<", "1."))
    ]


class TestProse:
    """What an editor would catch: a sentence left half-written, a paragraph pasted twice."""

    @pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
    def test_every_paragraph_ends_a_sentence(self, page: Path) -> None:
        """Each paragraph ends with a full stop, a colon before what follows, or the like."""
        unfinished = [text[-80:] for text in paragraphs(page) if not text.endswith(tuple(".:)!?"))]
        assert unfinished == []

    @pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
    def test_no_paragraph_twice(self, page: Path) -> None:
        """No paragraph of a page is repeated on it."""
        seen = paragraphs(page)
        assert [text[:80] for text in seen if seen.count(text) > 1] == []


class TestTheTestCommand:
    """The README gives the test command CI runs, so that a green CI means the README's works."""

    def test_ci_runs_the_readmes_command(self) -> None:
        """The command .ci/run quotes as the README's is in the README, word for word."""
        script = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        (marker,) = [n for n, line in enumerate(script) if "The README's test command" in line]
        quoted = script[marker + 1].strip()
        assert quoted.startswith("("), quoted  # a subshell, so that any step's failure stops CI
        assert quoted.endswith(")"), quoted
        section = README.read_text(encoding="utf-8").split("\n## Run the tests\n", 1)[1]
        assert quoted[1:-1] in section.split("\n## ", 1)[0]


class TestTheReference:
    """docs/reference.md names every setting, command and option, and nothing that isn't."""

    def test_every_setting(self) -> None:
        """Each setting has a row in the settings table, and each row is a setting."""
        table = reference_section("Settings")
        documented = set(re.findall(r"^\| `(TASK_HISTORY_[A-Z0-9_]+)`", table, re.MULTILINE))
        known = {f"TASK_HISTORY_{name.upper()}" for name in Settings.model_fields}
        assert sorted(known - documented) == [], "settings missing from docs/reference.md"
        assert sorted(documented - known) == [], "documented settings that don't exist"

    def test_every_default(self) -> None:
        """Each setting's row states its default as the code has it (where it is a value)."""
        table = reference_section("Settings")
        for name, field in Settings.model_fields.items():
            row = re.search(
                rf"^\| `TASK_HISTORY_{name.upper()}` \| ([^|]+) \|", table, re.MULTILINE
            )
            assert row is not None, name
            if isinstance(field.default, bool):
                assert f"`{str(field.default).lower()}`" in row.group(1), name
            elif isinstance(field.default, int | float | str) and field.default != "":
                shown = f"{field.default:g}" if isinstance(field.default, float) else field.default
                assert f"`{shown}`" in row.group(1), name

    @pytest.mark.parametrize(("name", "command"), list(commands()), ids=COMMAND_IDS)
    def test_every_command_and_option(self, name: str, command: click.Command) -> None:
        """Each command has a section that names each of its options."""
        sections = reference_sections()
        assert name in sections, f"docs/reference.md has no section for `{name}`"
        parent = sections.get(name.rsplit(" ", 1)[0], "")  # a group states shared filters
        for option in sorted(option_names(command)):
            assert f"`{option}" in sections[name] + parent, f"{name}: {option} undocumented"

    def test_no_option_that_does_not_exist(self) -> None:
        """Each option a command's section names is one the command (or its group) takes."""
        known = dict(commands())
        for name, body in reference_sections().items():
            if name not in known:
                continue  # a command that does not exist fails the test above, by name
            command = known[name]
            takes = option_names(command)
            if isinstance(command, click.Group):
                for sub in command.commands.values():
                    takes |= option_names(sub)
            named = set(re.findall(r"`(--[a-z][a-z-]*)", body))
            assert sorted(named - takes) == [], name

    def test_every_global_option(self) -> None:
        """The root group's options are in the global options table."""
        section = reference_section("Command line")
        for option in option_names(cli) - {"--version"}:
            assert f"`{option}" in section, option
        assert "`--version`" in section


class TestHelpPointsToRealSections:
    """A --help that sends the reader to a section of a guide names one that exists."""

    @pytest.mark.parametrize(("name", "command"), list(commands()), ids=COMMAND_IDS)
    def test_section_named_in_help(self, name: str, command: click.Command) -> None:
        """`docs/operating.md, "Dead letters"` and the like lead to a real heading."""
        text = " ".join((command.help or "").split())
        for page, heading in re.findall(
            r"(README(?:\.md)?|docs/[\w.-]+\.md),? (?:section |under )?\"([^\"]+)\"", text
        ):
            path = README if page.startswith("README") else ROOT / page
            assert path.exists(), f"{name}: {page} does not exist"
            assert slug(heading) in anchors(path), f"{name}: {page} has no section {heading!r}"


class TestDocumentedCommandLinesParse:
    """Each `task-history ...` line in a shell example is a command the CLI accepts."""

    @pytest.mark.parametrize("line", [line for _, line in command_lines()], ids=LINE_IDS)
    def test_it_parses(self, line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Its command exists and takes the options and arguments the example gives it."""
        monkeypatch.chdir(tmp_path)
        words = shlex.split(line, comments=True)
        for flag, value in itertools.pairwise(words):
            if flag == "--file" and value != "-":
                (tmp_path / value).write_text("", encoding="utf-8")  # the example's input file
        parse_command_line(line)
