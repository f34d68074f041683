"""Errors that the CLI reports as one clear line with exit code 2."""

from __future__ import annotations

from collections.abc import Iterable


class FleetsimInputError(ValueError):
    """Bad user input: message names file, key path and allowed values."""


class InfeasibleRunError(FleetsimInputError):
    """A valid scenario whose fleet can never take its work (e.g. no phone has the RAM its
    job needs): refused before the clock starts, exit code 2 like any input error.  The
    fleet's facts do not change during a run, so the run would reach nothing at any
    horizon; a sweep records it as the outcome ``infeasible`` (not retried by default)."""


class RunStopped(RuntimeError):
    """A run stopped on purpose (e.g. a numerical fault); outputs were written.

    The CLI reports it as one line with exit code 3."""


def did_you_mean(word: str, allowed: Iterable[str]) -> str:
    """``" (did you mean 'lr'?)"`` naming the allowed word closest to ``word``
    (:func:`difflib.get_close_matches`, its default similarity cutoff 0.6), or ``""``
    when none is close: the hint an unknown key or name gets in its one-line error."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(a) for a in allowed], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
