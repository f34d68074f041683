"""Per-device accounting of a run: busy, wasted, bytes, energy.

The device lifecycle (:mod:`fleetsim.fleet.lifecycle`) accumulates each task's
figures on the task itself and hands the finished task to :meth:`DeviceLedger.record`;
the ledger adds them to columns over the whole fleet (a million devices cost a few
arrays).  Rows are buffered and added in bulk, :data:`FOLD_ROWS` at a time, as the run
goes: numpy scalar updates per task cost more than the rest of the bookkeeping, while
keeping every finished task until the end made memory grow with each task (issue 22:
~200 B a task, without bound over a long run).  Each device's figures are added in the
order they happened (finished tasks and :meth:`DeviceLedger.add_wasted` alike), so the
totals do not depend on when the buffer is folded.

Units: seconds of simulated time, bytes, joules.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from fleetsim.workload import BACKENDS

#: Index of each compute backend in :data:`~fleetsim.workload.BACKENDS`.
BACKEND_INDEX = {name: i for i, name in enumerate(BACKENDS)}

_FLOAT_COLUMNS = ("busy_s", "compute_s", "network_s", "interrupted_s", "wasted_s", "compute_j",
                  "radio_j")
_INT_COLUMNS = ("units_delivered", "units_lost", "bytes_up", "bytes_down")
_WASTED = _FLOAT_COLUMNS.index("wasted_s")  # its place in a buffered row
_WIDTH = len(_FLOAT_COLUMNS) + len(_INT_COLUMNS)
_job_figures = operator.attrgetter(*_FLOAT_COLUMNS, *_INT_COLUMNS)  # one C call per task

#: finished tasks buffered before they are added to the columns: the buffer's memory stays
#: below ~0.5 MiB while one numpy pass per 1,024 tasks keeps the per-task cost flat.
FOLD_ROWS = 1024


def _add_rows(table: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> None:
    """``table[ids[r]] += rows[r]`` for each row ``r`` in turn (``ids`` may repeat: each
    cell gets its additions in row order), through the flat view: ``np.add.at`` on 1-D
    indices and values takes numpy's fast path (about 4x the unique-and-mask split into a
    plain indexed add and a 2-D ``np.add.at`` it replaces, issue 25)."""
    width = table.shape[1]
    assert table.flags.c_contiguous  # so that the flat reshape is a view, not a copy
    cells = (ids[:, None] * width + np.arange(width)).reshape(-1)
    np.add.at(table.reshape(-1), cells, rows.reshape(-1))


class DeviceLedger:
    """Columns of per-device totals, indexed by device id (shape ``(n,)`` each)."""

    def __init__(self, n: int) -> None:
        self._tasks = np.zeros(n, dtype=np.int64)
        # Devices given a task since the counts were last read: one list append per task
        # instead of a numpy scalar update (issue 25's profile); folded on reading.
        self.dispatched: list[int] = []
        self.last_backend = np.full(n, -1, dtype=np.int8)  # index into BACKENDS, -1: none
        # One row per device, one column per figure: a finished task's figures are added
        # to its device's row in one indexed operation.
        self._float = np.zeros((n, len(_FLOAT_COLUMNS)))
        self._int = np.zeros((n, len(_INT_COLUMNS)), dtype=np.int64)
        # Finished tasks not yet added to the columns: their devices, and their figures
        # one after another (_WIDTH a task) in a flat list of numbers: a tuple per task
        # would be a container the garbage collector examines (issue 25).
        self._row_ids: list[int] = []
        self._rows: list[float | int] = []

    @property
    def tasks(self) -> np.ndarray:
        """Tasks dispatched to each device (shape ``(n,)``)."""
        if self.dispatched:
            np.add.at(self._tasks, np.array(self.dispatched, dtype=np.int64), 1)
            self.dispatched = []
        return self._tasks

    # ------------------------------------------------------------------ writing
    def record(self, job: Any) -> None:
        """Add one finished task's figures (a :class:`~fleetsim.fleet.device_state.Job`)."""
        self._row_ids.append(job.task.device_id)
        self._rows.extend(_job_figures(job))
        if len(self._row_ids) >= FOLD_ROWS:
            self._apply()

    def add_wasted(self, device_id: int, seconds: float) -> None:
        """Busy time of delivered work that the server did not use (added in turn with the
        finished tasks, module docstring)."""
        row = [0.0] * _WIDTH
        row[_WASTED] = seconds
        self._row_ids.append(device_id)
        self._rows.extend(row)
        if len(self._row_ids) >= FOLD_ROWS:
            self._apply()

    @property
    def buffered_rows(self) -> int:
        """Finished tasks (and unused work) recorded but not yet added to the columns."""
        return len(self._row_ids)

    def _apply(self) -> None:
        if not self._row_ids:
            return
        # Every figure through float64 (ints are counts and bytes, exact below 2**53).
        rows = np.array(self._rows, dtype=np.float64).reshape(len(self._row_ids), _WIDTH)
        ids = np.array(self._row_ids, dtype=np.int64)
        self._rows, self._row_ids = [], []
        _add_rows(self._float, ids, rows[:, :len(_FLOAT_COLUMNS)])
        _add_rows(self._int, ids, rows[:, len(_FLOAT_COLUMNS):].astype(np.int64))

    # ------------------------------------------------------------------ reading
    def column(self, name: str) -> np.ndarray:
        """One column over all devices (after adding every recorded task), shape ``(n,)``:
        a contiguous copy (a sum over it adds in the same order as over any 1-D array)."""
        self._apply()
        if name in _FLOAT_COLUMNS:
            return np.ascontiguousarray(self._float[:, _FLOAT_COLUMNS.index(name)])
        return np.ascontiguousarray(self._int[:, _INT_COLUMNS.index(name)])

    def energy_totals(self) -> dict[str, float]:
        """Run totals in joules: compute, radio and their sum."""
        compute = float(self.column("compute_j").sum())
        radio = float(self.column("radio_j").sum())
        return {"compute_j": compute, "radio_j": radio, "total_j": compute + radio}

    def run_totals(self) -> dict[str, float]:
        """Run totals over all devices (seconds, counts, bytes, joules)."""
        return {
            "busy_s": float(self.column("busy_s").sum()),
            "compute_s": float(self.column("compute_s").sum()),
            "network_s": float(self.column("network_s").sum()),
            "interrupted_s": float(self.column("interrupted_s").sum()),
            "wasted_s": float(self.column("wasted_s").sum()),
            "tasks": int(self.tasks.sum()),
            "perturbations": int(self.column("units_delivered").sum()),
            "units_lost": int(self.column("units_lost").sum()),
            "bytes_up": int(self.column("bytes_up").sum()),
            "bytes_down": int(self.column("bytes_down").sum()),
            **self.energy_totals(),
        }
