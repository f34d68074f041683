"""Shared case long_run_memory_grows_per_task (issue 22): with the event log off, the run's
bookkeeping no longer grows with every device task.  Finished tasks are folded into the
per-device columns as the run goes (the ledger's buffer stays under FOLD_ROWS rows), the
server forgets perturbation counters of steps that can no longer receive work, and the
devices table is byte-identical to the one the ledger wrote when it kept every task to the
end."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

import fleetsim.fleet.device_state as fleet_module  # where the ledger is built
import fleetsim.fleet.ledger as ledger_module
import fleetsim.runner as runner_module
from fleetsim.callbacks import RunCallback
from fleetsim.fleet.ledger import _FLOAT_COLUMNS, _INT_COLUMNS, DeviceLedger
from fleetsim.runner import run_scenario

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["numerics.engine=none", "run.targets=[]", "output.convergence_png=false",
          "run.progress=false"]
# Churn, carried work and a staleness cutoff: devices are charged both wasted time inside
# their tasks and delivered work the server did not use (add_wasted), in turns.
CHURN = ["fleet.size=300", "protocol.devices_per_step=40", "protocol.rounds=30",
         "protocol.max_steps=60", "protocol.commit.late_work=carry",
         "protocol.commit.max_staleness=3", "protocol.commit.staleness_weighting=cutoff",
         "protocol.commit.staleness_cutoff=0", "protocol.commit.mode=quorum",
         "protocol.commit.quorum_fraction=0.6", "run.start_hour=15"]


class BufferToEndLedger(DeviceLedger):
    """The ledger as it was before: every finished task kept until a column is read, unused
    work added to ``wasted_s`` at once (the reference for the byte-identical check)."""

    def record(self, job) -> None:
        self._row_ids.append(job.task.device_id)
        self._rows.extend([getattr(job, n) for n in _FLOAT_COLUMNS]
                          + [getattr(job, n) for n in _INT_COLUMNS])

    def add_wasted(self, device_id: int, seconds: float) -> None:
        self.calls = getattr(self, "calls", 0) + 1
        self._float[device_id, _FLOAT_COLUMNS.index("wasted_s")] += seconds


def _devices_bytes(tmp_path: Path, name: str) -> bytes:
    out = run_scenario(ROOT / "scenarios" / "allocation_under_churn.yaml", COMMON + CHURN,
                       run_dir=tmp_path / name)
    return (out / "devices.parquet").read_bytes()


def test_devices_table_byte_identical_to_buffering_every_task(tmp_path, monkeypatch):
    made: list[BufferToEndLedger] = []

    def reference(n):
        made.append(BufferToEndLedger(n))
        return made[-1]

    monkeypatch.setattr(fleet_module, "DeviceLedger", reference)
    before = _devices_bytes(tmp_path, "before")
    assert getattr(made[0], "calls", 0) > 0  # the scenario does charge unused work
    monkeypatch.setattr(fleet_module, "DeviceLedger", DeviceLedger)
    assert _devices_bytes(tmp_path, "default") == before
    # folded every 3 rows: the same additions in the same order per device
    monkeypatch.setattr(ledger_module, "FOLD_ROWS", 3)
    assert _devices_bytes(tmp_path, "every3") == before


def test_ledger_folds_as_it_goes():
    ledger = DeviceLedger(4)

    class Job:
        def __init__(self, d, busy):
            self.task = type("T", (), {"device_id": d})()
            for n in _FLOAT_COLUMNS + _INT_COLUMNS:
                setattr(self, n, 0)
            self.busy_s, self.bytes_up, self.wasted_s = busy, 10, 0.5

    for i in range(3 * ledger_module.FOLD_ROWS + 5):
        ledger.record(Job(i % 4, 0.25))
        ledger.add_wasted(i % 4, 0.125)
        assert ledger.buffered_rows < ledger_module.FOLD_ROWS
    n = 3 * ledger_module.FOLD_ROWS + 5
    per = np.bincount(np.arange(n) % 4, minlength=4)
    np.testing.assert_array_equal(ledger.column("busy_s"), per * 0.25)
    np.testing.assert_array_equal(ledger.column("wasted_s"), per * 0.625)
    np.testing.assert_array_equal(ledger.column("bytes_up"), per * 10)
    assert ledger.buffered_rows == 0


class Probe(RunCallback):
    """After each committed step: buffered ledger rows, retained perturbation counters and
    the traced Python heap."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int, int, int]] = []

    def after_central_iteration(self, run, row) -> None:
        if not row["committed"]:
            return
        server = run.server
        counters = sum(len(v) for v in server._next_k.values())
        self.rows.append((int(row["step"]), server.fleet.ledger.buffered_rows,
                          len(server._next_k), counters, tracemalloc.get_traced_memory()[0]))


def test_case_long_run_memory_levels_off(tmp_path, monkeypatch):
    probe = Probe()
    original = runner_module.run_callbacks
    monkeypatch.setattr(runner_module, "run_callbacks",
                        lambda sc, progress: original(sc, progress) + [probe])
    overrides = ["fleet.size=1500", "protocol.devices_per_step=300", "protocol.rounds=70",
                 "output.events=false", "output.convergence_png=false", "run.progress=false",
                 "protocol.commit.late_work=carry", "protocol.commit.max_staleness=2"]
    tracemalloc.start()
    try:
        run_scenario(ROOT / "scenarios" / "systems_only_1m.yaml", overrides,
                     run_dir=tmp_path / "run")
    finally:
        tracemalloc.stop()
    rows = probe.rows
    assert len(rows) >= 60
    # 300 tasks a step: every 1,500 devices used by step 5; ~18,000 tasks over the run
    assert max(r[1] for r in rows) < ledger_module.FOLD_ROWS
    assert max(r[2] for r in rows) <= 2 + 1  # steps step-2 .. step
    assert max(r[3] for r in rows) <= 3 * 300
    # The heap's low point over steps 15-29 and over the last 15 steps (the ledger's buffer
    # empties several times in each: FOLD_ROWS rows are ~3 steps of tasks here).
    early = min(r[4] for r in rows if 15 <= r[0] < 30)
    last = rows[-1][0]
    late = min(r[4] for r in rows if r[0] > last - 15)
    tasks_between = (last - 15 - 22) * 300
    # Before: ~200 B a task (ledger rows kept to the end, (step, device) counters), ~2.7 MB
    # here.  What still grows per step is the steps table's rows and the numerics journal
    # kept for exact resume (its systems-only estimates list their devices: ~25 B a task).
    assert late - early < 50 * tasks_between, (late - early, tasks_between)
