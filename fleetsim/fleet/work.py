"""What the server asks of a device, and what comes back: plain data, no tensors.

A :class:`Task` travels from a protocol to one device process on the SimPy clock;
a :class:`WorkReceipt` travels back.  The protocol hands receipts to the numerics
engine at commit time, which computes exactly the delivered units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from fleetsim.workload import TaskKind

__all__ = ["ReceiptStatus", "Task", "TaskKind", "WorkReceipt"]


class ReceiptStatus(str, Enum):
    DELIVERED = "delivered"  # all assigned units uploaded
    PARTIAL = "partial"  # some units uploaded (interrupted / cut by the deadline)
    INTERRUPTED = "interrupted"  # nothing delivered: the device went offline
    REFUSED = "refused"  # the device cannot hold the job in memory / was offline
    CANCELLED = "cancelled"  # the server withdrew the task (commit happened)
    EXPIRED = "expired"  # the task's deadline passed before any unit was computed


@dataclass(slots=True)
class Task:
    """One unit-divisible piece of work for one device in one server step.

    ``units`` perturbations (or local steps) of ``inferences_per_unit`` forwards
    each (central differences on a phone: 2) at ``batch`` × ``seq_len`` tokens, after
    ``setup_inferences`` forwards charged to the first unit (one-sided: the base loss).
    ``upload_bytes(units_done)`` is set by the protocol (dense vector, seeds +
    scalars, adapter weights); ``download_bytes`` likewise.
    """

    step: int
    device_id: int
    units: int
    kind: TaskKind = TaskKind.FORWARD_GRADIENT
    download_bytes: int = 0
    upload_bytes: Callable[[int], int] = field(default=lambda units: 0)
    inferences_per_unit: float = 2.0
    # Forwards run once before the first unit: the base loss L(θ) that one-sided
    # differences subtract from every perturbed loss (protocol.phone_estimator: onesided).
    setup_inferences: float = 0.0
    memory_bytes: int = 0
    deadline_s: Optional[float] = None  # absolute simulated time; None = no deadline
    # Free-form tags the protocol wants back on the receipt (batch index, attempt, ...).
    tags: dict = field(default_factory=dict)
    # Under "lose" interruption semantics: whether units finished before an interruption
    # are uploaded when the device is available again (True) or lost with the task (False).
    deliver_partial: bool = True


@dataclass(slots=True)
class WorkReceipt:
    device_id: int
    step: int
    status: ReceiptStatus
    units_assigned: int
    units_done: int  # computed on the device
    units_delivered: int  # uploaded and received by the server
    t_assigned: float
    t_finished: float
    bytes_down: int = 0
    bytes_up: int = 0
    backend: str = ""
    tags: dict = field(default_factory=dict)
    # Accounting of this task on the device (simulated seconds, joules).
    busy_s: float = 0.0  # downloading + computing + uploading
    compute_s: float = 0.0
    network_s: float = 0.0
    interrupted_s: float = 0.0  # suspended by unavailability while holding the task
    wasted_s: float = 0.0  # busy time whose work was not delivered
    units_lost: int = 0  # units computed (or in progress) but never delivered
    energy_j: float = 0.0
