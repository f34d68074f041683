"""A fleet larger than its interval trace: how often each trace device is replayed, and
``traces.availability.replay: resample_days``.

File traces (intervals, fedscale, flash, flash_windows) map fleet device ``i`` to trace
device ``i mod m`` (:mod:`fleetsim.traces.formats.common`).  With ``n > m`` fleet devices
each trace device is replayed ``n // m`` or ``n // m + 1`` times (the first ``n mod m``
trace devices once more): its copies go online and offline at the same instants, so churn
is correlated across them — a cohort of copies loses all its members at once.  The run
says so (:func:`replay_note`: one stderr line and the availability label, which
``fleetsim validate`` prints and ``summary.json`` keeps as ``availability_label``).

``replay: resample_days`` (after the ``empirical`` model,
:mod:`fleetsim.traces.formats.empirical`): devices ``0..m-1`` are the trace devices as they
are; each further device ``i`` replays trace device ``u_i`` drawn uniformly from ``0..m-1``
(stream ``("availability", "replay", "trace_device")``) shifted later by ``d_i`` whole days,
``d_i`` uniform in ``0..D-1`` (stream ``("availability", "replay", "day_shift")``), keeping
every window's local time of day.  ``D``: the whole days of the trace's period (a periodic
trace) or of its span rounded up to whole days (a trace that does not repeat); a window
shifted past the period / span wraps around to its start.  Device ``i``'s draws do not
depend on the fleet size.
"""

from __future__ import annotations

import math

import numpy as np

from fleetsim.errors import FleetsimInputError
from fleetsim.rng import stream
from fleetsim.traces.base import AvailabilityTrace, IntervalAvailability
from fleetsim.traces.formats.common import DAY_S, periodic_windows

REPLAY_MODES = ("repeat", "resample_days")


def replay_counts(n_devices: int, m: int) -> np.ndarray:
    """Fleet devices per trace device under ``i mod m``, shape (m,): ``n // m`` each,
    plus one for the first ``n mod m``."""
    n, m = int(n_devices), int(m)
    return n // m + (np.arange(m) < n % m).astype(np.int64)


def replay_note(n_devices: int, m: int, mode: str = "repeat", used=None) -> str:
    """What the run says when ``n_devices > m``: the replay counts (``repeat``) or how
    many fleet devices use each trace device (``resample_days``, ``used``: shape (m,))."""
    n = int(n_devices)
    if mode == "resample_days":
        u = np.asarray(used)
        return (f"fleet of {n} devices on {m} trace devices: {n - m} further devices replay "
                f"a random trace device shifted by whole days (replay: resample_days); "
                f"trace devices used {int(u.min())} to {int(u.max())} times")
    counts = replay_counts(n, m)
    lo, hi = int(counts.min()), int(counts.max())
    if lo == hi:
        each = f"each trace device replayed {lo} times"
    else:
        each = f"each trace device replayed {lo} or {hi} times ({n % m} of them {hi} times)"
    return (f"fleet of {n} devices on {m} trace devices: {each}; copies churn together "
            "(correlated churn; replay: resample_days shifts them by whole days)")


def resample_days(trace: IntervalAvailability, m: int, seed: int) -> IntervalAvailability:
    """The module's ``resample_days`` for a trace whose device ``i`` replays trace device
    ``i mod m`` (devices ``0..m-1`` hold the trace devices).  The result has the same
    number of devices; ``.replay_source`` and ``.replay_day_shift`` record each device's
    trace device and shift in days."""
    n = trace.num_devices
    ids = np.arange(n)
    src = stream(seed, "availability", "replay", "trace_device").integers(m, size=n)
    if trace.period_s:
        cycle = float(trace.period_s)
        days = max(1, int(cycle // DAY_S))
    else:
        last = float(trace.ends.max()) if len(trace.ends) else DAY_S
        days = max(1, int(math.ceil(last / DAY_S)))
        cycle = days * DAY_S
    shift = stream(seed, "availability", "replay", "day_shift").integers(days, size=n)
    src = np.where(ids < m, ids, src)
    shift = np.where(ids < m, 0, shift)
    counts = np.diff(trace.offsets)[src]
    first = trace.offsets[src]
    owner = np.repeat(ids, counts)
    ends_at = np.cumsum(counts)
    pos = np.repeat(first - (ends_at - counts), counts) + np.arange(int(counts.sum()))
    offset = shift[owner] * DAY_S
    out = periodic_windows(owner, trace.starts[pos] + offset, trace.ends[pos] + offset, n,
                           cycle, trace.label)
    if not trace.period_s:
        out.period_s = None  # shifted inside the span; the trace still ends there
    out.replay_source = src
    out.replay_day_shift = shift
    return out


def apply_replay(
    trace: AvailabilityTrace, kind: str, mode: str, seed: int
) -> tuple[AvailabilityTrace, str | None]:
    """(trace, note): the replay note for a fleet larger than its trace, and the
    ``resample_days`` trace when asked.  Raises FleetsimInputError for ``resample_days``
    on a kind that does not replay trace devices."""
    m = getattr(trace, "trace_devices", None)
    if mode == "resample_days" and m is None:
        raise FleetsimInputError(
            f"traces.availability.replay: 'resample_days' applies to traces replayed device "
            f"by device (kinds intervals, fedscale, flash, flash_windows), not kind {kind!r} "
            "(allowed: repeat)")
    n = trace.num_devices
    if m is None or n <= int(m):
        return trace, None
    m = int(m)
    if mode == "resample_days" and isinstance(trace, IntervalAvailability):
        trace = resample_days(trace, m, seed)
        used = np.bincount(trace.replay_source, minlength=m)
        note = replay_note(n, m, mode, used)
    else:
        note = replay_note(n, m)
        trace.replay_counts = replay_counts(n, m)
    trace.label = f"{trace.label}; {note}" if trace.label else note
    return trace, note
