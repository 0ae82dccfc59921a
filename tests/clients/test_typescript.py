"""docs/types.ts compiles with the pinned tsc, and types the JSON the service really writes."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from consumer.entries import ContextType, HistoryEntry
from consumer.events import parse_event
from tests.unit.test_schema import DOCS, RECEIVED_AT

TSC_SECONDS = 120
NOW = datetime(2026, 11, 26, 10, 15, 0, 123_000, tzinfo=UTC)


def entry_json(metadata: dict[str, object] | None) -> str:
    """An entry as `task-history show --json` prints it."""
    return HistoryEntry(
        id=uuid.UUID(int=1),
        task_id=uuid.UUID(int=2),
        workspace_id=None,
        session_id=uuid.UUID(int=3),
        context_type=ContextType.EXECUTION_STEP,
        content="ran pytest: 42 passed",
        metadata=metadata,
        created_at=NOW,
        expires_at=NOW + timedelta(days=20),
    ).model_dump_json()


EVENT = {
    "id": str(uuid.UUID(int=4)),
    "task_id": str(uuid.UUID(int=2)),
    "workspace_id": None,
    "session_id": str(uuid.UUID(int=3)),
    "context_type": "agent_turn",
    "content": "planned the fix",
    "metadata": {"tool": "pytest", "exit_code": 0},
    "created_at": "2024-12-31T10:15:00.123+00:00",
}
# The original string form of metadata, as code written for the original types sends it.
EVENT_WITH_TEXT = {**EVENT, "id": str(uuid.UUID(int=5)), "metadata": '{"tool": "pytest"}'}

GOOD = """\
import type {{
  CreateTaskBuildHistory,
  TaskBuildHistoryContextType,
  TaskBuildHistoryEntry,
}} from "./types.ts";

const entry: TaskBuildHistoryEntry = {entry};
const bare: TaskBuildHistoryEntry = {bare};
const event: CreateTaskBuildHistory = {event};
const original: CreateTaskBuildHistory = {original};
const kind: TaskBuildHistoryContextType = entry.context_type;
// What the original type held in `metadata`, from an entry read from the service:
const text: string = JSON.stringify(entry.metadata);
const minimal: CreateTaskBuildHistory = {{
  task_id: entry.task_id,
  context_type: kind,
  content: text,
}};
export {{ bare, event, original, minimal }};
"""

# Each must fail to compile, with the error named.
BAD = {
    "metadata a number": (
        "const entry: TaskBuildHistoryEntry = {{ ...{entry}, metadata: 42 }};",
        "TS2322",
    ),
    "metadata read as the original string": (
        "declare const entry: TaskBuildHistoryEntry;\nconst text: string = entry.metadata;",
        "TS2322",
    ),
    "an entry missing expires_at": (
        "const {{ expires_at, ...rest }} = {entry};\nconst entry: TaskBuildHistoryEntry = rest;",
        "TS2741",
    ),
    "an unknown context type": (
        "const event: CreateTaskBuildHistory = {{ ...{event}, context_type: 'gossip' }};",
        "TS2322",
    ),
    "an entry as returned, taken for the original type (metadata a string)": (
        "const entry: TaskBuildHistory = {entry};",
        "TS2322",
    ),
}


@pytest.fixture
def tsc(node_dir: Path) -> Path:
    """The pinned TypeScript compiler (7, the native port), as npm installs its command."""
    command = node_dir / "node_modules" / ".bin" / "tsc"
    wanted = json.loads((node_dir / "package.json").read_text())["dependencies"]["typescript"]
    done = subprocess.run(
        [str(command), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"Version {wanted}", done.stdout
    return command


def compile_with(tsc: Path, folder: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Compile `source` beside a copy of docs/types.ts: strict, nothing written."""
    shutil.copy(DOCS / "types.ts", folder / "types.ts")
    (folder / "use.ts").write_text(source)
    return subprocess.run(
        [str(tsc), "--strict", "--noEmit", "types.ts", "use.ts"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=TSC_SECONDS,
        check=False,
    )


def test_real_json_compiles(tsc: Path, tmp_path: Path) -> None:
    """Entries as the CLI prints them, and valid events in both forms, fit the types."""
    for body in (EVENT, EVENT_WITH_TEXT):
        parse_event(json.dumps(body).encode(), message_id=None, received_at=RECEIVED_AT)
    source = GOOD.format(
        entry=entry_json({"tool": "pytest", "nested": {"passed": [1, 2.5, True, None]}}),
        bare=entry_json(None),
        event=json.dumps(EVENT),
        original=json.dumps(EVENT_WITH_TEXT),
    )
    done = compile_with(tsc, tmp_path, source)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("case", sorted(BAD))
def test_wrong_code_does_not_compile(tsc: Path, tmp_path: Path, case: str) -> None:
    """The check bites: each of these is a compile error, the one expected."""
    template, code = BAD[case]
    header = (
        "import type { CreateTaskBuildHistory, TaskBuildHistory, TaskBuildHistoryEntry }"
        " from './types.ts';\n"
    )
    source = header + template.format(entry=entry_json({"a": 1}), event=json.dumps(EVENT)) + "\n"
    source += "export {};\n"
    done = compile_with(tsc, tmp_path, source)
    assert done.returncode != 0, f"{case} compiled:\n{source}"
    assert code in done.stdout, done.stdout
