"""`task-history dlq` on the dead-letter table, with the real broker: at scale, at once, killed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, cast

import pytest

from consumer import operations
from consumer.broker.signing import HeaderSigner
from consumer.deadletters import DeadLetter, Selection
from consumer.errors import BrokerUnavailableError
from consumer.replay import replay
from consumer.settings import Settings
from consumer.store import Store
from tests.conftest import Env
from tests.harness import (
    REPOSITORY,
    Bus,
    count_rows,
    event,
    run_command,
    running,
    settings_environment,
    start_command,
    wait_for,
)
from tests.integration.test_roles import login_role
from tests.letters import NOW, Screen, bury, bury_many, letter, rows, taken_ids


async def dlq(env: Env | Settings, *args: str) -> tuple[int, str, str]:
    """Run `task-history dlq ARGS` in a process of its own; (exit code, out, err)."""
    settings = env.settings if isinstance(env, Env) else env
    return await run_command("dlq", *args, environment=settings_environment(settings))


@pytest.fixture
async def bus(env: Env) -> AsyncIterator[Bus]:
    """A connection to this test's topology."""
    async with Bus(env.amqp_url, env.topology) as connected:
        yield connected


async def mixed(env: Env, task: uuid.UUID) -> list[DeadLetter]:
    """30 dead letters, three codes interleaved, all of `task`."""
    codes = ["invalid_event", "unknown_task", "invalid_json"]
    letters = [letter(n, code=codes[n % 3], task=task) for n in range(30)]
    await bury(env.database_url, letters)
    return letters


