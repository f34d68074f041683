"""The SimPy side: device lifecycles, lazy fleet, transfers, energy."""

from fleetsim.fleet.config import EnergyConfig, FleetConfig, ThermalConfig
from fleetsim.fleet.fleet import Fleet
from fleetsim.fleet.work import ReceiptStatus, Task, TaskKind, WorkReceipt

__all__ = [
    "EnergyConfig",
    "Fleet",
    "FleetConfig",
    "ReceiptStatus",
    "Task",
    "TaskKind",
    "ThermalConfig",
    "WorkReceipt",
]
