"""Device facts: catalogue, latency and memory models, population, availability, network.

Entry point for the rest of fleetsim: :func:`build_devices` (device facts and availability;
the SimPy ``Fleet`` is built from them in :mod:`fleetsim.fleet`).
"""

from fleetsim.traces.base import AlwaysOnline, AvailabilityTrace, DeviceTable, IntervalAvailability
from fleetsim.traces.config import TracesConfig, paper_profile_config
from fleetsim.traces.fleet_builder import build_devices

__all__ = [
    "AlwaysOnline",
    "AvailabilityTrace",
    "DeviceTable",
    "IntervalAvailability",
    "TracesConfig",
    "build_devices",
    "paper_profile_config",
]
