"""The scenario: one pydantic model per section, assembled here.

Each area owns its section's model next to its code (``fleet/config.py``,
``traces/config.py``, ``numerics/config.py``, ``numerics/data.py``,
``protocols/config.py``, ``policies/config.py``); this module adds ``run`` and
``output`` and checks settings that contradict each other across sections.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetsim.errors import did_you_mean
from fleetsim.fleet.config import CostModelConfig, FleetConfig
from fleetsim.numerics.config import (
    DataConfig,
    ModelConfig,
    NumericsConfig,
    PeftConfig,
    fd_step_problem,
)
from fleetsim.policies.config import PolicyConfig
from fleetsim.policies.registry import known_policy_class
from fleetsim.protocols.config import (
    DEFAULT_CLIENT_LR,
    DEFAULT_SERVER_LR,
    ProtocolConfig,
    seed_pool_problem,
)
from fleetsim.protocols.registry import known_protocol_class
from fleetsim.traces.config import TracesConfig
from fleetsim.workload import TaskKind


class RunConfig(BaseModel):
    """How long to run, with which seed, and what to report."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        "run", min_length=1, max_length=200,
        description="Run name (used in the run directory): one folder name, so no '/' or "
        "backslash, not '.' or '..', no control characters.",
    )
    seed: int = Field(0, ge=0, description="Seed of every named random stream of the run.")
    max_sim_hours: float = Field(
        24.0 * 30, gt=0, le=24.0 * 366,
        description="Stop when the simulated clock passes this many hours (at most a year, "
        "8,784 h: availability traces are expanded up to the horizon).",
    )
    targets: list[float] = Field(
        default_factory=list,
        description="Target accuracies for summary.json's time_to_target (each in (0, 1]).",
    )
    stop_at_target: bool = Field(
        False,
        description="Stop the run at the first evaluation whose accuracy reaches the highest "
        "of run.targets (status completed, stopped_by targets_reached): a time-to-accuracy "
        "study needs nothing after that point.  Needs run.targets.",
    )
    stop_split: Literal["test", "validation"] = Field(
        "test",
        description="Which evaluated accuracy run.stop_at_target reads: 'test' (the held-out "
        "split, as run.targets' time_to_target) or 'validation' (data.validation_fraction's "
        "split): a tuning run that stops on the validation split never reads the test split, "
        "not even to decide when to end.",
    )
    progress: bool = Field(True, description="Show a progress bar on stderr.")
    start_hour: float = Field(
        0.0, ge=0, lt=24,
        description="Hour of the availability trace's day at which the run starts (simulated "
        "time 0 = trace time start_hour x 3600 s; the diurnal models' time 0 is local midnight).",
    )

    @field_validator("name")
    @classmethod
    def _name_is_one_folder_name(cls, name: str) -> str:
        # {name} fills output.dir: a name with a separator or '..' would write outside
        # the folder output.dir names (runs/ by default).
        if name in (".", "..") or any(c in "/\\" or ord(c) < 32 or ord(c) == 127
                                      for c in name):
            raise ValueError(
                f"run.name: {name!r} is not a folder name: no '/' or '\\', not '.' or '..', "
                "no control characters (it names the run directory inside output.dir)"
            )
        return name

    @model_validator(mode="after")
    def _targets_in_range(self) -> RunConfig:
        for t in self.targets:
            if not 0 < t <= 1:
                raise ValueError(f"run.targets: each target must be in (0, 1], got {t}")
        if self.stop_at_target and not self.targets:
            raise ValueError("run.stop_at_target: true needs run.targets (a list of accuracies "
                             "in (0, 1]); allowed: false, or set run.targets")
        return self


#: The placeholders output.dir may hold, filled in from run.name and run.seed
OUTPUT_DIR_PLACEHOLDERS = ("name", "seed")


