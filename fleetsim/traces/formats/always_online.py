"""Every device online all the time (``kind: always_online``): the paper's closed-form
profile and the baseline against which churn is measured."""

from __future__ import annotations

from fleetsim.traces.base import AlwaysOnline
from fleetsim.traces.formats.base import TraceFormat


class AlwaysOnlineFormat(TraceFormat):
    """:class:`~fleetsim.traces.base.AlwaysOnline` for the fleet; no file."""

    name = "always_online"
    suffixes = ()

    def sniff(self, path):
        return False  # a model, not a file format

    def load(self, path, n_devices, seed, horizon_s):
        return AlwaysOnline(int(n_devices))
