"""run.start_hour: the run starts at another hour of the availability trace's day."""

from pathlib import Path

import numpy as np
import pytest

from fleetsim.scenario.loader import load_scenario
from fleetsim.traces.base import IntervalAvailability
from fleetsim.traces.shift import StartShifted, shift_start
from fleetsim.traces.window_cursor import online_seconds

HOUR = 3600.0
REPO = Path(__file__).resolve().parents[2]


def _daily() -> IntervalAvailability:
    # device 0 online 08:00-10:00, device 1 online 20:00-23:00, every day
    return IntervalAvailability(
        np.array([0, 1, 2]), np.array([8 * HOUR, 20 * HOUR]),
        np.array([10 * HOUR, 23 * HOUR]), period_s=24 * HOUR,
    )


def test_shifted_trace_by_hand() -> None:
    shifted = shift_start(_daily(), 9.0)  # simulated 0 = 09:00
    ids = np.array([0, 1])
    assert shifted.is_available(ids, 0.0).tolist() == [True, False]
    np.testing.assert_allclose(shifted.window_end(ids[:1], 0.0), [1 * HOUR])  # 10:00
    np.testing.assert_allclose(shifted.next_start(ids[1:], 0.0), [11 * HOUR])  # 20:00
    np.testing.assert_allclose(shifted.next_start(ids[:1], 2 * HOUR), [23 * HOUR])  # 08:00 next
    # online seconds over the first simulated day (09:00 to 09:00): 1 h + 3 h + 1 h
    np.testing.assert_allclose(online_seconds(shifted, ids, 24 * HOUR), [2 * HOUR, 3 * HOUR])
    np.testing.assert_allclose(online_seconds(shifted, ids, 2 * HOUR), [1 * HOUR, 0.0])
    assert "hour 9" in shifted.label
    assert shift_start(_daily(), 0.0).__class__ is IntervalAvailability
    with pytest.raises(ValueError):
        StartShifted(_daily(), -1.0)


def test_start_hour_is_validated_and_reaches_the_fleet() -> None:
    from fleetsim.runner import validate_loaded

    scenario = REPO / "scenarios" / "paper_closed_form.yaml"
    with pytest.raises(Exception, match="start_hour"):
        load_scenario(scenario, ["run.start_hour=24"])
    built = validate_loaded(load_scenario(scenario, ["run.start_hour=21", "fleet.size=3",
                                                     "protocol.devices_per_step=3"]))
    assert isinstance(built.availability, StartShifted)
    assert built.availability.offset_s == 21 * HOUR