class TestListShowExport:
    """Counting, one letter whole, and every letter as JSON Lines."""

    async def test_5000_letters_10_selected_last(self, env: Env, bus: Bus) -> None:
        """`list` counts 5,000; replay --error moves exactly the last 10; the 4,990 stay."""
        task = uuid.uuid4()
        letters = [letter(n, code="invalid_event") for n in range(4990)]
        letters += [letter(4990 + n, code="unknown_task", task=task) for n in range(10)]
        await bury(env.database_url, letters)
        code, out, err = await dlq(env, "list", "--json", "--sample", "3")
        assert code == 0, err
        listing = json.loads(out)
        assert listing["total"] == 5000
        assert [(g["error"], g["count"]) for g in listing["by_error"]] == [
            ("invalid_event", 4990),
            ("unknown_task", 10),
        ]
        assert listing["by_error"][1]["tasks"] == [{"task_id": str(task), "count": 10}]
        assert [s["message_id"] for s in listing["newest"]] == ["m4999", "m4998", "m4997"]
        code, out, err = await dlq(env, "replay", "--error", "unknown_task")
        assert code == 0, err
        assert out.strip() == (
            "moved 10, skipped 0 at --max-replays, unroutable 0; 4990 dead letters left"
        )
        moved = await bus.take_all(env.topology.queue)
        assert [m.message_id for m in moved] == [f"m{4990 + n}" for n in range(10)]
        assert await rows(env.sql) == [f"m{n}" for n in range(4990)]
        first = moved[0]
        assert (first.routing_key, first.content_type, first.user_id) == (
            "history.agent_turn",
            "application/json",
            None,
        )
        sent = {name: value for name, value in first.headers.items() if name != "x-delivery-count"}
        signature = sent.pop("x-task-history-signature")  # the broker adds x-delivery-count
        assert sent == {"app": "kept", "x-replay-count": 1}
        async with Store(env.database_url, max_connections=1) as store:
            signer = HeaderSigner(await store.header_key())
        assert signer.vouches_for({**sent, "x-task-history-signature": signature}, body=first.body)
        assert json.loads(first.body)["content"] == "dead 4990"
        async with Store(env.database_url, max_connections=1) as store:
            assert await store.dead_letter_totals() == ({"invalid_event": 4990}, 10, 0)

    async def test_a_listing_for_people_and_filters(self, env: Env) -> None:
        """Without --json: the total, a block per code, the newest; filters narrow all of it."""
        await mixed(env, uuid.uuid4())
        code, out, err = await dlq(env, "list")
        assert code == 0, err
        assert out.startswith("30 dead letters in task_build_history_dead_letters\n")
        for error in ("invalid_event", "unknown_task", "invalid_json"):
            assert f"       10  {error}" in out
        assert "#30  invalid_json" in out
        code, out, err = await dlq(env, "list", "--json", "--error", "invalid_json")
        assert code == 0, err
        assert json.loads(out)["total"] == 10
        code, out, _ = await dlq(env, "list", "--json")
        assert code == 0
        assert json.loads(out)["total"] == 30
        await env.sql.execute("DELETE FROM task_build_history_dead_letters")
        code, out, _ = await dlq(env, "list", "--json")
        assert json.loads(out) == {"total": 0, "by_error": [], "newest": []}

    async def test_show_by_row_id_and_by_message_id(self, env: Env) -> None:
        """A row id, or a message id (the newest of several); an unknown one is exit 1."""
        await mixed(env, uuid.uuid4())
        await bury(env.database_url, [letter(7, code="too_large")])  # m7 again, newer
        code, out, err = await dlq(env, "show", "8")
        assert code == 0, err
        shown = json.loads(out)
        assert (shown["id"], shown["message_id"], shown["error"]) == (8, "m7", "unknown_task")
        assert shown["headers"]["x-error"] == "unknown_task"
        assert shown["properties"]["content_type"] == "application/json"
        assert shown["body"]["content"] == "dead 7"
        code, out, err = await dlq(env, "show", "m7")
        assert code == 0, err
        assert (json.loads(out)["id"], json.loads(out)["error"]) == (31, "too_large")
        code, out, err = await dlq(env, "show", "no-such-id")
        assert (code, out) == (1, "")
        assert err.strip() == "task-history: error: no dead letter has id or message id no-such-id"

    async def test_export_json_lines(self, env: Env) -> None:
        """One object per letter: a UTF-8 body as text, any other as base64; to a file too."""
        text = '{"content": "héllo"}'.encode()
        binary = b"\xff\xfe\x00 not text"
        await bury(
            env.database_url, [letter(0, body=text), letter(1, body=binary, code="too_large")]
        )
        code, out, err = await dlq(env, "export")
        assert code == 0, err
        first, second = (json.loads(line) for line in out.splitlines())
        assert first["body"] == '{"content": "héllo"}'
        assert "body_base64" not in first
        assert base64.b64decode(second["body_base64"]) == binary
        assert "body" not in second
        for field in ("id", "message_id", "error", "detail", "routing_key", "task_id"):
            assert field in first
        assert (first["failed_at"], first["replay_count"]) == (NOW.isoformat(), 0)
        assert first["headers"]["app"] == "kept"
        path = env.tmp_path / "dead.jsonl"
        code, out, err = await dlq(env, "export", "--error", "too_large", "--output", str(path))
        assert code == 0, err
        assert out.strip() == f"exported 1 dead letters to {path}"
        assert [json.loads(line)["message_id"] for line in path.read_text().splitlines()] == ["m1"]


