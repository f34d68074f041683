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

While frozen, the young generation's threshold is raised to :data:`YOUNG_OBJECTS`
(CPython's default is 700 container allocations).  Almost everything a task allocates
(its job, events, receipt, log rows) dies within its round, so with a young generation
that holds a round's churn most of it is freed by reference counting before any
collection looks at it: on ``bench/fleet.py``'s 1,000 x 200 configuration the default
made about 3,100 young, 280 middle and 26 full collections (0.8-0.9 s of the clock,
``gc.callbacks`` timing).  The cost is memory: at most that many more container objects
alive between collections (a few MB).  The SimPy floors of the bench run under the same
setting.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: The young generation's threshold inside :func:`frozen_heap` (container allocations
#: less deallocations between young collections; never lowered below the caller's).
YOUNG_OBJECTS = 20_000


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze the heap alive now for the duration of the block and raise the young
    generation's threshold to :data:`YOUNG_OBJECTS` (nests: only the outermost block
    freezes, and restores both on the way out)."""
    if gc.get_freeze_count() > 0:  # an outer block (or the caller) froze it already
        yield
        return
    gc.collect()  # what is garbage now must not be frozen with the live heap
    gc.freeze()
    threshold = gc.get_threshold()
    if threshold[0] > 0:  # 0: the caller turned automatic collection off; left so
        gc.set_threshold(max(YOUNG_OBJECTS, threshold[0]), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
