"""The documented diurnal model (``kind: diurnal_model``, the default).

* :class:`DiurnalAvailability` — closed form, one window per device per day
  (``[offset + k*P, offset + k*P + duration)``), vectorised, O(n) memory.
* :func:`diurnal_model` — draws per-device offset/duration calibrated on the
  FLASH 1,000 users' charging and screen-on totals (see
  ``device_traces/availability/PROVENANCE.md``).  It is a model, and its label
  says so in every output.
"""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pandas as pd

from fleetsim.rng import stream
from fleetsim.traces.base import AvailabilityTrace
from fleetsim.traces.formats.base import TraceFormat
from fleetsim.traces.formats.common import (
    DAY_S,
)
from fleetsim.traces.tables import (
    AVAILABILITY_CALIBRATION,
    AVAILABILITY_QUANTILES,
)


class DiurnalAvailability(AvailabilityTrace):
    """One window per device per period: ``[offset + k*P, offset + k*P + duration)``.

    ``duration <= 0``: never online; ``duration >= P``: always online.  Window
    times are always computed as ``offset + k*P`` so a time returned by
    :meth:`next_start` tests online and one returned by :meth:`window_end` tests
    offline (no floating-point drift between the methods).
    """

    def __init__(
        self,
        offset_s: np.ndarray,
        duration_s: np.ndarray,
        period_s: float = DAY_S,
        label: str = "",
    ) -> None:
        self.offset_s = np.mod(np.asarray(offset_s, dtype=np.float64), period_s)
        self.duration_s = np.asarray(duration_s, dtype=np.float64)
        self.period_s = float(period_s)
        self.label = label

    @property
    def num_devices(self) -> int:
        return int(self.offset_s.shape[0])

    def _window(self, ids: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(offset, k, duration) of the latest window starting at or before ``t``:
        that window starts at ``offset + k*P`` (always computed in this form)."""
        a = self.offset_s[ids]
        p = self.period_s
        k = np.floor((t - a) / p)
        k = np.where(a + (k + 1.0) * p <= t, k + 1.0, k)
        k = np.where(a + k * p > t, k - 1.0, k)
        return a, k, self.duration_s[ids]

    def _online(self, a, k, dur, t: float) -> np.ndarray:
        return (dur >= self.period_s) | ((dur > 0) & (t < a + k * self.period_s + dur))

    def is_available(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        ids = np.asarray(device_ids, dtype=np.int64)
        t = float(t)
        a, k, dur = self._window(ids, t)
        return self._online(a, k, dur, t)

    def window_end(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        ids = np.asarray(device_ids, dtype=np.int64)
        t = float(t)
        a, k, dur = self._window(ids, t)
        online = self._online(a, k, dur, t)
        end = np.where(online, a + k * self.period_s + dur, t)
        return np.where(dur >= self.period_s, np.inf, end)

    def next_start(self, device_ids: np.ndarray, t: float) -> np.ndarray:
        ids = np.asarray(device_ids, dtype=np.int64)
        t = float(t)
        a, k, dur = self._window(ids, t)
        online = self._online(a, k, dur, t)
        nxt = np.where(online, t, a + (k + 1.0) * self.period_s)
        return np.where(dur <= 0, np.inf, nxt)

    def online_seconds(self, device_ids: np.ndarray, end_time: float) -> np.ndarray:
        """Online seconds in ``[0, end_time)`` in closed form (the fleet's accounting hook).

        With G(t) = k·d + min(t − (a + kP), d), k = floor((t − a)/P), the online time
        accumulated up to t counted from window 0, the answer is G(end) − G(0)."""
        ids = np.asarray(device_ids, dtype=np.int64)
        a = self.offset_s[ids]
        p = self.period_s
        d = np.clip(self.duration_s[ids], 0.0, p)

        def cumulative(t: float) -> np.ndarray:
            k = np.floor((t - a) / p)
            return k * d + np.minimum(t - (a + k * p), d)

        return np.maximum(cumulative(float(end_time)) - cumulative(0.0), 0.0)

    def online_share_by_hour(self, device_ids: np.ndarray, days: int = 1) -> np.ndarray:
        """Share of devices online at each hour of the day (for ``traces inspect``)."""
        return np.array(
            [self.is_available(device_ids, h * 3600.0 + 1800.0).mean() for h in range(24)]
        )


def _calibration() -> dict:
    with open(AVAILABILITY_CALIBRATION, encoding="utf-8") as fh:
        return json.load(fh)


def diurnal_model(
    n_devices: int,
    seed: int,
    trace_span_days: float = 7.0,
    night_share: float = 0.7,
    night_start_hour: float = 23.0,
    night_start_sd_hours: float = 1.5,
    wifi_share: float = 1.0,
) -> DiurnalAvailability:
    """Per-device daily idle-charging window, calibrated on FLASH's 1,000 users.

    Per device: a (charging total, screen-on total) pair is drawn from the FLASH
    per-user marginals (shipped quantile tables) joined by a Gaussian copula with
    the correlation measured on the same users; over ``trace_span_days`` this
    gives daily charging seconds ``c`` and screen-on share ``s``.  The device is
    available (charging, screen off, on Wi-Fi) for ``c * (1 - s) * wifi_share``
    seconds a day, in one window starting around ``night_start_hour`` (share
    ``night_share`` of devices) or at a uniform hour.  Draws come from the named
    streams ``("availability", <variable>)``: device ``i``'s values do not depend
    on the fleet size.
    """
    n = int(n_devices)
    table = pd.read_csv(AVAILABILITY_QUANTILES)
    rho = float(_calibration()["copula_rho"])
    q = np.clip(table["quantile"].to_numpy(), 1e-4, 1 - 1e-4)
    zgrid = np.array([NormalDist().inv_cdf(float(x)) for x in q])
    z1 = stream(seed, "availability", "charging").standard_normal(n)
    e = stream(seed, "availability", "screen").standard_normal(n)
    z2 = rho * z1 + math.sqrt(max(1.0 - rho * rho, 0.0)) * e
    charge = np.interp(z1, zgrid, table["charging_s_total"].to_numpy())
    screen = np.interp(z2, zgrid, table["screen_on_s_total"].to_numpy())
    span = trace_span_days * DAY_S
    charge_per_day = charge / trace_span_days
    screen_share = np.clip(screen / span, 0.0, 1.0)
    duration = np.clip(charge_per_day * (1.0 - screen_share) * wifi_share, 0.0, DAY_S)
    night = stream(seed, "availability", "night").random(n) < night_share
    night_hour = stream(seed, "availability", "night_hour").normal(
        night_start_hour, night_start_sd_hours, n
    )
    day_hour = stream(seed, "availability", "day_hour").uniform(0.0, 24.0, n)
    hour = np.mod(np.where(night, night_hour, day_hour), 24.0)
    label = (
        "model: diurnal idle-charging windows calibrated on FLASH 1000 users' charging and "
        f"screen-on totals (span {trace_span_days:g} d assumed, night share {night_share:g}, "
        f"Wi-Fi share {wifi_share:g})"
    )
    return DiurnalAvailability(hour * 3600.0, duration, DAY_S, label)





class DiurnalModelFormat(TraceFormat):
    """The documented diurnal model; no file (``path`` is ignored).  Its settings are the
    scenario's ``traces.availability`` keys ``trace_span_days``, ``night_share``,
    ``night_start_hour``, ``night_start_sd_hours`` and ``wifi_share`` (None: defaults)."""

    name = "diurnal_model"
    suffixes = ()

    def sniff(self, path):
        return False  # a model, not a file format

    def load(self, path, n_devices, seed, horizon_s):
        return self.load_with(path, n_devices, seed, horizon_s, None)

    def load_with(self, path, n_devices, seed, horizon_s, config):
        if config is None:
            return diurnal_model(n_devices, seed)
        return diurnal_model(
            n_devices,
            seed,
            trace_span_days=config.trace_span_days,
            night_share=config.night_share,
            night_start_hour=config.night_start_hour,
            night_start_sd_hours=config.night_start_sd_hours,
            wifi_share=config.wifi_share,
        )
