"""The `task-history` command line: exit 0 on success, 1 on a failure, 2 on a usage error.

One module per group of commands. The commands import the store, broker, publisher and
worker modules inside their functions, not at the top: those load asyncpg and aio-pika,
which `task-history --help` and a usage error have no need of.
"""

from consumer.cli.entry import main
from consumer.cli.root import cli

__all__ = ["cli", "main"]
