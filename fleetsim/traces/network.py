"""Per-device uplink/downlink bandwidth drawn from real throughput traces.

Tables (``device_traces/network/``):

* ``hsdpa_3g.csv`` / ``5g_mmwave.csv``: 101 quantiles of per-second throughput
  samples (downlink; uplink = downlink x the FLASH median up/down ratio because
  those traces have no uplink).  A device draws one quantile level ``u`` and
  reads both columns at ``u`` (inverse-CDF sampling, comonotone up/down).
* ``flash_wifi.csv``: FLASH's 19 per-user (mean, sd) profiles; a device picks a
  user and draws its own mean from N(mean, sd), floored at 10% of the mean.
* ``fixed``: every device gets the configured rates (Mbit/s, or Mibit/s with
  ``mebibit``).

``uplink_only`` sets downlink to infinity: downloads take zero time.
Draws come from the named streams ``("network", <variable>)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fleetsim.errors import FleetsimInputError
from fleetsim.rng import stream
from fleetsim.traces.config import RADIO_OF_TRACE_TYPE, NetworkConfig
from fleetsim.traces.plausibility import check_link_mbps
from fleetsim.traces.tables import NETWORK_TABLES, numeric_column, read_table, require_columns

MBIT = 1e6
MIBIT = float(2**20)


def load_quantile_table(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(quantile, downlink_mbps, uplink_mbps) validated: quantiles rising in [0, 1]."""
    path = Path(path)
    df = read_table(path)
    require_columns(df, path, ("quantile", "downlink_mbps", "uplink_mbps"))
    q = numeric_column(df, path, "quantile", non_negative=True)
    down = numeric_column(df, path, "downlink_mbps", positive=True)
    up = numeric_column(df, path, "uplink_mbps", positive=True)
    if q.max() > 1 or np.any(np.diff(q) <= 0):
        raise FleetsimInputError(
            f"{path}: column 'quantile' must rise strictly within [0, 1] (allowed: 0..1)"
        )
    check_link_mbps(path, "downlink_mbps", down)
    check_link_mbps(path, "uplink_mbps", up)
    return q, down, up


def sample_network(
    cfg: NetworkConfig, n_devices: int, seed: int, base_dir: Path
) -> tuple[np.ndarray, np.ndarray, str]:
    """(uplink_bps, downlink_bps, label) for ``n_devices`` devices."""
    n = int(n_devices)
    if cfg.type == "fixed":
        unit = MIBIT if cfg.mebibit else MBIT
        check_link_mbps("scenario", "traces.network.uplink_mbps", [cfg.uplink_mbps], True)
        if cfg.downlink_mbps is not None:
            check_link_mbps(
                "scenario", "traces.network.downlink_mbps", [cfg.downlink_mbps], True)
        up = np.full(n, float(cfg.uplink_mbps) * unit)
        down_rate = cfg.downlink_mbps if cfg.downlink_mbps is not None else cfg.uplink_mbps
        down = np.full(n, float(down_rate) * unit)
        label = f"fixed {cfg.uplink_mbps:g} {'Mibit' if cfg.mebibit else 'Mbit'}/s up"
    elif cfg.type == "flash_wifi" and cfg.path is None:
        path = NETWORK_TABLES["flash_wifi"]
        df = read_table(path)
        cols = ("downlink_mbps", "downlink_sigma_mbps", "uplink_mbps", "uplink_sigma_mbps")
        require_columns(df, path, cols)
        dm, ds, um, us = (numeric_column(df, path, c, non_negative=True) for c in cols)
        user = stream(seed, "network", "user").integers(0, len(df), n)
        zd = stream(seed, "network", "downlink").standard_normal(n)
        zu = stream(seed, "network", "uplink").standard_normal(n)
        down = np.maximum(dm[user] + ds[user] * zd, 0.1 * dm[user]) * MBIT
        up = np.maximum(um[user] + us[user] * zu, 0.1 * um[user]) * MBIT
        label = "FLASH per-user Wi-Fi profiles (19 users)"
    else:
        if cfg.path is not None:
            p = Path(cfg.path).expanduser()
            path = p if p.is_absolute() else Path(base_dir) / p
        else:
            path = NETWORK_TABLES[cfg.type]
        q, dq, uq = load_quantile_table(path)
        u = stream(seed, "network", "quantile").uniform(q[0], q[-1], n)
        down = np.interp(u, q, dq) * MBIT
        up = np.interp(u, q, uq) * MBIT
        label = f"{cfg.type} throughput distribution ({path.name})"
    if cfg.uplink_only:
        down = np.full(n, np.inf)
        label += ", downloads free"
    return up, down, label


def radio_technology(cfg: NetworkConfig) -> str:
    return RADIO_OF_TRACE_TYPE.get(cfg.type, cfg.radio)
