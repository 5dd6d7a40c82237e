"""The one exception type that reaches users as a sentence instead of a traceback."""


class VqkitError(Exception):
    """A user-facing failure: bad input, damaged file, unusable run folder.

    The message is one complete sentence saying what is wrong and, where it helps, what to do.
    The CLI prints it and exits with status 2; library callers can catch it.
    """
