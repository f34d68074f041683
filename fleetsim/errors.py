"""Errors that the CLI reports as one clear line with exit code 2."""


class FleetsimInputError(ValueError):
    """Bad user input: message names file, key path and allowed values."""


class RunStopped(RuntimeError):
    """A run stopped on purpose (e.g. a numerical fault); outputs were written.

    The CLI reports it as one line with exit code 3."""
