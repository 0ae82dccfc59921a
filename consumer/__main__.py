"""`python -m consumer`: the same as the `task-history` command."""

import sys

from consumer.cli import main

sys.exit(main())
