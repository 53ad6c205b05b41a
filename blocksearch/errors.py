"""The one error type a user sees: a one-line message, exit code 2 from the CLI."""


class BlocksearchError(ValueError):
    """Bad input (file, key, value, teacher, study ...) with a message naming what is allowed."""
