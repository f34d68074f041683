"""Scenario options of the fleet engine (the ``fleet:`` section of a scenario)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ThermalConfig(BaseModel):
    """Thermal slow-down after sustained compute (off by default).

    Phones throttle their clocks once the SoC heats up: after ``onset_s`` seconds of
    continuous compute, every unit of work that *starts* later takes ``slowdown``
    times its nominal time.  Load counts as continuous across gaps (network
    transfers, short idle spells) shorter than ``cooldown_s``; a gap of at least
    ``cooldown_s`` resets the device to cool.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Apply the thermal slow-down model.")
    onset_s: float = Field(
        120.0, gt=0, description="Seconds of sustained compute before the phone throttles."
    )
    slowdown: float = Field(
        1.5, ge=1.0, description="Factor (>= 1) applied to the time of units started while hot."
    )
    cooldown_s: float = Field(
        60.0, ge=0, description="An idle gap at least this long cools the device down again."
    )


class EnergyConfig(BaseModel):
    """Where the power figures come from, and per-scenario overrides."""

    model_config = ConfigDict(extra="forbid")

    power_file: Optional[str] = Field(
        None,
        description="YAML file of power figures (format of device_traces/power/power.yaml), "
        "relative to the scenario file; default: the shipped device_traces/power/power.yaml.",
    )
    compute_w: dict[str, float] = Field(
        default_factory=dict,
        description="Override of the active compute power in watts per backend "
        "(keys: cpu, gpu, npu).",
    )
    include_radio_base: bool = Field(
        True,
        description="Count the radio's throughput-independent active power (beta of the "
        "Huang et al. model) for the duration of each transfer, not only the per-byte term.",
    )


class CostModelConfig(BaseModel):
    """The model the phones are charged for, when it differs from the model that supplies
    the learning signal (``model:``).  Compute latency, job memory (RAM admission) and
    payload sizes (the trainable PEFT size of *this* model under the scenario's ``peft:``)
    follow it; gradients and accuracy come from ``model:``.  Every output of such a run
    names both ("phones charged for X; learning signal from Y")."""

    model_config = ConfigDict(extra="forbid")

    name_or_path: str = Field(
        ..., min_length=1,
        description="A model config: a known model name, the name of a folder in "
        "scenarios/models (distilbert-base-uncased, llama-2-7b, tinyllama-1.1b) or a folder "
        "holding a Hugging Face config.json, relative to the scenario file; no weights are "
        "read.",
    )
    dtype: Literal["float32", "float16", "bfloat16", "int8", "int4"] = Field(
        "int8",
        description="Storage type of the charged model's weights on the phone (memory and "
        "download size): int8 = 1 byte, int4 = 0.5 byte per weight.",
    )
    max_seq_len: Optional[int] = Field(
        None, ge=1,
        description="Tokens per example the phones are charged for (default: model.max_seq_len).",
    )


class FleetConfig(BaseModel):
    """How the simulated phones behave on the SimPy clock."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(..., ge=1, description="Number of devices in the fleet.")
    interruption: Literal["pause", "lose"] = Field(
        "pause",
        description="What happens to a task when the device's availability ends: 'pause' "
        "suspends it and resumes where it stopped when the device is available again "
        "(FLASH semantics); 'lose' abandons the unit in progress and the task (real-world "
        "semantics; units finished before are uploaded when the device is back if the task "
        "allows it).",
    )
    backend: Literal["auto", "cpu", "gpu", "npu"] = Field(
        "auto",
        description="Compute backend preference: 'auto' uses the NPU for inference where the "
        "phone has one and the model fits it, else the CPU (backprop never on the NPU).",
    )
    compute_noise_sigma: float = Field(
        0.0,
        ge=0.0,
        description="Sigma of the per-unit lognormal noise on compute time (mean-one "
        "multiplier, drawn from a seeded stream keyed by device and step); 0 = deterministic.",
    )
    thermal: ThermalConfig = Field(
        default_factory=ThermalConfig, description="Thermal slow-down after sustained load."
    )
    transfers: Literal["both", "uplink_only", "none"] = Field(
        "both",
        description="Which transfers take simulated time: 'both' directions, 'uplink_only' "
        "(downloads take no time, the paper's closed-form profile) or 'none'.  Bytes are "
        "counted and their per-byte radio energy charged either way (summary.json "
        "transfer_energy).",
    )
    energy: EnergyConfig = Field(
        default_factory=EnergyConfig, description="Power figures used for energy accounting."
    )
    cost_model: Optional[CostModelConfig] = Field(
        None,
        description="The model the phones are charged for (latency, memory, payload) when it "
        "differs from model: (default: the same model).",
    )

    @model_validator(mode="after")
    def _check_backend_override(self) -> FleetConfig:
        unknown = set(self.energy.compute_w) - {"cpu", "gpu", "npu"}
        if unknown:
            raise ValueError(
                f"fleet.energy.compute_w: unknown backend(s) {sorted(unknown)}; "
                "allowed: cpu, gpu, npu"
            )
        return self