def fill_output_dir(template: str, name: str, seed: int) -> str:
    """``output.dir`` with ``{name}`` and ``{seed}`` filled in.  Raises ValueError naming
    the key and the allowed placeholders for any other one (``{sed}``) or a stray brace:
    the check ``validate`` (through the schema) and ``run`` make."""
    try:
        return template.format(name=name, seed=seed)
    except KeyError as exc:
        word = str(exc.args[0])
        problem = f"{{{word}}}{did_you_mean(word, OUTPUT_DIR_PLACEHOLDERS)}"
    except (IndexError, ValueError, AttributeError) as exc:
        problem = f"({exc})"
    raise ValueError(f"output.dir: bad placeholder {problem}; allowed placeholders: "
                     f"{', '.join(f'{{{p}}}' for p in OUTPUT_DIR_PLACEHOLDERS)}")


class OutputConfig(BaseModel):
    """Where and what to write."""

    model_config = ConfigDict(extra="forbid")

    dir: str = Field(
        "runs/{name}-seed{seed}",
        description="Run directory; {name} and {seed} are filled in; relative to the working "
        "directory.",
    )
    events: bool = Field(True, description="Write events.parquet (one row per simulated event).")
    convergence_png: bool = Field(True, description="Write convergence.png.")
    overwrite: bool = Field(
        True, description="Let a run replace an earlier run of the same resolved scenario in "
        "its run directory (every output of the earlier run is removed first); a run of a "
        "different scenario is refused unless `fleetsim run --replace`.  false: refuse any "
        "directory that already holds run outputs.",
    )
    checkpoint_every_steps: int = Field(
        0, ge=0, description="Write a checkpoint every N committed steps (0 = never)."
    )
    checkpoint_every_minutes: float = Field(
        10.0, ge=0,
        description="Also write a checkpoint at the first committed step after each N minutes "
        "of host time (0 = never): any long run can be resumed with `fleetsim run --resume "
        "RUN_DIR` without having opted in.",
    )
    trackers: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list,
        description="Experiment trackers to log to, under the run directory: tensorboard "
        "(event files in tensorboard/) | mlflow (a local MLflow file store in mlflow/); each "
        "committed step against the step and the simulated time, the summary figures at the "
        "end, the resolved scenario as parameters, the run's PNGs as artefacts. Needs the "
        "trackers extra (pip install -e '.[trackers]').",
    )
    callbacks: list[str] = Field(
        default_factory=list,
        description="Names of run callbacks registered in the `fleetsim.callbacks` "
        "entry-point group (a fleetsim.callbacks.RunCallback subclass, or a function of no "
        "arguments returning one), called after the built-in ones.",
    )

    @field_validator("dir")
    @classmethod
    def _known_placeholders(cls, template: str) -> str:
        fill_output_dir(template, "run", 0)  # the values do not matter, the names do
        return template

    @field_validator("trackers", "callbacks")
    @classmethod
    def _no_repeats(cls, names: list[str]) -> list[str]:
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} listed more than once; list each name once")
        return names


class ChargedModelConfig(CostModelConfig):
    """``fleet.cost_model`` with the PEFT the phones are charged for.  It lives here, not
    in ``fleet/config.py``, because the PEFT section belongs to the numerics floor, which
    the simulated side does not import."""

    peft: Optional[PeftConfig] = Field(
        None,
        description="The PEFT the phones are charged for (trainable parameters uploaded, "
        "their extra compute and memory) when it differs from peft: (default: peft:). E.g. "
        "the paper's adapters on every layer of the charged model, while the learning signal "
        "comes from a cheaper top-layer LoRA of model:. A protocol's PEFT preset "
        "(adapter_bp, bitfit_bp, ...) applies to it as to peft:.",
    )


class ScenarioFleetConfig(FleetConfig):
    """``fleet:`` with :class:`ChargedModelConfig` as its ``cost_model``."""

    cost_model: Optional[ChargedModelConfig] = Field(
        None,
        description="The model the phones are charged for (latency, memory, payload) when it "
        "differs from model: (default: the same model).",
    )


