"""Column contracts of a run directory's tables.

Everything that writes or reads ``steps.parquet``, ``events.parquet`` and
``devices.parquet`` goes through these names, so the recorder, the analysis API
and the tests agree.  Times are simulated seconds since the run start.
"""

from __future__ import annotations

# One row per server step attempt (a variance-gated repeat is its own row with
# the same ``step`` and a higher ``attempt``; ``committed`` says which one moved θ).
STEP_COLUMNS: dict[str, str] = {
    "sim_time_s": "float64",  # simulated time at commit
    "round": "int64",
    "step": "int64",  # server step index (batch index within the run)
    "attempt": "int64",  # 0 first try, 1.. variance repeats, -1 eval on eval_every_s grid
    "committed": "bool",  # whether θ was updated by this row
    "devices": "int64",  # devices that delivered work
    "perturbations": "int64",  # units used by this row's estimate (cumulative over repeats)
    "loss": "float64",  # mean training loss of the delivered work (NaN in systems-only)
    "accuracy": "float64",  # held-out accuracy when evaluated, else NaN
    "eval_loss": "float64",
    "variance": "float64",  # split-half variance statistic (NaN when not computed)
    # What the variance gate made of this row (see VARIANCE_GATE_OUTCOMES)
    "variance_gate": "string",
    "lr": "float64",
    "bytes_up": "int64",
    "bytes_down": "int64",
    "step_seconds": "float64",  # this attempt's simulated seconds: dispatch to commit/rollback
    # when the step's first attempt was dispatched: [step_start_s, sim_time_s of the committed
    # row] is the step's whole wall time, every attempt and rollback included
    "step_start_s": "float64",
    # Staleness of the work this row used (see protocol.commit.late_work: carry): units
    # computed for an earlier step, the largest staleness (steps), and the units-weighted
    # mean staleness over all units used (0 when all work was fresh).
    "stale_units": "int64",
    "staleness_max": "int64",
    "staleness_mean": "float64",
}

# ``variance_gate`` values (protocol.variance): off (gate disabled, or a protocol without
# one); passed (statistic <= threshold); rolled_back (statistic > threshold, repeat asked);
# over_threshold (> threshold at max_repeats: committed anyway); too_few (fewer than two
# perturbations, statistic undefined: rolled back while repeats are left, else committed);
# not_computed (no statistic although >= 2 perturbations: systems-only numerics).
VARIANCE_GATE_OUTCOMES = (
    "off", "passed", "rolled_back", "over_threshold", "too_few", "not_computed",
)

# Optional step columns: written only when some row has a value (a run evaluated on a
# validation split, data.validation_fraction > 0); readers treat a missing one as all NaN.
OPTIONAL_STEP_COLUMNS: dict[str, str] = {
    "val_accuracy": "float64",  # validation-split accuracy when evaluated (for tuning)
    "val_loss": "float64",
}

# One row per simulated event.  ``seq`` breaks ties at equal time.
EVENT_COLUMNS: dict[str, str] = {
    "seq": "int64",
    "time_s": "float64",
    "device_id": "int64",  # -1 for server events
    "kind": "string",  # see EVENT_KINDS
    "step": "int64",  # -1 when not tied to a step
    "payload_bytes": "int64",
    "duration_s": "float64",
    "units": "int64",
    "detail": "string",
    # For ``receipt`` and stale ``dropped`` events: the step the work was used at minus the
    # step it was computed for; -1 for every other event.
    "staleness": "int64",
}

EVENT_KINDS = (
    "online",
    "offline",
    "assign",
    "refuse_memory",
    "refuse_offline",
    "refuse_backend",  # no usable compute backend on the phone for the task's kind
    "download",  # finished download; duration_s is its length
    "compute",  # finished compute span; units in it
    "upload",  # finished upload
    "interrupted",  # availability ended during a phase; detail names the phase
    "resumed",
    "lost_work",  # units lost to an interruption
    "late",  # work arrived after commit
    "receipt",  # delivered work turned into numerics work; step = the step it was computed for
    "dropped",  # work dropped by the server
    "cancelled",
    "step_start",
    "step_commit",
    "step_rollback",  # variance gate rejected the step
    "variance_unchecked",  # the gate could not be evaluated; the step committed ungated
    "round_start",
    "round_end",
    "evaluate",  # detail: accuracy=… loss=… (nan for a non-finite model: no accuracy)
    "numerical_fault",
    "unfinished",  # a stop rule fired while the task was out; detail: phase=… assigned=…
    "run_stopped",  # server: the run ended; detail: status=… stopped_by=…
)

DEVICE_COLUMNS: dict[str, str] = {
    "device_id": "int64",
    "phone_model": "string",
    "backend": "string",
    "busy_s": "float64",  # downloading + computing + uploading
    "compute_s": "float64",
    "network_s": "float64",
    "idle_s": "float64",  # available but not working
    "offline_s": "float64",
    "interrupted_s": "float64",  # time a task was suspended by unavailability
    "wasted_s": "float64",  # busy time whose work was never used
    "tasks": "int64",
    "perturbations": "int64",  # units delivered
    "units_lost": "int64",
    "bytes_up": "int64",
    "bytes_down": "int64",
    "energy_j": "float64",
}
