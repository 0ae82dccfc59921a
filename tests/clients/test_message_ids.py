"""A message published without a message_id keeps having none, through retries and replays."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import structlog

from consumer.settings import Settings
from tests.harness import count_dead_letters, dead_letter_rows, running, wait_for
from tests.integration.test_dlq import dlq


def publish_without_message_id(node_dir: Path, settings: Settings, body: object) -> None:
    """Publish `body` with Node's amqplib, which, unlike aiormq, sends no message_id."""
    subprocess.run(
        [  # noqa: S607  # node from PATH, as users run it
            "node",
            "publish_without_message_id.mjs",
            settings.amqp_url,
            settings.exchange,
            "history.error",
        ],
        input=json.dumps(body).encode(),
        cwd=node_dir,
        check=True,
        timeout=60,
    )


class TestAbsentMessageIds:
    """Dead letters keep the original's absence of a message_id, and the log says the same."""

    async def test_through_the_unknown_task_retries(
        self, settings: Settings, node_dir: Path
    ) -> None:
        """Retried for a missing task, then dead-lettered: still no message_id, row and log."""
        short = settings.model_copy(
            update={"unknown_task_retry_seconds": 1, "unknown_task_retry_delay_seconds": 0.3}
        )
        body = {"task_id": str(uuid.uuid4()), "context_type": "error", "content": "lost task"}
        with structlog.testing.capture_logs() as logs:
            async with running(short):
                publish_without_message_id(node_dir, settings, body)
                await wait_for(lambda: count_dead_letters(settings.database_url), lambda n: n == 1)
        (dead,) = await dead_letter_rows(settings.database_url)
        assert dead["error"] == "unknown_task"
        assert re.search(
            r"retried for \d+ s, (once|\d+ times)", dead["detail"]
        )  # round the retry queue
        assert dead["message_id"] is None
        assert "message_id" not in dead["properties"]
        assert "x-no-message-id" not in dead["headers"]
        said = [line for line in logs if line["event"] == "dead-lettered"]
        assert [line["message_id"] for line in said] == [None]

    async def test_through_a_replay(self, settings: Settings, node_dir: Path) -> None:
        """A replayed letter refused again: the new row has no message_id either."""
        async with running(settings):
            publish_without_message_id(node_dir, settings, {"task_id": "not a uuid"})
            await wait_for(lambda: count_dead_letters(settings.database_url), lambda n: n == 1)
            code, _, err = await dlq(settings, "replay")
            assert code == 0, err
            await wait_for(
                lambda: dead_letter_rows(settings.database_url),
                lambda rows: [row["replay_count"] for row in rows] == [1],
            )
        (dead,) = await dead_letter_rows(settings.database_url)
        assert dead["message_id"] is None
        assert "message_id" not in dead["properties"]
