"""Energy follows every byte: radio energy per phase against a hand count of the Huang et
al. (MobiSys 2012) model for every ``fleet.transfers`` mode (the clock may ignore a
transfer's time; the energy ledger charges its bytes all the same)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fleet_helpers import make_fleet, make_table, run_task

from fleetsim.fleet.config import FleetConfig
from fleetsim.fleet.energy import PowerTable
from fleetsim.fleet.work import ReceiptStatus, Task
from fleetsim.traces.base import AlwaysOnline

DOWN, UP = 40_000, 10_000  # bytes
UP_BPS, DOWN_BPS = 80_000.0, 160_000.0  # 10 kB/s up, 20 kB/s down


@pytest.mark.parametrize("mode", FleetConfig.model_fields["transfers"].annotation.__args__)
def test_radio_energy_per_phase_by_hand(mode):
    env, fleet, log = make_fleet(make_table(1, uplink_bps=UP_BPS, downlink_bps=DOWN_BPS),
                                 AlwaysOnline(1), unit_s=0.5, transfers=mode)
    task = Task(step=0, device_id=0, units=2, download_bytes=DOWN,
                upload_bytes=lambda units: UP)
    receipt = run_task(env, fleet, task)
    assert receipt.status == ReceiptStatus.DELIVERED
    wifi = PowerTable.load().radio["wifi"]
    cpu_w = PowerTable.load().compute_w["cpu"]
    alpha_up = wifi.up_mw_per_mbps * 8e-6 / 1000  # J per byte
    alpha_down = wifi.down_mw_per_mbps * 8e-6 / 1000
    beta = wifi.base_mw / 1000  # W while a transfer takes simulated time
    down_s = {"both": DOWN * 8 / DOWN_BPS, "uplink_only": 0.0, "none": 0.0}[mode]  # 2 s or 0
    up_s = {"both": UP * 8 / UP_BPS, "uplink_only": UP * 8 / UP_BPS, "none": 0.0}[mode]  # 1 s
    # every byte costs α × bytes; the base power only the transfer's simulated seconds
    radio = alpha_down * DOWN + alpha_up * UP + beta * (down_s + up_s)
    compute = cpu_w * 2 * 0.5
    assert receipt.network_s == pytest.approx(down_s + up_s)
    assert env.now == pytest.approx(down_s + 1.0 + up_s)
    assert receipt.energy_j == pytest.approx(compute + radio)
    totals = fleet.energy_totals()  # the ledger's per-phase sums (one device)
    assert totals["compute_j"] == pytest.approx(compute)
    assert totals["radio_j"] == pytest.approx(radio)
    assert totals["total_j"] == pytest.approx(compute + radio)
    # the downlink's per-byte energy is there whatever the clock did with it
    assert totals["radio_j"] >= alpha_down * DOWN


def test_infinite_link_costs_the_per_byte_term():
    # traces.network.uplink_only: downlink = inf; the download takes 0 s but costs α·bytes
    env, fleet, _ = make_fleet(make_table(1, uplink_bps=UP_BPS, downlink_bps=math.inf),
                               AlwaysOnline(1), unit_s=0.5)
    receipt = run_task(env, fleet, Task(step=0, device_id=0, units=1, download_bytes=DOWN,
                                        upload_bytes=lambda units: UP))
    wifi = PowerTable.load().radio["wifi"]
    expected = (wifi.down_mw_per_mbps * DOWN + wifi.up_mw_per_mbps * UP) * 8e-6 / 1000 + (
        wifi.base_mw / 1000 * UP * 8 / UP_BPS
    )
    assert np.isfinite(receipt.energy_j)
    assert fleet.energy_totals()["radio_j"] == pytest.approx(expected)
