"""The pool of connections and the driver boundary: asyncpg's errors become the project's."""

from __future__ import annotations

import asyncio
import errno
import inspect
import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import asyncpg

# asyncpg has no public URL parser; this is the one its connect() runs. Its keywords change
# between releases (all default to nothing given), so they are read off the function.
from asyncpg.connect_utils import _parse_connect_dsn_and_args

from consumer.errors import (
    ConcurrencyConflictError,
    ConfigurationError,
    DatabaseUnavailableError,
    DataRejectedError,
    NotConnectedError,
    NotMigratedError,
    StoreError,
)
from consumer.lifecycle import AsyncResource
from consumer.redaction import redact
from consumer.store.queries import PING


@contextmanager
def translated() -> Iterator[None]:
    """Turn driver and socket errors into the project's, with no secret in the message."""
    try:
        yield
    except asyncpg.ClientConfigurationError as exc:
        raise ConfigurationError(f"invalid database URL: {redact(str(exc))}") from exc
    except asyncpg.ForeignKeyViolationError as exc:
        # The task was checked a moment ago and deleted since: looking again sorts it out.
        raise ConcurrencyConflictError(redact(str(exc))) from exc
    except (
        asyncpg.DataError,
        asyncpg.IntegrityConstraintViolationError,
        asyncpg.exceptions.ProgramLimitExceededError,
    ) as exc:
        # A value the driver refuses before sending (an integer out of range) has no message.
        reason = redact(exc.message or str(exc) or type(exc).__name__)
        raise DataRejectedError(redact(str(exc)), reason=reason) from exc
    except asyncpg.InterfaceError as exc:
        if isinstance(exc, ValueError):  # the driver could not encode a value of the row
            raise DataRejectedError(redact(str(exc))) from exc
        raise DatabaseUnavailableError(f"database unavailable: {redact(str(exc))}") from exc
    except (
        OSError,
        TimeoutError,
        # A multi-host URL with target_session_attrs where no host is (yet) what it asks
        # for, such as a failover with no primary promoted yet: an outage, waited out.
        asyncpg.TargetServerAttributeNotMatched,
        # A connection the server dropped mid-query (a primary shutting down) can leave the
        # driver's protocol half-way: returning it to the pool then raises this. The pool
        # drops that connection, and the next attempt gets a new one.
        asyncpg.InternalClientError,
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.OperatorInterventionError,
        asyncpg.TooManyConnectionsError,
    ) as exc:
        detail = redact(str(exc)) or type(exc).__name__
        raise DatabaseUnavailableError(f"database unavailable: {detail}") from exc
    except asyncpg.exceptions.TransactionRollbackError as exc:
        raise ConcurrencyConflictError(redact(str(exc))) from exc
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedFunctionError) as exc:
        # The server's message without its HINT line, which suggests casts, not a migration.
        raise NotMigratedError(
            f"the database is not migrated ({redact(exc.message or str(exc))});"
            " run `task-history migrate`"
        ) from exc
    except asyncpg.PostgresError as exc:
        raise StoreError(redact(str(exc))) from exc


_NO_OTHER_ARGUMENTS = {
    name: None
    for name in inspect.signature(_parse_connect_dsn_and_args).parameters
    if name != "dsn"
}


def check_dsn(dsn: str) -> None:
    """Raise ValueError unless asyncpg accepts `dsn`, by the driver's own parser.

    Everything libpq users write goes: several hosts (`h1:5432,h2:5432`), the query form
    (`?host=a,b&port=1,2`), `target_session_attrs`, `sslmode` and the rest asyncpg knows.
    """
    try:
        addresses, _ = _parse_connect_dsn_and_args(dsn=dsn, **_NO_OTHER_ARGUMENTS)
    except (ValueError, OSError, asyncpg.ClientConfigurationError) as exc:
        detail = redact(str(exc))
        raise ValueError(f"is not a PostgreSQL URL the driver accepts ({detail})") from None
    for address in addresses:
        # The driver takes any number here and fails only when it connects.
        if isinstance(address, tuple) and not 0 < address[1] < 65_536:  # noqa: PLR2004
            raise ValueError(f"is not a PostgreSQL URL the driver accepts (port {address[1]})")


def _place(dsn: str) -> tuple[list[str], str | None, str | None]:
    """Where `dsn` connects: its addresses (host:port or socket), user and database."""
    try:
        addresses, parameters = _parse_connect_dsn_and_args(dsn=dsn, **_NO_OTHER_ARGUMENTS)
    except (ValueError, OSError, asyncpg.ClientConfigurationError):
        return [], None, None
    places = [
        f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        for address in addresses
    ]
    return places, parameters.user, parameters.database


def described(dsn: str) -> str:
    """Which database `dsn` names, for an error line: its name, user and address, no password."""
    places, user, database = _place(dsn)
    where = ", ".join(places) or "the URL's address"
    return f"database {database!r} on {where} as role {user!r}"


