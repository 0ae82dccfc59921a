"""pg_cron: where it runs, its jobs, and the note that tells the consumers it runs expiry."""

from __future__ import annotations

from datetime import timedelta

from consumer.store import queries
from consumer.store.pool import StoreBase


class CronStore(StoreBase):
    """pg_cron's extension and jobs, and this database's record of its expiry job."""

    async def cron_place(self) -> tuple[str, str, str | None]:
        """This database, its schema, and pg_cron's database (None: pg_cron is not loaded)."""
        rows = await self._fetch(queries.CRON_PLACE)
        return rows[0]["here"], rows[0]["schema"], rows[0]["cron_database"]

    async def create_pg_cron(self) -> None:
        """Create the pg_cron extension in this database if it isn't there (a superuser's job)."""
        if not await self._fetchval(queries.HAS_PG_CRON):
            await self._execute(queries.CREATE_PG_CRON)

    async def schedule_cron_job(
        self, name: str, *, schedule: str, command: str, database: str | None = None
    ) -> int:
        """Register (or replace) the pg_cron job `name`; in `database` if not this one."""
        async with self._connection() as connection, connection.transaction():
            for record in await connection.fetch(queries.CRON_JOB_IDS, name):
                await connection.execute(queries.CRON_UNSCHEDULE, record["jobid"])
            if database is None:
                job = await connection.fetchval(queries.CRON_SCHEDULE, name, schedule, command)
            else:
                job = await connection.fetchval(
                    queries.CRON_SCHEDULE_IN_DATABASE, name, schedule, command, database
                )
            return int(job)

    async def unschedule_cron_job(self, name: str) -> bool:
        """Remove the pg_cron job `name`; whether there was one."""
        async with self._connection() as connection, connection.transaction():
            if not await connection.fetchval(queries.HAS_PG_CRON):
                return False
            records = await connection.fetch(queries.CRON_JOB_IDS, name)
            for record in records:
                await connection.execute(queries.CRON_UNSCHEDULE, record["jobid"])
            return bool(records)

    async def expiry_job(self) -> str | None:
        """The pg_cron job that runs expiry for this database, if one is registered."""
        job: str | None = await self._fetchval(queries.EXPIRY_JOB)
        return job

    async def expiry_job_silent(self, *, longer_than: timedelta) -> bool:
        """Whether the registered job has neither run nor been registered for `longer_than`."""
        return bool(await self._fetchval(queries.EXPIRY_JOB_SILENT, longer_than))

    async def record_expiry_job(self, name: str, *, cron_database: str, schedule: str) -> None:
        """Note in this database that pg_cron runs its expiry: the consumers stand down."""
        await self._execute(queries.RECORD_EXPIRY_JOB, name, cron_database, schedule)

    async def forget_expiry_job(self) -> tuple[str, str] | None:
        """Remove that note; the job's name and pg_cron database, if there was one."""
        rows = await self._fetch(queries.FORGET_EXPIRY_JOB)
        return (rows[0]["job_name"], rows[0]["cron_database"]) if rows else None
