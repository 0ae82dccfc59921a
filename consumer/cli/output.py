"""Where the exports write: stdout or a file, a count on the terminal while they stream."""

from __future__ import annotations

import errno
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TextIO

import click

from consumer.cli.progress import counting
from consumer.inert import inert_json

# Errors of an output that can't take what is written (a full disk, a quota, a file too large
# or a failing device), for which the error line says "can't write".
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})

output_option = click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    help="Write to this file (default: stdout).",
)


async def write_lines(lines: AsyncIterator[str], sink: TextIO, *, noun: str, output: str) -> int:
    """Write each JSON line to `sink`, counting on the terminal as they go; how many written."""
    # A count on the terminal, unless the lines themselves are going to that terminal.
    show = sys.stderr.isatty() and not (output == "-" and sys.stdout.isatty())
    written = 0
    with counting("exporting", show=show) as count:
        async for line in lines:
            # The same JSON once parsed; no control character reaches a terminal (consumer.inert).
            sink.write(inert_json(line))
            sink.write("\n")
            written += 1
            if written % 1000 == 0:
                count(f"{written} {noun}")
    return written


def export_to(output: str, write: Callable[[TextIO], int], *, noun: str) -> None:
    """Run `write` on stdout, or on the file `output` and then say how many it wrote there."""
    if output == "-":
        write(sys.stdout)
        sys.stdout.flush()
        return
    try:
        sink = Path(output).open("w", encoding="utf-8")  # noqa: SIM115  # closed just below
    except OSError as exc:
        raise click.FileError(output, hint=exc.strerror) from None
    try:
        with sink:
            written = write(sink)
    except OSError as exc:
        if exc.errno not in OUTPUT_ERRNOS:  # not the file's: a connection's, say
            raise
        raise click.ClickException(f"can't write {output}: {exc.strerror}") from None
    click.echo(f"exported {written} {noun} to {output}")
