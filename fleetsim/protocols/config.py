"""Scenario section ``protocol``: the server strategy and its timing choices."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VarianceControl(BaseModel):
    """FwdLLM's variance-controlled pacing (paper §3.2)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Gate each step on the split-half variance statistic.")
    threshold: float = Field(
        0.1, gt=0, description="Commit only when the statistic is at or below this (paper: 0.1 "
        "DistilBERT, 0.2 BERT)."
    )
    max_repeats: int = Field(
        5, ge=0, le=1000,
        description="Most extra rounds of fresh perturbations on the same batch; every hit is "
        "logged.",
    )


class CommitRule(BaseModel):
    """When the server commits a step and what happens to work that arrives later."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["barrier", "deadline", "quorum"] = Field(
        "barrier",
        description="barrier: wait for every assigned device (or its interruption); deadline: "
        "commit at step start + deadline_s with what arrived; quorum: commit as soon as "
        "quorum_fraction of the assigned units arrived (or the deadline passes, if set).",
    )
    deadline_s: Optional[float] = Field(
        None, gt=0, description="Per-step deadline in simulated seconds (deadline/quorum modes)."
    )
    quorum_fraction: float = Field(
        1.0, gt=0, le=1, description="Share of assigned units that triggers a quorum commit."
    )
    late_work: Literal["drop", "carry"] = Field(
        "drop",
        description="Work arriving after commit: drop it, or carry it into a later step's "
        "estimate. Carried work is what the phone computed: directional derivatives at θ_s "
        "along step s's perturbations, applied at the step it arrives in (staleness = that "
        "step − s; FedBuff-style buffered asynchrony).",
    )
    max_staleness: int = Field(
        4, ge=0, le=1000,
        description="Carried work more than this many steps old is dropped (a 'dropped' event "
        "with detail 'stale'); bounds the θ history the server keeps for it.",
    )
    staleness_weighting: Literal["none", "inverse_sqrt", "cutoff"] = Field(
        "none",
        description="Weight of a stale perturbation in the step's average: none (1), "
        "inverse_sqrt (1/√(1+s), the polynomial staleness function of FedAsync (Xie et al., "
        "2019) with a = 0.5, as FedBuff (Nguyen et al., 2022) uses), cutoff (1 for "
        "s ≤ staleness_cutoff, else 0: received but unused).",
    )
    staleness_cutoff: int = Field(
        1, ge=0, description="Largest staleness that still counts under staleness_weighting: "
        "cutoff."
    )
    wait_offline_s: float = Field(
        3600.0, gt=0,
        description="When no cohort device is online, the server waits up to this long for one "
        "before re-selecting a cohort.",
    )

    @model_validator(mode="after")
    def _deadline_needed(self) -> CommitRule:
        if self.mode == "deadline" and self.deadline_s is None:
            raise ValueError("deadline_s is required when mode is 'deadline'")
        return self


class ProtocolConfig(BaseModel):
    """Server strategy: FwdLLM (forward-gradient FedSGD) or a baseline."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        "fwdllm",
        description="Server strategy: fwdllm | fedsgd (backprop FedSGD) | fedavg (backprop, local "
        "epochs) | kseed (zeroth-order seed-only, FedKSeed-style), or a name registered in the "
        "`fleetsim.protocols` entry-point group.",
    )
    lr: float = Field(0.01, gt=0, description="Server learning rate.")
    lr_schedule: Literal["constant", "linear"] = Field(
        "constant",
        description="constant, or linear: lr × (1 − step/N) over the N steps the run takes "
        "(rounds × steps per round, capped by max_steps; summary.json lr_planned_steps); "
        "refused when N depends on the cohort drawn.",
    )
    rounds: int = Field(10, ge=1, description="Rounds to run (a round: a cohort uses its batches).")
    batches_per_round: Optional[int] = Field(
        None, ge=1,
        description="Steps per round; default: the cohort's local batches (paper: 15 for AGNews "
        "at batch 8).",
    )
    max_steps: Optional[int] = Field(
        None, ge=1, description="Stop after this many committed steps."
    )
    devices_per_step: int = Field(10, ge=1, description="Cohort size: devices asked per round.")
    perturbations_per_device: int = Field(
        1, ge=1, description="v: perturbations each device computes per step (uniform quota)."
    )
    phone_estimator: Literal["central", "onesided", "jvp"] = Field(
        "central",
        description="What a phone runs per perturbation, charged to the simulated clock: central "
        "= 2 inferences; onesided = 1 (+1 base inference L(θ) per task, charged before its "
        "first unit); jvp = forward-mode (jvp_cost_factor inferences).",
    )
    jvp_cost_factor: float = Field(
        1.5, gt=0, description="Phone cost of one jvp in inferences (forward-mode overhead)."
    )
    upload: Literal["dense", "seeds"] = Field(
        "dense",
        description="dense: fp32 trainable-size vector per step (the paper); seeds: seed + scalar "
        "per perturbation (8 + 4 bytes).",
    )
    download: Literal["dense", "seeds"] = Field(
        "dense",
        description="What a device fetches to hold the current θ: the dense trainable vector, or "
        "the (seed, scalar) pairs of every committed step it has not applied yet (12 bytes a "
        "pair; a device that missed k steps replays all k).",
    )
    seed_catch_up: Literal["replay", "dense_if_smaller"] = Field(
        "replay",
        description="Seed download for a device that missed steps: replay every missed pair, or "
        "fetch the dense trainable vector instead when that is smaller (FedKSeed-style).",
    )
    local_epochs: int = Field(1, ge=1, description="FedAvg local epochs over the round's batches.")
    eval_every_steps: int = Field(
        0, ge=0, description="Evaluate every N committed steps; 0 = at each round end only."
    )
    variance: VarianceControl = Field(default_factory=VarianceControl)
    commit: CommitRule = Field(default_factory=CommitRule)
