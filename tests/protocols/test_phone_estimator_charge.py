"""What a phone is charged for its estimator, against a hand count of forwards.

``protocol.phone_estimator``: central differences run 2 forwards per perturbation;
one-sided differences 1 per perturbation plus the base loss L(θ) once per task; jvp
``jvp_cost_factor`` per perturbation.  The latency model is linear in forwards, so
every compute span of a task must be (forwards of the task) × (one forward's seconds
on that device), found here from the central run (2v forwards per task) alone.
Found by a new-user trial: one-sided phones were charged v forwards, not v + 1."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fleetsim.runner import run_scenario

SCENARIO = """\
fleet: {{size: 4}}
traces:
  availability: {{kind: always_online}}
  network: {{type: fixed, uplink_mbps: 10}}
numerics: {{engine: none}}
model: {{name_or_path: tiny-bert, max_seq_len: 32}}
protocol:
  name: fwdllm
  devices_per_step: 3
  perturbations_per_device: {v}
  phone_estimator: {estimator}
  rounds: 1
  max_steps: 3
run: {{name: {estimator}-v{v}, progress: false}}
output: {{dir: '{out}', convergence_png: false}}
"""


def _compute(tmp_path: Path, estimator: str, v: int) -> pd.DataFrame:
    out = tmp_path / f"{estimator}-{v}"
    path = tmp_path / f"{estimator}-{v}.yaml"
    path.write_text(SCENARIO.format(v=v, estimator=estimator, out=out))
    run_scenario(path, run_dir=out, progress=False)
    events = pd.read_parquet(out / "events.parquet")
    spans = events[events.kind == "compute"].groupby(["device_id", "step"])
    return spans.agg(seconds=("duration_s", "sum"), units=("units", "sum"))


@pytest.mark.parametrize("v", [1, 4])
def test_phone_is_charged_the_forwards_of_its_estimator(tmp_path, v):
    central = _compute(tmp_path, "central", v)
    forward_s = central.seconds / (2 * v)  # per device: one forward's seconds
    assert (central.units == v).all()
    onesided = _compute(tmp_path, "onesided", v)
    jvp = _compute(tmp_path, "jvp", v)
    pd.testing.assert_series_equal(onesided.seconds, forward_s * (v + 1), check_names=False,
                                   rtol=1e-9)
    pd.testing.assert_series_equal(jvp.seconds, forward_s * 1.5 * v, check_names=False,
                                   rtol=1e-9)
    if v == 1:  # one perturbation: one-sided costs what central does
        pd.testing.assert_series_equal(onesided.seconds, central.seconds, rtol=1e-9)
