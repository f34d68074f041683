"""FedAvg's two learning rates (FedOpt: Reddi et al. 2021; Flower ``FedOpt(eta, eta_l)``)
and one knob per learning rate in every protocol.

Shared case ``fedavg_server_lr_squared``: ``protocol.lr`` was both FedAvg's local SGD
rate and its server rate, so θ moved by lr²·g.  With one always-online phone, one batch,
one local step and plain SGD, a FedAvg round must equal a FedSGD step (McMahan et al.
2017: FedSGD is FedAvg with E = 1, B = ∞)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from fleet_harness import FakeEngine, build

from fleetsim.cli import main
from fleetsim.errors import FleetsimInputError
from fleetsim.protocols.registry import BUILTIN_PROTOCOLS
from fleetsim.runner import run_scenario
from fleetsim.scenario.loader import load_scenario

# the shared case's scenario (one phone, tiny-bert + top-layer LoRA, server SGD)
CASE = """\
fleet: {size: 1}
traces:
  availability: {kind: always_online}
  network: {type: fixed, uplink_mbps: 10}
model: {name_or_path: tiny-bert, max_seq_len: 16}
peft: {method: lora, rank: 4, top_layers: 1}
data: {name: bbc_news, max_examples: 64, max_eval_examples: 60, batch_size: 8}
numerics: {threads: 1, server_optimizer: {name: sgd}}
protocol: {name: fedsgd, devices_per_step: 1, rounds: 2, batches_per_round: 1, local_epochs: 1,
           lr: 0.5}
run: {name: fedavg_lr, progress: false}
"""


def _scenario(tmp_path: Path) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(CASE)
    return path


def test_fedavg_round_equals_fedsgd_step(tmp_path):
    path = _scenario(tmp_path)
    sgd = run_scenario(path, run_dir=tmp_path / "fedsgd")
    avg = run_scenario(path, overrides=["protocol.name=fedavg", "protocol.lr=0.01",
                                        "protocol.client_lr=0.5"], run_dir=tmp_path / "fedavg")
    a = pd.read_parquet(sgd / "steps.parquet")
    b = pd.read_parquet(avg / "steps.parquet")
    assert len(a) == len(b) == 2
    for column in ("loss", "eval_loss", "accuracy"):
        pd.testing.assert_series_equal(a[column], b[column], rtol=1e-5, atol=1e-7)
    # step 0 trains at θ₀ on the same batch; the held-out loss moved after the update
    assert a["eval_loss"].iloc[0] != pytest.approx(a["loss"].iloc[0], abs=1e-3)
    summary = json.loads((avg / "summary.json").read_text())
    assert summary["method"] == "FedAvg" and summary["protocol"] == "fedavg"
    resolved = (avg / "scenario.yaml").read_text()
    assert "client_lr: 0.5" in resolved and "server_lr: 1.0" in resolved


def test_the_case_as_filed_is_refused_naming_both_rates(tmp_path, capsys):
    """``--set protocol.name=fedavg`` on a scenario with ``protocol.lr: 0.5``: which rate
    is 0.5 is ambiguous, so fedavg refuses it (exit 2, one line, file:line)."""
    path = _scenario(tmp_path)
    code = main(["run", str(path), "--set", "protocol.name=fedavg", "--out",
                 str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{path}:10: protocol.lr:" in err
    assert "protocol.client_lr" in err and "protocol.server_lr" in err


class LrEngine(FakeEngine):
    """Records the learning rates the protocol hands to the engine."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.local_lrs: list[float] = []

    def local_train(self, step, device_id, client_id, batch_indices, lr, source_step=None):
        self.local_lrs.append(lr)
        return super().local_train(step, device_id, client_id, batch_indices, lr, source_step)


def test_fedavg_hands_client_lr_to_local_sgd_and_server_lr_to_the_server():
    eng = LrEngine(batches=1)
    build(n=2, engine=eng, protocol={"name": "fedavg", "devices_per_step": 2, "rounds": 2,
                                     "client_lr": 0.2, "server_lr": 0.7}).run()
    assert eng.local_lrs == [0.2] * 4
    assert [lr for _, lr in eng.applied] == [0.7, 0.7]
    # defaults: η_l = 0.01, η = 1.0 (McMahan's weight averaging)
    eng = LrEngine(batches=1)
    build(n=2, engine=eng, protocol={"name": "fedavg", "devices_per_step": 2,
                                     "rounds": 1}).run()
    assert eng.local_lrs == [0.01, 0.01] and [lr for _, lr in eng.applied] == [1.0]


def test_linear_schedule_scales_the_client_rate_only():
    eng = LrEngine(batches=1)
    build(n=1, engine=eng, protocol={"name": "fedavg", "devices_per_step": 1, "rounds": 4,
                                     "batches_per_round": 1, "lr_schedule": "linear",
                                     "client_lr": 0.4, "server_lr": 0.5}).run()
    assert eng.local_lrs == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert [lr for _, lr in eng.applied] == [0.5] * 4


@pytest.mark.parametrize("name", sorted(BUILTIN_PROTOCOLS))
@pytest.mark.parametrize("key", ["client_lr", "server_lr", "lr"])
def test_one_knob_per_learning_rate(tmp_path, name, key):
    """Each protocol reads each rate key for one thing, and refuses keys it has no use for:
    the FedAvg family refuses protocol.lr, the others client_lr and server_lr (audit of
    every built-in protocol for one knob used as two rates)."""
    path = tmp_path / "s.yaml"
    path.write_text("fleet: {size: 2}\nnumerics: {engine: none}\nmodel: {name_or_path: "
                    "tiny-bert}\nprotocol: {devices_per_step: 2}\n")
    two_rates = BUILTIN_PROTOCOLS[name].two_learning_rates
    overrides = [f"protocol.name={name}", f"protocol.{key}=0.3"]
    # FedAdapter is weight averaging: its server rate is fixed at 1.0
    refused = (key == "lr") == two_rates or (name, key) == ("fedadapter", "server_lr")
    if refused:
        with pytest.raises(FleetsimInputError, match=f"--set protocol.{key}: "):
            load_scenario(path, overrides)
    else:
        sc = load_scenario(path, overrides).scenario
        assert getattr(sc.protocol, key) == 0.3
    assert two_rates == (name in ("fedavg", "fedadapter"))
