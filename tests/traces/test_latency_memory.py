"""Latency model (held-out error, paper profile, backends) and memory model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fleetsim.errors import FleetsimInputError
from fleetsim.traces import build_devices, paper_profile_config
from fleetsim.traces.config import TracesConfig
from fleetsim.traces.latency import (
    REFERENCE_FLOPS,
    choose_backend,
    facts_from_hf_config,
    held_out_error_factors,
    unit_seconds,
)
from fleetsim.traces.memory import job_memory_bytes
from fleetsim.traces.tables import DATA_DIR

BERT_BASE = {
    "model_type": "bert",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
}
DISTILBERT = {
    "model_type": "distilbert",
    "dim": 768,
    "n_layers": 6,
    "n_heads": 12,
    "hidden_dim": 3072,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
}
LLAMA_7B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
}


def _held_out() -> dict:
    meas = pd.read_csv(DATA_DIR / "catalogue" / "measurements.csv")
    socs = pd.read_csv(DATA_DIR / "catalogue" / "soc_scores.csv").set_index("soc_key")
    scores = {
        "npu": socs.loc[socs["npu_listed"], "int8_transformer_score"].to_dict(),
        "cpu": socs["cpu_f_score"].to_dict(),
        "gpu": socs["cpu_f_score"].to_dict(),
    }
    df = meas.rename(
        columns={"soc": "soc_name", "soc_key": "soc", "latency_s_float_equiv": "latency_s"}
    )
    df = df[df["soc"].isin(socs.index)]
    return held_out_error_factors(df, scores)


def test_held_out_error_factor():
    err = _held_out()
    # leave-one-SoC-out: every backend is evaluated on SoCs its constant never saw
    assert err["all"]["rows"] >= 100
    assert set(err) >= {"all", "cpu", "gpu", "npu"}
    assert err["all"]["geo_mean"] < 1.5
    assert err["all"]["median"] < 1.4
    assert err["all"]["p90"] < 2.5


def test_hf_config_parameter_counts():
    bert = facts_from_hf_config(BERT_BASE, "bert-base-uncased", 8, 128, 0)
    distil = facts_from_hf_config(DISTILBERT, "distilbert-base-uncased", 8, 128, 450_340)
    llama = facts_from_hf_config(LLAMA_7B, "llama-7b", 1, 128, 4_194_304)
    assert 105e6 < bert.n_params < 112e6  # BERT-base: 110M
    assert 64e6 < distil.n_params < 68e6  # DistilBERT: 66M
    assert 6.6e9 < llama.n_params < 6.8e9  # LLaMA-7B: 6.74B
    # reference workload is BERT-base at 8 x 128
    assert bert.flops_per_token * 8 * 128 == pytest.approx(REFERENCE_FLOPS)
    assert distil.trainable_params == 450_340


def test_facts_from_bad_config():
    with pytest.raises(FleetsimInputError, match="missing 'hidden_size'"):
        facts_from_hf_config({"vocab_size": 3}, "x", 1, 8, 0)


@pytest.fixture(scope="module")
def paper_fleet():
    return build_devices(paper_profile_config(), 4, 0, 3600.0, Path("."))


@pytest.mark.parametrize(
    "config,name,backend,expected",
    [
        (DISTILBERT, "distilbert-base-uncased", "npu", 0.3085584),
        (DISTILBERT, "distilbert-base-uncased", "cpu", 3.35942),
        (BERT_BASE, "bert-base-uncased", "npu", 0.669904),
        (BERT_BASE, "google-bert/bert-base-uncased", "cpu", 6.91072),
    ],
)
def test_paper_constants_exact(paper_fleet, config, name, backend, expected):
    table, _ = paper_fleet
    ids = np.arange(4)
    for batch in (8, 16, 4):
        for ipu in (1.0, 2.0, 3.0):
            facts = facts_from_hf_config(config, name, batch, 128, 450_340)
            s = unit_seconds(
                table, ids, np.full(4, backend, dtype=object), facts, "forward_gradient", ipu
            )
            assert np.all(s == expected * batch / 8)


def test_paper_backprop_constants(paper_fleet):
    table, _ = paper_fleet
    ids = np.arange(2)
    cpu = np.full(2, "cpu", dtype=object)
    adapter = facts_from_hf_config(DISTILBERT, "distilbert-base-uncased", 8, 128, 450_340)
    full = facts_from_hf_config(DISTILBERT, "distilbert-base-uncased", 8, 128, 66_000_000)
    assert np.all(unit_seconds(table, ids, cpu, adapter, "backprop", 1) == 4.1634)
    assert np.all(unit_seconds(table, ids, cpu, full, "backprop", 1) == 6.939)


def test_backprop_runs_backward_through_the_trained_depth_only(paper_fleet):
    """Top-layer PEFT backpropagates from the top down to its lowest trainable layer.
    Paper profile: FedAdapter's 1.3878 s (adapters in DistilBERT's top 2 of 6 layers) is
    Adapter-BP's 4.1634 s × 2/6; a generic phone pays the full forward plus the backward
    through the trained share of the layers."""
    table, _ = paper_fleet
    ids = np.arange(2)
    cpu = np.full(2, "cpu", dtype=object)
    top2 = facts_from_hf_config(DISTILBERT, "distilbert-base-uncased", 8, 128, 152_164)
    top2.lowest_trainable_layer = 4
    assert np.all(unit_seconds(table, ids, cpu, top2, "backprop", 1) == 1.3878)
    head = facts_from_hf_config(DISTILBERT, "distilbert-base-uncased", 8, 128, 3_076)
    head.lowest_trainable_layer = 6
    # the head alone is charged as the top layer: the paper's rule never gives a free step
    np.testing.assert_allclose(unit_seconds(table, ids, cpu, head, "backprop", 1), 4.1634 / 6,
                               rtol=1e-12)
    generic, _ = build_devices(TracesConfig(population="uniform"), 20, 3, 3600.0, Path("."))
    gids = generic.device_ids
    be = choose_backend(generic, gids, "backprop")
    facts = facts_from_hf_config(BERT_BASE, "my-encoder", 8, 128, 1000)  # BERT-base: 1 ref
    ref = generic.ref_forward_s["cpu"][gids]
    np.testing.assert_allclose(unit_seconds(generic, gids, be, facts, "backprop", 1), 2 * ref)
    facts.lowest_trainable_layer = 9  # top 3 of 12 layers
    np.testing.assert_allclose(unit_seconds(generic, gids, be, facts, "backprop", 1),
                               ref * (1 + 3 / 12))


def test_paper_round_time(paper_fleet):
    """DistilBERT, 450,340 fp32 params uploaded at 10 Mibit/s + NPU compute, 15 steps."""
    table, _ = paper_fleet
    upload_s = 450_340 * 4 * 8 / table.uplink_bps[0]
    assert upload_s == pytest.approx(1.37433, abs=5e-6)
    facts = facts_from_hf_config(DISTILBERT, "distilbert-base-uncased", 8, 128, 450_340)
    comp = unit_seconds(
        table, np.array([0]), np.array(["npu"], dtype=object), facts, "forward_gradient", 2.0
    )[0]
    assert 15 * (upload_s + comp) / 60 == pytest.approx(0.4207, abs=5e-5)
    assert np.all(np.isinf(table.downlink_bps))


def test_generic_latency_scales_with_work():
    table, _ = build_devices(TracesConfig(population="uniform"), 50, 3, 3600.0, Path("."))
    ids = table.device_ids
    be = choose_backend(table, ids, "forward_gradient")
    f8 = facts_from_hf_config(BERT_BASE, "my-encoder", 8, 128, 1000)
    f16 = facts_from_hf_config(BERT_BASE, "my-encoder", 16, 128, 1000)
    s8 = unit_seconds(table, ids, be, f8, "forward_gradient", 2.0)
    s16 = unit_seconds(table, ids, be, f16, "forward_gradient", 2.0)
    np.testing.assert_allclose(s16, 2 * s8)
    one = unit_seconds(table, ids, be, f8, "inference", 1.0)
    ref = np.array([table.ref_forward_s[b][i] for b, i in zip(be, ids)])
    np.testing.assert_allclose(one, ref)  # the reference workload is BERT-base 8x128
    bp = choose_backend(table, ids, "backprop")
    peft = unit_seconds(table, ids, bp, f8, "backprop", 1.0)
    np.testing.assert_allclose(peft, 2 * table.ref_forward_s["cpu"][ids])


def test_choose_backend_rule():
    table, _ = build_devices(TracesConfig(population="uniform"), 200, 5, 3600.0, Path("."))
    ids = table.device_ids
    lat = np.stack([table.ref_forward_s[b] for b in ("npu", "gpu", "cpu")])
    fastest = np.array(["npu", "gpu", "cpu"])[np.argmin(np.nan_to_num(lat, nan=np.inf), axis=0)]
    fg = choose_backend(table, ids, "forward_gradient")
    np.testing.assert_array_equal(fg.astype(str), fastest)
    assert {"npu", "gpu"} <= set(fg)
    assert set(choose_backend(table, ids, "backprop")) == {"cpu"}
    assert "npu" not in set(choose_backend(table, ids, "backprop", "npu"))
    assert set(choose_backend(table, ids, "inference", "cpu")) == {"cpu"}
    has_npu = ~np.isnan(table.ref_forward_s["npu"])
    forced = choose_backend(table, ids, "inference", "npu")
    assert np.all(forced[has_npu] == "npu") and not np.any(forced[~has_npu] == "npu")
    with pytest.raises(FleetsimInputError, match="backprop cannot run on backend 'npu'"):
        f = facts_from_hf_config(BERT_BASE, "x", 8, 128, 10)
        unit_seconds(table, ids[:1], np.array(["npu"], dtype=object), f, "backprop", 1)


@pytest.mark.parametrize("dtype_bytes,paper_gb", [(2, 15.6), (1, 7.9), (0.5, 4.0)])
def test_llama7b_forward_gradient_memory_matches_paper(dtype_bytes, paper_gb):
    facts = facts_from_hf_config(LLAMA_7B, "llama-7b", 1, 128, 4_194_304)
    facts.dtype_bytes = dtype_bytes
    got = job_memory_bytes(facts, "forward_gradient") / 1e9
    assert got == pytest.approx(paper_gb, rel=0.10)


def test_memory_ordering_and_ram_limit():
    facts = facts_from_hf_config(LLAMA_7B, "llama-7b", 1, 128, 4_194_304)
    facts.dtype_bytes = 2
    inf = job_memory_bytes(facts, "inference")
    fg = job_memory_bytes(facts, "forward_gradient")
    bp = job_memory_bytes(facts, "backprop")
    bp_full = job_memory_bytes(facts, "backprop", peft="full")
    assert inf < fg < bp < bp_full
    # A 12 GB phone with half its RAM usable cannot hold LLaMA-7B FP16 training,
    # but holds DistilBERT forward-gradient training easily.
    table, _ = build_devices(paper_profile_config(), 1, 0, 10.0, Path("."))
    assert fg > table.usable_ram_bytes[0]
    distil = facts_from_hf_config(DISTILBERT, "distilbert-base-uncased", 8, 128, 450_340)
    assert job_memory_bytes(distil, "forward_gradient") < table.usable_ram_bytes[0]
