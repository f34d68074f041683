"""The model the phones are charged for (``fleet.cost_model``) when it is not the model
that supplies the learning signal (``model:``).

Why: a FwdLLM step on a billion-parameter model keeps a phone busy for minutes, long
enough for availability churn to cut it short; computing real forward gradients of such a
model on the host for 10,000 phones is out of reach.  The simulated side (latency, job
memory and RAM admission, payload sizes) is priced with the *charged* model's facts
while a small real model computes the gradients and the accuracy.

Decisions (tested in ``tests/analysis/test_cost_model.py``):

* latency: the charged model's forward FLOPs per token × tokens (``max_seq_len``, default
  ``model.max_seq_len``) × batch, through the same latency model;
* memory: the charged model's weights at ``dtype`` (int8 = 1 byte, int4 = 0.5 byte per
  weight) plus activations — so fewer phones can hold it;
* payload: the trainable parameters of ``fleet.cost_model.peft`` (default: the scenario's
  ``peft:``) applied to the charged model (a LoRA of rank r on LLaMA-2-7B is what a phone
  would send), counted on the meta device without weights; its extra compute and memory
  follow the same PEFT.  A separate charged PEFT lets a study charge the phones for a
  paper's PEFT (FwdLLM's adapters on every layer) while the host computes the learning
  signal with a cheaper one (a top-layer LoRA), which then differs from the paper's in
  what it can learn per step — every output names both.

Everything the runner writes names both models: ``summary.json`` has ``charged_model``,
``learning_model`` and ``model_label`` ("phones charged for X; learning signal from Y").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from fleetsim.errors import FleetsimInputError
from fleetsim.workload import ModelFacts

#: Bytes per stored weight of each ``fleet.cost_model.dtype``.
COST_DTYPE_BYTES: dict[str, float] = {
    "float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "int4": 0.5,
}


#: The charged-model folders fleetsim ships (a Hugging Face config.json each, no weights;
#: see each folder's README for its source): ``fleet.cost_model.name_or_path`` accepts
#: their names (``llama-2-7b``) as well as a path to them or to a folder of one's own.
CHARGED_MODELS_DIR = Path(__file__).resolve().parents[1] / "scenarios" / "models"


def charged_model_folders(root: Path = CHARGED_MODELS_DIR) -> dict[str, Path]:
    """Name -> folder of every charged-model folder under ``root`` (a folder holding a
    config.json), sorted by name; empty when ``root`` is missing (an installed wheel)."""
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / "config.json").is_file()}


def charged_model_path(name: str, base_dir: Path, folders: dict[str, Path]) -> str:
    """``fleet.cost_model.name_or_path`` as the model resolver reads it: a known model
    name or a folder relative to the scenario (``base_dir``) stays as written; else the
    name of a charged-model folder (:func:`charged_model_folders`) becomes its path."""
    from fleetsim.numerics.config import KNOWN_MODELS

    local = Path(name).expanduser()
    local = local if local.is_absolute() else base_dir / local
    if name.lower() in KNOWN_MODELS or local.is_dir():
        return name
    return str(folders[name]) if name in folders else name


def charged_facts(scenario: Any, base_dir: Path, num_labels: Optional[int] = None) -> ModelFacts:
    """Facts of ``scenario.fleet.cost_model`` (a :class:`fleetsim.scenario.schema.Scenario`):
    its architecture from the config alone (meta device), the scenario's ``peft:`` and
    batch size, ``cost_model.max_seq_len`` (default ``model.max_seq_len``) tokens, weights
    at ``cost_model.dtype``; ``num_labels``: the dataset's class count when known (the
    learning model's head), else read from the dataset.  Raises FleetsimInputError for an
    unknown model."""
    from fleetsim.numerics.facts import model_facts

    cost = scenario.fleet.cost_model
    folders = charged_model_folders()
    model = scenario.model.model_copy(
        update={
            "name_or_path": charged_model_path(cost.name_or_path, base_dir, folders),
            "max_seq_len": cost.max_seq_len or scenario.model.max_seq_len,
        }
    )
    own_peft = getattr(cost, "peft", None)
    peft = own_peft or scenario.peft  # fleet.cost_model.peft, else peft:
    try:
        facts = model_facts(model, peft, scenario.data, scenario.numerics, base_dir,
                            key="fleet.cost_model.name_or_path",
                            also_allowed=list(folders), num_labels=num_labels)
    except FleetsimInputError as exc:
        message = str(exc)
        if own_peft is not None and message.startswith("peft."):
            # the charged PEFT's problem (a layer index beyond the charged model's, say):
            # named at its own key, so the error points at its line, not at peft:'s
            raise FleetsimInputError("fleet.cost_model." + message) from None
        raise
    return dataclasses.replace(facts, dtype_bytes=COST_DTYPE_BYTES[cost.dtype])


def peft_words(facts: ModelFacts) -> str:
    """The PEFT of ``facts`` in words: "adapter, width 48, 6 of 6 layers, head",
    "lora, rank 4, 1 of 6 layers, head", "bitfit, 6 of 6 layers", "full"; "" when the
    facts carry no PEFT (a bare config)."""
    peft = facts.peft
    if peft is None:
        return ""
    if peft.method == "full" or peft.embeddings_trainable:
        return peft.method
    parts = [peft.method]
    if peft.rank:
        parts.append(f"{'width' if peft.method == 'adapter' else 'rank'} {peft.rank}")
    if peft.layers:
        parts.append(f"{len(peft.layers)} of {facts.n_layers} layers")
    top = peft.trainable_per_layer[-1] if peft.trainable_per_layer else 0
    if top:
        parts.append("head")
    return ", ".join(parts)


def model_label(charged: str, learning: str, charged_peft: str = "",
                learning_peft: str = "") -> str:
    """``"phones charged for X; learning signal from Y"``, or the one name when equal.
    ``charged_peft`` / ``learning_peft`` (:func:`peft_words`) are named after each model
    when they differ ("phones charged for X (adapter, width 48, 6 of 6 layers, head);
    learning signal from Y (lora, rank 4, 1 of 6 layers, head)")."""
    if charged_peft != learning_peft and charged_peft and learning_peft:
        return (f"phones charged for {charged} ({charged_peft}); learning signal from "
                f"{learning} ({learning_peft})")
    if charged == learning:
        return charged
    return f"phones charged for {charged}; learning signal from {learning}"


class ChargedEngine:
    """A numerics engine whose :meth:`facts` are those of the charged model; every other
    attribute is the wrapped engine's (gradients, accuracy, journal).  The learning
    model's facts stay available as :meth:`learning_facts`."""

    def __init__(self, engine: Any, facts: ModelFacts) -> None:
        self._engine = engine
        self._charged = facts

    def facts(self) -> ModelFacts:
        return self._charged

    def learning_facts(self) -> ModelFacts:
        return self._engine.facts()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def charge_engine(scenario: Any, engine: Any, base_dir: Path) -> Any:
    """``engine`` itself without ``fleet.cost_model``, else a :class:`ChargedEngine`."""
    if scenario.fleet.cost_model is None:
        return engine
    # the learning model's head has the dataset's classes: the dataset is not read again
    num_labels = engine.facts().num_labels
    return ChargedEngine(engine, charged_facts(scenario, base_dir, num_labels))


def charged_peft_given(scenario: Any) -> bool:
    """Whether ``scenario`` charges the phones for a PEFT of its own
    (``fleet.cost_model.peft``)."""
    cost = scenario.fleet.cost_model
    return cost is not None and getattr(cost, "peft", None) is not None


def model_labels(charged: ModelFacts, learning: ModelFacts,
                 separate_peft: bool = False, systems_only: bool = False) -> dict[str, str]:
    """Summary fields naming the charged and the learning model of a run;
    ``separate_peft`` (``fleet.cost_model.peft`` was given): the label names each model's
    PEFT too, and ``charged_peft`` / ``learning_peft`` (:func:`peft_words`) are added.
    ``systems_only`` (no gradients computed): the label names the charged model (and its
    PEFT) only, since no model supplies a learning signal (``mode`` says systems-only)."""
    fields = {"charged_model": charged.name, "learning_model": learning.name}
    if not separate_peft:
        label = charged.name if systems_only else model_label(charged.name, learning.name)
        return {**fields, "model_label": label}
    charged_peft, learning_peft = peft_words(charged), peft_words(learning)
    label = (f"{charged.name} ({charged_peft})" if systems_only else
             model_label(charged.name, learning.name, charged_peft, learning_peft))
    return {**fields, "charged_peft": charged_peft, "learning_peft": learning_peft,
            "model_label": label}