class TestReplay:
    """Exactly what the filters select goes back, confirmed; the rest stays."""

    async def test_dry_run_limit_and_filters(self, env: Env, bus: Bus) -> None:
        """--dry-run moves nothing; --limit is exact; --task and --since/--until select."""
        mine, other = uuid.uuid4(), uuid.uuid4()
        ages = [(mine, 3), (other, 3), (mine, 0), (mine, 3), (mine, 5)]
        await bury(
            env.database_url,
            [
                letter(n, task=task, failed_at=NOW - timedelta(hours=age))
                for n, (task, age) in enumerate(ages)
            ],
        )
        code, out, err = await dlq(env, "replay", "--dry-run", "--task", str(mine))
        assert code == 0, err
        assert out.count("would replay #") == 4
        assert out.strip().endswith(
            "dry run: would move 4, skipped 0 at --max-replays, unroutable 0; 5 dead letters left"
        )
        assert await bus.depth(env.topology.queue) == 0
        assert len(await rows(env.sql)) == 5
        between = ("--older-than", "2h", "--newer-than", "4h")
        code, _, err = await dlq(env, "replay", "--task", str(mine), *between)
        assert code == 0, err
        assert [m.message_id for m in await bus.take_all(env.topology.queue)] == ["m0", "m3"]
        code, _, err = await dlq(env, "replay", "--until", "4h", "--limit", "1")
        assert code == 0, err
        assert [m.message_id for m in await bus.take_all(env.topology.queue)] == ["m4"]
        code, _, err = await dlq(env, "replay", "--since", "1h")
        assert code == 0, err
        assert [m.message_id for m in await bus.take_all(env.topology.queue)] == ["m2"]
        assert await rows(env.sql) == ["m1"]

    async def test_max_replays_and_unroutable_are_left_and_reported(
        self, env: Env, bus: Bus
    ) -> None:
        """At --max-replays a letter stays; a key no queue is bound for stays too, exit 1."""
        await bury(
            env.database_url,
            [
                letter(0),
                letter(1, replay_count=2),
                letter(2, routing_key="elsewhere.agent_turn"),
            ],
        )
        code, out, err = await dlq(env, "replay", "--max-replays", "2")
        assert code == 1, err
        assert "left #2: replayed 2 times already (--max-replays 2)" in out
        assert "left #3: no queue is bound for routing key 'elsewhere.agent_turn'" in out
        assert out.strip().endswith(
            "moved 1, skipped 1 at --max-replays, unroutable 1; 2 dead letters left"
        )
        assert [m.message_id for m in await bus.take_all(env.topology.queue)] == ["m0"]
        assert await rows(env.sql) == ["m1", "m2"]

    async def test_a_replayed_event_is_stored_once_its_task_exists(
        self, env: Env, bus: Bus
    ) -> None:
        """The consumer dead-letters an unknown task; create it, replay: stored, row gone."""
        task = uuid.uuid4()
        async with running(env.settings):
            await bus.publish(event(task, "early"), message_id=str(uuid.uuid4()))
            await wait_for(lambda: rows(env.sql), lambda found: len(found) == 1)
            code, out, err = await dlq(env, "replay", "--max-replays", "1")
            assert code == 0, err
            # It fails again, and comes back as a row replayed once.
            again = await wait_for(
                lambda: env.sql.fetch("SELECT replay_count FROM task_build_history_dead_letters"),
                lambda found: len(found) == 1 and found[0]["replay_count"] == 1,
            )
            assert again
            code, out, err = await dlq(env, "replay", "--max-replays", "1")
            assert "moved 0, skipped 1 at --max-replays" in out
            await env.sql.execute("INSERT INTO tasks (id) VALUES ($1)", task)
            code, out, err = await dlq(env, "replay", "--error", "unknown_task")
            assert code == 0, err
            await wait_for(lambda: count_rows(env.database_url), lambda n: n == 1)
        assert await rows(env.sql) == []

    async def test_two_replays_at_once_move_each_letter_once(self, env: Env, bus: Bus) -> None:
        """Two processes over 20,000 letters: both work, and every letter arrives once."""
        await bury_many(env.sql, 20_000)
        results = await asyncio.gather(dlq(env, "replay"), dlq(env, "replay"))
        moved = []
        for code, out, err in results:
            assert code == 0, err
            moved.append(int(out.split("moved ", 1)[1].split(",", 1)[0]))
        assert sum(moved) == 20_000
        assert min(moved) > 0, f"the two replays did not overlap: {moved}"
        arrived = await taken_ids(bus, env.topology.queue)
        assert sorted(arrived) == sorted(f"m{n}" for n in range(20_000))
        assert await rows(env.sql) == []

    async def test_killed_half_way_through_50000_loses_nothing(self, env: Env, bus: Bus) -> None:
        """SIGKILL mid-replay: every letter is still a row or was published; a rerun ends it."""
        everything = {f"m{n}" for n in range(50_000)}
        await bury_many(env.sql, 50_000)
        process = await start_command(
            "dlq",
            "replay",
            environment=settings_environment(env.settings),
            output=asyncio.subprocess.DEVNULL,
        )
        left = await wait_for(
            lambda: env.sql.fetchval("SELECT count(*) FROM task_build_history_dead_letters"),
            lambda n: n <= 30_000,
            timeout=60,
            interval=0.02,
            what="a replay well under way",
        )
        process.send_signal(signal.SIGKILL)
        await process.wait()
        # Rows first, then the queue: a row deleted after this read was confirmed before it.
        kept = set(await rows(env.sql))
        assert 0 < len(kept) <= left < 50_000, "the replay finished before it could be killed"
        published = set(await taken_ids(bus, env.topology.queue))
        assert kept | published == everything
        # The record counted every batch it committed, and no more: the kill left it running.
        killed = await env.sql.fetchrow(
            "SELECT state, selected, affected FROM task_build_history_dead_letter_actions"
        )
        assert dict(killed) == {
            "state": "running",
            "selected": 50_000,
            "affected": 50_000 - len(kept),
        }
        code, _, err = await dlq(env, "replay")
        assert code == 0, err
        assert await rows(env.sql) == []
        resent = set(await taken_ids(bus, env.topology.queue))
        assert published | resent == everything
        rerun = await env.sql.fetchrow(
            "SELECT state, affected FROM task_build_history_dead_letter_actions"
            " ORDER BY id DESC LIMIT 1"
        )
        assert dict(rerun) == {"state": "finished", "affected": len(kept)}

    async def test_a_broker_failure_mid_way_keeps_every_row_unsent(self, env: Env) -> None:
        """The batch in hand and the one claimed ahead roll back, unlocked; the note says so."""
        await bury(env.database_url, [letter(n) for n in range(2500)])

        class Failing:
            """Confirms the first batch, then loses the broker."""

            batches = 0

            async def send(self, due: list[DeadLetter]) -> tuple[list[DeadLetter], list[Any]]:
                self.batches += 1
                if self.batches > 1:
                    raise BrokerUnavailableError
                return due, []

        async with Store(env.database_url, max_connections=2) as store:
            with pytest.raises(BrokerUnavailableError) as raised:
                await replay(store, cast("Any", Failing()), selection=Selection())
        assert "replay stopped after moving 1000" in raised.value.__notes__[0]
        assert await rows(env.sql) == [f"m{n}" for n in range(1000, 2500)]
        unlocked = await env.sql.fetch(
            "SELECT id FROM task_build_history_dead_letters FOR UPDATE NOWAIT"
        )
        assert len(unlocked) == 1500

    async def test_a_recorded_replay_that_fails_says_so(self, env: Env) -> None:
        """The record keeps the batches committed before the broker went, and why it stopped."""
        await bury(env.database_url, [letter(n) for n in range(2500)])

        class Failing:
            """Confirms the first batch, then loses the broker."""

            batches = 0

            async def send(self, due: list[DeadLetter]) -> tuple[list[DeadLetter], list[Any]]:
                self.batches += 1
                if self.batches > 1:
                    raise BrokerUnavailableError
                return due, []

        async with Store(env.database_url, max_connections=2) as store:
            with pytest.raises(BrokerUnavailableError):
                await operations.replay_recorded(
                    store,
                    cast("Any", Failing()),
                    selection=Selection(),
                    operator=operations.Operator(name="bob", via="command"),
                )
            (action,) = (await store.actions()).actions
        assert (action.state, action.selected, action.affected) == ("failed", 2500, 1000)
        assert action.detail is not None
        assert "broker" in action.detail
        assert action.finished_at is not None


