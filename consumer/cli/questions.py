"""A yes-or-no question on the terminal that Ctrl-C or SIGTERM answers "no" at any moment."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
from collections.abc import Iterator

import click

from consumer.signals import interrupted_by_signals

YES = frozenset({"y", "yes"})


def can_ask() -> bool:
    """Whether there is a terminal to ask on: stdin to read the answer, stderr for the question."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def confirmed(question: str) -> bool:
    """Ask `question` on stderr and read the answer: y or yes; Ctrl-C, SIGTERM or end of input: no.

    The answer is awaited with select() on stdin and a wakeup pipe, not input(): a signal that
    lands just after the question is shown, before a blocking read begins, would otherwise wait
    for the user to press Enter. Here it wakes the wait, and its handler ends the question.
    """
    try:
        with interrupted_by_signals(), _woken_by_signals() as wakeup:
            click.echo(f"{question} [y/N]: ", nl=False, err=True)
            answer = _read_line(wakeup)
    except KeyboardInterrupt:
        answer = None
    if answer is None:
        click.echo(err=True)  # the question's line, ended
        return False
    return answer.strip().lower() in YES


def _read_line(wakeup: int) -> str | None:
    """A line from stdin; None at the end of input. A signal's handler may raise meanwhile."""
    while True:
        ready, _, _ = select.select([sys.stdin, wakeup], [], [])
        if sys.stdin in ready:
            return sys.stdin.readline() or None
        os.read(wakeup, 512)  # a signal whose handler did not raise: keep waiting


@contextlib.contextmanager
def _woken_by_signals() -> Iterator[int]:
    """A pipe that becomes readable when any signal arrives (signal.set_wakeup_fd)."""
    reading, writing = os.pipe()
    os.set_blocking(writing, False)
    previous = signal.set_wakeup_fd(writing, warn_on_full_buffer=False)
    try:
        yield reading
    finally:
        signal.set_wakeup_fd(previous)
        os.close(reading)
        os.close(writing)
