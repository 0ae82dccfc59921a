"""Throwaway PostgreSQL clusters for tests that need server settings the shared one lacks."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

CRON_ENV = "TASK_HISTORY_TEST_CRON_DATABASE_URL"
INSTALL_HINT = (
    "pg_cron is not installed, and these tests need it: install it (Debian:"
    " apt-get install postgresql-15-cron, for the server's major version; .ci/run does this),"
    f" or set {CRON_ENV} to a superuser URL of a PostgreSQL that preloads pg_cron"
)


def pg_cron_binaries() -> Path | None:
    """The bin folder of the newest installed PostgreSQL that has pg_cron, if any."""
    libraries = sorted(Path("/usr/lib/postgresql").glob("*/lib/pg_cron.so"), reverse=True)
    return libraries[0].parent.parent / "bin" if libraries else None


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _as_owner(command: list[str]) -> list[str]:
    """`command` run as the postgres OS user when we are root (PostgreSQL refuses root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def pg_cron_cluster(*, cron_database: str = "postgres") -> Iterator[str]:
    """A new cluster preloading pg_cron, its jobs in `cron_database`; yields a superuser URL.

    initdb into a temporary folder, a free port, trust for local connections (pg_cron's jobs
    come through the socket); stopped and removed on the way out. Fails the test, saying how to
    install pg_cron, when it is not installed.
    """
    binaries = pg_cron_binaries()
    if binaries is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    folder = Path(tempfile.mkdtemp(prefix="th_cron_"))
    data = folder / "data"
    port = free_port()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    initdb = [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-N"]
    subprocess.run(_as_owner(initdb), check=True, capture_output=True)
    settings: Mapping[str, str] = {
        "port": str(port),
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{folder}'",
        "shared_preload_libraries": "'pg_cron'",
        "cron.database_name": f"'{cron_database}'",
        "cron.host": f"'{folder}'",
        "fsync": "off",
    }
    with (data / "postgresql.conf").open("a") as conf:
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    pg_ctl = [str(binaries / "pg_ctl"), "-D", str(data)]
    log = str(folder / "server.log")
    subprocess.run(_as_owner([*pg_ctl, "-l", log, "-w", "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop = [*pg_ctl, "-m", "immediate", "stop"]
        subprocess.run(_as_owner(stop), check=False, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