class TestPurge:
    """Only what it is told to delete, only when told clearly, and fast."""

    async def test_filters_limit_all_and_dry_run(self, env: Env) -> None:
        """--error --yes deletes those; --limit is exact; a dry run deletes nothing; --all."""
        letters = await mixed(env, uuid.uuid4())
        code, out, err = await dlq(env, "purge", "--error", "invalid_json", "--yes")
        assert code == 0, err
        assert out.strip() == "deleted 10; 20 dead letters left"
        assert await rows(env.sql) == [m.message_id for m in letters if m.code != "invalid_json"]
        code, out, err = await dlq(env, "purge", "--error", "unknown_task", "--limit", "3", "--yes")
        assert (code, out.strip()) == (0, "deleted 3; 17 dead letters left"), err
        code, out, _ = await dlq(env, "purge", "--all", "--dry-run")
        assert code == 0
        assert out.count("would delete #") == 17
        assert out.strip().splitlines()[-1] == "dry run: would delete 17; 17 dead letters left"
        code, out, _ = await dlq(env, "purge", "--all", "--yes")
        assert (code, out.strip()) == (0, "deleted 17; 0 dead letters left")
        totals = await env.sql.fetchrow("SELECT * FROM task_build_history_dead_letter_totals")
        assert (totals["replayed"], totals["purged"]) == (0, 30)

    async def test_refusals(self, env: Env) -> None:
        """No filter, or no --yes off a terminal: exit 2, one line, nothing deleted."""
        await mixed(env, uuid.uuid4())
        code, out, err = await dlq(env, "purge", "--yes")
        assert (code, out) == (2, "")
        assert err.startswith("task-history: error: purge needs a filter")
        code, _, err = await dlq(env, "purge", "--error", "invalid_json")
        assert code == 2
        assert "--yes" in err
        assert len(await rows(env.sql)) == 30

    async def test_one_ctrl_c_at_the_question_on_a_terminal(self, env: Env) -> None:
        """The question counts what matches; one SIGINT there cancels at once, exit 1."""
        await mixed(env, uuid.uuid4())
        terminal, child_side = os.openpty()
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "consumer", "dlq", "purge", "--error", "invalid_json"),
            cwd=REPOSITORY,
            env=settings_environment(env.settings),
            stdin=child_side,
            stdout=asyncio.subprocess.PIPE,
            stderr=child_side,
        )
        os.close(child_side)
        screen = Screen(terminal)
        await wait_for(screen.read, lambda text: "[y/N]" in text, what="the question")
        assert "Delete 10 dead letters (error invalid_json)? [y/N]" in screen.text
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert await asyncio.wait_for(process.wait(), 10) == 1
        seen = await screen.read()
        os.close(terminal)
        assert seen.rstrip().endswith("purge cancelled: nothing deleted"), seen
        assert "Traceback" not in seen
        assert len(await rows(env.sql)) == 30

    async def test_100000_in_batches(self, env: Env) -> None:
        """A purge of 100,000 letters selected among 150,000 deletes exactly those."""
        await env.sql.execute(
            "INSERT INTO task_build_history_dead_letters (message_id, error, body)"
            " SELECT 'm' || g, CASE WHEN g % 3 = 0 THEN 'too_large' ELSE 'invalid_json' END,"
            " '\\x00'::bytea FROM generate_series(1, 150000) AS g"
        )
        code, out, err = await dlq(env, "purge", "--error", "invalid_json", "--yes")
        assert (code, out.strip()) == (0, "deleted 100000; 50000 dead letters left"), err


