"""Migration planning, without a database."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer import migrations
from consumer.errors import MigrationEditedError, NotMigratedError


def write(directory: Path, name: str, text: str) -> None:
    """Write a file into the migrations folder."""
    (directory / name).write_text(text, encoding="utf-8")


class TestDiscover:
    """Reading the migrations folder."""

    def test_numbered_sql_files_in_order(self, tmp_path: Path) -> None:
        """Only NNNN_name.sql files count, sorted by number."""
        write(tmp_path, "0002_b.sql", "SELECT 2;")
        write(tmp_path, "0001_a.sql", "SELECT 1;")
        write(tmp_path, "notes.md", "ignored")
        write(tmp_path, "1_bad.sql", "ignored")
        assert [m.name for m in migrations.discover(tmp_path)] == ["0001_a.sql", "0002_b.sql"]

    def test_the_shipped_folder(self) -> None:
        """The project's own sql/ folder is found and starts with 0001."""
        assert migrations.discover()[0].name.startswith("0001_")

    def test_missing_folder(self, tmp_path: Path) -> None:
        """A missing folder is reported by path."""
        with pytest.raises(NotMigratedError, match="no migrations folder"):
            migrations.discover(tmp_path / "nope")


class TestPending:
    """Which migrations still have to run."""

    @pytest.fixture
    def available(self, tmp_path: Path) -> list[migrations.Migration]:
        """Two migrations."""
        write(tmp_path, "0001_a.sql", "SELECT 1;")
        write(tmp_path, "0002_b.sql", "SELECT 2;")
        return migrations.discover(tmp_path)

    def test_all_pending_on_a_new_database(self, available: list[migrations.Migration]) -> None:
        """Nothing applied: everything pending, in order."""
        assert migrations.pending(available, {}) == available

    def test_applied_ones_are_skipped(self, available: list[migrations.Migration]) -> None:
        """An applied migration with its checksum unchanged is not pending."""
        applied = {available[0].name: available[0].checksum}
        assert migrations.pending(available, applied) == available[1:]
        with pytest.raises(NotMigratedError, match=r"0002_b\.sql"):
            migrations.check_applied(available, applied)

    def test_edited_ones_are_refused(self, available: list[migrations.Migration]) -> None:
        """A checksum mismatch names the edited file."""
        with pytest.raises(MigrationEditedError, match=r"0001_a\.sql"):
            migrations.pending(available, {"0001_a.sql": "0" * 64})

    def test_unknown_applied_ones_are_tolerated(
        self, available: list[migrations.Migration]
    ) -> None:
        """A database migrated by a newer release still satisfies this one."""
        applied = {m.name: m.checksum for m in available} | {"0003_newer.sql": "x"}
        assert migrations.pending(available, applied) == []
        migrations.check_applied(available, applied)
