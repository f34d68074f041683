"""Latency model (held-out error, paper profile, backends) and memory model."""

from __future__ import annotations

import dataclasses
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
from fleetsim.workload import PeftFacts

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


def _lora_qv(layers: list[int], n_layers: int, hidden: int, kv: int, rank: int,
             labels: int, targets: tuple[str, str]) -> PeftFacts:
    """LoRA on the query/value projections of ``layers`` plus a trainable head."""
    per = [0] * (n_layers + 2)
    for layer in layers:
        per[layer + 1] = rank * (hidden + hidden) + rank * (hidden + kv)
    per[-1] = hidden * labels + labels
    return PeftFacts(method="lora", layers=tuple(layers), trainable_per_layer=tuple(per),
                     rank=rank, lora_targets=targets)


def _llama7b(batch: int, seq: int, layers: list[int], rank: int, dtype_bytes: float):
    peft = _lora_qv(layers, 32, 4096, 4096, rank, 4, ("self_attn.q_proj", "self_attn.v_proj"))
    facts = facts_from_hf_config(LLAMA_7B, "llama-7b", batch, seq,
                                 sum(peft.trainable_per_layer), peft=peft, num_labels=4)
    facts.dtype_bytes = dtype_bytes
    return facts


@pytest.mark.parametrize("dtype_bytes,paper_gb", [(2, 15.6), (1, 7.9), (0.5, 4.0)])
def test_llama7b_forward_gradient_memory_matches_paper(dtype_bytes, paper_gb):
    facts = _llama7b(1, 128, list(range(32)), 8, dtype_bytes)
    got = job_memory_bytes(facts, "forward_gradient") / 1e9
    assert got == pytest.approx(paper_gb, rel=0.10)


def test_top_layer_lora_backprop_on_llama2_7b_int4_by_hand():
    """Study (b)(iii)'s setting: LLaMA-2-7B INT4, batch 8, 32 tokens, LoRA rank 4 on q/v
    of the top layer + a 4-way head.  Backprop keeps the top layer's activations only,
    so it fits the 4.00 GiB an 8-GB phone may use; LoRA in every layer does not."""
    facts = _llama7b(8, 32, [31], 4, 0.5)
    tokens, act, h, inter = 8 * 32, 2, 4096, 11008
    # top layer, frozen input: the norm's output feeds LoRA A (kept once) and two
    # rank-4 mids; k has no gradient, so q·kᵀ keeps k but not q; softmax output; v;
    # the second norm's input and rstd; SiLU input and output, up projection
    layer = (h + 4 + 4) + h + 32 * 32 + h + (h + 1) + 3 * inter
    assert layer == 50_441
    top = (h + 4) / 32 + (h + 1) + 2 * 128  # pooled + log-softmax, final norm, cos/sin
    saved = (layer + top) * tokens * act
    lora_grads, head_grads = 2 * 4 * (h + h) * 4, (h * 4 + 4) * 4  # fp32
    backward_transient = (2 * inter + h) * tokens * act
    # backward walk: at the head everything saved is alive; one layer down the head's
    # saved tensors are gone and the LoRA gradients exist (smaller here)
    at_head = saved + head_grads + backward_transient
    at_top_layer = layer * tokens * act + lora_grads + head_grads + backward_transient
    forward = (2 * h + 4 * inter + 32 * 32) * tokens * act  # nothing saved below
    peak = max(at_head, at_top_layer, forward, lora_grads + head_grads)
    assert peak == at_head
    weights = 6_738_149_376 * 18 / 32 * 1.09
    master = lora_grads + head_grads  # fp32 copy of the trainable parameters (INT4 weights)
    expected = int(weights + peak + master)
    got = job_memory_bytes(facts, "backprop")
    assert got == expected
    assert 3.88 * 2**30 < got < 3.90 * 2**30 < 4.0 * 2**30
    every = job_memory_bytes(_llama7b(8, 32, list(range(32)), 4, 0.5), "backprop")
    assert every > 4.7 * 2**30  # 32 layers of activations: an 8-GB phone refuses


def test_memory_by_job_kind_and_estimator():
    """Perturbed inference holds one forward's transient; jvp a tangent beside it; the
    frozen prefix's output is kept when the lowest trainable layer is above layer 0."""
    facts = _llama7b(8, 32, [31], 4, 0.5)
    tokens, act, h, inter = 8 * 32, 2, 4096, 11008
    transient = (2 * h + 4 * inter + 32 * 32) * tokens * act
    trainable = sum(facts.peft.trainable_per_layer)
    weights = 6_738_149_376 * 18 / 32 * 1.09
    logits = 8 * 4 * 4
    central = weights + transient + tokens * h * act + logits + 3 * trainable * 4
    assert job_memory_bytes(facts, "forward_gradient", "central") == int(central)
    assert job_memory_bytes(facts, "forward_gradient", "onesided") == int(central)
    assert job_memory_bytes(facts, "forward_gradient", "jvp") == int(central + transient)
    assert job_memory_bytes(facts, "inference") == int(weights + transient + logits)
    with pytest.raises(FleetsimInputError, match="phone_estimator"):
        job_memory_bytes(facts, "forward_gradient", "backprop")


