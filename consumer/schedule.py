"""Expiry as a pg_cron job: where the job is registered, what it runs, and the consumers told."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from consumer.errors import PgCronUnavailableError, StoreError

if TYPE_CHECKING:
    from consumer.store import Store

DEFAULT_SCHEDULE = "*/5 * * * *"
_JOB_PREFIX = "task_build_history_expire:"
_SHORTHANDS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@hourly", "@reboot")


@dataclass(frozen=True, slots=True)
class ExpiryJob:
    """A pg_cron job that expires one database's history."""

    name: str
    database: str
    cron_database: str
    schedule: str


def job_name(database: str, schema: str = "public") -> str:
    """The job's name: one per history (database and schema), wherever pg_cron lives."""
    return _JOB_PREFIX + (database if schema == "public" else f"{database}.{schema}")


def expire_command(schema: str, *, batch_size: int) -> str:
    """The SQL the job runs: the expiry procedure, one transaction per batch."""
    quoted = '"' + schema.replace('"', '""') + '"'
    return f"CALL {quoted}.task_build_history_expire_v2({int(batch_size)})"


def is_schedule(text: str) -> bool:
    """Whether `text` has the shape of a schedule pg_cron takes: five fields, or @daily & co."""
    text = text.strip()
    return text in _SHORTHANDS or len(text.split()) == 5  # noqa: PLR2004  # cron's five fields


def on_database(url: str, database: str) -> str:
    """`url` pointing at `database` instead (same server, same credentials)."""
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


def _unavailable(database: str) -> PgCronUnavailableError:
    return PgCronUnavailableError(
        f"pg_cron is not available on the server of database {database}: it must be installed"
        " (Debian: postgresql-NN-cron) and in shared_preload_libraries; without it, leave"
        " expiry to the consumers (TASK_HISTORY_EXPIRE_INTERVAL_SECONDS)"
    )


async def schedule_expiry(database_url: str, *, schedule: str, batch_size: int) -> ExpiryJob:
    """Register the expiry job with pg_cron, and note it in the history database."""
    from consumer.store import Store  # noqa: PLC0415  # the CLI imports this module for its help

    async with Store(database_url, max_connections=1) as store:
        here, schema, cron_database = await store.cron_place()
        if cron_database is None:
            raise _unavailable(here)
        job = ExpiryJob(job_name(here, schema), here, cron_database, schedule)
        command = expire_command(schema, batch_size=batch_size)
        if cron_database == here:
            await _schedule_on(store, job, command, elsewhere=False)
        else:
            async with Store(on_database(database_url, cron_database), max_connections=1) as cron:
                await _schedule_on(cron, job, command, elsewhere=True)
        await store.record_expiry_job(job.name, cron_database=cron_database, schedule=schedule)
    return job


async def _schedule_on(cron: Store, job: ExpiryJob, command: str, *, elsewhere: bool) -> None:
    try:
        await cron.create_pg_cron()
    except StoreError as exc:
        raise PgCronUnavailableError(
            f"pg_cron is loaded but its extension is missing from database {job.cron_database}"
            f" and could not be created ({exc}): run CREATE EXTENSION pg_cron there as a"
            " superuser"
        ) from exc
    await cron.schedule_cron_job(
        job.name,
        schedule=job.schedule,
        command=command,
        database=job.database if elsewhere else None,
    )


async def unschedule_expiry(database_url: str) -> ExpiryJob | None:
    """Remove the expiry job from pg_cron and the note; the job that was there, if any."""
    from consumer.store import Store  # noqa: PLC0415  # the CLI imports this module for its help

    async with Store(database_url, max_connections=1) as store:
        here, schema, cron_database = await store.cron_place()
        removed = False
        if cron_database is not None:
            name = job_name(here, schema)
            if cron_database == here:
                removed = await store.unschedule_cron_job(name)
            else:
                async with Store(
                    on_database(database_url, cron_database), max_connections=1
                ) as cron:
                    removed = await cron.unschedule_cron_job(name)
        noted = await store.forget_expiry_job()
    if noted is None and not removed:
        return None
    return ExpiryJob(job_name(here, schema), here, cron_database or (noted[1] if noted else ""), "")
