"""Settings from TASK_HISTORY_* environment variables and a `.env` file."""

from __future__ import annotations

import difflib
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumer.errors import ConfigurationError
from consumer.topology import Topology

LogFormat = Literal["console", "json"]
# The names of this machine's loopback interface, which the API answers by default.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# A DNS name, an IPv4 address, or an IPv6 address in brackets or not; `*.` for subdomains.
_HOST_NAME = re.compile(r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[?[0-9A-Fa-f:.]+\]?")
LogLevel = Literal["debug", "info", "warning", "error"]
PREFIX: Final = "TASK_HISTORY_"
# Variables of the project's own test suite and benchmarks, which no command reads.
RESERVED_PREFIXES: Final = (f"{PREFIX}TEST_", f"{PREFIX}BENCH_")


class Settings(BaseSettings):
    """Everything the service reads from its environment; see docs/reference.md, Settings."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    database_url: str = "postgresql://postgres@localhost:5432/postgres"
    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    log_format: LogFormat | None = Field(
        default=None, description="console or json; unset: console on a terminal, else json"
    )
    log_level: LogLevel = "info"
    # The `batch` line of each batch is logged at debug; at info, a `batches` line adds them up
    # at most once per this many seconds (a trickle would log a line per event). 0: a `batch`
    # line per batch at info.
    batch_log_seconds: float = Field(default=10, ge=0, le=86_400)
    unknown_task_retry_seconds: float = Field(default=300, ge=0)
    create_missing_tasks: bool = False
    expire_batch_size: int = Field(default=10_000, ge=1, le=1_000_000)
    expire_interval_seconds: float = Field(default=300, ge=0)

    # The consumer's batching, by what is waiting rather than by a clock: a batch is written as
    # soon as the previous write is done and events are in hand, so an event arriving at an idle
    # consumer is written at once. What arrives during a write makes the next batch. A batch
    # keeps growing only while deliveries keep arriving, up to batch_size events or batch_wait_ms
    # after its first event, whichever comes first (0: never; it is what is in hand).
    batch_size: int = Field(default=500, ge=1, le=10_000, description="events per batch at most")
    batch_wait_ms: int = Field(
        default=50,
        ge=0,
        le=60_000,
        description="the longest a batch keeps growing while events keep arriving; not a wait",
    )
    prefetch: int | None = Field(default=None, ge=1, le=65_535)
    retry_backoff_max_seconds: float = Field(default=30, gt=0)
    shutdown_timeout_seconds: float = Field(default=30, ge=0)
    database_timeout_seconds: float = Field(default=60, gt=0)
    unknown_task_retry_delay_seconds: float = Field(default=10, gt=0)
    # A row the database refuses (a constraint the host application added, say) is parked in the
    # retry queue like an event of an unknown task, and tried again every retry delay above,
    # for this long; then it is dead-lettered as database_rejected. 0: at once.
    refused_row_retry_seconds: float = Field(default=300, ge=0)

    # Memory by bytes: above the high mark of message bodies in hand (waiting to be written or
    # being written) the consumer stops taking deliveries, and takes them again below the low.
    inbox_high_bytes: int = Field(default=64 << 20, ge=1 << 20, le=1 << 40)
    inbox_low_bytes: int = Field(default=32 << 20, ge=0, le=1 << 40)

    # The AMQP topology of contract §2.
    exchange: str = "task_build_history"
    queue: str = "task_build_history.events"
    dead_letter_exchange: str = "task_build_history.dlx"
    dead_letter_queue: str = "task_build_history.dead"
    retry_queue: str = "task_build_history.retry"
    delivery_limit: int = Field(default=20, ge=1)

    # Noticing a dead broker connection: aiormq drops a connection after about three heartbeat
    # intervals without a frame (5 s: about 18 s; the client's own default of 60 s: 3 minutes).
    # 0 turns heartbeats off. A URL's own ?heartbeat= wins.
    amqp_heartbeat_seconds: int = Field(default=5, ge=0, le=3600)
    # /readyz says "not ready" when the queue holds messages but none was delivered for this
    # long: a consumer connected to a broker node cut off from the queue is subscribed and idle.
    stall_seconds: float = Field(default=10, gt=0, le=86_400)

    # Prometheus metrics, /healthz and /readyz, served by `consume`; port 0 serves nothing.
    # All interfaces by default: in a container the scraper and the health check come from
    # outside the process's loopback.
    metrics_host: str = "0.0.0.0"  # noqa: S104  # see above
    metrics_port: int = Field(default=9464, ge=0, le=65_535)

    # The HTTP read API (`task-history serve`). Loopback only unless told otherwise; with a
    # token set, every route but the health checks and the page asks for it as a bearer token.
    # CORS: origins allowed to read it from a browser, comma-separated; none by default.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65_535, description="0: any free port")
    api_token: SecretStr | None = None
    api_cors_origins: str = ""
    api_keepalive_seconds: float = Field(default=15, gt=0, le=3600)
    api_max_connections: int = Field(default=10, ge=2, le=1000)
    # Host headers the API answers (DNS rebinding: a page of another site resolving its own
    # name to 127.0.0.1 sends its name); empty: the loopback names and the listening address.
    api_allowed_hosts: str = ""
    # Slow clients: the request line and headers must arrive within this (slowloris), and at
    # most this many connections are served at once (more are answered 503).
    api_header_timeout_seconds: float = Field(default=10, gt=0, le=3600)
    api_connection_limit: int = Field(default=1000, ge=1, le=100_000)
    # A page stops once its entries' content and metadata would pass this many bytes (at least
    # one entry); the database applies it.
    api_page_max_bytes: int = Field(default=4 * 1024 * 1024, ge=65_536, le=256 * 1024 * 1024)
    # A live stream whose reader has more than this many bytes of entries waiting is dropped.
    api_stream_queue_bytes: int = Field(default=4 * 1024 * 1024, ge=65_536, le=256 * 1024 * 1024)
    # Operators: with this token set, `serve` also replays and purges dead letters (POST
    # /dead-letters/replay and /purge), for requests that carry it; the reader token can't.
    # Unset, those routes don't exist. The name goes on the record of each replay and purge.
    api_operator_token: SecretStr | None = None
    api_operator_name: str = Field(default="operator", min_length=1, max_length=100)
    # The database login the operator routes use (a member of task_history_operator); unset,
    # the same as TASK_HISTORY_DATABASE_URL. The read routes never use it.
    api_operator_database_url: str | None = None
    # A search of every task (GET /tasks?q=) looks at this many tasks per page at most, most
    # recently active first, each through its own index: its time is bounded whatever the text.
    api_search_tasks_per_page: int = Field(default=150, ge=10, le=100_000)

    @model_validator(mode="after")
    def _inbox_marks(self) -> Settings:
        if self.inbox_low_bytes >= self.inbox_high_bytes:
            raise ValueError(
                "TASK_HISTORY_INBOX_LOW_BYTES must be below TASK_HISTORY_INBOX_HIGH_BYTES"
            )
        return self

    @field_validator("api_token", "api_operator_token")
    @classmethod
    def _api_token(cls, value: SecretStr | None) -> SecretStr | None:
        # Empty is a mistake, not "no token": a .env line `TASK_HISTORY_API_TOKEN=` that
        # meant to set one would otherwise serve everything to everyone.
        if value is None:
            return None
        if not value.get_secret_value():
            raise ValueError("is empty: give a token, or unset it to serve without one")
        if not value.get_secret_value().isprintable() or " " in value.get_secret_value():
            raise ValueError("must be printable characters without spaces")
        return value

    @field_validator("api_operator_name")
    @classmethod
    def _api_operator_name(cls, value: str) -> str:
        if not value.isprintable() or not value.strip():
            raise ValueError("must be printable characters, not only spaces")
        return value

    @model_validator(mode="after")
    def _tokens_differ(self) -> Settings:
        # The same token for both would give every reader the operator's rights.
        reader, operator = self.api_token, self.api_operator_token
        if (
            reader is not None
            and operator is not None
            and hmac.compare_digest(reader.get_secret_value(), operator.get_secret_value())
        ):
            raise ValueError(
                "TASK_HISTORY_API_OPERATOR_TOKEN must differ from TASK_HISTORY_API_TOKEN: a"
                " reader must not be able to replay or purge"
            )
        return self

    @property
    def operator_database_url(self) -> str:
        """The database URL the operator routes use (TASK_HISTORY_API_OPERATOR_DATABASE_URL)."""
        return self.api_operator_database_url or self.database_url

    @field_validator("api_allowed_hosts")
    @classmethod
    def _api_allowed_hosts(cls, value: str) -> str:
        for host in _origins(value):
            if host != "*" and not _HOST_NAME.fullmatch(host):
                raise ValueError(
                    f"{host!r} is not a host name or address such as board.example.com,"
                    " 192.0.2.10 or [::1] (no scheme, no port), or *"
                )
        return value

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        """The Host names the API answers, lower case (TASK_HISTORY_API_ALLOWED_HOSTS)."""
        given = tuple(host.lower().strip("[]") for host in _origins(self.api_allowed_hosts))
        if given:
            return given
        listening = self.api_host.lower().strip("[]")
        names = [*LOOPBACK_NAMES]
        # The wildcard addresses are no name a client sends.
        if listening not in ("0.0.0.0", "::", "") and listening not in names:  # noqa: S104
            names.append(listening)
        return tuple(names)

    @field_validator("api_cors_origins")
    @classmethod
    def _api_cors_origins(cls, value: str) -> str:
        for origin in _origins(value):
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise ValueError(
                    f"{origin!r} is not an origin such as https://board.example.com:8443"
                )
        return value

    @property
    def cors_origins(self) -> tuple[str, ...]:
        """The origins browsers may read the API from (TASK_HISTORY_API_CORS_ORIGINS)."""
        return _origins(self.api_cors_origins)

    @property
    def effective_prefetch(self) -> int:
        """Unacked messages the broker may send; by default two batches (one written, one next)."""
        return self.prefetch or 2 * self.batch_size

    @property
    def topology(self) -> Topology:
        """The broker names and limits these settings give."""
        return Topology(
            exchange=self.exchange,
            queue=self.queue,
            dead_letter_exchange=self.dead_letter_exchange,
            dead_letter_queue=self.dead_letter_queue,
            retry_queue=self.retry_queue,
            delivery_limit=self.delivery_limit,
        )

    @field_validator("database_url", "api_operator_database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        # The driver's own rules, loaded only when a setting is read (not for --help).
        from consumer.store.pool import check_dsn  # noqa: PLC0415

        if value is not None:
            check_dsn(value)
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        # One URL, or several separated by commas, tried in turn (consumer.broker.failover).
        from consumer.broker.failover import amqp_urls  # noqa: PLC0415  # loads no client

        urls = amqp_urls(value)
        if not urls:
            raise ValueError("names no broker")
        for url in urls:
            _url(url, ("amqp", "amqps"))
        return value


def _url(value: str, schemes: tuple[str, ...]) -> str:
    """`value` if it is a URL with one of `schemes` and a well-formed host and port."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # parsing the port is the check
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme not in schemes:
        raise ValueError(f"must start with {schemes[0]}:// (or {schemes[1]}://)")
    return value


def _origins(value: str) -> tuple[str, ...]:
    """The comma-separated origins of `value`, trimmed, without a trailing slash."""
    return tuple(origin.strip().rstrip("/") for origin in value.split(",") if origin.strip())


def load_settings(**overrides: object) -> Settings:
    """Read the settings, with `overrides` (command-line flags) winning over the environment."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]  # keys are validated by pydantic
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if not field:  # a rule across settings names them itself
            raise ConfigurationError(f"invalid settings: {message}") from None
        raise ConfigurationError(
            f"invalid setting TASK_HISTORY_{field.upper()}: {message}"
        ) from None


@dataclass(frozen=True, slots=True)
class UnknownVariable:
    """A TASK_HISTORY_* variable no setting has: where it was set, and the name it resembles."""

    name: str
    source: str
    closest: str | None


def unknown_variables(
    environment: Mapping[str, str], dotenv: Iterable[str] = ()
) -> list[UnknownVariable]:
    """The TASK_HISTORY_* names in `environment` and `dotenv` that are not settings. No I/O.

    Names are compared in upper case, as the settings are read; the test suite's own variables
    (RESERVED_PREFIXES) are not settings and not reported.
    """
    known = [name.upper() for name in Settings.model_fields]
    found: list[UnknownVariable] = []
    seen: set[str] = set()  # a name set in both places is reported once, where it is read first
    for names, source in ((environment, "environment"), (dotenv, ".env")):
        for name in sorted(names):
            upper = name.upper()
            if not upper.startswith(PREFIX) or upper.startswith(RESERVED_PREFIXES):
                continue
            if upper in seen:
                continue
            seen.add(upper)
            setting = upper.removeprefix(PREFIX)
            if setting in known:
                continue
            # Compared without the prefix, which every name shares and would make all alike.
            closest = difflib.get_close_matches(setting, known, n=1, cutoff=0.75)
            found.append(UnknownVariable(name, source, PREFIX + closest[0] if closest else None))
    return found


def unknown_variables_here() -> list[UnknownVariable]:
    """unknown_variables() of this process's environment and the `.env` it reads."""
    dotenv = Path(".env")
    names = list(dotenv_values(dotenv)) if dotenv.is_file() else []
    return unknown_variables(os.environ, names)