def test_memory_refuses_facts_without_peft():
    facts = facts_from_hf_config(LLAMA_7B, "llama-7b", 1, 128, 10)
    with pytest.raises(FleetsimInputError, match="no PEFT facts"):
        job_memory_bytes(facts, "backprop")


def test_memory_ordering_and_ram_limit():
    facts = _llama7b(1, 128, list(range(32)), 8, 2)
    inf = job_memory_bytes(facts, "inference")
    fg = job_memory_bytes(facts, "forward_gradient")
    bp = job_memory_bytes(facts, "backprop")
    full = PeftFacts(method="full", layers=tuple(range(32)), embeddings_trainable=True,
                     trainable_per_layer=(32000 * 4096,) + (202_383_360,) * 32
                     + (32000 * 4096 + 4096 * 4 + 4,))
    full_facts = facts_from_hf_config(LLAMA_7B, "llama-7b", 1, 128,
                                      sum(full.trainable_per_layer), peft=full, num_labels=4)
    full_facts.dtype_bytes = 2
    bp_full = job_memory_bytes(full_facts, "backprop")
    assert inf < fg < bp < bp_full
    # A 12 GB phone with half its RAM usable cannot hold LLaMA-7B FP16 training,
    # but holds DistilBERT forward-gradient training easily.
    table, _ = build_devices(paper_profile_config(), 1, 0, 10.0, Path("."))
    assert fg > table.usable_ram_bytes[0]
    # width-48 adapters in every layer + a 4-way head: the paper's 450,340 trainable
    per_layer = (768 * 48 + 48) + (48 * 768 + 768)
    adapters = PeftFacts(method="adapter", layers=tuple(range(6)), rank=48,
                         trainable_per_layer=(0,) + (per_layer,) * 6 + (768 * 4 + 4,))
    assert sum(adapters.trainable_per_layer) == 450_340
    distil = facts_from_hf_config(DISTILBERT, "distilbert-base-uncased", 8, 128, 450_340,
                                  peft=adapters, num_labels=4)
    assert job_memory_bytes(distil, "forward_gradient") < table.usable_ram_bytes[0]


def test_lora_on_a_projection_the_layer_lacks_is_refused():
    facts = _llama7b(8, 32, [31], 4, 0.5)
    facts.peft = dataclasses.replace(facts.peft, lora_targets=("self_attn.query",))
    with pytest.raises(FleetsimInputError, match=r"LoRA on \['self_attn.query'\]"):
        job_memory_bytes(facts, "backprop")


def test_lora_on_the_feed_forward_keeps_its_inputs():
    """LoRA on up/down of the top layer: up's LoRA keeps the second norm's output (h) and
    down's keeps the SiLU·up product (I), one rank-4 mid each, on top of what a q/v LoRA
    on the same layer keeps (its q/v inputs gone, k then needs no gradient either)."""
    qv = _llama7b(8, 32, [31], 4, 0.5)
    ffn = dataclasses.replace(qv.peft, lora_targets=("mlp.up_proj", "mlp.down_proj"))
    facts = dataclasses.replace(qv, peft=ffn)
    from fleetsim.traces.memory import saved_elements_per_token

    # attention has no gradient at all: only the feed-forward half is kept
    h, inter = 4096, 11008
    # up's LoRA: n2 (h) + mid 4; down's LoRA: p (I) + mid 4; gate has no gradient, so
    # SiLU keeps nothing and the product keeps only silu(gate) (up's grad needs it)
    expected = (h + 4) + (inter + 4) + inter
    assert saved_elements_per_token(facts)[32] == expected


@pytest.mark.parametrize("config,kv", [(BERT_BASE, 768), (LLAMA_7B, 4096)])
def test_backprop_memory_grows_with_depth_below_the_top(config, kv):
    """Moving the lowest trainable layer down by one adds exactly one pass-through (or
    LoRA) layer of saved activations; layers below it add nothing but the transient."""
    from fleetsim.traces.memory import saved_elements_per_token

    n, h = config["num_hidden_layers"], config["hidden_size"]
    targets = (("attention.self.query", "attention.self.value") if config is BERT_BASE
               else ("self_attn.q_proj", "self_attn.v_proj"))
    previous = None
    for depth in range(1, n + 1):
        layers = list(range(n - depth, n))
        facts = facts_from_hf_config(config, "m", 4, 64, 0, num_labels=4,
                                     peft=_lora_qv(layers, n, h, kv, 8, 4, targets))
        saved = saved_elements_per_token(facts)
        assert all(e == 0 for e in saved[1:n - depth + 1])  # frozen prefix keeps nothing
        assert len(set(saved[n - depth + 2:n + 1])) <= 1  # every LoRA layer above alike
        memory = job_memory_bytes(facts, "backprop")
        if previous is not None:
            assert memory > previous
        previous = memory
