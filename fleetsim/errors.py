"""Errors that the CLI reports as one clear line with exit code 2."""


class FleetsimInputError(ValueError):
    """Bad user input: message names file, key path and allowed values."""
