"""At start-up, a database whose standbys are all asynchronous is named as a risk of loss."""

from __future__ import annotations

import pytest
import structlog

from tests.unit.test_worker import Rig

WARNING = "the database streams to standbys, none of them synchronous"


class TestStandbys:
    """One warning line and a gauge when a failover could lose acknowledged events."""

    @pytest.mark.parametrize(
        ("standbys", "synchronous", "exposed"),
        [(0, False, 0), (2, False, 2), (2, True, 0), (0, True, 0)],
    )
    async def test_the_warning_and_the_gauge(
        self, standbys: int, *, synchronous: bool, exposed: int
    ) -> None:
        """Warned (once) only with standbys and none synchronous; the gauge says how many."""
        rig = Rig()
        rig.store.standbys, rig.store.synchronous = standbys, synchronous
        with structlog.testing.capture_logs() as logs:
            async with rig.running():
                await rig.until_consuming()
        warned = [line for line in logs if line["event"].startswith(WARNING)]
        assert len(warned) == (1 if exposed else 0)
        if warned:
            assert warned[0]["standbys"] == standbys
            assert "synchronous_standby_names" in warned[0]["event"]
        gauge = rig.worker.metrics.asynchronous_standbys
        assert gauge._value.get() == exposed  # noqa: SLF001  # prometheus_client has no getter
