"""A throwaway PostgreSQL primary with a streaming standby, for failover tests.

Built with the binaries of the servers under test (tests/servers.py): this machine's, or those in
the chroot $TASK_HISTORY_TEST_SERVER_ROOT names, run as the postgres OS user. The primary is
made with initdb on a free port and migrated; the standby is a `pg_basebackup -R -X stream` copy
on another port. Both listen on 127.0.0.1 with trust authentication, and both are stopped and
their folders removed on the way out, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import asyncpg

from consumer.store import Store
from tests.cluster import free_port
from tests.servers import PostgresTools, postgres_tools, scratch_folder

DATABASE = "history"
# Every PostgreSQL has its procedural language's library: this picks the binaries of the
# servers under test without asking for an extension.
ANY_LIBRARY = "plpgsql"
TOOL_TIMEOUT = 60  # seconds; a start, stop or promotion takes one or two


@dataclass(frozen=True)
class Server:
    """One PostgreSQL server of the pair: its data folder (as its tools see it), port and log."""

    name: str
    tools: PostgresTools
    data: PurePosixPath
    port: int
    log_file: Path  # our path to the server's log

    @property
    def folder(self) -> Path:
        """The server's data folder, as this process sees it."""
        return self.log_file.parent / self.data.name

    def url(self, database: str = DATABASE) -> str:
        """A superuser URL of `database` on this server alone."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def pg_ctl(self, *arguments: str) -> None:
        """Run pg_ctl on this server's data folder; a failure fails the test with its log."""
        code, output = await _run(self.tools.command("pg_ctl", "-D", str(self.data), *arguments))
        assert code == 0, f"pg_ctl {arguments[0]} ({self.name}): {output}\n{self.log()}"

    async def start(self) -> None:
        """Start it and wait until it accepts connections."""
        await self.pg_ctl("start", "-w", "-l", str(self.data.parent / self.log_file.name))

    async def stop(self, *, mode: str = "fast") -> None:
        """Stop it (`fast`: sessions are ended, committed work kept) and wait until it is down."""
        await self.pg_ctl("stop", "-w", "-m", mode)

    async def promote(self) -> None:
        """Make this standby a primary and wait until it accepts writes."""
        await self.pg_ctl("promote", "-w")

    async def first_commit_after(self, moment: float) -> float | None:
        """When the first history row committed after `moment` was committed (Unix times)."""
        connection = await asyncpg.connect(self.url())
        try:
            first = await connection.fetchval(
                "SELECT extract(epoch FROM min(pg_xact_commit_timestamp(xmin)))"
                " FROM task_build_history"
                " WHERE pg_xact_commit_timestamp(xmin) > to_timestamp($1)",
                moment,
            )
        finally:
            await connection.close()
        return None if first is None else float(first)

    def log(self) -> str:
        """What the server logged so far."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass(frozen=True)
class Replicas:
    """A primary and its standby, both running when handed out, the database migrated."""

    primary: Server
    standby: Server
    synchronous: bool

    @property
    def multi_host_url(self) -> str:
        """Both servers in one URL, libpq's way: the client connects to whichever takes writes."""
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
            f"/{DATABASE}?target_session_attrs=read-write"
        )


async def _run(line: list[str]) -> tuple[int, str]:
    """Run a server tool to its end; its exit code and what it printed."""
    process = await asyncio.create_subprocess_exec(
        *line,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), TOOL_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def _checked(line: list[str]) -> None:
    """Run a server tool; a failure fails the test with what it printed."""
    code, output = await _run(line)
    assert code == 0, f"{line}: exit {code}\n{output}"


