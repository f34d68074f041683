"""The run charges each task kind the memory its PEFT and phone estimator need: the
scenario's ``peft:`` reaches the memory model as plain facts (layers, trainable counts,
LoRA targets) and ``protocol.phone_estimator`` picks perturbed inference or jvp."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetsim.runner import validate_loaded
from fleetsim.scenario.loader import load_scenario
from fleetsim.traces.memory import job_memory_bytes
from fleetsim.workload import TaskKind

SCENARIO = """\
fleet: {size: 4}
traces:
  availability: {kind: always_online}
  network: {type: fixed, uplink_mbps: 10}
numerics: {engine: none}
model: {name_or_path: tiny-bert, max_seq_len: 16}
data: {name: bbc_news, max_examples: 64, batch_size: 4}
protocol: {devices_per_step: 2, rounds: 1, batches_per_round: 1}
run: {name: m, progress: false}
"""


def _built(tmp_path: Path, overrides: list[str]):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    return validate_loaded(load_scenario(path, overrides))


def test_top_layer_lora_reaches_the_memory_model(tmp_path):
    top = _built(tmp_path, ["peft.top_layers=1"])
    every = _built(tmp_path, [])
    # tiny-bert: 3 layers of width 32; LoRA rank 8 on query/value, a 5-way head
    assert top.facts.peft.layers == (2,) and every.facts.peft.layers == (0, 1, 2)
    assert top.facts.peft.lora_targets == ("attention.self.query", "attention.self.value")
    assert top.facts.peft.trainable_per_layer == (0, 0, 0, 2 * 8 * (32 + 32), 32 * 5 + 5)
    for built in (top, every):
        assert built.memory[TaskKind.BACKPROP] == job_memory_bytes(built.facts, "backprop")
        assert built.memory[TaskKind.FORWARD_GRADIENT] == job_memory_bytes(
            built.facts, "forward_gradient", "central")
    assert top.memory[TaskKind.BACKPROP] < every.memory[TaskKind.BACKPROP]


@pytest.mark.parametrize("estimator", ["central", "onesided", "jvp"])
def test_phone_estimator_reaches_the_memory_model(tmp_path, estimator):
    built = _built(tmp_path, [f"protocol.phone_estimator={estimator}"])
    assert built.memory[TaskKind.FORWARD_GRADIENT] == job_memory_bytes(
        built.facts, "forward_gradient", estimator)
    central = job_memory_bytes(built.facts, "forward_gradient", "central")
    assert (built.memory[TaskKind.FORWARD_GRADIENT] > central) == (estimator == "jvp")
