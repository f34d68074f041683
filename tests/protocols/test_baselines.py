"""FwdLLM's Fig. 10 baselines as their papers define them, and every method named as its
paper names it.  Each preset's defining property: the PEFT it fixes (filled in when the
scenario leaves it unset, refused when the scenario contradicts it), what its devices
run, and for FedAdapter weight averaging on the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetsim.errors import FleetsimInputError
from fleetsim.protocols.config import ProtocolConfig
from fleetsim.protocols.registry import BUILTIN_PROTOCOLS, method_label
from fleetsim.scenario.loader import load_scenario
from fleetsim.workload import TaskKind

BASE = "fleet: {size: 10}\nnumerics: {engine: none}\nmodel: {name_or_path: tiny-bert}\n"


def load(tmp_path: Path, text: str, *overrides: str):
    path = tmp_path / "s.yaml"
    path.write_text(BASE + text)
    return load_scenario(path, list(overrides)).scenario


@pytest.mark.parametrize("name,kind,peft", [
    ("adapter_bp", TaskKind.BACKPROP,
     {"method": "adapter", "layers": None, "top_layers": None, "rank": 48}),
    ("bitfit_bp", TaskKind.BACKPROP, {"method": "bitfit", "layers": None, "top_layers": None}),
    ("full_bp", TaskKind.BACKPROP, {"method": "full", "layers": None, "top_layers": None}),
    ("fedadapter", TaskKind.BACKPROP,
     {"method": "adapter", "layers": None, "top_layers": 2, "rank": 48}),
])
def test_preset_fixes_its_peft(tmp_path, name, kind, peft):
    sc = load(tmp_path, f"protocol: {{name: {name}}}\n")
    for key, value in peft.items():
        assert getattr(sc.peft, key) == value, key
    assert BUILTIN_PROTOCOLS[name].task_kind is kind
    # the resolved scenario shows what ran
    assert f"method: {peft['method']}" in load_scenario(
        _write(tmp_path, f"protocol: {{name: {name}}}\n")).resolved_yaml()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(BASE + text)
    return path


@pytest.mark.parametrize("name,peft,key", [
    ("adapter_bp", "{method: lora}", "peft.method"),
    ("adapter_bp", "{method: adapter, top_layers: 1}", "peft.top_layers"),
    ("bitfit_bp", "{method: bitfit, layers: [0]}", "peft.layers"),
    ("full_bp", "{method: adapter}", "peft.method"),
    ("fedadapter", "{method: adapter, layers: [2]}", "peft.layers"),
    ("fedadapter", "{method: adapter, top_layers: null}", "peft.top_layers"),
])
def test_preset_refuses_a_contradicting_peft(tmp_path, name, peft, key):
    path = _write(tmp_path, f"protocol: {{name: {name}}}\npeft: {peft}\n")
    with pytest.raises(FleetsimInputError) as err:
        load_scenario(path)
    message = str(err.value)
    assert message.startswith(f"{path}:") and f": {key}: protocol {name} " in message
    assert "allowed:" in message and "\n" not in message


def test_explicit_paper_settings_are_kept(tmp_path):
    sc = load(tmp_path, "protocol: {name: fedadapter}\npeft: {method: adapter, rank: 16, "
              "top_layers: 1}\n")
    assert (sc.peft.rank, sc.peft.top_layers) == (16, 1)
    assert (sc.protocol.client_lr, sc.protocol.server_lr) == (0.01, 1.0)


def test_fedadapter_is_weight_averaging(tmp_path):
    with pytest.raises(FleetsimInputError, match="numerics.server_optimizer.name: fedadapter"):
        load(tmp_path, "protocol: {name: fedadapter}\nnumerics: {engine: none, "
             "server_optimizer: {name: adam}}\n")
    with pytest.raises(FleetsimInputError, match="allowed: 1"):
        load(tmp_path, "protocol: {name: fedadapter, server_lr: 0.5}\n")


@pytest.mark.parametrize("protocol,optimizer,expected", [
    ({"name": "fwdllm"}, "sgd", "FwdLLM"),
    ({"name": "fwdllm", "upload": "seeds"}, "sgd", "FwdLLM (seed-only upload)"),
    ({"name": "fwdllm", "upload": "seeds", "download": "seeds"}, "sgd",
     "FwdLLM (seed-only upload and download)"),
    ({"name": "fwdllm"}, "adam", "FwdLLM (server adam)"),
    ({"name": "fedsgd"}, "sgd", "FedSGD"),
    ({"name": "fedsgd", "upload": "seeds"}, "sgd", "FedSGD"),  # fedsgd always uploads dense
    ({"name": "fedavg"}, "sgd", "FedAvg"),
    ({"name": "fedavg"}, "adam", "FedAdam"),
    ({"name": "fedavg"}, "momentum", "FedAvgM"),
    ({"name": "fedadapter"}, "sgd", "FedAdapter"),
    ({"name": "adapter_bp"}, "sgd", "Adapter-BP"),
    ({"name": "bitfit_bp"}, "sgd", "BitFit-BP"),
    ({"name": "full_bp"}, "sgd", "Full-BP"),
])
def test_method_named_as_its_paper(protocol, optimizer, expected):
    assert method_label(ProtocolConfig(**protocol), optimizer) == expected


def test_fwdllm_defaults_are_the_paper_s():
    """Dense upload of the estimate, one perturbation per device per batch."""
    cfg = ProtocolConfig()
    assert cfg.name == "fwdllm" and cfg.upload == "dense" and cfg.download == "dense"
    assert cfg.perturbations_per_device == 1
    assert method_label(cfg, "sgd") == "FwdLLM"


def test_fedadam_needs_its_server_rate(tmp_path):
    """1.0 is SGD's weight averaging; Adam at 1.0 would move every coordinate by 1."""
    adam = "numerics: {engine: none, server_optimizer: {name: adam}}\n"
    with pytest.raises(FleetsimInputError, match=r"protocol.server_lr: FedAdam \(fedavg"):
        load(tmp_path, "protocol: {name: fedavg}\n" + adam)
    sc = load(tmp_path, "protocol: {name: fedavg, server_lr: 0.01}\n" + adam)
    assert (sc.protocol.client_lr, sc.protocol.server_lr) == (0.01, 0.01)
    sc = load(tmp_path, "protocol: {name: fedavg}\n")
    assert sc.protocol.server_lr == 1.0
