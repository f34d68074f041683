"""Finite differences are never silently meaningless in low precision.

For every model dtype the smallest allowed step ``MIN_FD_STEP[dtype]`` must give
directional derivatives close to the exact ones (float32 backprop, same tangents)
for both finite-difference estimators; the exact estimators must be close in every
dtype; a step well below the floor must be measurably wrong (the floor is not
vacuous) and is refused at validation, naming numerics.h and numerics.dtype.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fleetsim.cli import main
from fleetsim.errors import FleetsimInputError
from fleetsim.numerics.config import MIN_FD_STEP, NumericsConfig, fd_step_problem
from fleetsim.numerics.estimators import directional_derivatives, exact_gradient
from fleetsim.scenario.loader import load_scenario

BOUND_AT_FLOOR = 0.1  # relative error ‖d − d_exact‖ / ‖d_exact‖ allowed at h = MIN_FD_STEP
BATCHES = ((0, 0), (1, 0), (2, 0))
K = 16


@pytest.fixture(scope="module")
def problems(make_engine):
    """Per dtype: the engine and, per batch, (inputs, tangents); plus exact fp32 d_k."""
    out = {}
    for dtype in MIN_FD_STEP:
        engine = make_engine(dtype=dtype, estimator="backprop")
        batches = []
        for client, batch in BATCHES:
            inputs = engine.batch_inputs(engine.plan.batches[client][batch])
            tangents = dict(zip(engine.names, engine._perturbations(0, client, tuple(range(K)))))
            batches.append((inputs, tangents))
        out[dtype] = (engine, batches)
    engine, batches = out["float32"]
    exact = []
    for inputs, tangents in batches:
        grad, _ = exact_gradient(engine.loss_fn(*inputs), engine.current_params())
        exact.append(sum(torch.einsum("k...,...->k", tangents[n].double(), grad[n].double())
                         for n in engine.names))
    return out, exact


def _worst_error(problems, dtype: str, estimator: str, h: float) -> float:
    per_dtype, exact = problems
    engine, batches = per_dtype[dtype]
    worst = 0.0
    for (inputs, tangents), truth in zip(batches, exact):
        d, _ = directional_derivatives(
            engine.loss_fn(*inputs), engine.current_params(), tangents, estimator, h,
            engine.host_chunk, engine.batched_loss_fn(*inputs),
        )
        assert d.shape == (K,)
        worst = max(worst, float((d.double() - truth).norm() / truth.norm()))
    return worst


@pytest.mark.parametrize("dtype", list(MIN_FD_STEP))
@pytest.mark.parametrize("estimator", ["central", "onesided"])
def test_finite_differences_at_the_floor_match_backprop(problems, dtype, estimator):
    h = MIN_FD_STEP[dtype]
    NumericsConfig(dtype=dtype, estimator=estimator, h=h)  # the floor itself is allowed
    assert _worst_error(problems, dtype, estimator, h) < BOUND_AT_FLOOR


@pytest.mark.parametrize("dtype", list(MIN_FD_STEP))
@pytest.mark.parametrize("estimator", ["jvp", "backprop"])
def test_exact_estimators_in_every_dtype_match_float32_backprop(problems, dtype, estimator):
    NumericsConfig(dtype=dtype, estimator=estimator, h=1e-9)  # h is irrelevant to them
    bound = 1e-5 if dtype == "float32" else 0.05
    assert _worst_error(problems, dtype, estimator, 0.01) < bound


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_far_below_the_floor_the_estimate_is_noise(problems, dtype):
    # what the refusal protects against: at floor/50 rounding swamps the difference
    assert _worst_error(problems, dtype, "central", MIN_FD_STEP[dtype] / 50) > 2 * BOUND_AT_FLOOR


@pytest.mark.parametrize("dtype", list(MIN_FD_STEP))
def test_config_refuses_steps_below_the_floor(dtype):
    h = MIN_FD_STEP[dtype] / 2
    for estimator in ("central", "onesided"):
        with pytest.raises(ValueError, match=r"numerics\.h: .*numerics\.dtype '" + dtype):
            NumericsConfig(dtype=dtype, estimator=estimator, h=h)
    assert fd_step_problem(h, dtype, "backprop", "jvp") is None
    assert "protocol.phone_estimator 'onesided'" in fd_step_problem(h, dtype, "backprop",
                                                                     "onesided")


SCENARIO = """\
fleet: {{size: 4}}
traces:
  availability: {{kind: always_online}}
numerics: {{engine: none, dtype: bfloat16, h: {h}, estimator: backprop}}
protocol: {{name: {protocol}, devices_per_step: 2, rounds: 1, phone_estimator: {phone}}}
"""


@pytest.mark.parametrize("protocol,phone,refused", [
    ("fwdllm", "central", True), ("fwdllm", "onesided", True), ("fwdllm", "jvp", False),
    ("fedsgd", "central", False),
])
def test_scenario_checks_what_the_phone_differences(tmp_path: Path, protocol, phone, refused):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(h=1e-4, protocol=protocol, phone=phone))
    if not refused:
        load_scenario(path)
        return
    with pytest.raises(FleetsimInputError) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(f"{path}:4: numerics.h: 0.0001 ")
    assert "numerics.dtype 'bfloat16'" in message and "numerics.h >= 0.002" in message


def test_cli_exit_2_one_line(tmp_path: Path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(h=0.01, protocol="fwdllm", phone="central"))
    assert main(["validate", str(path), "--set", "numerics.h=1e-6"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "--set numerics.h: 1e-06" in err and "numerics.dtype 'bfloat16'" in err
