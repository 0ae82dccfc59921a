"""The pure parts of running it: the pg_cron job's text, the demo's stories, the metrics."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumer.demo import Assignment, story
from consumer.metrics import Metrics
from consumer.publisher import prepare_event
from consumer.schedule import expire_command, is_schedule, job_name, on_database


class TestScheduleText:
    """What `schedule` sends to pg_cron."""

    @pytest.mark.parametrize("text", ["*/5 * * * *", "0 3 * * *", "@daily", " @hourly "])
    def test_schedules_accepted(self, text: str) -> None:
        """Five fields or a shorthand pass the shape check."""
        assert is_schedule(text)

    @pytest.mark.parametrize("text", ["", "every minute", "* * * *", "@sometimes", "30 seconds"])
    def test_schedules_refused(self, text: str) -> None:
        """Anything else is refused before connecting."""
        assert not is_schedule(text)

    def test_command_quotes_the_schema(self) -> None:
        """The schema is quoted as an identifier; the batch size is an integer."""
        assert expire_command('odd"name', batch_size=500) == (
            'CALL "odd""name".task_build_history_expire_v2(500)'
        )

    def test_one_job_name_per_database(self) -> None:
        """Jobs of different history databases don't replace each other."""
        assert job_name("a") != job_name("b")
        assert job_name("a") == "task_build_history_expire:a"

    def test_on_database_keeps_credentials_and_options(self) -> None:
        """Only the database changes in the URL."""
        url = "postgresql://u:p@db:5433/history?sslmode=require"
        assert on_database(url, "postgres") == "postgresql://u:p@db:5433/postgres?sslmode=require"


class TestDemoStories:
    """The demo publishes what a real agent would."""

    def test_every_event_is_valid(self) -> None:
        """Every event of many stories passes the publisher's validation."""
        rng = random.Random(6)
        for _ in range(50):
            work = Assignment("agent-1", uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
            for body in story(rng, work):
                prepare_event(body, now=datetime.now(UTC))

    def test_a_story_starts_and_ends_with_a_status_change(self) -> None:
        """A task's story opens with running and closes with review, all of one task."""
        work = Assignment("agent-2", uuid.uuid4(), uuid.uuid4(), uuid.uuid4())
        events = story(random.Random(1), work)
        assert events[0]["context_type"] == events[-1]["context_type"] == "status_change"
        assert {e["task_id"] for e in events} == {str(work.task_id)}
        assert len({e["id"] for e in events}) == len(events)


class TestMetrics:
    """The metrics' own logic."""

    def test_every_series_starts_at_zero(self) -> None:
        """Dead-letter codes and expiry outcomes are exported before anything happens."""
        text = Metrics().render().decode()
        assert 'task_history_events_dead_lettered_total{code="unknown_task"} 0.0' in text
        assert 'task_history_expiry_runs_total{outcome="scheduled"} 0.0' in text

    def test_lag_from_created_at(self) -> None:
        """Lag is now minus created_at, never negative (clock skew)."""
        metrics = Metrics()
        now = datetime.now(UTC)
        metrics.observe_lag([now - timedelta(seconds=3), now + timedelta(seconds=1)], now=now)
        samples = {
            s.name: s.value
            for family in text_string_to_metric_families(metrics.render().decode())
            for s in family.samples
            if not s.labels
        }
        assert samples["task_history_event_lag_seconds_count"] == 2
        assert samples["task_history_event_lag_seconds_sum"] == pytest.approx(3)

    def test_registries_are_separate(self) -> None:
        """Two workers in one process count separately."""
        first, second = Metrics(), Metrics()
        first.stored.inc(5)
        assert "task_history_events_stored_total 0.0" in second.render().decode()
