"""What `import consumer` offers: the documented names, without loading the drivers."""

from __future__ import annotations

import builtins
import re
import subprocess
import sys
from pathlib import Path

import consumer

README = Path(__file__).resolve().parents[2] / "README.md"
GUIDES = sorted((README.parent / "docs").glob("*.md"))
TYPESCRIPT = README.parent / "docs" / "types.ts"


class TestPublicApi:
    """The package exports a deliberate set of names."""

    def test_every_exported_name_resolves(self) -> None:
        """Each name in `consumer.__all__` can be imported from `consumer`."""
        for name in consumer.__all__:
            assert getattr(consumer, name) is not None, name

    def test_the_types_the_guides_name_are_exported(self) -> None:
        """Every class of the project the README or a guide names is importable from `consumer`."""
        text = "\n".join(page.read_text(encoding="utf-8") for page in [README, *GUIDES])
        mentioned = set(
            re.findall(r"\b[A-Z][A-Za-z]+(?:Error|Query|Entry|Publisher|Event)\b", text)
        )
        typescript = set(re.findall(r"export (?:type|interface) (\w+)", TYPESCRIPT.read_text()))
        ours = {name for name in mentioned - typescript if not hasattr(builtins, name)}
        assert ours <= set(consumer.__all__)

    def test_importing_it_loads_no_driver(self) -> None:
        """`import consumer` leaves asyncpg and aio_pika unloaded until a client is used."""
        assert drivers_loaded_after("import consumer") == []
        assert drivers_loaded_after("import consumer; consumer.Store") == ["asyncpg"]

    def test_the_command_line_loads_no_driver_for_its_help(self) -> None:
        """`task-history --help` answers without importing asyncpg or aio_pika."""
        assert drivers_loaded_after("from consumer.cli import main; main(['--help'])") == []


def drivers_loaded_after(statement: str) -> list[str]:
    """Which of asyncpg and aio_pika a fresh interpreter has loaded after `statement`."""
    code = (
        f"import sys\n{statement}\n"
        "print(' '.join(m for m in ('asyncpg', 'aio_pika') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return result.stdout.splitlines()[-1].split()
