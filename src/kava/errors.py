"""User-facing errors.

A `KavaError` is a mistake the user can fix (a bad config, a missing file, a dataset
that cannot be loaded). The CLI prints its message on one line and exits with code 2,
without a traceback. Everything else is a bug and keeps its traceback.
"""


class KavaError(Exception):
    """An error caused by user input; its message says what is wrong and how to fix it."""
