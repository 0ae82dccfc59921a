"""Throwaway PostgreSQL clusters for tests that need server settings the shared one lacks."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping

import pytest

from tests.servers import postgres_tools, scratch_folder

CRON_ENV = "TASK_HISTORY_TEST_CRON_DATABASE_URL"
INSTALL_HINT = (
    "pg_cron is not installed, and these tests need it: install it (Debian:"
    " apt-get install postgresql-15-cron, for the server's major version; .ci/run does this),"
    f" or set {CRON_ENV} to a superuser URL of a PostgreSQL that preloads pg_cron"
    " (tests/servers.py says which PostgreSQL's binaries the tests use)"
)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def pg_cron_cluster(*, cron_database: str = "postgres") -> Iterator[str]:
    """A new cluster preloading pg_cron, its jobs in `cron_database`; yields a superuser URL.

    initdb into a temporary folder, a free port, trust for local connections (pg_cron's jobs
    come through the socket); stopped and removed on the way out. Fails the test, saying how to
    install pg_cron, when it is not installed.
    """
    tools = postgres_tools(library="pg_cron")
    if tools is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    # The servers under test may run in a chroot: `folder` is our path, `inside` theirs.
    folder, inside = scratch_folder("th_cron_")
    data = inside / "data"
    port = free_port()
    tools.give_to_owner(folder, inside)
    initdb = tools.command("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-N")
    subprocess.run(initdb, check=True, capture_output=True)
    settings: Mapping[str, str] = {
        "port": str(port),
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{inside}'",
        "shared_preload_libraries": "'pg_cron'",
        "cron.database_name": f"'{cron_database}'",
        "cron.host": f"'{inside}'",
        "fsync": "off",
    }
    with (folder / "data" / "postgresql.conf").open("a") as conf:
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
    log = str(inside / "server.log")
    start = tools.command("pg_ctl", "-D", str(data), "-l", log, "-w", "start")
    subprocess.run(start, check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop = tools.command("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
        subprocess.run(stop, check=False, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
