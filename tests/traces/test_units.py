"""Issue 24 point 5: the catalogue's unit, the converter from your own latency, warnings
for unit slips, and populations checked against a catalogue."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fleetsim.cli import main
from fleetsim.traces.config import TracesConfig
from fleetsim.traces.fleet_builder import synthesise_devices
from fleetsim.traces.latency import REFERENCE_FLOPS, unit_seconds
from fleetsim.traces.tables import load_catalogue
from fleetsim.workload import ModelFacts

# DistilBERT by hand: 6 layers x (4 h^2 + 2 h I), h = 768, I = 3072
DISTIL_BODY = 6 * (4 * 768 * 768 + 2 * 768 * 3072)  # 42,467,328
BERT_BODY = 12 * (4 * 768 * 768 + 2 * 768 * 3072)


def fpt(body: int, layers: int, seq: int) -> float:
    return 2.0 * body + 4.0 * layers * seq * 768


def test_reference_flops_is_bert_base_batch8_seq128():
    assert REFERENCE_FLOPS == 8 * 128 * fpt(BERT_BODY, 12, 128) == 178_778_013_696


def _convert(tmp_path, capsys, *extra):
    out = tmp_path / "cat.csv"
    args = ["traces", "catalogue", "--from-latency", "0.5", "--from-latency", "npu=0.05",
            "--phone", "My Phone", "--ram-gb", "8", "--batch", "4", "--seq-len", "64",
            "--out", str(out), *extra]
    assert main(args) == 0
    capsys.readouterr()
    return out


def test_converter_round_trips_through_the_latency_model(tmp_path, capsys):
    out = _convert(tmp_path, capsys, "--model", "distilbert")
    cat = load_catalogue(out)
    job = 4 * 64 * fpt(DISTIL_BODY, 6, 64)
    assert cat["cpu_ref_forward_s"][0] == pytest.approx(0.5 * REFERENCE_FLOPS / job, rel=1e-12)
    assert cat["cpu_ref_forward_s"][0] == pytest.approx(4.0548, abs=1e-4)
    assert cat["npu_ref_forward_s"][0] == pytest.approx(0.05 * REFERENCE_FLOPS / job, rel=1e-12)
    assert np.isnan(cat["gpu_ref_forward_s"][0])
    # the run side: a fleet on this catalogue, one inference of DistilBERT at 4 x 64
    pop = tmp_path / "pop.csv"
    pop.write_text("phone_model,weight\nMy Phone,1\n")
    table = synthesise_devices(TracesConfig(catalogue=str(out), population=str(pop)), 3, 0,
                               tmp_path)
    facts = ModelFacts(name="my-distil", n_params=66_000_000, trainable_params=1000,
                       n_layers=6, hidden_size=768, flops_per_token=fpt(DISTIL_BODY, 6, 64),
                       seq_len=64, batch_size=4)
    ids = np.arange(3)
    for backend, measured in (("cpu", 0.5), ("npu", 0.05)):
        s = unit_seconds(table, ids, np.array([backend] * 3, dtype=object), facts,
                         "inference", 1.0)
        assert s == pytest.approx([measured] * 3, rel=1e-12)


def test_converter_takes_flops_per_token_and_appends(tmp_path, capsys):
    out = _convert(tmp_path, capsys, "--flops-per-token", str(fpt(DISTIL_BODY, 6, 64)))
    first = load_catalogue(out)["cpu_ref_forward_s"][0]
    assert first == pytest.approx(4.054794520547945, rel=1e-12)
    assert main(["traces", "catalogue", "--from-latency", "cpu=1.0", "--phone", "Other",
                 "--ram-gb", "4", "--batch", "8", "--seq-len", "128", "--model", "bert-base",
                 "--out", str(out)]) == 0
    cat = load_catalogue(out)
    assert list(cat["phone_model"]) == ["My Phone", "Other"]
    assert cat["cpu_ref_forward_s"][1] == 1.0  # BERT-base 8 x 128 is the reference itself
    # the same name again: refused, one line
    assert main(["traces", "catalogue", "--from-latency", "1", "--phone", "Other",
                 "--ram-gb", "4", "--batch", "8", "--seq-len", "128", "--model", "bert-base",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "'Other' is already in the catalogue" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("args, needle", [
    (["--from-latency", "npu=0.1", "--model", "bert-base"], "needs the CPU's latency"),
    (["--from-latency", "tpu=0.1", "--model", "bert-base"], "backend 'tpu'"),
    (["--from-latency", "0.1", "--model", "gpt-17"], "neither a known model"),
    (["--from-latency", "0.1"], "exactly one of --model"),
    (["--from-latency", "-1", "--model", "bert-base"], "allowed: seconds > 0"),
])
def test_converter_bad_input_is_one_line(tmp_path, capsys, args, needle):
    assert main(["traces", "catalogue", "--phone", "P", "--ram-gb", "4", "--batch", "8",
                 "--seq-len", "128", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_converter_warns_of_milliseconds(tmp_path, capsys):
    assert main(["traces", "catalogue", "--from-latency", "450", "--phone", "P", "--ram-gb",
                 "4", "--batch", "8", "--seq-len", "128", "--model", "bert-base"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "cpu=450" in err[0] and "milliseconds written as seconds" in err[0]


# ------------------------------------------------------------------ unit-slip warnings


def test_catalogue_forward_over_60s_warns_with_file_row_column(tmp_path, capsys):
    path = tmp_path / "cat.csv"
    path.write_text("phone_model,ram_gb,cpu_ref_forward_s,npu_ref_forward_s\n"
                    "A,8,4.2,0.3\nB,8,4200,\nC,8,5100,\nD,6,3.0,90\n")
    load_catalogue(path)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"fleetsim: warning: {path}: column 'cpu_ref_forward_s' row 2 (and 1 more rows): "
        "4200 s for one reference forward (BERT-base, batch 8 x seq 128) is over 60 s; "
        "likely unit slip: milliseconds written as seconds (4200 ms = 4.2 s)",
        f"fleetsim: warning: {path}: column 'npu_ref_forward_s' row 4: 90 s for one "
        "reference forward (BERT-base, batch 8 x seq 128) is over 60 s; likely unit slip: "
        "milliseconds written as seconds (90 ms = 0.09 s)",
    ]


def test_shipped_tables_raise_no_warning(capsys):
    from fleetsim.traces.network import load_quantile_table
    from fleetsim.traces.tables import CATALOGUES, NETWORK_TABLES

    load_catalogue(CATALOGUES["default"])
    load_quantile_table(NETWORK_TABLES["5g_mmwave"])
    load_quantile_table(NETWORK_TABLES["hsdpa_3g"])
    assert capsys.readouterr().err == ""


def test_network_table_over_10_gbit_warns(tmp_path, capsys):
    from fleetsim.traces.network import load_quantile_table

    path = tmp_path / "net.csv"
    path.write_text("quantile,downlink_mbps,uplink_mbps\n0,5,2\n0.5,20000,8\n1,40000,10\n")
    load_quantile_table(path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{path}: column 'downlink_mbps' row 2 (and 1 more rows): 20000 Mbit/s is over " \
           "10 Gbit/s; likely unit slip: kbit/s written as Mbit/s" in err[0]


def test_fixed_uplink_over_10_gbit_warns_at_its_key(tmp_path, capsys):
    from fleetsim.traces.config import NetworkConfig
    from fleetsim.traces.network import sample_network

    sample_network(NetworkConfig(type="fixed", uplink_mbps=12000), 2, 0, tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "traces.network.uplink_mbps: 12000 Mbit/s" in err[0]


def test_median_window_under_a_minute_warns(tmp_path, capsys):
    path = tmp_path / "w.csv"
    # windows written in hours: 0-2, 5-6, 10-13 "seconds" -> median 2 s
    path.write_text("device_id,start_s,end_s\n0,0,2\n0,5,6\n1,10,13\n")
    assert main(["traces", "validate", str(path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert (f"{path}: columns 'start_s', 'end_s': the median availability window is 2 s, "
            "under a minute") in err[0]
    assert "minutes or hours written as seconds" in err[0]
    # the same warning when a run loads it
    from fleetsim.traces.config import AvailabilityConfig
    from fleetsim.traces.fleet_builder import build_availability

    cfg = TracesConfig(availability=AvailabilityConfig(kind="intervals", path=str(path)))
    build_availability(cfg, 2, 0, 100.0, tmp_path)  # 2 trace devices: no replay note
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "median availability window is 2 s" in err[0]


def test_plausible_windows_do_not_warn(tmp_path, capsys):
    path = tmp_path / "w.csv"
    path.write_text("device_id,start_s,end_s\n0,0,3600\n1,600,1200\n")
    assert main(["traces", "validate", str(path)]) == 0
    assert capsys.readouterr().err == ""


# ------------------------------------------------------- population vs a catalogue


def test_validate_population_against_catalogue(tmp_path, capsys):
    cat = tmp_path / "cat.csv"
    cat.write_text("phone_model,ram_gb,cpu_ref_forward_s\nPixel 7,8,3\nGalaxy S24,8,2\n"
                   "Redmi 9,4,9\n")
    pop = tmp_path / "pop.csv"
    pop.write_text("phone_model,weight\nPixel 7,2\nGalaxy S24,1\nPixel 7,1\n")
    assert main(["traces", "validate", str(pop), "--catalogue", str(cat)]) == 0
    out = capsys.readouterr().out
    assert "catalogue=cat.csv, rows=3, phone_models=2, known_phone_models=2/2, " \
           "catalogue_phone_models_used=2/3" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("phone_model,weight\nPixle 7,1\nGalaxy S24,1\nNokia 3310,1\nPixle 7,1\n")
    assert main(["traces", "validate", str(bad), "--catalogue", str(cat)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"fleetsim: error: {bad}: column 'phone_model': 2 unknown phone models 'Pixle 7' "
        "(did you mean 'Pixel 7'?), 'Nokia 3310' (no close catalogue name), not in the "
        "catalogue cat.csv (allowed: the catalogue's 3 phone models)"
    ]


def test_catalogue_flag_refused_for_an_interval_trace(tmp_path, capsys):
    path = tmp_path / "w.csv"
    path.write_text("device_id,start_s,end_s\n0,0,3600\n")
    assert main(["traces", "validate", str(path), "--catalogue", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--catalogue: checks the phone models of a population" in err


def test_written_row_matches_the_shipped_columns(tmp_path, capsys):
    out = _convert(tmp_path, capsys, "--model", "distilbert")
    cols = list(pd.read_csv(out).columns)
    assert cols[:5] == ["phone_model", "ram_gb", "cpu_ref_forward_s", "gpu_ref_forward_s",
                        "npu_ref_forward_s"]


def test_converter_reads_a_config_json(tmp_path, capsys):
    import json

    folder = tmp_path / "my-llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
        "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 100, "tie_word_embeddings": False}))
    # by hand: per layer 2*64*64 (q, o) + 2*64*(2*16) (k, v) + 3*64*128 (gated MLP) = 36,864;
    # body = 2 layers + untied lm_head 100*64 = 80,128; per token at 32 tokens:
    # 2*80,128 + 4*2*32*64 = 176,640
    assert main(["traces", "catalogue", "--from-latency", "0.002", "--phone", "P",
                 "--ram-gb", "4", "--batch", "2", "--seq-len", "32", "--model",
                 str(folder)]) == 0
    out = tmp_path / "row.csv"
    out.write_text(capsys.readouterr().out)
    got = pd.read_csv(out)["cpu_ref_forward_s"][0]
    assert got == pytest.approx(0.002 * REFERENCE_FLOPS / (2 * 32 * 176_640), rel=1e-12)


def test_catalogue_flag_refused_for_a_catalogue_found_by_columns(tmp_path, capsys):
    cat = tmp_path / "phones"  # no suffix: told by content, then by columns
    cat.write_text("phone_model,ram_gb,cpu_ref_forward_s\nA,8,3\n")
    assert main(["traces", "validate", str(cat), "--catalogue", str(cat)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{cat} is a catalogue file (allowed: drop --catalogue)" in err
