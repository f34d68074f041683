"""Garbage collection while the clock runs: the long-lived heap is frozen.

A simulation allocates and drops a few container objects per event (SimPy events,
processes, jobs, receipts) while the interpreter holds a large, unchanging heap built
before the clock starts: imported modules (pandas, scipy, pydantic, torch when the
numerics run), the scenario, the trace tables.  CPython's full (generation-2)
collections traverse that whole heap each time, and the allocation churn triggers one
every few hundred thousand allocations: on ``bench/fleet.py``'s 1,000,000-phone,
1,000 x 200 configuration they took about 3 s of a 15 s run (38 collections over
~110,000 import-time objects; ``gc.callbacks`` timing, issue 25).

:func:`frozen_heap` moves everything alive when the clock starts to the permanent
generation (:func:`gc.freeze`, CPython >= 3.7, the documented remedy for a long-lived
heap), so collections during the run traverse only what the run allocated; it unfreezes
on the way out.  Reference counting still frees frozen objects that are dropped;
only reference *cycles* among them wait until the unfreeze.  Collections do not change
what a simulation computes (nothing in fleetsim depends on finalisation order), so the
outputs are identical with and without it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the heap alive now for the duration of the block (nests: only the outermost
    block freezes and unfreezes)."""
    if gc.get_freeze_count() > 0:  # an outer block (or the caller) froze it already
        yield
        return
    gc.collect()  # what is garbage now must not be frozen with the live heap
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