def _configure(folder: Path, settings: Mapping[str, str]) -> None:
    """Append `settings` to the postgresql.conf in `folder` (later lines win)."""
    with (folder / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.writelines(f"{key} = {value}\n" for key, value in settings.items())


async def _replication_state(primary: Server) -> list[tuple[str, str]]:
    """(state, sync_state) of each standby the primary streams to now."""
    connection = await asyncpg.connect(primary.url("postgres"))
    try:
        rows = await connection.fetch("SELECT state, sync_state FROM pg_stat_replication")
    finally:
        await connection.close()
    return [(row["state"], row["sync_state"]) for row in rows]


async def until_streaming(primary: Server, *, sync_state: str) -> None:
    """Wait until the standby streams from the primary with `sync_state` (sync or async)."""
    deadline = time.monotonic() + TOOL_TIMEOUT
    while (seen := await _replication_state(primary)) != [("streaming", sync_state)]:
        assert time.monotonic() < deadline, f"standby not streaming ({sync_state}): {seen}"
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def replicas(*, synchronous: bool = True) -> AsyncIterator[Replicas]:
    """A migrated primary streaming to a standby, synchronously (commits wait for it) or not."""
    tools = postgres_tools(library=ANY_LIBRARY)
    assert tools is not None, "no PostgreSQL binaries for the servers under test"
    # The servers under test may run in a chroot: `folder` is our path, `inside` theirs.
    folder, inside = scratch_folder("th_replicas_")
    try:
        tools.give_to_owner(folder, inside)
        primary_port = free_port()
        while (standby_port := free_port()) == primary_port:
            pass
        primary = Server("primary", tools, inside / "primary", primary_port, folder / "primary.log")
        standby = Server("standby", tools, inside / "standby", standby_port, folder / "standby.log")
        initdb = tools.command(
            "initdb", "-D", str(primary.data), "-U", "postgres", "-A", "trust", "-N"
        )
        await _checked(initdb)
        _configure(
            folder / "primary",
            {
                "port": str(primary.port),
                "listen_addresses": "'127.0.0.1'",
                "unix_socket_directories": f"'{inside}'",
                "fsync": "off",  # nothing here outlives the test; a fast stop still flushes
                "wal_level": "replica",
                "max_wal_senders": "4",
                "hot_standby": "on",
                # When each row was committed, on either server (replayed with the WAL): a
                # test reads when writes resumed after a failover, to the millisecond.
                "track_commit_timestamp": "on",
            },
        )
        try:
            await primary.start()
            await _migrated(primary)
            # The standby starts as a copy of the migrated primary; its replication settings
            # come from -R. synchronous_standby_names is set on the primary only after the
            # copy, so the promoted standby, left alone, does not wait for a standby of its own.
            await _copy(primary, to=standby)
            if synchronous:
                await set_synchronous(primary, synchronous=True)
            await until_streaming(primary, sync_state="sync" if synchronous else "async")
            yield Replicas(primary, standby, synchronous)
        finally:
            for server in (standby, primary):
                line = tools.command("pg_ctl", "-D", str(server.data), "-m", "immediate", "stop")
                await _run(line)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _copy(primary: Server, *, to: Server) -> None:
    """Make `to` (its data folder absent) a streaming copy of `primary`, and start it."""
    basebackup = primary.tools.command(
        "pg_basebackup",
        *("-D", str(to.data), "-h", "127.0.0.1", "-p", str(primary.port)),
        *("-U", "postgres", "-R", "-X", "stream", "-c", "fast", "--no-sync"),
    )
    await _checked(basebackup)
    _configure(to.folder, {"port": str(to.port)})
    await to.start()


async def set_synchronous(primary: Server, *, synchronous: bool) -> None:
    """Make commits on `primary` wait for a standby's confirmation (any standby), or not."""
    names = "*" if synchronous else ""
    connection = await asyncpg.connect(primary.url("postgres"))
    try:
        await connection.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
        await connection.execute("SELECT pg_reload_conf()")
    finally:
        await connection.close()


async def rebuild_standby(server: Server, *, primary: Server) -> None:
    """Throw `server`'s data away (stopping it if it runs) and make it a copy of `primary`.

    What an operator does with a failed primary once its standby took over: pg_basebackup
    from the new primary, rather than trusting what the old one wrote last.
    """
    await _run(server.tools.command("pg_ctl", "-D", str(server.data), "-m", "immediate", "stop"))
    shutil.rmtree(server.folder)
    await _copy(primary, to=server)


async def _migrated(primary: Server) -> None:
    """Create the history database on the primary and apply the project's migrations."""
    connection = await asyncpg.connect(primary.url("postgres"))
    try:
        await connection.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await connection.close()
    async with Store(primary.url(), max_connections=1) as store:
        await store.migrate()
