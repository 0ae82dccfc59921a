"""`python -m consumer`: the same as the `task-history` command."""

from consumer.launcher import run

run()
