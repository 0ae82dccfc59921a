"""Which SQL migrations exist and which are pending: pure logic, no database."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from consumer.errors import MigrationEditedError, NotMigratedError

_NAME = re.compile(r"^\d{4}_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered SQL file, applied once, in one transaction."""

    name: str
    sql: str
    checksum: str


def sql_directory() -> Path:
    """Where the migrations are: inside an installed wheel, else the checkout's `sql/`."""
    here = Path(__file__).resolve().parent
    installed = here / "sql"
    return installed if installed.is_dir() else here.parent / "sql"


def discover(directory: Path | None = None) -> list[Migration]:
    """Read every `NNNN_name.sql` file in `directory`, in order."""
    directory = directory or sql_directory()
    if not directory.is_dir():
        raise NotMigratedError(f"no migrations folder at {directory}")
    migrations = []
    for path in sorted(directory.iterdir()):
        if _NAME.match(path.name):
            data = path.read_bytes()
            migrations.append(
                Migration(path.name, data.decode("utf-8"), hashlib.sha256(data).hexdigest())
            )
    return migrations


def pending(available: Sequence[Migration], applied: Mapping[str, str]) -> list[Migration]:
    """The migrations still to apply, given `applied` (name to checksum); refuse edited ones."""
    edited = [m.name for m in available if m.name in applied and applied[m.name] != m.checksum]
    if edited:
        raise MigrationEditedError(
            f"applied migration {', '.join(edited)} was edited since; restore it and add a new one"
        )
    return [m for m in available if m.name not in applied]


def check_applied(available: Sequence[Migration], applied: Mapping[str, str]) -> None:
    """Raise NotMigratedError unless every available migration is applied, unedited."""
    missing = pending(available, applied)
    if missing:
        names = ", ".join(m.name for m in missing)
        raise NotMigratedError(f"the database lacks migration {names}: run `task-history migrate`")
