"""Progress on stderr while a long command runs, shown only when stderr is a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import rich.progress
from rich.console import Console

if TYPE_CHECKING:
    from consumer.replay import Progress


@contextlib.contextmanager
def counting(description: str, *, show: bool) -> Iterator[Callable[[str], None]]:
    """A live count on stderr when `show` (a terminal); yields a function that updates it."""
    if not show:
        yield lambda _text: None
        return
    bar = rich.progress.Progress(
        rich.progress.SpinnerColumn(),
        rich.progress.TextColumn("{task.description}"),
        rich.progress.TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=None)
        yield lambda text: bar.update(task, description=f"{description}: {text}")


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[Progress | None]:
    """A progress bar on stderr when it is a terminal; otherwise None (nothing to tell).

    The bar appears at the first step, so a question asked before it stays readable.
    """
    if not sys.stderr.isatty():
        yield None
        return
    bar = rich.progress.Progress(
        rich.progress.TextColumn("{task.description}"),
        rich.progress.BarColumn(),
        rich.progress.MofNCompleteColumn(),
        rich.progress.TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    shown: list[rich.progress.TaskID] = []

    def advance(done: int, total: int) -> None:
        if not shown:
            bar.start()
            shown.append(bar.add_task(description, total=total))
        bar.update(shown[0], completed=done, total=total)

    try:
        yield advance
    finally:
        bar.stop()
