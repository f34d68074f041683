"""Scenario section ``policy``: who takes part and how much work each device gets."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


class BudgetControl(BaseModel):
    """Total perturbations per step for budget-driven policies (variance_paced)."""

    model_config = ConfigDict(extra="forbid")

    initial: int = Field(10, ge=1, description="Perturbations per step at the start.")
    maximum: int = Field(500, ge=1, description="Upper bound on the step budget.")
    growth: float = Field(
        2.0, gt=1, description="Budget multiplier when a step needed variance repeats."
    )
    decay: float = Field(
        1.0, gt=0, le=1,
        description="Budget multiplier when a step passed the variance gate at once (1 = keep).",
    )


class PolicyConfig(BaseModel):
    """Load allocation (quota per device) and cohort selection."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        "uniform",
        description="uniform | capability | deadline | variance_paced | overcommit, or a name "
        "registered in the `fleetsim.policies` entry-point group.",
    )
    cohort: Literal["random", "availability_aware", "fastest_first"] = Field(
        "random",
        description="random; availability_aware (prefer devices whose window covers the expected "
        "round time); fastest_first (highest predicted throughput).",
    )
    total_perturbations: Optional[int] = Field(
        None, ge=1,
        description="Perturbations per step spread by capability/overcommit (default: "
        "devices_per_step × perturbations_per_device).",
    )
    deadline_s: Optional[float] = Field(
        None, gt=0, description="Per-step deadline the deadline policy plans for."
    )
    overcommit_factor: float = Field(
        1.3, ge=1, description="overcommit: ask this many times the needed devices."
    )
    max_quota: int = Field(1000, ge=1, description="Upper bound on one device's quota per step.")
    budget: BudgetControl = Field(default_factory=BudgetControl)
