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


async def run_all(
    settings: Settings,
    *,
    demo: tuple[int, float] | None,
    announce: Callable[[str], None],
) -> None:
    """Consume and serve until SIGTERM or SIGINT; `announce(url)` once the API answers.

    With `demo` (agents, events per second each), a demo stream is published too. A signal
    stops everything: the demo ends its stories, the consumer writes and acks what it holds,
    then the API stops.
    """
    worker = Worker.from_settings(settings)
    demo_done = asyncio.Event()
    stop = BoundedStop(worker, settings, demo_done.set)
    try:
        with stop_on_signals(stop):
            async with serving_with_state(settings) as (url, _state), asyncio.TaskGroup() as group:
                group.create_task(worker.run())
                if demo is not None:
                    agents, rate = demo
                    group.create_task(
                        run_demo(settings, agents=agents, rate=rate, count=None, stop=demo_done)
                    )
                announce(url)
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None  # the first failure, as one error line says
    finally:
        stop.disarm()
