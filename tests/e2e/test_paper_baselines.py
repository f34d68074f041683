"""FwdLLM's Fig. 10 methods (Xu et al., arXiv 2308.13894, §5) on the paper profile:
``scenarios/paper_closed_form.yaml`` run as each method gives its minutes per round by the
paper's closed form, per batch of 8 on DistilBERT: the method's compute constant plus its
own fp32 upload at 10 Mibit/s (uplink only).

* FwdLLM: 15 steps × (0.3085584 s + 450,340 × 32 bit / 10 Mibit/s) = 0.4207 min;
* Adapter-BP, BitFit-BP, Full-BP (FedSGD, one backprop step and one upload per step):
  15 × (4.1634 s, 4.1634 s, 6.939 s + the method's trainable vector);
* FedAdapter (FedAvg, one upload per round): 15 local steps × 1.3878 s + one upload.

Trainable counts by hand: a width-48 bottleneck adapter on a 768-wide layer has
768·48 + 48 + 48·768 + 768 = 74,544 weights; the 4-class head 768·4 + 4 = 3,076."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fleetsim.runner import run_scenario

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "paper_closed_form.yaml"
AG_NEWS = ROOT.parent / "shared" / "datasets" / "ag_news" / "test.csv"

UPLINK_BPS = 10 * 2**20  # the paper's "10 Mbit/s" (PROVENANCE.md)
HEAD = 768 * 4 + 4
ADAPTER = 768 * 48 + 48 + 48 * 768 + 768
# biases of one BERT-style layer: q, k, v, attention output, FFN in/out, two LayerNorms
LAYER_BIASES = 4 * 768 + 3072 + 768 + 2 * 768
# every parameter the classifier uses (the checkpoint's BERT pooler is unused): word,
# position and token-type embeddings + their LayerNorm, 6 layers, the head
LAYER = 4 * (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768) + 2 * 2 * 768
FULL = (30522 + 512 + 1) * 768 + 2 * 768 + 6 * LAYER + HEAD


def upload_s(trainable: int) -> float:
    return trainable * 32 / UPLINK_BPS


# name, extra overrides, trainable parameters, paper name, seconds per round
CASES = [
    ("fwdllm", [], 6 * ADAPTER + HEAD, "FwdLLM", 15 * (0.3085584 + upload_s(450_340))),
    ("adapter_bp", [], 6 * ADAPTER + HEAD, "Adapter-BP", 15 * (4.1634 + upload_s(450_340))),
    ("bitfit_bp", ["peft.method=bitfit"], 6 * LAYER_BIASES + HEAD, "BitFit-BP",
     15 * (4.1634 + upload_s(6 * LAYER_BIASES + HEAD))),
    ("full_bp", ["peft.method=full"], FULL, "Full-BP", 15 * (6.939 + upload_s(FULL))),
    # 40 clients hold 19 local batches each (6,080 training examples), so a round trains 15
    ("fedadapter", ["fleet.size=40", "protocol.devices_per_step=40"], 2 * ADAPTER + HEAD,
     "FedAdapter", 15 * 1.3878 + upload_s(152_164)),
]


@pytest.mark.skipif(not AG_NEWS.exists(), reason="needs ../shared/datasets/ag_news/test.csv")
@pytest.mark.parametrize("name,extra,trainable,paper_name,round_s", CASES,
                         ids=[c[0] for c in CASES])
def test_paper_profile_minutes_per_round(tmp_path, name, extra, trainable, paper_name, round_s):
    out = run_scenario(SCENARIO, overrides=[f"protocol.name={name}", "protocol.rounds=2",
                                            *extra], run_dir=tmp_path / name)
    s = json.loads((out / "summary.json").read_text())
    assert s["method"] == paper_name and s["protocol"] == name
    assert s["charged_trainable_params"] == s["learned_trainable_params"] == trainable
    minutes = s["simulated_seconds"] / s["rounds"] / 60
    assert minutes == pytest.approx(round_s / 60, rel=1e-9)
    if name == "fwdllm":
        assert f"{minutes:.4g}" == "0.4207"
    steps = pd.read_parquet(out / "steps.parquet")
    devices = pd.read_parquet(out / "devices.parquet")
    # every device uploads its own trainable vector once per step (FedSGD-type) or round
    uploads = 15 if name != "fedadapter" else 1
    assert (devices["bytes_up"] == 2 * uploads * 4 * trainable).all()
    assert s["steps"] == (30 if name != "fedadapter" else 2) == len(steps)


def test_paper_numbers_in_the_test_are_the_issue_s():
    """The hand counts above are the paper's: 450,340 and 152,164 trainable; FedAdapter's
    1.3878 s is Adapter-BP's 4.1634 s over a third of DistilBERT's depth."""
    assert 6 * ADAPTER + HEAD == 450_340 and 2 * ADAPTER + HEAD == 152_164
    assert 4.1634 * 2 / 6 == pytest.approx(1.3878, abs=1e-12)
    assert upload_s(450_340) == pytest.approx(1.37433, abs=5e-6)


@pytest.mark.skipif(not AG_NEWS.exists(), reason="needs ../shared/datasets/ag_news/test.csv")
def test_compare_names_each_method_as_its_paper(tmp_path):
    from fleetsim.analysis.report import compare_runs

    runs = [run_scenario(SCENARIO, overrides=[f"protocol.name={name}", "protocol.rounds=1",
                                              *extra], run_dir=tmp_path / name)
            for name, extra in (("fwdllm", ["protocol.upload=seeds"]), ("adapter_bp", []),
                                ("fedadapter", ["fleet.size=40",
                                                "protocol.devices_per_step=40"]))]
    per_run = pd.read_csv(compare_runs(runs, None, tmp_path / "cmp")["csv"])
    assert sorted(per_run["method"]) == ["Adapter-BP", "FedAdapter", "FwdLLM (seed-only upload)"]
    by_method = pd.read_csv(compare_runs(runs, "method", tmp_path / "by")["csv"])
    assert sorted(by_method["method"]) == sorted(per_run["method"])


def test_fwdllm_step_time_does_not_depend_on_the_cohort_size(tmp_path):
    """Issue 23 (b)'s scale-down check, the clock's half: on the paper profile (identical,
    always-online phones, each sending its own upload on its own 10 Mibit/s link), a FwdLLM
    step over 100 clients costs exactly what one over 1,000 does: 0.3085584 s of perturbed
    inference plus the 450,340-parameter fp32 upload."""
    per_step = {}
    for clients in (100, 1000):
        out = run_scenario(SCENARIO, overrides=[
            f"fleet.size={clients}", f"protocol.devices_per_step={clients}",
            "protocol.rounds=1", "protocol.batches_per_round=3"],
            run_dir=tmp_path / str(clients))
        steps = pd.read_parquet(out / "steps.parquet")
        committed = steps[steps["committed"]]
        assert len(committed) == 3
        per_step[clients] = committed["step_seconds"].to_numpy()
    expected = 0.3085584 + upload_s(450_340)
    for clients, seconds in per_step.items():
        assert seconds == pytest.approx([expected] * 3, rel=1e-9), clients
