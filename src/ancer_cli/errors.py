"""One exception family. The CLI turns every :class:`AncerError` into one line and exit code 1."""

from __future__ import annotations


class AncerError(Exception):
    """A domain error the user can fix: bad file, bad data, bad option combination.

    The message is one line that says what is wrong, where, and what to do.
    """


class DataError(AncerError):
    """A dataset is missing, malformed, or not in the expected layout."""


class ModelError(AncerError):
    """A model file is missing, corrupt, unsafe, or does not match the data."""


class ThetaError(AncerError):
    """A thetas folder, manifest or theta file is missing, malformed or inconsistent."""


class ResultsError(AncerError):
    """A results file is missing or malformed."""


class OutputError(AncerError):
    """An output would be overwritten, cannot be written, or cannot be resumed."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``error``'s message (at most ``limit`` characters), or its
    type name when the message is empty: how a foreign exception enters a one-line message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(error).__name__
