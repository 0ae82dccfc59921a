"""The peers' own environment: a virtualenv, made on first use, with the peer libraries pinned.

aio-pika-batch needs Python 3.12 or later, and neither library belongs in the project's own
dependencies, so the peers run from a virtualenv of their own, kept in the user's cache folder
(`$XDG_CACHE_HOME`, else `~/.cache`) under a name that changes with the pins. It is made with a
Python 3.12 or later: `$TASK_HISTORY_BENCH_PYTHON`, else `python3.13` or `python3.12` on PATH,
else one under `~/.pyenv/versions`. Without one it is made with this interpreter and holds
FastStream only; aio-pika-batch is then skipped, with a note.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# The peers' libraries, and the libraries they share with this project at its own versions.
SHARED_PINS = [
    "aio-pika==10.2.1",
    "aiormq==7.2.4",
    "asyncpg==0.32.0",
    "pydantic==2.14.4",
    "pydantic-settings==2.16.3",
    "structlog==26.1.0",
]
FASTSTREAM_PIN = "faststream[rabbit]==0.7.8"
AIO_PIKA_BATCH_PIN = "aio-pika-batch==0.1.0"
AIO_PIKA_BATCH_PYTHON = (3, 12)


@dataclass(frozen=True)
class PeerPython:
    """An interpreter of the peers' environment, and which peers it can run."""

    python: Path
    peers: frozenset[str]


def _version(python: str) -> tuple[int, int] | None:
    """The (major, minor) version of the interpreter at `python`, or None if it won't run."""
    try:
        output = subprocess.run(  # an interpreter we found or were given
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    major, minor = output.split()
    return int(major), int(minor)


def recent_python() -> str | None:
    """A Python 3.12 or later to make the environment with, if there is one."""
    candidates = [os.environ.get("TASK_HISTORY_BENCH_PYTHON", "")]
    candidates += [shutil.which(name) or "" for name in ("python3.13", "python3.12")]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(str(p) for p in pyenv.glob("3.1[2-9]*/bin/python"))
    for candidate in filter(None, candidates):
        version = _version(candidate)
        if version is not None and version >= AIO_PIKA_BATCH_PYTHON:
            return candidate
    return None


def peer_python(note: list[str]) -> PeerPython | None:
    """The peers' interpreter, its environment made first if need be; None if that fails.

    Whatever the caller should tell the reader (a peer skipped, why) is appended to `note`.
    """
    base = recent_python()
    pins = [FASTSTREAM_PIN, *SHARED_PINS]
    peers = {"faststream"}
    if base is None:
        base = sys.executable
        note.append(
            "aio-pika-batch skipped: it needs Python 3.12 or later and none was found"
            " (set TASK_HISTORY_BENCH_PYTHON)"
        )
    else:
        pins.append(AIO_PIKA_BATCH_PIN)
        peers.add("aio-pika-batch")
    version = _version(base)
    key = hashlib.sha256(f"{version} {sorted(pins)}".encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = cache / "task-build-history" / f"bench-peers-{key}"
    python = folder / "bin" / "python"
    if not (folder / "complete").exists():
        print(f"making the peers' environment (once): {folder}", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        try:
            subprocess.run([base, "-m", "venv", str(folder)], check=True)  # see above
            subprocess.run(  # pip of the environment just made, with pinned versions
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    *pins,
                ],
                check=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            note.append(f"FastStream and aio-pika-batch skipped: their environment failed ({exc})")
            return None
        (folder / "complete").write_text(" ".join(pins) + "\n", encoding="utf-8")
    return PeerPython(python, frozenset(peers))
