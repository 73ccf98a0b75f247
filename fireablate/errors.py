"""The errors fireablate reports to a user as one line.

Anything raised as a ``FireablateError`` is the user's to fix (a value out of range, a missing
file, a damaged ledger); the CLI prints its message on one line and exits with ``exit_code``.
Any other exception is a bug in fireablate and keeps its traceback.
"""

from __future__ import annotations


class FireablateError(Exception):
    """A problem with the user's input or files, explained in one line."""

    exit_code = 1


class UsageError(FireablateError):
    """A bad option value: the command line itself is wrong (exit 2, like click's usage errors)."""

    exit_code = 2


class SpecError(UsageError):
    """A network description that cannot be built (zero channels, SR out of range, ...)."""


class DataError(FireablateError):
    """A dataset that is missing, empty or malformed."""


class LedgerError(FireablateError):
    """A run ledger that cannot be read or written."""
