"""Everything in one process: the consumer, the HTTP API and console page, a demo stream if asked.

What `task-history up` runs, to see the service work with one command. Production runs them
apart (`consume` replicas, `serve`), each scaled and restarted on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from consumer.api.server import serving_with_state
from consumer.demo import run_demo
from consumer.settings import Settings
from consumer.signals import stop_on_signals
from consumer.worker import BoundedStop, Worker

# The demo stream of `up --demo`: as `task-history demo` by default.
DEMO_AGENTS = 3
DEMO_RATE = 2.0


async def run_all(settings: Settings, *, demo: bool, announce: Callable[[str], None]) -> None:
    """Consume and serve (and publish a demo stream) until SIGTERM or SIGINT; `announce(url)`.

    The page's URL is announced once the API answers and a signal stops everything: the demo
    ends its stories, the consumer writes and acks what it holds, then the API stops.
    """
    worker = Worker.from_settings(settings)
    demo_done = asyncio.Event()
    stop = BoundedStop(worker, settings, demo_done.set)
    try:
        with stop_on_signals(stop):
            async with serving_with_state(settings) as (url, _state), asyncio.TaskGroup() as group:
                group.create_task(worker.run())
                if demo:
                    group.create_task(
                        run_demo(
                            settings,
                            agents=DEMO_AGENTS,
                            rate=DEMO_RATE,
                            count=None,
                            stop=demo_done,
                        )
                    )
                announce(url)
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None  # the first failure, as one error line says
    finally:
        stop.disarm()
