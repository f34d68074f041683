"""Scenario section ``protocol``: the server strategy and its timing choices."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Defaults of the learning rates (see ProtocolConfig.lr, client_lr, server_lr).
DEFAULT_LR = 0.01
DEFAULT_CLIENT_LR = 0.01
#: Server SGD at 1.0 moves θ to the clients' average: McMahan et al. (2017) FedAvg.
DEFAULT_SERVER_LR = 1.0


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
        description="Server strategy: fwdllm (FwdLLM) | fedsgd (backprop FedSGD) | fedavg "
        "(FedAvg; FedAdam/FedAvgM with numerics.server_optimizer adam/momentum) | kseed "
        "(FedKSeed: zeroth-order over a pool of seed_pool seeds) | FwdLLM's Fig. 10 "
        "baselines, each fixing its PEFT: adapter_bp (Adapter-BP), bitfit_bp (BitFit-BP), "
        "full_bp (Full-BP), fedadapter (FedAdapter); or a name registered in the "
        "`fleetsim.protocols` entry-point group.  README 'Protocols' lists each with its source.",
    )
    lr: float = Field(
        DEFAULT_LR, gt=0,
        description="Server step size of the protocols whose devices send gradient "
        "estimates (fwdllm, fedsgd, kseed, adapter_bp, bitfit_bp, full_bp): θ ← θ − lr · "
        "update(ĝ), update by numerics.server_optimizer.  The FedAvg family (fedavg, "
        "fedadapter) has two rates instead (client_lr, server_lr) and refuses any other "
        "value here.",
    )
    client_lr: Optional[float] = Field(
        None, gt=0,
        description="FedAvg family only (fedavg, fedadapter): η_l, the learning rate of each "
        "device's local SGD steps (FedOpt's client optimiser, Reddi et al. 2021; Flower "
        f"FedOpt eta_l).  Default {DEFAULT_CLIENT_LR}; protocol.lr_schedule scales it.  "
        "Refused for the other protocols.",
    )
    server_lr: Optional[float] = Field(
        None, gt=0,
        description="FedAvg family only: η, the server step size applied to the average "
        "client delta Δ = θ − θ_local through numerics.server_optimizer (Flower FedOpt "
        f"eta).  Default {DEFAULT_SERVER_LR} with sgd: McMahan et al.'s (2017) weight "
        "averaging; required with adam (FedAdam, Reddi et al. 2021) or momentum (FedAvgM). "
        "Refused for the other protocols (their server step is protocol.lr).",
    )
    lr_schedule: Literal["constant", "linear"] = Field(
        "constant",
        description="constant, or linear: rate × (1 − step/N) over the N steps the run takes "
        "(rounds × steps per round, capped by max_steps; summary.json lr_planned_steps); "
        "refused when N depends on the cohort drawn.  The rate is protocol.lr; for the "
        "FedAvg family, client_lr.",
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
        description="dense: fp32 trainable-size vector per step (the FwdLLM paper, and the "
        "default of fwdllm); seeds: seed + scalar per perturbation (8 + 4 bytes), a "
        "variant labelled 'FwdLLM (seed-only upload)' in every output.",
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
    seed_pool: Optional[int] = Field(
        None, ge=1, le=2**32,
        description="K: the finite pool of candidate seeds every perturbation is drawn from, "
        "shared by server and phones (FedKSeed, Qin et al. 2024; the paper: 4,096). Phones "
        "upload (4-byte seed index, fp32 scalar) pairs; the server keeps one accumulated scalar "
        "per seed; a phone catches up with the K accumulated scalars or the pairs since its last "
        "sync, whichever is smaller. kseed only; unset under kseed: 4096; null: unbounded "
        "per-(step, device, k) seeds (kseed is then fwdllm with upload and download: seeds).",
    )
    seed_sampling: Literal["uniform", "importance"] = Field(
        "uniform",
        description="How a perturbation's pool seed is drawn: uniform (FedKSeed), or importance "
        "(FedKSeed-Pro: softmax of the min-max-normalised mean |scalar| of each seed's history; "
        "a systems-only run has no scalars, so it stays uniform). Needs seed_pool.",
    )
    local_epochs: int = Field(1, ge=1, description="FedAvg local epochs over the round's batches.")
    eval_every_steps: int = Field(
        0, ge=0, description="Evaluate every N committed steps; 0 = at each round end only."
    )
    eval_every_s: float = Field(
        0.0, ge=0.0, allow_inf_nan=False,
        description="Evaluate on a simulated-time grid instead: the model current at t = 0, "
        "Δ, 2Δ, … seconds (t = 0 before the first step), one steps.parquet row per grid time "
        "(attempt -1); 0 = off.  Arms of one comparison need the same grid (issue 23); needs "
        "eval_every_steps: 0 (no per-step or round-end evaluation then).",
    )
    variance: VarianceControl = Field(default_factory=VarianceControl)
    commit: CommitRule = Field(default_factory=CommitRule)

    @model_validator(mode="after")
    def _one_evaluation_grid(self) -> ProtocolConfig:
        if self.eval_every_s and self.eval_every_steps:
            raise ValueError(
                "protocol.eval_every_s: a simulated-time grid replaces eval_every_steps; set "
                "one of them (eval_every_steps: 0 with eval_every_s > 0)"
            )
        return self

    @model_validator(mode="after")
    def _seed_pool(self) -> ProtocolConfig:
        if self.name == "kseed" and "seed_pool" not in self.model_fields_set:
            self.seed_pool = KSEED_PAPER_POOL
        if self.seed_pool is not None and self.name != "kseed":
            raise ValueError(
                f"protocol.seed_pool: only protocol kseed draws perturbations from a seed pool; "
                f"allowed for {self.name}: null"
            )
        if self.seed_sampling == "importance" and self.seed_pool is None:
            raise ValueError(
                "protocol.seed_sampling: importance needs a finite protocol.seed_pool (K); "
                "allowed with seed_pool null: uniform"
            )
        return self


#: FedKSeed's pool size K (Qin et al., ICML 2024, "Federated Full-Parameter Tuning of
#: Billion-Sized Language Models with Communication Cost under 18 Kilobytes", arXiv 2312.06353:
#: K = 4,096 in its experiments; the authors' code's ``-K`` default).
KSEED_PAPER_POOL = 4096


def seed_pool_problem(
    protocol: ProtocolConfig, optimizer: str, weight_decay: float, clip_norm: Optional[float],
    discriminative: bool,
) -> Optional[str]:
    """Why ``protocol.seed_pool`` cannot be honoured with these numerics settings (None: it
    can).  FedKSeed's server applies θ ← θ − η Σ_j h_j v_j with plain SGD, so the K accumulated
    scalars h_j reconstruct θ from θ_0 only when the server optimiser is plain SGD (no
    momentum, Adam, weight decay or clipping) and v_j depends on the seed alone (no
    discriminative sampling, which picks v by the previous gradient)."""
    if protocol.seed_pool is None:
        return None
    if optimizer != "sgd" or weight_decay or clip_norm is not None:
        return ("numerics.server_optimizer: protocol.seed_pool needs plain SGD (FedKSeed "
                "rebuilds θ from the per-seed accumulated scalars); allowed: name sgd, "
                "weight_decay 0, clip_norm null")
    if discriminative:
        return ("numerics.discriminative.enabled: a pool seed's perturbation must depend on "
                "the seed alone under protocol.seed_pool; allowed: false")
    return None
