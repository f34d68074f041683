"""The diurnal model recalibrated on measured windows (``kind: diurnal_windows``).

A parametric model of charging windows fitted on the FLASH measured windows (not on per-user
totals), with parameters in ``device_traces/availability/flash_windows_fit.json`` (written by
``device_traces/availability/fit_flash_windows.py``; method and fit in ``PROVENANCE.md``).

Per device, over a period of ``period_days`` days that then repeats:

1. number of windows ``N`` ~ zero-truncated negative binomial ``(r, p)`` (a Gamma-Poisson
   mixture: heavy and light chargers), one inverse-CDF uniform per device;
2. each window: a day uniform in the period, a local start hour from the fitted 24-bin
   start-hour distribution (uniform within the hour);
3. its length: a mixture of three log-normals (``mu``, ``sigma`` of ln seconds: seconds-long
   repeated charge events, the main mode near half an hour, overnight charging near 6 h)
   whose weights depend on the start hour's 3-hour block (``block_weights`` [8, 3]);
4. windows overlapping on a device merge; windows crossing the period's end wrap.

Draws come from streams ``("availability", "diurnal_windows", <variable>)`` in device order,
so device ``i``'s windows do not depend on the fleet size.  ``wifi_share`` thins windows as
for the empirical model (``fleetsim.traces.formats.empirical``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import optimize, stats

from fleetsim.errors import FleetsimInputError
from fleetsim.rng import stream
from fleetsim.traces.base import IntervalAvailability
from fleetsim.traces.formats.base import TraceFormat
from fleetsim.traces.formats.common import DAY_S, merge_windows, periodic_windows
from fleetsim.traces.formats.measured import (  # noqa: F401 - measured_hourly_share: public here too
    MeasuredWindows,
    hourly_online_share,
    measured_hourly_share,
)
from fleetsim.traces.tables import DATA_DIR

FIT_FILE = DATA_DIR / "availability" / "flash_windows_fit.json"
BLOCK_HOURS = 3
PARAM_KEYS = ("period_days", "nb_r", "nb_p", "start_hour_pmf", "mu", "sigma", "block_weights")
#: starting point of the length mixture (ln seconds): seconds-long repeated charge events,
#: the main mode near 30 min, overnight charging near 6 h (log-length histogram modes)
INITIAL_MU = np.array([3.5, 7.5, 10.1])
INITIAL_SIGMA = np.array([1.5, 1.0, 0.4])


def fit_windows_model(m: MeasuredWindows) -> dict:
    """Maximum-likelihood parameters of the model from measured windows.

    * counts: zero-truncated negative binomial on windows per kept user over the observed
      span (``m.span_days`` whole observed local days, which become ``period_days``: edge
      days holding only straddling tails are not part of it, see
      :mod:`fleetsim.traces.formats.flash_windows`; ``scipy.optimize.minimize`` of the truncated
      ``scipy.stats.nbinom`` likelihood);
    * start hour: empirical shares of local start hours (24 bins);
    * lengths: three-component log-normal mixture on ln(length s) with weights per 3-hour
      block of start hour (``scipy.optimize.minimize`` of the mixture likelihood).
    """
    counts = np.bincount(m.device, minlength=m.num_users).astype(float)

    def nb_nll(x: np.ndarray) -> float:
        r, p = np.exp(x[0]), 1.0 / (1.0 + np.exp(-x[1]))
        ll = stats.nbinom.logpmf(counts, r, p) - np.log1p(-stats.nbinom.pmf(0, r, p))
        return -float(ll.sum())

    mean = counts.mean()
    x0 = np.array([0.0, np.log(1.0 / mean) if mean > 1 else 0.0])
    nb = optimize.minimize(nb_nll, x0, method="Nelder-Mead", options={"xatol": 1e-6})
    r, p = float(np.exp(nb.x[0])), float(1.0 / (1.0 + np.exp(-nb.x[1])))

    hour = (np.floor(np.mod(m.start, DAY_S) / 3600.0)).astype(int)
    pmf = np.bincount(hour, minlength=24) / len(hour)

    y = np.log(np.maximum(m.lengths_s, 1.0))
    block = hour // BLOCK_HOURS
    nb_blocks = 24 // BLOCK_HOURS
    k = len(INITIAL_MU)

    def unpack(x: np.ndarray):
        mu, sd = x[:k], np.exp(x[k : 2 * k])
        logits = np.concatenate([np.zeros((nb_blocks, 1)), x[2 * k :].reshape(nb_blocks, k - 1)], 1)
        w = np.exp(logits - logits.max(axis=1, keepdims=True))
        return mu, sd, w / w.sum(axis=1, keepdims=True)

    def mix_nll(x: np.ndarray) -> float:
        mu, sd, w = unpack(x)
        f = (w[block] * stats.norm.pdf(y[:, None], mu[None, :], sd[None, :])).sum(axis=1)
        return -float(np.log(np.maximum(f, 1e-300)).sum())

    x0 = np.concatenate([INITIAL_MU, np.log(INITIAL_SIGMA), np.zeros(nb_blocks * (k - 1))])
    mix = optimize.minimize(mix_nll, x0, method="L-BFGS-B")
    mu, sd, w = unpack(mix.x)
    order = np.argsort(mu)
    mu, sd, w = mu[order], sd[order], w[:, order]
    return {
        "period_days": int(m.span_days),
        "nb_r": r,
        "nb_p": p,
        "start_hour_pmf": [float(v) for v in pmf],
        "mu": [float(v) for v in mu],
        "sigma": [float(v) for v in sd],
        "block_weights": [[float(v) for v in row] for row in w],
    }


def load_params(path: Path = FIT_FILE) -> dict:
    """Fitted parameters (``PARAM_KEYS``) from a fit file."""
    path = Path(path)
    if not path.exists():
        raise FleetsimInputError(f"{path}: file not found (expected fitted windows parameters)")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FleetsimInputError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    params = obj.get("params", obj) if isinstance(obj, dict) else {}
    missing = [k for k in PARAM_KEYS if k not in params]
    if missing:
        raise FleetsimInputError(
            f"{path}: missing key(s) {', '.join(missing)} (required: {', '.join(PARAM_KEYS)})"
        )
    return params


def sample_windows(
    params: dict, n_devices: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(device [w], start_s [w], end_s [w]) of one period, before merging and wrapping."""
    n = int(n_devices)
    r, p = float(params["nb_r"]), float(params["nb_p"])
    period_days = int(params["period_days"])

    def rs(name: str) -> np.random.Generator:
        return stream(seed, "availability", "diurnal_windows", name)

    f0 = stats.nbinom.cdf(0, r, p)
    u = rs("count").random(n)
    count = np.maximum(stats.nbinom.ppf(f0 + u * (1.0 - f0), r, p), 1).astype(np.int64)
    total = int(count.sum())
    device = np.repeat(np.arange(n), count)
    day = rs("day").integers(period_days, size=total)
    pmf = np.asarray(params["start_hour_pmf"], float)
    hour = rs("hour").choice(24, size=total, p=pmf / pmf.sum())
    start = day * DAY_S + (hour + rs("minute").random(total)) * 3600.0
    w = np.asarray(params["block_weights"], float)[hour // BLOCK_HOURS]
    u = rs("component").random(total)
    comp = np.minimum((u[:, None] > np.cumsum(w, axis=1)).sum(axis=1), w.shape[1] - 1)
    mu = np.asarray(params["mu"], float)[comp]
    sd = np.asarray(params["sigma"], float)[comp]
    length = np.exp(mu + sd * rs("length").standard_normal(total))
    return device, start, start + np.minimum(length, period_days * DAY_S)


def diurnal_windows_model(
    n_devices: int, seed: int, params: dict | None = None, wifi_share: float = 1.0,
    source: str = "",
) -> IntervalAvailability:
    """``n_devices`` devices' windows from the fitted model (module docstring)."""
    params = params if params is not None else load_params()
    if not 0.0 <= wifi_share <= 1.0:
        raise FleetsimInputError(
            f"traces.availability.wifi_share: {wifi_share:g} (allowed: 0 <= share <= 1)"
        )
    device, start, end = sample_windows(params, n_devices, seed)
    if wifi_share < 1.0:
        keep = stream(seed, "availability", "wifi").random(len(device)) < wifi_share
        device, start, end = device[keep], start[keep], end[keep]
    period = int(params["period_days"]) * DAY_S
    label = (
        "model: diurnal_windows, several charging windows a day fitted on measured FLASH "
        f"windows ({source or FIT_FILE.name}; period {int(params['period_days'])} d; "
        f"Wi-Fi share {wifi_share:g})"
    )
    return periodic_windows(device, start, end, int(n_devices), period, label)


def load_model(path: Path | None, n_devices: int, seed: int, config=None) -> IntervalAvailability:
    """Kind ``diurnal_windows``: the model with the fit file ``path`` (None: the shipped
    ``flash_windows_fit.json``) and the scenario's ``wifi_share``."""
    fit = Path(path) if path is not None else FIT_FILE
    wifi = float(getattr(config, "wifi_share", 1.0))
    return diurnal_windows_model(n_devices, seed, load_params(fit), wifi, source=fit.name)


def model_windows(params: dict, n_devices: int, seed: int):
    """(lengths_s [w] of merged, unwrapped windows; hourly share [24]) of the model."""
    device, start, end = sample_windows(params, n_devices, seed)
    d, s, e = merge_windows(device, start, end, 0.0)
    period = int(params["period_days"]) * DAY_S
    tr = periodic_windows(device, start, end, int(n_devices), period, "")
    dev = np.repeat(np.arange(tr.num_devices), np.diff(tr.offsets))
    hourly = hourly_online_share(dev, tr.starts, tr.ends, tr.num_devices, 0.0, period)
    per_device = np.bincount(d, minlength=int(n_devices))
    return e - s, hourly, per_device


def fit_statistics(params: dict, m: MeasuredWindows, seed: int = 0, scale: int = 4) -> dict:
    """How the model with ``params`` matches the measured windows ``m``: two-sample KS
    distance of window lengths (``scipy.stats.ks_2samp``), max and mean absolute error of
    the online share by hour, windows per device-day and median per-device online hours
    per period, measured vs model (``scale`` x as many model devices as users)."""
    n = m.num_users * int(scale)
    lengths, hourly, per_device = model_windows(params, n, seed)
    ks = stats.ks_2samp(m.lengths_s, lengths)
    mh = measured_hourly_share(m)
    totals_m = np.bincount(m.device, weights=m.lengths_s, minlength=m.num_users) / 3600.0
    totals_model = np.bincount(
        np.repeat(np.arange(n), per_device), weights=lengths, minlength=n
    ) / 3600.0
    days = float(params["period_days"])
    return {
        "ks_window_length": float(ks.statistic),
        "hourly_share_max_abs_error": float(np.abs(hourly - mh).max()),
        "hourly_share_mean_abs_error": float(np.abs(hourly - mh).mean()),
        "mean_online_share_measured": float(mh.mean()),
        "mean_online_share_model": float(hourly.mean()),
        "windows_per_day_measured": float(len(m.start) / m.num_users / m.span_days),
        "windows_per_day_model": float(per_device.mean() / days),
        "median_hours_per_period_measured": float(np.median(totals_m)),
        "median_hours_per_period_model": float(np.median(totals_model)),
        "window_min_quartiles_measured": [
            float(v) for v in np.quantile(m.lengths_s, [0.25, 0.5, 0.75]) / 60.0
        ],
        "window_min_quartiles_model": [
            float(v) for v in np.quantile(lengths, [0.25, 0.5, 0.75]) / 60.0
        ],
    }


class DiurnalWindowsFormat(TraceFormat):
    """The diurnal model recalibrated on measured windows; ``path``: optional fit file
    (:mod:`fleetsim.traces.formats.diurnal_windows`)."""

    name = "diurnal_windows"
    suffixes = ()

    def sniff(self, path):
        return False

    def load(self, path, n_devices, seed, horizon_s):
        return self.load_with(path, n_devices, seed, horizon_s, None)

    def load_with(self, path, n_devices, seed, horizon_s, config):

        return load_model(path, n_devices, seed, config)