class TestRecord:
    """`dlq actions`: every replay and purge, whoever ran it, and the new filters."""

    async def test_actions_of_commands(self, env: Env) -> None:
        """A replay and a purge show, newest first, with who, the filter and the counts."""
        await bury(
            env.database_url,
            [
                letter(n, routing_key="history.error" if n < 3 else "history.agent_turn")
                for n in range(8)
            ],
        )
        code, out, err = await dlq(env, "replay", "--routing-key", "history.error")
        assert code == 0, err
        assert out.endswith(
            "moved 3, skipped 0 at --max-replays, unroutable 0; 5 dead letters left\n"
        )
        ids = [
            row["id"]
            for row in await env.sql.fetch(
                "SELECT id FROM task_build_history_dead_letters ORDER BY id"
            )
        ]
        code, out, err = await dlq(env, "purge", "--id", str(ids[0]), "--id", str(ids[2]), "--yes")
        assert code == 0, err
        assert out.endswith("deleted 2; 3 dead letters left\n")
        code, out, err = await dlq(env, "actions")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("#2  purge  finished  ")
        assert f"ids [{ids[0]}, {ids[2]}]" in lines[1]
        assert lines[1].endswith("; chose 2, deleted 2")
        assert lines[2].startswith("#1  replay  finished  ")
        assert "(command, database role postgres)" in lines[2]
        assert 'routing_key "history.error"' in lines[3]
        assert lines[3].endswith("; chose 3, moved 3")
        code, out, err = await dlq(env, "actions", "--json", "--limit", "1")
        assert code == 0, err
        document = json.loads(out)
        assert document["next"] == 2
        (action,) = document["actions"]
        assert (action["id"], action["action"], action["via"]) == (2, "purge", "command")
        code, out, err = await dlq(env, "actions", "--before", "2")
        assert code == 0, err
        assert out.startswith("#1  replay")
        code, out, _ = await dlq(env, "actions", "--before", "1")
        assert (code, out) == (0, "no replay or purge recorded before #1\n")

    async def test_text_and_routing_key_filters(self, env: Env) -> None:
        """--text finds the detail or message id in any case; --routing-key the first key."""
        await bury(
            env.database_url,
            [letter(1, code="invalid_json"), letter(2), letter(3, routing_key="history.error")],
        )
        code, out, err = await dlq(env, "list", "--json", "--text", "INVALID_JSON FOR")
        assert code == 0, err
        assert json.loads(out)["total"] == 1
        code, out, err = await dlq(env, "list", "--json", "--routing-key", "history.error")
        assert json.loads(out)["total"] == 1
        code, _, err = await dlq(env, "list", "--id", "0")
        assert code == 2


