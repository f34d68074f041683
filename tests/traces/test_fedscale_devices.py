"""FedScale's client_device_capacity as device speeds and bandwidths; client_behave_trace's
``model`` field onto catalogue phones."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fleetsim.cli import main
from fleetsim.errors import FleetsimInputError
from fleetsim.traces.config import AvailabilityConfig, NetworkConfig, TracesConfig
from fleetsim.traces.fleet_builder import build_devices, synthesise_devices
from fleetsim.traces.latency import REFERENCE_FLOPS

CAT = "phone_model,ram_gb,cpu_ref_forward_s,npu_ref_forward_s\n" \
      "Galaxy S24,8,2,0.1\nPixel 7,8,4,0.2\nRedmi 9,4,9,\n"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "cat.csv").write_text(CAT)
    (tmp_path / "pop.csv").write_text("phone_model,weight\nGalaxy S24,1\nPixel 7,1\n"
                                      "Redmi 9,1\n")
    # client ids out of order and as strings: numbered 1, 2, 10 (numeric order)
    cap = {"10": {"computation": 120.0, "communication": 3000.0},
           1: {"computation": 40.0, "communication": 1000.0},
           2: {"computation": 80, "communication": 2000}}
    (tmp_path / "client_device_capacity").write_bytes(pickle.dumps(cap))
    behave = {
        1: {"active": [0.0], "inactive": [40000.0], "finish_time": 86400.0,
            "duration": 86400, "model": "galaxy-s24"},
        2: {"active": [3600.0], "inactive": [7200.0], "finish_time": 86400.0,
            "duration": 86400, "model": "Pixel 7"},
        10: {"active": [100.0], "inactive": [9000.0], "finish_time": 86400.0,
             "duration": 86400, "model": "SM-X999"},
    }
    (tmp_path / "client_behave_trace").write_bytes(pickle.dumps(behave))
    return tmp_path


def _cfg(files, **kw):
    return TracesConfig(catalogue=str(files / "cat.csv"), population=str(files / "pop.csv"),
                        device_capacity="client_device_capacity", **kw)


def test_capacity_with_model_flops_converts_by_the_latency_model(files):
    fps = 2.0e9  # forward FLOPs of one sample of the model FedScale measured
    table = synthesise_devices(_cfg(files, device_capacity_flops_per_sample=fps), 4, 0, files)
    ms = np.array([40.0, 80.0, 120.0, 40.0])  # devices 0..3 = clients 1, 2, 10, 1
    # one reference forward = 8 samples of REFERENCE_FLOPS / 8 each; C ms per fps FLOPs
    np.testing.assert_allclose(table.ref_forward_s["cpu"], ms / 1000 * REFERENCE_FLOPS / fps,
                               rtol=1e-12)
    assert np.isnan(table.ref_forward_s["npu"]).all() and np.isnan(table.ref_forward_s["gpu"]).all()
    # FedScale's kbit is bytes / 1024 x 8 = 1,024 bits
    kbps = np.array([1000.0, 2000.0, 3000.0, 1000.0])
    np.testing.assert_array_equal(table.uplink_bps, kbps * 1024)
    np.testing.assert_array_equal(table.downlink_bps, kbps * 1024)
    assert "client_device_capacity" in table.source and "kbit/s" in table.source


def test_capacity_without_flops_keeps_ratios_anchored_on_the_catalogue(files):
    table = synthesise_devices(_cfg(files), 3, 0, files)
    # population uniform over CPU 2, 4, 9 s: weighted median 4 s; clients 40/80/120 ms,
    # median 80 ms -> 2, 4, 6 s
    np.testing.assert_allclose(table.ref_forward_s["cpu"], [2.0, 4.0, 6.0], rtol=1e-12)


def test_capacity_uplink_only_keeps_downloads_free(files):
    cfg = _cfg(files, network=NetworkConfig(type="flash_wifi", uplink_only=True))
    table = synthesise_devices(cfg, 3, 0, files)
    assert np.isinf(table.downlink_bps).all()
    np.testing.assert_array_equal(table.uplink_bps, [1_024_000, 2_048_000, 3_072_000])


def test_capacity_file_validates_by_content(files, capsys):
    assert main(["traces", "validate", str(files / "client_device_capacity")]) == 0
    out = capsys.readouterr().out
    assert "valid fedscale_capacity trace; clients=3, median_computation_ms_per_sample=80, " \
           "median_communication_kbps=2000, computation_range_ms=40-120" in out


def test_bad_capacity_is_one_line(tmp_path, capsys):
    path = tmp_path / "cap.pkl"
    path.write_bytes(pickle.dumps({1: {"computation": -3, "communication": 10}}))
    assert main(["traces", "validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"fleetsim: error: {path}: client 1 field 'computation': -3 (allowed: a "
                   "number > 0, ms per sample)")


def test_capacity_pickle_with_a_global_is_refused(tmp_path):
    from fleetsim.traces.fedscale_devices import load_device_capacity

    path = tmp_path / "cap.pkl"
    path.write_bytes(pickle.dumps({1: {"computation": np.float64(3.0), "communication": 1}}))
    with pytest.raises(FleetsimInputError, match="pickle refers to numpy"):
        load_device_capacity(path)


def test_capacity_over_10_gbit_warns(tmp_path, capsys):
    from fleetsim.traces.fedscale_devices import load_device_capacity

    path = tmp_path / "cap.pkl"
    path.write_bytes(pickle.dumps({1: {"computation": 3.0, "communication": 2.0e7 / 1.024},
                                   2: {"computation": 3.0, "communication": 800.0}}))
    load_device_capacity(path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0] == (f"fleetsim: warning: {path}: column 'communication' row 1: 20000 Mbit/s "
                      "is over 10 Gbit/s; likely unit slip: bit/s written as kbit/s (the "
                      "field is kbit/s)")


def test_behave_trace_models_map_onto_catalogue_phones(files, capsys):
    cfg = TracesConfig(
        catalogue=str(files / "cat.csv"), population="trace_models",
        availability=AvailabilityConfig(kind="fedscale", path="client_behave_trace"))
    table, _ = build_devices(cfg, 6, 0, 86400.0, files)
    names = [table.phone_models[i] for i in table.phone_model_index]
    # devices 0, 3 = client 1 ('galaxy-s24'), 1, 4 = client 2 ('Pixel 7'), 2, 5 = client 10
    assert names[0] == names[3] == "Galaxy S24"
    assert names[1] == names[4] == "Pixel 7"
    err = capsys.readouterr().err
    assert "field 'model': 1 phone model(s) not in the catalogue: 'SM-X999'" in err
    assert "trace_models (4 of 6 devices from the trace's 'model' field" in table.source


def test_trace_models_needs_a_fedscale_trace(files):
    cfg = TracesConfig(catalogue=str(files / "cat.csv"), population="trace_models")
    with pytest.raises(FleetsimInputError, match="traces.population: 'trace_models'"):
        synthesise_devices(cfg, 3, 0, files)


def test_validate_behave_trace_against_a_catalogue(files, capsys):
    path = files / "client_behave_trace"
    assert main(["traces", "validate", str(path), "--catalogue", str(files / "cat.csv")]) == 0
    io = capsys.readouterr()
    assert "catalogue=cat.csv, clients_with_model=3, clients_mapped_to_catalogue=2, " \
           "unknown_phone_models=1" in io.out
    assert "'SM-X999' (no close catalogue name)" in io.err


def test_build_model_codes_map_through_flash_aliases(tmp_path):
    from fleetsim.traces.phone_names import match_names
    from fleetsim.traces.tables import CATALOGUES, load_catalogue

    cat = load_catalogue(CATALOGUES["default"])
    # FLASH real2benchmark.json: CPH1823 -> Oppo F9, RMX1941 -> Realme C2; CPH1801 unknown
    got = match_names(["CPH1823", "rmx1941", "CPH1801", "Realme C2"], cat, loose=True)
    assert got == {"CPH1823": "Oppo F9", "rmx1941": "Realme C2", "CPH1801": None,
                   "Realme C2": "Realme C2"}
    # an alias whose phone is not in the given catalogue maps to nothing
    small = cat[cat["phone_model"] != "Oppo F9"].reset_index(drop=True)
    assert match_names(["CPH1823"], small, loose=True) == {"CPH1823": None}
    # populations are matched exactly, as runs read them
    assert match_names(["CPH1823"], cat) == {"CPH1823": None}


def test_capacity_reproduces_fedscales_own_completion_time(files):
    """FedScale charges 3 x batch x C / 1000 s for one local step (forward + backward ~2x);
    fleetsim's backprop unit for full fine-tuning of a model whose per-sample forward is
    the given FLOPs is forward x (1 + 2): the same seconds."""
    from fleetsim.traces.latency import unit_seconds
    from fleetsim.workload import ModelFacts

    seq, per_token = 32, 5.0e7
    fps = seq * per_token
    table = synthesise_devices(_cfg(files, device_capacity_flops_per_sample=fps), 3, 0, files)
    batch = 20
    facts = ModelFacts(name="fedscale-model", n_params=10_000_000,
                       trainable_params=10_000_000, n_layers=4, hidden_size=256,
                       flops_per_token=per_token, seq_len=seq, batch_size=batch)
    got = unit_seconds(table, np.arange(3), np.array(["cpu"] * 3, dtype=object), facts,
                       "backprop", 1.0)
    np.testing.assert_allclose(got, 3 * batch * np.array([40.0, 80.0, 120.0]) / 1000,
                               rtol=1e-12)