class Scenario(BaseModel):
    """A complete fleetsim scenario."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field("", description="Free text shown in reports.")
    fleet: ScenarioFleetConfig = Field(
        description="Fleet size and device behaviour on the clock.")
    traces: TracesConfig = Field(
        default_factory=TracesConfig, description="Device catalogue, population, availability, "
        "network."
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model to fine-tune.")
    peft: PeftConfig = Field(default_factory=PeftConfig, description="Trainable subset.")
    data: DataConfig = Field(default_factory=DataConfig, description="Dataset and partitions.")
    numerics: NumericsConfig = Field(
        default_factory=NumericsConfig, description="How the host computes the learning signal."
    )
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig, description="Server strategy.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="Load allocation.")
    run: RunConfig = Field(default_factory=RunConfig, description="Seed, duration, targets.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Run directory.")

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        p = self.protocol
        if p.devices_per_step > self.fleet.size:
            raise ValueError(
                f"protocol.devices_per_step: must be at most fleet.size, {self.fleet.size} "
                f"devices (got {p.devices_per_step})"
            )
        policy = known_policy_class(self.policy.name)
        problem = policy.config_problem(self.policy, p.commit.deadline_s) if policy else None
        if problem is not None:
            raise ValueError(problem)
        if self.run.stop_split == "validation" and self.data.validation_fraction <= 0:
            raise ValueError(
                "run.stop_split: 'validation' needs a validation split; set "
                "data.validation_fraction (e.g. 0.2) or use stop_split: test"
            )
        if self.numerics.engine == "none" and self.run.targets:
            raise ValueError(
                "run.targets: a systems-only run (numerics.engine: none) computes no accuracy; "
                "remove the targets"
            )
        protocol = known_protocol_class(p.name)
        if protocol is not None:
            self._apply_protocol_preset(protocol)
        if protocol is None or protocol.uses_finite_differences():
            problem = fd_step_problem(self.numerics.h, self.numerics.dtype,
                                      self.numerics.estimator, p.phone_estimator)
            if problem is not None:
                raise ValueError(problem)
        opt = self.numerics.server_optimizer
        problem = seed_pool_problem(p, opt.name, opt.weight_decay, opt.clip_norm,
                                    self.numerics.discriminative.enabled)
        if problem is not None:
            raise ValueError(problem)
        if protocol is not None and protocol.task_kind is TaskKind.BACKPROP and (
                self.fleet.backend == "npu"):
            raise ValueError(
                "fleet.backend: backprop baselines cannot run on the NPU; allowed: auto, cpu, gpu"
            )
        return self

    def _apply_protocol_preset(self, protocol: type) -> None:
        """The protocol's learning-rate rules and the PEFT it fixes (a preset such as
        ``adapter_bp``): refuse contradicting settings, fill in the unset ones, so that
        the resolved scenario.yaml shows what ran.  The FedAvg family gets its client
        and server rates' defaults written out."""
        problem = protocol.config_problem(self.protocol, self.numerics.server_optimizer.name)
        if problem is not None:
            raise ValueError(problem)
        fills, problem = protocol.peft_preset(self.peft.model_dump(), self.peft.model_fields_set)
        if problem is not None:
            raise ValueError(problem)
        if fills:
            self.peft = PeftConfig.model_validate(
                {**self.peft.model_dump(exclude_unset=True), **fills})
        cost = self.fleet.cost_model
        if cost is not None and cost.peft is not None:
            # the charged PEFT is the same method's, on the charged model
            fills, problem = protocol.peft_preset(cost.peft.model_dump(),
                                                  cost.peft.model_fields_set)
            if problem is not None:
                raise ValueError(problem.replace("peft.", "fleet.cost_model.peft."))
            if fills:
                cost.peft = PeftConfig.model_validate(
                    {**cost.peft.model_dump(exclude_unset=True), **fills})
        if protocol.two_learning_rates:
            p = self.protocol
            self.protocol = p.model_copy(update={
                "client_lr": p.client_lr if p.client_lr is not None else DEFAULT_CLIENT_LR,
                "server_lr": p.server_lr if p.server_lr is not None else DEFAULT_SERVER_LR,
            })


SECTIONS: tuple[str, ...] = tuple(
    name for name in Scenario.model_fields if name != "description"
)


def section_models() -> dict[str, type[BaseModel]]:
    """Section name → pydantic model (for the generated scenario reference)."""
    out: dict[str, type[BaseModel]] = {}
    for name, field in Scenario.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out[name] = ann
    return out