class TestRoles:
    """`dlq` run as the consumer's role does everything; as the reader's, it only reads."""

    async def test_as_the_consumer_and_as_the_reader(self, env: Env, bus: Bus) -> None:
        """Replay and purge claim rows FOR UPDATE: the consumer's grants allow it."""
        await mixed(env, uuid.uuid4())
        async for url in login_role(env.database_url, "task_history_consumer"):
            consumer = env.settings.model_copy(update={"database_url": url})
            for command in (["list"], ["show", "1"], ["export", "--limit", "1"]):
                code, _, err = await dlq(consumer, *command)
                assert code == 0, err
            code, out, err = await dlq(consumer, "replay", "--error", "unknown_task")
            assert (code, out.split(",")[0]) == (0, "moved 10"), err
            code, out, err = await dlq(consumer, "purge", "--error", "invalid_json", "--yes")
            assert (code, out.strip()) == (0, "deleted 10; 10 dead letters left"), err
        assert len(await taken_ids(bus, env.topology.queue)) == 10
        async for url in login_role(env.database_url, "task_history_reader"):
            reader = env.settings.model_copy(update={"database_url": url})
            code, out, err = await dlq(reader, "list", "--json")
            assert (code, json.loads(out)["total"]) == (0, 10), err
            code, out, err = await dlq(reader, "purge", "--all", "--yes")
            assert (code, out) == (1, "")
            assert "permission denied" in err
            assert len(err.strip().splitlines()) == 1