@contextmanager
def explained(dsn: str) -> Iterator[None]:
    """Connection failures as one line saying what to check: the database, role, host, port.

    Only the server's address, user and database are named, never the password.
    """
    try:
        yield
    except asyncpg.InvalidCatalogNameError as exc:
        places, _, database = _place(dsn)
        raise StoreError(
            f"database {database!r} does not exist on {', '.join(places) or 'the server'}:"
            f" check the database name in the database URL, or create it (createdb {database})"
        ) from exc
    except (
        asyncpg.InvalidAuthorizationSpecificationError,
        asyncpg.InsufficientPrivilegeError,
    ) as exc:
        _, user, database = _place(dsn)
        raise StoreError(
            f"the database server refused role {user!r} for database {database!r}:"
            f" {redact(exc.message or str(exc))}; check the user and password in the database URL"
        ) from exc
    except OSError as exc:
        places, _, _ = _place(dsn)
        where = ", ".join(places) or "the URL's address"
        if isinstance(exc, socket.gaierror):
            reason = f"a host of {where} is not known (name resolution failed): check the hosts"
        elif (isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED) and (
            len(places) > 1
        ):
            # The driver raises the refusal of one host even when another answered but was
            # not what target_session_attrs asks for (a standby, before a promotion).
            reason = (
                f"no server at {where} took the connection (one refused it; the others, if"
                " any answered, are not what the URL asks for, such as a standby waiting to"
                " be promoted): check the hosts and ports in the database URL"
            )
        elif isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
            reason = (
                f"nothing accepts connections at {where}: check the host and port in the"
                " database URL, and that PostgreSQL runs there"
            )
        else:
            raise
        if len(places) == 1 and isinstance(exc, socket.gaierror):
            reason = (
                f"no host {places[0].rpartition(':')[0]!r} is known (name resolution failed):"
                " check the host in the database URL"
            )
        raise DatabaseUnavailableError(f"database unavailable: {reason}") from exc


async def _init_connection(connection: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects rather than text.
    await connection.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


class StoreBase(AsyncResource):
    """A pool of connections to the history database: open, close, drop, and run a query."""

    def __init__(
        self,
        dsn: str,
        *,
        max_connections: int = 4,
        command_timeout: float | None = None,
        read_only: bool = False,
    ) -> None:
        """Prepare a store for `dsn`; `open()` (or `async with`) connects.

        `command_timeout` bounds each statement in seconds: a server that stops answering
        without closing the connection (a partition) becomes an error instead of a stall.
        `read_only` makes every transaction of its connections read-only, whatever the role may
        do: the server refuses any write (the HTTP API's store).
        """
        self._dsn = dsn
        self._max_connections = max_connections
        self._command_timeout = command_timeout
        self._server_settings = {"default_transaction_read_only": "on"} if read_only else None
        self._pool: asyncpg.Pool | None = None
        # Set by terminate() and kept until the next open(), close() included: the consumer
        # drops its connections at the shutdown deadline and retries what is in flight until
        # then, so their loss must read as an outage (retryable), not as a caller's bug.
        self._dropped = False

    async def open(self) -> None:
        """Connect the pool."""
        with translated(), explained(self._dsn):
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._max_connections,
                init=_init_connection,
                command_timeout=self._command_timeout,
                timeout=self._command_timeout or 60,
                server_settings=self._server_settings,
            )
        self._dropped = False

    async def _begin(self) -> None:
        await self.open()

    async def close(self, *, grace: float = 10) -> None:
        """Close every connection; after `grace` seconds, drop the ones that don't answer."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), grace)
            except TimeoutError:
                pool.terminate()

    def terminate(self) -> None:
        """Drop every connection at once, mid-query or not, without waiting for the server."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            self._dropped = True
            pool.terminate()

    async def reconnect(self) -> None:
        """Replace every pooled connection with a new one as it is next used."""
        if self._pool is not None:
            await self._pool.expire_connections()

    @property
    def pool(self) -> asyncpg.Pool:
        """The open pool; refused before `open()` or after `close()` (a bug), or `terminate()`."""
        if self._pool is None:
            if self._dropped:
                raise DatabaseUnavailableError(
                    "database unavailable: connections dropped at the shutdown deadline"
                )
            raise NotConnectedError("the store is not open")
        return self._pool

    async def ping(self, *, within: float = 2) -> None:
        """Run a trivial query; DatabaseUnavailableError unless it answers within `within` s."""
        # The wait for a free connection counts too: a busy or hung pool is not ready.
        async with self._connection(wait=within) as connection:
            await connection.fetchval(PING, timeout=within)

    @asynccontextmanager
    async def _connection(self, *, wait: float | None = None) -> AsyncIterator[asyncpg.Connection]:
        """One connection of the pool (waiting `wait` s at most for it), errors translated."""
        with translated():
            async with self.pool.acquire(timeout=wait) as connection:
                yield connection

    async def _fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        with translated():
            return await self.pool.fetch(query, *args)  # type: ignore[no-any-return]

    async def _fetchval(self, query: str, *args: object) -> Any:  # noqa: ANN401  # driver values
        with translated():
            return await self.pool.fetchval(query, *args)

    async def _execute(self, query: str, *args: object) -> None:
        with translated():
            await self.pool.execute(query, *args)
