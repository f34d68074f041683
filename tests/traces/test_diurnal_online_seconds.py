"""The closed-form online time of the diurnal model equals walking its windows."""

import numpy as np

from fleetsim.traces.formats.common import DAY_S
from fleetsim.traces.formats.diurnal_model import DiurnalAvailability
from fleetsim.traces.window_cursor import _walk_online_seconds


def test_closed_form_matches_window_walk():
    rng = np.random.default_rng(0)
    n = 300
    offsets = rng.uniform(0, DAY_S, n)
    durations = np.concatenate([rng.uniform(0, DAY_S, n - 3), [0.0, DAY_S, 2 * DAY_S]])
    trace = DiurnalAvailability(offsets, durations)
    ids = np.arange(n)
    for end in (1.0, 5_000.0, DAY_S, 3.7 * DAY_S):
        np.testing.assert_allclose(trace.online_seconds(ids, end),
                                   _walk_online_seconds(trace, ids, end), atol=1e-6)
