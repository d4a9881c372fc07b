"""Exit codes of the command line, and the exceptions that choose them."""

from __future__ import annotations

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or input: exit 2 with the message."""


class CommandFailed(Exception):
    """The command ran but did not succeed: exit 1 with the message."""
