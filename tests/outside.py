"""Outside clients the tests run: the Node packages pinned in tests/node, installed on first use."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_MODULES = NODE_DIR / "node_modules"
# npm ci on a warm cache takes seconds; a cold one downloads a few megabytes.
INSTALL_SECONDS = 300


def _installed(name: str, version: str) -> bool:
    """Whether node_modules holds `name` at exactly `version`."""
    manifest = NODE_MODULES / name / "package.json"
    try:
        return bool(json.loads(manifest.read_text())["version"] == version)
    except (OSError, ValueError, KeyError):
        return False


def node_packages() -> Path:
    """tests/node with its pinned packages installed (`npm ci` when one is missing or stale).

    Fails the test, with what to do, when Node or npm is not on PATH.
    """
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not on PATH: install Node.js 20 or later", pytrace=False)
    wanted = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    if not all(_installed(name, version) for name, version in wanted.items()):
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],  # noqa: S607  # npm from PATH, as users run it
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=INSTALL_SECONDS,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {NODE_DIR} failed:\n{done.stderr[-2000:]}", pytrace=False)
    return NODE_DIR
