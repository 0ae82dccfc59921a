"""SIGTERM and SIGINT turned into a graceful stop, from a command's first moment to its last."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, NoReturn

SIGNALS = (signal.SIGTERM, signal.SIGINT)

# Per event loop, the stops of the blocks now inside `stop_on_signals`, innermost last: a
# signal calls the innermost one, so a stop installed early (cancel the whole command) holds
# until a finer one (drain the batch in hand, end the streams) takes over, and again after it.
_stops: dict[asyncio.AbstractEventLoop, list[Callable[[], None]]] = {}


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call `stop` on SIGTERM or SIGINT while inside; the enclosing block's stop again after."""
    loop = asyncio.get_running_loop()
    stack = _stops.setdefault(loop, [])
    if not stack:
        for number in SIGNALS:
            loop.add_signal_handler(number, _signalled, stack)
    stack.append(stop)
    try:
        yield
    finally:
        stack.remove(stop)
        if not stack:
            del _stops[loop]
            for number in SIGNALS:
                loop.remove_signal_handler(number)


def _signalled(stack: list[Callable[[], None]]) -> None:
    stack[-1]()


def run_until_stopped(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `main()` in a new event loop until it ends or SIGTERM or SIGINT stops it.

    The signals are caught from the loop's first moment: whatever `main` announces (a waiting
    line, a URL) comes after. Until `main` installs a stop of its own, a signal cancels it, and
    this returns as if it had ended: a stop asked for is not a failure.
    """
    signalled = False

    async def until_stopped() -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101  # asyncio.run runs this as a task

        def cancel() -> None:
            nonlocal signalled
            signalled = True
            task.cancel()

        with stop_on_signals(cancel):
            await main()

    try:
        asyncio.run(until_stopped())
    except asyncio.CancelledError:
        if not signalled:
            raise


@contextlib.contextmanager
def interrupted_by_signals() -> Iterator[None]:
    """While inside, SIGTERM interrupts as Ctrl-C does: a KeyboardInterrupt (for a question).

    SIGINT keeps the disposition the process started with: ignored stays ignored, as a shell
    asks of a job it starts in the background.
    """
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(_number: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt
